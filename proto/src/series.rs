//! Series keys: a metric name and an ordered set of tags.
//!
//! A series is what one stream of readings belongs to, e.g.
//! `temperature{device="a1b2",sensor="sht4x",unit="Cel"}`.
//!
//! # Character set and bounds
//! - metric names: 1 to [`MAX_METRIC_LEN`] bytes of `A-Z a-z 0-9 _ . : - /`,
//!   starting with a letter or `_`;
//! - tag keys: 1 to [`MAX_TAG_KEY_LEN`] bytes, same characters and first
//!   character as metric names;
//! - tag values: 1 to [`MAX_TAG_VALUE_LEN`] bytes of UTF-8 without control
//!   characters;
//! - at most [`MAX_TAGS`] tags, sorted by key in byte order, keys unique.
//!
//! Sorted, unique keys make a series key canonical: equal series encode to
//! equal bytes, so stores can index by the encoding.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::wire_struct;

/// Longest metric name, in bytes.
pub const MAX_METRIC_LEN: usize = 128;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY_LEN: usize = 64;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE_LEN: usize = 128;
/// Most tags on one series.
pub const MAX_TAGS: usize = 16;

wire_struct! {
    /// One `key=value` label of a series.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Tag {
        /// Tag key, e.g. `device`.
        pub key: String,
        /// Tag value, e.g. `a1b2c3`.
        pub value: String,
    }
}

wire_struct! {
    /// A metric name and its tags; see the module docs for the rules.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct SeriesKey {
        /// Metric name, e.g. `temperature`.
        pub metric: String,
        /// Tags sorted by key.
        pub tags: Vec<Tag>,
    }
}

/// What is wrong with a series key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SeriesError {
    /// The metric name is empty, too long or has a character outside the set.
    #[error("metric name {name:?}: {why}")]
    BadMetric {
        /// The offending name.
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// A tag key is empty, too long or has a character outside the set.
    #[error("tag key {key:?}: {why}")]
    BadTagKey {
        /// The offending key.
        key: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// A tag value is empty, too long or has a control character.
    #[error("value of tag {key:?}: {why}")]
    BadTagValue {
        /// The key whose value is wrong.
        key: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// More than [`MAX_TAGS`] tags.
    #[error("{count} tags, at most {MAX_TAGS} allowed")]
    TooManyTags {
        /// How many tags there were.
        count: usize,
    },
    /// Tags are not sorted by key, or a key repeats.
    #[error("tag {key:?} is out of order or repeated (tags must be sorted by key, keys unique)")]
    TagOrder {
        /// The first key out of place.
        key: String,
    },
}

fn check_name(name: &str, max: usize) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err("empty");
    };
    if bytes.len() > max {
        return Err("too long");
    }
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return Err("must start with a letter or '_'");
    }
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-' | b'/'))
    {
        return Err("only A-Z a-z 0-9 _ . : - / are allowed");
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("empty");
    }
    if value.len() > MAX_TAG_VALUE_LEN {
        return Err("too long");
    }
    if value.chars().any(char::is_control) {
        return Err("control characters are not allowed");
    }
    Ok(())
}

impl SeriesKey {
    /// Builds a canonical series key: tags are sorted by key, then checked.
    pub fn new<M, K, V>(
        metric: M,
        tags: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, SeriesError>
    where
        M: Into<String>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut tags: Vec<Tag> = tags
            .into_iter()
            .map(|(k, v)| Tag {
                key: k.into(),
                value: v.into(),
            })
            .collect();
        tags.sort();
        let key = Self {
            metric: metric.into(),
            tags,
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks every rule in the module docs.
    pub fn validate(&self) -> Result<(), SeriesError> {
        check_name(&self.metric, MAX_METRIC_LEN).map_err(|why| SeriesError::BadMetric {
            name: self.metric.clone(),
            why,
        })?;
        if self.tags.len() > MAX_TAGS {
            return Err(SeriesError::TooManyTags {
                count: self.tags.len(),
            });
        }
        for (i, tag) in self.tags.iter().enumerate() {
            check_name(&tag.key, MAX_TAG_KEY_LEN).map_err(|why| SeriesError::BadTagKey {
                key: tag.key.clone(),
                why,
            })?;
            check_value(&tag.value).map_err(|why| SeriesError::BadTagValue {
                key: tag.key.clone(),
                why,
            })?;
            if i > 0 && self.tags[i - 1].key >= tag.key {
                return Err(SeriesError::TagOrder {
                    key: tag.key.clone(),
                });
            }
        }
        Ok(())
    }

    /// The value of tag `key`, if the series has it.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .binary_search_by(|t| t.key.as_str().cmp(key))
            .ok()
            .map(|i| self.tags[i].value.as_str())
    }
}

/// Prometheus-style text: `metric{k="v",k2="v2"}`, quotes and backslashes in
/// values escaped.
impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.metric)?;
        if self.tags.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, tag) in self.tags.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}=\"", tag.key)?;
            for c in tag.value.chars() {
                if matches!(c, '"' | '\\') {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn new_sorts_tags_and_formats() {
        let key = SeriesKey::new("temperature", [("sensor", "sht4x"), ("device", "a1")]).unwrap();
        assert_eq!(
            key.to_string(),
            r#"temperature{device="a1",sensor="sht4x"}"#
        );
        assert_eq!(key.tag("sensor"), Some("sht4x"));
        assert_eq!(key.tag("unit"), None);
    }

    #[test]
    fn rules_are_enforced_with_named_errors() {
        let err = SeriesKey::new("9lives", [("a", "b")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"metric name "9lives": must start with a letter or '_'"#
        );
        let err = SeriesKey::new("m", [("a b", "c")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"tag key "a b": only A-Z a-z 0-9 _ . : - / are allowed"#
        );
        let err = SeriesKey::new("m", [("a", "")]).unwrap_err();
        assert_eq!(err.to_string(), r#"value of tag "a": empty"#);
        let err = SeriesKey::new("m", [("a", "x"), ("a", "y")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"tag "a" is out of order or repeated (tags must be sorted by key, keys unique)"#
        );
        let many = (0..17).map(|i| (alloc::format!("k{i:02}"), "v"));
        assert_eq!(
            SeriesKey::new("m", many).unwrap_err(),
            SeriesError::TooManyTags { count: 17 }
        );
        let long = "x".repeat(MAX_METRIC_LEN + 1);
        assert!(matches!(
            SeriesKey::new(long, [("a", "b")]),
            Err(SeriesError::BadMetric {
                why: "too long",
                ..
            })
        ));
    }

    #[test]
    fn display_escapes_quotes() {
        let key = SeriesKey::new("m", [("k", r#"a"b\c"#)]).unwrap();
        assert_eq!(key.to_string(), r#"m{k="a\"b\\c"}"#);
    }
}
