//! Exact deduplication per journal identity: which `(agent, epoch, seq)`
//! are *resolved*, as ranges.
//!
//! An agent numbers its batches within its journal's epoch (docs/protocol.md,
//! "Journal identity"). For each `(agent, epoch)` the `dedupe` table holds
//! the maximal ranges `[first, last]` of resolved sequences, keyed
//! `(agent, epoch, first) → last`. A sequence is resolved when
//!
//! 1. its batch was stored (in the transaction that stored it), or
//! 2. a stored batch carried a health record naming it as a batch the agent
//!    dropped (`HealthRecord.batch`, kinds 1 and 6) and the store did not
//!    hold it: the drop is counted and the sequence resolved, so a stale copy
//!    of that batch arriving later is a duplicate, never stored *and*
//!    counted, or
//! 3. the agent promised never to send it again (`resolved_below` in its
//!    Hello or a batch): everything below collapses into one range `[0, …]`.
//!
//! A batch is a duplicate iff its sequence is resolved, whatever the order
//! batches arrive in and however often they are resent: the state is exact,
//! never a window that forgets. It stays small because sequences resolve in
//! runs: the ranges are the gaps of what the agent still holds (its outbox,
//! its pending drop counts), at most `max_dedupe_ranges` per epoch; a batch
//! that would open one more range past that bound is refused with the
//! transient `DEDUPE_FULL` (the agent resends it later) rather than forgetting
//! anything.
//!
//! These functions run inside the writer's transaction; the invariants are
//! checked against a model by `collector/tests/dedupe.rs`.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{StoreError, corrupt};

/// `(agent, epoch, first seq) -> last seq`: resolved ranges, inclusive.
pub(crate) const DEDUPE: TableDefinition<'_, (&str, u64, u64), u64> =
    TableDefinition::new("dedupe");
/// `(agent, epoch) -> EpochRecord`.
pub(crate) const EPOCHS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("epochs");

/// What the store knows about one journal identity of one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EpochRecord {
    /// When the collector first heard of it (a Hello or a batch), ns.
    pub first_seen_ns: i64,
    /// When a batch of it was last stored, ns (0: never).
    pub last_stored_ns: i64,
    /// Batches stored.
    pub batches: u64,
    /// Raw readings stored.
    pub readings: u64,
    /// Ranges held in the `dedupe` table.
    pub ranges: u64,
    /// The highest `resolved_below` the agent declared.
    pub resolved_below: u64,
}

pub(crate) type DedupeTable<'t> = redb::Table<'t, (&'static str, u64, u64), u64>;

/// The range holding `seq`, if any: `(first, last)`.
fn around(
    table: &DedupeTable<'_>,
    agent: &str,
    epoch: u64,
    seq: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let mut it = table.range((agent, epoch, 0u64)..=(agent, epoch, seq))?;
    Ok(match it.next_back() {
        Some(entry) => {
            let (k, v) = entry?;
            Some((k.value().2, v.value()))
        }
        None => None,
    })
}

/// Whether `seq` of `(agent, epoch)` is resolved.
pub(crate) fn contains(
    table: &DedupeTable<'_>,
    agent: &str,
    epoch: u64,
    seq: u64,
) -> Result<bool, StoreError> {
    Ok(around(table, agent, epoch, seq)?.is_some_and(|(_, last)| last >= seq))
}

/// Whether resolving `seq` would add a range (it touches none).
pub(crate) fn would_open_range(
    table: &DedupeTable<'_>,
    agent: &str,
    epoch: u64,
    seq: u64,
) -> Result<bool, StoreError> {
    if let Some((_, last)) = around(table, agent, epoch, seq)?
        && last.saturating_add(1) >= seq
    {
        return Ok(false);
    }
    Ok(match seq.checked_add(1) {
        Some(next) => table.get((agent, epoch, next))?.is_none(),
        None => true,
    })
}

/// Marks `seq` resolved; returns the change in the number of ranges
/// (+1 a new range, 0 joined one, −1 bridged two). Resolved already: 0.
pub(crate) fn insert(
    table: &mut DedupeTable<'_>,
    agent: &str,
    epoch: u64,
    seq: u64,
) -> Result<i64, StoreError> {
    let prev = around(table, agent, epoch, seq)?;
    if prev.is_some_and(|(_, last)| last >= seq) {
        return Ok(0);
    }
    // `prev.last < seq`, so `last + 1` does not overflow.
    let joins_prev = prev.filter(|&(_, last)| last + 1 == seq);
    let next = match seq.checked_add(1) {
        Some(n) => table.get((agent, epoch, n))?.map(|v| (n, v.value())),
        None => None,
    };
    Ok(match (joins_prev, next) {
        (Some((first, _)), Some((next_first, next_last))) => {
            table.remove((agent, epoch, next_first))?;
            table.insert((agent, epoch, first), next_last)?;
            -1
        }
        (Some((first, _)), None) => {
            table.insert((agent, epoch, first), seq)?;
            0
        }
        (None, Some((next_first, next_last))) => {
            table.remove((agent, epoch, next_first))?;
            table.insert((agent, epoch, seq), next_last)?;
            0
        }
        (None, None) => {
            table.insert((agent, epoch, seq), seq)?;
            1
        }
    })
}

/// Marks every sequence below `below` resolved (the agent's promise);
/// returns the change in the number of ranges.
pub(crate) fn resolve_below(
    table: &mut DedupeTable<'_>,
    agent: &str,
    epoch: u64,
    below: u64,
) -> Result<i64, StoreError> {
    if below == 0 {
        return Ok(0);
    }
    let mut last = below - 1;
    // Ranges starting at or before `below` touch or overlap [0, below - 1].
    let mut covered = Vec::new();
    for entry in table.range((agent, epoch, 0u64)..=(agent, epoch, below))? {
        let (k, v) = entry?;
        covered.push(k.value().2);
        last = last.max(v.value());
    }
    for first in &covered {
        table.remove((agent, epoch, *first))?;
    }
    table.insert((agent, epoch, 0u64), last)?;
    Ok(1 - covered.len() as i64)
}

pub(crate) fn load_epoch(
    txn: &WriteTransaction,
    agent: &str,
    epoch: u64,
) -> Result<Option<EpochRecord>, StoreError> {
    let table = txn.open_table(EPOCHS)?;
    let rec = match table.get((agent, epoch))? {
        Some(v) => Some(ferry_proto::codec::from_bytes("EpochRecord", v.value()).map_err(corrupt)?),
        None => None,
    };
    Ok(rec)
}

pub(crate) fn save_epoch(
    txn: &WriteTransaction,
    agent: &str,
    epoch: u64,
    rec: &EpochRecord,
) -> Result<(), StoreError> {
    let bytes = ferry_proto::codec::to_vec(rec).map_err(corrupt)?;
    txn.open_table(EPOCHS)?
        .insert((agent, epoch), bytes.as_slice())?;
    Ok(())
}

/// Adds `delta` to a range count.
pub(crate) fn adjust(ranges: &mut u64, delta: i64) {
    *ranges = ranges.saturating_add_signed(delta);
}
