//! The node's own tables in redb, beside the journal's (whose layout only
//! the agent knows): the resume record and the layout of each folded batch.
//! Both are `&[u8] → &[u8]` ([`Bytes`]), the journal tables' one type, so
//! redb's B-tree code is not instantiated again for them (~10 KiB of flash).
//!
//! | table | key → value | holds |
//! |---|---|---|
//! | `node_resume` | `record` → [`ResumeRecord`], 4 × u64 LE | the epoch (for the journal's life) and, as of the last fold, the power-up count and sampling |
//! | `node_folds` | batch seq (u64 BE) → `first_seq u32 LE` + per report `windows u8, power_up u32 LE` | which link reports a folded batch holds: consecutive sequences from `first_seq`, each with that many windows (in the batch's aggregate order) and its power-up |
//! | `node_clocks` | power-up (u32 BE) → a clock record (`record.rs`) | the clocks of power-ups with folded reports, as of the last fold |
//!
//! A fold writes these (one transaction) *before* the journal commit that
//! seals the batch, keyed by the batch sequence that commit will take; a
//! power cut between the two leaves a row for a batch that does not exist,
//! which the next fold of the same reports overwrites.

use alloc::vec::Vec;

use ferry_agent::journal::layout::{self, Bytes};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::clock::Clock;
use super::record;
use super::{CommitError, StartError};

const RESUME: Bytes = Bytes::new("node_resume");
const FOLDS: Bytes = Bytes::new("node_folds");
const CLOCKS: Bytes = Bytes::new("node_clocks");
const ROW: &[u8] = b"record";
const FIELDS: usize = 4;

/// What outlives every power loss in redb (table `node_resume`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeRecord {
    /// The link's boot number, kept for the journal's life.
    pub epoch: u32,
    /// Power-ups counted, as of the last fold (the report log counts the
    /// ones since).
    pub power_ups: u32,
    /// Sampling period in force, ms, as of the last fold.
    pub sample_period_ms: u32,
    /// Window length in force, ms, as of the last fold.
    pub window_ms: u32,
}

/// The link reports in one folded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fold {
    /// Sequence of the first report.
    pub first_seq: u32,
    /// Windows and power-up of each report, in order.
    pub reports: Vec<(u8, u32)>,
}

impl Fold {
    /// Sequence of the last report.
    pub(crate) fn last_seq(&self) -> u32 {
        self.first_seq + self.reports.len() as u32 - 1
    }
}

pub(super) fn read_resume(db: &Database) -> Result<Option<ResumeRecord>, StartError> {
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
    let mut v = [0u64; FIELDS];
    for (value, bytes) in v.iter_mut().zip(row.chunks_exact(8)) {
        *value = layout::u64_of(bytes).ok_or(StartError::BadResumeRecord)?;
    }
    let small = |x: u64| u32::try_from(x).map_err(|_| StartError::BadResumeRecord);
    Ok(Some(ResumeRecord {
        epoch: small(v[0])?,
        power_ups: small(v[1])?,
        sample_period_ms: small(v[2])?,
        window_ms: small(v[3])?,
    }))
}

/// The rows of `node_folds`, in batch order.
pub(super) fn read_folds(db: &Database) -> Result<Vec<(u64, Fold)>, StartError> {
    let txn = db.begin_read().map_err(CommitError::from)?;
    let table = match txn.open_table(FOLDS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(CommitError::from(e).into()),
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(CommitError::from)? {
        let (k, v) = entry.map_err(CommitError::from)?;
        let key: [u8; 8] = k
            .value()
            .try_into()
            .map_err(|_| StartError::BadResumeRecord)?;
        let v = v.value();
        if v.len() < 9 || (v.len() - 4) % 5 != 0 {
            return Err(StartError::BadResumeRecord);
        }
        // Big-endian keys: redb iterates in batch order.
        out.push((
            u64::from_be_bytes(key),
            Fold {
                first_seq: u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
                reports: v[4..]
                    .chunks_exact(5)
                    .map(|r| (r[0], u32::from_le_bytes([r[1], r[2], r[3], r[4]])))
                    .collect(),
            },
        ));
    }
    Ok(out)
}

/// The rows of `node_clocks`.
pub(super) fn read_clocks(db: &Database) -> Result<Vec<Clock>, StartError> {
    let txn = db.begin_read().map_err(CommitError::from)?;
    let table = match txn.open_table(CLOCKS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(CommitError::from(e).into()),
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(CommitError::from)? {
        let (_, v) = entry.map_err(CommitError::from)?;
        out.push(record::decode_clock(v.value()).ok_or(StartError::BadResumeRecord)?);
    }
    Ok(out)
}

/// One transaction: the resume record, the row of the batch about to be
/// sealed (if any), no rows below `lowest_batch` (batches deleted), and
/// `clocks` (replacing those rows; every other clock row goes when
/// `prune_clocks`).
pub(super) fn write(
    db: &Database,
    record: &ResumeRecord,
    fold: Option<(u64, &Fold)>,
    lowest_batch: u64,
    clocks: &[&Clock],
    prune_clocks: bool,
) -> Result<(), CommitError> {
    let txn = db.begin_write()?;
    {
        let values = [
            u64::from(record.epoch),
            u64::from(record.power_ups),
            u64::from(record.sample_period_ms),
            u64::from(record.window_ms),
        ];
        let mut row = [0u8; FIELDS * 8];
        for (bytes, value) in row.chunks_exact_mut(8).zip(values) {
            bytes.copy_from_slice(&layout::u64_value(value));
        }
        txn.open_table(RESUME)?.insert(ROW, row.as_slice())?;
        let mut folds = txn.open_table(FOLDS)?;
        let mut stale: Vec<[u8; 8]> = Vec::new();
        for entry in folds.range(..lowest_batch.to_be_bytes().as_slice())? {
            // An error ends the transaction (a read error repeats forever).
            let (k, _) = entry?;
            if let Ok(key) = k.value().try_into() {
                stale.push(key);
            }
        }
        for k in stale {
            folds.remove(k.as_slice())?;
        }
        if let Some((batch, f)) = fold {
            let mut v = Vec::with_capacity(4 + 5 * f.reports.len());
            v.extend_from_slice(&f.first_seq.to_le_bytes());
            for &(windows, power_up) in &f.reports {
                v.push(windows);
                v.extend_from_slice(&power_up.to_le_bytes());
            }
            folds.insert(batch.to_be_bytes().as_slice(), v.as_slice())?;
        }
        drop(folds);
        let mut table = txn.open_table(CLOCKS)?;
        if prune_clocks {
            table.retain(|_, _| false)?;
        }
        let mut buf = [0u8; record::MAX_LEN];
        for c in clocks {
            let n = record::encode_clock(c, &mut buf);
            table.insert(c.power_up.to_be_bytes().as_slice(), &buf[..n])?;
        }
    }
    txn.commit()?;
    Ok(())
}
