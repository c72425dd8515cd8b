//! Key sections: unescaping, names, the measurement and tags checked
//! ([`parse_key`]), and errors that name the offending part of a line.

use std::borrow::Cow;

use ferry_proto::series::{MAX_TAGS, SeriesError, SeriesKey};

use super::*;

pub(super) fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(super) fn skip_blanks(line: &[u8], mut pos: usize) -> usize {
    while pos < line.len() && is_blank(line[pos]) {
        pos += 1;
    }
    pos
}

pub(super) fn is_escapable(b: u8) -> bool {
    matches!(b, b',' | b' ' | b'=' | b'\\')
}

/// The first unescaped space at or after `pos` (or the end).
pub(super) fn key_section_end(line: &[u8], mut pos: usize) -> usize {
    // Vectorised to the next space or backslash; byte by byte only past
    // an escape.
    while let Some(i) = memchr::memchr2(b' ', b'\\', &line[pos..]) {
        pos += i;
        if line[pos] == b' ' {
            return pos;
        }
        pos += if pos + 1 < line.len() && is_escapable(line[pos + 1]) {
            2
        } else {
            1
        };
        if pos >= line.len() {
            break;
        }
    }
    line.len()
}

/// Unescaped bytes from `pos` to the first unescaped byte of `stops` (or the
/// end), and where that is.
#[inline]
pub(super) fn scan<'l>(line: &'l [u8], pos: usize, stops: &[u8]) -> (Cow<'l, [u8]>, usize) {
    scan_mapped(line, pos, stops, |b| b)
}

/// [`scan`] for names that become metric names or tag keys (measurement,
/// tag keys, field keys): an escaped byte (`\ `, `\,`, `\=`, `\\`) becomes
/// `_`, since none of them is allowed in a Ferry name. `cpu\ load` is stored
/// as `cpu_load`.
#[inline]
pub(super) fn scan_name<'l>(line: &'l [u8], pos: usize, stops: &[u8]) -> (Cow<'l, [u8]>, usize) {
    scan_mapped(line, pos, stops, |_| b'_')
}

/// Where the quoted string starting at `open` (a `"`) ends: the index after
/// its closing quote. A backslash escapes the byte after it (`\"`, `\\`).
pub(super) fn string_end(line: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

// `stops.contains` is core's `memchr` for bytes: a call per byte here.
#[allow(clippy::manual_contains)]
#[inline(always)]
fn scan_mapped<'l>(
    line: &'l [u8],
    pos: usize,
    stops: &[u8],
    escaped: fn(u8) -> u8,
) -> (Cow<'l, [u8]>, usize) {
    let mut owned: Option<Vec<u8>> = None;
    let mut i = pos;
    while i < line.len() {
        let b = line[i];
        if b == b'\\' && i + 1 < line.len() && is_escapable(line[i + 1]) {
            owned
                .get_or_insert_with(|| line[pos..i].to_vec())
                .push(escaped(line[i + 1]));
            i += 2;
            continue;
        }
        if stops.iter().any(|&s| s == b) {
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
pub(super) fn quote(bytes: &[u8]) -> String {
    clip(&String::from_utf8_lossy(bytes))
}

pub(super) fn clip(s: &str) -> String {
    if s.len() <= MAX_QUOTED {
        return s.to_owned();
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(super) struct RawTag {
    key: String,
    value: String,
    key_column: usize,
    value_column: usize,
}

/// The measurement (as the metric) and tags of a key section, checked.
pub(super) fn parse_key(line: &[u8], start: usize, end: usize) -> Result<SeriesKey, LineError> {
    let line = &line[..end];
    let (measurement, mut pos) = scan_name(line, start, b", ");
    if measurement.is_empty() {
        return Err(LineError::MissingMeasurement { column: start + 1 });
    }
    let measurement = String::from_utf8_lossy(&measurement).into_owned();
    let mut tags: Vec<RawTag> = Vec::new();
    while pos < line.len() {
        // `scan` stopped at an unescaped ',' (the section ends at a space).
        let kstart = pos + 1;
        let (key, stop) = scan_name(line, kstart, b",= ");
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

pub(super) fn series_error(
    e: SeriesError,
    measurement: &str,
    tags: &[RawTag],
    column: usize,
) -> LineError {
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
