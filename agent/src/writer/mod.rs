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

mod group;

use std::sync::Arc;
use std::time::Duration;

use ferry_clock::{Clock, SystemClock};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use self::group::{GroupCommit, GroupReport, Pacing, SLOW_COMMIT};
use crate::disk::{DiskGuard, DiskLog};
use crate::intake::{Refused, Submission, SubmitError};
use crate::journal::{Journal, JournalStats, StoredBatch};
use crate::metrics::AgentMetrics;

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

/// Free bytes on the filesystem of `dir`; 0 when it cannot be measured.
fn free_or_zero(dir: &std::path::Path) -> u64 {
    crate::disk::free_bytes(dir).unwrap_or(0)
}

fn log_disk(line: &DiskLog) {
    match line {
        DiskLog::Full { free, error } => tracing::error!(
            free_bytes = free,
            error = error.as_deref().unwrap_or("-"),
            "DISK FULL: the journal's filesystem has no room; sources are paused (TCP producers wait, UDP datagrams are dropped and counted) until space returns"
        ),
        DiskLog::StillFull { free, refused } => tracing::warn!(
            free_bytes = free,
            refused,
            "disk still full: sources paused"
        ),
        DiskLog::Resumed { free, refused } => tracing::info!(
            free_bytes = free,
            refused,
            "disk space is back: sources resumed"
        ),
    }
}

/// The writer task: a thin tokio loop around [`GroupCommit`]. It gathers
/// what queued up on its channels into one group, reads the clock, lets the
/// state machine commit, and sends the answers; it sleeps until
/// [`GroupCommit::poll_wake`].
pub struct Writer {
    machine: GroupCommit,
    intake: mpsc::Receiver<Submission>,
    control: mpsc::Receiver<Control>,
    sealed: Arc<Notify>,
    clock: Arc<dyn Clock>,
    max_group: usize,
    /// Where the accepted time window comes from.
    window: TimeWindow,
    /// The full-disk guard, when the journal is a file.
    disk: Option<DiskCheck>,
    /// The journal's ledger file and what was last written to it
    /// (`crate::salvage`).
    ledger: Option<(std::path::PathBuf, Option<crate::journal::Ledger>)>,
    metrics: Arc<AgentMetrics>,
}

/// Reopens the journal after a failed write.
pub type Reopen = Box<dyn FnMut() -> Result<Journal, crate::run::OpenError> + Send>;

/// The journal's filesystem, watched before data is written (`crate::disk`).
struct DiskCheck {
    dir: std::path::PathBuf,
    guard: DiskGuard,
    reopen: Reopen,
}

/// The timestamps the writer accepts at ingest: the collector's window
/// from its latest Welcome, else `[now - max_past, now + max_future]`.
#[derive(Debug, Clone, Default)]
pub struct TimeWindow {
    /// The shipper's latest Welcome terms.
    pub terms: Option<watch::Receiver<Option<crate::shipper::CollectorTerms>>>,
    /// The window before the first Welcome: `(max_past, max_future)`;
    /// `None` accepts every timestamp until then.
    pub default: Option<(Duration, Duration)>,
}

impl TimeWindow {
    /// `[lo, hi]` at agent time `now`.
    pub fn at(&self, now: i64) -> Option<(i64, i64)> {
        let announced = self
            .terms
            .as_ref()
            .and_then(|t| t.borrow().as_ref().and_then(|t| t.timestamp_window(now)));
        announced.or_else(|| {
            self.default.map(|(past, future)| {
                ferry_proto::session::timestamp_window(
                    now,
                    past.as_nanos().min(u64::MAX as u128) as u64,
                    future.as_nanos().min(u64::MAX as u128) as u64,
                )
            })
        })
    }
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
        let pacing = Pacing {
            tick,
            health_interval: Duration::from_secs(10),
        };
        let writer = Self {
            machine: GroupCommit::new(journal, metrics.clone(), pacing),
            intake,
            control,
            sealed,
            clock: Arc::new(SystemClock),
            max_group: 4096,
            window: TimeWindow::default(),
            disk: None,
            ledger: None,
            metrics,
        };
        (writer, handle)
    }

    /// Reports readings received per origin to the collector this often
    /// (health kind [`ferry_proto::health::RECEIVED`]).
    pub fn with_health_interval(mut self, interval: Duration) -> Self {
        let pacing = Pacing {
            health_interval: interval,
            ..self.machine.pacing()
        };
        self.machine.set_pacing(pacing);
        self
    }

    /// Refuses readings outside `window` at ingest (health kind
    /// [`ferry_proto::health::REJECTED_TIMESTAMP`]).
    pub fn with_time_window(mut self, window: TimeWindow) -> Self {
        self.window = window;
        self
    }

    /// Watches the free space of the filesystem holding `dir` before data is
    /// written: below `reserve` bytes, sources are paused (their work handed
    /// back); after a failed journal write, `reopen` gives a fresh handle on
    /// the journal once there is room again (`crate::disk`).
    pub fn with_disk_guard(
        mut self,
        dir: std::path::PathBuf,
        reserve: u64,
        reopen: Reopen,
    ) -> Self {
        self.disk = Some(DiskCheck {
            dir,
            guard: DiskGuard::new(reserve),
            reopen,
        });
        self
    }

    /// Keeps the journal's ledger (what it holds: `crate::salvage`) in
    /// the file at `path`, rewritten after every commit that changes it.
    pub fn with_ledger(mut self, path: std::path::PathBuf) -> Self {
        self.ledger = Some((path, None));
        self
    }

    /// Rewrites the ledger file if the journal's ledger changed.
    fn write_ledger(&mut self) {
        let Some((path, last)) = &mut self.ledger else {
            return;
        };
        let now = self.machine.journal().ledger();
        if last.as_ref() == Some(&now) {
            return;
        }
        match crate::salvage::write_ledger(path, &now) {
            Ok(()) => *last = Some(now),
            // Written again after the next commit (a full disk: the
            // journal is refused writes too).
            Err(e) => tracing::debug!(error = %e, "writing the journal's ledger failed"),
        }
    }

    /// Charges window state to `budget` ([`GroupCommit::set_memory_budget`]).
    pub fn with_memory_budget(mut self, budget: Arc<crate::limits::MemoryBudget>) -> Self {
        self.machine.set_memory_budget(budget);
        self
    }

    /// Reads time from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs until `shutdown` turns true and the queues are drained; returns
    /// the journal (so a caller can close it cleanly).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Journal {
        self.write_ledger();
        loop {
            let mut subs: Vec<Submission> = Vec::new();
            let mut controls: Vec<Control> = Vec::new();
            let wake = self
                .machine
                .poll_wake()
                .map(|at| ferry_clock::until(self.clock.now_ns(), at));
            let due = async move {
                match wake {
                    Some(d) => tokio::time::sleep(d).await,
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
        }
        self.machine.into_journal()
    }

    /// Commits one group and answers its submissions.
    fn commit_group(
        &mut self,
        now: i64,
        works: Vec<crate::journal::Work>,
        dones: Vec<oneshot::Sender<crate::intake::Outcome>>,
        acks: Vec<(u64, bool)>,
    ) {
        let report = tokio::task::block_in_place(|| {
            crate::systemd::stall_writer_if_asked();
            self.machine.handle_group(now, works, acks)
        });
        if let Some(error) = &report.failed
            && let Some(d) = &mut self.disk
        {
            let free = free_or_zero(&d.dir);
            let bytes = self.metrics.journal_bytes.get().max(0) as u64;
            if let Some(line) = d.guard.write_failed(now, free, bytes, error.clone()) {
                log_disk(&line);
                self.metrics.guard.disk_full_events.add(1);
            }
            self.metrics.guard.disk_full.set(1);
        }
        self.write_ledger();
        if report.sealed {
            self.sealed.notify_waiters();
            self.sealed.notify_one();
        }
        for (done, outcome) in dones.into_iter().zip(report.outcomes) {
            let _ = done.send(outcome);
        }
    }

    /// The full-disk guard before a group: reopens a journal whose write
    /// failed once there is room, and holds data while the filesystem is
    /// below its reserve. False when the journal is unusable (a failed write,
    /// not yet reopened): nothing may be committed.
    fn check_disk(&mut self, now: i64, works: &[crate::journal::Work]) -> bool {
        let Some(d) = &mut self.disk else {
            return true;
        };
        let data = works
            .iter()
            .any(|w| !w.readings.is_empty() || !w.reports.is_empty());
        if !data && !d.guard.is_full() && !d.guard.is_broken() {
            return true;
        }
        let free = free_or_zero(&d.dir);
        if d.guard.may_reopen(now, free) {
            // The failed handle holds the file's lock: it goes first, an
            // empty in-memory journal standing in until the reopen works.
            let config = self.machine.journal().config().clone();
            let stand_in = redb::Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(|e| e.to_string())
                .and_then(|db| Journal::open(db, config).map_err(|e| e.to_string()));
            match stand_in {
                Ok(stand_in) => drop(self.machine.replace_journal(stand_in)),
                Err(e) => tracing::debug!(error = %e, "no stand-in journal"),
            }
            match (d.reopen)() {
                Ok(journal) => {
                    tracing::info!("journal reopened after a failed write");
                    drop(self.machine.replace_journal(journal));
                    d.guard.reopened();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reopening the journal failed; trying again later")
                }
            }
        }
        if d.guard.is_broken() {
            return false;
        }
        let bytes = self.metrics.journal_bytes.get().max(0) as u64;
        let mut line = None;
        let was_full = d.guard.is_full();
        let admit = d.guard.admit(now, free, bytes, &mut line);
        if !admit {
            d.guard.refused(
                works
                    .iter()
                    .filter(|w| !w.readings.is_empty() || !w.reports.is_empty())
                    .count() as u64,
            );
        }
        if let Some(line) = &line {
            log_disk(line);
        }
        if !was_full && d.guard.is_full() {
            self.metrics.guard.disk_full_events.add(1);
        }
        self.metrics
            .guard
            .disk_full
            .set(i64::from(d.guard.is_full()));
        self.machine.set_disk_hold((!admit).then_some(free));
        self.machine.set_careful(d.guard.careful(free));
        true
    }

    /// One group: releases first, then the commit (acks and sources' work),
    /// then the answers and the queries, which see the committed state.
    fn apply(&mut self, subs: Vec<Submission>, controls: Vec<Control>) {
        let mut acks = Vec::new();
        let mut queries = Vec::new();
        for c in controls {
            match c {
                Control::Acks(a) => acks.extend(a),
                Control::Release(seqs) => self.machine.release(&seqs),
                Control::ReleaseAll => self.machine.release_all(),
                other => queries.push(other),
            }
        }
        let (works, dones): (Vec<_>, Vec<_>) = subs.into_iter().map(|s| (s.work, s.done)).unzip();
        let now = self.clock.now_ns();
        if !works.is_empty() {
            self.machine.set_timestamp_window(self.window.at(now));
        }
        if !self.check_disk(now, &works) {
            // The journal failed a write and cannot be reopened yet: every
            // submission goes back to its source; acks come again (the
            // batches are resent and answered duplicate).
            let free = self.disk.as_ref().map_or(0, |d| free_or_zero(&d.dir));
            if let Some(d) = &mut self.disk {
                d.guard.refused(works.len() as u64);
            }
            for (done, work) in dones.into_iter().zip(works) {
                let _ = done.send(Err(Refused {
                    error: SubmitError::DiskFull { free },
                    work: Some(Box::new(work)),
                }));
            }
        } else {
            self.commit_group(now, works, dones, acks);
        }
        let journal = self.machine.journal();
        for q in queries {
            match q {
                Control::Fetch {
                    max_bytes,
                    newest_first,
                    reply,
                } => match journal.next_to_ship(max_bytes, newest_first) {
                    Ok(batches) => {
                        let _ = reply.send(batches);
                    }
                    Err(e) => {
                        // Rare (the journal fails reads); the shipper polls
                        // again and the empty answer keeps it waiting.
                        tracing::debug!(error = %e, "reading the outbox failed");
                        let _ = reply.send(Vec::new());
                    }
                },
                Control::Stats(reply) => {
                    // A journal whose write failed (waiting to be reopened
                    // on a full disk) cannot be read: the counters last
                    // published stand in, so `status` still answers.
                    let stats = journal.stats().unwrap_or_else(|_| {
                        let m = &self.metrics;
                        let outbox_ns = m.oldest_unacked_ns.get();
                        JournalStats {
                            bytes: m.journal_bytes.get().max(0) as u64,
                            budget_bytes: m.journal_budget.get().max(0) as u64,
                            pending_readings: m.pending_readings.get().max(0) as u64,
                            outbox_batches: m.outbox_batches.get().max(0) as u64,
                            outbox_readings: m.outbox_readings.get().max(0) as u64,
                            oldest_unacked_ns: (outbox_ns != 0).then_some(outbox_ns),
                            ..JournalStats::default()
                        }
                    });
                    let _ = reply.send(stats);
                }
                Control::Inspect(reply) => {
                    if let Ok(rows) = journal.inspect() {
                        let _ = reply.send(rows);
                    }
                }
                Control::Acks(_) | Control::Release(_) | Control::ReleaseAll => {}
            }
        }
    }
}
