//! A full disk is backpressure, not loss.
//!
//! Before a group commit that carries data, the journal writer measures the
//! free space of the data directory's filesystem ([`free_bytes`], one
//! `statvfs`) and asks [`DiskGuard`] whether data may be written. Below
//! [`RESERVE`] free bytes it may not: each source's work is handed back to
//! it (TCP producers wait, their connection no longer read; UDP counts what
//! it cannot hand over, health kind 5), while acks and health records, small
//! commits that the reserve has room for, are still committed — acks free
//! space inside the journal. When a journal write fails anyway (`ENOSPC`
//! in a race with another writer of the filesystem, or any I/O error), redb
//! refuses every later operation on that file: the writer reopens the
//! journal once space is back, or once a second while it is not
//! ([`DiskGuard::may_reopen`]). When the journal itself is what fills the
//! disk, shipping makes the room: rows acked since the disk filled (a
//! reserve's worth, or half the journal) let data in again, into the pages
//! redb reuses inside its file.
//!
//! [`DiskGuard`] is a sans-IO state machine: it takes `now` and the
//! measured free bytes, and says what to do and when to log (at most once
//! per [`LOG_INTERVAL`], with what was refused since).

use std::path::Path;
use std::time::Duration;

/// Free bytes the journal keeps for acks and health records once data is
/// refused: commits that only delete rows or add counts still have room.
pub const RESERVE: u64 = 4 << 20;

/// Most one log line per this period about a full disk.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Least time between two attempts to reopen a failed journal while the
/// disk is still full.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// Free bytes for unprivileged writers on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable
    // memory of the struct's size; statvfs writes nothing else.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0: it filled the struct.
    #[allow(unsafe_code)]
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ by target
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// What the writer logs, decided by [`DiskGuard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskLog {
    /// The filesystem filled up (or a journal write failed): data is
    /// refused from now on.
    Full {
        /// Free bytes measured.
        free: u64,
        /// The write error, when one caused it.
        error: Option<String>,
    },
    /// Still full, an interval later: submissions refused since the last
    /// line.
    StillFull {
        /// Free bytes measured.
        free: u64,
        /// Submissions refused since the last line.
        refused: u64,
    },
    /// Space is back: data is taken again.
    Resumed {
        /// Free bytes measured.
        free: u64,
        /// Submissions refused while full.
        refused: u64,
    },
}

/// Whether the journal's filesystem has room for data.
#[derive(Debug, Clone, Default)]
pub struct DiskGuard {
    reserve: u64,
    /// Since when data is refused (`None`: taken).
    full_since: Option<i64>,
    /// The journal failed a write and must be reopened before use.
    broken: bool,
    last_log: Option<i64>,
    refused_since_log: u64,
    refused_total: u64,
    /// Journal row bytes when data was first refused: rows acked since
    /// free room inside the file, which redb reuses.
    journal_bytes_at_full: u64,
    /// When a reopen was last tried.
    last_reopen: Option<i64>,
}

impl DiskGuard {
    /// A guard keeping `reserve` bytes free.
    pub fn new(reserve: u64) -> Self {
        Self {
            reserve,
            ..Self::default()
        }
    }

    /// True while data is refused.
    pub fn is_full(&self) -> bool {
        self.full_since.is_some()
    }

    /// True while the journal must be reopened (a write failed).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// True when commits should keep a copy of their work to hand back if
    /// the write fails: the disk is close to full (within eight reserves).
    pub fn careful(&self, free: u64) -> bool {
        self.is_full() || free < self.reserve.saturating_mul(8)
    }

    /// Before a commit that carries data, at `now`, with `free` bytes free
    /// and `journal_bytes` of rows in the journal: true when the data may
    /// be written. A log line to write, if one is due, goes to `log`.
    pub fn admit(
        &mut self,
        now: i64,
        free: u64,
        journal_bytes: u64,
        log: &mut Option<DiskLog>,
    ) -> bool {
        // Rows deleted since the disk filled (shipped and acked) left room
        // inside the journal's file, which redb reuses: a reserve's worth,
        // or half of what the journal held when the disk filled.
        let freed = self.journal_bytes_at_full.saturating_sub(journal_bytes);
        let inside = self.reserve.min(self.journal_bytes_at_full / 2).max(1);
        let room = free >= self.reserve || (self.is_full() && freed >= inside);
        match (self.full_since, room && !self.broken) {
            (None, true) => true,
            (Some(_), true) => {
                *log = Some(DiskLog::Resumed {
                    free,
                    refused: self.refused_total,
                });
                self.full_since = None;
                self.refused_since_log = 0;
                self.refused_total = 0;
                self.last_log = None;
                true
            }
            (None, false) => {
                self.full_since = Some(now);
                self.journal_bytes_at_full = journal_bytes;
                self.last_log = Some(now);
                *log = Some(DiskLog::Full { free, error: None });
                false
            }
            (Some(_), false) => {
                let period = ferry_clock::nanos(LOG_INTERVAL);
                if self
                    .last_log
                    .is_none_or(|t| now.saturating_sub(t) >= period)
                {
                    *log = Some(DiskLog::StillFull {
                        free,
                        refused: self.refused_since_log,
                    });
                    self.last_log = Some(now);
                    self.refused_since_log = 0;
                }
                false
            }
        }
    }

    /// `n` submissions were refused.
    pub fn refused(&mut self, n: u64) {
        self.refused_since_log += n;
        self.refused_total += n;
    }

    /// A journal write failed at `now`: data is refused and the journal
    /// must be reopened. The returned line is logged (once per failure
    /// streak).
    pub fn write_failed(
        &mut self,
        now: i64,
        free: u64,
        journal_bytes: u64,
        error: String,
    ) -> Option<DiskLog> {
        self.broken = true;
        if self.full_since.is_some() {
            return None;
        }
        self.full_since = Some(now);
        self.journal_bytes_at_full = journal_bytes;
        self.last_log = Some(now);
        Some(DiskLog::Full {
            free,
            error: Some(error),
        })
    }

    /// True when a broken journal may be reopened at `now`: there is room
    /// again, or [`REOPEN_INTERVAL`] passed since the last attempt (the
    /// journal itself may be what fills the disk: reopened, it ships, and
    /// acked rows make room inside its file).
    pub fn may_reopen(&mut self, now: i64, free: u64) -> bool {
        if !self.broken {
            return false;
        }
        let due = self
            .last_reopen
            .is_none_or(|t| now.saturating_sub(t) >= ferry_clock::nanos(REOPEN_INTERVAL));
        if free >= self.reserve || due {
            self.last_reopen = Some(now);
            return true;
        }
        false
    }

    /// The journal was reopened.
    pub fn reopened(&mut self) {
        self.broken = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_clock::SEC;

    const MIB: u64 = 1 << 20;

    #[test]
    fn data_is_refused_below_the_reserve_and_taken_again_when_space_returns() {
        let mut g = DiskGuard::new(4 * MIB);
        let mut log = None;
        assert!(g.admit(0, 100 * MIB, 10 * MIB, &mut log));
        assert_eq!(log, None);
        assert!(!g.careful(100 * MIB));
        assert!(g.careful(31 * MIB), "within eight reserves");
        assert!(!g.admit(SEC, 4 * MIB - 1, 10 * MIB, &mut log));
        assert_eq!(
            log.take(),
            Some(DiskLog::Full {
                free: 4 * MIB - 1,
                error: None
            })
        );
        g.refused(3);
        assert!(!g.admit(2 * SEC, MIB, 10 * MIB, &mut log));
        assert_eq!(log.take(), None, "logged once per interval");
        g.refused(2);
        assert!(!g.admit(11 * SEC, MIB, 10 * MIB, &mut log));
        assert_eq!(
            log.take(),
            Some(DiskLog::StillFull {
                free: MIB,
                refused: 5
            })
        );
        g.refused(1);
        assert!(g.admit(12 * SEC, 4 * MIB, 10 * MIB, &mut log));
        assert_eq!(
            log.take(),
            Some(DiskLog::Resumed {
                free: 4 * MIB,
                refused: 6
            })
        );
        assert!(!g.is_full());
    }

    #[test]
    fn rows_acked_inside_the_journal_make_room_though_the_filesystem_stays_full() {
        let mut g = DiskGuard::new(4 * MIB);
        let mut log = None;
        assert!(!g.admit(0, MIB, 50 * MIB, &mut log));
        assert!(!g.admit(SEC, MIB, 47 * MIB, &mut log), "3 MiB freed");
        assert!(g.admit(2 * SEC, MIB, 46 * MIB, &mut log), "4 MiB freed");
        // A journal smaller than the reserve: half of it shipped is room.
        let mut g = DiskGuard::new(4 * MIB);
        assert!(!g.admit(0, MIB, 3 * MIB, &mut log));
        assert!(!g.admit(SEC, MIB, 2 * MIB, &mut log));
        assert!(g.admit(2 * SEC, MIB, 3 * MIB / 2, &mut log));
    }

    #[test]
    fn a_failed_write_refuses_data_until_the_journal_is_reopened_with_room() {
        let mut g = DiskGuard::new(4 * MIB);
        let mut log = None;
        let line = g.write_failed(0, 0, 9 * MIB, "No space left on device".into());
        assert!(matches!(line, Some(DiskLog::Full { error: Some(_), .. })));
        assert!(!g.admit(SEC, 100 * MIB, 9 * MIB, &mut log), "broken");
        assert!(g.may_reopen(SEC, MIB), "a first attempt on a full disk");
        assert!(!g.may_reopen(2 * SEC - 1, MIB), "then once a second");
        assert!(g.may_reopen(2 * SEC - 1, 100 * MIB), "at once with room");
        assert!(g.may_reopen(3 * SEC, MIB));
        g.reopened();
        assert!(!g.may_reopen(4 * SEC, 100 * MIB), "not broken");
        assert!(g.admit(2 * SEC, 100 * MIB, 9 * MIB, &mut log));
        assert!(matches!(log, Some(DiskLog::Resumed { .. })));
    }
}
