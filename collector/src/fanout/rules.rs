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

fn dur(what: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{what} {text:?}: {e}"))
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn selector(text: &str) -> Result<Selector, String> {
    Selector::parse(text).map_err(|e| format!("match: {e}"))
}

pub(crate) fn check_name(text: &str) -> Result<(), String> {
    name(text)
}

fn name(text: &str) -> Result<(), String> {
    if text.is_empty()
        || text.len() > 64
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!("name {text:?}: use 1 to 64 of A-Z a-z 0-9 . _ -"));
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
    ) -> Result<Self, String> {
        if above.is_none() && below.is_none() {
            return Err("give `above`, `below` or both".into());
        }
        for v in [above, below].into_iter().flatten() {
            if !v.is_finite() {
                return Err("`above` and `below` must be finite numbers".into());
            }
        }
        if !(hysteresis.is_finite() && hysteresis >= 0.0) {
            return Err("`hysteresis` must be a finite number >= 0".into());
        }
        if let (Some(a), Some(b)) = (above, below)
            && b + hysteresis > a - hysteresis
        {
            return Err(format!(
                "`below` ({b}) plus `hysteresis` must stay under `above` ({a}) minus `hysteresis`"
            ));
        }
        Ok(Self {
            above,
            below,
            hysteresis,
            for_ns: ns(dur("for", for_)?),
        })
    }
}

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
    type Error = String;
    fn try_from(raw: ThresholdRaw) -> Result<Self, String> {
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
    type Error = String;
    fn try_from(raw: RateRaw) -> Result<Self, String> {
        name(&raw.name)?;
        let window_ns = ns(dur("window", &raw.window)?);
        let per_ns = ns(dur("per", &raw.per)?);
        if window_ns <= 0 || per_ns <= 0 {
            return Err("`window` and `per` must be positive".into());
        }
        if !(2..=65_536).contains(&raw.max_points) {
            return Err("`max_points` must be between 2 and 65536".into());
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
    type Error = String;
    fn try_from(raw: AnomalyRaw) -> Result<Self, String> {
        name(&raw.name)?;
        if !(raw.alpha > 0.0 && raw.alpha <= 1.0) {
            return Err("`alpha` must be in (0, 1]".into());
        }
        if !(raw.z.is_finite() && raw.z > 0.0) {
            return Err("`z` must be a positive number".into());
        }
        if raw.warm_up < 2 {
            return Err("`warm_up` must be at least 2 readings".into());
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
    type Error = String;
    fn try_from(raw: OfflineRaw) -> Result<Self, String> {
        name(&raw.name)?;
        let after_ns = ns(dur("after", &raw.after)?);
        let check_every = dur("check_every", &raw.check_every)?;
        if after_ns <= 0 || check_every.is_zero() {
            return Err("`after` and `check_every` must be positive".into());
        }
        Ok(Self {
            raw,
            after_ns,
            check_every,
        })
    }
}

/// `[[sink.webhook]]`: each alert event is POSTed as JSON to `url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "WebhookRaw")]
pub struct WebhookSink {
    /// As written.
    pub raw: WebhookRaw,
    /// Host and port to connect to.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

/// `[[sink.webhook]]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRaw {
    /// Unique among sinks; names its durable cursor.
    pub name: String,
    /// `http://host:port/path` (plain HTTP; see docs/alerts.md).
    pub url: String,
    /// Per-attempt timeout; default `5s`.
    #[serde(default = "five_seconds")]
    pub timeout: String,
    /// Attempts per event before it is dead-lettered; default 5.
    #[serde(default = "attempts")]
    pub max_attempts: u32,
    /// First retry delay (doubling); default `200ms`.
    #[serde(default = "backoff_min")]
    pub backoff_min: String,
    /// Longest retry delay; default `30s`.
    #[serde(default = "backoff_max")]
    pub backoff_max: String,
    /// Lag budget in alert events.
    #[serde(default)]
    pub lag_budget: LagBudget,
}

fn five_seconds() -> String {
    "5s".into()
}
fn attempts() -> u32 {
    5
}
fn backoff_min() -> String {
    "200ms".into()
}
fn backoff_max() -> String {
    "30s".into()
}

impl TryFrom<WebhookRaw> for WebhookSink {
    type Error = String;
    fn try_from(raw: WebhookRaw) -> Result<Self, String> {
        name(&raw.name)?;
        let rest = raw.url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "url {:?}: only http:// URLs are supported (put a TLS proxy in front for https)",
                raw.url
            )
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("url {:?}: no host", raw.url));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !p.contains(']')
        }) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        if raw.max_attempts == 0 {
            return Err("`max_attempts` must be at least 1".into());
        }
        let timeout = dur("timeout", &raw.timeout)?;
        let backoff_min = dur("backoff_min", &raw.backoff_min)?;
        let backoff_max = dur("backoff_max", &raw.backoff_max)?;
        if timeout.is_zero() || backoff_min.is_zero() || backoff_max < backoff_min {
            return Err(
                "`timeout` and `backoff_min` must be positive, `backoff_max` >= `backoff_min`"
                    .into(),
            );
        }
        Ok(Self {
            authority,
            path: path.to_owned(),
            timeout,
            backoff_min,
            backoff_max,
            raw,
        })
    }
}

/// `[[sink.log]]`: each alert event becomes one log line (target
/// `ferry_alerts`, level warn for firing/anomaly/offline, info otherwise).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSink {
    /// Unique among sinks; names its durable cursor.
    pub name: String,
    /// Lag budget in alert events.
    #[serde(default)]
    pub lag_budget: LagBudget,
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
pub fn validate(p: &ProcessorConfig, s: &SinkConfig) -> Result<(), String> {
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
            return Err(format!(
                "{key}: name {n:?} is used by two processor rules; names must be unique"
            ));
        }
    }
    if p.lag_budget.max == 0 {
        return Err("processor.lag_budget.max must be at least 1".into());
    }
    if p.max_alerts == 0 {
        return Err("processor.max_alerts must be at least 1".into());
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
        name(n).map_err(|e| format!("{key}: {e}"))?;
        if !seen.insert(n.clone()) {
            return Err(format!(
                "{key}: name {n:?} is used by two sinks; names must be unique"
            ));
        }
        if budget.max == 0 {
            return Err(format!("{key} {n:?}: lag_budget.max must be at least 1"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;

    /// Every TOML example in docs/alerts.md parses and validates.
    #[test]
    fn documented_configurations_are_valid() {
        let doc = include_str!("../../../docs/alerts.md");
        let mut blocks = 0;
        for part in doc.split("```toml\n").skip(1) {
            let block = part.split("```").next().unwrap();
            let config: Config = toml::from_str(block)
                .unwrap_or_else(|e| panic!("docs/alerts.md block {blocks}: {e}\n{block}"));
            config.validate().unwrap();
            blocks += 1;
        }
        assert_eq!(blocks, 3);
    }

    #[test]
    fn bad_rules_are_explained_with_their_line() {
        let err = |text: &str| toml::from_str::<Config>(text).unwrap_err().to_string();
        let e = err("[[processor.threshold]]\nname = \"t\"\nmatch = 'x'\n");
        assert!(
            e.contains("line 1") && e.contains("give `above`, `below` or both"),
            "{e}"
        );
        let e = err("[[processor.threshold]]\nname = \"t\"\nmatch = 'x{a=b}'\nabove = 1\n");
        assert!(e.contains("match: selector"), "{e}");
        let e = err("[[processor.threshold]]\nname = \"t\"\nmatch = 'x'\nabove = 1\nbelow = 2\n");
        assert!(e.contains("must stay under"), "{e}");
        let e = err("[[processor.anomaly]]\nname = \"a\"\nmatch = 'x'\nalpha = 2\n");
        assert!(e.contains("`alpha` must be in (0, 1]"), "{e}");
        let e = err("[processor.offline]\nafter = \"0s\"\n");
        assert!(e.contains("must be positive"), "{e}");
        let e = err("[[sink.webhook]]\nname = \"w\"\nurl = \"https://x/y\"\n");
        assert!(e.contains("only http:// URLs"), "{e}");
        let c: Config = toml::from_str("[[sink.log]]\nname = \"bad name\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("sink.log: name \"bad name\": use 1 to 64"),
            "{e}"
        );
        let c: Config = toml::from_str(
            "[[sink.log]]\nname = \"x\"\n[[sink.webhook]]\nname = \"x\"\nurl = \"http://h/\"\n",
        )
        .unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid configuration: sink.log: name \"x\" is used by two sinks; names must be unique"
        );
    }

    #[test]
    fn webhook_urls_split_into_authority_and_path() {
        let c: Config = toml::from_str(
            "[[sink.webhook]]\nname = \"a\"\nurl = \"http://example.org/hook?x=1\"\n\
             [[sink.webhook]]\nname = \"b\"\nurl = \"http://127.0.0.1:9000\"\n",
        )
        .unwrap();
        let w = &c.sink.webhook;
        assert_eq!(
            (w[0].authority.as_str(), w[0].path.as_str()),
            ("example.org:80", "/hook?x=1")
        );
        assert_eq!(
            (w[1].authority.as_str(), w[1].path.as_str()),
            ("127.0.0.1:9000", "/")
        );
    }
}
