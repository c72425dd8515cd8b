//! The processors as one sans-IO value: rules with their per-series state,
//! fed log entries and clock ticks, returning alert events. The I/O around
//! it (reading the log, committing) is in `run`.

use std::collections::{BTreeMap, HashMap};

use ferry_proto::batch::Reading;
use ferry_proto::codec::DecodeError;
use ferry_proto::series::SeriesKey;
use serde::{Deserialize, Serialize};

use super::anomaly::EwmaState;
use super::level::{LevelState, Transition};
use super::offline::{Change, OfflineState};
use super::rate::RateState;
use super::rules::{AnomalyRule, Bounds, OfflineRule, ProcessorConfig, RateRule, ThresholdRule};
use super::{AlertEvent, AlertState, LogEntry};

/// A series as rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesName {
    /// The key, for selectors and the device tag.
    pub key: SeriesKey,
    /// Prometheus text form, for events.
    pub text: String,
}

/// A rule's state as stored in `processor_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRuleState {
    /// The rule's configuration when the state was saved; a changed rule
    /// starts afresh.
    pub fingerprint: String,
    /// MessagePack of the rule's state.
    pub state: Vec<u8>,
}

#[derive(Debug)]
enum Kind {
    Threshold(ThresholdRule, BTreeMap<u64, LevelState>),
    Rate(RateRule, BTreeMap<u64, RateState>),
    Anomaly(AnomalyRule, BTreeMap<u64, EwmaState>),
    Offline(OfflineRule, OfflineState),
}

#[derive(Debug)]
struct Rule {
    id: String,
    fingerprint: String,
    kind: Kind,
    dirty: bool,
}

/// Every configured rule and its state.
#[derive(Debug, Default)]
pub struct Processors {
    rules: Vec<Rule>,
}

fn rules_of(cfg: &ProcessorConfig) -> Vec<Rule> {
    let mut out = Vec::new();
    let mut push = |id: String, fingerprint: String, kind: Kind| {
        out.push(Rule {
            id,
            fingerprint,
            kind,
            dirty: true,
        })
    };
    for r in &cfg.threshold {
        push(
            format!("threshold/{}", r.raw.name),
            format!("{:?}", r.raw),
            Kind::Threshold(r.clone(), BTreeMap::new()),
        );
    }
    for r in &cfg.rate {
        push(
            format!("rate/{}", r.raw.name),
            format!("{:?}", r.raw),
            Kind::Rate(r.clone(), BTreeMap::new()),
        );
    }
    for r in &cfg.anomaly {
        push(
            format!("anomaly/{}", r.raw.name),
            format!("{:?}", r.raw),
            Kind::Anomaly(r.clone(), BTreeMap::new()),
        );
    }
    if let Some(r) = &cfg.offline {
        push(
            format!("offline/{}", r.raw.name),
            format!("{:?}", r.raw),
            Kind::Offline(r.clone(), OfflineState::default()),
        );
    }
    out
}

fn bounds_text(b: &Bounds) -> String {
    match (b.above, b.below) {
        (Some(a), Some(l)) => format!("outside [{l}, {a}]"),
        (Some(a), None) => format!("above {a}"),
        (None, Some(l)) => format!("below {l}"),
        (None, None) => String::new(),
    }
}

fn secs(ns: i64) -> String {
    humantime::format_duration(std::time::Duration::from_nanos(ns.max(0) as u64)).to_string()
}

fn level_event(
    id: &str,
    b: &Bounds,
    what: &str,
    subject: &str,
    t: Transition,
    ts: i64,
    v: f64,
) -> AlertEvent {
    let (state, since_ns, message) = match t {
        Transition::Fired { since_ns } => (
            AlertState::Firing,
            since_ns,
            format!(
                "{subject}: {what} {v} {} for {}",
                bounds_text(b),
                secs(ts - since_ns)
            ),
        ),
        Transition::Resolved { since_ns } => (
            AlertState::Resolved,
            since_ns,
            format!(
                "{subject}: {what} {v} back inside (breach lasted {})",
                secs(ts - since_ns)
            ),
        ),
    };
    AlertEvent {
        id: 0,
        rule: id.to_owned(),
        state,
        subject: subject.to_owned(),
        value: v,
        ts_ns: ts,
        since_ns,
        emitted_ns: 0,
        message,
    }
}

fn offline_event(id: &str, c: Change, now_ns: i64) -> AlertEvent {
    let (state, subject, since_ns, message) = match c {
        Change::Offline {
            subject,
            last_seen_ns,
        } => (
            AlertState::Offline,
            subject.clone(),
            last_seen_ns,
            format!("{subject}: no data for {}", secs(now_ns - last_seen_ns)),
        ),
        Change::Online { subject, since_ns } => (
            AlertState::Online,
            subject.clone(),
            since_ns,
            format!(
                "{subject}: data again after {} offline",
                secs(now_ns - since_ns)
            ),
        ),
    };
    AlertEvent {
        id: 0,
        rule: id.to_owned(),
        state,
        subject,
        value: 0.0,
        ts_ns: now_ns,
        since_ns,
        emitted_ns: now_ns,
        message,
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain data (maps, numbers, strings) always encodes.
    ferry_proto::codec::to_vec(v).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    ferry_proto::codec::from_bytes("rule state", bytes)
}

impl Processors {
    /// Rules of `cfg`, all starting afresh.
    pub fn new(cfg: &ProcessorConfig) -> Self {
        Self {
            rules: rules_of(cfg),
        }
    }

    /// `kind/name` of every rule.
    pub fn rule_ids(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.id.clone()).collect()
    }

    /// True if no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Replaces the rules by `cfg`'s. A rule with the same `kind/name` and
    /// the same configuration keeps its state; a changed one starts afresh.
    /// Returns the ids of rules that are gone.
    pub fn reconfigure(&mut self, cfg: &ProcessorConfig) -> Vec<String> {
        let mut old: HashMap<String, Rule> =
            self.rules.drain(..).map(|r| (r.id.clone(), r)).collect();
        let mut new = rules_of(cfg);
        for r in &mut new {
            if let Some(o) = old.remove(&r.id)
                && o.fingerprint == r.fingerprint
            {
                r.kind = o.kind;
                r.dirty = o.dirty;
            }
        }
        self.rules = new;
        let mut gone: Vec<String> = old.into_keys().collect();
        gone.sort();
        gone
    }

    /// Restores a rule's saved state; false (state ignored) if the rule is
    /// gone or its configuration changed since.
    ///
    /// # Errors
    /// The saved state does not decode.
    pub fn restore(&mut self, id: &str, saved: &StoredRuleState) -> Result<bool, DecodeError> {
        let Some(r) = self
            .rules
            .iter_mut()
            .find(|r| r.id == id && r.fingerprint == saved.fingerprint)
        else {
            return Ok(false);
        };
        match &mut r.kind {
            Kind::Threshold(_, st) => *st = decode(&saved.state)?,
            Kind::Rate(_, st) => *st = decode(&saved.state)?,
            Kind::Anomaly(_, st) => *st = decode(&saved.state)?,
            Kind::Offline(_, st) => *st = decode(&saved.state)?,
        }
        r.dirty = false;
        Ok(true)
    }

    /// After a restart: offline timers count from `now_ns` (see
    /// [`OfflineState::restart_timers`]).
    pub fn restart_timers(&mut self, now_ns: i64) {
        for r in &mut self.rules {
            if let Kind::Offline(_, st) = &mut r.kind {
                st.restart_timers(now_ns);
                r.dirty = true;
            }
        }
    }

    /// How often [`Processors::check`] should run, if any rule needs it.
    pub fn check_every(&self) -> Option<std::time::Duration> {
        self.rules.iter().find_map(|r| match &r.kind {
            Kind::Offline(rule, _) => Some(rule.check_every),
            _ => None,
        })
    }

    /// Runs every rule over one log entry. `names` must hold every series
    /// the entry mentions (unknown ones are skipped). Events get
    /// `emitted_ns = now_ns`, ids are assigned at commit.
    pub fn handle(
        &mut self,
        entry: &LogEntry,
        names: &HashMap<u64, SeriesName>,
        now_ns: i64,
    ) -> Result<Vec<AlertEvent>, DecodeError> {
        let mut by_series: BTreeMap<u64, Vec<Reading>> = BTreeMap::new();
        for (sid, bytes) in &entry.chunks {
            let readings = crate::store::decode_chunk(bytes)?;
            by_series.entry(*sid).or_default().extend(readings);
        }
        for rs in by_series.values_mut() {
            rs.sort_by_key(|r| r.ts_ns);
        }
        let mut out = Vec::new();
        for rule in &mut self.rules {
            let id = rule.id.as_str();
            match &mut rule.kind {
                Kind::Threshold(r, states) => {
                    for (sid, readings) in &by_series {
                        let Some(name) = names.get(sid).filter(|n| r.selector.matches(&n.key))
                        else {
                            continue;
                        };
                        rule.dirty = true;
                        let st = states.entry(*sid).or_default();
                        for x in readings {
                            if let Some(t) = st.observe(&r.bounds, x.ts_ns, x.value) {
                                out.push(level_event(
                                    id, &r.bounds, "value", &name.text, t, x.ts_ns, x.value,
                                ));
                            }
                        }
                    }
                }
                Kind::Rate(r, states) => {
                    for (sid, readings) in &by_series {
                        let Some(name) = names.get(sid).filter(|n| r.selector.matches(&n.key))
                        else {
                            continue;
                        };
                        rule.dirty = true;
                        let st = states.entry(*sid).or_default();
                        for x in readings {
                            if let Some((t, rate)) = st.observe(r, x.ts_ns, x.value) {
                                let what = format!("rate per {}", r.raw.per);
                                out.push(level_event(
                                    id, &r.bounds, &what, &name.text, t, x.ts_ns, rate,
                                ));
                            }
                        }
                    }
                }
                Kind::Anomaly(r, states) => {
                    for (sid, readings) in &by_series {
                        let Some(name) = names.get(sid).filter(|n| r.selector.matches(&n.key))
                        else {
                            continue;
                        };
                        rule.dirty = true;
                        let st = states.entry(*sid).or_default();
                        for x in readings {
                            if let Some(a) = st.observe(r, x.ts_ns, x.value) {
                                out.push(AlertEvent {
                                    id: 0,
                                    rule: id.to_owned(),
                                    state: AlertState::Anomaly,
                                    subject: name.text.clone(),
                                    value: x.value,
                                    ts_ns: x.ts_ns,
                                    since_ns: x.ts_ns,
                                    emitted_ns: 0,
                                    message: format!(
                                        "{}: {} is {:.1} standard deviations from the moving mean {:.3} (sd {:.3})",
                                        name.text, x.value, a.z, a.mean, a.sd
                                    ),
                                });
                            }
                        }
                    }
                }
                Kind::Offline(r, st) => {
                    rule.dirty = true;
                    let mut subjects = Vec::new();
                    if r.raw.agents {
                        subjects.push(format!("agent={}", entry.agent));
                    }
                    if !r.raw.device_tag.is_empty() {
                        for sid in by_series.keys().chain(&entry.aggregate_series) {
                            if let Some(dev) =
                                names.get(sid).and_then(|n| n.key.tag(&r.raw.device_tag))
                            {
                                let s = format!("device={dev}");
                                if !subjects.contains(&s) {
                                    subjects.push(s);
                                }
                            }
                        }
                    }
                    for s in subjects {
                        if let Some(c) = st.seen(&s, entry.stored_ns) {
                            out.push(offline_event(id, c, entry.stored_ns));
                        }
                    }
                }
            }
        }
        for e in &mut out {
            e.emitted_ns = now_ns;
        }
        Ok(out)
    }

    /// Runs the clock-driven checks (offline) at `now_ns`.
    pub fn check(&mut self, now_ns: i64) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        for rule in &mut self.rules {
            if let Kind::Offline(r, st) = &mut rule.kind {
                let changes = st.check(r.after_ns, now_ns);
                if !changes.is_empty() {
                    rule.dirty = true;
                }
                out.extend(
                    changes
                        .into_iter()
                        .map(|c| offline_event(&rule.id, c, now_ns)),
                );
            }
        }
        out
    }

    /// The state of every rule changed since the last call, to commit.
    pub fn take_dirty(&mut self) -> Vec<(String, StoredRuleState)> {
        let mut out = Vec::new();
        for r in &mut self.rules {
            if !r.dirty {
                continue;
            }
            r.dirty = false;
            let state = match &r.kind {
                Kind::Threshold(_, st) => encode(st),
                Kind::Rate(_, st) => encode(st),
                Kind::Anomaly(_, st) => encode(st),
                Kind::Offline(_, st) => encode(st),
            };
            out.push((
                r.id.clone(),
                StoredRuleState {
                    fingerprint: r.fingerprint.clone(),
                    state,
                },
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
