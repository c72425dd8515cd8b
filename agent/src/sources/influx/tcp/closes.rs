//! Journaling the connections a TCP listener closed, sans-IO: which health
//! records to commit ([`health::CONNECTIONS_EVICTED`],
//! [`health::CONNECTIONS_TIMED_OUT`]) and when. The listener's task
//! (`report_closes`) only sleeps until [`CloseReport::poll_due`], reads the
//! counters and submits what [`CloseReport::poll_report`] hands it.

use std::time::Duration;

use ferry_proto::health;

use super::super::SourceStats;
use crate::journal::Work;

/// Connections a listener closed so far, as its [`SourceStats`] count them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closes {
    /// Closed at the connection limit (the idlest) or when an accept failed.
    pub evicted: u64,
    /// Closed by the idle or the partial-line timeout.
    pub timed_out: u64,
}

impl Closes {
    /// The counts in `stats` now.
    pub fn of(stats: &SourceStats) -> Self {
        Self {
            evicted: stats.connections_evicted(),
            timed_out: stats.idle_timeouts() + stats.line_timeouts(),
        }
    }
}

/// A report to journal: its work, and the counts it brings the journal to
/// (hand them to [`CloseReport::handle_journaled`] once committed).
#[derive(Debug)]
pub struct Report {
    /// The health records.
    pub work: Work,
    /// The counts journaled once `work` is committed.
    pub counts: Closes,
}

/// When to journal the closes, and what: the increase since the last
/// committed report, at most every `period` (the first a period after the
/// listener started; a late report moves the next one a period after it)
/// and once more when the listener stops. What a failed commit did not
/// journal goes with the next report.
#[derive(Debug)]
pub struct CloseReport {
    source: String,
    period_ns: i64,
    due: i64,
    journaled: Closes,
}

impl CloseReport {
    /// For the source `source`, started at `now`.
    pub fn new(source: &str, period: Duration, now: i64) -> Self {
        let period_ns = ferry_clock::nanos(period).max(1);
        Self {
            source: source.to_owned(),
            period_ns,
            due: now.saturating_add(period_ns),
            journaled: Closes::default(),
        }
    }

    /// When the next periodic report is due.
    pub fn poll_due(&self) -> i64 {
        self.due
    }

    /// At `now` with the listener's counts at `counts`: the report to
    /// journal, if one is due (always when `stopping`) and something
    /// changed since the last committed one.
    pub fn poll_report(&mut self, now: i64, stopping: bool, counts: Closes) -> Option<Report> {
        if !stopping && now < self.due {
            return None;
        }
        // On time: the schedule goes on; late: a period from now.
        self.due = self
            .due
            .saturating_add(self.period_ns)
            .max(now.saturating_add(self.period_ns));
        let mut work = Work::default();
        if counts.evicted > self.journaled.evicted {
            work.health.push((
                self.source.clone(),
                health::CONNECTIONS_EVICTED,
                counts.evicted - self.journaled.evicted,
            ));
        }
        if counts.timed_out > self.journaled.timed_out {
            work.health.push((
                self.source.clone(),
                health::CONNECTIONS_TIMED_OUT,
                counts.timed_out - self.journaled.timed_out,
            ));
        }
        (!work.health.is_empty()).then_some(Report { work, counts })
    }

    /// A report's work was committed: its counts are journaled.
    pub fn handle_journaled(&mut self, counts: Closes) {
        self.journaled = counts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = ferry_clock::SEC;
    const T0: i64 = 1_700_000_000 * S;

    fn closes(evicted: u64, timed_out: u64) -> Closes {
        Closes { evicted, timed_out }
    }

    fn health(r: &Report) -> Vec<(u16, u64)> {
        r.work
            .health
            .iter()
            .map(|(source, kind, n)| {
                assert_eq!(source, "tcp-in");
                (*kind, *n)
            })
            .collect()
    }

    #[test]
    fn the_increase_is_journaled_a_period_after_the_start_then_every_period() {
        let mut r = CloseReport::new("tcp-in", Duration::from_secs(1), T0);
        assert_eq!(r.poll_due(), T0 + S);
        assert!(
            r.poll_report(T0 + S - 1, false, closes(2, 1)).is_none(),
            "not due"
        );
        assert_eq!(r.poll_due(), T0 + S, "an early wake changes nothing");
        let rep = r.poll_report(T0 + S, false, closes(2, 1)).unwrap();
        assert_eq!(
            health(&rep),
            [
                (health::CONNECTIONS_EVICTED, 2),
                (health::CONNECTIONS_TIMED_OUT, 1)
            ]
        );
        r.handle_journaled(rep.counts);
        assert_eq!(r.poll_due(), T0 + 2 * S);
        // Only timeouts since: only kind 14, the increase.
        let rep = r.poll_report(T0 + 2 * S, false, closes(2, 4)).unwrap();
        assert_eq!(health(&rep), [(health::CONNECTIONS_TIMED_OUT, 3)]);
        r.handle_journaled(rep.counts);
        // Nothing new: nothing to commit, and the schedule goes on.
        assert!(r.poll_report(T0 + 3 * S, false, closes(2, 4)).is_none());
        assert_eq!(r.poll_due(), T0 + 4 * S);
    }

    #[test]
    fn a_late_report_moves_the_next_a_period_after_it() {
        let mut r = CloseReport::new("tcp-in", Duration::from_secs(1), T0);
        // The loop was busy committing: 2.5 periods late.
        let rep = r.poll_report(T0 + 7 * S / 2, false, closes(1, 0)).unwrap();
        assert_eq!(health(&rep), [(health::CONNECTIONS_EVICTED, 1)]);
        assert_eq!(r.poll_due(), T0 + 9 * S / 2, "no burst of missed reports");
    }

    #[test]
    fn what_a_failed_commit_did_not_journal_goes_with_the_next_report() {
        let mut r = CloseReport::new("tcp-in", Duration::from_secs(1), T0);
        let rep = r.poll_report(T0 + S, false, closes(3, 0)).unwrap();
        assert_eq!(health(&rep), [(health::CONNECTIONS_EVICTED, 3)]);
        // Not committed: no handle_journaled.
        let rep = r.poll_report(T0 + 2 * S, false, closes(5, 1)).unwrap();
        assert_eq!(
            health(&rep),
            [
                (health::CONNECTIONS_EVICTED, 5),
                (health::CONNECTIONS_TIMED_OUT, 1)
            ]
        );
        r.handle_journaled(rep.counts);
        let rep = r.poll_report(T0 + 3 * S, false, closes(6, 1)).unwrap();
        assert_eq!(health(&rep), [(health::CONNECTIONS_EVICTED, 1)]);
    }

    #[test]
    fn stopping_reports_at_once_whatever_the_schedule() {
        let mut r = CloseReport::new("tcp-in", Duration::from_secs(3600), T0);
        assert!(
            r.poll_report(T0 + S, true, closes(0, 0)).is_none(),
            "nothing closed"
        );
        let rep = r.poll_report(T0 + 2 * S, true, closes(0, 2)).unwrap();
        assert_eq!(health(&rep), [(health::CONNECTIONS_TIMED_OUT, 2)]);
    }

    #[test]
    fn the_counts_are_the_listeners_stats() {
        let stats = SourceStats::default();
        stats.add(&stats.connections_evicted, 2);
        stats.add(&stats.idle_timeouts, 3);
        stats.add(&stats.line_timeouts, 4);
        assert_eq!(Closes::of(&stats), closes(2, 7));
    }
}
