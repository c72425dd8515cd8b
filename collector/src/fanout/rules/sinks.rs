//! Where alert events go: `[[sink.webhook]]` (each event POSTed as JSON,
//! with retries and backoff) and `[[sink.log]]` (each event one log line),
//! checked while parsed like the rules.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;

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
    type Error = RuleError;
    fn try_from(raw: WebhookRaw) -> Result<Self, RuleError> {
        name(&raw.name)?;
        let rest = raw
            .url
            .strip_prefix("http://")
            .ok_or_else(|| RuleError::NotHttp(raw.url.clone()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(RuleError::NoHost(raw.url.clone()));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !p.contains(']')
        }) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        if raw.max_attempts == 0 {
            return Err(RuleError::MaxAttempts);
        }
        let timeout = dur("timeout", &raw.timeout)?;
        let backoff_min = dur("backoff_min", &raw.backoff_min)?;
        let backoff_max = dur("backoff_max", &raw.backoff_max)?;
        if timeout.is_zero() || backoff_min.is_zero() || backoff_max < backoff_min {
            return Err(RuleError::WebhookTimes);
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
