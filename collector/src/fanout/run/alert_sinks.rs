//! The alert sinks' tasks: one per `[[sink.webhook]]` and `[[sink.log]]`,
//! each reading the alert log from its durable cursor, delivering (with
//! the webhook's retries), and committing its cursor through the writer
//! thread; restarted when a reload changes the sinks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::*;
use crate::fanout::AlertState;
use crate::fanout::bus::LogKind;
use crate::fanout::rules::{LagBudget, LagPolicy, LogSink, SinkConfig, WebhookSink};
use crate::fanout::webhook::{self, Delivery};
use crate::server::Shared;
use crate::store::{CursorRecord, SinkCommit};
use crate::writer::{Command, WriterError};

#[derive(Debug, Clone)]
enum Sink {
    Webhook(WebhookSink),
    Log(LogSink),
}

impl Sink {
    fn name(&self) -> &str {
        match self {
            Sink::Webhook(w) => &w.raw.name,
            Sink::Log(l) => &l.name,
        }
    }

    fn budget(&self) -> LagBudget {
        match self {
            Sink::Webhook(w) => w.raw.lag_budget,
            Sink::Log(l) => l.lag_budget,
        }
    }
}

/// Commits a sink's cursor through the writer (which trims the log in the
/// same transaction).
pub(crate) async fn commit_sink(
    shared: &Shared,
    c: SinkCommit,
) -> Result<CursorRecord, WriterError> {
    let (tx, rx) = oneshot::channel();
    shared
        .writer
        .send(Command::Sink {
            commit: c,
            reply: tx,
        })
        .await
        .map_err(|_| WriterError::Gone)?;
    rx.await.map_err(|_| WriterError::Gone)?
}

/// The sinks' supervisor: runs one task per configured sink; on a new
/// configuration, stops them (mid-retry if need be: the cursor is durable)
/// and starts the new set.
pub(crate) async fn sinks(
    shared: Arc<Shared>,
    mut cfg_rx: watch::Receiver<Arc<SinkConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let cfg = cfg_rx.borrow_and_update().clone();
        let sinks: Vec<Sink> = cfg
            .webhook
            .iter()
            .cloned()
            .map(Sink::Webhook)
            .chain(cfg.log.iter().cloned().map(Sink::Log))
            .collect();
        let keys: Vec<String> = sinks
            .iter()
            .map(|s| format!("sink/{}", s.name()))
            .chain(
                cfg.storage
                    .iter()
                    .map(crate::fanout::sinks::StorageSink::key),
            )
            .collect();
        for v in shared.bus.views() {
            if v.name.starts_with("sink/") && !keys.contains(&v.name) {
                shared.bus.unsubscribe(&v.name);
            }
        }
        let (gen_tx, gen_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for s in sinks {
            tasks.spawn(sink_task(shared.clone(), s, gen_rx.clone()));
        }
        for s in cfg.storage.iter().cloned() {
            tasks.spawn(crate::fanout::sinks::run(shared.clone(), s, gen_rx.clone()));
        }
        let again = tokio::select! {
            _ = crate::stopped(&mut stop) => false,
            r = cfg_rx.changed() => r.is_ok(),
        };
        let _ = gen_tx.send(true);
        while tasks.join_next().await.is_some() {}
        if !again {
            break;
        }
        tracing::info!("sinks reconfigured");
    }
}

async fn sink_task(shared: Arc<Shared>, sink: Sink, mut stop: watch::Receiver<bool>) {
    let bus = shared.bus.clone();
    let name = sink.name().to_owned();
    let key = format!("sink/{name}");
    let known = shared.store.cursors().map(|c| c.get(&key).copied());
    let record = match known {
        Ok(Some(r)) => r,
        Ok(None) => {
            // A new sink starts at the head: it gets the alerts emitted from
            // now on, not the history.
            let c = SinkCommit {
                name: name.clone(),
                cursor: bus.alert_head(),
                ..SinkCommit::default()
            };
            match commit_sink(&shared, c).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(sink = name, "cannot record the new sink's cursor: {e}");
                    return;
                }
            }
        }
        Err(e) => {
            tracing::error!(sink = name, "reading cursors: {e}");
            return;
        }
    };
    bus.subscribe(&key, LogKind::Alerts, record, sink.budget());
    let mut changes = bus.changes();
    tracing::info!(sink = key, cursor = record.seq, "sink running");
    loop {
        if *stop.borrow() {
            return;
        }
        let record = bus.record(&key).unwrap_or_default();
        let head = bus.alert_head();
        let lag = head.saturating_sub(record.seq);
        let budget = sink.budget();
        if lag > budget.max && budget.policy == LagPolicy::Skip {
            tracing::warn!(
                sink = key,
                from = record.seq + 1,
                to = head,
                "past its lag budget ({}): skipping {lag} alert events",
                budget.max
            );
            let c = SinkCommit {
                name: name.clone(),
                cursor: head,
                skipped: lag,
                ..SinkCommit::default()
            };
            match commit_sink(&shared, c).await {
                Ok(r) => bus.advance(&key, r),
                Err(e) => {
                    tracing::error!(sink = key, "recording the skip: {e}");
                    pause(&mut stop, Duration::from_secs(1)).await;
                }
            }
            continue;
        }
        if lag == 0 {
            tokio::select! {
                _ = crate::stopped(&mut stop) => return,
                r = changes.changed() => if r.is_err() { return },
            }
            continue;
        }
        let store = shared.store.clone();
        let cursor = record.seq;
        let batch = match tokio::task::spawn_blocking(move || store.alerts_after(cursor, SINK_READ))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(sink = key, "reading alerts: {e}");
                pause(&mut stop, Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        if batch.is_empty() {
            // Ids up to the head are always stored; this only happens if
            // the head ran ahead of a failed commit. Wait for news.
            tokio::select! {
                _ = crate::stopped(&mut stop) => return,
                r = changes.changed() => if r.is_err() { return },
            }
            continue;
        }
        for a in batch {
            let outcome = match &sink {
                Sink::Log(_) => {
                    match a.state {
                        AlertState::Firing
                        | AlertState::Anomaly
                        | AlertState::Offline
                        | AlertState::Skipped => {
                            tracing::warn!(target: "ferry_alerts", sink = name, id = a.id, rule = a.rule, state = a.state.as_str(), subject = a.subject, value = a.value, ts_ns = a.ts_ns, "{}", a.message);
                        }
                        AlertState::Resolved | AlertState::Online => {
                            tracing::info!(target: "ferry_alerts", sink = name, id = a.id, rule = a.rule, state = a.state.as_str(), subject = a.subject, value = a.value, ts_ns = a.ts_ns, "{}", a.message);
                        }
                    }
                    Delivery::Delivered { attempts: 1 }
                }
                Sink::Webhook(w) => {
                    let body = serde_json::to_vec(&a).unwrap_or_default();
                    let metrics = shared.metrics.clone();
                    let outcome = webhook::deliver(w, &body, &mut stop, |attempt, why| {
                        metrics.webhook_retry(&name);
                        tracing::warn!(
                            sink = name,
                            id = a.id,
                            attempt,
                            "webhook delivery failed, retrying: {why}"
                        );
                    })
                    .await;
                    if let Delivery::DeadLetter { reason, attempts } = &outcome {
                        tracing::error!(
                            sink = name,
                            id = a.id,
                            attempts,
                            body = %String::from_utf8_lossy(&body),
                            "dead letter: webhook gave up on alert event: {reason}"
                        );
                    }
                    outcome
                }
            };
            let dead = match outcome {
                Delivery::Stopped => return,
                Delivery::Delivered { .. } => {
                    shared.metrics.delivery(&name, "delivered");
                    0
                }
                Delivery::DeadLetter { .. } => {
                    shared.metrics.delivery(&name, "dead_letter");
                    1
                }
            };
            let c = SinkCommit {
                name: name.clone(),
                cursor: a.id,
                handled: 1,
                dead_letters: dead,
                ..SinkCommit::default()
            };
            match commit_sink(&shared, c).await {
                Ok(r) => bus.advance(&key, r),
                Err(e) => {
                    tracing::error!(sink = key, "recording the delivery of alert {}: {e}", a.id);
                    pause(&mut stop, Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}
