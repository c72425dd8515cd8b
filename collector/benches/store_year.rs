//! The store over time: a year of 1,000 series at 1 Hz, in simulated time,
//! through the collector's real store code path (ingest's `prepare`, the
//! writer's group commit `apply_group`, and the maintenance the server runs
//! with `RetentionPlan::at`, compaction of settled buckets included), then
//! on-disk bytes per reading and query latency as the store grows.
//!
//! - load: slowly varying temperatures (values in hundredths, a random walk
//!   of −0.05…+0.05 per second, each step drawn independently: nothing
//!   periodic for a compressor to find), 1,000 series (`temperature{device, sensor,
//!   group}`, 100 series per `group`), one reading per second each, shipped
//!   in 10-second batches (10,000 readings), 16 batches per durable commit;
//! - maintenance: at every simulated hour, passes of the production plan
//!   (`RetentionPlan::at(now, &storage)`) until no work is left; raw
//!   readings are kept (`[storage] raw_retention = "0s"`), so that the
//!   figures are for a year of raw data (the default 7-day raw retention
//!   would downsample older data into 5-minute windows);
//! - at each checkpoint (1, 2, 7, 14, 30, 91, 182 and 365 days stored,
//!   and at the end): the store file's bytes per reading (`du`, what the
//!   disk holds), and the latency of `Store::query_within` (what `GET
//!   /api/v1/query` runs, with the default query limits) for the last hour,
//!   the last day, the last 30 days, and the last 30 days at a 1 h step, on
//!   one series and on 100 series (p50/p99 over 20 queries each, each on a
//!   different series or group), the stepped query also decoding every
//!   chunk as before chunk summaries (`Store::query_reading` without
//!   summaries: the baseline, same answers), with how many chunks each
//!   read from summaries and decoded. A query over the limits is printed
//!   as refused, with the bound it hit.
//!
//! Run: `cargo bench -p ferry-collector --bench store_year`
//! (`FERRY_BENCH_STORE_DAYS`: simulated days, default 2 — 173 M readings,
//! meant to take minutes; 365 for the year, about 31.5 G readings and hours
//! of filling on 2 cores;
//! `FERRY_BENCH_STORE_SERIES`: series, default 1000; `FERRY_BENCH_DIR`: where
//! the store file goes, default a temporary directory).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_collector::config::{Limits, QueryLimits, StorageConfig};
use ferry_collector::query::{Query, Selector};
use ferry_collector::store::StepReads;
use ferry_collector::{RetentionPlan, Store, StoreError};
use ferry_proto::batch::{Batch, Reading, ReadingBlock};
use ferry_proto::series::SeriesKey;

const SEC: i64 = 1_000_000_000;
const HOUR: i64 = 3_600 * SEC;
const DAY: i64 = 24 * HOUR;
const BATCH_SECS: i64 = 10;
const BATCHES_PER_COMMIT: usize = 16;
const GROUP: usize = 100;
const QUERIES: usize = 20;
const TARGET_BYTES: f64 = 2.5;
const TARGET_DAY_P99_MS: f64 = 100.0;

/// A query kind, on how many series, and (p50 ms, p99 ms, points answered,
/// how the last query read its chunks) or the limit that refused it.
type QueryRow = (
    &'static str,
    usize,
    Result<(f64, f64, usize, StepReads), StoreError>,
);

/// SplitMix64: a well-mixed 64-bit hash of `x` (Steele, Lea, Flood 2014).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One second of series `s`'s random walk (reading `n`): a step of −5..=+5
/// hundredths, uniform and independent of every other step (no period for a
/// compressor to find), kept within ±20.00 of where the series started.
fn walk_step(level: &mut i64, s: u64, n: u64) -> i64 {
    let step = (mix((s << 40) ^ n) % 11) as i64 - 5;
    let start = 2_000 + s as i64 * 10;
    let next = *level + step;
    *level = if (next - start).abs() > 2_000 {
        *level - step
    } else {
        next
    };
    *level
}

fn disk_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

struct Checkpoint {
    days: f64,
    readings: u64,
    file: u64,
    disk: u64,
    fill_rate: f64,
    /// Where the file's bytes go.
    footprint: Option<ferry_collector::store::Footprint>,
    /// (query, on how many series, p50 ms, p99 ms, points answered) or why
    /// it was refused.
    queries: Vec<QueryRow>,
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let env = |name: &str, full: f64, quick_v: f64| match std::env::var(name) {
        Ok(v) => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) if quick => quick_v,
        Err(_) => full,
    };
    let days = env("FERRY_BENCH_STORE_DAYS", 2.0, 0.125);
    let series = env("FERRY_BENCH_STORE_SERIES", 1000.0, 200.0) as usize;
    assert!(
        series >= GROUP && series.is_multiple_of(GROUP),
        "FERRY_BENCH_STORE_SERIES: a multiple of {GROUP}"
    );
    let hours = ((days * 24.0).round() as i64).max(1);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = std::env::var_os("FERRY_BENCH_DIR")
        .map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    let path = dir.join("store-year.redb");
    let _ = std::fs::remove_file(&path);
    let store = Store::open(&path).expect("store");
    let mut state = store.writer_state().expect("writer state");
    let limits = Limits::default();
    let storage = StorageConfig {
        raw_retention: Duration::ZERO,
        ..StorageConfig::default()
    };
    let query_limits = QueryLimits::default();
    let agent: Arc<str> = Arc::from("gw-year");
    // Simulated time ends at the real now (the ingest window is checked
    // against the simulated now, as the server checks it against its clock).
    let t0 = (ferry_collector::now_ns() - hours * HOUR) / HOUR * HOUR;
    let keys: Vec<SeriesKey> = (0..series)
        .map(|s| {
            SeriesKey::new(
                "temperature",
                [
                    ("device", format!("d{:03}", s / 5)),
                    ("group", format!("g{}", s / GROUP)),
                    ("sensor", format!("s{}", s % 5)),
                ],
            )
            .expect("series key")
        })
        .collect();
    let mut checkpoints: Vec<i64> = [1, 2, 7, 14, 30, 91, 182, 365]
        .iter()
        .map(|d| d * 24)
        .filter(|&h| h < hours)
        .collect();
    checkpoints.push(hours);
    eprintln!(
        "store_year: {series} series at 1 Hz for {hours} simulated hours ({:.0} M readings) into {}",
        (hours * 3600) as f64 * series as f64 / 1e6,
        path.display()
    );

    let started = Instant::now();
    let (mut seq, mut readings) = (0u64, 0u64);
    let mut group = Vec::with_capacity(BATCHES_PER_COMMIT);
    let mut results = Vec::new();
    let mut last_print = Instant::now();
    let mut rs: Vec<Reading> = Vec::with_capacity(BATCH_SECS as usize);
    // Each series' value in hundredths: 20.00 °C + 0.10 per series to start.
    let mut level: Vec<i64> = (0..series as i64).map(|s| 2_000 + s * 10).collect();
    for h in 0..hours {
        for b in 0..3_600 / BATCH_SECS {
            seq += 1;
            let first = h * 3_600 + b * BATCH_SECS;
            let blocks = (0..series)
                .map(|s| {
                    rs.clear();
                    rs.extend((first..first + BATCH_SECS).map(|n| Reading {
                        ts_ns: t0 + n * SEC,
                        value: walk_step(&mut level[s], s as u64, n as u64) as f64 / 100.0,
                    }));
                    ReadingBlock::encode(s as u32, &rs)
                })
                .collect();
            let now = t0 + (first + BATCH_SECS) * SEC;
            let batch = Batch {
                seq,
                created_ns: now,
                series: keys.clone(),
                blocks,
                ..Batch::default()
            };
            readings += batch.reading_count() as u64;
            group.push(
                ferry_collector::ingest::prepare(&agent, "127.0.0.1:1", &batch, &limits, now)
                    .expect("prepare"),
            );
            if group.len() == BATCHES_PER_COMMIT {
                store
                    .apply_group(&mut state, &group, u64::MAX, now)
                    .expect("commit");
                group.clear();
            }
        }
        let now = t0 + (h + 1) * HOUR;
        if !group.is_empty() {
            store
                .apply_group(&mut state, &group, u64::MAX, now)
                .expect("commit");
            group.clear();
        }
        store
            .maintain(&mut state, &RetentionPlan::at(now, &storage))
            .expect("maintenance");
        if last_print.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "store_year: {:.1} of {:.1} days, {readings} readings, {:.0} readings/s, {:.2} bytes/reading on disk",
                (h + 1) as f64 / 24.0,
                hours as f64 / 24.0,
                readings as f64 / started.elapsed().as_secs_f64(),
                disk_bytes(&path) as f64 / readings as f64
            );
            last_print = Instant::now();
        }
        if checkpoints.contains(&(h + 1)) {
            let fill_rate = readings as f64 / started.elapsed().as_secs_f64();
            let queries = measure(&store, &query_limits, now, series);
            let footprint = store.footprint().ok();
            results.push(Checkpoint {
                footprint,
                days: (h + 1) as f64 / 24.0,
                readings,
                file: store.file_bytes(),
                disk: disk_bytes(&path),
                fill_rate,
                queries,
            });
        }
    }

    println!(
        "collector store over time ({series} series at 1 Hz, simulated {:.1} days, raw kept, compacted by the production maintenance; {:.0} s to fill and measure)",
        hours as f64 / 24.0,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  query latency: Store::query_within (GET /api/v1/query's path, default limits), p50 / p99 ms over {QUERIES} queries"
    );
    for c in &results {
        println!(
            "  {:>6.1} days {:>12} readings  {:.2} bytes/reading on disk ({:.2} file size)  target ≤ {TARGET_BYTES}  {}   filled at {:.0} readings/s",
            c.days,
            c.readings,
            c.disk as f64 / c.readings as f64,
            c.file as f64 / c.readings as f64,
            if c.disk as f64 / c.readings as f64 <= TARGET_BYTES {
                "PASS"
            } else {
                "MISS"
            },
            c.fill_rate
        );
        if let Some(f) = &c.footprint {
            let per = |b: u64| b as f64 / c.readings as f64;
            println!(
                "               where the bytes go, per reading: chunk payload {:.2}, staged payload {:.2}; on disk besides the tables below (free pages, other tables, redb's own) {:.2}",
                per(f.chunk_payload),
                per(f.staged_payload),
                per(c.disk.saturating_sub(f.file - f.other()))
            );
            for t in &f.tables {
                println!(
                    "                 {:<15} {:>10} rows  {:.3} (keys and values {:.3}, page overhead {:.3}, unused page bytes {:.3})",
                    t.name,
                    t.rows,
                    per(t.total()),
                    per(t.stored),
                    per(t.overhead),
                    per(t.slack)
                );
            }
        }
        for (what, n, r) in &c.queries {
            match r {
                Ok((p50, p99, points, reads)) => println!(
                    "               {what:<22} {n:>4} series  p50 {p50:>8.2} ms  p99 {p99:>8.2} ms  ({points} points answered){}{}",
                    if reads.summarised + reads.decoded > 0 {
                        format!(
                            "; chunks: {} from summaries, {} decoded",
                            reads.summarised, reads.decoded
                        )
                    } else {
                        String::new()
                    },
                    if *what == "last day" && *n == 1 {
                        format!(
                            "   target p99 ≤ {TARGET_DAY_P99_MS} ms  {}",
                            if *p99 <= TARGET_DAY_P99_MS {
                                "PASS"
                            } else {
                                "MISS"
                            }
                        )
                    } else {
                        String::new()
                    }
                ),
                Err(why) => println!("               {what:<22} {n:>4} series  refused: {why}"),
            }
        }
    }
}

/// The query set at simulated time `now`.
fn measure(store: &Store, limits: &QueryLimits, now: i64, series: usize) -> Vec<QueryRow> {
    // (what, range, step, chunk summaries used)
    let kinds: [(&str, i64, Option<u64>, bool); 5] = [
        ("last hour", HOUR, None, true),
        ("last day", DAY, None, true),
        ("last 30 days", 30 * DAY, None, true),
        ("last 30 days, 1 h step", 30 * DAY, Some(HOUR as u64), true),
        ("  decoding every chunk", 30 * DAY, Some(HOUR as u64), false),
    ];
    let mut out = Vec::new();
    for (what, span, step, summaries) in kinds {
        for n in [1, GROUP] {
            let mut lat = Vec::with_capacity(QUERIES);
            let mut points = 0;
            let mut reads = StepReads::default();
            let mut refused = None;
            for i in 0..QUERIES {
                let selector = if n == 1 {
                    let s = (i * 37) % series;
                    Selector::parse(&format!(
                        "temperature{{device=\"d{:03}\",sensor=\"s{}\"}}",
                        s / 5,
                        s % 5
                    ))
                } else {
                    Selector::parse(&format!(
                        "temperature{{group=\"g{}\"}}",
                        i % (series / GROUP)
                    ))
                }
                .expect("selector");
                let q = Query {
                    selector,
                    from_ns: now - span,
                    to_ns: now + 1,
                    step_ns: step,
                    raw: true,
                    aggregates: true,
                };
                let t = Instant::now();
                match store.query_reading(&q, limits, summaries) {
                    Ok((r, how)) => {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        reads = how;
                        points = r
                            .iter()
                            .map(|s| s.readings.len() + s.windows.len())
                            .sum::<usize>();
                    }
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            if let Some(why) = refused {
                out.push((what, n, Err(why)));
                continue;
            }
            lat.sort_by(f64::total_cmp);
            let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
            out.push((what, n, Ok((pct(0.5), pct(0.99), points, reads))));
        }
    }
    out
}
