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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::intake::{Outcome, Refused, SubmitError};
use ferry_proto::health::DROPPED_MEMORY_BUDGET;
use ferry_proto::series::SeriesKey;

use crate::journal::{CommitReport, Journal, Work};
use crate::limits::{Charge, Hold, MemoryBudget, WINDOW_SERIES_BYTES};
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
    /// The journal's write failed (the journal must be reopened: redb
    /// refuses a file after an I/O error): why.
    pub failed: Option<String>,
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
    /// The timestamps accepted at ingest, `[lo, hi]` at the next group
    /// (the collector's window); `None`: every timestamp.
    window: Option<(i64, i64)>,
    /// Data is refused, handed back (the disk is full): free bytes.
    disk_hold: Option<u64>,
    /// Keep a copy of each submission to hand back if the commit fails.
    careful: bool,
    /// Window state's share of the memory budget, if bound by one.
    window_budget: Option<Charge>,
    /// The batch being filled's share of the memory budget.
    pending_budget: Option<Hold>,
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
            window: None,
            disk_hold: None,
            careful: false,
            window_budget: None,
            pending_budget: None,
        };
        machine.publish_stats();
        machine
    }

    /// The pacing in force.
    pub fn pacing(&self) -> Pacing {
        self.pacing
    }

    /// Charges window state and the batch being filled to `budget`
    /// (whatever the limit: sources wait while it is full). Every series with open windows
    /// costs [`WINDOW_SERIES_BYTES`]; readings of a new aggregated series
    /// that does not fit are refused, counted per origin as health kind
    /// [`DROPPED_MEMORY_BUDGET`](ferry_proto::health::DROPPED_MEMORY_BUDGET)
    /// (not as received: they never reach the journal).
    pub fn set_memory_budget(&mut self, budget: Arc<MemoryBudget>) {
        let mut pending = budget.empty_hold();
        pending.set(self.journal.pending_heap_bytes());
        self.pending_budget = Some(pending);
        let mut charge = Charge::new(budget);
        charge.set(self.journal.window_series() as u64 * WINDOW_SERIES_BYTES);
        self.window_budget = Some(charge);
    }

    /// Takes out of `work` the readings of new aggregated series that do not
    /// fit in the budget (`admitted`: new series already charged in this
    /// group), and counts them in its health.
    fn refuse_window_series(&mut self, work: &mut Work, admitted: &mut BTreeSet<SeriesKey>) {
        let Self {
            journal,
            window_budget,
            ..
        } = self;
        let Some(charge) = window_budget else {
            return;
        };
        let mut refused: BTreeMap<String, u64> = BTreeMap::new();
        work.readings.retain(|group| {
            if admitted.contains(&group.series) || !journal.is_new_window_series(&group.series) {
                return true;
            }
            // Beside the chunks and batch passing through (holds): they
            // are transient and must not make a series be refused.
            if charge.try_grow_beside_holds(WINDOW_SERIES_BYTES) {
                admitted.insert(group.series.clone());
                return true;
            }
            let n = group.readings.len() as u64;
            charge.budget().record_refusal(n);
            *refused.entry(group.origin.clone()).or_default() += n;
            false
        });
        for (origin, n) in refused {
            work.health.push((origin, DROPPED_MEMORY_BUDGET, n));
        }
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

    /// Readings whose timestamps fall outside `[lo, hi]` are refused at
    /// ingest from the next group on, each counted for its origin as health
    /// kind [`ferry_proto::health::REJECTED_TIMESTAMP`] in the same commit
    /// (the collector would refuse them); `None` accepts every timestamp.
    pub fn set_timestamp_window(&mut self, window: Option<(i64, i64)>) {
        self.window = window;
    }

    /// While `Some(free)`, data submissions are refused and handed back
    /// ([`SubmitError::DiskFull`]), as under backpressure; acks and health
    /// are still committed (`crate::disk`).
    pub fn set_disk_hold(&mut self, free: Option<u64>) {
        self.disk_hold = free;
    }

    /// With `careful`, each data submission is copied before the commit and
    /// handed back if the commit fails, instead of being lost with it.
    pub fn set_careful(&mut self, careful: bool) {
        self.careful = careful;
    }

    /// Puts `journal` in place of the one in use (a reopened journal in
    /// place of one whose write failed) and returns the old one.
    pub fn replace_journal(&mut self, journal: Journal) -> Journal {
        let old = std::mem::replace(&mut self.journal, journal);
        self.publish_stats();
        old
    }

    /// True when a group with no input would change the journal at `now`
    /// (something is due); otherwise such a group begins no transaction.
    fn due(&self, now: i64) -> bool {
        self.poll_wake().is_some_and(|at| at <= now)
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
        // Nothing came and nothing is due (a control message woke the
        // writer: a fetch poll, a stats query): no write transaction.
        if works.is_empty() && acks.is_empty() && !self.due(now) {
            return GroupReport {
                outcomes: Vec::new(),
                sealed: false,
                failed: None,
            };
        }
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(works.len());
        let mut works = works;
        // Backpressure: a full journal refuses data and hands each source its
        // work back to retry; what else came (acks free space, health) is
        // still committed.
        let full = self.journal.refuses_data();
        if full.is_some() || self.disk_hold.is_some() {
            for w in &mut works {
                if !w.readings.is_empty() || !w.reports.is_empty() {
                    self.metrics.backpressure.add(1);
                    let refused = match (self.disk_hold, full) {
                        (Some(free), _) => Refused {
                            error: SubmitError::DiskFull { free },
                            work: Some(Box::new(std::mem::take(w))),
                        },
                        (None, Some((used, budget))) => {
                            Refused::full(used, budget, std::mem::take(w))
                        }
                        (None, None) => unreachable!("one of them holds"),
                    };
                    outcomes.push(Some(Err(refused)));
                } else {
                    outcomes.push(None);
                }
            }
        } else {
            outcomes.resize_with(works.len(), || None);
        }
        // Near a full disk, a copy of each taken submission survives a
        // failed commit and goes back to its source.
        let copies: Option<Vec<Option<Work>>> = self.careful.then(|| {
            works
                .iter()
                .zip(&outcomes)
                .map(|(w, refused)| refused.is_none().then(|| w.clone()))
                .collect()
        });
        // Merge what is taken, remembering which device reports are whose.
        let mut work = Work {
            acks,
            ..Work::default()
        };
        let mut spans = Vec::with_capacity(works.len());
        let mut admitted = BTreeSet::new();
        for (w, refused) in works.iter_mut().zip(&outcomes) {
            if refused.is_none()
                && let Some(window) = self.window
            {
                let rejected = reject_outside(w, window);
                self.metrics.guard.readings_rejected_timestamp.add(rejected);
            }
            if refused.is_none() {
                self.refuse_window_series(w, &mut admitted);
            }
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
        self.metrics.guard.journal_transactions.add(1);
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
        let mut copies = copies.map(|c| c.into_iter());
        let outcomes = outcomes
            .into_iter()
            .zip(spans)
            .map(|(refused, (start, end, count))| {
                let copy = copies.as_mut().and_then(|c| c.next()).flatten();
                (refused, (start, end, count), copy)
            })
            .map(
                |(refused, (start, end, count), copy)| match (refused, &result) {
                    (Some(refused), _) => refused,
                    (None, Err(e)) if copy.is_some() => Err(Refused {
                        error: e.clone(),
                        work: copy.map(Box::new),
                    }),
                    (None, Ok(report)) => Ok(CommitReport {
                        accepted: count,
                        reports: report.reports[start..end].to_vec(),
                        wrote: report.wrote,
                        ..CommitReport::default()
                    }),
                    (None, Err(e)) => Err(Refused::from(e.clone())),
                },
            )
            .collect();
        if let Some(charge) = &mut self.window_budget {
            // What the windows hold now: closed windows hand theirs back.
            charge.set(self.journal.window_series() as u64 * WINDOW_SERIES_BYTES);
        }
        if let Some(charge) = &mut self.pending_budget {
            // The batch being filled: its keys and readings until it is
            // sealed (connections wait while it fills the budget).
            charge.set(self.journal.pending_heap_bytes());
        }
        self.publish_stats();
        GroupReport {
            outcomes,
            sealed,
            failed: result.err().map(|e| e.to_string()),
        }
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

/// Removes from `work` the readings outside `[lo, hi]`, and adds their
/// count per origin as [`ferry_proto::health::REJECTED_TIMESTAMP`] health
/// to it: one producer's bad clock costs only its own readings. Returns
/// how many were removed.
pub fn reject_outside(work: &mut Work, (lo, hi): (i64, i64)) -> u64 {
    let mut total = 0;
    let mut per_origin: BTreeMap<&str, u64> = BTreeMap::new();
    for group in &mut work.readings {
        let before = group.readings.len();
        group.readings.retain(|r| (lo..=hi).contains(&r.ts_ns));
        let n = (before - group.readings.len()) as u64;
        if n > 0 {
            *per_origin.entry(group.origin.as_str()).or_default() += n;
            total += n;
        }
    }
    let health: Vec<_> = per_origin
        .into_iter()
        .map(|(o, n)| (o.to_owned(), ferry_proto::health::REJECTED_TIMESTAMP, n))
        .collect();
    if total > 0 {
        work.readings.retain(|g| !g.readings.is_empty());
    }
    work.health.extend(health);
    total
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
mod tests;
