//! The write path: one write transaction per group of batches.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_proto::batch::{HealthRecord, WindowAggregate};
use ferry_proto::codec;
use redb::{ReadableTable, WriteTransaction};

use super::{AGENTS, AgentRecord, META, Store, StoreError, corrupt};
use ferry_proto::session::Refused;

mod batch;
mod session;

use batch::apply_one;
pub use session::SessionRequest;
use session::session_in;

/// Default bound on the dedupe ranges of one journal epoch
/// (`limits.max_dedupe_ranges`).
pub const DEFAULT_MAX_DEDUPE_RANGES: u64 = 10_000;
/// Default bound on the journal epochs of one agent
/// (`limits.max_epochs_per_agent`).
pub const DEFAULT_MAX_EPOCHS: u64 = 1_000;

/// A validated batch, decoded and split into chunks outside the writer.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    /// The agent, from its certificate.
    pub agent: Arc<str>,
    /// The journal identity `seq` counts in: the batch's own, else the
    /// session's (set by the connection after [`crate::ingest::prepare`]).
    pub epoch: u64,
    /// The agent's promise for `epoch`: nothing below this comes again.
    pub resolved_below: u64,
    /// Batch sequence.
    pub seq: u64,
    /// Remote address, for the agents table.
    pub remote: String,
    /// The batch's series dictionary, each key MessagePack-encoded.
    pub series: Vec<Vec<u8>>,
    /// Per series of the dictionary: its `device` tag, or "" without one
    /// (what refused readings are counted under).
    pub devices: Vec<String>,
    /// Readings refused at ingest: `(series index, reason code, readings)`.
    pub refused: Vec<(u32, u16, u64)>,
    /// Encoded chunks.
    pub chunks: Vec<PreparedChunk>,
    /// Window aggregates; `series` indexes [`PreparedBatch::series`].
    pub aggregates: Vec<WindowAggregate>,
    /// Health increments.
    pub health: Vec<HealthRecord>,
    /// Raw readings in `chunks`.
    pub readings: u64,
    /// Cluster workers (docs/cluster.md, "Loss accounting"): a batch the
    /// store refuses for good (its epoch's dedupe ranges at their bound, a
    /// revoked agent) is *counted* instead of refused: its readings go to
    /// the `refused` table under the refusal's code, its health records
    /// count and its sequence is resolved, in the one transaction — the
    /// front end acked it, so nobody can resend it, and the ledger stays
    /// whole; a redelivered copy is then a duplicate. The answer is still
    /// [`Applied::Rejected`]. Single-process mode leaves it false: the agent
    /// is told and resends or counts the drop itself.
    pub count_refusal: bool,
}

/// One chunk of a prepared batch.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    /// Index into [`PreparedBatch::series`].
    pub series: u32,
    /// Bucket start.
    pub bucket: i64,
    /// Readings in the chunk.
    pub readings: u64,
    /// Chunk bytes.
    pub bytes: Vec<u8>,
}

/// What the store did with one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Written in this transaction, except the readings it lists as
    /// refused (by reason code, codes ascending).
    Stored {
        /// Raw readings stored.
        readings: u64,
        /// Readings not stored, by reason.
        refused: Vec<Refused>,
    },
    /// Resolved before (stored, or counted as dropped); nothing written.
    Duplicate,
    /// Refused; nothing written (with [`PreparedBatch::count_refusal`]:
    /// its readings counted as refused under `code`, its health records
    /// and sequence recorded).
    Rejected {
        /// A `ferry_proto::session::reason` code.
        code: u16,
        /// Why.
        reason: String,
    },
}

/// The bounds of the dedupe state (docs/storage.md, "Dedupe").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeLimits {
    /// Most ranges per journal epoch.
    pub max_ranges: u64,
    /// Most journal epochs per agent.
    pub max_epochs: u64,
}

impl Default for DedupeLimits {
    fn default() -> Self {
        Self {
            max_ranges: DEFAULT_MAX_DEDUPE_RANGES,
            max_epochs: DEFAULT_MAX_EPOCHS,
        }
    }
}

/// What the store recorded about a new session (a Hello).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Recorded. `previous_epoch`: the agent's journal epoch before this
    /// Hello, when the Hello named another one (its journal was replaced).
    Recorded {
        /// The epoch the agent had until now.
        previous_epoch: Option<u64>,
        /// Journal resets of this agent, this one included.
        journal_resets: u64,
    },
    /// Refused: the agent has `limits.max_epochs_per_agent` epochs.
    TooManyEpochs(u64),
}

/// What the writer keeps in memory between transactions: the series
/// dictionary and counters. Rolled back when a commit fails.
#[derive(Debug)]
pub struct WriterState {
    dict: HashMap<Vec<u8>, u64>,
    next_series: u64,
    next_chunk: u64,
    chunk_bytes: u64,
    next_event: u64,
    log_events: bool,
    dedupe: DedupeLimits,
    pending: Vec<Vec<u8>>,
    saved: (u64, u64, u64, u64),
}

impl WriterState {
    pub(crate) fn new(
        dict: HashMap<Vec<u8>, u64>,
        next_series: u64,
        next_chunk: u64,
        chunk_bytes: u64,
        next_event: u64,
    ) -> Self {
        Self {
            dict,
            next_series,
            next_chunk,
            chunk_bytes,
            next_event,
            log_events: false,
            dedupe: DedupeLimits::default(),
            pending: Vec::new(),
            saved: (next_series, next_chunk, chunk_bytes, next_event),
        }
    }

    /// Whether stored batches are appended to the event log (only while
    /// processors are configured: nobody would consume the log otherwise).
    pub fn set_event_log(&mut self, on: bool) {
        self.log_events = on;
    }

    /// Bounds of the dedupe state.
    pub fn set_dedupe_limits(&mut self, limits: DedupeLimits) {
        self.dedupe = limits;
    }

    /// Last event-log sequence assigned.
    pub fn event_head(&self) -> u64 {
        self.next_event
    }

    /// Number of series known.
    pub fn series_count(&self) -> u64 {
        self.dict.len() as u64
    }

    /// Bytes of chunk data stored.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    pub(crate) fn max_series_id(&self) -> u64 {
        self.next_series
    }

    pub(crate) fn begin(&mut self) {
        self.pending.clear();
        self.saved = (
            self.next_series,
            self.next_chunk,
            self.chunk_bytes,
            self.next_event,
        );
    }

    pub(crate) fn rollback(&mut self) {
        for key in self.pending.drain(..) {
            self.dict.remove(&key);
        }
        (
            self.next_series,
            self.next_chunk,
            self.chunk_bytes,
            self.next_event,
        ) = self.saved;
    }

    pub(crate) fn sub_bytes(&mut self, n: u64) {
        self.chunk_bytes = self.chunk_bytes.saturating_sub(n);
    }

    pub(crate) fn next_chunk_id(&mut self) -> u64 {
        self.next_chunk += 1;
        self.next_chunk
    }

    pub(crate) fn add_bytes(&mut self, n: u64) {
        self.chunk_bytes += n;
    }

    /// Tests: stores `bytes` as a chunk of series `sid` in `bucket` as it
    /// is, under a new chunk id, indexed by time and counted.
    #[cfg(test)]
    pub(crate) fn insert_chunk(
        &mut self,
        txn: &WriteTransaction,
        sid: u64,
        bucket: i64,
        bytes: &[u8],
    ) {
        let cid = self.next_chunk_id();
        txn.open_table(super::CHUNKS)
            .unwrap()
            .insert((sid, bucket, cid), bytes)
            .unwrap();
        txn.open_table(super::CHUNKS_BY_TIME)
            .unwrap()
            .insert((bucket, sid, cid), bytes.len() as u32)
            .unwrap();
        self.add_bytes(bytes.len() as u64);
    }

    pub(crate) fn save_counters(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META)?;
        meta.insert("next_series", self.next_series)?;
        meta.insert("next_chunk", self.next_chunk)?;
        meta.insert("chunk_bytes", self.chunk_bytes)?;
        meta.insert("next_event", self.next_event)?;
        Ok(())
    }
}

pub(super) fn load_agent(txn: &WriteTransaction, agent: &str) -> Result<AgentRecord, StoreError> {
    let table = txn.open_table(AGENTS)?;
    let rec = match table.get(agent)? {
        Some(v) => codec::from_bytes("AgentRecord", v.value()).map_err(corrupt)?,
        None => AgentRecord {
            id: agent.to_owned(),
            ..AgentRecord::default()
        },
    };
    Ok(rec)
}

pub(super) fn save_agent(txn: &WriteTransaction, rec: &AgentRecord) -> Result<(), StoreError> {
    let bytes = codec::to_vec(rec).map_err(corrupt)?;
    txn.open_table(AGENTS)?
        .insert(rec.id.as_str(), bytes.as_slice())?;
    Ok(())
}

pub(crate) fn revoke_in(txn: &WriteTransaction, agent: &str) -> Result<bool, StoreError> {
    let mut rec = load_agent(txn, agent)?;
    let changed = !rec.revoked;
    rec.revoked = true;
    save_agent(txn, &rec)?;
    Ok(changed)
}

impl Store {
    /// Applies a group of batches in one durable write transaction and
    /// returns what happened to each, in order. On `Err` nothing was
    /// written and `state` is rolled back.
    pub fn apply_group(
        &self,
        state: &mut WriterState,
        batches: &[PreparedBatch],
        max_series: u64,
        now_ns: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        Ok(self
            .apply_commit(state, &[], batches, max_series, now_ns)?
            .1)
    }

    /// Records sessions' Hellos, then applies batches, in one durable write
    /// transaction (a reconnect storm costs one fsync per group, not one
    /// per agent). On `Err` nothing was written and `state` is rolled back.
    pub fn apply_commit(
        &self,
        state: &mut WriterState,
        sessions: &[SessionRequest],
        batches: &[PreparedBatch],
        max_series: u64,
        now_ns: i64,
    ) -> Result<(Vec<SessionOutcome>, Vec<Applied>), StoreError> {
        state.begin();
        let result = self.apply_commit_inner(state, sessions, batches, max_series, now_ns);
        if result.is_err() {
            state.rollback();
        }
        result
    }

    fn apply_commit_inner(
        &self,
        state: &mut WriterState,
        sessions: &[SessionRequest],
        batches: &[PreparedBatch],
        max_series: u64,
        now_ns: i64,
    ) -> Result<(Vec<SessionOutcome>, Vec<Applied>), StoreError> {
        let mut txn = self.db().begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let mut opened = Vec::with_capacity(sessions.len());
        for s in sessions {
            opened.push(session_in(&txn, s, state.dedupe, now_ns)?);
        }
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            out.push(apply_one(&txn, state, b, max_series, now_ns)?);
        }
        state.save_counters(&txn)?;
        txn.commit()?;
        Ok((opened, out))
    }
}
