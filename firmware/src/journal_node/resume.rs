//! The resume record: where a journaling node carries on after a power
//! loss, in its own table beside the journal's.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{CommitError, StartError};

/// The resume record's table, beside the journal's own (it is not part of
/// the journal's layout, which only the agent knows): one `u64` per field,
/// keyed by the field's name. Its key and value types are those of the
/// journal's `meta` table, so redb's B-tree code is not instantiated again
/// for it (tens of KiB of flash).
const RESUME: TableDefinition<'_, &str, u64> = TableDefinition::new("node_resume");

/// Where a journaling node carries on after a power loss (table
/// `node_resume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeRecord {
    /// The link's boot number, kept for the journal's life.
    pub epoch: u32,
    /// `DeviceReport` number of the next window (from 1).
    pub next_report: u32,
    /// Start of the next window to sample, device ms.
    pub window_start_ms: u64,
    /// Where the sampling schedule began, device ms.
    pub schedule_epoch_ms: u64,
    /// Sampling config in force.
    pub sample_period_ms: u32,
    /// Window length in force, ms.
    pub window_ms: u32,
    /// Reports lost (journal full or failing), since the epoch began.
    pub dropped: u32,
    /// Times the node started on this journal.
    pub power_ups: u32,
}

/// The record's fields, in order, as `node_resume` keys.
const RECORD_KEYS: [&str; 8] = [
    "epoch",
    "next_report",
    "window_start_ms",
    "schedule_epoch_ms",
    "sample_period_ms",
    "window_ms",
    "dropped",
    "power_ups",
];

impl ResumeRecord {
    fn to_values(self) -> [u64; 8] {
        [
            u64::from(self.epoch),
            u64::from(self.next_report),
            self.window_start_ms,
            self.schedule_epoch_ms,
            u64::from(self.sample_period_ms),
            u64::from(self.window_ms),
            u64::from(self.dropped),
            u64::from(self.power_ups),
        ]
    }

    fn from_values(v: [u64; 8]) -> Option<Self> {
        let small = |x: u64| u32::try_from(x).ok();
        Some(Self {
            epoch: small(v[0])?,
            next_report: small(v[1])?,
            window_start_ms: v[2],
            schedule_epoch_ms: v[3],
            sample_period_ms: small(v[4])?,
            window_ms: small(v[5])?,
            dropped: small(v[6])?,
            power_ups: small(v[7])?,
        })
    }
}

pub(super) fn read_record(db: &Database) -> Result<Option<ResumeRecord>, StartError> {
    let txn = db.begin_read().map_err(CommitError::from)?;
    let table = match txn.open_table(RESUME) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(CommitError::from(e).into()),
    };
    let mut values = [0u64; 8];
    for (value, key) in values.iter_mut().zip(RECORD_KEYS) {
        match table.get(key).map_err(CommitError::from)? {
            Some(v) => *value = v.value(),
            // Written whole in one transaction: all or none.
            None if key == RECORD_KEYS[0] => return Ok(None),
            None => return Err(StartError::BadResumeRecord),
        }
    }
    ResumeRecord::from_values(values)
        .map(Some)
        .ok_or(StartError::BadResumeRecord)
}

pub(super) fn write_record(db: &Database, record: &ResumeRecord) -> Result<(), CommitError> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(RESUME)?;
        for (key, value) in RECORD_KEYS.into_iter().zip(record.to_values()) {
            table.insert(key, value)?;
        }
    }
    txn.commit()?;
    Ok(())
}
