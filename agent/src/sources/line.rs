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
//!   backslash before `,`, ` `, `=` or `\` stands for that byte; any other
//!   backslash is literal. Unescaped, `,` and ` ` end the measurement, `,`,
//!   `=` and ` ` end keys, and `,` and ` ` end tag values.
//! - Field values: floats (`1`, `-1.5`, `.5`, `1e-3`), integers (`-12i`),
//!   unsigned (`12u`) and booleans (`t T true True TRUE f F false False
//!   FALSE`; 1.0 and 0.0). Integers and unsigned become `f64` (beyond 2^53
//!   they round). Quoted strings reject the line: Ferry stores numbers.
//! - Timestamp: an integer in the configured [`Precision`]; absent, the
//!   chunk's `now_ns`. Sections are separated by runs of spaces or tabs.
//!
//! # Mapping to series
//! Each field becomes a reading of the series `<measurement>_<field>` (as
//! Telegraf's Prometheus output names them) with the line's tags, sorted by
//! [`SeriesKey::new`]. Names must satisfy [`ferry_proto::series`]'s rules;
//! a line that breaks one is rejected with an error naming the offending
//! name. A line is accepted whole or rejected whole.
//!
//! Readings of a chunk are grouped into one [`SeriesReadings`] per series, in
//! order of first appearance, readings in input order. Their `origin` (what
//! loss is accounted per) is the value of the configured device tag when the
//! line has it, else the source's name.
//!
//! Errors ([`LineError`]) name what was wrong and the 1-based byte column in
//! the line; line numbers are 1-based and count `\n`s in the chunk.

use std::borrow::Cow;

use smallvec::SmallVec;
use std::fmt;

use ferry_proto::batch::Reading;
use ferry_proto::series::{MAX_METRIC_LEN, MAX_TAGS, SeriesError, SeriesKey};

use crate::journal::SeriesReadings;

/// The parser's maps: keyed by input bytes, so seeded (no chosen-collision
/// floods), and with a hasher much faster than SipHash on short keys.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Longest name or value quoted in an error message, in bytes.
const MAX_QUOTED: usize = 64;

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
    /// A quoted string value.
    #[error("column {column}: field {key:?} is a string; Ferry stores numbers only")]
    StringField {
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

/// Newlines inside a line (only in quoted strings): what a line adds to the
/// line number beyond 1.
pub fn count_newlines(line: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', line).count()
}

/// Finds where lines end, resumably: feed it the bytes from the start of the
/// current line as they arrive, and it scans each byte once.
///
/// A line ends at `\n`, except inside a quoted string field value (`"`
/// right after a field's `=`, up to the next unescaped `"`); a comment line
/// ends at its first `\n`.
#[derive(Debug, Clone, Default)]
pub struct LineSplitter {
    scanned: usize,
    started: bool,
    comment: bool,
    fields: bool,
    after_eq: bool,
    quoted: bool,
    escaped: bool,
    /// Newlines inside quoted strings of the current line.
    inner: usize,
    /// The same, of the line [`next_end`](Self::next_end) last ended.
    last_inner: usize,
}

impl LineSplitter {
    /// The index in `buf` of the `\n` ending the current line, if `buf`
    /// holds it; the splitter is then ready for the next line, whose bytes
    /// start after that index. `buf` must start at the current line's start
    /// and extend what was passed before (until `Some` is returned).
    pub fn next_end(&mut self, buf: &[u8]) -> Option<usize> {
        // Outside a quoted string a line ends at the next `\n`, and only a
        // `"` before it can open one: lines without quotes (nearly all) are
        // found with one vectorised search, not byte by byte.
        if !self.quoted {
            let rest = &buf[self.scanned.min(buf.len())..];
            if let Some(nl) = memchr::memchr(b'\n', rest)
                && memchr::memchr(b'"', &rest[..nl]).is_none()
            {
                let end = self.scanned + nl;
                self.end_line();
                return Some(end);
            }
        }
        while self.scanned < buf.len() {
            let i = self.scanned;
            let b = buf[i];
            self.scanned += 1;
            if self.quoted {
                if b == b'\n' {
                    self.inner += 1;
                }
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.quoted = false;
                }
                continue;
            }
            if b == b'\n' {
                self.end_line();
                return Some(i);
            }
            if self.comment {
                continue;
            }
            if self.escaped {
                self.escaped = false;
                continue;
            }
            if !self.started {
                if b == b' ' || b == b'\t' {
                    continue;
                }
                self.started = true;
                if b == b'#' {
                    self.comment = true;
                    continue;
                }
            }
            let after_eq = self.after_eq;
            self.after_eq = false;
            match b {
                b'\\' => self.escaped = true,
                b' ' => self.fields = true,
                b'=' if self.fields => self.after_eq = true,
                b'"' if after_eq => self.quoted = true,
                _ => {}
            }
        }
        None
    }

    /// Forgets the current line (after skipping it).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn end_line(&mut self) {
        let inner = self.inner;
        self.reset();
        self.last_inner = inner;
    }

    /// Newlines inside the line [`next_end`](Self::next_end) last returned
    /// the end of (only quoted strings hold them): what that line adds to
    /// the line number beyond 1, without scanning it again.
    pub fn newlines(&self) -> usize {
        self.last_inner
    }
}

/// Series parsed from key sections, kept across the chunks of one source
/// connection: a series seen before costs a hash lookup, not a parse. It
/// holds at most about [`KeyCache::MAX_KEYS`] key sections (emptied at the
/// start of a chunk past that). One cache serves one source configuration
/// (the origin depends on its device tag and name).
#[derive(Debug, Default)]
pub struct KeyCache {
    /// Raw key section (measurement and tags as written) → index in
    /// `entries`.
    raw_keys: HashMap<Vec<u8>, usize>,
    /// Canonical key section (measurement, sorted tags) → index in `entries`,
    /// so that one series written with tags in different orders is one group.
    keys: HashMap<SeriesKey, usize>,
    entries: Vec<KeyEntry>,
    /// Per series (`KeyEntry::ids`): `(chunk, group)`, its group's index in
    /// the groups of chunk number `chunk`. Replaces a per-chunk map.
    group_of: Vec<(u64, u32)>,
    /// Chunks parsed with this cache (the current chunk's number).
    chunk: u64,
}

impl KeyCache {
    /// Key sections kept before the cache is emptied.
    pub const MAX_KEYS: usize = 65_536;
}

/// Parses lines one at a time into series groups: what [`parse_lines`] does,
/// for sources that split lines themselves.
#[derive(Debug)]
pub struct ChunkParser<'a> {
    precision: Precision,
    now_ns: i64,
    source_name: &'a str,
    device_tag: &'a str,
    cache: &'a mut KeyCache,
    groups: Vec<SeriesReadings>,
    errors: Vec<(usize, LineError)>,
    lines_accepted: u64,
}

#[derive(Debug)]
struct KeyEntry {
    /// The measurement as metric, and the tags.
    key: SeriesKey,
    origin: String,
    /// Unescaped field key → field id: an index in `series`.
    fields: HashMap<Vec<u8>, u32>,
    /// The series of each field.
    series: Vec<SeriesKey>,
    /// Each field's index in [`KeyCache::group_of`].
    ids: Vec<u32>,
}

struct Field<'l> {
    key: Cow<'l, [u8]>,
    column: usize,
    value: f64,
}

impl<'a> ChunkParser<'a> {
    /// A parser for one chunk; lines without a timestamp get `now_ns`.
    /// `cache` carries parsed keys from chunk to chunk of one source.
    pub fn new(
        precision: Precision,
        now_ns: i64,
        source_name: &'a str,
        device_tag: &'a str,
        cache: &'a mut KeyCache,
    ) -> Self {
        if cache.raw_keys.len() >= KeyCache::MAX_KEYS {
            *cache = KeyCache::default();
        }
        cache.chunk += 1;
        Self {
            precision,
            now_ns,
            source_name,
            device_tag,
            cache,
            groups: Vec::new(),
            errors: Vec::new(),
            lines_accepted: 0,
        }
    }

    /// Parses one line (without its `\n`).
    pub fn push_line(&mut self, line_no: usize, line: &[u8]) {
        match self.parse_line(line) {
            Ok(true) => self.lines_accepted += 1,
            Ok(false) => {}
            Err(e) => self.errors.push((line_no, e)),
        }
    }

    /// Records a line rejected before parsing (e.g. too long).
    pub fn reject(&mut self, line_no: usize, error: LineError) {
        self.errors.push((line_no, error));
    }

    /// Lines pushed so far that were rejected.
    pub fn rejected(&self) -> usize {
        self.errors.len()
    }

    /// The groups, errors and counts.
    pub fn finish(mut self) -> Parsed {
        self.groups.retain(|g| !g.readings.is_empty());
        let readings_accepted = self.groups.iter().map(|g| g.readings.len() as u64).sum();
        Parsed {
            readings: self.groups,
            errors: self.errors,
            lines_accepted: self.lines_accepted,
            readings_accepted,
        }
    }

    /// `Ok(false)` for blank and comment lines.
    fn parse_line(&mut self, line: &[u8]) -> Result<bool, LineError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let start = skip_blanks(line, 0);
        if start == line.len() || line[start] == b'#' {
            return Ok(false);
        }
        let key_end = key_section_end(line, start);
        let raw_key = &line[start..key_end];
        let cache = &mut *self.cache;
        let entry = match cache.raw_keys.get(raw_key) {
            Some(&e) => e,
            None => {
                let key = parse_key(line, start, key_end)?;
                let e = match cache.keys.get(&key) {
                    Some(&e) => e,
                    None => {
                        let origin = key.tag(self.device_tag).unwrap_or(self.source_name);
                        cache.entries.push(KeyEntry {
                            origin: origin.to_owned(),
                            key: key.clone(),
                            fields: HashMap::default(),
                            series: Vec::new(),
                            ids: Vec::new(),
                        });
                        cache.keys.insert(key, cache.entries.len() - 1);
                        cache.entries.len() - 1
                    }
                };
                cache.raw_keys.insert(raw_key.to_vec(), e);
                e
            }
        };

        let mut pos = skip_blanks(line, key_end);
        if pos == line.len() {
            return Err(LineError::MissingFields { column: pos + 1 });
        }
        // Most lines have a few fields: no allocation per line.
        let mut fields: SmallVec<[Field<'_>; 4]> = SmallVec::new();
        loop {
            let (key, stop) = scan(line, pos, b",= ");
            if key.is_empty() {
                return Err(LineError::EmptyFieldKey { column: pos + 1 });
            }
            if stop == line.len() || line[stop] != b'=' {
                return Err(LineError::MissingFieldEquals {
                    key: quote(&key),
                    column: stop + 1,
                });
            }
            let vstart = stop + 1;
            let vend = line[vstart..]
                .iter()
                .position(|&b| matches!(b, b',' | b' ' | b'\t'))
                .map_or(line.len(), |p| vstart + p);
            let value = parse_value(&key, &line[vstart..vend], vstart + 1)?;
            if fields.iter().any(|f| f.key == key) {
                return Err(LineError::DuplicateField {
                    key: quote(&key),
                    column: pos + 1,
                });
            }
            fields.push(Field {
                key,
                column: pos + 1,
                value,
            });
            if vend < line.len() && line[vend] == b',' {
                pos = vend + 1;
            } else {
                pos = vend;
                break;
            }
        }

        pos = skip_blanks(line, pos);
        let ts_ns = if pos == line.len() {
            self.now_ns
        } else {
            let tend = line[pos..]
                .iter()
                .position(|&b| b == b' ' || b == b'\t')
                .map_or(line.len(), |p| pos + p);
            let ts = parse_timestamp(&line[pos..tend], pos + 1, self.precision)?;
            let after = skip_blanks(line, tend);
            if after != line.len() {
                return Err(LineError::TrailingText { column: after + 1 });
            }
            ts
        };

        let cache = &mut *self.cache;
        let key_entry = &mut cache.entries[entry];
        let mut groups: SmallVec<[usize; 4]> = SmallVec::new();
        for field in &fields {
            let id = match key_entry.fields.get(&*field.key) {
                Some(&id) => id,
                None => {
                    let series = field_series(key_entry, field)?;
                    let id = key_entry.series.len() as u32;
                    key_entry.series.push(series);
                    key_entry.ids.push(cache.group_of.len() as u32);
                    cache.group_of.push((0, 0));
                    key_entry.fields.insert(field.key.to_vec(), id);
                    id
                }
            };
            let slot = &mut cache.group_of[key_entry.ids[id as usize] as usize];
            let group = if slot.0 == cache.chunk {
                slot.1 as usize
            } else {
                let g = self.groups.len();
                self.groups.push(SeriesReadings {
                    series: key_entry.series[id as usize].clone(),
                    origin: key_entry.origin.clone(),
                    readings: Vec::new(),
                });
                *slot = (cache.chunk, g as u32);
                g
            };
            groups.push(group);
        }
        for (field, g) in fields.iter().zip(groups) {
            self.groups[g].readings.push(Reading {
                ts_ns,
                value: field.value,
            });
        }
        Ok(true)
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn skip_blanks(line: &[u8], mut pos: usize) -> usize {
    while pos < line.len() && is_blank(line[pos]) {
        pos += 1;
    }
    pos
}

fn is_escapable(b: u8) -> bool {
    matches!(b, b',' | b' ' | b'=' | b'\\')
}

/// The first unescaped space at or after `pos` (or the end).
fn key_section_end(line: &[u8], mut pos: usize) -> usize {
    while pos < line.len() {
        match line[pos] {
            b'\\' if pos + 1 < line.len() && is_escapable(line[pos + 1]) => pos += 2,
            b' ' => return pos,
            _ => pos += 1,
        }
    }
    pos
}

/// Unescaped bytes from `pos` to the first unescaped byte of `stops` (or the
/// end), and where that is.
fn scan<'l>(line: &'l [u8], pos: usize, stops: &[u8]) -> (Cow<'l, [u8]>, usize) {
    let mut owned: Option<Vec<u8>> = None;
    let mut i = pos;
    while i < line.len() {
        let b = line[i];
        if b == b'\\' && i + 1 < line.len() && is_escapable(line[i + 1]) {
            owned
                .get_or_insert_with(|| line[pos..i].to_vec())
                .push(line[i + 1]);
            i += 2;
            continue;
        }
        if stops.contains(&b) {
            break;
        }
        if let Some(o) = &mut owned {
            o.push(b);
        }
        i += 1;
    }
    (owned.map_or(Cow::Borrowed(&line[pos..i]), Cow::Owned), i)
}

/// A name for an error message: lossy UTF-8, clipped.
fn quote(bytes: &[u8]) -> String {
    clip(&String::from_utf8_lossy(bytes))
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_QUOTED {
        return s.to_owned();
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

struct RawTag {
    key: String,
    value: String,
    key_column: usize,
    value_column: usize,
}

/// The measurement (as the metric) and tags of a key section, checked.
fn parse_key(line: &[u8], start: usize, end: usize) -> Result<SeriesKey, LineError> {
    let line = &line[..end];
    let (measurement, mut pos) = scan(line, start, b", ");
    if measurement.is_empty() {
        return Err(LineError::MissingMeasurement { column: start + 1 });
    }
    let measurement = String::from_utf8_lossy(&measurement).into_owned();
    let mut tags: Vec<RawTag> = Vec::new();
    while pos < line.len() {
        // `scan` stopped at an unescaped ',' (the section ends at a space).
        let kstart = pos + 1;
        let (key, stop) = scan(line, kstart, b",= ");
        if key.is_empty() {
            return Err(LineError::EmptyTagKey { column: kstart + 1 });
        }
        if stop == line.len() || line[stop] != b'=' {
            return Err(LineError::MissingTagEquals {
                key: quote(&key),
                column: stop + 1,
            });
        }
        let vstart = stop + 1;
        let (value, vstop) = scan(line, vstart, b", ");
        if value.is_empty() {
            return Err(LineError::EmptyTagValue {
                key: quote(&key),
                column: vstart + 1,
            });
        }
        // Escapes are ASCII, so the raw bytes are UTF-8 iff the value is.
        if let Err(e) = std::str::from_utf8(&line[vstart..vstop]) {
            return Err(LineError::InvalidUtf8 {
                column: vstart + e.valid_up_to() + 1,
            });
        }
        let value = String::from_utf8(value.into_owned()).expect("checked above");
        tags.push(RawTag {
            key: String::from_utf8_lossy(&key).into_owned(),
            value,
            key_column: kstart + 1,
            value_column: vstart + 1,
        });
        pos = vstop;
    }
    SeriesKey::new(
        measurement.as_str(),
        tags.iter().map(|t| (t.key.as_str(), t.value.as_str())),
    )
    .map_err(|e| series_error(e, &measurement, &tags, start + 1))
}

fn series_error(e: SeriesError, measurement: &str, tags: &[RawTag], column: usize) -> LineError {
    let key_column = |key: &str, nth: usize| {
        tags.iter()
            .filter(|t| t.key == key)
            .nth(nth)
            .map_or(column, |t| t.key_column)
    };
    match e {
        SeriesError::BadMetric { why, .. } => LineError::BadName {
            element: NameElement::Measurement,
            name: clip(measurement),
            why,
            column,
        },
        SeriesError::BadTagKey { key, why } => LineError::BadName {
            element: NameElement::TagKey,
            name: clip(&key),
            why,
            column: key_column(&key, 0),
        },
        SeriesError::BadTagValue { key, why } => {
            let tag = tags.iter().find(|t| t.key == key);
            LineError::BadName {
                element: NameElement::TagValue(clip(&key)),
                name: tag.map_or_else(String::new, |t| clip(&t.value)),
                why,
                column: tag.map_or(column, |t| t.value_column),
            }
        }
        SeriesError::TooManyTags { count } => LineError::TooManyTags {
            count,
            column: tags.get(MAX_TAGS).map_or(column, |t| t.key_column),
        },
        // Sorted tags are out of order only when a key repeats.
        SeriesError::TagOrder { key } => LineError::DuplicateTag {
            column: key_column(&key, 1),
            key: clip(&key),
        },
        other => LineError::InvalidSeries {
            reason: other.to_string(),
            column,
        },
    }
}

fn field_series(entry: &KeyEntry, field: &Field<'_>) -> Result<SeriesKey, LineError> {
    let name = String::from_utf8_lossy(&field.key);
    let measurement = &entry.key.metric;
    let mut metric = String::with_capacity(measurement.len() + 1 + name.len());
    metric.push_str(measurement);
    metric.push('_');
    metric.push_str(&name);
    // The measurement and tags are valid: only the field can be wrong here.
    let mut series = SeriesKey {
        metric,
        tags: Vec::new(),
    };
    match series.validate() {
        Ok(()) => {}
        Err(SeriesError::BadMetric { .. }) if series.metric.len() > MAX_METRIC_LEN => {
            return Err(LineError::MetricTooLong {
                name: clip(&series.metric),
                column: field.column,
            });
        }
        Err(SeriesError::BadMetric { why, .. }) => {
            return Err(LineError::BadName {
                element: NameElement::Field,
                name: clip(&name),
                why,
                column: field.column,
            });
        }
        Err(other) => {
            return Err(LineError::InvalidSeries {
                reason: other.to_string(),
                column: field.column,
            });
        }
    }
    series.tags = entry.key.tags.clone();
    Ok(series)
}

fn parse_value(key: &[u8], v: &[u8], column: usize) -> Result<f64, LineError> {
    let invalid = || LineError::InvalidFieldValue {
        key: quote(key),
        value: quote(v),
        column,
    };
    let out_of_range = || LineError::NumberOutOfRange {
        key: quote(key),
        value: quote(v),
        column,
    };
    let Some(&last) = v.last() else {
        return Err(LineError::EmptyFieldValue {
            key: quote(key),
            column,
        });
    };
    if v[0] == b'"' {
        return Err(LineError::StringField {
            key: quote(key),
            column,
        });
    }
    match v {
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => return Ok(1.0),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => return Ok(0.0),
        _ => {}
    }
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    // All checked bytes are ASCII, so the `from_utf8`s below cannot fail.
    fn text(s: &[u8]) -> &str {
        std::str::from_utf8(s).unwrap_or_default()
    }
    match last {
        b'i' => {
            let body = &v[..v.len() - 1];
            let unsigned = body.strip_prefix(b"-").unwrap_or(body);
            if !digits(unsigned) {
                return Err(invalid());
            }
            text(body)
                .parse::<i64>()
                .map(|n| n as f64)
                .map_err(|_| out_of_range())
        }
        b'u' => {
            let body = &v[..v.len() - 1];
            if !digits(body) {
                return Err(invalid());
            }
            text(body)
                .parse::<u64>()
                .map(|n| n as f64)
                .map_err(|_| out_of_range())
        }
        _ => {
            let ok_chars = v
                .iter()
                .all(|&b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
            let first_ok = v[0].is_ascii_digit() || matches!(v[0], b'-' | b'+' | b'.');
            if !ok_chars || !first_ok || !v.iter().any(u8::is_ascii_digit) {
                return Err(invalid());
            }
            if let Some(x) = short_decimal(v) {
                return Ok(x);
            }
            let x: f64 = text(v).parse().map_err(|_| invalid())?;
            if x.is_finite() {
                Ok(x)
            } else {
                Err(out_of_range())
            }
        }
    }
}

/// `[+-]digits[.digits]` with at most 15 significant digits (most sensor
/// values), as the exact `f64` that `str::parse` gives, without its general
/// algorithm: the digits as an integer `m < 2^53` and `10^k` (`k ≤ 15`) are
/// both exact in `f64`, so the one rounding of `m / 10^k` is the correctly
/// rounded value of the decimal. `None` for anything else.
fn short_decimal(v: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, body) = match v.first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v),
    };
    if body.len() > 16 {
        return None;
    }
    let mut m: u64 = 0;
    let mut digits = 0;
    let mut scale = None;
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b'.' if scale.is_none() => scale = Some(body.len() - 1 - i),
            _ => return None,
        }
    }
    if digits == 0 || digits > 15 {
        return None;
    }
    let x = m as f64 / POW10[scale.unwrap_or(0)];
    Some(if negative { -x } else { x })
}

fn parse_timestamp(t: &[u8], column: usize, precision: Precision) -> Result<i64, LineError> {
    let (negative, unsigned) = match t.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    if unsigned.is_empty() || !unsigned.iter().all(u8::is_ascii_digit) {
        return Err(LineError::InvalidTimestamp {
            value: quote(t),
            column,
        });
    }
    let out_of_range = || LineError::TimestampOutOfRange {
        value: quote(t),
        precision,
        column,
    };
    // Accumulated negatively: i64::MIN has no positive counterpart.
    let mut n: i64 = 0;
    for &b in unsigned {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_sub(i64::from(b - b'0')))
            .ok_or_else(out_of_range)?;
    }
    let n = if negative {
        n
    } else {
        n.checked_neg().ok_or_else(out_of_range)?
    };
    n.checked_mul(precision.nanos()).ok_or_else(out_of_range)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn parse(input: &str) -> Parsed {
        parse_lines(
            input.as_bytes(),
            Precision::Nanoseconds,
            NOW,
            "src",
            "device",
        )
    }

    /// A key cache carried across chunks gives each chunk exactly the groups
    /// a fresh parse gives, including tag orders first seen in an earlier
    /// chunk and errors for new bad keys.
    #[test]
    fn key_cache_across_chunks_changes_nothing_but_the_work() {
        let chunks: [&[u8]; 3] = [
            b"m,a=1,b=2 f=1,g=2 10\nn,device=d7 f=3 11",
            b"m,b=2,a=1 g=4,f=5 12\nm,a=1,b=2 f=6 13\nbad,=x f=1 14",
            b"n,device=d7 f=7 15\nm,a=1,b=2 h=8 16",
        ];
        let mut cache = KeyCache::default();
        for (i, chunk) in chunks.iter().enumerate() {
            let fresh = parse_lines(chunk, Precision::Nanoseconds, NOW, "src", "device");
            let mut parser =
                ChunkParser::new(Precision::Nanoseconds, NOW, "src", "device", &mut cache);
            for (no, line) in chunk.split(|&b| b == b'\n').enumerate() {
                parser.push_line(no + 1, line);
            }
            let cached = parser.finish();
            assert_eq!(cached.readings, fresh.readings, "chunk {i}");
            assert_eq!(cached.errors, fresh.errors, "chunk {i}");
            assert_eq!(cached.lines_accepted, fresh.lines_accepted, "chunk {i}");
        }
        // m (one entry for both tag orders) and n; the bad key is not kept.
        assert_eq!(cache.entries.len(), 2);
        assert_eq!(cache.raw_keys.len(), 3);
    }

    /// `(series, origin, [(ts, value)])`.
    type Group = (String, String, Vec<(i64, f64)>);
    /// `(series, origin, [(ts, value bits)])`.
    type ExactGroup = (SeriesKey, String, Vec<(i64, u64)>);

    fn groups(p: &Parsed) -> Vec<Group> {
        p.readings
            .iter()
            .map(|g| {
                let r = g.readings.iter().map(|r| (r.ts_ns, r.value)).collect();
                (g.series.to_string(), g.origin.clone(), r)
            })
            .collect()
    }

    fn error_of(input: &str) -> LineError {
        let p = parse(input);
        assert!(
            p.readings.is_empty(),
            "{input:?} parsed into {:?}",
            p.readings
        );
        assert_eq!(p.errors.len(), 1, "{input:?}: {:?}", p.errors);
        p.errors[0].1.clone()
    }

    fn message(input: &str) -> String {
        error_of(input).to_string()
    }

    #[test]
    fn every_field_type_parses_to_its_exact_value() {
        let p = parse(
            "m f=1.5,neg=-2.25,exp=1e-3,lead=.5,plus=+4,int=-12i,big=9223372036854775807i,\
             u=18446744073709551615u,zero=0u 1000",
        );
        assert_eq!(
            groups(&p),
            [
                ("m_f", 1.5),
                ("m_neg", -2.25),
                ("m_exp", 0.001),
                ("m_lead", 0.5),
                ("m_plus", 4.0),
                ("m_int", -12.0),
                ("m_big", 9_223_372_036_854_775_807_i64 as f64),
                ("m_u", 18_446_744_073_709_551_615_u64 as f64),
                ("m_zero", 0.0),
            ]
            .map(|(s, v)| (s.to_owned(), "src".to_owned(), vec![(1000, v)]))
        );
        assert_eq!((p.lines_accepted, p.readings_accepted), (1, 9));
    }

    #[test]
    fn every_boolean_spelling() {
        for (word, value) in [
            ("t", 1.0),
            ("T", 1.0),
            ("true", 1.0),
            ("True", 1.0),
            ("TRUE", 1.0),
            ("f", 0.0),
            ("F", 0.0),
            ("false", 0.0),
            ("False", 0.0),
            ("FALSE", 0.0),
        ] {
            let p = parse(&format!("m b={word} 5"));
            assert_eq!(
                groups(&p),
                [("m_b".into(), "src".into(), vec![(5, value)])],
                "{word}"
            );
        }
        assert!(matches!(
            error_of("m b=tRUE"),
            LineError::InvalidFieldValue { .. }
        ));
        assert!(matches!(
            error_of("m b=yes"),
            LineError::InvalidFieldValue { .. }
        ));
    }

    #[test]
    fn tags_are_unescaped_sorted_and_values_keep_other_backslashes() {
        let p = parse(
            r#"m,z=last,path=C:\dir\ with\ spaces\,and\=eq,q="quoted",b=back\\slash,a=x=y f=1 7"#,
        );
        let g = &p.readings[0];
        assert_eq!(g.series.metric, "m_f");
        let tags: Vec<(&str, &str)> = g
            .series
            .tags
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_str()))
            .collect();
        assert_eq!(
            tags,
            [
                ("a", "x=y"),
                ("b", r"back\slash"),
                ("path", r"C:\dir with spaces,and=eq"),
                ("q", r#""quoted""#),
                ("z", "last"),
            ]
        );
    }

    #[test]
    fn escapes_in_names_are_undone_before_the_names_are_checked() {
        let only = "only A-Z a-z 0-9 _ . : - / are allowed";
        assert_eq!(
            error_of(r"cpu\ load,host=a f=1"),
            LineError::BadName {
                element: NameElement::Measurement,
                name: "cpu load".into(),
                why: only,
                column: 1
            }
        );
        assert_eq!(
            error_of(r"cpu\,x f=1"),
            LineError::BadName {
                element: NameElement::Measurement,
                name: "cpu,x".into(),
                why: only,
                column: 1
            }
        );
        // `=` needs no escape in a measurement (but is outside Ferry's names).
        assert_eq!(
            error_of("a=b f=1"),
            LineError::BadName {
                element: NameElement::Measurement,
                name: "a=b".into(),
                why: only,
                column: 1
            }
        );
        assert_eq!(
            error_of(r"m,k\ e\=y\,z=v f=1"),
            LineError::BadName {
                element: NameElement::TagKey,
                name: "k e=y,z".into(),
                why: only,
                column: 3
            }
        );
        assert_eq!(
            error_of(r"m a\=b\ c\,d=1"),
            LineError::BadName {
                element: NameElement::Field,
                name: "a=b c,d".into(),
                why: only,
                column: 3
            }
        );
        assert_eq!(
            error_of(r"m a\\b=1"),
            LineError::BadName {
                element: NameElement::Field,
                name: r"a\b".into(),
                why: only,
                column: 3
            }
        );
    }

    #[test]
    fn precision_scales_timestamps() {
        for (precision, want) in [
            (Precision::Nanoseconds, 1_500),
            (Precision::Microseconds, 1_500_000),
            (Precision::Milliseconds, 1_500_000_000),
            (Precision::Seconds, 1_500_000_000_000),
        ] {
            let p = parse_lines(b"m f=1 1500\nm f=2 -3", precision, NOW, "src", "device");
            let got: Vec<i64> = p.readings[0].readings.iter().map(|r| r.ts_ns).collect();
            assert_eq!(got, [want, -3 * precision.nanos()], "{precision}");
        }
        let p = parse_lines(b"m f=1", Precision::Seconds, NOW, "src", "device");
        assert_eq!(
            p.readings[0].readings[0].ts_ns, NOW,
            "no timestamp: now, unscaled"
        );
    }

    #[test]
    fn precision_reads_from_config_names() {
        #[derive(serde::Deserialize)]
        struct C {
            p: Vec<Precision>,
        }
        let c: C = toml::from_str(r#"p = ["ns", "us", "ms", "s"]"#).unwrap();
        assert_eq!(
            c.p,
            [
                Precision::Nanoseconds,
                Precision::Microseconds,
                Precision::Milliseconds,
                Precision::Seconds
            ]
        );
    }

    #[test]
    fn blank_lines_comments_crlf_and_whitespace_are_tolerated() {
        let p = parse(
            "# a comment\n\n   \n  # indented comment, f=\"x\n\tm,t=a  f=1   2  \r\nm,t=a f=2\r\n",
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(
            groups(&p),
            [(
                r#"m_f{t="a"}"#.into(),
                "src".into(),
                vec![(2, 1.0), (NOW, 2.0)]
            )]
        );
        assert_eq!(p.lines_accepted, 2);
    }

    #[test]
    fn readings_group_by_series_in_input_order_with_origin() {
        let p = parse(
            "env,device=d1,room=a temp=20,hum=40i 1\n\
             env,room=a,device=d1 temp=21 2\n\
             env,room=b temp=5 3\n\
             env,device=d1,room=a temp=22 4\n",
        );
        assert_eq!(
            groups(&p),
            [
                (
                    r#"env_temp{device="d1",room="a"}"#.into(),
                    "d1".into(),
                    vec![(1, 20.0), (2, 21.0), (4, 22.0)]
                ),
                (
                    r#"env_hum{device="d1",room="a"}"#.into(),
                    "d1".into(),
                    vec![(1, 40.0)]
                ),
                (r#"env_temp{room="b"}"#.into(), "src".into(), vec![(3, 5.0)]),
            ]
        );
        let p = parse_lines(
            b"env,host=gw1 t=1 1",
            Precision::Nanoseconds,
            0,
            "influx",
            "host",
        );
        assert_eq!(p.readings[0].origin, "gw1", "configured device tag");
    }

    #[test]
    fn bad_lines_are_rejected_whole_and_the_rest_carries_on() {
        let p = parse("m a=1 1\nm a=2,b=oops 2\nm,9bad=x a=3 3\n\nm a=4 4\nm a=5,b\\ c=6 5");
        assert_eq!(
            groups(&p),
            [("m_a".into(), "src".into(), vec![(1, 1.0), (4, 4.0)])]
        );
        let lines: Vec<usize> = p.errors.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [2, 3, 6]);
        assert_eq!(p.lines_accepted, 2);
    }

    #[test]
    fn a_string_field_is_one_rejected_line_even_across_newlines() {
        let p = parse("m s=\"a,b \\\"c\nm2 v=1 2\n\" 9\nm f=1 3\n");
        assert_eq!(
            p.errors,
            [(
                1,
                LineError::StringField {
                    key: "s".into(),
                    column: 5
                }
            )]
        );
        assert_eq!(groups(&p), [("m_f".into(), "src".into(), vec![(3, 1.0)])]);
        let p = parse("m f=1\nm s=\"x\" 5\nbad\nm f=2");
        let lines: Vec<usize> = p.errors.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [2, 3], "line numbers count newlines in strings");
    }

    #[test]
    fn every_error_names_what_and_where() {
        let cases: &[(&str, &str)] = &[
            (",t=1 f=1", "column 1: missing measurement"),
            ("m,=v f=1", "column 3: empty tag key"),
            ("m,t f=1", r#"column 4: tag "t" has no '='"#),
            ("m,t,u=1 f=1", r#"column 4: tag "t" has no '='"#),
            ("m,t= f=1", r#"column 5: tag "t" has an empty value"#),
            ("m,a=1,a=2 f=1", r#"column 7: tag "a" appears twice"#),
            (
                "m,t=1",
                "column 6: no fields (expected field=value after the measurement and tags)",
            ),
            (
                "m,t=1   ",
                "column 9: no fields (expected field=value after the measurement and tags)",
            ),
            ("m =1", "column 3: empty field key"),
            ("m f=1,", "column 7: empty field key"),
            ("m f", r#"column 4: field "f" has no '='"#),
            ("m f=", r#"column 5: field "f" has no value"#),
            ("m f=,g=1", r#"column 5: field "f" has no value"#),
            (
                "m f=1,s=\"x\"",
                r#"column 9: field "s" is a string; Ferry stores numbers only"#,
            ),
            (
                "m f=abc",
                r#"column 5: field "f" has invalid value "abc" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
            ),
            (
                "m f=1.5i",
                r#"column 5: field "f" has invalid value "1.5i" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
            ),
            (
                "m f=-1u",
                r#"column 5: field "f" has invalid value "-1u" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
            ),
            (
                "m f=NaN",
                r#"column 5: field "f" has invalid value "NaN" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
            ),
            (
                "m f=1..2",
                r#"column 5: field "f" has invalid value "1..2" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
            ),
            (
                "m f=9223372036854775808i",
                r#"column 5: field "f" value "9223372036854775808i" is out of range"#,
            ),
            (
                "m f=18446744073709551616u",
                r#"column 5: field "f" value "18446744073709551616u" is out of range"#,
            ),
            (
                "m f=1e999",
                r#"column 5: field "f" value "1e999" is out of range"#,
            ),
            ("m f=1,f=2", r#"column 7: field "f" appears twice"#),
            (
                "9m f=1",
                r#"column 1: measurement "9m": must start with a letter or '_'"#,
            ),
            (
                "m,9k=v f=1",
                r#"column 3: tag key "9k": must start with a letter or '_'"#,
            ),
            (
                "m,k=a\u{1}b f=1",
                r#"column 5: value of tag "k" "a\u{1}b": control characters are not allowed"#,
            ),
            (
                "m a!=1",
                r#"column 3: field key "a!": only A-Z a-z 0-9 _ . : - / are allowed"#,
            ),
            (
                "m f=1 12a",
                r#"column 7: invalid timestamp "12a" (expected an integer)"#,
            ),
            (
                "m f=1 -",
                r#"column 7: invalid timestamp "-" (expected an integer)"#,
            ),
            (
                "m f=1 99999999999999999999",
                r#"column 7: timestamp 99999999999999999999 (ns) is out of range"#,
            ),
            (
                "m f=1 123 456",
                "column 11: unexpected text after the timestamp",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(message(input), *want, "{input:?}");
        }
        assert_eq!(
            parse_lines(
                b"m f=1 9300000000",
                Precision::Seconds,
                NOW,
                "src",
                "device"
            )
            .errors[0]
                .1
                .to_string(),
            "column 7: timestamp 9300000000 (s) is out of range"
        );
        let tags: String = (0..17).map(|i| format!(",k{i:02}=v")).collect();
        assert_eq!(
            message(&format!("m{tags} f=1")),
            "column 99: 17 tags, at most 16 allowed"
        );
        let long_field = "f".repeat(130);
        let err = error_of(&format!("m {long_field}=1"));
        assert_eq!(err.column(), 3);
        assert_eq!(
            err.to_string(),
            format!(
                r#"column 3: metric name "m_{}…" (measurement_field) is longer than 128 bytes"#,
                "f".repeat(62)
            )
        );
        assert_eq!(
            error_of(&format!("{} f=1", "m".repeat(129))).to_string(),
            format!(r#"column 1: measurement "{}…": too long"#, "m".repeat(64))
        );
        assert_eq!(
            parse_lines(b"m,k=a\xffb f=1", Precision::Nanoseconds, 0, "s", "d").errors,
            [(1, LineError::InvalidUtf8 { column: 6 })]
        );
        assert_eq!(
            message("m,k=a\u{ff}\u{1} f=1"),
            r#"column 5: value of tag "k" "aÿ\u{1}": control characters are not allowed"#
        );
        assert_eq!(
            LineError::LineTooLong { max: 10 }.to_string(),
            "line longer than 10 bytes"
        );
    }

    #[test]
    fn a_line_with_one_bad_field_leaves_no_reading() {
        let p = parse("m a=1,b!=2 5\nm c=1 6");
        assert_eq!(groups(&p), [("m_c".into(), "src".into(), vec![(6, 1.0)])]);
    }

    #[test]
    fn parse_chunk_returns_groups_and_errors() {
        let (groups, errors) = parse_chunk(b"m f=1 1\nbad", Precision::Nanoseconds, 0, "s", "d");
        assert_eq!(groups.len(), 1);
        assert_eq!(errors, [(2, LineError::MissingFields { column: 4 })]);
    }

    /// Line ends found by feeding `bytes` in pieces of the given sizes.
    fn ends_incremental(bytes: &[u8], pieces: &[usize]) -> Vec<usize> {
        let mut splitter = LineSplitter::default();
        let (mut ends, mut start, mut avail) = (Vec::new(), 0, 0);
        let mut pieces = pieces.iter().copied().cycle();
        while avail < bytes.len() {
            avail = (avail + pieces.next().unwrap_or(1).max(1)).min(bytes.len());
            while let Some(e) = splitter.next_end(&bytes[start..avail]) {
                // What the line adds to the line number, without a rescan.
                assert_eq!(
                    splitter.newlines(),
                    count_newlines(&bytes[start..start + e]),
                    "newlines inside the line ending at {}",
                    start + e
                );
                ends.push(start + e);
                start += e + 1;
            }
        }
        ends
    }

    #[derive(Debug, Clone)]
    enum Value {
        Float(f64),
        Int(i64),
        UInt(u64),
        Bool(bool, usize),
    }

    impl Value {
        fn text(&self) -> String {
            match self {
                Value::Float(x) => format!("{x:?}"),
                Value::Int(n) => format!("{n}i"),
                Value::UInt(n) => format!("{n}u"),
                Value::Bool(b, spelling) => {
                    let words = if *b {
                        ["t", "T", "true", "True", "TRUE"]
                    } else {
                        ["f", "F", "false", "False", "FALSE"]
                    };
                    words[spelling % 5].to_owned()
                }
            }
        }

        fn f64(&self) -> f64 {
            match self {
                Value::Float(x) => *x,
                Value::Int(n) => *n as f64,
                Value::UInt(n) => *n as f64,
                Value::Bool(b, _) => f64::from(u8::from(*b)),
            }
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Value::Float),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            (any::<bool>(), 0..5usize).prop_map(|(b, s)| Value::Bool(b, s)),
        ]
    }

    #[derive(Debug, Clone)]
    struct GenLine {
        measurement: String,
        tags: BTreeMap<String, String>,
        fields: BTreeMap<String, Value>,
        ts: Option<i64>,
    }

    fn gen_line() -> impl Strategy<Value = GenLine> {
        (
            "[a-zA-Z_][a-zA-Z0-9_.:/-]{0,20}",
            prop::collection::btree_map("[a-z_][a-z0-9_.]{0,8}", "[^\\p{Cc}]{1,20}", 0..5),
            prop::collection::btree_map("[a-zA-Z0-9_.:/-]{1,10}", value(), 1..4),
            any::<Option<i64>>(),
        )
            .prop_map(|(measurement, tags, fields, ts)| GenLine {
                measurement,
                tags,
                fields,
                ts,
            })
    }

    fn escape(s: &str, special: &[char]) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if c == '\\' || special.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    fn format_line(l: &GenLine) -> String {
        let mut out = escape(&l.measurement, &[',', ' ']);
        for (k, v) in &l.tags {
            out += &format!(
                ",{}={}",
                escape(k, &[',', '=', ' ']),
                escape(v, &[',', '=', ' '])
            );
        }
        let fields: Vec<String> = l
            .fields
            .iter()
            .map(|(k, v)| format!("{}={}", escape(k, &[',', '=', ' ']), v.text()))
            .collect();
        out += " ";
        out += &fields.join(",");
        if let Some(ts) = l.ts {
            out += &format!(" {ts}");
        }
        out
    }

    #[test]
    fn the_splitter_counts_newlines_inside_quoted_strings() {
        let text = b"m s=\"a\nb\\\"\nc\" 1\nm f=1 2\n";
        let mut splitter = LineSplitter::default();
        let first = splitter.next_end(text).unwrap();
        assert_eq!(&text[..first], b"m s=\"a\nb\\\"\nc\" 1");
        assert_eq!(splitter.newlines(), 2);
        let rest = &text[first + 1..];
        assert_eq!(splitter.next_end(rest), Some(7));
        assert_eq!(splitter.newlines(), 0);
    }

    #[test]
    fn timestamps_at_the_ends_of_i64() {
        let ns = Precision::Nanoseconds;
        assert_eq!(
            parse_timestamp(b"-9223372036854775808", 1, ns),
            Ok(i64::MIN)
        );
        assert_eq!(parse_timestamp(b"9223372036854775807", 1, ns), Ok(i64::MAX));
        assert_eq!(parse_timestamp(b"-0", 1, ns), Ok(0));
        for bad in [
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
        ] {
            assert_eq!(
                parse_timestamp(bad.as_bytes(), 7, ns),
                Err(LineError::TimestampOutOfRange {
                    value: bad.into(),
                    precision: ns,
                    column: 7
                })
            );
        }
        assert_eq!(
            parse_timestamp(b"9223372036854775", 1, Precision::Seconds),
            Err(LineError::TimestampOutOfRange {
                value: "9223372036854775".into(),
                precision: Precision::Seconds,
                column: 1
            })
        );
    }

    #[test]
    fn short_decimals_are_the_values_str_parse_gives() {
        for text in [
            "0",
            "-0",
            "+0.0",
            "1.",
            ".5",
            "-.5",
            "20.37",
            "0.1",
            "0.3",
            "123456789012345",
            "1.23456789012345",
            "-999999999999999",
            "0.00000000000001",
        ] {
            let x = short_decimal(text.as_bytes()).expect(text);
            assert_eq!(
                x.to_bits(),
                text.parse::<f64>().unwrap().to_bits(),
                "{text}"
            );
        }
        for other in ["1234567890123456", "1e3", ".", "-", "1.2.3", "1,2", ""] {
            assert_eq!(short_decimal(other.as_bytes()), None, "{other}");
        }
    }

    proptest! {
        #[test]
        fn short_decimal_matches_str_parse(
            negative in any::<bool>(),
            int in "[0-9]{0,15}",
            frac in proptest::option::of("[0-9]{0,15}"),
        ) {
            let text = format!("{}{int}{}", if negative { "-" } else { "" },
                frac.as_ref().map_or(String::new(), |f| format!(".{f}")));
            if let Some(x) = short_decimal(text.as_bytes()) {
                prop_assert_eq!(x.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{}", text);
            } else {
                let digits = int.len() + frac.as_ref().map_or(0, String::len);
                prop_assert!(digits == 0 || digits > 15, "{} fell back", text);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let p = parse_lines(&bytes, Precision::Seconds, NOW, "src", "device");
            prop_assert!(p.readings.iter().all(|g| !g.readings.is_empty()));
        }

        #[test]
        fn syntax_soup_never_panics_and_splits_the_same_in_pieces(
            bytes in prop::collection::vec(
                prop::sample::select(b"m,= \\\"#\n\r\tif1.-eu9tT\xff".to_vec()),
                0..300,
            ),
            pieces in prop::collection::vec(1..40usize, 1..8),
        ) {
            let p = parse_lines(&bytes, Precision::Milliseconds, NOW, "src", "device");
            prop_assert!(p.lines_accepted as usize + p.errors.len() <= bytes.len() + 1);
            prop_assert_eq!(ends_incremental(&bytes, &pieces), ends_incremental(&bytes, &[bytes.len()]));
        }

        #[test]
        fn formatted_lines_parse_back(lines in prop::collection::vec(gen_line(), 1..6)) {
            let text: Vec<String> = lines.iter().map(format_line).collect();
            let p = parse(&text.join("\n"));
            prop_assert!(p.errors.is_empty(), "{:?} from {:?}", p.errors, text);

            let mut want: Vec<ExactGroup> = Vec::new();
            for l in &lines {
                for (field, value) in &l.fields {
                    let key = SeriesKey::new(format!("{}_{field}", l.measurement), l.tags.clone())
                        .expect("generated names are valid");
                    let origin = l.tags.get("device").cloned().unwrap_or_else(|| "src".into());
                    let reading = (l.ts.unwrap_or(NOW), value.f64().to_bits());
                    match want.iter_mut().find(|(k, _, _)| *k == key) {
                        Some(group) => group.2.push(reading),
                        None => want.push((key, origin, vec![reading])),
                    }
                }
            }
            let got: Vec<ExactGroup> = p
                .readings
                .iter()
                .map(|g| {
                    let r = g.readings.iter().map(|r| (r.ts_ns, r.value.to_bits())).collect();
                    (g.series.clone(), g.origin.clone(), r)
                })
                .collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(p.lines_accepted, lines.len() as u64);
        }
    }
}
