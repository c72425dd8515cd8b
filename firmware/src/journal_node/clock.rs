//! What a journaling node knows of each power-up's clock: the device has no
//! wall clock, only one monotonic clock per power-up (its *boot id*), so a
//! report's windows are placed by what the node learns of that clock's
//! zero in wall-clock time (docs/protocol.md, "Device time").
//!
//! - **Syncs**: each `TimeSync` from the gateway gives the zero
//!   (`wall_ms − uptime_ms`). The first of a power-up, and any that moves
//!   the zero (crystal drift: [`SyncFilter`]), is kept with the first report
//!   sequence it applies to. A report takes the latest sync at
//!   or before its sequence (`SYNCED`), or, logged before the power-up's
//!   first sync, that first one (`BEFORE_SYNC`: exact, the clock ran on).
//! - **Estimates**: a power-up that ends before any sync can only be
//!   estimated. At start-up the node assumes the power came back at once:
//!   the new power-up's zero is the previous one's zero plus the end of its
//!   last window (`ESTIMATED`, early by the time without power). When no
//!   earlier power-up has a known zero (a device that never met a
//!   gateway), the first sync estimates the earlier ones backwards, each
//!   ending where the next began.

use ferry_proto::link::{ReportTime, time_quality};

use crate::link::SyncFilter;

/// Syncs kept per power-up (the first, then the latest when full).
pub(crate) const MAX_SYNCS: usize = 8;

/// One power-up's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clock {
    pub power_up: u32,
    /// Estimated wall-clock zero, before (or without) a sync.
    pub estimate: Option<i64>,
    /// `(first report sequence it applies to, wall-clock zero)`, oldest
    /// first; the first applies to earlier reports too.
    pub syncs: heapless::Vec<(u32, i64), MAX_SYNCS>,
    /// End of this power-up's last logged window, ms on its clock.
    pub end_ms: u64,
    /// First and last report sequence of this power-up known to the node.
    pub first_seq: Option<u32>,
    pub last_seq: u32,
    /// Which samples move the zero (this power-up's, in RAM).
    pub filter: SyncFilter,
}

impl Clock {
    pub(crate) fn new(power_up: u32) -> Self {
        Self {
            power_up,
            estimate: None,
            syncs: heapless::Vec::new(),
            end_ms: 0,
            first_seq: None,
            last_seq: 0,
            filter: SyncFilter::default(),
        }
    }

    /// The best zero known: the latest sync, else the estimate.
    pub(crate) fn zero(&self) -> Option<i64> {
        self.syncs.last().map(|&(_, w)| w).or(self.estimate)
    }

    /// Where report `seq` of this power-up lies; `None` while nothing is
    /// known (the current power-up before its first sync).
    pub(crate) fn time_of(&self, seq: u32) -> Option<ReportTime> {
        let (wall, quality) = match self.syncs.iter().rev().find(|(from, _)| *from <= seq) {
            Some(&(_, w)) => (w, time_quality::SYNCED),
            None => match (self.syncs.first(), self.estimate) {
                (Some(&(_, w)), _) => (w, time_quality::BEFORE_SYNC),
                (None, Some(e)) => (e, time_quality::ESTIMATED),
                (None, None) => return None,
            },
        };
        Some(ReportTime {
            power_up: self.power_up,
            wall_at_zero_ms: wall,
            quality,
        })
    }

    /// Takes a sync applying from report `from_seq`; `true` if it changed
    /// what is kept (and must be logged).
    pub(crate) fn sync(&mut self, from_seq: u32, sample: i64) -> bool {
        let Some(zero) = self.filter.offer(sample) else {
            return false;
        };
        if self.syncs.is_full() {
            // Keep the first (it places what came before it) and the latest.
            self.syncs.remove(1);
        }
        let _ = self.syncs.push((from_seq, zero));
        true
    }

    /// Notes a logged report of this power-up.
    pub(crate) fn saw_report(&mut self, seq: u32, end_ms: u64) {
        self.first_seq = Some(self.first_seq.map_or(seq, |f| f.min(seq)));
        self.last_seq = self.last_seq.max(seq);
        self.end_ms = self.end_ms.max(end_ms);
    }

    /// Takes what `newer` (a later record of the same power-up) says of the
    /// clock, keeping what the node counted of its reports.
    pub(crate) fn update_from(&mut self, newer: &Clock) {
        self.estimate = newer.estimate;
        self.syncs = newer.syncs.clone();
        self.end_ms = self.end_ms.max(newer.end_ms);
    }
}
