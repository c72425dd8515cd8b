//! The write path: one write transaction per group of batches.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_proto::batch::{HealthRecord, WindowAggregate};
use ferry_proto::codec;
use ferry_proto::session::reason;
use redb::{ReadableTable, WriteTransaction};

use super::{
    AGENTS, AGGREGATES, AgentRecord, BATCHES, HEALTH, META, SERIES, SERIES_BY_KEY, STAGED, Store,
    StoreError, bundle, chunk, corrupt,
};

/// Sequences of one agent remembered individually; older ones fall below
/// the floor (see [`DedupeWindow`]).
pub const DEDUPE_WINDOW: u64 = 100_000;

/// A validated batch, decoded and split into chunks outside the writer.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    /// The agent, from its certificate.
    pub agent: Arc<str>,
    /// Batch sequence.
    pub seq: u64,
    /// Remote address, for the agents table.
    pub remote: String,
    /// The batch's series dictionary, each key MessagePack-encoded.
    pub series: Vec<Vec<u8>>,
    /// Encoded chunks.
    pub chunks: Vec<PreparedChunk>,
    /// Window aggregates; `series` indexes [`PreparedBatch::series`].
    pub aggregates: Vec<WindowAggregate>,
    /// Health increments.
    pub health: Vec<HealthRecord>,
    /// Raw readings in the batch.
    pub readings: u64,
}

/// One chunk of a prepared batch.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    /// Index into [`PreparedBatch::series`].
    pub series: u32,
    /// Bucket start.
    pub bucket: i64,
    /// Chunk bytes.
    pub bytes: Vec<u8>,
}

/// What the store did with one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Written in this transaction.
    Stored,
    /// Seen before; nothing written.
    Duplicate,
    /// Refused; nothing written.
    Rejected {
        /// A `ferry_proto::session::reason` code.
        code: u16,
        /// Why.
        reason: String,
    },
}

/// The dedupe window of one agent, a plain state machine over the durable
/// set `(agent, seq)`: sequences at or above `floor` are remembered one by
/// one; when more than `capacity` are held, the oldest are forgotten and the
/// floor rises past them. A sequence below the floor counts as seen: agents
/// number batches strictly increasingly and never reuse a number, so a batch
/// that old was either stored or permanently refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeWindow {
    /// Every sequence below this is considered seen.
    pub floor: u64,
    /// Sequences held individually.
    pub entries: u64,
    /// Most sequences held individually.
    pub capacity: u64,
}

impl DedupeWindow {
    /// True if `seq` is a duplicate, given whether the set holds it.
    pub fn is_duplicate(&self, seq: u64, in_set: bool) -> bool {
        seq < self.floor || in_set
    }

    /// Records an insertion; returns how many of the oldest entries must be
    /// removed from the set now.
    pub fn insert(&mut self) -> u64 {
        self.entries += 1;
        self.entries.saturating_sub(self.capacity)
    }

    /// Records that the oldest entries up to and including `max_removed` were
    /// removed, `count` of them.
    pub fn removed(&mut self, count: u64, max_removed: u64) {
        self.entries -= count.min(self.entries);
        self.floor = self.floor.max(max_removed.saturating_add(1));
    }
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
            pending: Vec::new(),
            saved: (next_series, next_chunk, chunk_bytes, next_event),
        }
    }

    /// Whether stored batches are appended to the event log (only while
    /// processors are configured: nobody would consume the log otherwise).
    pub fn set_event_log(&mut self, on: bool) {
        self.log_events = on;
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

    pub(crate) fn save_counters(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META)?;
        meta.insert("next_series", self.next_series)?;
        meta.insert("next_chunk", self.next_chunk)?;
        meta.insert("chunk_bytes", self.chunk_bytes)?;
        meta.insert("next_event", self.next_event)?;
        Ok(())
    }
}

fn load_agent(txn: &WriteTransaction, agent: &str) -> Result<AgentRecord, StoreError> {
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

fn save_agent(txn: &WriteTransaction, rec: &AgentRecord) -> Result<(), StoreError> {
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

fn is_dropped(kind: u16) -> bool {
    use ferry_proto::health::*;
    matches!(
        kind,
        DROPPED_JOURNAL_FULL
            | DROPPED_DEVICE_RING
            | DROPPED_LATE
            | DROPPED_QUEUE_FULL
            | DROPPED_REJECTED
    )
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
        state.begin();
        let result = self.apply_group_inner(state, batches, max_series, now_ns);
        if result.is_err() {
            state.rollback();
        }
        result
    }

    fn apply_group_inner(
        &self,
        state: &mut WriterState,
        batches: &[PreparedBatch],
        max_series: u64,
        now_ns: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut txn = self.db().begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            out.push(apply_one(&txn, state, b, max_series, now_ns)?);
        }
        state.save_counters(&txn)?;
        txn.commit()?;
        Ok(out)
    }
}

fn apply_one(
    txn: &WriteTransaction,
    state: &mut WriterState,
    b: &PreparedBatch,
    max_series: u64,
    now_ns: i64,
) -> Result<Applied, StoreError> {
    let mut rec = load_agent(txn, &b.agent)?;
    if rec.revoked {
        return Ok(Applied::Rejected {
            code: reason::INVALID,
            reason: format!("agent {} is revoked", b.agent),
        });
    }
    let mut window = DedupeWindow {
        floor: rec.dedupe_floor,
        entries: rec.dedupe_entries,
        capacity: DEDUPE_WINDOW,
    };
    let mut batches = txn.open_table(BATCHES)?;
    let in_set = batches.get((&*b.agent, b.seq))?.is_some();
    if window.is_duplicate(b.seq, in_set) {
        return Ok(Applied::Duplicate);
    }

    // Series ids; refuse the batch before writing anything if it would pass
    // the series limit.
    let new = b
        .series
        .iter()
        .filter(|k| !state.dict.contains_key(*k))
        .count() as u64;
    if state.dict.len() as u64 + new > max_series {
        return Ok(Applied::Rejected {
            code: reason::INVALID,
            reason: format!("the store holds its limit of {max_series} series"),
        });
    }
    let mut ids = Vec::with_capacity(b.series.len());
    {
        let mut series = txn.open_table(SERIES)?;
        let mut by_key = txn.open_table(SERIES_BY_KEY)?;
        for key in &b.series {
            let id = match state.dict.get(key) {
                Some(&id) => id,
                None => {
                    state.next_series += 1;
                    let id = state.next_series;
                    series.insert(id, key.as_slice())?;
                    by_key.insert(key.as_slice(), id)?;
                    state.dict.insert(key.clone(), id);
                    state.pending.push(key.clone());
                    id
                }
            };
            ids.push(id);
        }
    }
    {
        // One staged bundle per bucket the batch touches: its chunks of that
        // bucket, by series id (docs/storage.md, "Staged bundles").
        let mut per_bucket: std::collections::BTreeMap<i64, Vec<(u64, &[u8])>> =
            std::collections::BTreeMap::new();
        for c in &b.chunks {
            per_bucket
                .entry(c.bucket)
                .or_default()
                .push((ids[c.series as usize], c.bytes.as_slice()));
        }
        let mut staged = txn.open_table(STAGED)?;
        for (bucket, mut pieces) in per_bucket {
            pieces.sort_by_key(|p| p.0); // stable: a series' pieces keep their order
            let row = bundle::encode(&pieces);
            let id = state.next_chunk_id();
            staged.insert((bucket, id), row.as_slice())?;
            state.add_bytes(row.len() as u64);
        }
    }
    if !b.aggregates.is_empty() {
        let mut aggs = txn.open_table(AGGREGATES)?;
        for a in &b.aggregates {
            let key = (ids[a.series as usize], a.start_ns, a.len_ns);
            let merged = match aggs.get(key)? {
                Some(old) => {
                    let mut acc = chunk::decode_aggregate(old.value()).map_err(corrupt)?;
                    chunk::merge_aggregate(&mut acc, a);
                    acc
                }
                None => a.clone(),
            };
            aggs.insert(key, chunk::encode_aggregate(&merged).as_slice())?;
        }
    }
    if !b.health.is_empty() {
        let mut health = txn.open_table(HEALTH)?;
        for h in &b.health {
            // Readings of a batch the agent dropped, but which this store
            // holds: only the ack was lost. Counting them would count them
            // twice (docs/protocol.md, HealthRecord).
            if h.batch != 0 && batches.get((&*b.agent, h.batch))?.is_some() {
                continue;
            }
            let key = (&*b.agent, h.source.as_str(), h.kind);
            let total = health
                .get(key)?
                .map_or(0, |v| v.value())
                .saturating_add(h.count);
            health.insert(key, total)?;
            if is_dropped(h.kind) {
                rec.dropped = rec.dropped.saturating_add(h.count);
            }
        }
    }

    batches.insert((&*b.agent, b.seq), now_ns)?;
    let prune = window.insert();
    if prune > 0 {
        let lo = (&*b.agent, 0u64);
        let hi = (&*b.agent, u64::MAX);
        let oldest: Vec<u64> = batches
            .range(lo..=hi)?
            .take(prune as usize)
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for &seq in &oldest {
            batches.remove((&*b.agent, seq))?;
        }
        if let Some(&max) = oldest.last() {
            window.removed(oldest.len() as u64, max);
        }
    }
    rec.dedupe_floor = window.floor;
    rec.dedupe_entries = window.entries;
    if rec.first_seen_ns == 0 {
        rec.first_seen_ns = now_ns;
    }
    rec.last_seen_ns = now_ns;
    rec.last_addr.clone_from(&b.remote);
    rec.batches += 1;
    rec.readings += b.readings;
    rec.last_seq = Some(rec.last_seq.map_or(b.seq, |s| s.max(b.seq)));
    save_agent(txn, &rec)?;
    if state.log_events {
        // The event log entry commits with the batch: it exists iff the
        // batch is stored (docs/alerts.md).
        let mut aggregate_series: Vec<u64> = b
            .aggregates
            .iter()
            .map(|a| ids[a.series as usize])
            .collect();
        aggregate_series.sort_unstable();
        aggregate_series.dedup();
        let entry = crate::fanout::LogEntry {
            agent: b.agent.to_string(),
            stored_ns: now_ns,
            chunks: b
                .chunks
                .iter()
                .map(|c| (ids[c.series as usize], c.bytes.clone()))
                .collect(),
            aggregate_series,
            aggregates: b
                .aggregates
                .iter()
                .map(|a| (ids[a.series as usize], a.clone()))
                .collect(),
        };
        state.next_event += 1;
        super::append_log(txn, state.next_event, &entry)?;
    }
    Ok(Applied::Stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_window_forgets_oldest_and_raises_floor() {
        let mut w = DedupeWindow {
            floor: 0,
            entries: 0,
            capacity: 2,
        };
        assert!(!w.is_duplicate(5, false));
        assert!(w.is_duplicate(5, true));
        assert_eq!(w.insert(), 0);
        assert_eq!(w.insert(), 0);
        assert_eq!(w.insert(), 1);
        w.removed(1, 5);
        assert_eq!((w.floor, w.entries), (6, 2));
        assert!(w.is_duplicate(3, false));
        assert!(!w.is_duplicate(6, false));
    }
}
