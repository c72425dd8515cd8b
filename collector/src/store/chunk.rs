//! Chunks: the unit of raw-reading storage, and window aggregates.
//!
//! A chunk is a [`ReadingBlock`] (delta-of-delta timestamps, scaled decimal
//! value deltas where exact) with `series = 0`, MessagePack-encoded, holding
//! readings of one series that all fall in one aligned bucket of
//! [`CHUNK_SPAN_NS`], sorted by timestamp. Ingest stores it plain;
//! compaction stores it zstd-compressed behind a two-byte codec tag
//! ([`encode_settled`]), with a [`Summary`] of its readings in front when
//! it holds at least [`MIN_SUMMARY_READINGS`]. [`decode`] reads every form;
//! [`summary`] reads a chunk's summary without decoding its readings.

use ferry_proto::batch::{BlockError, Reading, ReadingBlock, WindowAggregate};
use ferry_proto::codec::{self, DecodeError};
use ferry_proto::sketch::{DdSketch, MAX_BINS};

/// Width of a chunk bucket: one hour. Every reading of chunk
/// `(series, bucket, id)` has `bucket <= ts < bucket + CHUNK_SPAN_NS`.
pub const CHUNK_SPAN_NS: i64 = 3_600_000_000_000;

/// Start of the aligned window of width `span` holding `ts`.
pub fn align(ts: i64, span: i64) -> i64 {
    ts.saturating_sub(ts.rem_euclid(span))
}

/// Start of the chunk bucket holding `ts`.
pub fn bucket_of(ts: i64) -> i64 {
    align(ts, CHUNK_SPAN_NS)
}

/// Splits a block into per-bucket chunk blocks (series 0), sorted by time.
/// A block that is already sorted and inside one bucket is kept as it came.
pub fn split_block(block: &ReadingBlock) -> Result<Vec<(i64, ReadingBlock)>, BlockError> {
    let mut sorted = true;
    let mut first_bucket = None;
    let mut one_bucket = true;
    let mut prev = i64::MIN;
    block.for_each(|r| {
        sorted &= r.ts_ns >= prev;
        prev = r.ts_ns;
        let b = bucket_of(r.ts_ns);
        match first_bucket {
            None => first_bucket = Some(b),
            Some(f) => one_bucket &= f == b,
        }
    })?;
    let Some(bucket) = first_bucket else {
        return Ok(Vec::new());
    };
    if sorted && one_bucket {
        let mut chunk = block.clone();
        chunk.series = 0;
        return Ok(vec![(bucket, chunk)]);
    }
    let mut readings = block.readings()?;
    readings.sort_by_key(|r| r.ts_ns);
    Ok(chunks_of_sorted(&readings))
}

/// Most readings in one chunk. A chunk is one redb value; values much
/// larger than a page get leaves of their own in redb's B-tree, and mixed
/// with the small chunks of live ingest they leave most pages nearly empty
/// (measured: 33 bytes per reading on disk instead of 3). 1024 slowly
/// varying readings encode to about 2 KiB plain, half a page, and to far
/// less compressed ([`encode_settled`]).
pub const MAX_CHUNK_READINGS: usize = 1024;

/// Encodes sorted readings of one series into per-bucket chunk blocks of at
/// most [`MAX_CHUNK_READINGS`].
pub fn chunks_of_sorted(readings: &[Reading]) -> Vec<(i64, ReadingBlock)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < readings.len() {
        let bucket = bucket_of(readings[start].ts_ns);
        let end = readings[start..]
            .iter()
            .take(MAX_CHUNK_READINGS)
            .position(|r| bucket_of(r.ts_ns) != bucket)
            .map_or((start + MAX_CHUNK_READINGS).min(readings.len()), |n| {
                start + n
            });
        out.push((bucket, ReadingBlock::encode(0, &readings[start..end])));
        start = end;
    }
    out
}

/// Chunk bytes.
pub fn encode(block: &ReadingBlock) -> Vec<u8> {
    // A ReadingBlock of plain integers and floats always encodes.
    codec::to_vec(block).unwrap_or_default()
}

/// First byte of a tagged chunk. MessagePack never uses 0xC1, so no plain
/// chunk (a MessagePack `ReadingBlock`) starts with it: chunks written
/// before tags existed read as they always did.
const TAG: u8 = 0xC1;
/// Codec byte after [`TAG`]: the rest is one zstd frame (with its content
/// size) of the plain chunk.
const CODEC_ZSTD: u8 = 1;
/// Codec byte after [`TAG`]: a summary's length (LEB128), the
/// [`Summary`] of the chunk's readings ([`Summary::encode`]), then the
/// chunk itself, plain or `[TAG, CODEC_ZSTD]` (never summarised again).
const CODEC_SUMMARY: u8 = 2;
/// Fewest readings a settled chunk has to hold to carry a [`Summary`]
/// (about 70 bytes with a narrow sketch: under 64 readings it would cost
/// more than a byte per reading). Shorter chunks are decoded by stepped
/// queries.
pub const MIN_SUMMARY_READINGS: usize = 64;
/// zstd level: `.cargo/config.toml` builds zstd with only the `fast`
/// strategy, which level 1 uses.
const ZSTD_LEVEL: i32 = 1;
/// Most bytes a compressed chunk may inflate to. A plain chunk of
/// [`MAX_CHUNK_READINGS`] readings is at most about 19 KiB (9-byte
/// delta-of-deltas and float values).
const MAX_PLAIN: usize = 1 << 20;

std::thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Chunk bytes for a settled bucket (what compaction writes): the plain
/// chunk compressed with zstd behind the tag `[0xC1, 1]`, or the plain chunk
/// when compression does not make it smaller; either behind
/// `[0xC1, 2]` and the [`Summary`] of its readings when it holds at least
/// [`MIN_SUMMARY_READINGS`]. `bucket` is the chunk's (its key's): the
/// summary's times are stored from it.
pub fn encode_settled(bucket: i64, block: &ReadingBlock) -> Vec<u8> {
    let inner = compress(block);
    // Summarised from the readings the chunk reads back as, so that a
    // summary is exactly what decoding the chunk and summarising gives.
    let summary = (block.len() >= MIN_SUMMARY_READINGS)
        .then(|| block.readings().ok())
        .flatten()
        .and_then(|rs| summarize(&rs));
    let Some(summary) = summary else {
        return inner;
    };
    let mut body = Vec::with_capacity(96);
    summary.encode(bucket, &mut body);
    let mut out = Vec::with_capacity(body.len() + inner.len() + 4);
    out.extend_from_slice(&[TAG, CODEC_SUMMARY]);
    put_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out.extend_from_slice(&inner);
    out
}

/// The plain chunk zstd-compressed behind `[0xC1, 1]`, or plain when that
/// is not smaller.
pub fn compress(block: &ReadingBlock) -> Vec<u8> {
    let plain = encode(block);
    let packed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        c.as_mut().and_then(|c| c.compress(&plain).ok())
    });
    match packed {
        Some(z) if z.len() + 2 < plain.len() => {
            let mut out = Vec::with_capacity(z.len() + 2);
            out.extend_from_slice(&[TAG, CODEC_ZSTD]);
            out.extend_from_slice(&z);
            out
        }
        _ => plain,
    }
}

fn inflate(frame: &[u8]) -> Result<Vec<u8>, DecodeError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| DecodeError::new("chunk", e))?);
        }
        d.as_mut()
            .map_or(Err(DecodeError::new("chunk", "no zstd context")), |d| {
                d.decompress(frame, MAX_PLAIN)
                    .map_err(|e| DecodeError::new("chunk", e))
            })
    })
}

/// A summarised chunk's summary bytes and the chunk behind them.
type Split<'a> = (&'a [u8], &'a [u8]);

/// Splits a `[0xC1, 2]` chunk into its summary bytes and the chunk
/// behind them; `None` for every other form.
fn split_summary(bytes: &[u8]) -> Result<Option<Split<'_>>, DecodeError> {
    let [TAG, CODEC_SUMMARY, rest @ ..] = bytes else {
        return Ok(None);
    };
    let mut at = 0;
    let len = get_varint(rest, &mut at)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| at.checked_add(len))
        .filter(|&end| end <= rest.len())
        .ok_or_else(|| DecodeError::new("chunk", "summary runs past the chunk"))?;
    Ok(Some((&rest[at..end], &rest[end..])))
}

/// Reads a stored chunk back: plain or tagged (see [`encode_settled`]).
pub fn decode(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
    let bytes = match split_summary(bytes)? {
        Some((_, [TAG, CODEC_SUMMARY, ..])) => {
            return Err(DecodeError::new("chunk", "a summary inside a summary"));
        }
        Some((_, inner)) => inner,
        None => bytes,
    };
    let plain;
    let bytes = match bytes {
        [TAG, CODEC_ZSTD, frame @ ..] => {
            plain = inflate(frame)?;
            &plain[..]
        }
        [TAG, codec, ..] => {
            return Err(DecodeError::new(
                "chunk",
                format_args!("unknown chunk codec {codec}"),
            ));
        }
        _ => bytes,
    };
    let block: ReadingBlock = codec::from_bytes("chunk", bytes)?;
    block.readings().map_err(|e| DecodeError::new("chunk", e))
}

/// The [`Summary`] a stored chunk of bucket `bucket` carries, without
/// decoding its readings; `None` for a chunk without one (short, or
/// written before summaries: decode it).
pub fn summary(bytes: &[u8], bucket: i64) -> Result<Option<Summary>, DecodeError> {
    match split_summary(bytes)? {
        Some((body, _)) => Summary::decode(body, bucket).map(Some),
        None => Ok(None),
    }
}

/// Smaller of two values, NaN only when both are: `a` when they compare
/// equal (−0.0 and 0.0), whatever the compiler does with `f64::min`.
fn lesser(a: f64, b: f64) -> f64 {
    if b < a || a.is_nan() { b } else { a }
}

/// Larger of two values; see [`lesser`].
fn greater(a: f64, b: f64) -> f64 {
    if b > a || a.is_nan() { b } else { a }
}

/// What a stepped query needs of some readings of one series (a chunk, or
/// the part of one in a step window): a [`WindowAggregate`] without its
/// place, and the times of its first and last reading.
///
/// Built by [`Summary::add`] one reading at a time in stored order and
/// joined by [`Summary::merge`] in chunk order, the same way whether the
/// summary was stored with its chunk or made by decoding it: a step
/// window's `sum` is the sum, in chunk order, of each chunk's own sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Readings.
    pub count: u64,
    /// Time of `first`: the earliest reading's (the first of equal ones).
    pub first_ts: i64,
    /// Time of `last`: the latest reading's (the last of equal ones).
    pub last_ts: i64,
    /// Sum of the values, in order.
    pub sum: f64,
    /// Smallest value (NaN only if all are).
    pub min: f64,
    /// Largest value (NaN only if all are).
    pub max: f64,
    /// Value of the earliest reading.
    pub first: f64,
    /// Value of the latest reading.
    pub last: f64,
    /// Quantile sketch of the values (NaN left out).
    pub sketch: DdSketch,
}

impl Summary {
    /// The summary of one reading.
    pub fn of(r: &Reading) -> Self {
        let mut sketch = DdSketch::new();
        sketch.add(r.value);
        Self {
            count: 1,
            first_ts: r.ts_ns,
            last_ts: r.ts_ns,
            sum: r.value,
            min: r.value,
            max: r.value,
            first: r.value,
            last: r.value,
            sketch,
        }
    }

    /// Adds a reading that comes after every reading summarised so far in
    /// stored order.
    pub fn add(&mut self, r: &Reading) {
        let v = r.value;
        self.count = self.count.saturating_add(1);
        self.sum += v;
        self.min = lesser(self.min, v);
        self.max = greater(self.max, v);
        if r.ts_ns < self.first_ts {
            (self.first_ts, self.first) = (r.ts_ns, v);
        }
        if r.ts_ns >= self.last_ts {
            (self.last_ts, self.last) = (r.ts_ns, v);
        }
        self.sketch.add(v);
    }

    /// Folds in the summary of readings stored after these.
    pub fn merge(&mut self, later: &Summary) {
        self.count = self.count.saturating_add(later.count);
        self.sum += later.sum;
        self.min = lesser(self.min, later.min);
        self.max = greater(self.max, later.max);
        if later.first_ts < self.first_ts {
            (self.first_ts, self.first) = (later.first_ts, later.first);
        }
        if later.last_ts >= self.last_ts {
            (self.last_ts, self.last) = (later.last_ts, later.last);
        }
        self.sketch.merge(&later.sketch);
    }

    /// The window `[start_ns, start_ns + len_ns)` these readings make.
    pub fn window(self, start_ns: i64, len_ns: u64) -> WindowAggregate {
        WindowAggregate {
            series: 0,
            start_ns,
            len_ns,
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            first: self.first,
            last: self.last,
            sketch: Some(self.sketch),
        }
    }

    /// Appends the stored form (docs/storage.md, "Chunk summaries"),
    /// LEB128 integers and little-endian floats: `count`, `first_ts −
    /// bucket` (zigzag), `last_ts − first_ts`, `sum min max first last`
    /// (8 bytes each), then the sketch: `zero`, and for the positive then
    /// the negative bins `offset` (zigzag), their number and each count.
    pub fn encode(&self, bucket: i64, out: &mut Vec<u8>) {
        put_varint(out, self.count);
        put_varint(out, zigzag(self.first_ts.wrapping_sub(bucket)));
        put_varint(out, self.last_ts.wrapping_sub(self.first_ts) as u64);
        for f in [self.sum, self.min, self.max, self.first, self.last] {
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        put_varint(out, self.sketch.zero);
        for bins in [&self.sketch.positive, &self.sketch.negative] {
            put_varint(out, zigzag(i64::from(bins.offset)));
            put_varint(out, bins.counts.len() as u64);
            for &c in &bins.counts {
                put_varint(out, c);
            }
        }
    }

    /// Reads [`Summary::encode`]'s form back (all of `bytes`).
    pub fn decode(bytes: &[u8], bucket: i64) -> Result<Self, DecodeError> {
        let bad = |what: &str| DecodeError::new("chunk summary", what);
        let mut at = 0;
        let count = get_varint(bytes, &mut at)?;
        let first_ts = bucket.wrapping_add(unzigzag(get_varint(bytes, &mut at)?));
        let last_ts = first_ts.wrapping_add(get_varint(bytes, &mut at)? as i64);
        let mut floats = [0.0f64; 5];
        for f in &mut floats {
            let raw = bytes
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .ok_or_else(|| bad("truncated"))?;
            *f = f64::from_bits(u64::from_le_bytes(raw));
            at += 8;
        }
        let [sum, min, max, first, last] = floats;
        let mut sketch = DdSketch::new();
        sketch.zero = get_varint(bytes, &mut at)?;
        for bins in [&mut sketch.positive, &mut sketch.negative] {
            bins.offset = i32::try_from(unzigzag(get_varint(bytes, &mut at)?))
                .map_err(|_| bad("bin offset out of range"))?;
            let n = get_varint(bytes, &mut at)?;
            if n > MAX_BINS as u64 {
                return Err(bad("too many sketch bins"));
            }
            bins.counts = (0..n)
                .map(|_| get_varint(bytes, &mut at))
                .collect::<Result<_, _>>()?;
        }
        sketch
            .validate()
            .map_err(|e| DecodeError::new("chunk summary", e))?;
        if at != bytes.len() {
            return Err(bad("bytes after the sketch"));
        }
        Ok(Self {
            count,
            first_ts,
            last_ts,
            sum,
            min,
            max,
            first,
            last,
            sketch,
        })
    }
}

/// The summary of readings in stored order; `None` for none.
pub fn summarize(readings: &[Reading]) -> Option<Summary> {
    let (head, rest) = readings.split_first()?;
    let mut s = Summary::of(head);
    for r in rest {
        s.add(r);
    }
    Some(s)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes
            .get(*at)
            .ok_or_else(|| DecodeError::new("chunk summary", "truncated"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::new("chunk summary", "integer too long"))
}

/// A window aggregate as stored: [`WindowAggregate`] with `series = 0`.
pub fn encode_aggregate(agg: &WindowAggregate) -> Vec<u8> {
    let mut a = agg.clone();
    a.series = 0;
    codec::to_vec(&a).unwrap_or_default()
}

/// Reads a stored aggregate back.
pub fn decode_aggregate(bytes: &[u8]) -> Result<WindowAggregate, DecodeError> {
    codec::from_bytes("aggregate", bytes)
}

/// Folds `later` into `acc`: counts and sums add, extremes widen, `first`
/// stays, `last` is taken from `later`; sketches merge when both have one and
/// are dropped otherwise (a sketch must describe every value it counts).
/// Callers merge in time order, so `first`/`last` stay exact.
pub fn merge_aggregate(acc: &mut WindowAggregate, later: &WindowAggregate) {
    acc.count = acc.count.saturating_add(later.count);
    acc.sum += later.sum;
    acc.min = acc.min.min(later.min);
    acc.max = acc.max.max(later.max);
    acc.last = later.last;
    match (&mut acc.sketch, &later.sketch) {
        (Some(a), Some(b)) => a.merge(b),
        _ => acc.sketch = None,
    }
}

/// An aggregate of one reading, to fold raw readings into windows.
pub fn aggregate_of(start_ns: i64, len_ns: u64, value: f64) -> WindowAggregate {
    let mut sketch = DdSketch::new();
    sketch.add(value);
    WindowAggregate {
        series: 0,
        start_ns,
        len_ns,
        count: 1,
        sum: value,
        min: value,
        max: value,
        first: value,
        last: value,
        sketch: Some(sketch),
    }
}

/// Folds sorted readings into aligned windows of `len_ns`, in time order.
/// Each reading is added in place: the same window as merging
/// [`aggregate_of`] the reading into it ([`merge_aggregate`]), without a
/// sketch allocated per reading.
pub fn downsample(readings: &[Reading], len_ns: u64) -> Vec<WindowAggregate> {
    let span = i64::try_from(len_ns).unwrap_or(i64::MAX).max(1);
    let mut out: Vec<WindowAggregate> = Vec::new();
    for r in readings {
        let start = align(r.ts_ns, span);
        match out.last_mut() {
            Some(acc) if acc.start_ns == start => {
                let v = r.value;
                acc.count = acc.count.saturating_add(1);
                acc.sum += v;
                acc.min = acc.min.min(v);
                acc.max = acc.max.max(v);
                acc.last = v;
                if let Some(s) = &mut acc.sketch {
                    s.add(v);
                }
            }
            _ => out.push(aggregate_of(start, len_ns, r.value)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ts_ns: i64, value: f64) -> Reading {
        Reading { ts_ns, value }
    }

    #[test]
    fn unsorted_blocks_are_split_by_bucket_and_sorted() {
        let h = CHUNK_SPAN_NS;
        let block = ReadingBlock::encode(7, &[r(h + 5, 1.0), r(3, 2.0), r(h + 1, 3.0), r(1, 4.0)]);
        let chunks = split_block(&block).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].0, 0);
        assert_eq!(chunks[0].1.readings().unwrap(), vec![r(1, 4.0), r(3, 2.0)]);
        assert_eq!(chunks[1].0, h);
        assert_eq!(
            chunks[1].1.readings().unwrap(),
            vec![r(h + 1, 3.0), r(h + 5, 1.0)]
        );
        assert_eq!(
            decode(&encode(&chunks[1].1)).unwrap(),
            vec![r(h + 1, 3.0), r(h + 5, 1.0)]
        );
    }

    #[test]
    fn chunks_hold_at_most_max_chunk_readings() {
        let h = CHUNK_SPAN_NS;
        // 2500 readings in the first hour, 3 in the second.
        let mut rs: Vec<Reading> = (0..2500).map(|i| r(i * 1_000_000, 20.0)).collect();
        rs.extend([r(h, 1.0), r(h + 1, 2.0), r(h + 2, 3.0)]);
        let sizes: Vec<(i64, usize)> = chunks_of_sorted(&rs)
            .iter()
            .map(|(b, block)| (*b, block.len()))
            .collect();
        assert_eq!(sizes, vec![(0, 1024), (0, 1024), (0, 452), (h, 3)]);
    }

    fn bits(rs: &[Reading]) -> Vec<(i64, u64)> {
        rs.iter().map(|r| (r.ts_ns, r.value.to_bits())).collect()
    }

    #[test]
    fn settled_chunks_are_compressed_and_read_back_bit_for_bit() {
        // Slowly varying decimals: compressed, far smaller than plain.
        let slow: Vec<Reading> = (0..1024)
            .map(|i| {
                r(
                    i * 1_000_000_000,
                    f64::from(2000 + (i as i32 * 7) % 11) / 100.0,
                )
            })
            .collect();
        let block = ReadingBlock::encode(0, &slow);
        let (plain, packed) = (encode(&block), compress(&block));
        assert_eq!(&packed[..2], &[TAG, CODEC_ZSTD]);
        assert!(
            packed.len() * 4 < plain.len(),
            "{} {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(bits(&decode(&packed).unwrap()), bits(&slow));
        assert_eq!(bits(&decode(&plain).unwrap()), bits(&slow));
        // Settled: the same frame behind its summary.
        let settled = encode_settled(0, &block);
        assert_eq!(&settled[..2], &[TAG, CODEC_SUMMARY]);
        assert!(settled.ends_with(&packed));
        assert_eq!(bits(&decode(&settled).unwrap()), bits(&slow));
        // Floats that are no short decimals, NaN and −0.0 included.
        let odd: Vec<Reading> = (0..300)
            .map(|i| match i % 4 {
                0 => r(i, f64::NAN),
                1 => r(i, -0.0),
                2 => r(i, (i as f64).sqrt()),
                _ => r(i, f64::from_bits(0x7ff8_0000_0000_0001)),
            })
            .collect();
        let settled = encode_settled(0, &ReadingBlock::encode(0, &odd));
        assert_eq!(bits(&decode(&settled).unwrap()), bits(&odd));
        // A short chunk has no summary, and one compression does not
        // shrink stays plain.
        let one = ReadingBlock::encode(0, &[r(5, 1.25)]);
        assert_eq!(encode_settled(0, &one), encode(&one));
        assert_eq!(decode(&encode_settled(0, &one)).unwrap(), vec![r(5, 1.25)]);
        assert_eq!(summary(&encode_settled(0, &one), 0).unwrap(), None);
    }

    #[test]
    fn unknown_codecs_and_damaged_frames_are_errors() {
        let block = ReadingBlock::encode(0, &[r(1, 2.0); 100]);
        let packed = compress(&block);
        let mut other = packed.clone();
        other[1] = 3;
        assert!(decode(&other).unwrap_err().to_string().contains("codec 3"));
        let cut = &packed[..packed.len() - 3];
        assert!(decode(cut).is_err());
        // Summaries: cut, overlong, nested.
        let settled = encode_settled(0, &block);
        assert!(summary(&settled, 0).unwrap().is_some());
        let len = settled[2] as usize;
        let mut long = settled.clone();
        long[2] = 0x7f;
        assert!(decode(&long).is_err());
        assert!(summary(&long, 0).is_err());
        let mut short = settled.clone();
        short[2] = (len - 1) as u8;
        assert!(summary(&short, 0).is_err());
        let mut nested = settled[..3 + len].to_vec();
        nested.extend_from_slice(&settled);
        nested[2] = len as u8;
        assert!(decode(&nested).unwrap_err().to_string().contains("summary"));
    }

    /// A stored summary reads back as the summary of the chunk's readings,
    /// bit for bit, NaN, infinities, −0.0, equal timestamps and wide
    /// sketches included.
    #[test]
    fn summaries_read_back_as_summarising_the_decoded_chunk() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let h = CHUNK_SPAN_NS;
        let bucket = 1_700_000_000_000_000_000 / h * h;
        for round in 0..200 {
            let n = 64 + (next() % 1000) as usize;
            let mut t = bucket + (next() % 1000) as i64;
            let rs: Vec<Reading> = (0..n)
                .map(|_| {
                    t += (next() % 3) as i64 * (1 + (next() % 1_000_000) as i64);
                    let value = match next() % 12 {
                        0 => f64::NAN,
                        1 => -0.0,
                        2 => 0.0,
                        3 => f64::INFINITY,
                        4 => f64::NEG_INFINITY,
                        5 => -((next() % 1000) as f64) / 7.0,
                        6 => 1e-300,
                        7 => f64::from_bits(next()),
                        _ => (next() % 100_000) as f64 / 100.0,
                    };
                    r(t, value)
                })
                .collect();
            let bytes = encode_settled(bucket, &ReadingBlock::encode(0, &rs));
            let stored = summary(&bytes, bucket).unwrap().unwrap();
            let made = summarize(&decode(&bytes).unwrap()).unwrap();
            let key = |s: &Summary| {
                (
                    s.count,
                    s.first_ts,
                    s.last_ts,
                    [s.sum, s.min, s.max, s.first, s.last].map(f64::to_bits),
                    s.sketch.clone(),
                )
            };
            assert_eq!(key(&stored), key(&made), "round {round}");
            assert_eq!(stored.count, n as u64);
            assert_eq!((stored.first_ts, stored.last_ts), (rs[0].ts_ns, t));
        }
    }

    #[test]
    fn summaries_join_like_one_summary_of_ordered_readings() {
        let rs = [
            r(10, 2.0),
            r(10, 3.0),
            r(5, -0.0),
            r(20, f64::NAN),
            r(20, 1.0),
            r(7, 0.0),
        ];
        let s = summarize(&rs).unwrap();
        assert_eq!((s.count, s.first_ts, s.last_ts), (6, 5, 20));
        // The first of the earliest, the last of the latest.
        assert_eq!((s.first.to_bits(), s.last), ((-0.0f64).to_bits(), 1.0));
        assert_eq!((s.min.to_bits(), s.max), ((-0.0f64).to_bits(), 3.0));
        assert!(s.sum.is_nan());
        assert_eq!(s.sketch.count(), 5);
        let mut joined = summarize(&rs[..3]).unwrap();
        joined.merge(&summarize(&rs[3..]).unwrap());
        assert_eq!(
            (joined.count, joined.first_ts, joined.last_ts, joined.last),
            (6, 5, 20, 1.0)
        );
        assert_eq!(joined.first.to_bits(), (-0.0f64).to_bits());
        assert_eq!(joined.sketch, s.sketch);
        // All NaN: NaN extremes.
        let nan = summarize(&[r(1, f64::NAN), r(2, f64::NAN)]).unwrap();
        assert!(nan.min.is_nan() && nan.max.is_nan());
        let w = s.window(0, 100);
        assert_eq!((w.start_ns, w.len_ns, w.count), (0, 100, 6));
    }

    #[test]
    fn downsampling_in_place_equals_merging_one_reading_windows() {
        // The fold downsample replaced, kept as the reference.
        fn by_merging(readings: &[Reading], len_ns: u64) -> Vec<WindowAggregate> {
            let span = i64::try_from(len_ns).unwrap().max(1);
            let mut out: Vec<WindowAggregate> = Vec::new();
            for r in readings {
                let start = align(r.ts_ns, span);
                let one = aggregate_of(start, len_ns, r.value);
                match out.last_mut() {
                    Some(acc) if acc.start_ns == start => merge_aggregate(acc, &one),
                    _ => out.push(one),
                }
            }
            out
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = -5_000;
        let rs: Vec<Reading> = (0..5_000)
            .map(|_| {
                t += (next() % 40) as i64;
                let value = match next() % 10 {
                    0 => f64::NAN,
                    1 => -0.0,
                    2 => -((next() % 1000) as f64) / 7.0,
                    3 => 1e-300,
                    _ => (next() % 100_000) as f64 / 100.0,
                };
                r(t, value)
            })
            .collect();
        for len in [1, 7, 60, 1_000, 100_000] {
            let (a, b) = (downsample(&rs, len), by_merging(&rs, len));
            assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(&b) {
                assert_eq!(
                    (a.start_ns, a.len_ns, a.count, &a.sketch),
                    (b.start_ns, b.len_ns, b.count, &b.sketch)
                );
                let bits =
                    |w: &WindowAggregate| [w.sum, w.min, w.max, w.first, w.last].map(f64::to_bits);
                assert_eq!(bits(a), bits(b));
            }
        }
    }

    #[test]
    fn sorted_single_bucket_blocks_are_kept() {
        let block = ReadingBlock::encode(3, &[r(10, 1.5), r(20, 1.5)]);
        let chunks = split_block(&block).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].1.series, 0);
        assert_eq!(chunks[0].1.dods, block.dods);
        assert_eq!(align(-1, 10), -10);
    }

    #[test]
    fn downsampling_keeps_first_last_and_counts() {
        let rs = [r(0, 5.0), r(4, 1.0), r(9, 3.0), r(10, 7.0)];
        let w = downsample(&rs, 10);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].count, w[0].sum, w[0].min, w[0].max),
            (3, 9.0, 1.0, 5.0)
        );
        assert_eq!((w[0].first, w[0].last), (5.0, 3.0));
        assert_eq!(w[0].sketch.as_ref().unwrap().count(), 3);
        assert_eq!((w[1].start_ns, w[1].count, w[1].first), (10, 1, 7.0));
        let mut merged = w[0].clone();
        merge_aggregate(&mut merged, &w[1]);
        assert_eq!(
            (merged.count, merged.first, merged.last, merged.max),
            (4, 5.0, 7.0, 7.0)
        );
        assert_eq!(merged.sketch.unwrap().count(), 4);
    }
}
