//! What a PromQL expression evaluates to, and its JSON form in the
//! Prometheus HTTP API.
//!
//! Times are milliseconds since the epoch, as in Prometheus. Label sets are
//! sorted by name in byte order (`__name__` among them) and never hold an
//! empty value: Prometheus treats a missing label and an empty one alike.

use std::fmt::Write as _;
use std::sync::Arc;

/// A label set: `(name, value)` pairs sorted by name, names unique, values
/// not empty.
pub type Labels = Arc<Vec<(String, String)>>;

/// A series with its samples, `(ms, value)` in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its labels.
    pub labels: Labels,
    /// Samples in time order, one per millisecond at most.
    pub samples: Vec<(i64, f64)>,
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its labels.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

/// The result of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number, at the evaluation time.
    Scalar(f64),
    /// A string literal.
    String(String),
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector (an instant query of `x[5m]`) or a range query's
    /// result.
    Matrix(Vec<Series>),
}

impl Value {
    /// The API's `resultType`.
    pub fn result_type(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// `labels` without the label `name`.
pub fn without(labels: &Labels, name: &str) -> Labels {
    if labels.iter().any(|(n, _)| n == name) {
        Arc::new(labels.iter().filter(|(n, _)| n != name).cloned().collect())
    } else {
        labels.clone()
    }
}

/// The value of label `name`, if present.
pub fn get<'a>(labels: &'a Labels, name: &str) -> Option<&'a str> {
    labels
        .binary_search_by(|(n, _)| n.as_str().cmp(name))
        .ok()
        .map(|i| labels[i].1.as_str())
}

/// Builds a label set from pairs in any order; empty values are left out.
pub fn labels_of<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Labels {
    let mut v: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    v.sort();
    v.dedup_by(|a, b| a.0 == b.0);
    Arc::new(v)
}

/// A float as the API writes it: Go's `strconv.FormatFloat(v, 'f', -1,
/// 64)`, the shortest decimal that reads back the same, never an exponent;
/// `NaN`, `+Inf`, `-Inf`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A timestamp as the API writes it: seconds, with the milliseconds as up
/// to three fraction digits (`1700000000.05` is written `1700000000.050`,
/// as Prometheus does).
pub fn write_timestamp(out: &mut String, ms: i64) {
    let (sign, ms) = if ms < 0 { ("-", -ms) } else { ("", ms) };
    let _ = write!(out, "{sign}{}", ms / 1000);
    let frac = ms % 1000;
    if frac != 0 {
        let _ = write!(out, ".{frac:03}");
    }
}

/// Appends `s` as a JSON string.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a label set as a JSON object, in label order.
pub fn write_labels(out: &mut String, labels: &Labels) {
    out.push('{');
    for (i, (n, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, n);
        out.push(':');
        write_str(out, v);
    }
    out.push('}');
}

fn write_point(out: &mut String, ms: i64, v: &str) {
    out.push('[');
    write_timestamp(out, ms);
    out.push(',');
    write_str(out, v);
    out.push(']');
}

/// Appends the API's `data` object for `value` evaluated at `at_ms`:
/// `{"resultType": …, "result": …}`.
pub fn write_data(out: &mut String, value: &Value, at_ms: i64) {
    out.push_str("{\"resultType\":");
    write_str(out, value.result_type());
    out.push_str(",\"result\":");
    match value {
        Value::Scalar(v) => write_point(out, at_ms, &format_value(*v)),
        Value::String(s) => write_point(out, at_ms, s),
        Value::Vector(samples) => {
            out.push('[');
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.labels);
                out.push_str(",\"value\":");
                write_point(out, at_ms, &format_value(s.value));
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push('[');
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.labels);
                out.push_str(",\"values\":[");
                for (j, (t, v)) in s.samples.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_point(out, *t, &format_value(*v));
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_times_are_written_as_prometheus_does() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(1e-7), "0.0000001");
        let mut s = String::new();
        write_timestamp(&mut s, 1_700_000_000_050);
        s.push(' ');
        write_timestamp(&mut s, 1_700_000_000_000);
        s.push(' ');
        write_timestamp(&mut s, 1_700_000_000_781);
        assert_eq!(s, "1700000000.050 1700000000 1700000000.781");
    }

    #[test]
    fn data_objects_have_the_api_shapes() {
        let l = labels_of([("__name__", "up"), ("a", "x\"y")]);
        let mut s = String::new();
        write_data(
            &mut s,
            &Value::Vector(vec![Sample {
                labels: l.clone(),
                value: f64::NAN,
            }]),
            1000,
        );
        assert_eq!(
            s,
            r#"{"resultType":"vector","result":[{"metric":{"__name__":"up","a":"x\"y"},"value":[1,"NaN"]}]}"#
        );
        s.clear();
        write_data(&mut s, &Value::Vector(vec![]), 1000);
        assert_eq!(s, r#"{"resultType":"vector","result":[]}"#);
        s.clear();
        write_data(&mut s, &Value::Scalar(2.0), 1500);
        assert_eq!(s, r#"{"resultType":"scalar","result":[1.500,"2"]}"#);
        s.clear();
        write_data(
            &mut s,
            &Value::Matrix(vec![Series {
                labels: labels_of::<&str, &str>([]),
                samples: vec![(0, 1.0), (15_000, -1.5)],
            }]),
            0,
        );
        assert_eq!(
            s,
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[0,"1"],[15,"-1.5"]]}]}"#
        );
    }
}
