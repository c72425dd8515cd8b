//! Revision 4's compact batches on the collector: a session's series ids
//! and (revision 5) value references, and reading a batch stream that may
//! carry `Definitions` and a `CompactBatch` instead of a `Batch`
//! (docs/protocol.md, "Compact batches", "Value references").
//!
//! A compact batch is resolved here, against its session's ids, into the
//! self-contained [`Batch`] it stands for, before anything else looks at
//! it: the rate limit, [`crate::ingest::prepare`], the store and the
//! cluster log (whose workers decode self-contained batches only) see the
//! same batch they would have seen from a revision-3 agent.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_proto::batch::Batch;
use ferry_proto::compact::{
    CompactBatch, CompactError, DEFAULT_MAX_SERIES_IDS, Definitions, References,
};
use ferry_proto::series::SeriesKey;
use ferry_proto::session::reason;
use ferry_proto::stream::{FrameHeader, FrameType};

use crate::ingest::{self, BadInput, Rejection};

/// Series ids a collector keeps per session (`Welcome.max_series_ids`).
pub const MAX_SERIES_IDS: u32 = DEFAULT_MAX_SERIES_IDS;

/// One session's series ids: what each id the agent defined means, and
/// the ids' value references (the latest two generations, at most two
/// values per id). Lives as long as the connection, bounded by
/// [`MAX_SERIES_IDS`] (a new session starts empty: the agent defines its
/// ids again, and codes against no references until it sets some).
#[derive(Debug, Default)]
pub struct SessionIds {
    keys: HashMap<u32, Arc<SeriesKey>>,
    refs: References,
}

impl SessionIds {
    /// Ids defined.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when none is defined.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Learns `defs` (validated), all or nothing: an id defined before
    /// with another key is INVALID (an id names one series for the life of
    /// its journal); definitions that would take the session past `max`
    /// ids are SERIES_IDS_FULL.
    pub fn define(&mut self, defs: Definitions, max: u32) -> Result<(), Rejection> {
        defs.validate().map_err(|e| {
            Rejection::new(
                BadInput::InvalidBatch,
                reason::INVALID,
                format!("definitions: {e}"),
            )
        })?;
        let mut new = 0usize;
        for (id, key) in defs.ids.iter().zip(&defs.keys) {
            match self.keys.get(id) {
                Some(known) if **known != *key => {
                    return Err(Rejection::new(
                        BadInput::InvalidBatch,
                        reason::INVALID,
                        format!("definitions: series id {id} is already defined as another series"),
                    ));
                }
                Some(_) => {}
                None => new += 1,
            }
        }
        if self.keys.len() + new > max as usize {
            return Err(Rejection::new(
                BadInput::SeriesIdsFull,
                reason::SERIES_IDS_FULL,
                format!(
                    "the session holds {} series ids and {new} more would pass its limit of \
                     {max}: send this batch self-contained",
                    self.keys.len()
                ),
            ));
        }
        for (id, key) in defs.ids.into_iter().zip(defs.keys) {
            self.keys.entry(id).or_insert_with(|| Arc::new(key));
        }
        Ok(())
    }

    /// The self-contained batch `compact` stands for, resolved against
    /// the session's value references (and setting the generation it
    /// sets). An id without a definition is the transient
    /// UNKNOWN_SERIES_ID, a reference generation the session does not hold
    /// the transient UNKNOWN_REFERENCE; a batch that breaks a rule is
    /// INVALID.
    pub fn resolve(&mut self, compact: &CompactBatch) -> Result<Batch, Rejection> {
        let keys = &self.keys;
        self.refs
            .resolve(compact, |id| keys.get(&id).map(|k| SeriesKey::clone(k)))
            .map_err(|e| match e {
                CompactError::UnknownId(_) => Rejection::new(
                    BadInput::UnknownSeriesId,
                    reason::UNKNOWN_SERIES_ID,
                    format!("{e}: resend the batch with the definitions of its ids"),
                ),
                CompactError::UnknownReference(_) => Rejection::new(
                    BadInput::UnknownReference,
                    reason::UNKNOWN_REFERENCE,
                    format!("{e}: start the value references afresh and resend the batch"),
                ),
                e => Rejection::new(BadInput::InvalidBatch, reason::INVALID, e.to_string()),
            })
    }

    /// The session's value references.
    pub fn references(&self) -> &References {
        &self.refs
    }
}

/// The frames of one batch stream, as read.
pub enum StreamFrames {
    /// A revision-3 `Batch` frame.
    Batch(FrameHeader, Vec<u8>),
    /// Revision 4: maybe a `Definitions` frame, then a `CompactBatch`.
    Compact {
        /// The definitions frame, if one came first.
        definitions: Option<(FrameHeader, Vec<u8>)>,
        /// The compact batch frame.
        batch: (FrameHeader, Vec<u8>),
    },
}

/// What a batch stream's frames say, decoded: a batch (resolved if it was
/// compact), or a refusal, with the batch's seq when it was read.
pub fn decode_stream(
    frames: StreamFrames,
    ids: &std::sync::Mutex<SessionIds>,
    max_frame: u32,
    metrics: &crate::metrics::Metrics,
) -> Result<Batch, (Option<u64>, Rejection)> {
    let (definitions, (header, body)) = match frames {
        StreamFrames::Batch(header, body) => {
            return ingest::decode_batch(&header, &body, max_frame).map_err(|r| (None, r));
        }
        StreamFrames::Compact { definitions, batch } => (definitions, batch),
    };
    let defs: Option<Definitions> = definitions
        .map(|(h, b)| ingest::decode_body("Definitions", &h, &b, max_frame))
        .transpose()
        .map_err(|r| (None, r))?;
    let compact: CompactBatch =
        ingest::decode_body("CompactBatch", &header, &body, max_frame).map_err(|r| (None, r))?;
    let seq = Some(compact.seq);
    let mut ids = ids.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(defs) = defs {
        ids.define(defs, MAX_SERIES_IDS).map_err(|r| (seq, r))?;
    }
    let batch = ids.resolve(&compact).map_err(|r| (seq, r))?;
    if compact.ref_base != 0 {
        metrics.referenced_batches.inc();
    }
    Ok(batch)
}

/// Reads a batch stream's frames and decodes them into the batch to
/// store: `None` when the stream ended before a whole batch (the agent
/// resends); a refusal with the batch's seq when it was read (answered by
/// an Ack), without when it was not (answered by an ErrorMsg).
pub async fn read_batch(
    recv: &mut quinn::RecvStream,
    max_frame: u32,
    compression: u8,
    ids: &std::sync::Mutex<SessionIds>,
    metrics: &crate::metrics::Metrics,
) -> Option<Result<Batch, (Option<u64>, Rejection)>> {
    let mut read = async || -> Result<Option<(FrameHeader, Vec<u8>)>, Rejection> {
        let Some((header, body)) = crate::server::session::read_frame(recv, max_frame).await?
        else {
            return Ok(None);
        };
        if header.compression != ferry_proto::stream::compression::NONE
            && header.compression != compression
        {
            return Err(Rejection::new(
                BadInput::MalformedFrame,
                reason::UNSUPPORTED,
                "a zstd-compressed batch, but the Welcome chose no compression",
            ));
        }
        Ok(Some((header, body)))
    };
    let unexpected = |what: &str, t: FrameType| {
        Rejection::new(
            BadInput::UnexpectedFrame,
            reason::UNEXPECTED,
            format!("expected {what} on a batch stream, got {t:?}"),
        )
    };
    let first = match read().await {
        Ok(Some(f)) => f,
        Ok(None) => return None,
        Err(r) => return Some(Err((None, r))),
    };
    let frames = match first.0.frame_type {
        FrameType::Batch => StreamFrames::Batch(first.0, first.1),
        FrameType::CompactBatch => StreamFrames::Compact {
            definitions: None,
            batch: first,
        },
        FrameType::Definitions => match read().await {
            Ok(Some(second)) if second.0.frame_type == FrameType::CompactBatch => {
                StreamFrames::Compact {
                    definitions: Some(first),
                    batch: second,
                }
            }
            Ok(Some((h, _))) => {
                return Some(Err((
                    None,
                    unexpected("a CompactBatch frame after Definitions", h.frame_type),
                )));
            }
            Ok(None) => return None,
            Err(r) => return Some(Err((None, r))),
        },
        t => return Some(Err((None, unexpected("a Batch frame", t)))),
    };
    let compact = matches!(frames, StreamFrames::Compact { .. });
    let batch = decode_stream(frames, ids, max_frame, metrics);
    if compact && batch.is_ok() {
        metrics.compact_batches.inc();
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::batch::Reading;
    use ferry_proto::compact::Columns;

    fn key(n: u32) -> SeriesKey {
        SeriesKey::new("temperature", [("device", format!("d{n}"))]).unwrap()
    }

    fn defs(ids: &[u32]) -> Definitions {
        Definitions {
            ids: ids.to_vec(),
            keys: ids.iter().map(|&i| key(i)).collect(),
        }
    }

    fn compact(ids: &[u32]) -> CompactBatch {
        let r = [Reading {
            ts_ns: 1_700_000_000_000_000_000,
            value: 1.5,
        }];
        CompactBatch {
            seq: 3,
            readings: Columns::encode(ids.iter().map(|&id| (id, &r[..]))),
            ..CompactBatch::default()
        }
    }

    #[test]
    fn references_resolve_and_unknown_generations_are_transient() {
        let mut s = SessionIds::default();
        s.define(defs(&[1, 2]), 3).unwrap();
        let r = |v: f64| {
            [Reading {
                ts_ns: 1_700_000_000_000_000_000,
                value: v,
            }]
        };
        let (a, b) = (r(21.5), r(40.25));
        let mut setter = CompactBatch {
            seq: 1,
            readings: Columns::encode([(1, &a[..]), (2, &b[..])]),
            ref_sets: 1,
            ..CompactBatch::default()
        };
        s.resolve(&setter).unwrap();
        assert_eq!(s.references().latest(), 1);
        let (a, b) = (r(21.52), r(40.0));
        let refs = s.references().clone();
        let coded = CompactBatch {
            seq: 2,
            readings: Columns::encode_with([(1, &a[..]), (2, &b[..])], |id| refs.reference(id, 1)),
            ref_base: 1,
            ..CompactBatch::default()
        };
        let back = s.resolve(&coded).unwrap();
        let values: Vec<f64> = back
            .blocks
            .iter()
            .map(|b| b.readings().unwrap()[0].value)
            .collect();
        assert_eq!(values, vec![21.52, 40.0]);
        // Another session holds no references: transient.
        let mut other = SessionIds::default();
        other.define(defs(&[1, 2]), 3).unwrap();
        let e = other.resolve(&coded).unwrap_err();
        assert_eq!(
            (e.code, e.kind),
            (reason::UNKNOWN_REFERENCE, BadInput::UnknownReference)
        );
        // Reusing a generation is a broken rule.
        setter.seq = 3;
        assert_eq!(s.resolve(&setter).unwrap_err().code, reason::INVALID);
    }

    #[test]
    fn definitions_resolve_batches_and_stay_bounded() {
        let mut s = SessionIds::default();
        assert_eq!(
            s.resolve(&compact(&[1])).unwrap_err().code,
            reason::UNKNOWN_SERIES_ID
        );
        s.define(defs(&[1, 2]), 3).unwrap();
        let b = s.resolve(&compact(&[1, 2])).unwrap();
        assert_eq!(b.series, vec![key(1), key(2)]);
        assert_eq!(b.reading_count(), 2);
        // Again, and the same definitions again: nothing new.
        s.define(defs(&[2, 1]), 3).unwrap();
        assert_eq!(s.len(), 2);
        // Past the bound: all or nothing.
        let r = s.define(defs(&[3, 4]), 3).unwrap_err();
        assert_eq!(
            (r.code, r.kind),
            (reason::SERIES_IDS_FULL, BadInput::SeriesIdsFull)
        );
        assert_eq!(s.len(), 2);
        // Another key for a known id.
        let mut other = defs(&[1]);
        other.keys[0] = key(9);
        assert_eq!(s.define(other, 3).unwrap_err().code, reason::INVALID);
    }
}
