//! Wire bytes per reading of revision-3 batches, revision-4 compact
//! batches and revision-5 compact batches with value references, on the
//! e2e benchmark's load (agent/benches/e2e/load.rs: `temperature,device=dNNN,sensor=sN value=XX.YY`, values a random walk in
//! hundredths), cut into batches the way the agent's journal cuts them, and
//! compressed as the agent compresses them (zstd level 1 with checksum).
//! Deterministic: fixed seeds, so the figures are exact and asserted.
//!
//! `cargo test -p ferry-proto --test wire_size -- --nocapture` prints them.

use std::collections::HashMap;

use ferry_proto::batch::{Batch, Reading, ReadingBlock};
use ferry_proto::compact::{CompactBatch, Definitions, References};
use ferry_proto::series::SeriesKey;
use ferry_proto::stream::HEADER_LEN;

/// The bench's generator: one connection's series, round-robin.
struct Lines {
    series: Vec<(SeriesKey, i64, i64)>,
    next: usize,
    rng: u64,
    step_ns: i64,
}

impl Lines {
    fn new(connection: usize, t0_ns: i64, step_ns: i64) -> Self {
        let mut series = Vec::new();
        for d in 0..50 {
            let device = connection * 50 + d;
            for s in 0..5 {
                let key = SeriesKey::new(
                    "temperature",
                    [
                        ("device", format!("d{device:03}")),
                        ("sensor", format!("s{s}")),
                    ],
                )
                .unwrap();
                series.push((key, 1800 + ((device * 7 + s * 13) % 900) as i64, t0_ns));
            }
        }
        Self {
            series,
            next: 0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ connection as u64,
            step_ns,
        }
    }

    fn next(&mut self) -> (SeriesKey, Reading) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let (key, value, ts) = &mut self.series[self.next];
        *value = (*value + (self.rng % 11) as i64 - 5).clamp(1000, 3500);
        let reading = Reading {
            ts_ns: *ts,
            value: format!("{}.{:02}", *value / 100, *value % 100)
                .parse()
                .unwrap(),
        };
        *ts += self.step_ns;
        let key = key.clone();
        self.next = (self.next + 1) % self.series.len();
        (key, reading)
    }
}

fn zstd(plain: &[u8]) -> usize {
    let mut c = zstd::bulk::Compressor::new(1).unwrap();
    c.include_checksum(true).unwrap();
    let packed = c.compress(plain).unwrap();
    HEADER_LEN + packed.len().min(plain.len())
}

/// Series ids as the journal assigns them: first seen, first numbered.
#[derive(Default)]
struct Ids {
    ids: HashMap<SeriesKey, u32>,
}

impl Ids {
    fn of(&mut self, key: &SeriesKey) -> u32 {
        let n = self.ids.len() as u32;
        *self.ids.entry(key.clone()).or_insert(n)
    }
}

/// A batch in flight: the generation it is coded against, the one it
/// sets, and the last values that one will hold.
type InFlight = (u64, u64, Vec<(u32, f64)>);

/// Revision 5's value references as the agent's shipper keeps them: a
/// batch is coded against the latest generation the collector confirmed;
/// it sets the next one when no other batch setting one is unanswered and
/// none in flight is coded against the generation before the latest.
/// Every batch is answered `ack_lag` batches after it is sent (the
/// batches in flight).
struct Shipper {
    refs: References,
    ack_lag: usize,
    next_gen: u64,
    /// In flight, oldest first: (base, sets, last values of a setter).
    in_flight: std::collections::VecDeque<InFlight>,
}

impl Shipper {
    fn new(ack_lag: usize) -> Self {
        Self {
            refs: References::default(),
            ack_lag,
            next_gen: 1,
            in_flight: Default::default(),
        }
    }

    fn compact(&mut self, batch: &Batch, ids: &[u32]) -> CompactBatch {
        let previous = self.refs.previous();
        let pending = self
            .in_flight
            .iter()
            .any(|(base, sets, _)| *sets != 0 || (*base != 0 && *base == previous));
        let sets = if pending {
            0
        } else {
            self.next_gen += 1;
            self.next_gen - 1
        };
        let (c, last) = self.refs.encode(batch, ids, sets).unwrap();
        self.in_flight.push_back((c.ref_base, sets, last));
        while self.in_flight.len() > self.ack_lag {
            let (base, sets, last) = self.in_flight.pop_front().unwrap();
            self.refs.set(base, sets, &last).unwrap();
        }
        c
    }
}

/// Sizes of the same batches in all forms: (readings, rev-3 wire bytes,
/// compact wire bytes, definitions wire bytes, compact wire bytes with
/// value references).
fn measure(
    readings: impl Iterator<Item = (SeriesKey, Reading)>,
    sizes: &[usize],
    mut shipper: Shipper,
) -> [usize; 5] {
    let mut readings = readings;
    let mut ids = Ids::default();
    let mut defined = std::collections::HashSet::new();
    let mut out = [0usize; 5];
    for (seq, &n) in sizes.iter().enumerate() {
        // The journal's batch: a dictionary in first-seen order, one block
        // per series.
        let mut batch = Batch {
            seq: seq as u64 + 1,
            created_ns: 1_700_000_000_000_000_000,
            epoch: 0x9f3c_51e2_07a4_d6b8,
            ..Batch::default()
        };
        let mut index: HashMap<SeriesKey, usize> = HashMap::new();
        let mut raw: Vec<Vec<Reading>> = Vec::new();
        for _ in 0..n {
            let (key, r) = readings.next().unwrap();
            let i = *index.entry(key.clone()).or_insert_with(|| {
                batch.series.push(key);
                raw.push(Vec::new());
                raw.len() - 1
            });
            raw[i].push(r);
        }
        for (i, mut rs) in raw.into_iter().enumerate() {
            rs.sort_by_key(|r| r.ts_ns);
            batch.blocks.push(ReadingBlock::encode(i as u32, &rs));
        }
        let series_ids: Vec<u32> = batch.series.iter().map(|k| ids.of(k)).collect();
        let compact = CompactBatch::from_batch(&batch, &series_ids).unwrap();
        let mut defs = Definitions::default();
        for (k, &id) in batch.series.iter().zip(&series_ids) {
            if defined.insert(id) {
                defs.ids.push(id);
                defs.keys.push(k.clone());
            }
        }
        out[0] += n;
        out[1] += zstd(&ferry_proto::codec::to_vec(&batch).unwrap());
        out[2] += zstd(&ferry_proto::codec::to_vec(&compact).unwrap());
        if !defs.ids.is_empty() {
            out[3] += zstd(&ferry_proto::codec::to_vec(&defs).unwrap());
        }
        let referenced = shipper.compact(&batch, &series_ids);
        out[4] += zstd(&ferry_proto::codec::to_vec(&referenced).unwrap());
    }
    out
}

fn per(bytes: usize, readings: usize) -> f64 {
    bytes as f64 / readings as f64
}

/// The latency phase: one connection (250 series) at 50,000 readings/s in
/// 1 ms ticks of 50 lines, each series' timestamps 20 ms apart; eager
/// batches of 70–160 readings; 5,000 of them, about the 10 s the bench runs
/// this phase (the walks spread apart as they run, so the figure grows
/// with the length of the run).
#[test]
fn paced_50k_per_second() {
    let run = |ack_lag: usize| {
        let mut lines = Lines::new(4, 1_700_000_000_000_000_000, 20_000_000);
        let mut rng = 12345u64;
        let sizes: Vec<usize> = (0..5_000)
            .map(|_| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                70 + (rng >> 33) as usize % 91
            })
            .collect();
        let out = measure(
            std::iter::from_fn(|| Some(lines.next())),
            &sizes,
            Shipper::new(ack_lag),
        );
        (sizes.len(), out)
    };
    // Answers 4 batches (about 9 ms) after sending; and slower.
    let (batches, [n, full, compact, defs, referenced]) = run(4);
    let (_, [_, _, _, _, slow]) = run(16);
    println!(
        "50k/s: {n} readings in {batches} batches: revision 3 {:.2} bytes/reading, compact {:.2} (+ {:.4} of definitions, once per session), compact with value references {:.2} (answers 4 batches behind; {:.2} 16 behind)",
        per(full, n),
        per(compact, n),
        per(defs, n),
        per(referenced, n),
        per(slow, n),
    );
    // The figures docs/protocol.md quotes ("Compact batches", "Value
    // references"), and issue 21's goal: at most 2 bytes per reading.
    assert_eq!(
        format!(
            "{:.2} {:.2} {:.2} {:.2}",
            per(full, n),
            per(compact, n),
            per(referenced, n),
            per(slow, n)
        ),
        "7.20 2.58 1.76 1.84"
    );
    assert!(per(referenced, n) <= 2.0);
}

/// The full-rate phase: four connections of 250 series writing 2048-line
/// chunks, each series' timestamps 1 ms apart; batches of 16,384 readings.
#[test]
fn full_rate() {
    let mut conns: Vec<Lines> = (0..4)
        .map(|c| Lines::new(c, 1_700_000_000_000_000_000, 1_000_000))
        .collect();
    let mut at = 0usize;
    let mut i = 0usize;
    let readings = std::iter::from_fn(|| {
        let r = conns[at].next();
        i += 1;
        if i.is_multiple_of(2048) {
            at = (at + 1) % conns.len();
        }
        Some(r)
    });
    let sizes = vec![16_384; 40];
    let [n, full, compact, defs, referenced] = measure(readings, &sizes, Shipper::new(4));
    println!(
        "full rate: {n} readings in {} batches: revision 3 {:.3} bytes/reading, compact {:.3} (+ {:.4} of definitions), compact with value references {:.3}",
        sizes.len(),
        per(full, n),
        per(compact, n),
        per(defs, n),
        per(referenced, n)
    );
    assert_eq!(
        format!(
            "{:.3} {:.3} {:.3}",
            per(full, n),
            per(compact, n),
            per(referenced, n)
        ),
        "0.905 0.558 0.538"
    );
}
