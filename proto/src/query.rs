//! The collector's query answer (`GET /api/v1/query`, JSON): what the
//! collector's HTTP API serializes and what clients (`ferry-collector query`,
//! `ferry-agent watch`) read. One definition for both ends of that process
//! boundary.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// Readings and aggregates of one series, as a query returns them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesResult {
    /// The series in Prometheus text form (`metric{key="value",…}`, values
    /// escaped as [`SeriesKey`](crate::series::SeriesKey)'s `Display` does).
    pub series: String,
    /// Raw readings `[ts_ns, value]` in timestamp order (without a step).
    pub readings: Vec<(i64, f64)>,
    /// Windows in start order: stored aggregates, or with a step the
    /// re-bucketed readings and aggregates.
    pub windows: Vec<WindowRow>,
}

/// One window of a query result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRow {
    /// Window start, ns since the epoch.
    pub start_ns: i64,
    /// Window length, ns.
    pub len_ns: u64,
    /// Readings in the window.
    pub count: u64,
    /// Sum.
    pub sum: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Earliest value.
    pub first: f64,
    /// Latest value.
    pub last: f64,
    /// Median from the sketch (1% relative error), when there is one.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
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
