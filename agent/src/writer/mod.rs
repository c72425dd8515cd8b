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
use crate::intake::Submission;
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
            machine: GroupCommit::new(journal, metrics, pacing),
            intake,
            control,
            sealed,
            clock: Arc::new(SystemClock),
            max_group: 4096,
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
        let report = tokio::task::block_in_place(|| {
            crate::systemd::stall_writer_if_asked();
            self.machine.handle_group(now, works, acks)
        });
        if report.sealed {
            self.sealed.notify_waiters();
            self.sealed.notify_one();
        }
        for (done, outcome) in dones.into_iter().zip(report.outcomes) {
            let _ = done.send(outcome);
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
                    Err(e) => tracing::error!(error = %e, "reading the outbox failed"),
                },
                Control::Stats(reply) => {
                    if let Ok(stats) = journal.stats() {
                        let _ = reply.send(stats);
                    }
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
