//! From frame bytes to a [`PreparedBatch`]: decompress within the limit,
//! decode, validate, check timestamps, split into chunks. Plain functions and
//! structs with a `now` parameter; no sockets, no clock.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::batch::{Batch, ReadingBlock};
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
    /// An agent over its rate.
    RateLimited,
    /// An unknown protocol version.
    UnsupportedVersion,
    /// A UDP datagram that is not QUIC.
    GarbageDatagram,
    /// A failed TLS handshake (unknown, revoked, expired, self-signed).
    Handshake,
    /// A stored batch with readings refused one by one (bad timestamps,
    /// series past the store's limit).
    RefusedReadings,
    /// A batch refused because the agent's dedupe state is at its bound.
    DedupeFull,
    /// A compact batch naming a series id its session has no definition
    /// for (the agent resends the definitions).
    UnknownSeriesId,
    /// Definitions past the session's `Welcome.max_series_ids` (the agent
    /// resends the batch self-contained).
    SeriesIdsFull,
    /// A compact batch coded against a reference generation its session
    /// does not hold (the agent starts its references afresh).
    UnknownReference,
}

impl BadInput {
    /// Every class, for metric registration.
    pub const ALL: [BadInput; 14] = [
        Self::MalformedFrame,
        Self::Oversized,
        Self::UnexpectedFrame,
        Self::MalformedMessage,
        Self::InvalidBatch,
        Self::RateLimited,
        Self::UnsupportedVersion,
        Self::GarbageDatagram,
        Self::Handshake,
        Self::RefusedReadings,
        Self::DedupeFull,
        Self::UnknownSeriesId,
        Self::SeriesIdsFull,
        Self::UnknownReference,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::Oversized => "oversized",
            Self::UnexpectedFrame => "unexpected_frame",
            Self::MalformedMessage => "malformed_message",
            Self::InvalidBatch => "invalid_batch",
            Self::RateLimited => "rate_limited",
            Self::UnsupportedVersion => "unsupported_version",
            Self::GarbageDatagram => "garbage_datagram",
            Self::Handshake => "handshake",
            Self::RefusedReadings => "refused_readings",
            Self::DedupeFull => "dedupe_full",
            Self::UnknownSeriesId => "unknown_series_id",
            Self::SeriesIdsFull => "series_ids_full",
            Self::UnknownReference => "unknown_reference",
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
    pub(crate) fn new(kind: BadInput, code: u16, reason: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            reason: reason.into(),
        }
    }
}

/// The rejection for a frame header error: an unknown type is UNEXPECTED
/// (one rule with a known type in the wrong place), reserved flags
/// MALFORMED, a length over the limit TOO_LARGE.
pub fn frame_rejection(e: &FrameError) -> Rejection {
    match e {
        FrameError::TooLarge { .. } => {
            Rejection::new(BadInput::Oversized, reason::TOO_LARGE, e.to_string())
        }
        FrameError::UnknownType(_) => {
            Rejection::new(BadInput::UnexpectedFrame, reason::UNEXPECTED, e.to_string())
        }
        FrameError::BadFlags { .. } => {
            Rejection::new(BadInput::MalformedFrame, reason::MALFORMED, e.to_string())
        }
    }
}

/// Decompresses (bounded by `max`) and decodes a batch frame body.
pub fn decode_batch(header: &FrameHeader, body: &[u8], max: u32) -> Result<Batch, Rejection> {
    decode_body("Batch", header, body, max)
}

/// Decompresses (bounded by `max`) and decodes a frame body holding one
/// `message`: a Batch, or revision 4's Definitions and CompactBatch.
pub fn decode_body<T: serde::de::DeserializeOwned>(
    message: &'static str,
    header: &FrameHeader,
    body: &[u8],
    max: u32,
) -> Result<T, Rejection> {
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
                format!(
                    "decompressed {} exceeds the limit of {max} bytes",
                    if message == "Batch" { "batch" } else { message }
                ),
            ));
        }
        owned = out;
        &owned[..]
    } else {
        body
    };
    let (batch, used) = codec::from_bytes_prefix::<T>(message, bytes).map_err(|e| {
        Rejection::new(BadInput::MalformedMessage, reason::MALFORMED, e.to_string())
    })?;
    if used < bytes.len() {
        let e = codec::trailing_bytes(message, bytes.len() - used, used);
        return Err(Rejection::new(
            BadInput::MalformedMessage,
            reason::TRAILING_BYTES,
            e.to_string(),
        ));
    }
    Ok(batch)
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The tag refused readings are counted under, per device.
pub const DEVICE_TAG: &str = "device";

/// Validates a decoded batch and prepares it for the writer. A batch that
/// breaks a rule is refused whole; readings outside the accepted time window
/// are refused one by one (counted per device in
/// [`PreparedBatch::refused`]) and the rest of the batch goes on.
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
    let (lo, hi) = ferry_proto::session::timestamp_window(
        now_ns,
        nanos(limits.max_past) as u64,
        nanos(limits.max_future) as u64,
    );
    let inside = |ts: i64| (lo..=hi).contains(&ts);
    let mut refused = Vec::new();
    let mut chunks = Vec::new();
    let mut stored = 0u64;
    for (index, block) in batch.blocks.iter().enumerate() {
        let mut bad = 0u64;
        // validate() expanded every block already, so this cannot fail.
        let _ = block.for_each(|r| bad += u64::from(!inside(r.ts_ns)));
        let kept;
        let block = if bad == 0 {
            block
        } else {
            refused.push((block.series, reason::BAD_TIMESTAMP, bad));
            let mut good = block.readings().unwrap_or_default();
            good.retain(|r| inside(r.ts_ns));
            if good.is_empty() {
                continue;
            }
            kept = ReadingBlock::encode(block.series, &good);
            &kept
        };
        let parts = split_block(block).map_err(|e| {
            Rejection::new(
                BadInput::InvalidBatch,
                reason::INVALID,
                format!("block {index}: {e}"),
            )
        })?;
        for (bucket, chunk) in parts {
            stored += chunk.len() as u64;
            chunks.push(PreparedChunk {
                series: block.series,
                bucket,
                readings: chunk.len() as u64,
                bytes: crate::store::encode_chunk(&chunk),
            });
        }
    }
    let mut aggregates = Vec::with_capacity(batch.aggregates.len());
    for a in &batch.aggregates {
        if inside(a.start_ns) {
            aggregates.push(a.clone());
        } else {
            refused.push((a.series, reason::BAD_TIMESTAMP, a.count));
        }
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
        epoch: batch.epoch,
        resolved_below: batch.resolved_below,
        seq: batch.seq,
        remote: remote.to_owned(),
        series,
        devices: batch
            .series
            .iter()
            .map(|k| k.tag(DEVICE_TAG).unwrap_or_default().to_owned())
            .collect(),
        refused,
        chunks,
        aggregates,
        health: batch.health.clone(),
        readings: stored,
        count_refusal: false,
    })
}

/// The rate limiter's bucket holds this many seconds of readings.
pub const RATE_BURST_SECS: u64 = 2;

/// A token bucket per agent over readings per second, with a
/// [`RATE_BURST_SECS`] burst. A plain struct: callers pass the time.
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
        let burst = self.per_sec.saturating_mul(RATE_BURST_SECS) as f64;
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
    fn readings_outside_the_window_are_refused_one_by_one() {
        let agent: Arc<str> = Arc::from("a");
        let limits = Limits::default();
        let p = prepare(&agent, "r", &batch(NOW), &limits, NOW).unwrap();
        assert_eq!((p.readings, p.refused.len()), (1, 0));
        let future = NOW + 3_600_000_000_000;
        let mut b = batch(NOW);
        b.blocks = vec![ReadingBlock::encode(
            0,
            &[
                Reading {
                    ts_ns: NOW,
                    value: 1.0,
                },
                Reading {
                    ts_ns: future,
                    value: 2.0,
                },
                Reading {
                    ts_ns: NOW + 1,
                    value: 3.0,
                },
            ],
        )];
        let p = prepare(&agent, "r", &b, &limits, NOW).unwrap();
        assert_eq!(p.readings, 2);
        assert_eq!(p.refused, vec![(0, reason::BAD_TIMESTAMP, 1)]);
        assert_eq!(p.devices, vec![String::new()]);
        assert_eq!(p.chunks.len(), 1);
        assert_eq!(
            crate::store::decode_chunk(&p.chunks[0].bytes).unwrap(),
            vec![
                Reading {
                    ts_ns: NOW,
                    value: 1.0
                },
                Reading {
                    ts_ns: NOW + 1,
                    value: 3.0
                }
            ]
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
