//! The write path: one write transaction per group of batches.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_proto::batch::{HealthRecord, WindowAggregate};
use ferry_proto::codec;
use ferry_proto::session::reason;
use redb::{ReadableTable, WriteTransaction};

use super::dedupe::{self, DEDUPE, EpochRecord};
use super::{
    AGENTS, AGGREGATES, AgentRecord, HEALTH, META, REFUSED, SERIES, SERIES_BY_KEY, STAGED, Store,
    StoreError, bundle, chunk, corrupt,
};
use ferry_proto::session::Refused;

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
    /// Refused; nothing written.
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

fn apply_one(
    txn: &WriteTransaction,
    state: &mut WriterState,
    b: &PreparedBatch,
    max_series: u64,
    now_ns: i64,
) -> Result<Applied, StoreError> {
    let agent = &*b.agent;
    let mut rec = load_agent(txn, agent)?;
    if rec.revoked {
        return Ok(Applied::Rejected {
            code: reason::INVALID,
            reason: format!("agent {agent} is revoked"),
        });
    }
    let (epoch, seq) = (b.epoch, b.seq);
    let mut ranges = txn.open_table(DEDUPE)?;
    if dedupe::contains(&ranges, agent, epoch, seq)? {
        return Ok(Applied::Duplicate);
    }
    let mut erec = match dedupe::load_epoch(txn, agent, epoch)? {
        Some(e) => e,
        None => {
            if rec.epochs >= state.dedupe.max_epochs {
                return Ok(too_many_epochs(agent, rec.epochs));
            }
            rec.epochs += 1;
            EpochRecord {
                first_seen_ns: now_ns,
                ..EpochRecord::default()
            }
        }
    };
    // A batch naming dropped batches may close gaps: it gets twice the
    // room, so an agent shipping oldest first always gets through.
    let carries_drops = b.health.iter().any(|h| h.batch != 0);
    let bound = if carries_drops {
        state.dedupe.max_ranges.saturating_mul(2)
    } else {
        state.dedupe.max_ranges
    };
    if erec.ranges >= bound && dedupe::would_open_range(&ranges, agent, epoch, seq)? {
        return Ok(Applied::Rejected {
            code: reason::DEDUPE_FULL,
            reason: format!(
                "epoch {epoch:016x} of agent {agent} has {} unresolved gaps, the limit: \
                 resend batch {seq} after the batches before it",
                erec.ranges
            ),
        });
    }

    // Series ids. Series new to the store past its limit are refused, with
    // their readings (counted per device); the rest of the batch is stored.
    let mut room = max_series.saturating_sub(state.dict.len() as u64);
    let mut ids: Vec<Option<u64>> = Vec::with_capacity(b.series.len());
    {
        let mut series = txn.open_table(SERIES)?;
        let mut by_key = txn.open_table(SERIES_BY_KEY)?;
        for key in &b.series {
            let id = match state.dict.get(key) {
                Some(&id) => Some(id),
                None if room == 0 => None,
                None => {
                    room -= 1;
                    state.next_series += 1;
                    let id = state.next_series;
                    series.insert(id, key.as_slice())?;
                    by_key.insert(key.as_slice(), id)?;
                    state.dict.insert(key.clone(), id);
                    state.pending.push(key.clone());
                    Some(id)
                }
            };
            ids.push(id);
        }
    }
    // Refusals: at ingest, and here for series past the limit.
    let mut refused: Vec<(u32, u16, u64)> = b.refused.clone();
    let mut stored_readings = 0u64;
    {
        // One staged bundle per bucket the batch touches: its chunks of that
        // bucket, by series id (docs/storage.md, "Staged bundles").
        let mut per_bucket: std::collections::BTreeMap<i64, Vec<(u64, &[u8])>> =
            std::collections::BTreeMap::new();
        for c in &b.chunks {
            match ids[c.series as usize] {
                Some(id) => {
                    per_bucket
                        .entry(c.bucket)
                        .or_default()
                        .push((id, c.bytes.as_slice()));
                    stored_readings += c.readings;
                }
                None => refused.push((c.series, reason::SERIES_LIMIT, c.readings)),
            }
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
    let mut aggregate_series: Vec<u64> = Vec::new();
    if !b.aggregates.is_empty() {
        let mut aggs = txn.open_table(AGGREGATES)?;
        for a in &b.aggregates {
            let Some(id) = ids[a.series as usize] else {
                refused.push((a.series, reason::SERIES_LIMIT, a.count));
                continue;
            };
            aggregate_series.push(id);
            rec.window_readings = rec.window_readings.saturating_add(a.count);
            let key = (id, a.start_ns, a.len_ns);
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
        // Records naming a batch the agent dropped (kinds 1 and 6) count
        // only if this store never resolved that batch: stored means only
        // its ack was lost (docs/protocol.md, HealthRecord). Decided for
        // every named batch before any is resolved below.
        let mut named: std::collections::BTreeMap<u64, bool> = Default::default();
        for h in &b.health {
            if h.batch != 0 && !named.contains_key(&h.batch) {
                named.insert(h.batch, dedupe::contains(&ranges, agent, epoch, h.batch)?);
            }
        }
        let mut health = txn.open_table(HEALTH)?;
        for h in &b.health {
            // A zero count only names a dropped batch (it held no readings).
            if named.get(&h.batch) == Some(&true) || h.count == 0 {
                continue;
            }
            let key = (agent, h.source.as_str(), h.kind);
            let total = health
                .get(key)?
                .map_or(0, |v| v.value())
                .saturating_add(h.count);
            health.insert(key, total)?;
            if ferry_proto::health::is_dropped(h.kind) {
                rec.dropped = rec.dropped.saturating_add(h.count);
            }
        }
        // A dropped batch counted now is resolved: a stale copy of it
        // arriving later is a duplicate, never stored *and* counted.
        for (&dropped, &resolved) in &named {
            if !resolved {
                let delta = dedupe::insert(&mut ranges, agent, epoch, dropped)?;
                dedupe::adjust(&mut erec.ranges, delta);
            }
        }
    }
    let delta = dedupe::insert(&mut ranges, agent, epoch, seq)?;
    dedupe::adjust(&mut erec.ranges, delta);
    if b.resolved_below > erec.resolved_below {
        let delta = dedupe::resolve_below(&mut ranges, agent, epoch, b.resolved_below)?;
        dedupe::adjust(&mut erec.ranges, delta);
        erec.resolved_below = b.resolved_below;
    }
    drop(ranges);

    let by_reason = record_refused(txn, agent, &b.devices, &refused)?;
    let refused_total: u64 = by_reason.iter().map(|r| r.readings).sum();
    erec.batches += 1;
    erec.readings += stored_readings;
    erec.last_stored_ns = now_ns;
    dedupe::save_epoch(txn, agent, epoch, &erec)?;
    if rec.first_seen_ns == 0 {
        rec.first_seen_ns = now_ns;
    }
    rec.last_seen_ns = now_ns;
    rec.last_addr.clone_from(&b.remote);
    rec.batches += 1;
    rec.readings += stored_readings;
    rec.refused = rec.refused.saturating_add(refused_total);
    if epoch == rec.epoch {
        rec.last_seq = Some(rec.last_seq.map_or(seq, |s| s.max(seq)));
    }
    save_agent(txn, &rec)?;
    if state.log_events {
        // The event log entry commits with the batch: it exists iff the
        // batch is stored (docs/alerts.md).
        aggregate_series.sort_unstable();
        aggregate_series.dedup();
        let entry = crate::fanout::LogEntry {
            agent: b.agent.to_string(),
            stored_ns: now_ns,
            chunks: b
                .chunks
                .iter()
                .filter_map(|c| Some((ids[c.series as usize]?, c.bytes.clone())))
                .collect(),
            aggregate_series,
            aggregates: b
                .aggregates
                .iter()
                .filter_map(|a| Some((ids[a.series as usize]?, a.clone())))
                .collect(),
        };
        state.next_event += 1;
        super::append_log(txn, state.next_event, &entry)?;
    }
    Ok(Applied::Stored {
        readings: stored_readings,
        refused: by_reason,
    })
}

fn too_many_epochs(agent: &str, epochs: u64) -> Applied {
    Applied::Rejected {
        code: reason::DEDUPE_FULL,
        reason: format!(
            "agent {agent} has {epochs} journal epochs, the limit (limits.max_epochs_per_agent)"
        ),
    }
}

/// Adds refusals to the `refused` table by `(device, reason)`; returns the
/// totals by reason, codes ascending.
fn record_refused(
    txn: &WriteTransaction,
    agent: &str,
    devices: &[String],
    refused: &[(u32, u16, u64)],
) -> Result<Vec<Refused>, StoreError> {
    if refused.is_empty() {
        return Ok(Vec::new());
    }
    let mut per: std::collections::BTreeMap<(&str, u16), u64> = Default::default();
    for &(series, code, n) in refused {
        let device = devices.get(series as usize).map_or("", String::as_str);
        *per.entry((device, code)).or_default() += n;
    }
    let mut table = txn.open_table(REFUSED)?;
    let mut by_reason: std::collections::BTreeMap<u16, u64> = Default::default();
    for ((device, code), n) in per {
        if n == 0 {
            continue;
        }
        let key = (agent, device, code);
        let total = table.get(key)?.map_or(0, |v| v.value()).saturating_add(n);
        table.insert(key, total)?;
        *by_reason.entry(code).or_default() += n;
    }
    Ok(by_reason
        .into_iter()
        .map(|(code, readings)| Refused { code, readings })
        .collect())
}

/// A session's Hello, to record ([`Store::apply_commit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// The agent, from its certificate.
    pub agent: Arc<str>,
    /// `Hello.epoch`.
    pub epoch: u64,
    /// `Hello.resolved_below`.
    pub resolved_below: u64,
}

/// Records a Hello: the agent's current journal epoch (a change is a
/// journal reset, counted and kept in its record), the epoch's record and
/// its `resolved_below` promise.
fn session_in(
    txn: &WriteTransaction,
    s: &SessionRequest,
    limits: DedupeLimits,
    now_ns: i64,
) -> Result<SessionOutcome, StoreError> {
    let (agent, epoch) = (&*s.agent, s.epoch);
    let mut rec = load_agent(txn, agent)?;
    let mut erec = match dedupe::load_epoch(txn, agent, epoch)? {
        Some(e) => e,
        None => {
            if rec.epochs >= limits.max_epochs {
                return Ok(SessionOutcome::TooManyEpochs(rec.epochs));
            }
            rec.epochs += 1;
            EpochRecord {
                first_seen_ns: now_ns,
                ..EpochRecord::default()
            }
        }
    };
    let mut previous_epoch = None;
    if epoch != rec.epoch {
        if rec.epoch != 0 || rec.batches > 0 {
            rec.journal_resets += 1;
            previous_epoch = Some(rec.epoch);
            rec.previous_epoch = rec.epoch;
        }
        rec.epoch = epoch;
        rec.epoch_since_ns = now_ns;
        rec.last_seq = None;
    }
    if s.resolved_below > erec.resolved_below {
        let mut ranges = txn.open_table(DEDUPE)?;
        let delta = dedupe::resolve_below(&mut ranges, agent, epoch, s.resolved_below)?;
        dedupe::adjust(&mut erec.ranges, delta);
        erec.resolved_below = s.resolved_below;
    }
    dedupe::save_epoch(txn, agent, epoch, &erec)?;
    save_agent(txn, &rec)?;
    Ok(SessionOutcome::Recorded {
        previous_epoch,
        journal_resets: rec.journal_resets,
    })
}

impl Store {
    /// Records one session's Hello in a durable transaction of its own
    /// (the server groups them with batches: [`Store::apply_commit`]).
    pub fn open_session(
        &self,
        agent: &str,
        epoch: u64,
        resolved_below: u64,
        limits: DedupeLimits,
        now_ns: i64,
    ) -> Result<SessionOutcome, StoreError> {
        let mut txn = self.db().begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let request = SessionRequest {
            agent: Arc::from(agent),
            epoch,
            resolved_below,
        };
        let out = session_in(&txn, &request, limits, now_ns)?;
        txn.commit()?;
        Ok(out)
    }
}
