//! Revision 5 on the agent's side: coding compact batches against value
//! references (docs/protocol.md, "Value references").
//!
//! The shipper keeps the session's [`References`] as the collector has
//! confirmed them: a generation counts once the stream of the batch that
//! set it is answered `stored` or `duplicate`. Every compact batch is coded
//! against the latest confirmed generation; a batch sets the next
//! generation when no other batch setting one is unanswered and no batch
//! in flight is coded against the generation before the latest (which the
//! new one would push out of the collector's two). An `UNKNOWN_REFERENCE`
//! answer to a batch coded against the current references means the
//! collector holds something else (a setting answered otherwise may or may
//! not have been applied): the agent forgets its references, and its next
//! batch starts afresh. Nothing is persisted: the journal keeps batches
//! self-contained and a new session starts from none.

use std::collections::HashMap;

use ferry_proto::batch::Batch;
use ferry_proto::compact::refs::REFERENCE_GENERATIONS;
use ferry_proto::compact::{CompactBatch, CompactError, References};
use ferry_proto::session::Welcome;

/// How the collector answered a compact batch, for the references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Stored or duplicate: the collector resolved it (and applied the
    /// generation it set).
    Resolved,
    /// `UNKNOWN_REFERENCE`: the collector does not hold its generation.
    UnknownReference,
    /// Anything else (the generation it set may or may not be applied).
    Other,
}

/// A generation a batch in flight sets.
#[derive(Debug)]
struct Setting {
    seq: u64,
    base: u64,
    sets: u64,
    last: Vec<(u32, f64)>,
}

/// What [`SessionRefs::encode`] planned for one batch, to record with
/// [`SessionRefs::sent`] once it goes out.
#[derive(Debug)]
pub struct Coded {
    base: u64,
    sets: u64,
    last: Vec<(u32, f64)>,
}

/// One session's value references, on the agent's side.
#[derive(Debug, Default)]
pub struct SessionRefs {
    /// The collector announced references (`reference_generations ≥ 2`).
    on: bool,
    /// As the collector confirmed them.
    refs: References,
    /// The next generation number (never reused in the session).
    next: u64,
    /// Generations from this one on belong to the current references
    /// (earlier ones to references forgotten after `UNKNOWN_REFERENCE`).
    since: u64,
    /// The batch in flight that sets a generation.
    setting: Option<Setting>,
    /// The generation each compact batch in flight is coded against, by
    /// outbox seq.
    coded: HashMap<u64, u64>,
    /// Times the references were forgotten.
    resets: u64,
}

impl SessionRefs {
    /// The references of a session that began with `welcome`.
    pub fn new(welcome: &Welcome) -> Self {
        Self {
            on: welcome.reference_generations >= REFERENCE_GENERATIONS,
            next: 1,
            since: 1,
            ..Self::default()
        }
    }

    /// The latest confirmed generation (0: none).
    #[cfg(test)]
    pub fn latest(&self) -> u64 {
        self.refs.latest()
    }

    /// Times the references were forgotten after `UNKNOWN_REFERENCE`.
    #[cfg(test)]
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// `batch` (dictionary index `i` is series id `ids[i]`) as a compact
    /// batch coded against the confirmed references, maybe setting the
    /// next generation; [`SessionRefs::sent`] records it once it goes out.
    pub fn encode(
        &mut self,
        batch: &Batch,
        ids: &[u32],
    ) -> Result<(CompactBatch, Coded), CompactError> {
        if !self.on {
            let c = CompactBatch::from_batch(batch, ids)?;
            let coded = Coded {
                base: 0,
                sets: 0,
                last: Vec::new(),
            };
            return Ok((c, coded));
        }
        let previous = self.refs.previous();
        let may_set = self.setting.is_none()
            && !self
                .coded
                .values()
                .any(|&base| base != 0 && base == previous);
        let sets = if may_set { self.next } else { 0 };
        let (c, last) = self.refs.encode(batch, ids, sets)?;
        let coded = Coded {
            base: c.ref_base,
            sets,
            last,
        };
        Ok((c, coded))
    }

    /// Batch `seq` (outbox seq) went out coded as planned.
    pub fn sent(&mut self, seq: u64, coded: Coded) {
        if !self.on {
            return;
        }
        self.coded.insert(seq, coded.base);
        if coded.sets != 0 {
            self.next = coded.sets + 1;
            self.setting = Some(Setting {
                seq,
                base: coded.base,
                sets: coded.sets,
                last: coded.last,
            });
        }
    }

    /// The collector answered batch `seq` (outbox seq).
    pub fn answered(&mut self, seq: u64, answer: Answered) {
        let base = self.coded.remove(&seq);
        let setting = self.setting.take_if(|s| s.seq == seq);
        match answer {
            Answered::Resolved => {
                if let Some(s) = setting
                    && self.refs.set(s.base, s.sets, &s.last).is_err()
                {
                    self.reset();
                }
            }
            Answered::UnknownReference => {
                let current = base.is_some_and(|b| b >= self.since);
                if setting.is_some() || current {
                    tracing::warn!(
                        seq,
                        "the collector lacks a value reference generation; starting afresh"
                    );
                    self.reset();
                }
            }
            Answered::Other => {}
        }
    }

    fn reset(&mut self) {
        self.refs = References::default();
        self.setting = None;
        self.since = self.next;
        self.resets += 1;
    }
}
