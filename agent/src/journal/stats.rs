//! Reading the journal for operators: counters, what waits per series,
//! device marks.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use ferry_proto::batch::Batch;
use redb::{ReadableDatabase, ReadableTable};

use super::rows::PendingRow;

use super::*;

/// Counters for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Bytes of rows (invariant 5).
    pub bytes: u64,
    /// Disk budget.
    pub budget_bytes: u64,
    /// Readings in the batch being filled.
    pub pending_readings: u64,
    /// Readings counted in open windows.
    pub window_readings: u64,
    /// Open windows.
    pub open_windows: u64,
    /// Sealed batches waiting for an ack.
    pub outbox_batches: u64,
    /// Readings in those batches.
    pub outbox_readings: u64,
    /// `created_ns` of the oldest unacked batch.
    pub oldest_unacked_ns: Option<i64>,
    /// Next batch sequence.
    pub next_seq: u64,
    /// Batches handed out and not yet acked.
    pub in_flight: u64,
    /// Cumulative drops by (origin, kind).
    pub dropped: Vec<(String, u16, u64)>,
}

impl Journal {
    /// Counters for `status`.
    pub fn stats(&self) -> Result<JournalStats, CommitError> {
        let txn = self.db.begin_read()?;
        let mut stats = JournalStats {
            bytes: self.bytes,
            budget_bytes: self.config.budget_bytes,
            pending_readings: self.pending.count as u64,
            window_readings: self.aggregator.open_readings(),
            open_windows: self.aggregator.open_windows() as u64,
            next_seq: self.next_seq,
            in_flight: self.in_flight.len() as u64,
            outbox_batches: self.outbox.len() as u64,
            outbox_readings: self.outbox_readings,
            oldest_unacked_ns: self.outbox.values().next().map(|s| s.created_ns),
            ..JournalStats::default()
        };
        for entry in txn.open_table(DROPPED)?.iter()? {
            let (k, v) = entry?;
            let (origin, kind, _) = layout::count_key_of("dropped", k.value())?;
            stats
                .dropped
                .push((origin, kind, count_of("dropped", v.value())?));
        }
        Ok(stats)
    }

    /// What is waiting, per series: `(series, raw readings, windows)` over
    /// the outbox and the batch being filled.
    pub fn inspect(&self) -> Result<Vec<(String, u64, u64)>, CommitError> {
        inspect_in(&self.db, self.compressor.as_deref())
    }

    /// Device report high-water marks `(device, boot, seq)`.
    pub fn devices(&self) -> Result<Vec<(String, u32, u32)>, CommitError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(DEVICES)?.iter()? {
            let (k, v) = entry?;
            let (boot, seq) = layout::u32_pair_of("devices", v.value())?;
            out.push((layout::str_of("devices", k.value())?.into(), boot, seq));
        }
        Ok(out)
    }

    /// Sources' records ([`Work::marks`](super::Work::marks)) whose keys
    /// start with `prefix`, in key order.
    pub fn source_marks(&self, prefix: &[u8]) -> Result<Vec<super::Mark>, CommitError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(SOURCE_MARKS)?.range(prefix..)? {
            let (k, v) = entry?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Device-time offsets `(device, boot, offset_ns)` of the boots journaled.
    pub fn device_offsets(&self) -> Result<Vec<(String, u32, i64)>, CommitError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for entry in txn.open_table(DEVICE_OFFSETS)?.iter()? {
            let (k, v) = entry?;
            let (boot, offset) = layout::offset_of(v.value())?;
            out.push((
                layout::str_of("device_offsets", k.value())?.into(),
                boot,
                offset,
            ));
        }
        Ok(out)
    }
}

pub(super) fn count_of(table: &str, value: &[u8]) -> Result<u64, CommitError> {
    layout::u64_of(value)
        .ok_or_else(|| CommitError::Corrupt(alloc::format!("a {table} count does not decode")))
}

/// [`Journal::stats`] of the journal in `db`, read without opening it as a
/// [`Journal`] (which writes): for `ferry-agent status` on a stopped agent,
/// through a [`redb::ReadOnlyDatabase`]. Nothing is in flight in a journal
/// nobody runs.
pub fn stats_in(
    db: &impl ReadableDatabase,
    config: &JournalConfig,
) -> Result<JournalStats, CommitError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let get = |name: &str| -> Result<Option<u64>, CommitError> {
        match meta.get(name.as_bytes())? {
            Some(v) => layout::u64_of(v.value())
                .map(Some)
                .ok_or_else(|| CommitError::Corrupt(alloc::format!("meta {name} is not a u64"))),
            None => Ok(None),
        }
    };
    match get("format")? {
        Some(FORMAT) | None => {}
        Some(found) => return Err(CommitError::Format { found }),
    }
    let mut stats = JournalStats {
        bytes: get("bytes")?.unwrap_or(0),
        budget_bytes: config.budget_bytes,
        next_seq: get("next_seq")?.unwrap_or(1),
        ..JournalStats::default()
    };
    for entry in txn.open_table(PENDING)?.iter()? {
        let (_, row) = entry?;
        let row: PendingRow = decode("PendingRow", row.value())?;
        let raw: usize = row.batch.blocks.iter().map(|b| b.len()).sum();
        stats.pending_readings += (raw + row.batch.aggregates.len()) as u64;
    }
    for entry in txn.open_table(WINDOWS)?.iter()? {
        let (_, state) = entry?;
        let state: crate::window::SeriesWindows = decode("SeriesWindows", state.value())?;
        stats.open_windows += state.open.len() as u64;
        stats.window_readings += state.open.iter().map(|p| p.count).sum::<u64>();
    }
    for entry in txn.open_table(OUTBOX_META)?.iter()? {
        let (_, meta) = entry?;
        let meta: OutboxMeta = decode("OutboxMeta", meta.value())?;
        stats.outbox_batches += 1;
        stats.outbox_readings += meta.readings;
        if stats.oldest_unacked_ns.is_none() {
            stats.oldest_unacked_ns = Some(meta.created_ns);
        }
    }
    for entry in txn.open_table(DROPPED)?.iter()? {
        let (k, v) = entry?;
        let (origin, kind, _) = layout::count_key_of("dropped", k.value())?;
        stats
            .dropped
            .push((origin, kind, count_of("dropped", v.value())?));
    }
    Ok(stats)
}

/// [`Journal::inspect`] of the journal in `db`, read only (see
/// [`stats_in`]); `compressor` reads batches stored compressed.
pub fn inspect_in(
    db: &impl ReadableDatabase,
    compressor: Option<&dyn Compressor>,
) -> Result<Vec<(String, u64, u64)>, CommitError> {
    let mut per: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut add = |batch: &Batch| {
        for b in &batch.blocks {
            if let Some(s) = batch.series.get(b.series as usize) {
                per.entry(s.to_string()).or_default().0 += b.len() as u64;
            }
        }
        for a in &batch.aggregates {
            if let Some(s) = batch.series.get(a.series as usize) {
                per.entry(s.to_string()).or_default().1 += 1;
            }
        }
    };
    let txn = db.begin_read()?;
    for entry in txn.open_table(OUTBOX)?.iter()? {
        let (seq, body) = entry?;
        let seq = layout::id_of("outbox", seq.value())?;
        add(&decode::<Batch>(
            "Batch",
            &plain_with(compressor, seq, body.value())?,
        )?);
    }
    for entry in txn.open_table(PENDING)?.iter()? {
        let (_, row) = entry?;
        add(&decode::<PendingRow>("PendingRow", row.value())?.batch);
    }
    Ok(per.into_iter().map(|(k, (r, w))| (k, r, w)).collect())
}
