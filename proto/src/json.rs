//! How the collector's HTTP API writes numbers JSON cannot carry: nanosecond timestamps
//! (above 2^53, where JavaScript's numbers lose precision) and float values
//! (NaN and ±∞, which JSON has no literal for).
//!
//! Both are JSON **strings**, as Prometheus' HTTP API does for values:
//!
//! - a timestamp or duration in ns is its decimal integer,
//!   `"1700000000000000000"`;
//! - a value is the shortest decimal that reads back as the same `f64`
//!   (`"21.5"`, `"0.30000000000000004"`, `"-0"`), or `"NaN"`, `"+Inf"`,
//!   `"-Inf"`.
//!
//! Readers accept these strings and, for older answers, plain JSON numbers
//! (`null` reads as NaN). Only human-readable formats get strings: the
//! MessagePack encodings keep their integers and floats.
//!
//! The helpers are `#[serde(with = "…")]` modules: the [`query`](crate::query)
//! answer types use them, and so does the collector's other JSON (its
//! `json` module re-exports this one).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

/// The text of a value: shortest round-trip decimal, `NaN`, `+Inf`, `-Inf`.
pub fn value_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Reads a value's text (also `Inf`, `inf`, `+inf`, `nan`).
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

struct NsVisitor;

impl Visitor<'_> for NsVisitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nanoseconds as a decimal string or an integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} ns is out of range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        Ok(v as i64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.parse()
            .map_err(|_| E::custom(format!("{v:?} is not a nanosecond count")))
    }
}

struct ValueVisitor;

impl Visitor<'_> for ValueVisitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value as a string (\"21.5\", \"NaN\", \"+Inf\") or a number")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
    fn visit_none<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        parse_value(v).ok_or_else(|| E::custom(format!("{v:?} is not a value")))
    }
}

/// `#[serde(with = "crate::json::ns")]` for `i64` nanoseconds.
pub mod ns {
    use super::*;

    /// A string in human-readable formats, the integer otherwise.
    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(v)
        } else {
            s.serialize_i64(*v)
        }
    }

    /// A string or an integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        d.deserialize_any(NsVisitor)
    }
}

/// `#[serde(with = "crate::json::ns_u64")]` for `u64` nanoseconds.
pub mod ns_u64 {
    use super::*;

    /// A string in human-readable formats, the integer otherwise.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(v)
        } else {
            s.serialize_u64(*v)
        }
    }

    /// A string or an integer.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = d.deserialize_any(NsVisitor)?;
        u64::try_from(v).map_err(|_| de::Error::custom(format!("{v} ns is negative")))
    }
}

/// `#[serde(with = "crate::json::value")]` for an `f64` value.
pub mod value {
    use super::*;

    /// A string in human-readable formats, the float otherwise.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&value_text(*v))
        } else {
            s.serialize_f64(*v)
        }
    }

    /// A string, a number or null (NaN).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// `#[serde(with = "crate::json::opt_value")]` for an `Option<f64>`: `null`
/// when absent.
pub mod opt_value {
    use super::*;

    /// `null`, or as [`value`](super::value).
    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::value::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    /// `null` is absent; anything else as [`value`](super::value).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<f64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null or a value")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                super::value::deserialize(d).map(Some)
            }
        }
        d.deserialize_option(V)
    }
}

/// `#[serde(with = "crate::json::readings")]` for `Vec<(i64, f64)>`: pairs
/// `[ns, value]`, both as above.
pub mod readings {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Pair(
        #[serde(with = "super::ns")] i64,
        #[serde(with = "super::value")] f64,
    );

    /// A sequence of `[ns, value]` pairs.
    pub fn serialize<S: Serializer>(v: &[(i64, f64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&(t, x)| Pair(t, x)))
    }

    /// Pairs of strings or numbers.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(i64, f64)>, D::Error> {
        Ok(Vec::<Pair>::deserialize(d)?
            .into_iter()
            .map(|Pair(t, x)| (t, x))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Row {
        #[serde(with = "ns")]
        t: i64,
        #[serde(with = "value")]
        v: f64,
        #[serde(with = "opt_value")]
        q: Option<f64>,
        #[serde(with = "readings")]
        r: Vec<(i64, f64)>,
    }

    #[test]
    fn timestamps_and_special_values_survive_json() {
        let row = Row {
            t: 1_700_000_000_123_456_789,
            v: f64::NEG_INFINITY,
            q: None,
            r: vec![
                (9_007_199_254_740_993, f64::NAN),
                (-1, f64::INFINITY),
                (2, 0.1 + 0.2),
                (3, -0.0),
            ],
        };
        let text = serde_json::to_string(&row).unwrap();
        assert_eq!(
            text,
            r#"{"t":"1700000000123456789","v":"-Inf","q":null,"r":[["9007199254740993","NaN"],["-1","+Inf"],["2","0.30000000000000004"],["3","-0"]]}"#
        );
        let back: Row = serde_json::from_str(&text).unwrap();
        assert_eq!(back.t, row.t);
        assert_eq!(back.r[0].0, 9_007_199_254_740_993);
        assert!(back.r[0].1.is_nan());
        assert_eq!(back.r[1].1, f64::INFINITY);
        assert_eq!(back.r[2].1.to_bits(), (0.1f64 + 0.2).to_bits());
        assert_eq!(back.r[3].1.to_bits(), (-0.0f64).to_bits());
        // Older answers: plain numbers and null.
        let old: Row = serde_json::from_str(r#"{"t":5,"v":null,"q":1.5,"r":[[1,2.5]]}"#).unwrap();
        assert_eq!((old.t, old.q, old.r), (5, Some(1.5), vec![(1, 2.5)]));
        assert!(old.v.is_nan());
        // MessagePack keeps its numbers.
        let packed = crate::codec::to_vec(&row).unwrap();
        let back: Row = crate::codec::from_bytes("Row", &packed).unwrap();
        assert_eq!(back.t, row.t);
    }
}
