//! `[processor]` and `[sink]` in `collector.toml`: the rules the processors
//! run and the sinks alerts go to. Reloadable (SIGHUP, `ferry-collector
//! reload`).
//!
//! Each rule is checked while it is parsed (`serde(try_from)`), so a bad
//! rule is reported by the TOML parser with its file, line and column; the
//! checks that span rules (unique names) name the rule by its key path.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::query::Selector;

mod error;
mod kinds;
mod sinks;

pub use error::{RuleError, ValidateError};
pub use kinds::{
    AnomalyRaw, AnomalyRule, OfflineRaw, OfflineRule, RateRaw, RateRule, ThresholdRaw,
    ThresholdRule,
};
pub use sinks::{LogSink, WebhookRaw, WebhookSink};

/// `[processor]`: processor rules and the processors' lag budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Most stored batches the processors may fall behind ingest.
    pub lag_budget: LagBudget,
    /// Most alert events kept in the store; past it the oldest are
    /// deleted.
    pub max_alerts: u64,
    /// `[[processor.threshold]]`.
    pub threshold: Vec<ThresholdRule>,
    /// `[[processor.rate]]`.
    pub rate: Vec<RateRule>,
    /// `[[processor.anomaly]]`.
    pub anomaly: Vec<AnomalyRule>,
    /// `[processor.offline]`.
    pub offline: Option<OfflineRule>,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            lag_budget: LagBudget::default(),
            max_alerts: 1_000_000,
            threshold: Vec::new(),
            rate: Vec::new(),
            anomaly: Vec::new(),
            offline: None,
        }
    }
}

/// `[sink]`: where alert events go (`[[sink.webhook]]`, `[[sink.log]]`),
/// and the storage sinks that get every stored reading (`[sink.<name>]`
/// with a `kind`, docs/sinks.md).
#[derive(Debug, Clone, Default)]
pub struct SinkConfig {
    /// `[[sink.webhook]]`.
    pub webhook: Vec<WebhookSink>,
    /// `[[sink.log]]`.
    pub log: Vec<LogSink>,
    /// `[sink.<name>]` storage sinks, in name order.
    pub storage: Vec<super::sinks::StorageSink>,
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Tables;
        impl<'de> serde::de::Visitor<'de> for Tables {
            type Value = SinkConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("[[sink.webhook]], [[sink.log]] or [sink.<name>] tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SinkConfig, A::Error> {
                use serde::de::Error as _;
                let mut out = SinkConfig::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "webhook" => out.webhook = map.next_value()?,
                        "log" => out.log = map.next_value()?,
                        _ => {
                            let raw: super::sinks::StorageRaw = map.next_value()?;
                            let sink = super::sinks::StorageSink::new(&key, raw)
                                .map_err(|e| A::Error::custom(format!("sink.{key}: {e}")))?;
                            out.storage.push(sink);
                        }
                    }
                }
                out.storage.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            }
        }
        d.deserialize_map(Tables)
    }
}

/// What happens when a subscriber falls more than its budget behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LagPolicy {
    /// Ingest waits (agents keep their data on disk) until the subscriber
    /// is back within its budget.
    #[default]
    Backpressure,
    /// The subscriber jumps to the head; the skipped range is counted,
    /// logged and reported.
    Skip,
}

/// A lag budget: `max` entries behind the head, then `policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagBudget {
    /// Entries (stored batches for processors, alert events for sinks).
    pub max: u64,
    /// What happens past `max`.
    pub policy: LagPolicy,
}

impl Default for LagBudget {
    fn default() -> Self {
        Self {
            max: 100_000,
            policy: LagPolicy::Backpressure,
        }
    }
}

fn dur(what: &'static str, text: &str) -> Result<Duration, RuleError> {
    humantime::parse_duration(text).map_err(|source| RuleError::Duration {
        what,
        text: text.to_owned(),
        source,
    })
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn selector(text: &str) -> Result<Selector, RuleError> {
    Selector::parse(text).map_err(RuleError::Selector)
}

pub(crate) fn check_name(text: &str) -> Result<(), RuleError> {
    name(text)
}

fn name(text: &str) -> Result<(), RuleError> {
    if text.is_empty()
        || text.len() > 64
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(RuleError::Name(text.to_owned()));
    }
    Ok(())
}

/// Bounds on a value (or a rate) with hysteresis and a `for` duration: the
/// part threshold and rate rules share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bounds {
    /// Breach when the value is above this.
    pub above: Option<f64>,
    /// Breach when the value is below this.
    pub below: Option<f64>,
    /// A firing alert resolves only once the value is back inside the
    /// bounds by this margin.
    pub hysteresis: f64,
    /// The breach must last this long (event time) before firing.
    pub for_ns: i64,
}

impl Bounds {
    fn new(
        above: Option<f64>,
        below: Option<f64>,
        hysteresis: f64,
        for_: &str,
    ) -> Result<Self, RuleError> {
        if above.is_none() && below.is_none() {
            return Err(RuleError::NoBound);
        }
        for v in [above, below].into_iter().flatten() {
            if !v.is_finite() {
                return Err(RuleError::BoundNotFinite);
            }
        }
        if !(hysteresis.is_finite() && hysteresis >= 0.0) {
            return Err(RuleError::Hysteresis);
        }
        if let (Some(a), Some(b)) = (above, below)
            && b + hysteresis > a - hysteresis
        {
            return Err(RuleError::BoundsOverlap { below: b, above: a });
        }
        Ok(Self {
            above,
            below,
            hysteresis,
            for_ns: ns(dur("for", for_)?),
        })
    }
}

impl ProcessorConfig {
    /// Names of every rule, `kind/name`, in configuration order.
    pub fn rule_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        out.extend(
            self.threshold
                .iter()
                .map(|r| format!("threshold/{}", r.raw.name)),
        );
        out.extend(self.rate.iter().map(|r| format!("rate/{}", r.raw.name)));
        out.extend(
            self.anomaly
                .iter()
                .map(|r| format!("anomaly/{}", r.raw.name)),
        );
        out.extend(
            self.offline
                .iter()
                .map(|r| format!("offline/{}", r.raw.name)),
        );
        out
    }

    /// True if any rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rule_ids().is_empty()
    }
}

/// Checks what spans rules: names are unique among processors and among
/// sinks.
pub fn validate(p: &ProcessorConfig, s: &SinkConfig) -> Result<(), ValidateError> {
    let mut seen = std::collections::HashSet::new();
    for (key, n) in p
        .threshold
        .iter()
        .map(|r| ("processor.threshold", &r.raw.name))
        .chain(p.rate.iter().map(|r| ("processor.rate", &r.raw.name)))
        .chain(p.anomaly.iter().map(|r| ("processor.anomaly", &r.raw.name)))
        .chain(p.offline.iter().map(|r| ("processor.offline", &r.raw.name)))
    {
        if !seen.insert(n.clone()) {
            return Err(ValidateError::DuplicateRule {
                key,
                name: n.clone(),
            });
        }
    }
    if p.lag_budget.max == 0 {
        return Err(ValidateError::ProcessorLagBudget);
    }
    if p.max_alerts == 0 {
        return Err(ValidateError::MaxAlerts);
    }
    let mut seen = std::collections::HashSet::new();
    for (key, n, budget) in s
        .webhook
        .iter()
        .map(|w| ("sink.webhook", &w.raw.name, w.raw.lag_budget))
        .chain(s.log.iter().map(|l| ("sink.log", &l.name, l.lag_budget)))
        .chain(
            s.storage
                .iter()
                .map(|x| ("sink.<name>", &x.name, x.lag_budget())),
        )
    {
        name(n).map_err(|source| ValidateError::SinkName { key, source })?;
        if !seen.insert(n.clone()) {
            return Err(ValidateError::DuplicateSink {
                key,
                name: n.clone(),
            });
        }
        if budget.max == 0 {
            return Err(ValidateError::SinkLagBudget {
                key,
                name: n.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
