//! Stepped queries answer the same, bit for bit, whether chunks are read
//! by their summaries or decoded (`super`).

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::batch::{Batch, Reading, ReadingBlock, WindowAggregate};
use ferry_proto::series::SeriesKey;
use redb::{ReadableDatabase, ReadableTable};

use crate::config::{Limits, QueryLimits};
use crate::query::{Query, Selector};
use crate::store::{CHUNK_SPAN_NS, CHUNKS, RetentionPlan, SeriesResult, Store, WriterState, chunk};

const SEC: i64 = 1_000_000_000;
const H: i64 = CHUNK_SPAN_NS;

/// xorshift64: the test's own reproducible randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A value: one in `odds` is NaN, ±∞, ±0.0 or tiny; the rest
    /// decimals and large floats.
    fn value(&mut self, odds: u64) -> f64 {
        if self.below(odds) != 0 {
            return match self.below(10) {
                0 => (self.below(1 << 40) as f64).sqrt() * 1e6,
                1 => -((self.below(1000)) as f64) / 7.0,
                _ => (2_000 + self.below(1_000) as i64) as f64 / 100.0,
            };
        }
        match self.below(7) {
            0 => f64::NAN,
            1 => f64::from_bits(0x7ff8_0000_0000_0001),
            2 => -0.0,
            3 => 0.0,
            4 => f64::INFINITY,
            5 => f64::NEG_INFINITY,
            _ => 1e-300,
        }
    }
}

/// Floats compared by their bits; NaN as one value (Rust does not promise
/// which NaN arithmetic on NaN gives).
fn bits(f: f64) -> u64 {
    if f.is_nan() { u64::MAX } else { f.to_bits() }
}

/// A window: start, length, count, the five values, the three quantiles.
type Row = (i64, u64, u64, [u64; 5], [Option<u64>; 3]);
/// A series: name, readings, windows.
type Answer = (String, Vec<(i64, u64)>, Vec<Row>);

fn rows(result: &[SeriesResult]) -> Vec<Answer> {
    result
        .iter()
        .map(|s| {
            (
                s.series.clone(),
                s.readings.iter().map(|&(t, v)| (t, bits(v))).collect(),
                s.windows
                    .iter()
                    .map(|w| {
                        (
                            w.start_ns,
                            w.len_ns,
                            w.count,
                            [w.sum, w.min, w.max, w.first, w.last].map(bits),
                            [w.p50, w.p90, w.p99].map(|p| p.map(bits)),
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    state: WriterState,
    agent: Arc<str>,
    keys: Vec<SeriesKey>,
    t0: i64,
    seq: u64,
}

impl Fixture {
    fn new(series: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.redb")).unwrap();
        let state = store.writer_state().unwrap();
        Self {
            _dir: dir,
            store,
            state,
            agent: Arc::from("gw-1"),
            keys: (0..series)
                .map(|i| SeriesKey::new("level", [("tank", i.to_string())]).unwrap())
                .collect(),
            t0: 1_700_000_000_000_000_000 / H * H,
            seq: 0,
        }
    }

    /// Stores one batch: `blocks` per series index, and `windows`.
    fn ingest(&mut self, blocks: &[(u32, Vec<Reading>)], windows: Vec<WindowAggregate>) {
        self.seq += 1;
        let batch = Batch {
            seq: self.seq,
            created_ns: self.t0,
            series: self.keys.clone(),
            blocks: blocks
                .iter()
                .filter(|(_, rs)| !rs.is_empty())
                .map(|(s, rs)| ReadingBlock::encode(*s, rs))
                .collect(),
            aggregates: windows,
            ..Batch::default()
        };
        let limits = Limits {
            max_past: Duration::from_secs(86_400 * 30),
            max_future: Duration::from_secs(86_400 * 30),
            ..Limits::default()
        };
        let now = self.t0 + 12 * H;
        let prepared = crate::ingest::prepare(&self.agent, "test", &batch, &limits, now).unwrap();
        self.store
            .apply_group(&mut self.state, &[prepared], 1000, now)
            .unwrap();
    }

    /// Compacts every bucket settled at `now`.
    fn compact(&mut self, now: i64) {
        let plan = RetentionPlan {
            raw_before: None,
            downsample_len: 60 * SEC as u64,
            aggregates_before: None,
            max_bytes: None,
            compact_before: now,
        };
        self.store.maintain(&mut self.state, &plan).unwrap();
    }

    /// Writes a chunk as an older version did: plain (ingest before
    /// staged bundles) or compressed without a summary.
    fn old_chunk(&mut self, sid: u64, bucket: i64, rs: &[Reading], compressed: bool) {
        let block = ReadingBlock::encode(0, rs);
        let bytes = if compressed {
            chunk::compress(&block)
        } else {
            chunk::encode(&block)
        };
        assert_eq!(chunk::summary(&bytes, bucket).unwrap(), None);
        self.state.begin();
        let txn = self.store.db().begin_write().unwrap();
        self.state.insert_chunk(&txn, sid, bucket, &bytes);
        self.state.save_counters(&txn).unwrap();
        txn.commit().unwrap();
    }

    /// Both ways of answering `q`, checked equal; how the summaries way
    /// read its chunks.
    fn agree(&self, q: &Query) -> super::StepReads {
        let limits = QueryLimits::default();
        let (fast, reads) = self.store.query_reading(q, &limits, true).unwrap();
        let (slow, all) = self.store.query_reading(q, &limits, false).unwrap();
        assert_eq!(all.summarised, 0);
        assert_eq!(reads.summarised + reads.decoded, all.decoded, "{q:?}");
        assert_eq!(rows(&fast), rows(&slow), "{q:?}");
        reads
    }
}

/// Readings of one series over `[from, from + len)`: a sample every
/// `gap` ns on average, out of order in places, some timestamps repeated.
/// One value in `odds` is special (see [`Rng::value`]).
fn readings(rng: &mut Rng, from: i64, len: i64, gap: i64, odds: u64) -> Vec<Reading> {
    let mut out = Vec::new();
    let mut t = from;
    while t < from + len {
        out.push(Reading {
            ts_ns: t,
            value: rng.value(odds),
        });
        match rng.below(20) {
            0 => {}                                              // the same time again
            1 => t += gap * 20,                                  // a gap
            2 => t = (t - gap * rng.below(20) as i64).max(from), // back in time
            _ => t += 1 + rng.below(2 * gap as u64) as i64,
        }
    }
    out
}

#[test]
fn summaries_answer_like_decoding_every_chunk() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut fx = Fixture::new(3);
    let t0 = fx.t0;
    // Series 0 dense (full chunks, summarised), 1 sparse (short chunks,
    // decoded), 2 in between (one chunk an hour, summarised); nine hours, shipped in slices of a few
    // minutes, in order and not.
    let gaps = [SEC, 90 * SEC, 5 * SEC];
    // Special values (NaN, ±∞, ±0.0): hardly any in series 0 (so that
    // sums, extremes and quantiles are finite and tell chunks apart),
    // many in series 1, some in series 2.
    let odds = [1_000_000, 10, 300];
    let mut slices: Vec<i64> = (0..9 * 12).map(|i| t0 + i * 300 * SEC).collect();
    for i in 0..slices.len() {
        let j = rng.below(slices.len() as u64) as usize;
        if rng.below(4) == 0 {
            slices.swap(i, j);
        }
    }
    for (n, &from) in slices.iter().enumerate() {
        let blocks: Vec<(u32, Vec<Reading>)> = (0..3)
            .map(|s| {
                let rs = readings(&mut rng, from, 300 * SEC, gaps[s], odds[s]);
                (s as u32, rs)
            })
            .collect();
        // Now and then an agent's window for series 2.
        let windows = if n % 10 == 0 {
            let v = rng.below(1_000) as f64 / 10.0;
            let mut w = chunk::aggregate_of(from, 60 * SEC as u64, v);
            w.series = 2;
            vec![w]
        } else {
            Vec::new()
        };
        fx.ingest(&blocks, windows);
        // Compaction as the hours settle, so late slices meet chunks.
        if n % 17 == 16 {
            let now = from + 2 * H;
            fx.compact(now);
        }
    }
    fx.compact(t0 + 7 * H);
    // Late readings into compacted hours (and duplicates of stored
    // times), compacted again: new chunks beside full earlier ones.
    for hour in [1, 3] {
        let blocks: Vec<(u32, Vec<Reading>)> = (0..3)
            .map(|s| {
                (
                    s as u32,
                    readings(
                        &mut rng,
                        t0 + hour * H + 1_000 * SEC,
                        600 * SEC,
                        gaps[s],
                        odds[s],
                    ),
                )
            })
            .collect();
        fx.ingest(&blocks, Vec::new());
    }
    fx.compact(t0 + 7 * H);
    // Chunks of older versions, in hours 10 and 11: plain, and compressed
    // without a summary, beside a summarised one.
    let ids: Vec<u64> = fx
        .store
        .series_keys()
        .unwrap()
        .iter()
        .map(|k| k.0)
        .collect();
    let old = |rng: &mut Rng, h: i64| {
        let mut rs = readings(rng, t0 + h * H, H - SEC, SEC, 300);
        rs.sort_by_key(|r| r.ts_ns);
        rs.truncate(900);
        rs
    };
    for &sid in &ids {
        let rs = old(&mut rng, 10);
        fx.old_chunk(sid, t0 + 10 * H, &rs, false);
        let rs = old(&mut rng, 11);
        fx.old_chunk(sid, t0 + 11 * H, &rs, true);
    }
    // Hours 7 and 8 stay staged.

    let mut total = super::StepReads::default();
    let steps = [
        SEC,
        7 * SEC,
        60 * SEC,
        420 * SEC,
        1_800 * SEC,
        H,
        H + 1,
        90 * 60 * SEC,
        2 * H,
        3 * H,
        86_400 * SEC,
    ];
    for round in 0..300 {
        let step = steps[round % steps.len()] as u64;
        // Ranges from anywhere (unaligned) to anywhere, or whole hours.
        let (from, to) = if round % 3 == 0 {
            let a = rng.below(12) as i64;
            (t0 + a * H, t0 + (a + 1 + rng.below(12) as i64) * H)
        } else {
            let a = t0 - H + rng.below(14 * H as u64) as i64;
            (a, a + 1 + rng.below(14 * H as u64) as i64)
        };
        let selector = match round % 4 {
            0 => Selector::all(),
            n => Selector::parse(&format!("level{{tank=\"{}\"}}", n - 1)).unwrap(),
        };
        let q = Query {
            selector,
            from_ns: from,
            to_ns: to,
            step_ns: Some(step),
            raw: true,
            aggregates: round % 5 != 0,
        };
        if q.plan(&QueryLimits::default()).is_err() {
            continue;
        }
        let reads = fx.agree(&q);
        total.summarised += reads.summarised;
        total.decoded += reads.decoded;
    }
    assert!(total.summarised > 200, "{total:?}");
    assert!(total.decoded > 1_000, "{total:?}");

    // Whole hours at a 1 h step: every summarised chunk of a compacted
    // hour is answered by its summary; only the short chunks, the old
    // ones and the staged pieces are decoded.
    let q = Query {
        selector: Selector::parse("level{tank=\"0\"}").unwrap(),
        from_ns: t0,
        to_ns: t0 + 7 * H,
        step_ns: Some(H as u64),
        raw: true,
        aggregates: false,
    };
    let reads = fx.agree(&q);
    let txn = fx.store.db().begin_read().unwrap();
    let table = txn.open_table(CHUNKS).unwrap();
    let mut with_summary = 0;
    for e in table
        .range((ids[0], t0, 0u64)..(ids[0], t0 + 7 * H, 0u64))
        .unwrap()
    {
        let (k, v) = e.unwrap();
        with_summary += u64::from(chunk::summary(v.value(), k.value().1).unwrap().is_some());
    }
    assert!(with_summary > 14, "{with_summary}");
    assert_eq!(reads.summarised, with_summary);
}

/// A window's raw part is the ordered sum of per-chunk sums: readings
/// whose sum depends on the order (1e16 + 1 + 1 …) show it, and both
/// ways give it.
#[test]
fn a_window_sums_chunk_sums_in_chunk_order() {
    let mut fx = Fixture::new(1);
    let t0 = fx.t0;
    // Hour 0: 1024 readings of 1.0 after one of 1e16, then 100 of 1.0:
    // two chunks (1024 and 101 readings).
    let mut rs = vec![Reading {
        ts_ns: t0,
        value: 1e16,
    }];
    rs.extend((1..1125).map(|i| Reading {
        ts_ns: t0 + i * SEC,
        value: 1.0,
    }));
    fx.ingest(&[(0, rs)], Vec::new());
    fx.compact(t0 + 2 * H);
    let q = Query {
        selector: Selector::all(),
        from_ns: t0,
        to_ns: t0 + H,
        step_ns: Some(H as u64),
        raw: true,
        aggregates: false,
    };
    let reads = fx.agree(&q);
    assert_eq!(
        reads,
        super::StepReads {
            summarised: 2,
            decoded: 0
        }
    );
    let (r, _) = fx
        .store
        .query_reading(&q, &QueryLimits::default(), true)
        .unwrap();
    let w = &r[0].windows[0];
    assert_eq!(w.count, 1125);
    // Chunk 1: 1e16 + 1023 × 1.0 rounds every 1.0 away (the spacing of
    // f64 at 1e16 is 2, and 1e16 + 1 ties to 1e16); chunk 2: 101.0;
    // joined: 1e16 + 101.0. Summed reading by reading it would be 1e16.
    let joined = 1e16f64 + 101.0;
    assert_ne!(joined, 1e16);
    assert_eq!(w.sum.to_bits(), joined.to_bits());
}
