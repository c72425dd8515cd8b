//! Chunks: the unit of raw-reading storage, and window aggregates.
//!
//! A chunk is a [`ReadingBlock`] (delta-of-delta timestamps, scaled decimal
//! value deltas where exact) with `series = 0`, MessagePack-encoded, holding
//! readings of one series that all fall in one aligned bucket of
//! [`CHUNK_SPAN_NS`], sorted by timestamp. Ingest stores it plain;
//! compaction stores it zstd-compressed behind a two-byte codec tag
//! ([`encode_settled`]). [`decode`] reads both.

use ferry_proto::batch::{BlockError, Reading, ReadingBlock, WindowAggregate};
use ferry_proto::codec::{self, DecodeError};
use ferry_proto::sketch::DdSketch;

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
/// when compression does not make it smaller.
pub fn encode_settled(block: &ReadingBlock) -> Vec<u8> {
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

/// Reads a stored chunk back: plain or tagged (see [`encode_settled`]).
pub fn decode(bytes: &[u8]) -> Result<Vec<Reading>, DecodeError> {
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
        let (plain, settled) = (encode(&block), encode_settled(&block));
        assert_eq!(&settled[..2], &[TAG, CODEC_ZSTD]);
        assert!(
            settled.len() * 4 < plain.len(),
            "{} {}",
            settled.len(),
            plain.len()
        );
        assert_eq!(bits(&decode(&settled).unwrap()), bits(&slow));
        assert_eq!(bits(&decode(&plain).unwrap()), bits(&slow));
        // Floats that are no short decimals, NaN and −0.0 included.
        let odd: Vec<Reading> = (0..300)
            .map(|i| match i % 4 {
                0 => r(i, f64::NAN),
                1 => r(i, -0.0),
                2 => r(i, (i as f64).sqrt()),
                _ => r(i, f64::from_bits(0x7ff8_0000_0000_0001)),
            })
            .collect();
        let settled = encode_settled(&ReadingBlock::encode(0, &odd));
        assert_eq!(bits(&decode(&settled).unwrap()), bits(&odd));
        // A chunk compression does not shrink stays plain.
        let one = ReadingBlock::encode(0, &[r(5, 1.25)]);
        assert_eq!(encode_settled(&one), encode(&one));
        assert_eq!(decode(&encode_settled(&one)).unwrap(), vec![r(5, 1.25)]);
    }

    #[test]
    fn unknown_codecs_and_damaged_frames_are_errors() {
        let block = ReadingBlock::encode(0, &[r(1, 2.0); 100]);
        let settled = encode_settled(&block);
        let mut other = settled.clone();
        other[1] = 2;
        assert!(decode(&other).unwrap_err().to_string().contains("codec 2"));
        let cut = &settled[..settled.len() - 3];
        assert!(decode(cut).is_err());
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
