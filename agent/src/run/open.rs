//! Opening the journal: typed open errors, the read-only open of a stopped
//! agent's journal (`status`, `buffer inspect`), and `run`'s open that moves
//! a corrupt journal aside and salvages what it still holds.

use std::path::{Path, PathBuf};

use redb::{Database, ReadOnlyDatabase};

use super::StartError;
use crate::journal::{CommitError, Journal, JournalConfig, JournalStats};

/// Why the journal could not be opened. Only [`OpenError::Corrupt`] and
/// [`OpenError::Format`] say something about the file itself; `run` moves
/// only such a file aside ([`open_or_quarantine`]).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the journal's lock.
    #[error(
        "journal {}: another ferry-agent is running on this journal (it is locked); nothing was changed",
        path.display()
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The journal was not closed cleanly and a read-only open cannot
    /// repair it (`ferry-agent run` does, as it starts).
    #[error(
        "journal {}: not closed cleanly; `ferry-agent run` repairs it as it starts (a read-only command does not)",
        path.display()
    )]
    NeedsRecovery {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a readable journal (truncated, damaged, not redb).
    #[error("journal {}: corrupt: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A journal of another on-disk format (or redb file format).
    #[error("journal {}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The formats.
        message: String,
    },
    /// The operating system refused (permissions, a missing directory, a
    /// full disk): nothing says the file is damaged.
    #[error("journal {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl OpenError {
    /// True when the file itself is unreadable as a journal: the only case
    /// in which `run` moves it aside.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::Format { .. })
    }

    fn from_io(path: &Path, e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            // A file shorter than its header says, or bytes that are not redb's.
            ErrorKind::UnexpectedEof | ErrorKind::InvalidData => Self::Corrupt {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
            _ => Self::Io {
                path: path.to_path_buf(),
                source: e,
            },
        }
    }

    fn from_storage(path: &Path, e: redb::StorageError) -> Self {
        match e {
            redb::StorageError::Io(e) => Self::from_io(path, e),
            other => Self::Corrupt {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        }
    }

    fn from_database(path: &Path, e: redb::DatabaseError) -> Self {
        use redb::DatabaseError as D;
        let path_buf = path.to_path_buf();
        match e {
            D::DatabaseAlreadyOpen | D::LockProtocolMismatch => Self::Locked { path: path_buf },
            D::RepairAborted => Self::NeedsRecovery { path: path_buf },
            D::UpgradeRequired(v) => Self::Format {
                path: path_buf,
                message: format!("redb file format {v}: this build cannot read it"),
            },
            D::Storage(e) => Self::from_storage(path, e),
            other => Self::Corrupt {
                path: path_buf,
                message: other.to_string(),
            },
        }
    }

    fn from_redb(path: &Path, e: redb::Error) -> Self {
        let path_buf = path.to_path_buf();
        match e {
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                Self::Locked { path: path_buf }
            }
            redb::Error::RepairAborted => Self::NeedsRecovery { path: path_buf },
            redb::Error::Io(e) => Self::from_io(path, e),
            redb::Error::UpgradeRequired(v) => Self::Format {
                path: path_buf,
                message: format!("redb file format {v}: this build cannot read it"),
            },
            other => Self::Corrupt {
                path: path_buf,
                message: other.to_string(),
            },
        }
    }

    fn from_commit(path: &Path, e: CommitError) -> Self {
        match e {
            CommitError::Storage(e) => Self::from_redb(path, e),
            e @ CommitError::Format { .. } => Self::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
            other => Self::Corrupt {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        }
    }
}

/// Opens (or creates) the journal at `path` for writing. Moves nothing:
/// every failure comes back typed ([`OpenError`]).
pub fn open_journal(
    path: &Path,
    config: JournalConfig,
    cache: usize,
) -> Result<Journal, OpenError> {
    let db = Database::builder()
        .set_cache_size(cache)
        .create(path)
        .map_err(|e| OpenError::from_database(path, e))?;
    let mut journal = Journal::open(db, config).map_err(|e| OpenError::from_commit(path, e))?;
    journal.set_compressor(Box::new(crate::shipper::Zstd));
    Ok(journal)
}

/// Opens the existing journal at `path` read-only: nothing in the data
/// directory is written, created or moved (`status` and `buffer inspect`
/// on a stopped agent). A journal another process holds is
/// [`OpenError::Locked`]; one not closed cleanly is
/// [`OpenError::NeedsRecovery`] (a read-only open does not repair).
pub fn open_journal_read_only(path: &Path) -> Result<ReadOnlyDatabase, OpenError> {
    Database::builder()
        .set_cache_size(1 << 20)
        .open_read_only(path)
        .map_err(|e| OpenError::from_database(path, e))
}

/// Journal counters of the journal at `path`, read-only
/// ([`open_journal_read_only`]).
pub fn stats_in(path: &Path, config: &JournalConfig) -> Result<JournalStats, OpenError> {
    let db = open_journal_read_only(path)?;
    crate::journal::stats_in(&db, config).map_err(|e| OpenError::from_commit(path, e))
}

/// What waits per series in the journal at `path`, read-only
/// ([`open_journal_read_only`]).
pub fn inspect_in(path: &Path) -> Result<Vec<(String, u64, u64)>, OpenError> {
    let db = open_journal_read_only(path)?;
    crate::journal::inspect_in(&db, Some(&crate::shipper::Zstd))
        .map_err(|e| OpenError::from_commit(path, e))
}

/// `run`'s open: [`open_journal`], and when the file is corrupt (and only
/// then: never when it is locked or the OS refused), it is moved aside to
/// `<path>.corrupt-<unix seconds>`, reported loudly, and replaced by a
/// fresh journal (a new epoch), so the agent keeps accepting data.
pub fn open_or_quarantine(
    path: &Path,
    config: JournalConfig,
    cache: usize,
) -> Result<(Journal, Option<PathBuf>), StartError> {
    match open_journal(path, config.clone(), cache) {
        Ok(j) => Ok((j, None)),
        Err(first) if first.is_corrupt() => {
            let secs = ferry_clock::now_ns() / 1_000_000_000;
            let aside = path.with_extension(format!("redb.corrupt-{secs}"));
            tracing::error!(
                journal = %path.display(),
                moved_to = %aside.display(),
                error = %first,
                "JOURNAL FAILED TO OPEN: moved aside (it is corrupt), starting with an empty journal (a new epoch)"
            );
            // What the journal held, as of its last commit (kept beside it,
            // since the file cannot say).
            let ledger_file = crate::salvage::ledger_path(path);
            let ledger = crate::salvage::read_ledger(&ledger_file);
            std::fs::rename(path, &aside).map_err(|e| StartError::Journal {
                path: path.to_path_buf(),
                message: format!("{first}; and moving it aside failed: {e}"),
            })?;
            if ledger_file.exists() {
                let _ = std::fs::rename(&ledger_file, crate::salvage::ledger_path(&aside));
            }
            let mut j = open_journal(path, config, cache).map_err(|e| StartError::Journal {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            salvage_into(&mut j, &aside, ledger)?;
            Ok((j, Some(aside)))
        }
        Err(e) => Err(StartError::Open(e)),
    }
}

/// Ships what is still readable in the quarantined journal at `aside` and
/// counts the rest as dropped (health kind 10), per its `ledger`
/// ([`crate::salvage`]), in the new journal `journal`.
fn salvage_into(
    journal: &mut Journal,
    aside: &Path,
    ledger: Option<crate::journal::Ledger>,
) -> Result<(), StartError> {
    let failed = |message: String| StartError::Journal {
        path: aside.to_path_buf(),
        message,
    };
    let Some(ledger) = ledger else {
        tracing::error!(
            journal = %aside.display(),
            "the quarantined journal has no ledger file: what it held is unknown, nothing is salvaged and no loss can be counted"
        );
        return Ok(());
    };
    let found =
        crate::salvage::scan(aside, &ledger).map_err(|e| failed(format!("salvaging it: {e}")))?;
    tracing::error!(
        journal = %aside.display(),
        epoch = ledger.epoch,
        held = ledger.held,
        batches = found.batches.len(),
        salvaged = found.readings,
        lost = found.lost,
        lost_health = ?found.lost_health,
        "salvaged the quarantined journal: its readable batches are shipped as they were; the readings not found are counted as dropped (corrupt_journal)"
    );
    journal
        .import_salvaged(found.batches, found.lost, &found.lost_health)
        .map_err(|e| failed(format!("taking in what was salvaged from it: {e}")))
}
