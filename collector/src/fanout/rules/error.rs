//! Why a processor rule or an alert sink was refused while it was parsed.
//! The TOML parser reports these with the rule's file, line and column (the
//! rules are checked in `serde(try_from)`), so each message names the key
//! at fault and what it accepts.

use crate::query::QueryError;

/// Why a rule or a sink in `[processor]`/`[sink]` is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// A duration that does not parse.
    #[error("{what} {text:?}: {source}")]
    Duration {
        /// The key.
        what: &'static str,
        /// What it held.
        text: String,
        /// Why it does not parse.
        source: humantime::DurationError,
    },
    /// `match` is not a selector.
    #[error("match: {0}")]
    Selector(QueryError),
    /// A name outside the rule for names.
    #[error("name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -")]
    Name(String),
    /// Neither `above` nor `below`.
    #[error("give `above`, `below` or both")]
    NoBound,
    /// `above` or `below` is not finite.
    #[error("`above` and `below` must be finite numbers")]
    BoundNotFinite,
    /// `hysteresis` is negative or not finite.
    #[error("`hysteresis` must be a finite number >= 0")]
    Hysteresis,
    /// `below` and `above` overlap once the hysteresis is counted.
    #[error(
        "`below` ({below}) plus `hysteresis` must stay under `above` ({above}) minus `hysteresis`"
    )]
    BoundsOverlap {
        /// `below`.
        below: f64,
        /// `above`.
        above: f64,
    },
    /// A rate rule's `window` or `per` is zero.
    #[error("`window` and `per` must be positive")]
    RateWindow,
    /// A rate rule's `max_points` is out of range.
    #[error("`max_points` must be between 2 and 65536")]
    MaxPoints,
    /// An anomaly rule's `alpha` is out of range.
    #[error("`alpha` must be in (0, 1]")]
    Alpha,
    /// An anomaly rule's `z` is not positive.
    #[error("`z` must be a positive number")]
    Z,
    /// An anomaly rule's `warm_up` is under 2.
    #[error("`warm_up` must be at least 2 readings")]
    WarmUp,
    /// An offline rule's `after` or `check_every` is zero.
    #[error("`after` and `check_every` must be positive")]
    OfflineTimes,
    /// A webhook URL that is not `http://`.
    #[error("url {0:?}: only http:// URLs are supported (put a TLS proxy in front for https)")]
    NotHttp(String),
    /// A webhook URL without a host.
    #[error("url {0:?}: no host")]
    NoHost(String),
    /// A webhook's `max_attempts` is zero.
    #[error("`max_attempts` must be at least 1")]
    MaxAttempts,
    /// A webhook's timeout or backoff is out of range.
    #[error("`timeout` and `backoff_min` must be positive, `backoff_max` >= `backoff_min`")]
    WebhookTimes,
}

/// Why rules and sinks that are each valid do not fit together
/// ([`super::validate`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidateError {
    /// Two processor rules share a name.
    #[error("{key}: name {name:?} is used by two processor rules; names must be unique")]
    DuplicateRule {
        /// The table, `processor.<kind>`.
        key: &'static str,
        /// The name.
        name: String,
    },
    /// `processor.lag_budget.max` is zero.
    #[error("processor.lag_budget.max must be at least 1")]
    ProcessorLagBudget,
    /// `processor.max_alerts` is zero.
    #[error("processor.max_alerts must be at least 1")]
    MaxAlerts,
    /// A sink's name breaks the rule for names.
    #[error("{key}: {source}")]
    SinkName {
        /// The table, `sink.<kind>`.
        key: &'static str,
        /// What is wrong with the name.
        source: RuleError,
    },
    /// Two sinks share a name.
    #[error("{key}: name {name:?} is used by two sinks; names must be unique")]
    DuplicateSink {
        /// The table, `sink.<kind>`.
        key: &'static str,
        /// The name.
        name: String,
    },
    /// A sink's `lag_budget.max` is zero.
    #[error("{key} {name:?}: lag_budget.max must be at least 1")]
    SinkLagBudget {
        /// The table, `sink.<kind>`.
        key: &'static str,
        /// The sink's name.
        name: String,
    },
}
