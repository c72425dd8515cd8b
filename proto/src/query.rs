//! The collector's query answer (`GET /api/v1/query`, JSON): what the
//! collector's HTTP API serializes and what clients (`ferry-collector query`,
//! `ferry-agent watch`) read. One definition for both ends of that process
//! boundary.
//!
//! In JSON, nanosecond times and values are strings ([`crate::json`]):
//! `"1700000000123456789"`, `"21.5"`, `"NaN"`, `"+Inf"`; readers also take
//! the plain numbers of older collectors.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// Readings and aggregates of one series, as a query returns them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesResult {
    /// The series in Prometheus text form (`metric{key="value",…}`, values
    /// escaped as [`SeriesKey`](crate::series::SeriesKey)'s `Display` does).
    pub series: String,
    /// Raw readings `[ts_ns, value]` in timestamp order (without a step);
    /// in JSON both as strings.
    #[serde(with = "crate::json::readings")]
    pub readings: Vec<(i64, f64)>,
    /// Windows in start order: stored aggregates, or with a step the
    /// re-bucketed readings and aggregates.
    pub windows: Vec<WindowRow>,
}

/// One window of a query result. In JSON, times and values are strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRow {
    /// Window start, ns since the epoch.
    #[serde(with = "crate::json::ns")]
    pub start_ns: i64,
    /// Window length, ns.
    #[serde(with = "crate::json::ns_u64")]
    pub len_ns: u64,
    /// Readings in the window.
    pub count: u64,
    /// Sum.
    #[serde(with = "crate::json::value")]
    pub sum: f64,
    /// Smallest.
    #[serde(with = "crate::json::value")]
    pub min: f64,
    /// Largest.
    #[serde(with = "crate::json::value")]
    pub max: f64,
    /// Earliest value.
    #[serde(with = "crate::json::value")]
    pub first: f64,
    /// Latest value.
    #[serde(with = "crate::json::value")]
    pub last: f64,
    /// Median from the sketch (1% relative error), when there is one.
    #[serde(with = "crate::json::opt_value")]
    pub p50: Option<f64>,
    /// 90th percentile.
    #[serde(with = "crate::json::opt_value")]
    pub p90: Option<f64>,
    /// 99th percentile.
    #[serde(with = "crate::json::opt_value")]
    pub p99: Option<f64>,
}

impl SeriesResult {
    /// The value of tag `key` in [`series`](Self::series), unescaped; `None`
    /// when the series has no such tag (or is not in the text form).
    pub fn tag(&self, key: &str) -> Option<String> {
        let (_, rest) = self.series.split_once('{')?;
        let mut chars = rest.chars();
        loop {
            let mut name = String::new();
            for c in chars.by_ref() {
                if c == '=' {
                    break;
                }
                name.push(c);
            }
            if chars.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '"' => break,
                    c => value.push(c),
                }
            }
            if name == key {
                return Some(value);
            }
            match chars.next()? {
                ',' => continue,
                _ => return None,
            }
        }
    }

    /// The latest value: of the last raw reading or the last window's,
    /// whichever is later.
    pub fn latest(&self) -> Option<(i64, f64)> {
        let raw = self.readings.last().copied();
        let window = self.windows.last().map(|w| (w.start_ns, w.last));
        raw.into_iter().chain(window).max_by_key(|x| x.0)
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use alloc::vec;

    use super::*;
    use crate::series::SeriesKey;

    fn result(series: &str) -> SeriesResult {
        SeriesResult {
            series: series.into(),
            readings: vec![],
            windows: vec![],
        }
    }

    #[test]
    fn tags_come_back_unescaped_from_the_text_form() {
        let key = SeriesKey::new(
            "temperature",
            [("device", "a\"1\\x"), ("sensor", "sht4x,b=\"c\"")],
        )
        .unwrap();
        let r = result(&key.to_string());
        assert_eq!(r.tag("device").as_deref(), Some("a\"1\\x"));
        assert_eq!(r.tag("sensor").as_deref(), Some("sht4x,b=\"c\""));
        assert_eq!(r.tag("unit"), None);
        assert_eq!(result("up").tag("device"), None, "no tags");
        assert_eq!(result("up{device=\"x").tag("device"), None, "cut short");
    }

    #[test]
    fn json_carries_times_and_values_as_strings_and_reads_older_numbers() {
        let r = SeriesResult {
            series: "t{device=\"a\"}".into(),
            readings: vec![(1_700_000_000_123_456_789, 21.5), (2, f64::NAN)],
            windows: vec![WindowRow {
                start_ns: 9_007_199_254_740_993,
                len_ns: 60_000_000_000,
                count: 3,
                sum: 0.1 + 0.2,
                min: f64::NEG_INFINITY,
                max: f64::INFINITY,
                first: -0.0,
                last: 4.0,
                p50: Some(2.0),
                p90: None,
                p99: None,
            }],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"series":"t{device=\"a\"}","readings":[["1700000000123456789","21.5"],["2","NaN"]],"windows":[{"start_ns":"9007199254740993","len_ns":"60000000000","count":3,"sum":"0.30000000000000004","min":"-Inf","max":"+Inf","first":"-0","last":"4","p50":"2","p90":null,"p99":null}]}"#
        );
        let back: SeriesResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back.readings[0], r.readings[0]);
        assert!(back.readings[1].1.is_nan());
        assert_eq!(back.windows, r.windows);
        // An older collector's numbers (NaN as null).
        let old = r#"{"series":"t","readings":[[5,null]],"windows":[{"start_ns":5,"len_ns":10,"count":1,"sum":1.5,"min":1.5,"max":1.5,"first":1.5,"last":1.5,"p50":null,"p90":1.5,"p99":null}]}"#;
        let old: SeriesResult = serde_json::from_str(old).unwrap();
        assert_eq!(old.readings[0].0, 5);
        assert!(old.readings[0].1.is_nan());
        assert_eq!((old.windows[0].len_ns, old.windows[0].p90), (10, Some(1.5)));
    }

    #[test]
    fn the_latest_value_is_the_later_of_raw_and_windowed() {
        let mut r = result("t");
        assert_eq!(r.latest(), None);
        r.readings = vec![(10, 1.0), (20, 2.0)];
        assert_eq!(r.latest(), Some((20, 2.0)));
        r.windows = vec![WindowRow {
            start_ns: 30,
            len_ns: 10,
            count: 2,
            sum: 7.0,
            min: 3.0,
            max: 4.0,
            first: 3.0,
            last: 4.0,
            p50: None,
            p90: None,
            p99: None,
        }];
        assert_eq!(r.latest(), Some((30, 4.0)));
    }
}
