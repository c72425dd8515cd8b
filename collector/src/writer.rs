//! The writer thread: the only writer of the store while the server runs.
//!
//! Group commit: the thread blocks for one command, then takes every batch
//! already queued (up to `max_batches_per_commit`) into the same write
//! transaction, commits it durably (one fsync), and only then answers each
//! batch's caller, who sends the ack. While one commit syncs, the next group
//! queues up, so the number of batches per commit grows with the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::fanout::{AlertEvent, Bus};
use crate::metrics::Metrics;
use crate::store::{
    Applied, CursorRecord, FanoutCommit, MaintenanceReport, MaintenanceWork, PreparedBatch,
    SinkCommit, Store, WriterState,
};

/// A group commit taking this long is logged (the disk or the page cache
/// stalled): its batches' acks waited that long.
pub const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Fault injection for tests; all off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// When set, the writer commits the next group durably and then drops
    /// every reply of that group, as if the process died between the commit
    /// and the acks. The flag is cleared when it fires.
    pub crash_after_commit: Arc<AtomicBool>,
    /// While set, the processors read nothing (as if very slow), so tests
    /// can build up lag.
    pub hold_processors: Arc<AtomicBool>,
}

/// What the writer answers for a batch: what the store did, or why the
/// commit failed (transient for the agent).
pub type BatchReply = Result<Applied, String>;

/// A request to the writer.
#[derive(Debug)]
pub enum Command {
    /// Store a batch; the reply comes after the durable commit.
    Batch {
        /// The batch.
        batch: PreparedBatch,
        /// Where the outcome goes.
        reply: oneshot::Sender<BatchReply>,
    },
    /// Mark an agent revoked, durably.
    Revoke {
        /// The agent id.
        agent: String,
        /// True if it was not revoked before.
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// Apply one maintenance pass's prepared work.
    Maintain {
        /// What to apply ([`Store::prepare_maintenance`]).
        work: MaintenanceWork,
        /// The report, if someone waits for it.
        reply: Option<oneshot::Sender<Result<MaintenanceReport, String>>>,
    },
    /// Commit a processors' pass: cursor, rule state and alerts at once.
    Fanout {
        /// What to commit.
        commit: FanoutCommit,
        /// The alerts with their ids and the new cursor.
        reply: oneshot::Sender<Result<(Vec<AlertEvent>, CursorRecord), String>>,
    },
    /// Commit a sink's cursor.
    Sink {
        /// What to commit.
        commit: SinkCommit,
        /// The new cursor.
        reply: oneshot::Sender<Result<CursorRecord, String>>,
    },
    /// Answered as soon as the loop reaches it, in queue order (the systemd
    /// watchdog's proof that the writer is not stuck).
    Ping(oneshot::Sender<()>),
    /// Stop after everything queued before this.
    Stop,
}

/// The writer's bounds.
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    /// Most batches per group commit.
    pub max_group: usize,
    /// Most series in the store.
    pub max_series: u64,
}

/// Runs until every sender is dropped. Blocking: call on its own thread.
pub fn run(
    store: Arc<Store>,
    mut state: WriterState,
    mut rx: mpsc::Receiver<Command>,
    limits: WriterLimits,
    faults: Faults,
    metrics: Arc<Metrics>,
    bus: Arc<Bus>,
) {
    let WriterLimits {
        max_group,
        max_series,
    } = limits;
    let mut pending = None;
    loop {
        let Some(first) = pending.take().or_else(|| rx.blocking_recv()) else {
            break;
        };
        crate::systemd::stall_writer_if_asked();
        let mut group = Vec::new();
        let mut replies = Vec::new();
        let mut other = None;
        match first {
            Command::Batch { batch, reply } => {
                group.push(batch);
                replies.push(reply);
                while group.len() < max_group {
                    match rx.try_recv() {
                        Ok(Command::Batch { batch, reply }) => {
                            group.push(batch);
                            replies.push(reply);
                        }
                        // Keep the order: the command waits for this group.
                        Ok(cmd) => {
                            pending = Some(cmd);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            cmd => other = Some(cmd),
        }
        if !group.is_empty() {
            state.set_event_log(bus.log_events());
            commit_group(
                &store,
                &mut state,
                &group,
                replies,
                max_series,
                (&faults, &metrics, &bus),
            );
        }
        match other {
            Some(Command::Revoke { agent, reply }) => {
                let r = store.revoke(&agent).map_err(|e| e.to_string());
                if let Err(e) = &r {
                    tracing::error!(agent, "revocation failed: {e}");
                }
                let _ = reply.send(r);
            }
            Some(Command::Maintain { work, reply }) => {
                let started = Instant::now();
                let r = store.apply_maintenance(&mut state, work);
                match &r {
                    Ok(report) => {
                        let m = &metrics.maintenance_chunks;
                        m.get_or_create(&[("action", "compacted")])
                            .inc_by(report.compacted_chunks);
                        m.get_or_create(&[("action", "downsampled")])
                            .inc_by(report.downsampled_chunks);
                        m.get_or_create(&[("action", "evicted")])
                            .inc_by(report.chunks_evicted);
                        m.get_or_create(&[("action", "aggregates_expired")])
                            .inc_by(report.aggregates_deleted);
                        tracing::debug!(?report, apply = ?started.elapsed(), "maintenance");
                    }
                    Err(e) => tracing::error!("maintenance failed: {e}"),
                }
                metrics.store_chunk_bytes.set(state.chunk_bytes());
                if let Some(reply) = reply {
                    let _ = reply.send(r.map_err(|e| e.to_string()));
                }
            }
            Some(Command::Fanout { commit, reply }) => {
                let r = store.commit_fanout(commit).map_err(|e| e.to_string());
                if let Err(e) = &r {
                    metrics.commit_errors.inc();
                    tracing::error!("processors' commit failed: {e}");
                }
                let _ = reply.send(r);
            }
            Some(Command::Sink { commit, reply }) => {
                let r = store.commit_sink(&commit).map_err(|e| e.to_string());
                if let Err(e) = &r {
                    metrics.commit_errors.inc();
                    tracing::error!(sink = commit.name, "sink cursor commit failed: {e}");
                }
                let _ = reply.send(r);
            }
            Some(Command::Ping(reply)) => {
                let _ = reply.send(());
            }
            Some(Command::Stop) => break,
            Some(Command::Batch { .. }) | None => {}
        }
    }
    tracing::debug!("writer stopped");
}

fn commit_group(
    store: &Store,
    state: &mut WriterState,
    group: &[PreparedBatch],
    replies: Vec<oneshot::Sender<BatchReply>>,
    max_series: u64,
    (faults, metrics, bus): (&Faults, &Metrics, &Bus),
) {
    let started = Instant::now();
    let result = store.apply_group(state, group, max_series, crate::now_ns());
    let took = started.elapsed();
    metrics.commit_seconds.observe(took.as_secs_f64());
    if took >= SLOW_COMMIT {
        tracing::warn!(
            ms = took.as_millis() as u64,
            batches = group.len(),
            "slow durable commit: acks waited this long"
        );
    }
    metrics.commit_batches.observe(group.len() as f64);
    match result {
        Ok(applied) => {
            // Subscribers learn of the new log entries before any ack leaves.
            bus.set_event_head(state.event_head());
            metrics.store_chunk_bytes.set(state.chunk_bytes());
            metrics.series.set(state.series_count());
            if faults.crash_after_commit.swap(false, Ordering::SeqCst) {
                tracing::warn!(
                    batches = group.len(),
                    "fault injection: dropping acks after commit"
                );
                return;
            }
            for (reply, outcome) in replies.into_iter().zip(applied) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            metrics.commit_errors.inc();
            tracing::error!(batches = group.len(), "group commit failed: {e}");
            for reply in replies {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }
}
