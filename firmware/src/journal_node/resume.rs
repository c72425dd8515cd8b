//! The resume record: where a journaling node carries on after a power
//! loss, in its own table beside the journal's.

use ferry_agent::journal::layout::{self, Bytes};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::{CommitError, StartError};

/// The resume record's table, beside the journal's own (it is not part of
/// the journal's layout, which only the agent knows): one row, [`ROW`] →
/// the record's fields in order, each a little-endian `u64`. Its type is the
/// journal tables' one ([`Bytes`]), so redb's B-tree code is not
/// instantiated again for it (~10 KiB of flash).
const RESUME: Bytes = Bytes::new("node_resume");

/// The record's key in `node_resume`.
const ROW: &[u8] = b"record";

/// Fields in the record.
const FIELDS: usize = 8;

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

impl ResumeRecord {
    fn to_values(self) -> [u64; FIELDS] {
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

    fn from_values(v: [u64; FIELDS]) -> Option<Self> {
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
    let Some(row) = table.get(ROW).map_err(CommitError::from)? else {
        return Ok(None);
    };
    let row = row.value();
    if row.len() != FIELDS * 8 {
        return Err(StartError::BadResumeRecord);
    }
    let mut values = [0u64; FIELDS];
    for (value, bytes) in values.iter_mut().zip(row.chunks_exact(8)) {
        *value = layout::u64_of(bytes).ok_or(StartError::BadResumeRecord)?;
    }
    ResumeRecord::from_values(values)
        .map(Some)
        .ok_or(StartError::BadResumeRecord)
}

pub(super) fn write_record(db: &Database, record: &ResumeRecord) -> Result<(), CommitError> {
    let txn = db.begin_write()?;
    {
        let mut row = [0u8; FIELDS * 8];
        for (bytes, value) in row.chunks_exact_mut(8).zip(record.to_values()) {
            bytes.copy_from_slice(&layout::u64_value(value));
        }
        txn.open_table(RESUME)?.insert(ROW, row.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}
