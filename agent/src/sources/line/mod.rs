//! Influx line protocol: the parser. Pure — no I/O, no clock (the default
//! timestamp is passed in).
//!
//! # Accepted input
//! What Telegraf and the Influx client libraries emit:
//!
//! ```text
//! measurement[,tag=value...] field=value[,field=value...] [timestamp]
//! ```
//!
//! - Lines end at `\n` (a trailing `\r` is ignored), except inside a quoted
//!   string field value, which may hold newlines ([`LineSplitter`]). Blank
//!   lines and lines whose first non-blank byte is `#` are skipped.
//! - Escapes: in the measurement, tag keys, tag values and field keys, a
//!   backslash before `,`, ` `, `=` or `\` escapes that byte; any other
//!   backslash is literal. Unescaped, `,` and ` ` end the measurement, `,`,
//!   `=` and ` ` end keys, and `,` and ` ` end tag values. In a tag value
//!   the escaped byte is kept (`host=rack\ 1` is `rack 1`); in the
//!   measurement, tag keys and field keys, which become Ferry names (no
//!   spaces or commas), **an escaped byte becomes `_`**: `cpu\ load` is
//!   stored as `cpu_load`, `my\,m f\=x=1` as the series `my_m_f_x`.
//! - Field values: floats (`1`, `-1.5`, `.5`, `1e-3`), integers (`-12i`),
//!   unsigned (`12u`) and booleans (`t T true True TRUE f F false False
//!   FALSE`; 1.0 and 0.0). Integers and unsigned become `f64` (beyond 2^53
//!   they round). Quoted strings (`status="ok"`, with `\"` and `\\`
//!   escapes, may span lines): Ferry stores numbers, so by default
//!   ([`StringFields::Skip`]) a string field is skipped and counted
//!   ([`Parsed::string_fields_skipped`]) and the line's numeric fields are
//!   kept; with [`StringFields::Reject`] (`string_fields = "reject"`) the
//!   line is rejected whole.
//! - Timestamp: an integer in the configured [`Precision`]; absent, the
//!   chunk's `now_ns`. Sections are separated by runs of spaces or tabs.
//!
//! # Mapping to series
//! Each field becomes a reading of the series `<measurement>_<field>` (as
//! Telegraf's Prometheus output names them) with the line's tags, sorted by
//! [`SeriesKey::new`](ferry_proto::series::SeriesKey::new). Names must satisfy [`ferry_proto::series`]'s rules;
//! a line that breaks one is rejected with an error naming the offending
//! name. A line is accepted whole (less its skipped string fields) or
//! rejected whole. Examples:
//!
//! | line | series stored |
//! | --- | --- |
//! | `cpu,host=a usage_idle=97.5,usage_user=1.5` | `cpu_usage_idle{host="a"}`, `cpu_usage_user{host="a"}` |
//! | `env,room=lab temp=20.5,status="ok"` | `env_temp{room="lab"}` (one string field skipped) |
//! | `disk\ io,dev=sda reads=12i` | `disk_io_reads{dev="sda"}` |
//!
//! Readings of a chunk are grouped into one [`SeriesReadings`] per series, in
//! order of first appearance, readings in input order. Their `origin` (what
//! loss is accounted per) is the value of the configured device tag when the
//! line has it, else the source's name.
//!
//! Errors ([`LineError`]) name what was wrong and the 1-based byte column in
//! the line; line numbers are 1-based and count `\n`s in the chunk.
//!
//! # Layout
//! [`error`](LineError) why a line is rejected; `split` where lines end
//! ([`LineSplitter`]); `scan` key sections, fields and the [`KeyCache`]
//! ([`ChunkParser`]); `number` field values and timestamps; `chunk` how a
//! stream's buffer is cut into chunks of complete lines ([`Chunker`]).

mod chunk;
mod error;
mod heap;
mod key;
mod number;
mod scan;
mod split;
#[cfg(test)]
mod tests;

use std::fmt;

use crate::journal::SeriesReadings;

/// The parser's maps: keyed by input bytes, so seeded (no chosen-collision
/// floods), and with a hasher much faster than SipHash on short keys.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Longest name or value quoted in an error message, in bytes.
const MAX_QUOTED: usize = 64;

pub use self::chunk::{Chunk, Chunker, Piece, split_datagram};
pub use self::error::{LineError, NameElement};
pub use self::heap::series_key_heap;
use self::heap::*;
use self::key::*;
use self::number::*;
pub use self::scan::{ChunkParser, KeyCache};
pub use self::split::{LineSplitter, count_newlines};

/// The unit of line timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum Precision {
    /// Nanoseconds (`ns`, Influx's default).
    #[default]
    #[serde(rename = "ns")]
    Nanoseconds,
    /// Microseconds (`us`).
    #[serde(rename = "us")]
    Microseconds,
    /// Milliseconds (`ms`).
    #[serde(rename = "ms")]
    Milliseconds,
    /// Seconds (`s`).
    #[serde(rename = "s")]
    Seconds,
}

impl Precision {
    /// Nanoseconds in one unit.
    pub fn nanos(self) -> i64 {
        match self {
            Self::Nanoseconds => 1,
            Self::Microseconds => 1_000,
            Self::Milliseconds => 1_000_000,
            Self::Seconds => 1_000_000_000,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nanoseconds => "ns",
            Self::Microseconds => "us",
            Self::Milliseconds => "ms",
            Self::Seconds => "s",
        })
    }
}

/// What a chunk parsed into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// One group per series, in order of first appearance.
    pub readings: Vec<SeriesReadings>,
    /// Rejected lines: `(line number, why)`.
    pub errors: Vec<(usize, LineError)>,
    /// Lines accepted (blank and comment lines are not counted).
    pub lines_accepted: u64,
    /// Readings in `readings`.
    pub readings_accepted: u64,
    /// Accepted lines parsed without caching their series, because the
    /// memory budget had no room for it (their readings are in `readings`,
    /// in groups of their own).
    pub lines_uncached: u64,
    /// String fields skipped in accepted lines ([`StringFields::Skip`]).
    pub string_fields_skipped: u64,
}

impl Parsed {
    /// Heap bytes its readings hold, as charged to a memory budget while
    /// the chunk waits for its commit: per group its series key, origin and
    /// readings (with `malloc`'s overhead).
    pub fn heap_bytes(&self) -> u64 {
        self.readings
            .iter()
            .map(|g| {
                96 + series_key_heap(&g.series)
                    + alloc(g.origin.len())
                    + alloc(g.readings.len() * 16)
            })
            .sum::<u64>()
            + alloc(self.readings.len() * 96)
    }
}

/// What a string field (`status="ok"`) does to its line. Ferry stores
/// numbers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringFields {
    /// The field is skipped and counted
    /// ([`health::SKIPPED_STRING_FIELDS`](ferry_proto::health::SKIPPED_STRING_FIELDS));
    /// the line's numeric fields are stored (what Telegraf writes keeps
    /// its numbers).
    #[default]
    Skip,
    /// The whole line is rejected ([`LineError::StringField`]).
    Reject,
}

/// Parses a chunk of lines; see the module docs. The last line needs no
/// terminating newline.
pub fn parse_chunk(
    bytes: &[u8],
    precision: Precision,
    now_ns: i64,
    source_name: &str,
    device_tag: &str,
) -> (Vec<SeriesReadings>, Vec<(usize, LineError)>) {
    let parsed = parse_lines(bytes, precision, now_ns, source_name, device_tag);
    (parsed.readings, parsed.errors)
}

/// [`parse_chunk`] with the counts sources report.
pub fn parse_lines(
    bytes: &[u8],
    precision: Precision,
    now_ns: i64,
    source_name: &str,
    device_tag: &str,
) -> Parsed {
    let mut cache = KeyCache::default();
    let mut parser = ChunkParser::new(precision, now_ns, source_name, device_tag, &mut cache);
    let mut splitter = LineSplitter::default();
    let mut pos = 0;
    let mut line_no = 1;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let (line, next, newlines) = match splitter.next_end(rest) {
            Some(end) => (&rest[..end], pos + end + 1, splitter.newlines()),
            None => (rest, bytes.len(), count_newlines(rest)),
        };
        parser.push_line(line_no, line);
        line_no += 1 + newlines;
        pos = next;
    }
    parser.finish()
}
