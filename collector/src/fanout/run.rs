//! The I/O around the processors and sinks: tokio tasks that read the logs
//! from their cursors, run the sans-IO rules, deliver, and commit through
//! the writer thread (the only writer of the store).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::bus::LogKind;
use super::pipeline::{Processors, SeriesName};
use super::rules::{LagBudget, LagPolicy, LogSink, ProcessorConfig, SinkConfig, WebhookSink};
use super::webhook::{self, Delivery};
use super::{AlertEvent, AlertState, PROCESSORS};
use crate::server::Shared;
use crate::store::{CursorRecord, FanoutCommit, SinkCommit};
use crate::writer::Command;

/// Log entries handled per processors' commit at most.
const PASS_ENTRIES: usize = 256;
/// Alerts read per sink step at most.
const SINK_READ: usize = 64;

/// The senders that reconfigure the running processors and sinks.
#[derive(Debug)]
pub(crate) struct Control {
    pub processors: watch::Sender<Arc<ProcessorConfig>>,
    pub sinks: watch::Sender<Arc<SinkConfig>>,
}

impl Control {
    pub fn new(p: &ProcessorConfig, s: &SinkConfig) -> Self {
        Self {
            processors: watch::channel(Arc::new(p.clone())).0,
            sinks: watch::channel(Arc::new(s.clone())).0,
        }
    }
}

async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = crate::stopped(stop) => {}
    }
}

/// Processors and the series names they looked up, taken into and out of
/// the blocking pass.
struct Work {
    procs: Processors,
    names: HashMap<u64, SeriesName>,
}

/// Rebuilds the processors from their durable state (at start, and after a
/// failed commit, when the in-memory state ran ahead of the store).
fn restored(shared: &Shared, cfg: &ProcessorConfig, removed: &mut Vec<String>) -> Processors {
    let mut procs = Processors::new(cfg);
    match shared.store.rule_states() {
        Ok(states) => {
            for (id, saved) in states {
                match procs.restore(&id, &saved) {
                    Ok(true) => {}
                    Ok(false) => removed.push(id),
                    Err(e) => {
                        tracing::error!(
                            rule = id,
                            "saved rule state unreadable, starting afresh: {e}"
                        );
                    }
                }
            }
        }
        Err(e) => tracing::error!("reading rule state: {e}; rules start afresh"),
    }
    procs
}

fn skipped_event(from: u64, to: u64, now: i64) -> AlertEvent {
    AlertEvent {
        id: 0,
        rule: PROCESSORS.into(),
        state: AlertState::Skipped,
        subject: format!("event log {from}..={to}"),
        value: (to + 1 - from) as f64,
        ts_ns: now,
        since_ns: now,
        emitted_ns: now,
        message: format!(
            "processors skipped {} stored batches (entries {from}..={to}) past their lag budget; alerts for them may be missing",
            to + 1 - from
        ),
    }
}

/// What a subscriber does with its log at a given cursor and head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Nothing new.
    Idle,
    /// Past its lag budget under `skip`: jump over `from..=to`.
    Skip {
        /// First entry skipped.
        from: u64,
        /// Last entry skipped (the head).
        to: u64,
    },
    /// Handle the entries after the cursor.
    Handle,
}

/// The lag-budget rule (docs/alerts.md): a subscriber more than
/// `budget.max` entries behind under `skip` jumps to the head.
fn plan(cursor: u64, head: u64, budget: LagBudget) -> Pass {
    let lag = head.saturating_sub(cursor);
    if lag > budget.max && budget.policy == LagPolicy::Skip {
        Pass::Skip {
            from: cursor + 1,
            to: head,
        }
    } else if lag > 0 {
        Pass::Handle
    } else {
        Pass::Idle
    }
}

/// Where the cursor goes after a pass that read up to `last`: entries below
/// the head that are gone (never logged) are passed over.
fn cursor_after(head: u64, last: u64, read: u64) -> u64 {
    if read == 0 { head } else { last }
}

/// Whether a processors' pass has anything to commit.
fn worth_committing(c: &FanoutCommit, cursor_before: u64) -> bool {
    c.cursor != cursor_before
        || !c.alerts.is_empty()
        || !c.states.is_empty()
        || !c.removed.is_empty()
}

/// The processors' pass over log entries after `cursor`: the series names
/// they need are looked up once, each entry handled at `now`.
fn handle_entries(
    store: &crate::store::Store,
    w: &mut Work,
    cursor: u64,
    now: i64,
) -> Result<(u64, u64, u64, Vec<AlertEvent>), crate::StoreError> {
    let entries = store.log_after(cursor, PASS_ENTRIES)?;
    let mut missing: Vec<u64> = entries
        .iter()
        .flat_map(|(_, e)| {
            e.chunks
                .iter()
                .map(|c| c.0)
                .chain(e.aggregate_series.iter().copied())
        })
        .filter(|id| !w.names.contains_key(id))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    w.names.extend(store.series_names(&missing)?);
    let (mut last, mut handled, mut bad) = (cursor, 0, 0);
    let mut alerts = Vec::new();
    for (seq, e) in &entries {
        match w.procs.handle(e, &w.names, now) {
            Ok(a) => {
                alerts.extend(a);
                handled += 1;
            }
            Err(err) => {
                tracing::error!(seq, "event log entry unreadable, skipped: {err}");
                bad += 1;
            }
        }
        last = *seq;
    }
    Ok((last, handled, bad, alerts))
}

/// The processors' task: until `stop`, handle the event log from the
/// durable cursor and commit state, cursor and alerts together.
pub(crate) async fn processors(
    shared: Arc<Shared>,
    mut cfg_rx: watch::Receiver<Arc<ProcessorConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let bus = shared.bus.clone();
    let mut cfg = cfg_rx.borrow_and_update().clone();
    let mut removed = Vec::new();
    let mut procs = restored(&shared, &cfg, &mut removed);
    procs.restart_timers(crate::now_ns());
    // `Collector::bind` subscribed the processors and enabled the log.
    let every = |p: &Processors| p.check_every().unwrap_or(Duration::from_secs(3600));
    let mut check = tokio::time::interval(every(&procs));
    let mut work = Some(Work {
        procs,
        names: HashMap::new(),
    });
    let mut changes = bus.changes();
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = false;
    tracing::info!(rules = ?work.as_ref().map(|w| w.procs.rule_ids()), "processors running");
    loop {
        if *stop.borrow() {
            break;
        }
        if shared.config.faults.hold_processors.load(Ordering::SeqCst) {
            // Fault injection only: look again every 10 ms for the release.
            tokio::select! {
                _ = crate::stopped(&mut stop) => break,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            continue;
        }
        let Some(mut w) = work.take() else { break };
        let record = bus.record(PROCESSORS).unwrap_or_default();
        let budget = bus.budget(PROCESSORS).unwrap_or_default();
        // Without rules the processors are off the event log (bus.rs): no lag.
        let head = if w.procs.is_empty() {
            record.seq
        } else {
            bus.event_head()
        };
        let now = crate::now_ns();
        let mut commit = FanoutCommit {
            cursor: record.seq,
            max_alerts: cfg.max_alerts,
            ..FanoutCommit::default()
        };
        match plan(record.seq, head, budget) {
            Pass::Idle => {}
            Pass::Skip { from, to } => {
                let lag = to + 1 - from;
                tracing::warn!(
                    from,
                    to,
                    "processors past their lag budget ({}): skipping {lag} stored batches",
                    budget.max
                );
                commit.cursor = head;
                commit.skipped = lag;
                commit.alerts.push(skipped_event(from, to, now));
            }
            Pass::Handle => {
                let store = shared.store.clone();
                let cursor = record.seq;
                let joined = tokio::task::spawn_blocking(move || {
                    let r = handle_entries(&store, &mut w, cursor, now);
                    (w, r)
                })
                .await;
                let Ok((back, r)) = joined else {
                    tracing::error!("the processors' pass panicked; processors stop");
                    break;
                };
                w = back;
                match r {
                    Ok((last, handled, bad, alerts)) => {
                        commit.cursor = cursor_after(head, last, handled + bad);
                        commit.handled = handled;
                        commit.skipped = bad;
                        commit.alerts = alerts;
                    }
                    Err(e) => {
                        tracing::error!("reading the event log: {e}");
                        work = Some(w);
                        pause(&mut stop, Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
        }
        if due {
            due = false;
            commit.alerts.extend(w.procs.check(now));
        }
        commit.states = w.procs.take_dirty();
        commit.removed = std::mem::take(&mut removed);
        let progressed = commit.cursor != record.seq;
        if worth_committing(&commit, record.seq) {
            let (tx, rx) = oneshot::channel();
            let n_alerts = commit.alerts.len();
            if shared
                .writer
                .send(Command::Fanout { commit, reply: tx })
                .await
                .is_err()
            {
                break;
            }
            match rx.await {
                Ok(Ok((alerts, rec))) => {
                    bus.advance(PROCESSORS, rec);
                    if let Some(last) = alerts.last() {
                        bus.set_alert_head(last.id);
                    }
                    for a in &alerts {
                        shared.metrics.alert(&a.rule, a.state.as_str());
                        tracing::info!(
                            id = a.id,
                            rule = a.rule,
                            state = a.state.as_str(),
                            subject = a.subject,
                            "{}",
                            a.message
                        );
                    }
                    debug_assert_eq!(alerts.len(), n_alerts);
                    work = Some(w);
                }
                _ if *stop.borrow() => break,
                Ok(Err(e)) => {
                    tracing::error!(
                        "processors' commit failed, retrying from the stored state: {e}"
                    );
                    let procs = restored(&shared, &cfg, &mut removed);
                    work = Some(Work {
                        procs,
                        names: w.names,
                    });
                    pause(&mut stop, Duration::from_secs(1)).await;
                }
                Err(_) => break,
            }
            if progressed {
                continue;
            }
        } else {
            work = Some(w);
        }
        // Nothing (more) to do now: wait for news.
        tokio::select! {
            _ = crate::stopped(&mut stop) => break,
            r = changes.changed() => if r.is_err() { break },
            _ = check.tick() => due = true,
            r = cfg_rx.changed() => {
                if r.is_err() { break }
                cfg = cfg_rx.borrow_and_update().clone();
                if let Some(w) = &mut work {
                    removed.extend(w.procs.reconfigure(&cfg));
                    super::bus::set_processors_active(&shared, !w.procs.is_empty(), cfg.lag_budget);
                    check = tokio::time::interval(every(&w.procs));
                    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tracing::info!(rules = ?w.procs.rule_ids(), removed = ?removed, "processors reconfigured");
                }
                bus.set_budget(PROCESSORS, cfg.lag_budget);
            }
        }
    }
    tracing::debug!("processors stopped");
}

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

async fn commit_sink(shared: &Shared, c: SinkCommit) -> Result<CursorRecord, String> {
    let (tx, rx) = oneshot::channel();
    shared
        .writer
        .send(Command::Sink {
            commit: c,
            reply: tx,
        })
        .await
        .map_err(|_| "the collector is shutting down".to_owned())?;
    rx.await
        .map_err(|_| "the collector is shutting down".to_owned())?
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
            .chain(cfg.storage.iter().map(super::sinks::StorageSink::key))
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
            tasks.spawn(super::sinks::run(shared.clone(), s, gen_rx.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_past_its_budget_skips_only_under_skip() {
        let skip = LagBudget {
            max: 10,
            policy: LagPolicy::Skip,
        };
        let wait = LagBudget {
            max: 10,
            policy: LagPolicy::Backpressure,
        };
        assert_eq!(plan(5, 5, skip), Pass::Idle);
        assert_eq!(plan(5, 15, skip), Pass::Handle, "at the budget: handled");
        assert_eq!(plan(5, 16, skip), Pass::Skip { from: 6, to: 16 });
        assert_eq!(
            plan(5, 1000, wait),
            Pass::Handle,
            "backpressure never skips"
        );
        assert_eq!(plan(9, 3, skip), Pass::Idle, "a head behind the cursor");
    }

    #[test]
    fn a_pass_that_read_nothing_moves_to_the_head() {
        assert_eq!(cursor_after(20, 7, 0), 20, "entries gone: passed over");
        assert_eq!(cursor_after(20, 12, 5), 12);
        let mut c = FanoutCommit {
            cursor: 3,
            ..FanoutCommit::default()
        };
        assert!(!worth_committing(&c, 3));
        c.removed.push("old-rule".into());
        assert!(worth_committing(&c, 3));
        c.removed.clear();
        c.cursor = 4;
        assert!(worth_committing(&c, 3));
    }
}
