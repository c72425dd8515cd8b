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
    Applied, CursorRecord, DedupeLimits, FanoutCommit, MaintenanceReport, MaintenanceWork,
    PreparedBatch, SessionOutcome, SessionRequest, SinkCommit, Store, StoreError, WriterState,
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

/// Why the writer could not do what it was asked. Its message is the one
/// operators and agents have always seen: the store's error as is, or that
/// the collector is stopping.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriterError {
    /// The store failed the commit (for a batch: transient, the agent
    /// resends). Shared: one failed group commit answers every request in
    /// it.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The writer thread is gone: the collector is shutting down.
    #[error("the collector is shutting down")]
    Gone,
}

impl From<StoreError> for WriterError {
    fn from(e: StoreError) -> Self {
        WriterError::Store(Arc::new(e))
    }
}

/// What the writer answers for a batch: what the store did, or why the
/// commit failed (transient for the agent).
pub type BatchReply = Result<Applied, WriterError>;

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
    /// Record a session's Hello (its journal epoch), durably, in the next
    /// group commit.
    Session {
        /// The Hello.
        session: SessionRequest,
        /// What the store recorded.
        reply: oneshot::Sender<Result<SessionOutcome, WriterError>>,
    },
    /// Mark an agent revoked, durably.
    Revoke {
        /// The agent id.
        agent: String,
        /// True if it was not revoked before.
        reply: oneshot::Sender<Result<bool, WriterError>>,
    },
    /// Apply one maintenance pass's prepared work.
    Maintain {
        /// What to apply ([`Store::prepare_maintenance`]).
        work: MaintenanceWork,
        /// The report, if someone waits for it.
        reply: Option<oneshot::Sender<Result<MaintenanceReport, WriterError>>>,
    },
    /// Commit a processors' pass: cursor, rule state and alerts at once.
    Fanout {
        /// What to commit.
        commit: FanoutCommit,
        /// The alerts with their ids and the new cursor.
        reply: oneshot::Sender<Result<(Vec<AlertEvent>, CursorRecord), WriterError>>,
    },
    /// Commit a sink's cursor.
    Sink {
        /// What to commit.
        commit: SinkCommit,
        /// The new cursor.
        reply: oneshot::Sender<Result<CursorRecord, WriterError>>,
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
    /// Bounds of the dedupe state.
    pub dedupe: DedupeLimits,
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
        dedupe,
    } = limits;
    state.set_dedupe_limits(dedupe);
    let mut pending = None;
    loop {
        let Some(first) = pending.take().or_else(|| rx.blocking_recv()) else {
            break;
        };
        crate::systemd::stall_writer_if_asked();
        let Round {
            group,
            other,
            pending: next,
        } = Round::take(first, || rx.try_recv().ok(), max_group);
        pending = next;
        if !group.is_empty() {
            state.set_event_log(bus.log_events());
            commit_group(
                &store,
                &mut state,
                group,
                max_series,
                (&faults, &metrics, &bus),
            );
        }
        match other {
            Some(Command::Revoke { agent, reply }) => {
                let r = store.revoke(&agent).map_err(WriterError::from);
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
                    let _ = reply.send(r.map_err(WriterError::from));
                }
            }
            Some(Command::Fanout { mut commit, reply }) => {
                commit.log_floor = bus.log_floor(crate::fanout::PROCESSORS, commit.cursor);
                commit.processors_idle = !bus.is_subscribed(crate::fanout::PROCESSORS);
                let r = store.commit_fanout(commit).map_err(WriterError::from);
                if let Err(e) = &r {
                    metrics.commit_errors.inc();
                    tracing::error!("processors' commit failed: {e}");
                }
                let _ = reply.send(r);
            }
            Some(Command::Sink { mut commit, reply }) => {
                if commit.reads_log {
                    let key = format!("sink/{}", commit.name);
                    commit.log_floor = bus.log_floor(&key, commit.cursor);
                    commit.processors_idle = !bus.is_subscribed(crate::fanout::PROCESSORS);
                }
                let r = store.commit_sink(&commit).map_err(WriterError::from);
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
            Some(Command::Batch { .. } | Command::Session { .. }) | None => {}
        }
    }
    tracing::debug!("writer stopped");
}

/// What one group commit holds: sessions' Hellos and batches, with where
/// their answers go.
#[derive(Default)]
struct Group {
    sessions: Vec<SessionRequest>,
    session_replies: Vec<oneshot::Sender<Result<SessionOutcome, WriterError>>>,
    batches: Vec<PreparedBatch>,
    replies: Vec<oneshot::Sender<BatchReply>>,
}

impl Group {
    /// Takes a session or a batch into the group; gives any other command
    /// back.
    fn take(&mut self, cmd: Command) -> Option<Command> {
        match cmd {
            Command::Batch { batch, reply } => {
                self.batches.push(batch);
                self.replies.push(reply);
                None
            }
            Command::Session { session, reply } => {
                self.sessions.push(session);
                self.session_replies.push(reply);
                None
            }
            other => Some(other),
        }
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.sessions.is_empty()
    }
}

/// One round of the writer's queue: the group to commit, the command that
/// came first when it is neither a batch nor a session (run after the
/// group, which is then empty), and the command that ended the group (it
/// starts the next round, so commands keep their order).
struct Round {
    group: Group,
    other: Option<Command>,
    pending: Option<Command>,
}

impl Round {
    /// Starts with `first`, then takes what `next` has queued (it does not
    /// wait) while the group holds fewer than `max_group` batches and
    /// sessions.
    fn take(first: Command, mut next: impl FnMut() -> Option<Command>, max_group: usize) -> Self {
        let mut group = Group::default();
        if let Some(other) = group.take(first) {
            return Self {
                group,
                other: Some(other),
                pending: None,
            };
        }
        let mut pending = None;
        while group.batches.len() + group.sessions.len() < max_group {
            let Some(cmd) = next() else { break };
            if let Some(cmd) = group.take(cmd) {
                // Keep the order: the command waits for this group.
                pending = Some(cmd);
                break;
            }
        }
        Self {
            group,
            other: None,
            pending,
        }
    }
}

fn commit_group(
    store: &Store,
    state: &mut WriterState,
    group: Group,
    max_series: u64,
    (faults, metrics, bus): (&Faults, &Metrics, &Bus),
) {
    let Group {
        sessions,
        session_replies,
        batches,
        replies,
    } = group;
    let started = Instant::now();
    let result = store.apply_commit(state, &sessions, &batches, max_series, crate::now_ns());
    let took = started.elapsed();
    metrics.commit_seconds.observe(took.as_secs_f64());
    if took >= SLOW_COMMIT {
        tracing::warn!(
            ms = took.as_millis() as u64,
            batches = batches.len(),
            sessions = sessions.len(),
            "slow durable commit: acks waited this long"
        );
    }
    metrics.commit_batches.observe(batches.len() as f64);
    match result {
        Ok((opened, applied)) => {
            // Subscribers learn of the new log entries before any ack leaves.
            bus.set_event_head(state.event_head());
            metrics.store_chunk_bytes.set(state.chunk_bytes());
            metrics.series.set(state.series_count());
            if faults.crash_after_commit.swap(false, Ordering::SeqCst) {
                tracing::warn!(
                    batches = batches.len(),
                    "fault injection: dropping acks after commit"
                );
                return;
            }
            for (reply, outcome) in session_replies.into_iter().zip(opened) {
                let _ = reply.send(Ok(outcome));
            }
            for (reply, outcome) in replies.into_iter().zip(applied) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            metrics.commit_errors.inc();
            tracing::error!(
                batches = batches.len(),
                sessions = sessions.len(),
                "group commit failed: {e}"
            );
            let e = WriterError::from(e);
            for reply in session_replies {
                let _ = reply.send(Err(e.clone()));
            }
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn session(epoch: u64) -> Command {
        let (reply, _) = oneshot::channel();
        Command::Session {
            session: SessionRequest {
                agent: Arc::from("a"),
                epoch,
                resolved_below: 0,
            },
            reply,
        }
    }

    fn ping() -> Command {
        Command::Ping(oneshot::channel().0)
    }

    fn epochs(g: &Group) -> Vec<u64> {
        g.sessions.iter().map(|s| s.epoch).collect()
    }

    #[test]
    fn a_round_takes_what_is_queued_up_to_the_group_limit() {
        let mut queue = VecDeque::from([session(2), session(3), session(4)]);
        let r = Round::take(session(1), || queue.pop_front(), 3);
        assert_eq!(epochs(&r.group), [1, 2, 3]);
        assert!(r.other.is_none() && r.pending.is_none());
        assert_eq!(queue.len(), 1, "the fourth waits for the next group");
        let r = Round::take(queue.pop_front().unwrap(), || queue.pop_front(), 3);
        assert_eq!(epochs(&r.group), [4], "nothing more queued: no wait");
    }

    #[test]
    fn another_command_ends_the_group_and_runs_after_it_in_order() {
        let mut queue = VecDeque::from([session(2), ping(), session(3)]);
        let r = Round::take(session(1), || queue.pop_front(), 100);
        assert_eq!(epochs(&r.group), [1, 2]);
        assert!(r.other.is_none());
        let pending = r.pending.expect("the ping ends the group");
        assert!(matches!(pending, Command::Ping(_)));
        let r = Round::take(pending, || queue.pop_front(), 100);
        assert!(r.group.is_empty(), "the ping runs alone, after the group");
        assert!(matches!(r.other, Some(Command::Ping(_))));
        assert!(r.pending.is_none());
        assert_eq!(queue.len(), 1, "nothing taken behind it");
        let r = Round::take(queue.pop_front().unwrap(), || queue.pop_front(), 100);
        assert_eq!(epochs(&r.group), [3]);
    }
}
