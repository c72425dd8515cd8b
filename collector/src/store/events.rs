//! The fan-out tables: the event log, alerts, subscriber cursors and rule
//! state (docs/alerts.md). Written only by the writer thread.

use std::collections::{BTreeMap, HashMap, HashSet};

use ferry_proto::codec;
use ferry_proto::series::SeriesKey;
use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::{META, SERIES, Store, StoreError, corrupt};
use crate::fanout::pipeline::{SeriesName, StoredRuleState};
use crate::fanout::{AlertEvent, AlertState, LogEntry, PROCESSORS};
use crate::query::Selector;

/// `event seq -> LogEntry`: stored batches not yet processed.
pub(crate) const EVENT_LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("event_log");
/// `alert id -> AlertEvent`.
pub(crate) const ALERTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("alerts");
/// `subscriber -> CursorRecord`.
pub(crate) const CURSORS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("cursors");
/// `rule id -> StoredRuleState`.
pub(crate) const RULE_STATE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("rule_state");

/// A subscriber's durable position and tallies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CursorRecord {
    /// Last entry handled (event seq for processors, alert id for sinks).
    pub seq: u64,
    /// Entries handled.
    pub handled: u64,
    /// Entries skipped under the `skip` lag policy.
    pub skipped: u64,
    /// Events given up on after every retry (webhooks).
    pub dead_letters: u64,
    /// Storage sinks: readings and aggregate rows delivered.
    pub delivered: u64,
    /// Storage sinks: readings the server refused for good.
    pub refused: u64,
    /// The subscriber reads the event log (a storage sink), not alerts.
    pub reads_log: bool,
}

/// What the processors commit at once.
#[derive(Debug, Clone, Default)]
pub struct FanoutCommit {
    /// New cursor: every log entry up to it is handled (and deleted).
    pub cursor: u64,
    /// Entries handled in this pass.
    pub handled: u64,
    /// Entries skipped in this pass.
    pub skipped: u64,
    /// New state of changed rules.
    pub states: Vec<(String, StoredRuleState)>,
    /// State of rules that are gone.
    pub removed: Vec<String>,
    /// Events emitted (ids assigned at commit).
    pub alerts: Vec<AlertEvent>,
    /// Most alerts kept; the oldest beyond are deleted (0: no limit).
    pub max_alerts: u64,
    /// Log entries up to this are deleted (every subscriber of the log
    /// has passed them: [`crate::fanout::Bus::log_floor`]); set by the
    /// writer.
    pub log_floor: u64,
    /// The processors are not on the bus (no rules): their cursor follows
    /// the floor instead of holding the log; set by the writer.
    pub processors_idle: bool,
}

/// What a sink commits after a delivery.
#[derive(Debug, Clone, Default)]
pub struct SinkCommit {
    /// The sink's name.
    pub name: String,
    /// New cursor.
    pub cursor: u64,
    /// Delivered (or dead-lettered) in this step.
    pub handled: u64,
    /// Dead-lettered in this step.
    pub dead_letters: u64,
    /// Skipped in this step.
    pub skipped: u64,
    /// Storage sinks: readings and aggregate rows delivered in this step.
    pub delivered: u64,
    /// Storage sinks: readings refused in this step.
    pub refused: u64,
    /// The sink reads the event log (a storage sink): the log is trimmed
    /// to `log_floor` in the same transaction.
    pub reads_log: bool,
    /// Set by the writer for sinks that read the log.
    pub log_floor: u64,
    /// Set by the writer: the processors are not on the bus.
    pub processors_idle: bool,
}

/// Filters for [`Store::alerts`].
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only this state.
    pub state: Option<AlertState>,
    /// Only alerts about series matching this (device/agent subjects match
    /// only the empty selector).
    pub selector: Option<Selector>,
    /// Only this rule (`kind/name`, or just `name`).
    pub rule: Option<String>,
    /// Event time at or after, ns.
    pub from_ns: i64,
    /// Event time before, ns.
    pub to_ns: i64,
    /// Most events returned (the newest).
    pub limit: usize,
}

fn cursor_in(txn: &WriteTransaction, name: &str) -> Result<CursorRecord, StoreError> {
    let t = txn.open_table(CURSORS)?;
    let v = t.get(name)?;
    match v {
        Some(v) => codec::from_bytes("CursorRecord", v.value()).map_err(corrupt),
        None => Ok(CursorRecord::default()),
    }
}

fn save_cursor(txn: &WriteTransaction, name: &str, c: &CursorRecord) -> Result<(), StoreError> {
    let bytes = codec::to_vec(c).map_err(corrupt)?;
    txn.open_table(CURSORS)?.insert(name, bytes.as_slice())?;
    Ok(())
}

/// Deletes the log entries up to `floor` (every subscriber has passed
/// them). With `processors_idle`, the processors (no rules, not on the
/// bus) have their cursor raised to the floor: when rules come back they
/// start from what the log still holds, not from a range long deleted.
fn trim_log(txn: &WriteTransaction, floor: u64, processors_idle: bool) -> Result<(), StoreError> {
    {
        let mut log = txn.open_table(EVENT_LOG)?;
        let done: Vec<u64> = log
            .range(..=floor)?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for k in done {
            log.remove(k)?;
        }
    }
    if processors_idle {
        let mut cur = cursor_in(txn, PROCESSORS)?;
        if cur.seq < floor {
            cur.seq = floor;
            save_cursor(txn, PROCESSORS, &cur)?;
        }
    }
    Ok(())
}

pub(crate) fn append_log(
    txn: &WriteTransaction,
    seq: u64,
    entry: &LogEntry,
) -> Result<(), StoreError> {
    let bytes = codec::to_vec(entry).map_err(corrupt)?;
    txn.open_table(EVENT_LOG)?.insert(seq, bytes.as_slice())?;
    Ok(())
}

impl Store {
    /// Last event-log seq and last alert id assigned.
    pub fn fanout_heads(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(META)?;
        let get =
            |k: &str| -> Result<u64, StoreError> { Ok(meta.get(k)?.map_or(0, |v| v.value())) };
        Ok((get("next_event")?, get("next_alert")?))
    }

    /// Every subscriber's cursor.
    pub fn cursors(&self) -> Result<BTreeMap<String, CursorRecord>, StoreError> {
        let txn = self.db().begin_read()?;
        let t = txn.open_table(CURSORS)?;
        let mut out = BTreeMap::new();
        for e in t.iter()? {
            let (k, v) = e?;
            out.insert(
                k.value().to_owned(),
                codec::from_bytes("CursorRecord", v.value()).map_err(corrupt)?,
            );
        }
        Ok(out)
    }

    /// Saved rule state, by rule id.
    pub fn rule_states(&self) -> Result<Vec<(String, StoredRuleState)>, StoreError> {
        let txn = self.db().begin_read()?;
        let t = txn.open_table(RULE_STATE)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            out.push((
                k.value().to_owned(),
                codec::from_bytes("StoredRuleState", v.value()).map_err(corrupt)?,
            ));
        }
        Ok(out)
    }

    /// Up to `limit` log entries after `cursor`, in order.
    pub fn log_after(&self, cursor: u64, limit: usize) -> Result<Vec<(u64, LogEntry)>, StoreError> {
        let txn = self.db().begin_read()?;
        let t = txn.open_table(EVENT_LOG)?;
        let mut out = Vec::new();
        for e in t.range(cursor.saturating_add(1)..)?.take(limit) {
            let (k, v) = e?;
            out.push((
                k.value(),
                codec::from_bytes("LogEntry", v.value()).map_err(corrupt)?,
            ));
        }
        Ok(out)
    }

    /// Up to `limit` alerts after `cursor`, in order.
    pub fn alerts_after(&self, cursor: u64, limit: usize) -> Result<Vec<AlertEvent>, StoreError> {
        let txn = self.db().begin_read()?;
        let t = txn.open_table(ALERTS)?;
        let mut out = Vec::new();
        for e in t.range(cursor.saturating_add(1)..)?.take(limit) {
            let (_, v) = e?;
            out.push(codec::from_bytes("AlertEvent", v.value()).map_err(corrupt)?);
        }
        Ok(out)
    }

    /// Stored alerts matching `f`, oldest first (the newest `f.limit`).
    pub fn alerts(&self, f: &AlertFilter) -> Result<Vec<AlertEvent>, StoreError> {
        let subjects: Option<HashSet<String>> = match &f.selector {
            Some(sel) if *sel != Selector::all() => {
                Some(self.series(sel)?.into_iter().map(|s| s.name).collect())
            }
            _ => None,
        };
        let txn = self.db().begin_read()?;
        let t = txn.open_table(ALERTS)?;
        let mut out = std::collections::VecDeque::new();
        for e in t.iter()? {
            let (_, v) = e?;
            let a: AlertEvent = codec::from_bytes("AlertEvent", v.value()).map_err(corrupt)?;
            let rule_ok = f.rule.as_ref().is_none_or(|r| {
                a.rule == *r || a.rule.split_once('/').is_some_and(|(_, n)| n == r)
            });
            if f.state.is_some_and(|s| s != a.state)
                || !rule_ok
                || a.ts_ns < f.from_ns
                || a.ts_ns >= f.to_ns
                || subjects.as_ref().is_some_and(|s| !s.contains(&a.subject))
            {
                continue;
            }
            out.push_back(a);
            if out.len() > f.limit {
                out.pop_front();
            }
        }
        Ok(out.into())
    }

    /// Names of series `ids` (unknown ids are left out).
    pub fn series_names(&self, ids: &[u64]) -> Result<HashMap<u64, SeriesName>, StoreError> {
        let txn = self.db().begin_read()?;
        let t = txn.open_table(SERIES)?;
        let mut out = HashMap::new();
        for &id in ids {
            if let Some(v) = t.get(id)? {
                let key: SeriesKey = codec::from_bytes("SeriesKey", v.value()).map_err(corrupt)?;
                out.insert(
                    id,
                    SeriesName {
                        text: key.to_string(),
                        key,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Commits a processors' pass durably; returns the alerts with their
    /// ids and the processors' new cursor.
    pub fn commit_fanout(
        &self,
        c: FanoutCommit,
    ) -> Result<(Vec<AlertEvent>, CursorRecord), StoreError> {
        let mut txn = self.db().begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let mut alerts = c.alerts;
        {
            let mut meta = txn.open_table(META)?;
            let mut next = meta.get("next_alert")?.map_or(0, |v| v.value());
            let mut t = txn.open_table(ALERTS)?;
            for a in &mut alerts {
                next += 1;
                a.id = next;
                let bytes = codec::to_vec(&*a).map_err(corrupt)?;
                t.insert(next, bytes.as_slice())?;
            }
            meta.insert("next_alert", next)?;
            let held = t.len()?;
            if c.max_alerts > 0 && held > c.max_alerts {
                let old: Vec<u64> = t
                    .iter()?
                    .take((held - c.max_alerts) as usize)
                    .map(|e| e.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?;
                for k in old {
                    t.remove(k)?;
                }
            }
        }
        trim_log(&txn, c.log_floor, false)?;
        {
            let mut t = txn.open_table(RULE_STATE)?;
            for (id, st) in &c.states {
                let bytes = codec::to_vec(st).map_err(corrupt)?;
                t.insert(id.as_str(), bytes.as_slice())?;
            }
            for id in &c.removed {
                t.remove(id.as_str())?;
            }
        }
        let mut cur = cursor_in(&txn, PROCESSORS)?;
        cur.seq = cur.seq.max(c.cursor);
        if c.processors_idle {
            cur.seq = cur.seq.max(c.log_floor);
        }
        cur.handled += c.handled;
        cur.skipped += c.skipped;
        save_cursor(&txn, PROCESSORS, &cur)?;
        txn.commit()?;
        Ok((alerts, cur))
    }

    /// Commits a sink's progress durably.
    pub fn commit_sink(&self, c: &SinkCommit) -> Result<CursorRecord, StoreError> {
        let mut txn = self.db().begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let name = format!("sink/{}", c.name);
        let mut cur = cursor_in(&txn, &name)?;
        cur.seq = cur.seq.max(c.cursor);
        cur.handled += c.handled;
        cur.dead_letters += c.dead_letters;
        cur.skipped += c.skipped;
        cur.delivered += c.delivered;
        cur.refused += c.refused;
        cur.reads_log |= c.reads_log;
        save_cursor(&txn, &name, &cur)?;
        if c.reads_log {
            trim_log(&txn, c.log_floor, c.processors_idle)?;
        }
        txn.commit()?;
        Ok(cur)
    }
}
