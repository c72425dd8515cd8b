//! Why a line was rejected: [`LineError`], naming what was wrong and where.

use std::fmt;

use ferry_proto::series::{MAX_METRIC_LEN, MAX_TAGS};

use super::*;

/// Which name of a line broke a series rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameElement {
    /// The measurement (the metric name's prefix).
    Measurement,
    /// A tag key.
    TagKey,
    /// The value of the tag with this key.
    TagValue(String),
    /// A field key (the metric name's suffix).
    Field,
}

impl fmt::Display for NameElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Measurement => f.write_str("measurement"),
            Self::TagKey => f.write_str("tag key"),
            Self::TagValue(key) => write!(f, "value of tag {key:?}"),
            Self::Field => f.write_str("field key"),
        }
    }
}

/// Why a line was rejected. `column` is the 1-based byte column in the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// The line starts with a separator instead of a measurement.
    #[error("column {column}: missing measurement")]
    MissingMeasurement {
        /// Where the measurement should be.
        column: usize,
    },
    /// `,=v` or `,,` in the tag set.
    #[error("column {column}: empty tag key")]
    EmptyTagKey {
        /// Where the key should be.
        column: usize,
    },
    /// A tag key not followed by `=`.
    #[error("column {column}: tag {key:?} has no '='")]
    MissingTagEquals {
        /// The tag key.
        key: String,
        /// Where `=` was expected.
        column: usize,
    },
    /// `key=` followed by a separator.
    #[error("column {column}: tag {key:?} has an empty value")]
    EmptyTagValue {
        /// The tag key.
        key: String,
        /// Where the value should be.
        column: usize,
    },
    /// The same tag key twice.
    #[error("column {column}: tag {key:?} appears twice")]
    DuplicateTag {
        /// The tag key.
        key: String,
        /// The second occurrence.
        column: usize,
    },
    /// More tags than a series may have.
    #[error("column {column}: {count} tags, at most {MAX_TAGS} allowed")]
    TooManyTags {
        /// How many tags the line has.
        count: usize,
        /// The first tag over the limit.
        column: usize,
    },
    /// The line ends after the measurement and tags.
    #[error("column {column}: no fields (expected field=value after the measurement and tags)")]
    MissingFields {
        /// Where the fields should be.
        column: usize,
    },
    /// `=v`, `,,` or a trailing `,` in the field set.
    #[error("column {column}: empty field key")]
    EmptyFieldKey {
        /// Where the key should be.
        column: usize,
    },
    /// A field key not followed by `=`.
    #[error("column {column}: field {key:?} has no '='")]
    MissingFieldEquals {
        /// The field key.
        key: String,
        /// Where `=` was expected.
        column: usize,
    },
    /// `key=` followed by a separator or the end of the line.
    #[error("column {column}: field {key:?} has no value")]
    EmptyFieldValue {
        /// The field key.
        key: String,
        /// Where the value should be.
        column: usize,
    },
    /// A quoted string value, under `string_fields = "reject"`.
    #[error("column {column}: field {key:?} is a string; Ferry stores numbers only")]
    StringField {
        /// The field key.
        key: String,
        /// The opening quote.
        column: usize,
    },
    /// A quoted string value without its closing quote.
    #[error("column {column}: field {key:?} has a string value without a closing quote")]
    UnterminatedString {
        /// The field key.
        key: String,
        /// The opening quote.
        column: usize,
    },
    /// A value that is no number or boolean.
    #[error(
        "column {column}: field {key:?} has invalid value {value:?} \
         (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"
    )]
    InvalidFieldValue {
        /// The field key.
        key: String,
        /// The value as written (clipped).
        value: String,
        /// The value's first byte.
        column: usize,
    },
    /// A number beyond its type's range (`i64`, `u64`, finite `f64`).
    #[error("column {column}: field {key:?} value {value:?} is out of range")]
    NumberOutOfRange {
        /// The field key.
        key: String,
        /// The value as written (clipped).
        value: String,
        /// The value's first byte.
        column: usize,
    },
    /// The same field key twice.
    #[error("column {column}: field {key:?} appears twice")]
    DuplicateField {
        /// The field key.
        key: String,
        /// The second occurrence.
        column: usize,
    },
    /// A name outside Ferry's series rules ([`ferry_proto::series`]).
    #[error("column {column}: {element} {name:?}: {why}")]
    BadName {
        /// Which name.
        element: NameElement,
        /// The name (clipped).
        name: String,
        /// The rule it breaks.
        why: &'static str,
        /// The name's first byte.
        column: usize,
    },
    /// `<measurement>_<field>` is longer than a metric name may be.
    #[error(
        "column {column}: metric name {name:?} (measurement_field) is longer than {MAX_METRIC_LEN} bytes"
    )]
    MetricTooLong {
        /// The metric name (clipped).
        name: String,
        /// The field key's first byte.
        column: usize,
    },
    /// Any other series rule (for rules added to `ferry-proto` later).
    #[error("column {column}: invalid series: {reason}")]
    InvalidSeries {
        /// The rule broken.
        reason: String,
        /// The measurement's first byte.
        column: usize,
    },
    /// A tag value that is not UTF-8.
    #[error("column {column}: invalid UTF-8 in a tag value")]
    InvalidUtf8 {
        /// The first invalid byte.
        column: usize,
    },
    /// A timestamp that is not an integer.
    #[error("column {column}: invalid timestamp {value:?} (expected an integer)")]
    InvalidTimestamp {
        /// The timestamp as written (clipped).
        value: String,
        /// The timestamp's first byte.
        column: usize,
    },
    /// A timestamp that does not fit in `i64` nanoseconds.
    #[error("column {column}: timestamp {value} ({precision}) is out of range")]
    TimestampOutOfRange {
        /// The timestamp as written (clipped).
        value: String,
        /// The configured precision.
        precision: Precision,
        /// The timestamp's first byte.
        column: usize,
    },
    /// Something after the timestamp.
    #[error("column {column}: unexpected text after the timestamp")]
    TrailingText {
        /// Its first byte.
        column: usize,
    },
    /// A line longer than the source allows (reported by sources, which
    /// skip the rest of it).
    #[error("line longer than {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
}

impl LineError {
    /// The 1-based byte column the error points at (1 for [`LineTooLong`](Self::LineTooLong)).
    pub fn column(&self) -> usize {
        match self {
            Self::MissingMeasurement { column }
            | Self::EmptyTagKey { column }
            | Self::MissingTagEquals { column, .. }
            | Self::EmptyTagValue { column, .. }
            | Self::DuplicateTag { column, .. }
            | Self::TooManyTags { column, .. }
            | Self::MissingFields { column }
            | Self::EmptyFieldKey { column }
            | Self::MissingFieldEquals { column, .. }
            | Self::EmptyFieldValue { column, .. }
            | Self::StringField { column, .. }
            | Self::UnterminatedString { column, .. }
            | Self::InvalidFieldValue { column, .. }
            | Self::NumberOutOfRange { column, .. }
            | Self::DuplicateField { column, .. }
            | Self::BadName { column, .. }
            | Self::MetricTooLong { column, .. }
            | Self::InvalidSeries { column, .. }
            | Self::InvalidUtf8 { column }
            | Self::InvalidTimestamp { column, .. }
            | Self::TimestampOutOfRange { column, .. }
            | Self::TrailingText { column } => *column,
            Self::LineTooLong { .. } => 1,
        }
    }
}
