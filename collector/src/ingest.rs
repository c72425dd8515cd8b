//! From frame bytes to a [`PreparedBatch`]: decompress within the limit,
//! decode, validate, check timestamps, split into chunks. Plain functions and
//! structs with a `now` parameter; no sockets, no clock.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::batch::Batch;
use ferry_proto::codec;
use ferry_proto::session::reason;
use ferry_proto::stream::{FrameError, FrameHeader, compression};

use crate::config::Limits;
use crate::store::{PreparedBatch, PreparedChunk, split_block};

/// A class of bad input, the `kind` label of `ferry_bad_input_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadInput {
    /// A frame header that cannot be parsed (type, flags).
    MalformedFrame,
    /// A frame or decompressed body over the limit.
    Oversized,
    /// A frame of the wrong type for where it came.
    UnexpectedFrame,
    /// A body that is not a valid MessagePack message.
    MalformedMessage,
    /// A batch that decodes but breaks a rule.
    InvalidBatch,
    /// A timestamp outside the sanity window.
    BadTimestamp,
    /// An agent over its rate.
    RateLimited,
    /// An unknown protocol version.
    UnsupportedVersion,
    /// A UDP datagram that is not QUIC.
    GarbageDatagram,
    /// A failed TLS handshake (unknown, revoked, expired, self-signed).
    Handshake,
}

impl BadInput {
    /// Every class, for metric registration.
    pub const ALL: [BadInput; 10] = [
        Self::MalformedFrame,
        Self::Oversized,
        Self::UnexpectedFrame,
        Self::MalformedMessage,
        Self::InvalidBatch,
        Self::BadTimestamp,
        Self::RateLimited,
        Self::UnsupportedVersion,
        Self::GarbageDatagram,
        Self::Handshake,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::Oversized => "oversized",
            Self::UnexpectedFrame => "unexpected_frame",
            Self::MalformedMessage => "malformed_message",
            Self::InvalidBatch => "invalid_batch",
            Self::BadTimestamp => "bad_timestamp",
            Self::RateLimited => "rate_limited",
            Self::UnsupportedVersion => "unsupported_version",
            Self::GarbageDatagram => "garbage_datagram",
            Self::Handshake => "handshake",
        }
    }
}

/// A refused batch: the ack's code and reason, and the class to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What to count.
    pub kind: BadInput,
    /// A `ferry_proto::session::reason` code.
    pub code: u16,
    /// Human-readable, names what was wrong.
    pub reason: String,
}

impl Rejection {
    fn new(kind: BadInput, code: u16, reason: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            reason: reason.into(),
        }
    }
}

/// The rejection for a frame header error.
pub fn frame_rejection(e: &FrameError) -> Rejection {
    match e {
        FrameError::TooLarge { .. } => {
            Rejection::new(BadInput::Oversized, reason::TOO_LARGE, e.to_string())
        }
        _ => Rejection::new(BadInput::MalformedFrame, reason::MALFORMED, e.to_string()),
    }
}

/// Decompresses (bounded by `max`) and decodes a batch frame body.
pub fn decode_batch(header: &FrameHeader, body: &[u8], max: u32) -> Result<Batch, Rejection> {
    let owned;
    let bytes = if header.compression == compression::ZSTD {
        let mut out = Vec::new();
        let decoder = zstd::stream::read::Decoder::new(body).map_err(|e| {
            Rejection::new(
                BadInput::MalformedMessage,
                reason::MALFORMED,
                format!("zstd: {e}"),
            )
        })?;
        decoder
            .take(u64::from(max) + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                Rejection::new(
                    BadInput::MalformedMessage,
                    reason::MALFORMED,
                    format!("zstd body: {e}"),
                )
            })?;
        if out.len() > max as usize {
            return Err(Rejection::new(
                BadInput::Oversized,
                reason::TOO_LARGE,
                format!("decompressed batch exceeds the limit of {max} bytes"),
            ));
        }
        owned = out;
        &owned[..]
    } else {
        body
    };
    codec::from_bytes::<Batch>("Batch", bytes)
        .map_err(|e| Rejection::new(BadInput::MalformedMessage, reason::MALFORMED, e.to_string()))
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Validates a decoded batch and prepares it for the writer.
pub fn prepare(
    agent: &Arc<str>,
    remote: &str,
    batch: &Batch,
    limits: &Limits,
    now_ns: i64,
) -> Result<PreparedBatch, Rejection> {
    batch
        .validate()
        .map_err(|e| Rejection::new(BadInput::InvalidBatch, reason::INVALID, e.to_string()))?;
    let readings = batch.reading_count();
    if readings > limits.max_batch_readings {
        return Err(Rejection::new(
            BadInput::InvalidBatch,
            reason::INVALID,
            format!(
                "readings: {readings} exceeds the limit of {}",
                limits.max_batch_readings
            ),
        ));
    }
    let lo = now_ns.saturating_sub(nanos(limits.max_past));
    let hi = now_ns.saturating_add(nanos(limits.max_future));
    let check = |what: &str, index: usize, ts: i64| {
        if ts < lo || ts > hi {
            Err(Rejection::new(
                BadInput::BadTimestamp,
                reason::BAD_TIMESTAMP,
                format!(
                    "{what} {index}: timestamp {ts} is outside the accepted window [{lo}, {hi}] (now {now_ns})"
                ),
            ))
        } else {
            Ok(())
        }
    };
    let mut chunks = Vec::new();
    for (index, block) in batch.blocks.iter().enumerate() {
        let mut bad = None;
        // validate() expanded every block already, so this cannot fail.
        let _ = block.for_each(|r| {
            if bad.is_none() && check("block", index, r.ts_ns).is_err() {
                bad = Some(r.ts_ns);
            }
        });
        if let Some(ts) = bad {
            check("block", index, ts)?;
        }
        let parts = split_block(block).map_err(|e| {
            Rejection::new(
                BadInput::InvalidBatch,
                reason::INVALID,
                format!("block {index}: {e}"),
            )
        })?;
        for (bucket, chunk) in parts {
            chunks.push(PreparedChunk {
                series: block.series,
                bucket,
                bytes: crate::store::encode_chunk(&chunk),
            });
        }
    }
    for (index, a) in batch.aggregates.iter().enumerate() {
        check("aggregate", index, a.start_ns)?;
    }
    // Every stored series carries its agent (docs/prometheus.md).
    let series = batch
        .series
        .iter()
        .map(|k| {
            codec::to_vec(&crate::prometheus::naming::with_agent(k, agent)).unwrap_or_default()
        })
        .collect();
    Ok(PreparedBatch {
        agent: agent.clone(),
        seq: batch.seq,
        remote: remote.to_owned(),
        series,
        chunks,
        aggregates: batch.aggregates.clone(),
        health: batch.health.clone(),
        readings: readings as u64,
    })
}

/// A token bucket per agent over readings per second, with a two-second
/// burst. A plain struct: callers pass the time.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: u64,
    buckets: HashMap<Arc<str>, (f64, i64)>,
}

/// Most agents a [`RateLimiter`] tracks; idle ones are forgotten first.
const RATE_LIMITER_AGENTS: usize = 100_000;

impl RateLimiter {
    /// `per_sec == 0` disables limiting.
    pub fn new(per_sec: u64) -> Self {
        Self {
            per_sec,
            buckets: HashMap::new(),
        }
    }

    /// Takes `readings` tokens for `agent` at `now_ns`; false if the agent is
    /// over its rate (nothing is taken then).
    pub fn admit(&mut self, agent: &Arc<str>, readings: u64, now_ns: i64) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let burst = (self.per_sec * 2) as f64;
        if self.buckets.len() >= RATE_LIMITER_AGENTS && !self.buckets.contains_key(agent) {
            // Full buckets carry no information; drop them.
            self.buckets.retain(|_, (tokens, _)| *tokens < burst);
        }
        let (tokens, last) = self.buckets.entry(agent.clone()).or_insert((burst, now_ns));
        let elapsed = (now_ns.saturating_sub(*last)).max(0) as f64 / 1e9;
        *tokens = (*tokens + elapsed * self.per_sec as f64).min(burst);
        *last = now_ns;
        if *tokens >= readings as f64 {
            *tokens -= readings as f64;
            true
        } else {
            false
        }
    }
}

/// Rate-limits log lines per class of bad input: at most one line per class
/// per interval, with the number of suppressed events since the last line.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ns: i64,
    last: HashMap<BadInput, (i64, u64)>,
}

impl LogLimiter {
    /// One line per class per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ns: nanos(interval),
            last: HashMap::new(),
        }
    }

    /// Whether to log an event of `kind` at `now_ns`; when yes, also how
    /// many events were suppressed since the previous line.
    pub fn check(&mut self, kind: BadInput, now_ns: i64) -> Option<u64> {
        match self.last.get_mut(&kind) {
            Some((at, suppressed)) if now_ns.saturating_sub(*at) < self.interval_ns => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now_ns;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(kind, (now_ns, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::batch::{Reading, ReadingBlock};
    use ferry_proto::series::SeriesKey;
    use ferry_proto::stream::FrameType;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn batch(ts: i64) -> Batch {
        Batch {
            seq: 1,
            created_ns: ts,
            series: vec![SeriesKey::new("t", [("d", "a")]).unwrap()],
            blocks: vec![ReadingBlock::encode(
                0,
                &[Reading {
                    ts_ns: ts,
                    value: 1.0,
                }],
            )],
            ..Batch::default()
        }
    }

    #[test]
    fn timestamps_outside_the_window_are_named() {
        let agent: Arc<str> = Arc::from("a");
        let limits = Limits::default();
        prepare(&agent, "r", &batch(NOW), &limits, NOW).unwrap();
        let future = NOW + 3_600_000_000_000;
        let err = prepare(&agent, "r", &batch(future), &limits, NOW).unwrap_err();
        assert_eq!(err.code, reason::BAD_TIMESTAMP);
        assert_eq!(err.kind, BadInput::BadTimestamp);
        assert!(
            err.reason
                .starts_with(&format!("block 0: timestamp {future} is outside")),
            "{}",
            err.reason
        );
    }

    #[test]
    fn stored_series_carry_the_agent_one_tag_over_the_payload_limit() {
        let tags: Vec<(String, String)> = (0..ferry_proto::series::MAX_TAGS)
            .map(|i| (format!("k{i:02}"), "v".to_owned()))
            .collect();
        let mut b = batch(NOW);
        b.series = vec![SeriesKey::new("t", tags).unwrap()];
        let p = prepare(&Arc::from("gw-7"), "r", &b, &Limits::default(), NOW).unwrap();
        let stored: SeriesKey = codec::from_bytes("SeriesKey", &p.series[0]).unwrap();
        assert_eq!(stored.tags.len(), ferry_proto::series::MAX_TAGS + 1);
        assert_eq!(stored.tag("agent"), Some("gw-7"));
    }

    #[test]
    fn zstd_bombs_are_oversized() {
        let raw = vec![0u8; 10_000];
        let body = zstd::encode_all(&raw[..], 3).unwrap();
        let header = FrameHeader {
            frame_type: FrameType::Batch,
            compression: compression::ZSTD,
            len: body.len() as u32,
        };
        let err = decode_batch(&header, &body, 1024).unwrap_err();
        assert_eq!(err.kind, BadInput::Oversized);
        assert_eq!(
            err.reason,
            "decompressed batch exceeds the limit of 1024 bytes"
        );
        let ok = codec::to_vec(&batch(NOW)).unwrap();
        let body = zstd::encode_all(&ok[..], 3).unwrap();
        assert_eq!(decode_batch(&header, &body, 1024).unwrap(), batch(NOW));
    }

    #[test]
    fn rate_limiter_refills_with_time() {
        let a: Arc<str> = Arc::from("a");
        let mut rl = RateLimiter::new(100);
        assert!(rl.admit(&a, 200, 0));
        assert!(!rl.admit(&a, 1, 0));
        assert!(rl.admit(&a, 50, 500_000_000));
        assert!(!rl.admit(&a, 1, 500_000_000));
        assert!(RateLimiter::new(0).admit(&a, u64::MAX, 0));
    }

    #[test]
    fn log_limiter_counts_suppressed_lines() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(l.check(BadInput::Oversized, 0), Some(0));
        assert_eq!(l.check(BadInput::Oversized, 1), None);
        assert_eq!(l.check(BadInput::Oversized, 2), None);
        assert_eq!(l.check(BadInput::MalformedFrame, 2), Some(0));
        assert_eq!(l.check(BadInput::Oversized, 10_000_000_000), Some(2));
    }
}
