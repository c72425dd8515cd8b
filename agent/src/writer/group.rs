//! The writer's group commit as a sans-IO state machine.
//!
//! [`GroupCommit`] owns the [`Journal`] and decides everything the writer
//! task used to decide inline: which submissions a full journal refuses
//! (backpressure, each handed its work back), how a group's submissions
//! merge into one [`Work`], which origins' received counts ride along as
//! health and when, and when the writer must wake with no input
//! ([`GroupCommit::poll_wake`]). Every method takes `now` (wall-clock ns,
//! [`ferry_clock`]); nothing here reads a clock, sleeps or touches a channel,
//! so the tests drive it with plain numbers.
//!
//! One measurement is not driven by `now`: how long the journal's commit
//! (its fsync) took, for the commit-latency histogram and the slow-commit
//! log. It decides nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::intake::{Outcome, Refused, SubmitError};
use crate::journal::{CommitReport, Journal, Work};
use crate::metrics::AgentMetrics;

/// A journal commit taking this long is logged (the disk or the page cache
/// stalled): the sources waiting for it waited that long.
pub const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// When the writer wakes without input.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// The shortest pause between commits that only close windows or seal
    /// lingering batches.
    pub tick: Duration,
    /// Readings received per origin reach the collector this often (health
    /// kind [`ferry_proto::health::RECEIVED`]).
    pub health_interval: Duration,
}

/// What one group commit did, for the driver.
#[derive(Debug)]
pub struct GroupReport {
    /// One answer per submitted [`Work`], in order.
    pub outcomes: Vec<Outcome>,
    /// A batch was sealed: the shipper has something new.
    pub sealed: bool,
}

/// The journal and the writer's accounting around it.
pub struct GroupCommit {
    journal: Journal,
    metrics: Arc<AgentMetrics>,
    pacing: Pacing,
    /// Readings received per origin since the last health report, counted
    /// once their commit succeeded.
    received: BTreeMap<String, u64>,
    /// When received counts were last journaled as health (the first commit
    /// starts the interval).
    last_health: Option<i64>,
    /// When the last group was committed.
    last_commit: Option<i64>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("pacing", &self.pacing)
            .field("received", &self.received)
            .field("last_health", &self.last_health)
            .field("last_commit", &self.last_commit)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// The state machine over `journal`.
    pub fn new(journal: Journal, metrics: Arc<AgentMetrics>, pacing: Pacing) -> Self {
        let machine = Self {
            journal,
            metrics,
            pacing,
            received: BTreeMap::new(),
            last_health: None,
            last_commit: None,
        };
        machine.publish_stats();
        machine
    }

    /// The pacing in force.
    pub fn pacing(&self) -> Pacing {
        self.pacing
    }

    /// Changes the pacing (before the first commit, typically).
    pub fn set_pacing(&mut self, pacing: Pacing) {
        self.pacing = pacing;
    }

    /// When to commit with no input: when the journal has something due (a
    /// batch's linger, a window's close) or received counts are due as
    /// health, but no sooner than `tick` after the last commit. `None` when
    /// nothing waits on time: an idle agent does not wake.
    pub fn poll_wake(&self) -> Option<i64> {
        let journal = self.journal.next_due();
        let health = match (self.received.is_empty(), self.last_health) {
            (false, Some(at)) => Some(ferry_clock::after(at, self.pacing.health_interval)),
            _ => None,
        };
        let at = journal.into_iter().chain(health).min()?;
        let floor = self
            .last_commit
            .map_or(i64::MIN, |c| ferry_clock::after(c, self.pacing.tick));
        Some(at.max(floor))
    }

    /// Hands batches out again (the collector asked to retry them).
    pub fn release(&mut self, seqs: &[u64]) {
        self.journal.release(seqs);
    }

    /// The connection is gone: every in-flight batch is handed out again.
    pub fn release_all(&mut self) {
        self.journal.release_in_flight();
    }

    /// Commits one group at `now`: the collector's `acks` and every source's
    /// `works` (each answered in [`GroupReport::outcomes`], in order), the
    /// windows and batches due by `now`, and the received counts if their
    /// health report is due.
    pub fn handle_group(
        &mut self,
        now: i64,
        works: Vec<Work>,
        acks: Vec<(u64, bool)>,
    ) -> GroupReport {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(works.len());
        let mut works = works;
        // Backpressure: a full journal refuses data and hands each source its
        // work back to retry; what else came (acks free space, health) is
        // still committed.
        if let Some((used, budget)) = self.journal.refuses_data() {
            for w in &mut works {
                if !w.readings.is_empty() || !w.reports.is_empty() {
                    self.metrics.backpressure.add(1);
                    outcomes.push(Some(Err(Refused::full(used, budget, std::mem::take(w)))));
                } else {
                    outcomes.push(None);
                }
            }
        } else {
            outcomes.resize_with(works.len(), || None);
        }
        // Merge what is taken, remembering which device reports are whose.
        let mut work = Work {
            acks,
            ..Work::default()
        };
        let mut spans = Vec::with_capacity(works.len());
        for (w, refused) in works.iter_mut().zip(&outcomes) {
            let start = work.reports.len();
            let count = if refused.is_some() {
                0
            } else {
                w.reading_count()
            };
            work.readings.append(&mut w.readings);
            work.reports.append(&mut w.reports);
            work.health.append(&mut w.health);
            work.device_dropped.append(&mut w.device_dropped);
            work.marks.append(&mut w.marks);
            spans.push((start, work.reports.len(), count));
        }
        let received = received_per_origin(&work);
        let last_health = *self.last_health.get_or_insert(now);
        let health_due = !self.received.is_empty()
            && now.saturating_sub(last_health) >= ferry_clock::nanos(self.pacing.health_interval);
        let reported = if health_due {
            let reported = std::mem::take(&mut self.received);
            for (origin, n) in &reported {
                work.health
                    .push((origin.clone(), ferry_proto::health::RECEIVED, *n));
            }
            reported
        } else {
            BTreeMap::new()
        };
        let readings = work.reading_count();
        let started = std::time::Instant::now();
        // Never `Full`: data was refused above, before the merge.
        let result = self
            .journal
            .commit(work, now)
            .map_err(|e| SubmitError::Storage(e.to_string()));
        self.last_commit = Some(now);
        let sealed = match &result {
            Ok(report) => {
                if health_due {
                    self.last_health = Some(now);
                }
                for (origin, n) in received {
                    *self.received.entry(origin).or_default() += n;
                }
                self.account(report, readings, started.elapsed());
                !report.sealed.is_empty()
            }
            Err(e) => {
                // Not journaled: reported with the next commit.
                for (origin, n) in reported {
                    *self.received.entry(origin).or_default() += n;
                }
                tracing::error!(error = %e, "journal commit failed; its submissions are refused");
                false
            }
        };
        let outcomes = outcomes
            .into_iter()
            .zip(spans)
            .map(|(refused, (start, end, count))| match (refused, &result) {
                (Some(refused), _) => refused,
                (None, Ok(report)) => Ok(CommitReport {
                    accepted: count,
                    reports: report.reports[start..end].to_vec(),
                    wrote: report.wrote,
                    ..CommitReport::default()
                }),
                (None, Err(e)) => Err(Refused::from(e.clone())),
            })
            .collect();
        self.publish_stats();
        GroupReport { outcomes, sealed }
    }

    fn account(&self, report: &CommitReport, readings: u64, took: Duration) {
        if report.wrote {
            self.metrics.observe_commit(took);
            if took >= SLOW_COMMIT {
                tracing::warn!(
                    ms = took.as_millis() as u64,
                    readings,
                    "slow journal commit: sources waited this long"
                );
            }
        }
        self.metrics.readings_in.add(readings);
        self.metrics.readings_out.add(report.delivered_readings);
        self.metrics.readings_late_dropped.add(report.late_dropped);
        self.metrics.batches_sealed.add(report.sealed.len() as u64);
        self.metrics.dropped_full.add(report.dropped_readings);
    }

    /// The journal, for queries (fetching batches to ship, stats, inspect).
    pub fn journal(&mut self) -> &mut Journal {
        &mut self.journal
    }

    /// Received counts not yet journaled as health, per origin.
    pub fn received(&self) -> &BTreeMap<String, u64> {
        &self.received
    }

    /// The journal back (to close it cleanly).
    pub fn into_journal(self) -> Journal {
        self.journal
    }

    fn publish_stats(&self) {
        if let Ok(stats) = self.journal.stats() {
            self.metrics.set_journal(&stats);
        }
    }
}

/// Readings per origin in a merged work (many groups share an origin: its
/// name is copied once).
fn received_per_origin(work: &Work) -> BTreeMap<String, u64> {
    let mut received: BTreeMap<String, u64> = BTreeMap::new();
    let origins = work
        .readings
        .iter()
        .map(|s| (&s.origin, s.readings.len() as u64));
    let devices = work.reports.iter().map(|r| {
        let n: u64 = r.windows.iter().map(|(_, p)| p.count).sum();
        (&r.device, n)
    });
    for (origin, n) in origins.chain(devices) {
        if n == 0 {
            continue;
        }
        match received.get_mut(origin.as_str()) {
            Some(total) => *total += n,
            None => {
                received.insert(origin.clone(), n);
            }
        }
    }
    received
}

#[cfg(test)]
mod tests {
    use ferry_clock::SEC;
    use ferry_proto::batch::Reading;
    use ferry_proto::series::SeriesKey;

    use super::*;
    use crate::journal::{FullPolicy, JournalConfig, SeriesReadings};

    const T0: i64 = 1_700_000_000 * SEC;

    fn journal(config: JournalConfig) -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("journal.redb")).unwrap();
        (dir, Journal::open(db, config).unwrap())
    }

    fn work(origin: &str, n: usize, ts: i64) -> Work {
        Work {
            readings: vec![SeriesReadings {
                series: SeriesKey::new("temperature", [("device", origin)]).unwrap(),
                origin: origin.into(),
                readings: (0..n)
                    .map(|i| Reading {
                        ts_ns: ts + i as i64,
                        value: i as f64,
                    })
                    .collect(),
            }],
            ..Work::default()
        }
    }

    fn pacing(tick_ms: u64, health_s: u64) -> Pacing {
        Pacing {
            tick: Duration::from_millis(tick_ms),
            health_interval: Duration::from_secs(health_s),
        }
    }

    fn lingering() -> JournalConfig {
        JournalConfig {
            eager_seal: false,
            batch_linger_ns: 2 * SEC,
            ..JournalConfig::default()
        }
    }

    #[test]
    fn an_idle_writer_never_wakes_and_a_lingering_batch_wakes_it_at_its_linger() {
        let (_dir, j) = journal(lingering());
        let mut g = GroupCommit::new(j, Arc::default(), pacing(5, 3600));
        assert_eq!(g.poll_wake(), None, "nothing waits on time");
        let r = g.handle_group(T0, vec![work("a1", 3, T0)], Vec::new());
        assert_eq!(r.outcomes.len(), 1);
        assert_eq!(r.outcomes[0].as_ref().unwrap().accepted, 3);
        assert!(!r.sealed);
        // The batch lingers 2 s; the received counts wait for their hour.
        assert_eq!(g.poll_wake(), Some(T0 + 2 * SEC));
        let r = g.handle_group(T0 + 2 * SEC, Vec::new(), Vec::new());
        assert!(r.sealed, "sealed at its linger");
        assert_eq!(
            g.poll_wake(),
            Some(T0 + 3600 * SEC),
            "only health waits now"
        );
    }

    #[test]
    fn wakes_are_never_sooner_than_a_tick_after_the_last_commit() {
        let config = JournalConfig {
            batch_linger_ns: 1_000_000, // 1 ms, shorter than the tick
            ..lingering()
        };
        let (_dir, j) = journal(config);
        let mut g = GroupCommit::new(j, Arc::default(), pacing(5, 3600));
        g.handle_group(T0, vec![work("a1", 1, T0)], Vec::new());
        assert_eq!(g.poll_wake(), Some(T0 + 5_000_000), "held to the tick");
    }

    #[test]
    fn received_counts_ride_along_once_per_health_interval() {
        let (_dir, j) = journal(lingering());
        let mut g = GroupCommit::new(j, Arc::default(), pacing(5, 10));
        g.handle_group(T0, vec![work("a1", 4, T0), work("b2", 1, T0)], Vec::new());
        g.handle_group(T0 + SEC, vec![work("a1", 2, T0)], Vec::new());
        let counts: Vec<_> = g.received().iter().map(|(o, n)| (o.as_str(), *n)).collect();
        assert_eq!(counts, [("a1", 6), ("b2", 1)]);
        // The readings' batch seals at T0 + 2 s; then only health waits, and
        // its interval runs from the first commit.
        assert!(g.handle_group(T0 + 2 * SEC, Vec::new(), Vec::new()).sealed);
        assert_eq!(g.poll_wake(), Some(T0 + 10 * SEC));
        g.handle_group(T0 + 10 * SEC - 1, Vec::new(), Vec::new());
        assert_eq!(g.received().len(), 2, "not yet due");
        assert_eq!(g.journal().next_due(), None);
        g.handle_group(T0 + 10 * SEC, Vec::new(), Vec::new());
        assert!(g.received().is_empty(), "journaled as health");
        // The health rows are in the journal, lingering like readings do.
        assert_eq!(g.poll_wake(), Some(T0 + 12 * SEC));
        let batches = g.journal().stats().unwrap().outbox_batches;
        assert!(g.handle_group(T0 + 12 * SEC, Vec::new(), Vec::new()).sealed);
        assert_eq!(g.journal().stats().unwrap().outbox_batches, batches + 1);
        assert_eq!(g.poll_wake(), None, "nothing received since: nothing due");
        g.handle_group(T0 + 13 * SEC, vec![work("a1", 1, T0)], Vec::new());
        assert!(g.handle_group(T0 + 15 * SEC, Vec::new(), Vec::new()).sealed);
        assert_eq!(g.poll_wake(), Some(T0 + 20 * SEC), "the next interval");
    }

    #[test]
    fn a_full_journal_refuses_each_data_submission_with_its_work_and_commits_the_rest() {
        let config = JournalConfig {
            budget_bytes: 1,
            policy: FullPolicy::Backpressure,
            ..JournalConfig::default()
        };
        let (_dir, j) = journal(config);
        let metrics = Arc::new(AgentMetrics::default());
        let mut g = GroupCommit::new(j, metrics.clone(), pacing(5, 3600));
        // Under the budget at the start of the commit: taken.
        let first = g.handle_group(T0, vec![work("a1", 10, T0)], Vec::new());
        assert_eq!(first.outcomes[0].as_ref().unwrap().accepted, 10);
        let health = Work {
            health: vec![("a1".into(), 3, 1)],
            ..Work::default()
        };
        let refused = work("a1", 3, T0 + 10);
        let second = g.handle_group(
            T0 + SEC,
            vec![refused.clone(), health, work("b2", 1, T0)],
            Vec::new(),
        );
        let mut outcomes = second.outcomes.into_iter();
        let Some(Err(Refused {
            error: SubmitError::Full { used, budget: 1 },
            work: Some(back),
        })) = outcomes.next()
        else {
            panic!("a full journal refuses data and returns it");
        };
        assert!(used > 1, "{used} bytes used");
        assert_eq!(*back, refused, "the work comes back untouched");
        assert_eq!(
            outcomes.next().unwrap().unwrap().accepted,
            0,
            "health is committed"
        );
        assert!(matches!(
            outcomes.next(),
            Some(Err(Refused { work: Some(_), .. }))
        ));
        assert_eq!(metrics.backpressure.get(), 2);
        assert_eq!(metrics.readings_in.get(), 10);
        assert_eq!(
            g.received().get("a1"),
            Some(&10),
            "refused readings are not received"
        );
        assert_eq!(g.received().get("b2"), None);
    }
}
