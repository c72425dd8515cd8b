//! A worker's consume loop: records come from its durable consumer in log
//! order, go to the store's writer in that order (so group commits form as
//! in single-process mode), and each is acked once the writer has answered
//! after its durable commit.
//!
//! **Promises.** A worker never applies the agent's `resolved_below`
//! promise (in a Hello or a batch): it is about what the *front end* acked,
//! which the log holds but this worker may not have committed yet — a
//! record taken before a crash, or asked for again after a failed commit,
//! comes again *after* later records. Resolving everything below the
//! promise then would turn that redelivery into a "duplicate" and lose it.
//! The dedupe ranges still merge as batches are stored; a batch a front end
//! refused for good leaves a gap range on the workers, bounded by
//! `limits.max_dedupe_ranges` (docs/cluster.md).

use std::sync::Arc;
use std::time::Duration;

use ferry_clock::{Clock, LogLimit, SystemClock};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::log::{Delivery, Log, LogStatus};
use super::settle::{self, RETRY_DELAY, Reply, Settle};
use super::{Record, RecordBody};
use crate::ingest;
use crate::server::Shared;
use crate::store::{Applied, PreparedBatch, SessionOutcome, SessionRequest};
use crate::writer::Command;

/// At most one warning about the log per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Warnings about the log, at most one per [`WARN_EVERY`] (with the count
/// of those left out), as `ferry_clock::LogLimit` decides.
struct Warn {
    limit: LogLimit,
    clock: SystemClock,
}

impl Warn {
    fn new() -> Self {
        Self {
            limit: LogLimit::new(WARN_EVERY),
            clock: SystemClock,
        }
    }

    fn warn(&mut self, message: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.limit.event(self.clock.now_ns()) {
            tracing::warn!(suppressed, "cluster: {message}");
        }
    }
}

fn count(shared: &Shared, kind: &'static str, outcome: &'static str) {
    shared
        .metrics
        .cluster_records
        .get_or_create(&vec![
            ("role", "worker".to_owned()),
            ("kind", kind.to_owned()),
            ("outcome", outcome.to_owned()),
        ])
        .inc();
}

/// Consumes `name` until `stop`, reopening the consumer after errors.
pub(crate) async fn run(
    shared: Arc<Shared>,
    log: Arc<dyn Log>,
    name: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut warn = Warn::new();
    let limit = shared.config.storage.max_batches_per_commit.max(1) * 2;
    let mut inflight: JoinSet<()> = JoinSet::new();
    'open: loop {
        let consumer = tokio::select! {
            _ = crate::stopped(&mut stop) => break 'open,
            c = log.consumer(&name) => c,
        };
        let mut consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                warn.warn(&e);
                tokio::select! {
                    _ = crate::stopped(&mut stop) => break 'open,
                    _ = tokio::time::sleep(RETRY_DELAY) => continue 'open,
                }
            }
        };
        tracing::info!(consumer = %name, "cluster worker consuming");
        loop {
            tokio::select! {
                _ = crate::stopped(&mut stop) => break 'open,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                d = consumer.next(), if inflight.len() < limit => match d {
                    Ok(d) => {
                        let d: Arc<dyn Delivery> = Arc::from(d);
                        if let Some(job) = submit(&shared, d).await {
                            inflight.spawn(job);
                        }
                    }
                    Err(e) => {
                        warn.warn(&e);
                        // The stream of deliveries is reopened by the
                        // next call; a lost consumer by the outer loop.
                        tokio::select! {
                            _ = crate::stopped(&mut stop) => break 'open,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                        if !log.connected() {
                            continue 'open;
                        }
                    }
                }
            }
        }
    }
    // Records handed to the writer are committed and acked (or come again).
    while inflight.join_next().await.is_some() {}
}

/// A record's batch as this worker stores it: validated against the front
/// end's clock (the same readings pass as there), the agent's promise not
/// applied (module docs, "Promises") and a refusal for good counted in the
/// store rather than lost (`PreparedBatch::count_refusal`: the front end
/// acked the batch, nobody can resend it).
pub fn prepare(
    agent: &Arc<str>,
    record: &Record,
    batch: &ferry_proto::batch::Batch,
    limits: &crate::config::Limits,
) -> Result<PreparedBatch, ingest::Rejection> {
    let mut prepared = ingest::prepare(agent, &record.remote, batch, limits, record.now_ns)?;
    prepared.resolved_below = 0;
    prepared.count_refusal = true;
    Ok(prepared)
}

/// Hands one record to the writer; the returned future waits for its
/// commit and acks it. `None`: the record was settled here (acked), or the
/// writer is gone (the collector stops; the log delivers the record again
/// after its ack wait). What to ack and count is [`settle`]'s.
async fn submit(
    shared: &Arc<Shared>,
    d: Arc<dyn Delivery>,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let record = match Record::decode(d.payload()) {
        Ok(r) => r,
        Err(e) => {
            // Nothing any worker could do with it: counted, acked.
            let s = settle::undecodable();
            finish(
                shared,
                "unknown",
                &s,
                &format_args!("cluster record undecodable: {e}"),
            );
            reply(&*d, s.reply).await;
            return None;
        }
    };
    let agent: Arc<str> = Arc::from(record.agent.as_str());
    let kind = record.kind();
    enum Waiting {
        Session(oneshot::Receiver<Result<SessionOutcome, crate::writer::WriterError>>),
        Batch(oneshot::Receiver<crate::writer::BatchReply>, u64, u64, u64),
    }
    let waiting = match &record.body {
        RecordBody::Session { epoch, .. } => {
            let (tx, rx) = oneshot::channel();
            let cmd = Command::Session {
                session: SessionRequest {
                    agent: agent.clone(),
                    epoch: *epoch,
                    // Not applied here (module docs, "Promises").
                    resolved_below: 0,
                },
                reply: tx,
            };
            if shared.writer.send(cmd).await.is_err() {
                return None;
            }
            Waiting::Session(rx)
        }
        RecordBody::Batch(batch) => {
            let prepared = match prepare(&agent, &record, batch, &shared.config.limits) {
                Ok(p) => p,
                Err(r) => {
                    // The front end acked it stored: a worker whose limits
                    // differ refuses it, counted here.
                    let s = settle::refused_here(&r);
                    finish(
                        shared,
                        kind,
                        &s,
                        &format_args!(
                            "cluster record {}: refused by this worker's limits: {}",
                            record.id(),
                            r.reason
                        ),
                    );
                    reply(&*d, s.reply).await;
                    return None;
                }
            };
            if shared.bus.wait_for_room().await {
                shared.metrics.backpressure_waits.inc();
            }
            let (seq, epoch, readings) = (batch.seq, batch.epoch, batch.reading_count() as u64);
            let (tx, rx) = oneshot::channel();
            let cmd = Command::Batch {
                batch: prepared,
                reply: tx,
            };
            if shared.writer.send(cmd).await.is_err() {
                return None;
            }
            Waiting::Batch(rx, seq, epoch, readings)
        }
    };
    let shared = shared.clone();
    Some(async move {
        match waiting {
            Waiting::Session(rx) => {
                let Ok(answer) = rx.await else { return };
                let s = settle::session(&answer);
                match &answer {
                    Ok(SessionOutcome::TooManyEpochs(n)) => finish(
                        &shared,
                        kind,
                        &s,
                        &format_args!(
                            "agent {agent}: {n} journal epochs, the limit (limits.max_epochs_per_agent)"
                        ),
                    ),
                    Err(e) => {
                        tracing::warn!(agent = &*agent, "cluster: recording a session: {e}");
                        finish(&shared, kind, &s, &"");
                    }
                    Ok(_) => finish(&shared, kind, &s, &""),
                }
                reply(&*d, s.reply).await;
            }
            Waiting::Batch(rx, seq, epoch, readings) => {
                let Ok(answer) = rx.await else { return };
                let s = settle::batch(&answer, readings);
                match &answer {
                    Ok(Applied::Stored { refused, .. }) => {
                        shared.metrics.refused(refused);
                        finish(&shared, kind, &s, &"");
                    }
                    Ok(Applied::Rejected { reason, .. }) => finish(
                        &shared,
                        kind,
                        &s,
                        &format_args!(
                            "agent {agent} epoch {epoch:016x} batch {seq}: refused by the store: {reason}"
                        ),
                    ),
                    Err(e) => {
                        tracing::warn!(
                            agent = &*agent,
                            seq,
                            "cluster: commit failed, the record comes again: {e}"
                        );
                        finish(&shared, kind, &s, &"");
                    }
                    Ok(Applied::Duplicate) => finish(&shared, kind, &s, &""),
                }
                reply(&*d, s.reply).await;
            }
        }
    })
}

/// Counts what `s` names (a bad input logged with `why`).
fn finish(shared: &Shared, kind: &'static str, s: &Settle, why: &dyn std::fmt::Display) {
    if let Some((outcome, code, readings)) = s.batch {
        shared.metrics.batch(outcome, code, readings);
    }
    if s.journal_reset {
        shared.metrics.journal_resets.inc();
    }
    if let Some(bad) = s.bad {
        shared.metrics.bad(bad, why);
    }
    count(shared, kind, s.outcome);
}

/// Answers the log.
async fn reply(d: &dyn Delivery, r: Reply) {
    match r {
        // An ack lost here only means a redelivery, which the dedupe entry
        // answers.
        Reply::Ack => {
            if let Err(e) = d.ack().await {
                tracing::debug!("cluster: {e}");
            }
        }
        Reply::RetryAfter(delay) => {
            let _ = d.retry_later(delay).await;
        }
    }
}

/// Refreshes the cluster gauges on `/metrics` every `every` until `stop`.
pub(crate) async fn watch_status(
    shared: Arc<Shared>,
    log: Arc<dyn Log>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        shared
            .metrics
            .cluster_connected
            .set(u64::from(log.connected()));
        let status = tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            s = log.status() => s,
        };
        if let Ok(s) = status {
            set_gauges(&shared.metrics, &s);
        }
    }
}

fn set_gauges(metrics: &crate::metrics::Metrics, s: &LogStatus) {
    for c in &s.consumers {
        for (state, v) in [("pending", c.pending), ("ack_pending", c.ack_pending)] {
            metrics
                .cluster_consumer_records
                .get_or_create(&vec![
                    ("stream", s.stream.clone()),
                    ("consumer", c.name.clone()),
                    ("state", state.to_owned()),
                ])
                .set(v);
        }
    }
}
