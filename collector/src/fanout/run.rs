//! The I/O around the processors and sinks: tokio tasks that read the logs
//! from their cursors, run the sans-IO rules, deliver, and commit through
//! the writer thread (the only writer of the store).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::pipeline::{Processors, SeriesName};
use super::rules::{LagBudget, LagPolicy, ProcessorConfig, SinkConfig};
use super::{AlertEvent, AlertState, PROCESSORS};
use crate::server::Shared;
use crate::store::FanoutCommit;
use crate::writer::Command;

mod alert_sinks;

pub(crate) use alert_sinks::{commit_sink, sinks};

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

#[cfg(test)]
mod tests;
