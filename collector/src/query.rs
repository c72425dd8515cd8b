//! Queries: series selectors, time ranges and steps, shared by the HTTP API
//! and the CLI.
//!
//! A selector is `metric{key="value",…}`: the metric name must be equal and
//! every listed tag must be present with that value (other tags may exist).
//! `{key="value"}` matches any metric; an empty selector or `*` matches
//! every series.

use ferry_proto::batch::WindowAggregate;
use ferry_proto::series::SeriesKey;
use serde::{Deserialize, Serialize};

pub use crate::config::QueryLimits;

/// Why a query could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The selector does not parse.
    #[error("selector {selector:?} at byte {at}: {why}")]
    Selector {
        /// The selector text.
        selector: String,
        /// Byte offset of the problem.
        at: usize,
        /// What was expected.
        why: &'static str,
    },
    /// A time does not parse.
    #[error(
        "{what} {text:?}: expected `now`, `-<duration>` (e.g. -15m), nanoseconds since the epoch or RFC 3339"
    )]
    Time {
        /// `from` or `to`.
        what: &'static str,
        /// The text.
        text: String,
    },
    /// The step does not parse or is zero.
    #[error("step {0:?}: expected a positive duration such as 10s, 5m or 1h")]
    Step(String),
    /// `from` is not before `to`.
    #[error("empty time range: from ({from}) must be before to ({to})")]
    EmptyRange {
        /// Start, ns.
        from: i64,
        /// End, ns.
        to: i64,
    },
    /// `kind` is not one of the known values.
    #[error("kind {0:?}: expected raw, aggregates or all")]
    Kind(String),
}

/// A query past its memory budget (`[query]` in `collector.toml`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OverBudget {
    /// The selector matches too many series.
    #[error("the selector matches {matched} series, more than query.max_series = {max}: narrow it")]
    Series {
        /// Series matched.
        matched: usize,
        /// The bound.
        max: usize,
    },
    /// The step cuts the range into more windows than the budget holds.
    #[error(
        "a step of {step} over {range} makes {buckets} windows per series, more than query.max_points = {max}: use a step of at least {min_step} or a shorter range"
    )]
    Step {
        /// The step asked for.
        step: String,
        /// The range.
        range: String,
        /// Windows per series.
        buckets: u128,
        /// The bound.
        max: usize,
        /// The smallest step the budget allows over this range.
        min_step: String,
    },
    /// More points than the budget.
    #[error(
        "the query would hold more than query.max_points = {max} readings and windows: narrow the selector or the range, or give a larger step"
    )]
    Points {
        /// The bound.
        max: usize,
    },
    /// More bytes than the budget.
    #[error(
        "the query would hold more than query.max_bytes = {max} bytes of readings and windows: narrow the selector or the range, or give a larger step"
    )]
    Bytes {
        /// The bound.
        max: u64,
    },
}

impl OverBudget {
    /// The metric label: `series`, `step`, `points` or `bytes`.
    pub fn label(&self) -> &'static str {
        match self {
            OverBudget::Series { .. } => "series",
            OverBudget::Step { .. } => "step",
            OverBudget::Points { .. } => "points",
            OverBudget::Bytes { .. } => "bytes",
        }
    }
}

/// Bytes a raw reading (or a Prometheus sample) is counted as.
pub const READING_BYTES: u64 = 16;

/// Bytes a window is counted as: its size, with its sketch's bins.
pub fn window_bytes(w: &WindowAggregate) -> u64 {
    let bins = w
        .sketch
        .as_ref()
        .map_or(0, |s| s.positive.counts.len() + s.negative.counts.len());
    (std::mem::size_of::<WindowAggregate>() + 8 * bins) as u64
}

/// What a query holds, counted as it reads: every point taken is checked
/// against the budget before more is read; what is let go is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    limits: QueryLimits,
    points: usize,
    bytes: u64,
}

impl Held {
    /// Nothing held yet.
    pub fn new(limits: QueryLimits) -> Self {
        Self {
            limits,
            points: 0,
            bytes: 0,
        }
    }

    /// The budget.
    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// Points held now.
    pub fn points(&self) -> usize {
        self.points
    }

    /// Checks a count of matched series, before their data is read.
    pub fn series(&self, matched: usize) -> Result<(), OverBudget> {
        if matched > self.limits.max_series {
            return Err(OverBudget::Series {
                matched,
                max: self.limits.max_series,
            });
        }
        Ok(())
    }

    /// Takes `points` weighing `bytes`; fails if that goes over either
    /// bound.
    pub fn take(&mut self, points: usize, bytes: u64) -> Result<(), OverBudget> {
        self.points = self.points.saturating_add(points);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.points > self.limits.max_points {
            return Err(OverBudget::Points {
                max: self.limits.max_points,
            });
        }
        if self.bytes > self.limits.max_bytes {
            return Err(OverBudget::Bytes {
                max: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Gives back what was let go.
    pub fn give_back(&mut self, points: usize, bytes: u64) {
        self.points = self.points.saturating_sub(points);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

const UNITS: [(&str, u128); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// `ns` exactly, in days to nanoseconds: `365d 1s`, `250ms`.
fn duration_text(ns: u128) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let mut rest = ns;
    let mut parts = Vec::new();
    for (name, unit) in UNITS {
        if rest >= unit {
            parts.push(format!("{}{name}", rest / unit));
            rest %= unit;
        }
    }
    parts.join(" ")
}

/// `ns` rounded up to a whole number of the unit below its largest:
/// `315.36s` → `5m 16s` (a form `step` accepts).
fn round_up(ns: u128) -> u128 {
    let i = UNITS
        .iter()
        .position(|(_, u)| ns >= *u)
        .unwrap_or(UNITS.len() - 1);
    let g = UNITS[(i + 1).min(UNITS.len() - 1)].1;
    ns.div_ceil(g) * g
}

/// Windows one series can have in `[from, to)` with `step`: the aligned
/// buckets the range touches.
pub fn buckets(from_ns: i64, to_ns: i64, step_ns: u64) -> u128 {
    let step = i128::from(step_ns.max(1));
    let first = i128::from(from_ns).div_euclid(step);
    let last = (i128::from(to_ns) - 1).div_euclid(step);
    u128::try_from(last - first + 1).unwrap_or(0)
}

impl Query {
    /// Checks what the query itself says against the budget, before
    /// anything is read: a step must not cut the range into more windows
    /// per series than `max_points` (one window per reading at worst
    /// would otherwise be built before it could be counted).
    pub fn plan(&self, limits: &QueryLimits) -> Result<(), OverBudget> {
        let Some(step) = self.step_ns else {
            return Ok(());
        };
        let n = buckets(self.from_ns, self.to_ns, step);
        if n > limits.max_points as u128 {
            let range = (i128::from(self.to_ns) - i128::from(self.from_ns)).max(0) as u128;
            let min_step = range.div_ceil(limits.max_points.max(1) as u128);
            return Err(OverBudget::Step {
                step: duration_text(u128::from(step)),
                range: duration_text(range),
                buckets: n,
                max: limits.max_points,
                min_step: duration_text(round_up(min_step.max(1))),
            });
        }
        Ok(())
    }
}

/// A parsed series selector; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Metric name to match, if any.
    pub metric: Option<String>,
    /// Tags that must be present with these values.
    pub tags: Vec<(String, String)>,
}

impl Selector {
    /// Matches every series.
    pub fn all() -> Self {
        Self::default()
    }

    /// Parses `metric{k="v",…}`.
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        let err = |at, why| QueryError::Selector {
            selector: text.to_owned(),
            at,
            why,
        };
        let s = text.trim();
        if s.is_empty() || s == "*" {
            return Ok(Self::all());
        }
        let bytes = s.as_bytes();
        let name_end = s.find('{').unwrap_or(s.len());
        let metric = s[..name_end].trim();
        let mut sel = Selector {
            metric: (!metric.is_empty()).then(|| metric.to_owned()),
            tags: Vec::new(),
        };
        if let Some(m) = &sel.metric
            && let Some(pos) = m.find(|c: char| !(c.is_ascii_alphanumeric() || "_.:-/".contains(c)))
        {
            return Err(err(pos, "metric names use A-Z a-z 0-9 _ . : - /"));
        }
        if name_end == s.len() {
            return Ok(sel);
        }
        let mut i = name_end + 1;
        loop {
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'}' {
                i += 1;
                break;
            }
            let key_start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || b"_.:-/".contains(&bytes[i]))
            {
                i += 1;
            }
            if i == key_start {
                return Err(err(i, "expected a tag key or `}`"));
            }
            let key = s[key_start..i].to_owned();
            if bytes.get(i) != Some(&b'=') {
                return Err(err(i, "expected `=` after the tag key"));
            }
            i += 1;
            if bytes.get(i) != Some(&b'"') {
                return Err(err(i, "expected `\"` to open the tag value"));
            }
            i += 1;
            let mut value = String::new();
            let mut chars = s[i..].char_indices();
            let mut closed = None;
            while let Some((off, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = Some(i + off + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, e)) => value.push(e),
                        None => return Err(err(i + off, "dangling `\\` in the tag value")),
                    },
                    c => value.push(c),
                }
            }
            let Some(next) = closed else {
                return Err(err(s.len(), "unterminated tag value"));
            };
            i = next;
            sel.tags.push((key, value));
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(err(i, "expected `,` or `}`")),
            }
        }
        if i != bytes.len() {
            return Err(err(i, "unexpected text after `}`"));
        }
        Ok(sel)
    }

    /// True if `key` matches.
    pub fn matches(&self, key: &SeriesKey) -> bool {
        if let Some(m) = &self.metric
            && *m != key.metric
        {
            return false;
        }
        self.tags
            .iter()
            .all(|(k, v)| key.tag(k) == Some(v.as_str()))
    }
}

/// A resolved query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Which series.
    pub selector: Selector,
    /// Start, inclusive, ns since the epoch.
    pub from_ns: i64,
    /// End, exclusive, ns since the epoch.
    pub to_ns: i64,
    /// Re-bucket into aligned windows of this many ns.
    pub step_ns: Option<u64>,
    /// Include raw readings.
    pub raw: bool,
    /// Include stored window aggregates.
    pub aggregates: bool,
}

/// Query parameters as text, from a URL query string or the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryParams {
    /// Series selector; all series when absent.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Start: `now`, `-15m`, ns since the epoch or RFC 3339; default `-1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// End (exclusive), same forms; default `now` plus one second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Re-bucket by this duration (`10s`, `5m`), merging aggregates and
    /// sketches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// `raw`, `aggregates` or `all` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// Parses a time: `now`, `-<duration>`, integer ns since the epoch, or RFC
/// 3339.
pub fn parse_time(what: &'static str, text: &str, now_ns: i64) -> Result<i64, QueryError> {
    let bad = || QueryError::Time {
        what,
        text: text.to_owned(),
    };
    let t = text.trim();
    if t == "now" {
        return Ok(now_ns);
    }
    if let Some(rel) = t.strip_prefix('-')
        && let Ok(d) = humantime::parse_duration(rel)
    {
        let ns = i64::try_from(d.as_nanos()).map_err(|_| bad())?;
        return Ok(now_ns.saturating_sub(ns));
    }
    if let Ok(ns) = t.parse::<i64>() {
        return Ok(ns);
    }
    let st = humantime::parse_rfc3339_weak(t).map_err(|_| bad())?;
    let d = st
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?;
    i64::try_from(d.as_nanos()).map_err(|_| bad())
}

impl QueryParams {
    /// Resolves relative times against `now_ns` and checks everything.
    pub fn resolve(&self, now_ns: i64) -> Result<Query, QueryError> {
        let selector = Selector::parse(self.selector.as_deref().unwrap_or(""))?;
        let from_ns = match &self.from {
            Some(t) => parse_time("from", t, now_ns)?,
            None => now_ns.saturating_sub(3_600_000_000_000),
        };
        let to_ns = match &self.to {
            Some(t) => parse_time("to", t, now_ns)?,
            None => now_ns.saturating_add(1_000_000_000),
        };
        if from_ns >= to_ns {
            return Err(QueryError::EmptyRange {
                from: from_ns,
                to: to_ns,
            });
        }
        let step_ns = match &self.step {
            None => None,
            Some(s) => {
                let d = humantime::parse_duration(s).map_err(|_| QueryError::Step(s.clone()))?;
                let ns = u64::try_from(d.as_nanos()).map_err(|_| QueryError::Step(s.clone()))?;
                if ns == 0 {
                    return Err(QueryError::Step(s.clone()));
                }
                Some(ns)
            }
        };
        let (raw, aggregates) = match self.kind.as_deref() {
            None | Some("all") => (true, true),
            Some("raw") => (true, false),
            Some("aggregates") => (false, true),
            Some(other) => return Err(QueryError::Kind(other.to_owned())),
        };
        Ok(Query {
            selector,
            from_ns,
            to_ns,
            step_ns,
            raw,
            aggregates,
        })
    }
}

#[cfg(test)]
mod tests;
