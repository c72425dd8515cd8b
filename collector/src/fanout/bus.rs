//! The bus: where each log's head and each subscriber's cursor are known
//! in memory (mirroring the durable cursors), so that lag can be measured,
//! reported and enforced.
//!
//! Lag = head − cursor, in entries of the subscriber's log (stored batches
//! for the processors, alert events for sinks). A `backpressure`
//! subscriber past its budget makes ingest wait ([`Bus::wait_for_room`])
//! before handing batches to the writer; a `skip` subscriber jumps to the
//! head itself (see `run`).
//!
//! **The event log is held for every subscriber of it.** The stored-batch
//! log (`event_log`) is written while it has at least one subscriber on
//! the bus: the processors (only while they have rules) and every storage
//! sink (docs/sinks.md). An entry is deleted only once every subscriber's
//! cursor has passed it ([`Bus::log_floor`]); the writer trims the log to
//! that floor in the transaction of each subscriber's cursor commit. A
//! subscriber that is not on the bus (processors without rules, a sink
//! removed from the configuration) holds nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::rules::{LagBudget, LagPolicy};
use crate::store::CursorRecord;

/// Which log a subscriber reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    /// Stored batches (`event_log`).
    Events,
    /// Alert events (`alerts`).
    Alerts,
}

#[derive(Debug, Clone)]
struct Sub {
    log: LogKind,
    record: CursorRecord,
    budget: LagBudget,
}

#[derive(Debug, Default)]
struct Inner {
    event_head: u64,
    alert_head: u64,
    subs: BTreeMap<String, Sub>,
}

/// One subscriber as `/api/v1/subscribers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberView {
    /// `processors` or `sink/<name>`.
    pub name: String,
    /// The log it reads.
    pub log: LogKind,
    /// Last entry handled.
    pub cursor: u64,
    /// The log's head.
    pub head: u64,
    /// `head - cursor`.
    pub lag: u64,
    /// Its lag budget.
    pub lag_budget: u64,
    /// What happens past the budget.
    pub policy: LagPolicy,
    /// Entries handled (since the store was created).
    pub handled: u64,
    /// Entries skipped.
    pub skipped: u64,
    /// Events dead-lettered.
    pub dead_letters: u64,
    /// Storage sinks: readings (and aggregate samples or rows) delivered.
    #[serde(default)]
    pub delivered: u64,
    /// Storage sinks: readings the server refused for good (counted and
    /// logged, passed over).
    #[serde(default)]
    pub refused: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct Bus {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    closed: AtomicBool,
    waiting: AtomicU64,
}

/// Counts a batch as waiting while alive.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Bus {
    /// A bus whose logs end at these heads.
    pub fn new(event_head: u64, alert_head: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                event_head,
                alert_head,
                subs: BTreeMap::new(),
            }),
            changed: watch::channel(0).0,
            closed: AtomicBool::new(false),
            waiting: AtomicU64::new(0),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let out = f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        out
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Notified on every change of a head or cursor.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether the writer appends stored batches to the event log: while
    /// anything subscribes to it.
    pub fn log_events(&self) -> bool {
        self.read(|i| i.subs.values().any(|s| s.log == LogKind::Events))
    }

    /// The highest event seq every subscriber of the event log has passed:
    /// entries up to it may be deleted. `name`'s cursor counts as `cursor`
    /// (the one it is committing now) whether or not it is on the bus. With
    /// no subscriber at all, the head.
    pub fn log_floor(&self, name: &str, cursor: u64) -> u64 {
        self.read(|i| {
            i.subs
                .iter()
                .filter(|(n, s)| s.log == LogKind::Events && n.as_str() != name)
                .map(|(_, s)| s.record.seq)
                .min()
                .unwrap_or(i.event_head)
                .min(cursor)
        })
    }

    /// Whether `name` is on the bus.
    pub fn is_subscribed(&self, name: &str) -> bool {
        self.read(|i| i.subs.contains_key(name))
    }

    /// Last event-log seq.
    pub fn event_head(&self) -> u64 {
        self.read(|i| i.event_head)
    }

    /// Last alert id.
    pub fn alert_head(&self) -> u64 {
        self.read(|i| i.alert_head)
    }

    pub(crate) fn set_event_head(&self, h: u64) {
        self.with(|i| i.event_head = i.event_head.max(h));
    }

    pub(crate) fn set_alert_head(&self, h: u64) {
        self.with(|i| i.alert_head = i.alert_head.max(h));
    }

    /// Adds or updates a subscriber.
    pub(crate) fn subscribe(
        &self,
        name: &str,
        log: LogKind,
        record: CursorRecord,
        budget: LagBudget,
    ) {
        self.with(|i| {
            i.subs.insert(
                name.to_owned(),
                Sub {
                    log,
                    record,
                    budget,
                },
            );
        });
    }

    pub(crate) fn set_budget(&self, name: &str, budget: LagBudget) {
        self.with(|i| {
            if let Some(s) = i.subs.get_mut(name) {
                s.budget = budget;
            }
        });
    }

    pub(crate) fn unsubscribe(&self, name: &str) {
        self.with(|i| {
            i.subs.remove(name);
        });
    }

    pub(crate) fn advance(&self, name: &str, record: CursorRecord) {
        self.with(|i| {
            if let Some(s) = i.subs.get_mut(name) {
                s.record = record;
            }
        });
    }

    /// A subscriber's durable record, as last committed.
    pub fn record(&self, name: &str) -> Option<CursorRecord> {
        self.read(|i| i.subs.get(name).map(|s| s.record))
    }

    /// A subscriber's budget.
    pub fn budget(&self, name: &str) -> Option<LagBudget> {
        self.read(|i| i.subs.get(name).map(|s| s.budget))
    }

    /// Every subscriber.
    pub fn views(&self) -> Vec<SubscriberView> {
        self.read(|i| {
            i.subs
                .iter()
                .map(|(name, s)| {
                    let head = match s.log {
                        LogKind::Events => i.event_head,
                        LogKind::Alerts => i.alert_head,
                    };
                    SubscriberView {
                        name: name.clone(),
                        log: s.log,
                        cursor: s.record.seq,
                        head,
                        lag: head.saturating_sub(s.record.seq),
                        lag_budget: s.budget.max,
                        policy: s.budget.policy,
                        handled: s.record.handled,
                        skipped: s.record.skipped,
                        dead_letters: s.record.dead_letters,
                        delivered: s.record.delivered,
                        refused: s.record.refused,
                    }
                })
                .collect()
        })
    }

    /// The first `backpressure` subscriber past its budget, if any.
    pub fn over_budget(&self) -> Option<String> {
        self.views()
            .into_iter()
            .find(|v| v.policy == LagPolicy::Backpressure && v.lag > v.lag_budget)
            .map(|v| v.name)
    }

    /// Stops every wait for room (shutdown: let in-flight batches finish).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Batches waiting in [`Bus::wait_for_room`] now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waits while a `backpressure` subscriber is past its budget (or
    /// returns at once after [`Bus::close`]). True if it had to wait.
    pub async fn wait_for_room(&self) -> bool {
        let mut rx = self.changes();
        let mut waited = false;
        let mut _guard: Option<Waiting<'_>> = None;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return waited;
            }
            let Some(who) = self.over_budget() else {
                return waited;
            };
            if !waited {
                tracing::warn!(
                    subscriber = who,
                    "past its lag budget: ingest waits (backpressure)"
                );
                self.waiting.fetch_add(1, Ordering::SeqCst);
                _guard = Some(Waiting(&self.waiting));
            }
            waited = true;
            if rx.changed().await.is_err() {
                return waited;
            }
        }
    }
}

/// Puts the processors on the bus while they have rules (they hold the
/// event log from their durable cursor) and takes them off while they have
/// none (they hold nothing; their cursor follows the log's floor).
pub(crate) fn set_processors_active(
    shared: &crate::server::Shared,
    active: bool,
    budget: LagBudget,
) {
    let bus = &shared.bus;
    let name = super::PROCESSORS;
    if active == bus.is_subscribed(name) {
        return;
    }
    tracing::info!(active, "processors on the event log");
    if !active {
        bus.unsubscribe(name);
        return;
    }
    let record = match shared.store.cursors() {
        Ok(c) => c.get(name).copied().unwrap_or_default(),
        Err(e) => {
            tracing::error!("reading the processors' cursor: {e}; starting at the head");
            CursorRecord {
                seq: bus.event_head(),
                ..CursorRecord::default()
            }
        }
    };
    bus.subscribe(name, LogKind::Events, record, budget);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backpressure_waits_until_the_subscriber_catches_up() {
        let bus = std::sync::Arc::new(Bus::new(0, 0));
        let budget = LagBudget {
            max: 2,
            policy: LagPolicy::Backpressure,
        };
        bus.subscribe(
            "processors",
            LogKind::Events,
            CursorRecord::default(),
            budget,
        );
        bus.subscribe(
            "sink/x",
            LogKind::Alerts,
            CursorRecord::default(),
            LagBudget {
                max: 1,
                policy: LagPolicy::Skip,
            },
        );
        bus.set_event_head(2);
        bus.set_alert_head(10);
        assert!(
            !bus.wait_for_room().await,
            "within budget; skip never waits"
        );
        bus.set_event_head(3);
        assert_eq!(bus.over_budget().as_deref(), Some("processors"));
        let waiter = {
            let bus = bus.clone();
            tokio::spawn(async move { bus.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(bus.waiting(), 1);
        bus.advance(
            "processors",
            CursorRecord {
                seq: 1,
                ..CursorRecord::default()
            },
        );
        assert!(waiter.await.unwrap());
        assert_eq!(bus.waiting(), 0);
        let v = bus.views();
        assert_eq!((v[0].name.as_str(), v[0].lag), ("processors", 2));
        assert_eq!((v[1].name.as_str(), v[1].lag), ("sink/x", 10));
        // The log floor: the slowest events subscriber.
        assert_eq!(bus.log_floor("sink/pg", 3), 1);
        assert_eq!(bus.log_floor("processors", 3), 3, "alone on the log");
        bus.subscribe("sink/pg", LogKind::Events, CursorRecord::default(), budget);
        assert_eq!(bus.log_floor("processors", 3), 0);
        assert!(bus.log_events());
        bus.unsubscribe("sink/pg");
        bus.unsubscribe("processors");
        assert!(!bus.log_events());
        assert_eq!(bus.log_floor("sink/pg", 7), 3, "no subscriber: the head");
        // Closed: never waits.
        bus.set_event_head(100);
        bus.close();
        assert!(!bus.wait_for_room().await);
    }
}
