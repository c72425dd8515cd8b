//! Key sections and fields: [`ChunkParser`] turns lines into series groups,
//! with the [`KeyCache`] that carries parsed keys from chunk to chunk (the
//! key section's lexing and checks in `key.rs`, what is charged to the
//! memory budget in `heap.rs`).

use std::borrow::Cow;

use std::sync::Arc;

use smallvec::SmallVec;
use tokio::sync::watch;

use ferry_proto::batch::Reading;
use ferry_proto::series::{MAX_METRIC_LEN, SeriesError, SeriesKey};

use crate::journal::SeriesReadings;
use crate::limits::{Charge, MemoryBudget};

use super::*;

/// Series parsed from key sections, kept across the chunks of one source
/// connection: a series seen before costs a hash lookup, not a parse. It
/// holds at most about [`KeyCache::MAX_KEYS`] key sections (emptied at the
/// start of a chunk past that). One cache serves one source configuration
/// (the origin depends on its device tag and name).
///
/// With a [`MemoryBudget`] ([`KeyCache::with_budget`]) every key and field
/// it holds is charged an estimate of its heap bytes. A line whose new key
/// or field cannot be charged is parsed without caching it
/// ([`Parsed::lines_uncached`]: its readings are kept, in groups of their
/// own) and the budget's pressure moves; every cache under that budget (this one too)
/// evicts itself at the start of its next chunk ([`KeyCache::evict`]).
#[derive(Debug, Default)]
pub struct KeyCache {
    /// What this cache holds of the shared budget, if any.
    charge: Option<Charge>,
    /// The budget's pressure, as last seen.
    pressure: Option<watch::Receiver<u64>>,
    /// Raw key section (measurement and tags as written) → index in
    /// `entries`.
    pub(super) raw_keys: HashMap<Vec<u8>, usize>,
    /// Canonical key section (measurement, sorted tags) → index in `entries`,
    /// so that one series written with tags in different orders is one group.
    keys: HashMap<SeriesKey, usize>,
    pub(super) entries: Vec<KeyEntry>,
    /// Per series (`KeyEntry::ids`): `(chunk, group, readings)`, its
    /// group's index in the groups of chunk number `chunk` (replaces a
    /// per-chunk map), and how many readings that group got: the next
    /// chunk's group is allocated for as many at once.
    group_of: Vec<(u64, u32, u32)>,
    /// Chunks parsed with this cache (the current chunk's number).
    chunk: u64,
}

impl KeyCache {
    /// Key sections kept before the cache is emptied.
    pub const MAX_KEYS: usize = 65_536;

    /// An empty cache charged to `budget`.
    pub fn with_budget(budget: Arc<MemoryBudget>) -> Self {
        Self {
            pressure: Some(budget.pressure()),
            charge: Some(Charge::new(budget)),
            ..Self::default()
        }
    }

    /// Key sections held.
    pub fn len(&self) -> usize {
        self.raw_keys.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.raw_keys.is_empty()
    }

    /// Bytes charged to the budget (0 without one).
    pub fn charged(&self) -> u64 {
        self.charge.as_ref().map_or(0, Charge::bytes)
    }

    /// True when the budget asked caches to make room since this cache
    /// last looked.
    pub fn pressed(&self) -> bool {
        self.pressure
            .as_ref()
            .is_some_and(|p| p.has_changed().unwrap_or(false))
    }

    /// Empties the cache and hands its bytes back to the budget (counted as
    /// an eviction when it held any); the pressure is seen.
    pub fn evict(&mut self) {
        if let Some(p) = &mut self.pressure {
            p.mark_unchanged();
        }
        let bytes = self.charged();
        self.clear();
        if let Some(charge) = &self.charge
            && bytes > 0
        {
            charge.budget().record_eviction(bytes);
        }
    }

    /// Empties the maps (the chunk number goes on).
    fn clear(&mut self) {
        self.raw_keys = HashMap::default();
        self.keys = HashMap::default();
        self.entries = Vec::new();
        self.group_of = Vec::new();
        if let Some(charge) = &mut self.charge {
            charge.clear();
        }
    }

    /// Charges `bytes` for a new key or field; false (and the budget
    /// pressed) when they do not fit.
    fn charge(&mut self, bytes: u64) -> bool {
        match &mut self.charge {
            None => true,
            Some(charge) => charge.try_grow(bytes),
        }
    }
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
    /// Lines parsed without caching their series (the memory budget had
    /// no room for them).
    lines_uncached: u64,
    strings: StringFields,
    strings_skipped: u64,
    /// Heap bytes of the groups so far, as [`Parsed::heap_bytes`] counts
    /// them ([`ChunkParser::heap_bytes`]).
    heap: u64,
    /// `(group, slot)`: each cached series' group and its index in
    /// [`KeyCache::group_of`].
    slots: Vec<(u32, u32)>,
}

#[derive(Debug)]
pub(super) struct KeyEntry {
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

pub(super) struct Field<'l> {
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
        if cache.pressed() {
            cache.evict();
        } else if cache.raw_keys.len() >= KeyCache::MAX_KEYS {
            cache.clear();
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
            lines_uncached: 0,
            strings: StringFields::default(),
            strings_skipped: 0,
            heap: 0,
            slots: Vec::new(),
        }
    }

    /// What to do with string fields (skipped by default).
    pub fn string_fields(mut self, strings: StringFields) -> Self {
        self.strings = strings;
        self
    }

    /// Parses one line (without its `\n`).
    pub fn push_line(&mut self, line_no: usize, line: &[u8]) {
        let groups = self.groups.len();
        match self.parse_line(line) {
            Ok(Line::Accepted(strings)) => {
                self.lines_accepted += 1;
                self.strings_skipped += strings;
                for g in &self.groups[groups..] {
                    self.heap += group_heap(g);
                }
            }
            Ok(Line::Skipped) => {}
            Err(e) => self.errors.push((line_no, e)),
        }
    }

    /// Records a line rejected before parsing (e.g. too long).
    pub fn reject(&mut self, line_no: usize, error: LineError) {
        self.errors.push((line_no, error));
    }

    /// Heap bytes the readings parsed so far hold, about as
    /// [`Parsed::heap_bytes`] counts them (kept as lines are pushed: a
    /// source parses only as many lines as its memory hold covers).
    pub fn heap_bytes(&self) -> u64 {
        self.heap
    }

    /// Lines pushed so far that were rejected.
    pub fn rejected(&self) -> usize {
        self.errors.len()
    }

    /// The groups, errors and counts.
    pub fn finish(mut self) -> Parsed {
        for &(g, slot) in &self.slots {
            let readings = &mut self.groups[g as usize].readings;
            self.cache.group_of[slot as usize].2 = readings.len() as u32;
            // Allocated for the previous chunk's count: never more than
            // the readings it holds (what the budget is charged for).
            readings.shrink_to_fit();
        }
        self.groups.retain(|g| !g.readings.is_empty());
        let readings_accepted = self.groups.iter().map(|g| g.readings.len() as u64).sum();
        Parsed {
            readings: self.groups,
            errors: self.errors,
            lines_accepted: self.lines_accepted,
            readings_accepted,
            lines_uncached: self.lines_uncached,
            string_fields_skipped: self.strings_skipped,
        }
    }

    fn parse_line(&mut self, line: &[u8]) -> Result<Line, LineError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let start = skip_blanks(line, 0);
        if start == line.len() || line[start] == b'#' {
            return Ok(Line::Skipped);
        }
        let key_end = key_section_end(line, start);
        let raw_key = &line[start..key_end];
        let cache = &mut *self.cache;
        // `Err(entry)`: a new key section that did not fit in the budget;
        // the line is parsed without caching it.
        let entry: Result<usize, KeyEntry> = match cache.raw_keys.get(raw_key) {
            Some(&e) => Ok(e),
            None => {
                let key = parse_key(line, start, key_end)?;
                let origin = key.tag(self.device_tag).unwrap_or(self.source_name);
                match cache.keys.get(&key).copied() {
                    Some(e) => {
                        if cache.charge(SLOT * 32 + alloc(raw_key.len())) {
                            cache.raw_keys.insert(raw_key.to_vec(), e);
                        }
                        Ok(e)
                    }
                    None if cache.charge(entry_bytes(raw_key, &key, origin)) => {
                        cache.entries.push(KeyEntry {
                            origin: origin.to_owned(),
                            key: key.clone(),
                            fields: HashMap::default(),
                            series: Vec::new(),
                            ids: Vec::new(),
                        });
                        let e = cache.entries.len() - 1;
                        cache.keys.insert(key, e);
                        cache.raw_keys.insert(raw_key.to_vec(), e);
                        Ok(e)
                    }
                    None => Err(KeyEntry {
                        origin: origin.to_owned(),
                        key,
                        fields: HashMap::default(),
                        series: Vec::new(),
                        ids: Vec::new(),
                    }),
                }
            }
        };

        let mut pos = skip_blanks(line, key_end);
        if pos == line.len() {
            return Err(LineError::MissingFields { column: pos + 1 });
        }
        // Most lines have a few fields: no allocation per line.
        let mut fields: SmallVec<[Field<'_>; 4]> = SmallVec::new();
        let mut strings = 0;
        loop {
            let (key, stop) = scan_name(line, pos, b",= ");
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
            if line.get(vstart) == Some(&b'"') {
                // A string: Ferry stores numbers, so it is skipped (counted)
                // or rejects the line, as configured.
                let vend =
                    string_end(line, vstart).ok_or_else(|| LineError::UnterminatedString {
                        key: quote(&key),
                        column: vstart + 1,
                    })?;
                if vend < line.len() && !matches!(line[vend], b',' | b' ' | b'\t') {
                    return Err(LineError::InvalidFieldValue {
                        key: quote(&key),
                        value: quote(&line[vstart..]),
                        column: vstart + 1,
                    });
                }
                if self.strings == StringFields::Reject {
                    return Err(LineError::StringField {
                        key: quote(&key),
                        column: vstart + 1,
                    });
                }
                strings += 1;
                if vend < line.len() && line[vend] == b',' {
                    pos = vend + 1;
                    continue;
                }
                pos = vend;
                break;
            }
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

        let entry = match entry {
            Ok(e) => e,
            Err(uncached) => {
                push_uncached(&mut self.groups, &uncached, &fields, ts_ns)?;
                self.lines_uncached += 1;
                if let Some(charge) = &self.cache.charge {
                    charge.budget().record_uncached();
                }
                return Ok(Line::Accepted(strings));
            }
        };
        let cache = &mut *self.cache;
        // New fields first: the line is cached whole, or parsed uncached.
        let mut ids: SmallVec<[u32; 4]> = SmallVec::new();
        for field in &fields {
            let key_entry = &cache.entries[entry];
            if let Some(&id) = key_entry.fields.get(&*field.key) {
                ids.push(id);
                continue;
            }
            let series = field_series(key_entry, field)?;
            if !cache.charge(field_bytes(&series, &field.key)) {
                push_uncached(&mut self.groups, &cache.entries[entry], &fields, ts_ns)?;
                self.lines_uncached += 1;
                if let Some(charge) = &cache.charge {
                    charge.budget().record_uncached();
                }
                return Ok(Line::Accepted(strings));
            }
            let key_entry = &mut cache.entries[entry];
            let id = key_entry.series.len() as u32;
            key_entry.series.push(series);
            key_entry.ids.push(cache.group_of.len() as u32);
            cache.group_of.push((0, 0, 0));
            key_entry.fields.insert(field.key.to_vec(), id);
            ids.push(id);
        }
        let key_entry = &mut cache.entries[entry];
        let mut groups: SmallVec<[usize; 4]> = SmallVec::new();
        for &id in &ids {
            let slot = &mut cache.group_of[key_entry.ids[id as usize] as usize];
            let group = if slot.0 == cache.chunk {
                slot.1 as usize
            } else {
                let g = self.groups.len();
                self.groups.push(SeriesReadings {
                    series: key_entry.series[id as usize].clone(),
                    origin: key_entry.origin.clone(),
                    readings: Vec::with_capacity(slot.2 as usize),
                });
                self.slots.push((g as u32, key_entry.ids[id as usize]));
                *slot = (cache.chunk, g as u32, 0);
                g
            };
            groups.push(group);
        }
        for (field, g) in fields.iter().zip(groups) {
            self.heap += READING_BYTES;
            self.groups[g].readings.push(Reading {
                ts_ns,
                value: field.value,
            });
        }
        Ok(Line::Accepted(strings))
    }
}

/// What became of a well-formed line.
enum Line {
    /// Its readings are in the groups; the number of string fields
    /// skipped.
    Accepted(u64),
    /// Blank or a comment.
    Skipped,
}

/// A line whose key section or fields do not fit in the memory budget: its
/// readings as groups of their own (one per field), built from `entry`'s
/// key without caching anything, so a full cache costs parsing time, never
/// readings. The line is checked whole before anything is added.
fn push_uncached(
    groups: &mut Vec<SeriesReadings>,
    entry: &KeyEntry,
    fields: &[Field<'_>],
    ts_ns: i64,
) -> Result<(), LineError> {
    let mut series: SmallVec<[SeriesKey; 4]> = SmallVec::new();
    for field in fields {
        series.push(field_series(entry, field)?);
    }
    for (series, field) in series.into_iter().zip(fields) {
        groups.push(SeriesReadings {
            series,
            origin: entry.origin.clone(),
            readings: vec![Reading {
                ts_ns,
                value: field.value,
            }],
        });
    }
    Ok(())
}

pub(super) fn field_series(entry: &KeyEntry, field: &Field<'_>) -> Result<SeriesKey, LineError> {
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
