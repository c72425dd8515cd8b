//! The records a journaling node writes to its report log
//! (`storage::ReportLog`): one per closed window boundary, one per power-up
//! (and config change), one per change of a power-up's clock. Little-endian,
//! fixed layout; the log frames them (length, CRC-32C).
//!
//! ```text
//! report:   1 u8 | windows u8 | unacked u16 | seq u32 | power_up u32 | start_ms u64 | len_ms u32
//!           | windows × (channel u8 | count u32 | sum f32 | min f32 | max f32 | first f32 | last f32)
//! power-up: 2 u8 | 0 u8 | 0 u16 | power_up u32 | period_ms u32 | window_ms u32
//! clock:    3 u8 | syncs u8 | 0 u16 | power_up u32 | estimate i64 | end_ms u64
//!           | syncs × (from_seq u32 | wall_at_zero i64)
//! ```
//!
//! A report's windows share its `start_ms` and `len_ms` (one boundary of
//! the sampler), in ms since power-up `power_up` began; `unacked` is how far
//! below `seq` the gateway's acks had come when the record was written
//! (`seq − 1 − acked`, saturating: a larger backlog reads as less acked), so
//! a restart resends at most what was acked since. 80 bytes on the flash
//! for two windows (with the log's framing), 105 for three. A power-up
//! record numbers the power-up and says what sampling is in force (written
//! again when a config takes effect). A clock record is the whole of what a
//! power-up's clock is known to be ([`Clock`]); the newest in log order
//! wins.

use ferry_proto::link::{MAX_REPORT_WINDOWS, WindowReport};

use super::clock::{Clock, MAX_SYNCS};

const KIND_REPORT: u8 = 1;
const KIND_POWER_UP: u8 = 2;
const KIND_CLOCK: u8 = 3;
const REPORT_FIXED: usize = 24;
const WINDOW: usize = 25;
const POWER_UP: usize = 16;
const CLOCK_FIXED: usize = 24;
const SYNC: usize = 12;
/// `estimate` when there is none.
const NO_ESTIMATE: i64 = i64::MIN;

/// A closed window boundary, as logged.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReportRecord {
    pub seq: u32,
    pub power_up: u32,
    pub start_ms: u64,
    pub len_ms: u32,
    pub acked: u32,
    pub windows: heapless::Vec<WindowReport, MAX_REPORT_WINDOWS>,
}

/// A power-up (or a config taking effect in it), as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PowerUpRecord {
    pub power_up: u32,
    pub period_ms: u32,
    pub window_ms: u32,
}

/// A record read back (the size difference is fine: one at a time, on the
/// stack).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Record {
    Report(ReportRecord),
    PowerUp(PowerUpRecord),
    Clock(Clock),
}

/// Longest encoded record.
pub(crate) const MAX_LEN: usize = REPORT_FIXED + WINDOW * MAX_REPORT_WINDOWS;

const _: () = assert!(CLOCK_FIXED + SYNC * MAX_SYNCS <= MAX_LEN);

impl ReportRecord {
    pub(crate) fn encode(&self, out: &mut [u8; MAX_LEN]) -> usize {
        out[0] = KIND_REPORT;
        out[1] = self.windows.len() as u8;
        let unacked = self.seq.saturating_sub(1).saturating_sub(self.acked);
        out[2..4].copy_from_slice(&u16::try_from(unacked).unwrap_or(u16::MAX).to_le_bytes());
        out[4..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..12].copy_from_slice(&self.power_up.to_le_bytes());
        out[12..20].copy_from_slice(&self.start_ms.to_le_bytes());
        out[20..24].copy_from_slice(&self.len_ms.to_le_bytes());
        let mut at = REPORT_FIXED;
        for w in &self.windows {
            out[at] = w.channel;
            out[at + 1..at + 5].copy_from_slice(&w.count.to_le_bytes());
            for (k, v) in [w.sum, w.min, w.max, w.first, w.last]
                .into_iter()
                .enumerate()
            {
                out[at + 5 + 4 * k..at + 9 + 4 * k].copy_from_slice(&v.to_le_bytes());
            }
            at += WINDOW;
        }
        at
    }
}

impl PowerUpRecord {
    pub(crate) fn encode(&self, out: &mut [u8; MAX_LEN]) -> usize {
        out[0] = KIND_POWER_UP;
        out[1..4].fill(0);
        out[4..8].copy_from_slice(&self.power_up.to_le_bytes());
        out[8..12].copy_from_slice(&self.period_ms.to_le_bytes());
        out[12..16].copy_from_slice(&self.window_ms.to_le_bytes());
        POWER_UP
    }
}

/// Encodes a clock record (also the value of a `node_clocks` row).
pub(crate) fn encode_clock(c: &Clock, out: &mut [u8; MAX_LEN]) -> usize {
    out[0] = KIND_CLOCK;
    out[1] = c.syncs.len() as u8;
    out[2..4].fill(0);
    out[4..8].copy_from_slice(&c.power_up.to_le_bytes());
    out[8..16].copy_from_slice(&c.estimate.unwrap_or(NO_ESTIMATE).to_le_bytes());
    out[16..24].copy_from_slice(&c.end_ms.to_le_bytes());
    let mut at = CLOCK_FIXED;
    for &(from, wall) in &c.syncs {
        out[at..at + 4].copy_from_slice(&from.to_le_bytes());
        out[at + 4..at + 12].copy_from_slice(&wall.to_le_bytes());
        at += SYNC;
    }
    at
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

impl Record {
    /// Decodes a record; `None` for an unknown kind or a wrong length (the
    /// log's CRC already vouched for the bytes).
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        match *b.first()? {
            KIND_REPORT if b.len() >= REPORT_FIXED => {
                let n = usize::from(b[1]);
                if n > MAX_REPORT_WINDOWS || b.len() != REPORT_FIXED + n * WINDOW {
                    return None;
                }
                let start_ms = u64_at(b, 12);
                let len_ms = u32_at(b, 20);
                let mut windows = heapless::Vec::new();
                for w in b[REPORT_FIXED..].chunks_exact(WINDOW) {
                    let f = |k: usize| f32::from_bits(u32_at(w, 5 + 4 * k));
                    windows
                        .push(WindowReport {
                            channel: w[0],
                            start_ms,
                            len_ms,
                            count: u32_at(w, 1),
                            sum: f(0),
                            min: f(1),
                            max: f(2),
                            first: f(3),
                            last: f(4),
                        })
                        .ok()?;
                }
                let seq = u32_at(b, 4);
                let unacked = u32::from(u16::from_le_bytes([b[2], b[3]]));
                Some(Self::Report(ReportRecord {
                    seq,
                    power_up: u32_at(b, 8),
                    start_ms,
                    len_ms,
                    acked: seq.saturating_sub(1).saturating_sub(unacked),
                    windows,
                }))
            }
            KIND_POWER_UP if b.len() == POWER_UP => Some(Self::PowerUp(PowerUpRecord {
                power_up: u32_at(b, 4),
                period_ms: u32_at(b, 8),
                window_ms: u32_at(b, 12),
            })),
            KIND_CLOCK if b.len() >= CLOCK_FIXED => decode_clock(b).map(Self::Clock),
            _ => None,
        }
    }
}

/// Decodes a clock record (or a `node_clocks` row).
pub(crate) fn decode_clock(b: &[u8]) -> Option<Clock> {
    if b.first() != Some(&KIND_CLOCK) || b.len() < CLOCK_FIXED {
        return None;
    }
    let n = usize::from(b[1]);
    if n > MAX_SYNCS || b.len() != CLOCK_FIXED + n * SYNC {
        return None;
    }
    let estimate = u64_at(b, 8) as i64;
    let mut syncs = heapless::Vec::new();
    for s in b[CLOCK_FIXED..].chunks_exact(SYNC) {
        syncs.push((u32_at(s, 0), u64_at(s, 4) as i64)).ok()?;
    }
    Some(Clock {
        power_up: u32_at(b, 4),
        estimate: (estimate != NO_ESTIMATE).then_some(estimate),
        end_ms: u64_at(b, 16),
        syncs,
        first_seq: None,
        last_seq: 0,
        filter: Default::default(),
    })
}
