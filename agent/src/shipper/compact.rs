//! Protocol revision 4 on the agent's side: sending small batches as
//! compact batches (docs/protocol.md, "Compact batches").
//!
//! The journal keeps every batch self-contained, as sealed; this module
//! rewrites one at send time, when the collector's Welcome announced
//! `max_series_ids`, into a `CompactBatch` whose series are ids numbered
//! in this session, preceded by the `Definitions` of the ids the collector
//! has not acknowledged yet. So a batch stays independently resendable —
//! any session can send it, compact or not — and the ids need no
//! persistence: a new session numbers afresh and defines again.
//!
//! When the Welcome also announced `reference_generations` (revision 5),
//! the values are coded against the session's value references
//! ([`refs`]): each series' values against its own value in an earlier
//! batch of the session.
//!
//! Only batches of at most [`MAX_COMPACT_READINGS`] readings are rewritten:
//! eager batches at moderate rates (a few hundred readings, one per series)
//! are where the keys are most of the bytes; full batches keep their
//! layout and cost no re-encoding.

use std::collections::{HashMap, HashSet};

use ferry_proto::batch::Batch;
use ferry_proto::codec;
use ferry_proto::compact::Definitions;
use ferry_proto::series::SeriesKey;
use ferry_proto::session::{Ack, Welcome, reason, status};
use ferry_proto::stream::{self, FrameType, compression};

use crate::journal::StoredBatch;

use super::flight::{ProtocolError, batch_frame};

pub mod refs;

/// Largest batch (raw readings) sent compact.
pub const MAX_COMPACT_READINGS: usize = 4096;
/// Most series ids the agent numbers in one session (the collector's
/// `max_series_ids` may be lower): keys held in memory for the session.
pub const MAX_SESSION_IDS: u32 = 4_096;
/// Largest stored batch body decoded for rewriting.
const MAX_PLAIN: usize = 4 << 20;

/// One session's series ids, on the agent's side.
#[derive(Debug, Default)]
pub struct SessionIds {
    /// The most ids this session may number; 0: compact batches are off
    /// (the collector did not announce them).
    limit: u32,
    ids: HashMap<SeriesKey, u32>,
    /// Ids whose definitions rode on a stream the collector answered
    /// stored or duplicate.
    known: HashSet<u32>,
    /// Ids defined on the stream of each batch in flight, by outbox seq.
    defined: HashMap<u64, Vec<u32>>,
    /// Batches the collector asked to receive self-contained
    /// (`SERIES_IDS_FULL`), by outbox seq.
    full: HashSet<u64>,
    /// Value references (revision 5).
    refs: refs::SessionRefs,
}

impl SessionIds {
    /// The ids of a session that began with `welcome`.
    pub fn new(welcome: &Welcome) -> Self {
        Self {
            limit: welcome.max_series_ids.min(MAX_SESSION_IDS),
            refs: refs::SessionRefs::new(welcome),
            ..Self::default()
        }
    }

    /// Ids numbered in this session.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when none is numbered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The frames to write on `batch`'s stream: compact (with definitions)
    /// when it qualifies, else the batch as stored ([`batch_frame`]).
    pub fn frames(&mut self, batch: StoredBatch, zstd: bool) -> Result<Vec<u8>, ProtocolError> {
        if self.limit == 0 || self.full.contains(&batch.seq) || batch.wire_seq != batch.seq {
            // Compact batches off, refused for this batch, or a batch
            // salvaged from another journal (sent as it was).
            return batch_frame(batch, zstd);
        }
        match self.compact(&batch, zstd) {
            Some(frames) => Ok(frames),
            None => batch_frame(batch, zstd),
        }
    }

    fn compact(&mut self, stored: &StoredBatch, zstd: bool) -> Option<Vec<u8>> {
        let plain = match stored.codec {
            compression::NONE => std::borrow::Cow::Borrowed(&stored.body[..]),
            compression::ZSTD => {
                std::borrow::Cow::Owned(zstd::bulk::decompress(&stored.body, MAX_PLAIN).ok()?)
            }
            _ => return None,
        };
        let batch: Batch = codec::from_bytes("Batch", &plain).ok()?;
        if batch.reading_count() > MAX_COMPACT_READINGS {
            return None;
        }
        let new = batch
            .series
            .iter()
            .filter(|k| !self.ids.contains_key(*k))
            .count();
        if self.ids.len() + new > self.limit as usize {
            return None;
        }
        let mut ids = Vec::with_capacity(batch.series.len());
        let mut defs = Definitions::default();
        for key in &batch.series {
            let next = self.ids.len() as u32;
            let id = *self.ids.entry(key.clone()).or_insert(next);
            ids.push(id);
            if !self.known.contains(&id) {
                defs.ids.push(id);
                defs.keys.push(key.clone());
            }
        }
        let (compact, coded) = self.refs.encode(&batch, &ids).ok()?;
        let mut out = Vec::new();
        if !defs.ids.is_empty() {
            write(
                &mut out,
                FrameType::Definitions,
                &codec::to_vec(&defs).ok()?,
                zstd,
            );
            self.defined.insert(stored.seq, defs.ids);
        }
        write(
            &mut out,
            FrameType::CompactBatch,
            &codec::to_vec(&compact).ok()?,
            zstd,
        );
        self.refs.sent(stored.seq, coded);
        Some(out)
    }

    /// The collector answered batch `seq` (outbox seq): `Ack` frames
    /// teach what the session knows. Call before the flight machine takes
    /// the answer.
    pub fn answered(&mut self, seq: u64, frame: FrameType, body: &[u8]) {
        let defined = self.defined.remove(&seq);
        let ack = match frame {
            FrameType::Ack => codec::from_bytes::<Ack>("Ack", body).ok(),
            _ => None,
        };
        let Some(ack) = ack else {
            self.refs.answered(seq, refs::Answered::Other);
            return;
        };
        self.refs.answered(
            seq,
            match (ack.status, ack.code) {
                (status::STORED | status::DUPLICATE, _) => refs::Answered::Resolved,
                (_, reason::UNKNOWN_REFERENCE) => refs::Answered::UnknownReference,
                _ => refs::Answered::Other,
            },
        );
        match (ack.status, ack.code) {
            (status::STORED | status::DUPLICATE, _) => {
                self.known.extend(defined.into_iter().flatten());
            }
            (_, reason::UNKNOWN_SERIES_ID) => {
                // The collector does not have what we thought: define
                // everything again.
                tracing::warn!(
                    seq,
                    "the collector lacks series definitions; sending them again"
                );
                self.known.clear();
            }
            (_, reason::SERIES_IDS_FULL) => {
                self.full.insert(seq);
            }
            _ => {}
        }
    }
}

/// Appends one frame of `body`, zstd-compressed when the session uses it
/// and it gets smaller.
fn write(out: &mut Vec<u8>, t: FrameType, body: &[u8], zstd: bool) {
    if zstd
        && let Ok(packed) = zstd::bulk::compress(body, 1)
        && packed.len() < body.len()
    {
        stream::write_frame(out, t, compression::ZSTD, &packed);
        return;
    }
    stream::write_frame(out, t, compression::NONE, body);
}

#[cfg(test)]
mod tests;
