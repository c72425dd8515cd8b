//! When the Parquet sink writes, sans-IO: the period of the first batch not
//! yet written is closed (its files are written) once it is over plus a
//! second of grace for batches still committing, or at once, cut at the
//! head, when the sink's lag has reached half its lag budget (the event log
//! holds a period's batches until its file is written). The sink's loop
//! ([`super::run`]) reads the clock, the log and the bus, and waits until
//! the deadline this gives.

use super::ParquetSink;

/// A period stays open this long past its end, for batches still
/// committing.
pub(super) const GRACE_NS: i64 = ferry_clock::SEC;

/// What the sink does with the period of the first batch not yet written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// Write its files now, taking stored batches up to `limit` at most
    /// (`u64::MAX`: the whole period, as `write_period` cuts it).
    Write {
        /// The last seq a file may take.
        limit: u64,
    },
    /// Not yet: wait for news on the bus (the lag may grow past half the
    /// budget) or until this time (wall-clock ns), then ask again.
    Wait {
        /// The period's end plus the grace.
        until: i64,
    },
}

/// The period rule of one sink: UTC-aligned periods of `period_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Roll {
    period_ns: i64,
}

impl Roll {
    /// The rule of a checked sink.
    pub(super) fn new(cfg: &ParquetSink) -> Self {
        Self::every(cfg.period_ns)
    }

    /// Periods of `period_ns` (positive).
    pub(super) fn every(period_ns: i64) -> Self {
        Self { period_ns }
    }

    /// The end of the period holding `stored_ns` (exclusive).
    pub(super) fn period_end(&self, stored_ns: i64) -> i64 {
        stored_ns - stored_ns.rem_euclid(self.period_ns) + self.period_ns
    }

    /// At `now`, the first batch not yet written having been stored at
    /// `first_stored_ns`, the sink's cursor at `after`, the log's head at
    /// `head` and its lag budget `budget_max` batches: write or wait.
    pub(super) fn poll(
        &self,
        now: i64,
        first_stored_ns: i64,
        after: u64,
        head: u64,
        budget_max: u64,
    ) -> Close {
        let lag = head.saturating_sub(after);
        if lag >= (budget_max / 2).max(1) {
            return Close::Write { limit: head };
        }
        let until = self.period_end(first_stored_ns).saturating_add(GRACE_NS);
        if now < until {
            Close::Wait { until }
        } else {
            Close::Write { limit: u64::MAX }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_clock::{Clock, ManualClock, SEC};

    const HOUR: i64 = 3_600 * SEC;
    /// 2025-12-02T15:00:00Z, an hour's start.
    const T0: i64 = 1_764_687_600 * SEC;

    #[test]
    fn a_period_is_written_a_second_after_it_ends_and_not_before() {
        let roll = Roll::every(HOUR);
        let clock = ManualClock::new(T0 + 10 * SEC);
        let stored = T0 + 5 * SEC;
        let poll = |now| roll.poll(now, stored, 10, 20, 1_000_000);
        assert_eq!(
            poll(clock.now_ns()),
            Close::Wait {
                until: T0 + HOUR + SEC
            }
        );
        clock.set(T0 + HOUR);
        assert_eq!(
            poll(clock.now_ns()),
            Close::Wait {
                until: T0 + HOUR + SEC
            },
            "the period is over but batches may still be committing"
        );
        clock.set(T0 + HOUR + SEC - 1);
        assert!(matches!(poll(clock.now_ns()), Close::Wait { .. }));
        clock.set(T0 + HOUR + SEC);
        assert_eq!(poll(clock.now_ns()), Close::Write { limit: u64::MAX });
        clock.advance(std::time::Duration::from_secs(86_400));
        assert_eq!(
            poll(clock.now_ns()),
            Close::Write { limit: u64::MAX },
            "a late sink writes at once"
        );
    }

    #[test]
    fn periods_are_utc_aligned_and_a_batch_on_a_boundary_opens_the_next() {
        let roll = Roll::every(HOUR);
        assert_eq!(roll.period_end(T0), T0 + HOUR);
        assert_eq!(roll.period_end(T0 - 1), T0);
        assert_eq!(roll.period_end(T0 + HOUR - 1), T0 + HOUR);
        let five = Roll::every(5 * SEC);
        assert_eq!(five.period_end(T0 + 7 * SEC), T0 + 10 * SEC);
        assert_eq!(
            five.poll(T0 + 7 * SEC, T0 + 7 * SEC, 0, 1, 1_000_000),
            Close::Wait {
                until: T0 + 11 * SEC
            }
        );
        assert_eq!(
            five.poll(T0 + 11 * SEC, T0 + 7 * SEC, 0, 1, 1_000_000),
            Close::Write { limit: u64::MAX }
        );
    }

    #[test]
    fn half_the_lag_budget_cuts_the_period_early_at_the_head() {
        let roll = Roll::every(HOUR);
        let now = T0 + 10 * SEC;
        let stored = T0;
        // Budget 100: a lag of 49 waits, 50 writes up to the head.
        assert!(matches!(
            roll.poll(now, stored, 1_000, 1_049, 100),
            Close::Wait { .. }
        ));
        assert_eq!(
            roll.poll(now, stored, 1_000, 1_050, 100),
            Close::Write { limit: 1_050 }
        );
        // Past the period too: still cut at the head.
        assert_eq!(
            roll.poll(T0 + 2 * HOUR, stored, 1_000, 1_080, 100),
            Close::Write { limit: 1_080 }
        );
        // A budget of 0 or 1 cuts at a lag of one batch.
        assert_eq!(roll.poll(now, stored, 7, 8, 1), Close::Write { limit: 8 });
        assert_eq!(roll.poll(now, stored, 7, 8, 0), Close::Write { limit: 8 });
    }
}
