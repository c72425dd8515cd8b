//! The processor rules as written and as checked: `[[processor.threshold]]`,
//! `[[processor.rate]]`, `[[processor.anomaly]]` and `[[processor.offline]]`.
//! Each `*Raw` is what the TOML holds; its `TryFrom` checks it into the rule
//! the processors run, so a bad rule is refused by the TOML parser with its
//! file, line and column.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;
use crate::query::Selector;

/// `[[processor.threshold]]`: fires when series matching `match` stay
/// above `above` or below `below` for `for` (event time), resolves when
/// back inside by `hysteresis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ThresholdRaw")]
pub struct ThresholdRule {
    /// The rule as written (its fingerprint for reloads).
    pub raw: ThresholdRaw,
    /// The parsed selector.
    pub selector: Selector,
    /// The bounds.
    pub bounds: Bounds,
}

/// `[[processor.threshold]]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRaw {
    /// Unique among processor rules.
    pub name: String,
    /// Series selector, as in queries: `metric{tag="value"}`.
    #[serde(rename = "match")]
    pub selector: String,
    /// Upper bound.
    pub above: Option<f64>,
    /// Lower bound.
    pub below: Option<f64>,
    /// Duration the breach must last; default `0s` (fire at once).
    #[serde(rename = "for", default = "zero")]
    pub for_: String,
    /// Resolve margin; default 0.
    #[serde(default)]
    pub hysteresis: f64,
}

fn zero() -> String {
    "0s".into()
}

impl TryFrom<ThresholdRaw> for ThresholdRule {
    type Error = RuleError;
    fn try_from(raw: ThresholdRaw) -> Result<Self, RuleError> {
        name(&raw.name)?;
        Ok(Self {
            selector: selector(&raw.selector)?,
            bounds: Bounds::new(raw.above, raw.below, raw.hysteresis, &raw.for_)?,
            raw,
        })
    }
}

/// `[[processor.rate]]`: the rate of change of series matching `match`,
/// in units per `per`, measured over the readings of the last `window`
/// (event time); fires and resolves like a threshold rule on that rate.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RateRaw")]
pub struct RateRule {
    /// The rule as written.
    pub raw: RateRaw,
    /// The parsed selector.
    pub selector: Selector,
    /// Bounds on the rate.
    pub bounds: Bounds,
    /// Window, ns.
    pub window_ns: i64,
    /// Rate unit, ns.
    pub per_ns: i64,
    /// Most readings kept per series within the window.
    pub max_points: usize,
}

/// `[[processor.rate]]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateRaw {
    /// Unique among processor rules.
    pub name: String,
    /// Series selector.
    #[serde(rename = "match")]
    pub selector: String,
    /// The rate is measured between the oldest and the newest reading
    /// within this window.
    pub window: String,
    /// Rate unit: change per this duration; default `1s`.
    #[serde(default = "one_second")]
    pub per: String,
    /// Fire when the rate is above this (a fast rise).
    pub above: Option<f64>,
    /// Fire when the rate is below this (a fast drop: negative).
    pub below: Option<f64>,
    /// Duration the breach must last; default `0s`.
    #[serde(rename = "for", default = "zero")]
    pub for_: String,
    /// Resolve margin on the rate; default 0.
    #[serde(default)]
    pub hysteresis: f64,
    /// Readings kept per series (oldest dropped first); default 1024.
    #[serde(default = "max_points")]
    pub max_points: usize,
}

fn one_second() -> String {
    "1s".into()
}

fn max_points() -> usize {
    1024
}

impl TryFrom<RateRaw> for RateRule {
    type Error = RuleError;
    fn try_from(raw: RateRaw) -> Result<Self, RuleError> {
        name(&raw.name)?;
        let window_ns = ns(dur("window", &raw.window)?);
        let per_ns = ns(dur("per", &raw.per)?);
        if window_ns <= 0 || per_ns <= 0 {
            return Err(RuleError::RateWindow);
        }
        if !(2..=65_536).contains(&raw.max_points) {
            return Err(RuleError::MaxPoints);
        }
        Ok(Self {
            selector: selector(&raw.selector)?,
            bounds: Bounds::new(raw.above, raw.below, raw.hysteresis, &raw.for_)?,
            window_ns,
            per_ns,
            max_points: raw.max_points,
            raw,
        })
    }
}

/// `[[processor.anomaly]]`: per series, an exponentially weighted moving
/// mean and variance; a reading whose z-score exceeds `z` after `warm_up`
/// readings is an anomaly event.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "AnomalyRaw")]
pub struct AnomalyRule {
    /// The rule as written.
    pub raw: AnomalyRaw,
    /// The parsed selector.
    pub selector: Selector,
    /// Minimum time between two anomaly events of one series, ns.
    pub cooldown_ns: i64,
}

/// `[[processor.anomaly]]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyRaw {
    /// Unique among processor rules.
    pub name: String,
    /// Series selector.
    #[serde(rename = "match")]
    pub selector: String,
    /// Weight of each new reading, in (0, 1]; default 0.05 (about the
    /// last 40 readings matter).
    #[serde(default = "alpha")]
    pub alpha: f64,
    /// |z| above this is an anomaly; default 4.
    #[serde(default = "z")]
    pub z: f64,
    /// Readings seen before any is judged; default 30.
    #[serde(default = "warm_up")]
    pub warm_up: u64,
    /// Minimum time between two anomaly events of one series (event
    /// time); default `0s`.
    #[serde(default = "zero")]
    pub cooldown: String,
}

fn alpha() -> f64 {
    0.05
}
fn z() -> f64 {
    4.0
}
fn warm_up() -> u64 {
    30
}

impl TryFrom<AnomalyRaw> for AnomalyRule {
    type Error = RuleError;
    fn try_from(raw: AnomalyRaw) -> Result<Self, RuleError> {
        name(&raw.name)?;
        if !(raw.alpha > 0.0 && raw.alpha <= 1.0) {
            return Err(RuleError::Alpha);
        }
        if !(raw.z.is_finite() && raw.z > 0.0) {
            return Err(RuleError::Z);
        }
        if raw.warm_up < 2 {
            return Err(RuleError::WarmUp);
        }
        Ok(Self {
            selector: selector(&raw.selector)?,
            cooldown_ns: ns(dur("cooldown", &raw.cooldown)?),
            raw,
        })
    }
}

/// `[processor.offline]`: a device or an agent that sent nothing for
/// `after` (collector clock) is reported offline, and online again at its
/// next data.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "OfflineRaw")]
pub struct OfflineRule {
    /// The rule as written.
    pub raw: OfflineRaw,
    /// Silence that makes offline, ns.
    pub after_ns: i64,
    /// How often silence is checked.
    pub check_every: Duration,
}

/// `[processor.offline]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineRaw {
    /// Rule name; default `offline`.
    #[serde(default = "offline")]
    pub name: String,
    /// Silence that makes a device or agent offline.
    pub after: String,
    /// The series tag naming a device; default `device`. Empty: devices
    /// are not watched.
    #[serde(default = "device")]
    pub device_tag: String,
    /// Watch agents too; default true.
    #[serde(default = "yes")]
    pub agents: bool,
    /// How often silence is checked; default `1s`.
    #[serde(default = "one_second")]
    pub check_every: String,
}

fn offline() -> String {
    "offline".into()
}
fn device() -> String {
    "device".into()
}
fn yes() -> bool {
    true
}

impl TryFrom<OfflineRaw> for OfflineRule {
    type Error = RuleError;
    fn try_from(raw: OfflineRaw) -> Result<Self, RuleError> {
        name(&raw.name)?;
        let after_ns = ns(dur("after", &raw.after)?);
        let check_every = dur("check_every", &raw.check_every)?;
        if after_ns <= 0 || check_every.is_zero() {
            return Err(RuleError::OfflineTimes);
        }
        Ok(Self {
            raw,
            after_ns,
            check_every,
        })
    }
}
