//! How a stored series becomes a Prometheus series.
//!
//! The rule (docs/prometheus.md, "Series naming"):
//! - **Metric name**: the series' metric with every byte outside
//!   `[a-zA-Z0-9_:]` replaced by `_` (`cpu.load-1` → `cpu_load_1`). A metric
//!   that starts with a digit cannot happen (series rules forbid it).
//! - **Labels**: every tag, its key sanitised the same way (`:` too, which
//!   label names may not hold). A key that would start with `__` (reserved
//!   by Prometheus) gets the prefix `tag` (`__x` → `tag__x`). Values are kept
//!   byte for byte. Two keys that sanitise to the same name keep the first
//!   (tags are sorted by key, so the choice is stable).
//! - **Raw readings** are samples of the metric name at their own timestamp.
//! - **Window aggregates** of `[start, start + len)` are samples at the
//!   window's *end* (the instant they describe up to) under
//!   `<name>_count`, `<name>_sum`, `<name>_min`, `<name>_max`, and, when the
//!   window carries a quantile sketch, `<name>` with a `quantile` label for
//!   each configured quantile (the summary convention). Each value is the
//!   window's own, not a running total.
//!
//! - **The agent**: at ingest the collector adds the tag `agent` = the
//!   Common Name of the sending agent's certificate to every series it
//!   stores ([`with_agent`]), as Prometheus adds its target labels. A
//!   payload tag already named `agent` is kept, renamed `exported_agent`
//!   (`exported_exported_agent` if that too is taken), as Prometheus does
//!   with `honor_labels: false`. A payload carries at most
//!   [`MAX_TAGS`] tags; a stored series at most [`MAX_STORED_TAGS`].
//!
//! Label sets are returned sorted by name with `__name__` first, which is
//! the order both Prometheus' remote_write and its JSON API use.

use ferry_proto::series::{MAX_TAGS, SeriesKey, Tag};

/// The label that holds the metric name.
pub const NAME: &str = "__name__";
/// The label that holds a sketch quantile of a window aggregate.
pub const QUANTILE: &str = "quantile";
/// Quantiles exported for windows with sketches unless configured otherwise.
pub const DEFAULT_QUANTILES: [f64; 4] = [0.5, 0.9, 0.95, 0.99];

/// The tag the collector adds to every stored series: the sending agent's
/// certificate identity.
pub const AGENT: &str = "agent";
/// The prefix a payload tag gets when its key is taken by [`AGENT`].
pub const EXPORTED_PREFIX: &str = "exported_";
/// Most tags on a stored series: a payload's [`MAX_TAGS`] plus [`AGENT`].
pub const MAX_STORED_TAGS: usize = MAX_TAGS + 1;

/// `key` as the collector stores it for `agent`: with the tag
/// `agent="<agent>"`, a payload tag of that name renamed
/// `exported_agent` (see the module docs). Tags stay sorted.
pub fn with_agent(key: &SeriesKey, agent: &str) -> SeriesKey {
    let mut tags: Vec<Tag> = key.tags.clone();
    if let Some(pos) = tags.iter().position(|t| t.key == AGENT) {
        let mut new_key = format!("{EXPORTED_PREFIX}{AGENT}");
        while tags.iter().any(|t| t.key == new_key) {
            new_key.insert_str(0, EXPORTED_PREFIX);
        }
        tags[pos].key = new_key;
    }
    tags.push(Tag {
        key: AGENT.to_owned(),
        value: agent.to_owned(),
    });
    tags.sort();
    SeriesKey {
        metric: key.metric.clone(),
        tags,
    }
}

/// One of the series a window aggregate is exported as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggregatePart {
    /// Readings in the window: `<name>_count`.
    Count,
    /// Their sum: `<name>_sum`.
    Sum,
    /// The smallest: `<name>_min`.
    Min,
    /// The largest: `<name>_max`.
    Max,
    /// A sketch quantile: `<name>{quantile="q"}`.
    Quantile(f64),
}

impl AggregatePart {
    /// The suffix this part adds to the metric name (empty for quantiles).
    pub fn suffix(self) -> &'static str {
        match self {
            AggregatePart::Count => "_count",
            AggregatePart::Sum => "_sum",
            AggregatePart::Min => "_min",
            AggregatePart::Max => "_max",
            AggregatePart::Quantile(_) => "",
        }
    }

    /// The four parts every window has (quantiles depend on its sketch).
    pub const PLAIN: [AggregatePart; 4] = [
        AggregatePart::Count,
        AggregatePart::Sum,
        AggregatePart::Min,
        AggregatePart::Max,
    ];
}

/// A label set: `(name, value)` sorted by name, `__name__` first.
pub type Labels = Vec<(String, String)>;

/// `metric` as a Prometheus metric name.
pub fn metric_name(metric: &str) -> String {
    sanitize(metric, true)
}

/// A tag key as a Prometheus label name.
pub fn label_name(key: &str) -> String {
    let name = sanitize(key, false);
    if name.starts_with("__") {
        format!("tag{name}")
    } else {
        name
    }
}

/// The labels of a stored series' raw readings.
pub fn raw_labels(key: &SeriesKey) -> Labels {
    labels(key, "", None)
}

/// The labels of one part of a stored series' window aggregates.
pub fn aggregate_labels(key: &SeriesKey, part: AggregatePart) -> Labels {
    let quantile = match part {
        AggregatePart::Quantile(q) => Some(format_quantile(q)),
        _ => None,
    };
    labels(key, part.suffix(), quantile)
}

/// A quantile as its label value: the shortest text that reads back as the
/// same `f64` (`0.5`, `0.99`), as Prometheus' client libraries write it.
pub fn format_quantile(q: f64) -> String {
    format!("{q}")
}

fn labels(key: &SeriesKey, suffix: &str, quantile: Option<String>) -> Labels {
    let mut out: Labels = Vec::with_capacity(key.tags.len() + 2);
    out.push((
        NAME.to_owned(),
        format!("{}{suffix}", metric_name(&key.metric)),
    ));
    let mut quantile = quantile;
    for tag in &key.tags {
        let name = label_name(&tag.key);
        if quantile.is_some() && name == QUANTILE {
            // The window's own quantile label wins over a tag of that name.
            continue;
        }
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        out.push((name, tag.value.clone()));
    }
    if let Some(q) = quantile.take() {
        out.push((QUANTILE.to_owned(), q));
    }
    out[1..].sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn sanitize(text: &str, colon_ok: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => b as char,
            b':' if colon_ok => ':',
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(metric: &str, tags: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new(metric, tags.iter().copied()).expect("valid key")
    }

    fn pairs(labels: &Labels) -> Vec<(&str, &str)> {
        labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn metric_names_keep_only_prometheus_characters() {
        assert_eq!(metric_name("cpu.load-1/x:y"), "cpu_load_1_x:y");
        assert_eq!(label_name("a:b.c"), "a_b_c");
        assert_eq!(label_name("__secret"), "tag__secret");
    }

    #[test]
    fn raw_labels_are_the_name_then_sorted_tags() {
        let k = key("temperature", &[("sensor", "sht4x"), ("device", "a1")]);
        assert_eq!(
            pairs(&raw_labels(&k)),
            [
                ("__name__", "temperature"),
                ("device", "a1"),
                ("sensor", "sht4x")
            ]
        );
    }

    #[test]
    fn keys_that_sanitise_alike_keep_the_first() {
        let k = key("m", &[("a.b", "1"), ("a-b", "2")]);
        // Sorted by key: "a-b" < "a.b", so "a-b" is first and wins.
        assert_eq!(pairs(&raw_labels(&k)), [("__name__", "m"), ("a_b", "2")]);
    }

    #[test]
    fn the_agent_tag_is_added_and_a_payload_agent_exported() {
        let k = key("t", &[("device", "d1")]);
        assert_eq!(
            with_agent(&k, "gw-1").to_string(),
            r#"t{agent="gw-1",device="d1"}"#
        );
        let k = key("t", &[("agent", "fake"), ("zone", "z")]);
        assert_eq!(
            with_agent(&k, "gw-1").to_string(),
            r#"t{agent="gw-1",exported_agent="fake",zone="z"}"#
        );
        let k = key("t", &[("agent", "a"), ("exported_agent", "b")]);
        assert_eq!(
            with_agent(&k, "gw-1").to_string(),
            r#"t{agent="gw-1",exported_agent="b",exported_exported_agent="a"}"#
        );
        // A payload at the limit stores one tag more.
        let full: Vec<(String, String)> = (0..MAX_TAGS)
            .map(|i| (format!("k{i:02}"), "v".to_owned()))
            .collect();
        let k = SeriesKey::new("t", full).unwrap();
        assert_eq!(with_agent(&k, "gw").tags.len(), MAX_STORED_TAGS);
    }

    #[test]
    fn aggregates_get_suffixes_and_quantiles_a_label() {
        let k = key("humidity", &[("device", "d")]);
        assert_eq!(
            pairs(&aggregate_labels(&k, AggregatePart::Max)),
            [("__name__", "humidity_max"), ("device", "d")]
        );
        assert_eq!(
            pairs(&aggregate_labels(&k, AggregatePart::Quantile(0.99))),
            [
                ("__name__", "humidity"),
                ("device", "d"),
                ("quantile", "0.99")
            ]
        );
        let clash = key("h", &[("quantile", "tag")]);
        assert_eq!(
            pairs(&aggregate_labels(&clash, AggregatePart::Quantile(0.5))),
            [("__name__", "h"), ("quantile", "0.5")]
        );
        assert_eq!(
            pairs(&raw_labels(&clash)),
            [("__name__", "h"), ("quantile", "tag")]
        );
    }
}
