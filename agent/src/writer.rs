//! The journal writer: the one task that owns the [`Journal`].
//!
//! It takes everything that changes the journal — source submissions, the
//! shipper's acks and releases, the time when something is due — from its
//! channels and applies whatever has queued up in **one** write transaction
//! (group commit): while a commit's fsync runs (~4 ms here), the next group
//! gathers. Sources are answered only after the commit that holds their
//! work returned.
//!
//! Without input it wakes only when the journal has something due (a batch's
//! linger ends, a window closes: [`Journal::next_due`]) or health counts are
//! due; an idle agent does not wake at all.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::intake::{Refused, Submission, SubmitError};
use crate::journal::{CommitReport, Journal, JournalStats, StoredBatch, Work};
use crate::metrics::AgentMetrics;

/// Wall-clock now in ns since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Requests from the shipper and the admin endpoint.
#[derive(Debug)]
pub enum Control {
    /// Batches to send: up to `max_bytes`, marked in flight.
    Fetch {
        /// Byte budget (at least one batch is returned if any waits).
        max_bytes: u64,
        /// Newest first instead of oldest first.
        newest_first: bool,
        /// The batches, as stored.
        reply: oneshot::Sender<Vec<StoredBatch>>,
    },
    /// Collector answers: `(seq, delivered)`.
    Acks(Vec<(u64, bool)>),
    /// Batches to hand out again (transient rejection).
    Release(Vec<u64>),
    /// The connection is gone: every in-flight batch is handed out again.
    ReleaseAll,
    /// Journal counters.
    Stats(oneshot::Sender<JournalStats>),
    /// What waits, per series.
    Inspect(oneshot::Sender<Vec<(String, u64, u64)>>),
}

/// A journal commit taking this long is logged (the disk or the page cache
/// stalled): the sources waiting for it waited that long.
pub const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// Handle to the writer for the shipper and the admin endpoint.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Control>,
    /// Notified whenever a batch is sealed.
    pub sealed: Arc<Notify>,
}

impl WriterHandle {
    /// Sends a control message; false if the writer is gone.
    pub async fn send(&self, msg: Control) -> bool {
        self.tx.send(msg).await.is_ok()
    }

    /// Journal counters, if the writer runs.
    pub async fn stats(&self) -> Option<JournalStats> {
        let (tx, rx) = oneshot::channel();
        self.send(Control::Stats(tx)).await;
        rx.await.ok()
    }
}

/// The writer task's inputs.
pub struct Writer {
    journal: Journal,
    intake: mpsc::Receiver<Submission>,
    control: mpsc::Receiver<Control>,
    sealed: Arc<Notify>,
    metrics: Arc<AgentMetrics>,
    tick: Duration,
    max_group: usize,
    /// Readings received per origin since the last health report.
    received: std::collections::BTreeMap<String, u64>,
    health_interval: Duration,
    last_health: std::time::Instant,
}

impl Writer {
    /// A writer over `journal`, answering `intake`. `tick` is the shortest
    /// pause between commits that only close windows or seal lingering
    /// batches.
    pub fn new(
        journal: Journal,
        intake: mpsc::Receiver<Submission>,
        metrics: Arc<AgentMetrics>,
        tick: Duration,
    ) -> (Self, WriterHandle) {
        let (tx, control) = mpsc::channel(1024);
        let sealed = Arc::new(Notify::new());
        let handle = WriterHandle {
            tx,
            sealed: sealed.clone(),
        };
        let writer = Self {
            journal,
            intake,
            control,
            sealed,
            metrics,
            tick,
            max_group: 4096,
            received: std::collections::BTreeMap::new(),
            health_interval: Duration::from_secs(10),
            last_health: std::time::Instant::now(),
        };
        (writer, handle)
    }

    /// Reports readings received per origin to the collector this often
    /// (health kind [`ferry_proto::health::RECEIVED`]).
    pub fn with_health_interval(mut self, interval: Duration) -> Self {
        self.health_interval = interval;
        self
    }

    /// Runs until `shutdown` turns true and the queues are drained; returns
    /// the journal (so a caller can close it cleanly).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Journal {
        self.publish_stats();
        let mut checked = tokio::time::Instant::now();
        loop {
            let mut subs: Vec<Submission> = Vec::new();
            let mut controls: Vec<Control> = Vec::new();
            let wake = self.next_wake(checked);
            let due = async move {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                s = self.intake.recv() => match s {
                    Some(s) => subs.push(s),
                    None => if *shutdown.borrow() { break },
                },
                c = self.control.recv() => if let Some(c) = c { controls.push(c) },
                _ = due => {},
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        // Drain what is queued, commit it, and stop.
                        self.intake.close();
                        while let Ok(s) = self.intake.try_recv() {
                            subs.push(s);
                        }
                        self.apply(subs, Vec::new());
                        break;
                    }
                },
            }
            while subs.len() < self.max_group {
                match self.intake.try_recv() {
                    Ok(s) => subs.push(s),
                    Err(_) => break,
                }
            }
            while let Ok(c) = self.control.try_recv() {
                controls.push(c);
            }
            self.apply(subs, controls);
            checked = tokio::time::Instant::now();
        }
        self.journal
    }

    /// When to commit with no input: when the journal has something due (a
    /// batch's linger, a window's close) or the received counts are due as
    /// health, but no sooner than `tick` after the last check. None when
    /// nothing waits on time: an idle agent does not wake.
    fn next_wake(&self, checked: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let journal = self.journal.next_due().map(|due| {
            let wait = u64::try_from(due.saturating_sub(now_ns())).unwrap_or(0);
            now + Duration::from_nanos(wait)
        });
        let health = (!self.received.is_empty())
            .then(|| tokio::time::Instant::from_std(self.last_health) + self.health_interval);
        let at = journal.into_iter().chain(health).min()?;
        Some(at.max(checked + self.tick))
    }

    fn apply(&mut self, subs: Vec<Submission>, controls: Vec<Control>) {
        let mut acks = Vec::new();
        let mut queries = Vec::new();
        for c in controls {
            match c {
                Control::Acks(a) => acks.extend(a),
                Control::Release(seqs) => self.journal.release(&seqs),
                Control::ReleaseAll => self.journal.release_in_flight(),
                other => queries.push(other),
            }
        }
        // Backpressure: a full journal refuses data, and hands each source
        // its work back to retry; what else came (acks free space, health)
        // is still committed.
        let mut subs = subs;
        if let Some((used, budget)) = self.journal.refuses_data() {
            let (data, rest): (Vec<_>, Vec<_>) = subs
                .into_iter()
                .partition(|s| !s.work.readings.is_empty() || !s.work.reports.is_empty());
            self.metrics.backpressure.add(data.len() as u64);
            for s in data {
                let _ = s.done.send(Err(Refused::full(used, budget, s.work)));
            }
            subs = rest;
        }
        // Merge the submissions, remembering which device reports are whose.
        let mut work = Work {
            acks,
            ..Work::default()
        };
        let mut spans = Vec::with_capacity(subs.len());
        // Moved, not copied: a submission only needs its `done` afterwards.
        for s in &mut subs {
            let start = work.reports.len();
            let count = s.work.reading_count();
            work.readings.append(&mut s.work.readings);
            work.reports.append(&mut s.work.reports);
            work.health.append(&mut s.work.health);
            work.device_dropped.append(&mut s.work.device_dropped);
            spans.push((start, work.reports.len(), count));
        }
        // Readings received per origin, counted once their commit succeeds;
        // every health interval the totals ride along in a commit.
        let mut received: std::collections::BTreeMap<String, u64> = Default::default();
        let origins = work
            .readings
            .iter()
            .map(|s| (&s.origin, s.readings.len() as u64));
        let devices = work.reports.iter().map(|r| {
            let n: u64 = r.windows.iter().map(|(_, p)| p.count).sum();
            (&r.device, n)
        });
        for (origin, n) in origins.chain(devices) {
            // Many groups share an origin: its name is copied once.
            match received.get_mut(origin.as_str()) {
                Some(total) => *total += n,
                None => {
                    received.insert(origin.clone(), n);
                }
            }
        }
        let report_health =
            self.last_health.elapsed() >= self.health_interval && !self.received.is_empty();
        let mut reported = std::collections::BTreeMap::new();
        if report_health {
            reported = std::mem::take(&mut self.received);
            for (origin, n) in &reported {
                work.health
                    .push((origin.clone(), ferry_proto::health::RECEIVED, *n));
            }
        }
        let started = std::time::Instant::now();
        let readings = work.reading_count();
        // Never `Full`: data was refused above, before the merge.
        let result = tokio::task::block_in_place(|| {
            crate::systemd::stall_writer_if_asked();
            self.journal.commit(work, now_ns())
        })
        .map_err(|e| SubmitError::Storage(e.to_string()));
        match &result {
            Ok(_) if report_health => self.last_health = std::time::Instant::now(),
            // Not journaled: reported with the next commit.
            Err(_) => {
                for (origin, n) in reported {
                    *self.received.entry(origin).or_default() += n;
                }
            }
            Ok(_) => {}
        }
        if result.is_ok() {
            for (origin, n) in received {
                if n > 0 {
                    *self.received.entry(origin).or_default() += n;
                }
            }
        }
        match &result {
            Ok(report) => {
                if report.wrote {
                    let took = started.elapsed();
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
                if !report.sealed.is_empty() {
                    self.sealed.notify_waiters();
                    self.sealed.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "journal commit failed; its submissions are refused")
            }
        }
        for (s, (start, end, count)) in subs.into_iter().zip(spans) {
            let answer = match &result {
                Ok(report) => Ok(CommitReport {
                    accepted: count,
                    reports: report.reports[start..end].to_vec(),
                    wrote: report.wrote,
                    ..CommitReport::default()
                }),
                Err(e) => Err(Refused::from(e.clone())),
            };
            let _ = s.done.send(answer);
        }
        for q in queries {
            match q {
                Control::Fetch {
                    max_bytes,
                    newest_first,
                    reply,
                } => match self.journal.next_to_ship(max_bytes, newest_first) {
                    Ok(batches) => {
                        let _ = reply.send(batches);
                    }
                    Err(e) => tracing::error!(error = %e, "reading the outbox failed"),
                },
                Control::Stats(reply) => {
                    if let Ok(stats) = self.journal.stats() {
                        let _ = reply.send(stats);
                    }
                }
                Control::Inspect(reply) => {
                    if let Ok(rows) = self.journal.inspect() {
                        let _ = reply.send(rows);
                    }
                }
                Control::Acks(_) | Control::Release(_) | Control::ReleaseAll => {}
            }
        }
        self.publish_stats();
    }

    fn publish_stats(&self) {
        if let Ok(stats) = self.journal.stats() {
            self.metrics.set_journal(&stats);
        }
    }
}
