//! Ingest benchmark: batches of 1000 readings from several concurrent
//! connections into the store with durable group commits; readings/s and
//! ack latency, next to a naive baseline measured in the same run (raw redb,
//! one row per reading, one durable commit per batch of the same size); and
//! bytes per reading on disk for slowly varying series.
//!
//! The footprint phase simulates three days of a running server at the store
//! API (no network): 200 slowly varying series at 1 Hz shipped in 5-second
//! batches, 16 batches per durable commit, and the hourly maintenance the
//! server runs (an hour's chunks are compacted once the hour has settled).
//! The store file's size over the readings stored is the on-disk cost a user
//! pays, including redb's page overhead and the pages compaction frees.
//!
//! Run: `cargo bench -p ferry-collector --bench ingest`
//! (`FERRY_BENCH_BATCHES` = batches per connection, default 400;
//! `FERRY_BENCH_HOURS` = simulated hours of the footprint phase, default 72:
//! the file's fixed costs amortise over days, as on a server that keeps them.)

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Agent, Fixture, Running};
use ferry_proto::batch::{Batch, Reading, ReadingBlock};
use ferry_proto::series::SeriesKey;
use ferry_proto::session::Ack;
use redb::{Database, TableDefinition};

const CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 32;
const SERIES_PER_BATCH: usize = 10;
const READINGS_PER_SERIES: usize = 100;
const READINGS_PER_BATCH: usize = SERIES_PER_BATCH * READINGS_PER_SERIES;

/// Slowly varying series: a sensor sampled every second whose value moves
/// by at most 0.05 per sample (two decimals), like a temperature.
fn make_batch(agent: usize, seq: u64, t_start: i64) -> Batch {
    let mut b = Batch {
        seq,
        created_ns: t_start,
        ..Batch::default()
    };
    for s in 0..SERIES_PER_BATCH {
        b.series.push(
            SeriesKey::new(
                "temperature",
                [("agent", format!("a{agent}")), ("sensor", format!("s{s}"))],
            )
            .unwrap(),
        );
        let base = 2000 + (s as i64) * 100;
        let readings: Vec<Reading> = (0..READINGS_PER_SERIES)
            .map(|i| {
                let n = (seq as i64) * READINGS_PER_SERIES as i64 + i as i64;
                // A deterministic walk of ±5 hundredths.
                let walk = ((n * 7919 + s as i64 * 104_729) % 11) - 5;
                Reading {
                    ts_ns: t_start + n * 1_000_000_000,
                    value: (base + (n / 50) % 40 + walk) as f64 / 100.0,
                }
            })
            .collect();
        b.blocks.push(ReadingBlock::encode(s as u32, &readings));
    }
    b
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Figures {
    readings_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn collector_run(
    fx: &Fixture,
    batches_per_conn: u64,
    t_start: i64,
) -> (Figures, u64, u64, u64, u64) {
    let server = Running::start(fx.config()).await;
    let mut agents = Vec::new();
    for c in 0..CONNECTIONS {
        let bundle = fx.enroll(&format!("bench-{c}"));
        let (agent, _) = Agent::session(server.quic, &bundle).await;
        agents.push(Arc::new(agent));
    }
    // Encode up front: the benchmark measures the collector, not the client.
    let frames: Vec<Vec<Vec<u8>>> = (0..CONNECTIONS)
        .map(|c| {
            (1..=batches_per_conn)
                .map(|seq| {
                    let body = ferry_proto::codec::to_vec(&make_batch(c, seq, t_start)).unwrap();
                    common::frame(ferry_proto::stream::FrameType::Batch, 0, &body)
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, agent) in agents.iter().enumerate() {
        let frames = Arc::new(frames[c].clone());
        for lane in 0..IN_FLIGHT {
            let agent = agent.clone();
            let frames = frames.clone();
            tasks.spawn(async move {
                let mut lat = Vec::new();
                for (i, f) in frames.iter().enumerate().skip(lane).step_by(IN_FLIGHT) {
                    let t = Instant::now();
                    let ack = agent.send_raw(f).await.unwrap();
                    assert_eq!(ack, Ack::stored(i as u64 + 1));
                    lat.push(t.elapsed());
                }
                lat
            });
        }
    }
    let mut lat = Vec::new();
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.unwrap());
    }
    let elapsed = started.elapsed();
    lat.sort();
    let total = CONNECTIONS as u64 * batches_per_conn * READINGS_PER_BATCH as u64;
    let commits = {
        let text = server.handle.metrics().render();
        text.lines()
            .find_map(|l| l.strip_prefix("ferry_collector_commit_batches_count "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let file_before_maintenance = server.handle.store().file_bytes();
    // Compact the (now settled) chunks as maintenance would, then measure.
    let plan = ferry_collector::RetentionPlan {
        raw_before: None,
        downsample_len: 60_000_000_000,
        aggregates_before: None,
        max_bytes: None,
        compact_before: i64::MAX,
    };
    server.handle.maintain(plan).await.unwrap();
    let chunk_bytes = server.handle.store().chunk_bytes().unwrap();
    for a in &agents {
        a.conn.close(0u32.into(), b"done");
    }
    server.stop().await;
    (
        Figures {
            readings_per_sec: total as f64 / elapsed.as_secs_f64(),
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
        },
        total,
        chunk_bytes,
        file_before_maintenance,
        commits,
    )
}

/// What the footprint phase measured.
struct Footprint {
    readings: u64,
    series: usize,
    hours: i64,
    file: u64,
    disk: u64,
    chunk_bytes: u64,
    compacted: u64,
    elapsed: Duration,
}

/// Bytes the file occupies on disk (`du`): redb grows its file by doubling
/// (up to 4 GiB) with `set_len`, and the part never written is sparse.
fn disk_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// A simulated day of a running server at the store API (module docs).
fn footprint_run(dir: &std::path::Path, series: usize, hours: i64) -> Footprint {
    const SEC: i64 = 1_000_000_000;
    const HOUR: i64 = 3_600 * SEC;
    const BATCH_SECS: i64 = 5;
    const BATCHES_PER_COMMIT: usize = 16;
    let started = Instant::now();
    let path = dir.join("footprint.redb");
    let store = ferry_collector::Store::open(&path).unwrap();
    let mut state = store.writer_state().unwrap();
    let limits = ferry_collector::config::Limits::default();
    let agent: Arc<str> = Arc::from("gw-footprint");
    let t0 = (ferry_collector::now_ns() - 2 * 24 * HOUR) / HOUR * HOUR;
    let keys: Vec<SeriesKey> = (0..series)
        .map(|s| {
            SeriesKey::new(
                "temperature",
                [
                    ("device", format!("d{}", s / 5)),
                    ("sensor", format!("s{}", s % 5)),
                ],
            )
            .unwrap()
        })
        .collect();
    let (mut seq, mut readings, mut compacted) = (0u64, 0u64, 0u64);
    let mut group = Vec::with_capacity(BATCHES_PER_COMMIT);
    for h in 0..hours {
        for b in 0..3_600 / BATCH_SECS {
            seq += 1;
            let first = h * 3_600 + b * BATCH_SECS;
            let blocks = (0..series)
                .map(|s| {
                    let rs: Vec<Reading> = (first..first + BATCH_SECS)
                        .map(|n| {
                            // A deterministic walk of ±5 hundredths.
                            let walk = ((n * 7919 + s as i64 * 104_729) % 11) - 5;
                            Reading {
                                ts_ns: t0 + n * SEC,
                                value: (2000 + s as i64 * 10 + (n / 50) % 40 + walk) as f64 / 100.0,
                            }
                        })
                        .collect();
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
                    .unwrap(),
            );
            if group.len() == BATCHES_PER_COMMIT {
                store
                    .apply_group(&mut state, &group, u64::MAX, now)
                    .unwrap();
                group.clear();
            }
        }
        let now = t0 + (h + 1) * HOUR;
        if !group.is_empty() {
            store
                .apply_group(&mut state, &group, u64::MAX, now)
                .unwrap();
            group.clear();
        }
        // The server's maintenance at the top of the hour: buckets that ended
        // more than the settle time ago are compacted, in bounded passes.
        let plan = ferry_collector::RetentionPlan {
            raw_before: None,
            downsample_len: 60 * SEC as u64,
            aggregates_before: None,
            max_bytes: None,
            compact_before: now - ferry_collector::store::COMPACT_SETTLE_NS,
        };
        loop {
            let report = store.maintain(&mut state, &plan).unwrap();
            compacted += report.compacted_chunks;
            if report.compacted_chunks == 0 {
                break;
            }
        }
        eprintln!(
            "ingest: footprint: hour {}/{hours}, {readings} readings, store file {:.2} bytes/reading, {:.2} on disk",
            h + 1,
            store.file_bytes() as f64 / readings as f64,
            disk_bytes(&path) as f64 / readings as f64
        );
    }
    let chunk_bytes = store.chunk_bytes().unwrap();
    let file = store.file_bytes();
    let disk = disk_bytes(&path);
    Footprint {
        readings,
        series,
        hours,
        file,
        disk,
        chunk_bytes,
        compacted,
        elapsed: started.elapsed(),
    }
}

/// One row per reading, `(series, ts) -> value`, one durable transaction per
/// batch of 1000 readings, batches from CONNECTIONS threads.
fn baseline_run(dir: &std::path::Path, batches_per_conn: u64, t_start: i64) -> (Figures, u64) {
    const ROWS: TableDefinition<'_, (u64, i64), f64> = TableDefinition::new("rows");
    let db = Arc::new(Database::create(dir.join("baseline.redb")).unwrap());
    let started = Instant::now();
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                for seq in 1..=batches_per_conn {
                    let b = make_batch(c, seq, t_start);
                    let t = Instant::now();
                    let txn = db.begin_write().unwrap();
                    {
                        let mut rows = txn.open_table(ROWS).unwrap();
                        for block in &b.blocks {
                            let sid = (c * SERIES_PER_BATCH) as u64 + u64::from(block.series);
                            for r in block.readings().unwrap() {
                                rows.insert((sid, r.ts_ns), r.value).unwrap();
                            }
                        }
                    }
                    txn.commit().unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    lat.sort();
    let total = CONNECTIONS as u64 * batches_per_conn * READINGS_PER_BATCH as u64;
    drop(db);
    let file = std::fs::metadata(dir.join("baseline.redb")).unwrap().len();
    (
        Figures {
            readings_per_sec: total as f64 / elapsed.as_secs_f64(),
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
        },
        file,
    )
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less args;
    // run a tiny configuration then so that the target stays tested.
    let quick = !std::env::args().any(|a| a == "--bench");
    let batches: u64 = std::env::var("FERRY_BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 4 } else { 400 });
    let t_start = ferry_collector::now_ns() - 20 * 86_400 * 1_000_000_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fx = Fixture::new();
    let (ours, total, chunk_bytes, file_before, commits) =
        rt.block_on(collector_run(&fx, batches, t_start));
    let file_bytes = std::fs::metadata(fx.data.join(ferry_collector::STORE_FILE))
        .unwrap()
        .len();
    let (_, compacted_bytes) =
        ferry_collector::Store::compact_file(&fx.data.join(ferry_collector::STORE_FILE)).unwrap();
    let hours: i64 = std::env::var("FERRY_BENCH_HOURS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2 } else { 72 });
    let foot_dir = tempfile::tempdir().unwrap();
    let foot = footprint_run(foot_dir.path(), if quick { 10 } else { 200 }, hours);
    let base_dir = tempfile::tempdir().unwrap();
    // The naive baseline is slow (one fsync per 1000 readings): a quarter of
    // the batches gives a stable rate.
    let base_batches = (batches / 4).max(1);
    let (base, base_file) = baseline_run(base_dir.path(), base_batches, t_start);
    let base_total = CONNECTIONS as u64 * base_batches * READINGS_PER_BATCH as u64;

    println!(
        "ferry-collector ingest benchmark ({CONNECTIONS} connections, {IN_FLIGHT} batches in flight each, {READINGS_PER_BATCH} readings per batch, durable commits)"
    );
    println!(
        "  collector : {total:>9} readings  {:>12.0} readings/s  ack p50 {:>8.2} ms  p99 {:>8.2} ms",
        ours.readings_per_sec,
        ours.p50.as_secs_f64() * 1e3,
        ours.p99.as_secs_f64() * 1e3
    );
    println!(
        "  baseline  : {base_total:>9} readings  {:>12.0} readings/s  commit p50 {:>5.2} ms  p99 {:>8.2} ms  (raw redb, row per reading, commit per batch)",
        base.readings_per_sec,
        base.p50.as_secs_f64() * 1e3,
        base.p99.as_secs_f64() * 1e3
    );
    println!(
        "  commits   : {commits} durable commits, {:.1} batches per commit",
        (total / READINGS_PER_BATCH as u64) as f64 / commits.max(1) as f64
    );
    println!(
        "  ratio     : {:.2}x the baseline",
        ours.readings_per_sec / base.readings_per_sec
    );
    println!(
        "  on disk   : {:.2} bytes/reading in chunks; store file {:.2} bytes/reading after ingest, {:.2} after chunk compaction, {:.2} after `ferry-collector compact` (baseline file: {:.2})",
        chunk_bytes as f64 / total as f64,
        file_before as f64 / total as f64,
        file_bytes as f64 / total as f64,
        compacted_bytes as f64 / total as f64,
        base_file as f64 / base_total as f64
    );
    let per = |b: u64| b as f64 / foot.readings as f64;
    println!(
        "  footprint : {} readings  {} series at 1 Hz for {} simulated hours, 5 s batches, hourly maintenance ({} chunks compacted, {:.1} s)",
        foot.readings,
        foot.series,
        foot.hours,
        foot.compacted,
        foot.elapsed.as_secs_f64()
    );
    println!(
        "              on disk {:.2} bytes/reading ({} bytes allocated; file length {:.2}: redb doubles it ahead of use), chunk data {:.2}   target ≤ 4  {}",
        per(foot.disk),
        foot.disk,
        per(foot.file),
        per(foot.chunk_bytes),
        if per(foot.disk) <= 4.0 {
            "PASS"
        } else {
            "MISS"
        }
    );
}
