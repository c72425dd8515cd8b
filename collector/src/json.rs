//! How the HTTP API writes numbers JSON cannot carry (nanosecond timestamps
//! above 2^53, NaN and ±∞): as strings. The helpers live in
//! [`ferry_proto::json`], next to the query answer types that use them
//! ([`ferry_proto::query`]); the collector's other JSON (agents, devices,
//! the fleet page) uses them from here: `#[serde(with = "crate::json::ns")]`.

pub use ferry_proto::json::{ns, ns_u64, opt_value, parse_value, readings, value, value_text};
