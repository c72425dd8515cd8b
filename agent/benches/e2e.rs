//! End-to-end benchmark: Influx line protocol into a real `ferry-agent`
//! process, shipped over QUIC (mTLS) to a real collector, both hops durable:
//! the agent commits (fsync) each chunk of lines to its journal before
//! reading more of the connection, and the collector acks a batch only after
//! its durable group commit.
//!
//! - the agent is the binary as deployed on gateways: built by the bench
//!   with `cargo build --profile edge -p ferry-agent` (fat LTO, panic =
//!   abort; the first run takes minutes) and run as a child process
//!   (`ferry-agent run --config`), so its RSS is its own. `cargo test
//!   --benches` uses the test build instead, with tiny sizes;
//! - the collector runs in this process, on its own tokio runtime (the
//!   library `ferry-collector run` wraps); this process also generates the
//!   load from plain threads with blocking sockets;
//! - everything binds 127.0.0.1.
//!
//! Timestamps stay inside the collector's window however fast the agent
//! is: each phase has its own hour, starting hours ago, one reading per
//! series every millisecond (an hour holds 3.6 G readings), and the load
//! generator stops with an error rather than run past it. Every wait for
//! the collector ends: when its stored readings plus the readings counted
//! lost (agents' drop reports, the collector's refusals) reach what was
//! sent, or at a generous deadline. Any reading not stored — rejected,
//! refused, dropped — fails the bench (non-zero exit, with the counts).
//!
//! Phases, printed with their method:
//! 1. **throughput** (TCP): 4 connections write lines as fast as the agent
//!    reads them for a fixed time; readings/s = readings sent ÷ time from the
//!    first byte to the collector's ack of the last reading (its
//!    stored-readings counter reaching the total);
//! 2. **latency** at 50,000 readings/s: one connection writes 50 lines every
//!    millisecond; the k-th reading sent counts as acked when the collector's
//!    stored-readings counter (bumped when a batch's durable commit is
//!    answered, just before its ack is sent) reaches k: both hops keep a
//!    connection's order, so the counter is a FIFO clock. Latency is from the
//!    reading's *scheduled* send time (a sender held up by backpressure does
//!    not hide the delay);
//! 3. **RSS** of the agent (`/proc/<pid>/status`): idle before load, peak
//!    (`VmHWM`), idle after the load drained; and this process's peak during
//!    the throughput phase (the collector plus the load generator);
//! 4. **wire bytes per reading**: the agent's `wire_bytes` (batch frames
//!    after zstd) ÷ its `readings_out`;
//! 5. **producer paths** (issue 16): the same workload through the InfluxDB
//!    HTTP write API (`[[influx_http]]`, 4 keep-alive connections, 5,000
//!    lines per `POST /api/v2/write`, the next only after the 204 that
//!    follows the journal commit) and through MQTT (`[[mqtt]]`, QoS 1, via
//!    Debian's Mosquitto started here; 4 publishers, one message per device
//!    carrying its 5 sensors' lines): readings/s and the agent's CPU per
//!    million readings, next to the TCP row;
//! 6. **backlog**: the collector stops, the agent journals until its
//!    journal holds `FERRY_BENCH_BACKLOG_BYTES`, stops (SIGTERM), the
//!    collector comes back and the agent restarts on that backlog while a
//!    live producer sends 50,000 readings/s; prints the agent's RSS during
//!    catch-up and the drain rate (readings stored ÷ time to catch up, i.e.
//!    until everything sent more than 1 s ago is stored) against the live
//!    ingest rate;
//! 7. **Fluent Bit** (when `FERRY_BENCH_FLUENT_BIT` names a `fluent-bit`
//!    binary; `scripts/fluent-bit.sh` builds one): the throughput phase's
//!    line count, 4 connections, through a Fluent Bit agent (`tcp` input,
//!    filesystem storage, `storage.sync full`) forwarding with
//!    `require_ack_response` to a Fluent Bit aggregator (`forward` input,
//!    filesystem storage, `null` output): readings/s from first byte until
//!    the aggregator's `null.0` has processed every line, both peak RSSes,
//!    and Ferry's ratio;
//! 8. **baseline** in the same run: raw redb, one row per reading and one
//!    durable commit per chunk of 4096 readings, from 4 threads.
//!
//! Run (the agent binary is built by `cargo bench` itself):
//! `cargo bench -p ferry-agent --bench e2e`, with Fluent Bit:
//! `FERRY_BENCH_FLUENT_BIT=$(scripts/fluent-bit.sh | tail -n1) cargo bench -p ferry-agent --bench e2e`.
//! Knobs: `FERRY_BENCH_SECS` (seconds of full-rate sending, default 8),
//! `FERRY_BENCH_LATENCY_SECS` (seconds at 50k/s, default 10),
//! `FERRY_BENCH_PRODUCER_SECS` (seconds per producer path, default 4),
//! `FERRY_BENCH_BACKLOG_BYTES` (journal backlog, default 2 GiB; 0 skips the
//! phase), `FERRY_BENCH_BACKLOG_RATE` (live readings/s during catch-up,
//! default 50,000), `FERRY_BENCH_LOG` (a `tracing` filter for the in-process
//! collector's logs, e.g. `ferry_collector=debug`, and the agent's
//! `RUST_LOG`), `FERRY_BENCH_AGENT_TOML` (tables appended to the main
//! agent's configuration).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use redb::{Database, TableDefinition};

/// Client connections in the throughput phase (think: Telegraf instances).
const CONNECTIONS: usize = 4;
/// Devices per connection, sensors per device: 1000 series in all.
const DEVICES_PER_CONNECTION: usize = 50;
const SENSORS: usize = 5;
/// Readings per second in the latency phase, and lines per 1 ms tick.
const PACED_RATE: u64 = 50_000;
const PACED_TICK: Duration = Duration::from_millis(1);
/// Lines per baseline commit: the influx source's default chunk.
const BASELINE_CHUNK: usize = 4096;
/// Lines per write of the TCP writers, per HTTP request.
const TCP_CHUNK: usize = 2048;
const HTTP_LINES: usize = 5000;
/// Spacing of one series' timestamps in the full-rate phases.
const STEP_NS: i64 = 1_000_000;
const HOUR_NS: i64 = 3_600_000_000_000;

/// Targets from the agent's issues.
const TARGET_RATE: f64 = 1_000_000.0;
const TARGET_P99_MS: f64 = 25.0;
const TARGET_PEAK_MIB: f64 = 32.0;
const TARGET_IDLE_MIB: f64 = 8.0;
const TARGET_WIRE: f64 = 3.0;
const TARGET_PEER_RATIO: f64 = 5.0;
const TARGET_BACKLOG_MIB: f64 = 64.0;
const TARGET_DRAIN_RATIO: f64 = 10.0;

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: a tiny
    // configuration then, so that the target stays tested.
    let quick = !std::env::args().any(|a| a == "--bench");
    if let Ok(filter) = std::env::var("FERRY_BENCH_LOG") {
        let filter: tracing_subscriber::filter::Targets = filter
            .parse()
            .expect("FERRY_BENCH_LOG: a filter like `warn,ferry_collector=debug`");
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    }
    let env_f64 = |name: &str, full: f64, quick_v: f64| match std::env::var(name) {
        Ok(v) => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) if quick => quick_v,
        Err(_) => full,
    };
    let full_secs = Duration::from_secs_f64(env_f64("FERRY_BENCH_SECS", 8.0, 0.5));
    let latency_secs = Duration::from_secs_f64(env_f64("FERRY_BENCH_LATENCY_SECS", 10.0, 0.5));
    let producer_secs = Duration::from_secs_f64(env_f64("FERRY_BENCH_PRODUCER_SECS", 4.0, 0.3));
    let backlog_bytes = env_f64("FERRY_BENCH_BACKLOG_BYTES", (2u64 << 30) as f64, (4u64 << 20) as f64) as u64;
    let backlog_rate = env_f64("FERRY_BENCH_BACKLOG_RATE", 50_000.0, 5_000.0) as u64;
    let fluent_bit = std::env::var_os("FERRY_BENCH_FLUENT_BIT").map(PathBuf::from);

    let dir = tempfile::tempdir().expect("temporary directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("collector runtime");
    // A port of our own: the collector comes back on it in the backlog phase.
    let quic = ferry_tests::reserve_port();
    let collector = rt.block_on(Collector::start(dir.path(), quic));
    let broker = Mosquitto::start(dir.path());
    let agent = Agent::start(dir.path(), quic, broker.as_ref().ok().map(|b| b.port));
    eprintln!(
        "e2e: agent pid {} (influx TCP {}, HTTP {}, admin {}), collector on {quic}",
        agent.child.id(),
        agent.influx,
        agent.http,
        agent.admin,
    );
    agent.wait_connected();
    if let Ok(b) = &broker {
        b.wait_subscribed(&agent);
    }
    std::thread::sleep(Duration::from_secs(if quick { 0 } else { 2 }));
    let idle_before = agent.rss_kib();

    // Each phase its own hour of timestamps, all in the past.
    let now_ns = ferry_collector::now_ns() as i64;
    let hour = |h: i64| Span {
        t0_ns: now_ns - h * HOUR_NS,
        step_ns: STEP_NS,
        end_ns: now_ns - (h - 1) * HOUR_NS,
    };
    let start = agent.metrics();
    reset_own_peak_rss();
    let throughput = throughput_phase(&agent, &collector, full_secs, hour(7));
    let bench_peak = own_peak_rss_kib();
    let peak = agent.peak_rss_kib();
    let wire = agent.settled(start.readings_out + throughput.readings);

    // Paced: timestamps from now, one per series every 20 ms (50k/s).
    let paced_now = ferry_collector::now_ns() as i64;
    let latency = latency_phase(
        &agent,
        &collector,
        latency_secs,
        Span {
            t0_ns: paced_now,
            step_ns: 20_000_000,
            end_ns: paced_now + 5 * 60 * 1_000_000_000,
        },
    );
    std::thread::sleep(Duration::from_secs(if quick { 0 } else { 3 }));
    let idle_after = agent.rss_kib();
    let end = agent.settled(wire.readings_out + latency.readings);

    let http = http_phase(&agent, &collector, producer_secs, hour(6));
    let mqtt = match &broker {
        Ok(b) => Ok(mqtt_phase(&agent, &collector, b, producer_secs, hour(5))),
        Err(why) => Err(why.clone()),
    };
    agent.stop();
    drop(broker);

    let (backlog, collector) = if backlog_bytes > 0 {
        let (b, c) = backlog_phase(
            &rt,
            collector,
            dir.path(),
            quic,
            backlog_bytes,
            backlog_rate,
            hour(4),
        );
        (Some(b), c)
    } else {
        (None, collector)
    };
    // Nothing lost in the whole run, by the collector's durable totals.
    collector.assert_no_losses("the whole run");
    rt.block_on(collector.stop());
    drop(rt);

    let fluent = fluent_bit.map(|bin| fluent_bit_phase(&bin, dir.path(), throughput.readings, hour(7)));

    eprintln!("e2e: baseline (raw redb, row per reading, commit per {BASELINE_CHUNK})…");
    let base_readings = if quick { 20_000 } else { 800_000 };
    let base = baseline(dir.path(), base_readings);

    let mib = |kib: u64| kib as f64 / 1024.0;
    let pass = |ok: bool| if ok { "PASS" } else { "MISS" };
    let per_reading = |a: &AgentFigures, b: &AgentFigures| {
        (a.wire_bytes - b.wire_bytes) as f64 / (a.readings_out - b.readings_out).max(1) as f64
    };
    let wire_per = per_reading(&wire, &start);
    println!(
        "ferry-agent end-to-end benchmark (influx TCP → agent journal (fsync) → QUIC+zstd → collector (durable commit) → ack; {} series, 127.0.0.1)",
        CONNECTIONS * DEVICES_PER_CONNECTION * SENSORS
    );
    println!("  agent      : {}", agent_binary().display());
    println!(
        "  throughput : {:>9} readings  {:>10.0} readings/s  {CONNECTIONS} connections, first byte → last ack {:.2} s   target ≥ {:.0}  {}",
        throughput.readings,
        throughput.rate,
        throughput.elapsed.as_secs_f64(),
        TARGET_RATE,
        pass(throughput.rate >= TARGET_RATE)
    );
    println!(
        "               agent CPU {:.0} % of one core ({:.2} core-s per million readings)",
        throughput.agent_cpu_s / throughput.elapsed.as_secs_f64() * 100.0,
        throughput.cpu_per_million()
    );
    println!(
        "               {}; journal wrote {:.1} bytes per reading to disk",
        wire.since(&start),
        throughput.written as f64 / throughput.readings as f64
    );
    println!(
        "  latency    : {:>9} readings  at {:>7.0} readings/s  send → collector ack p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms   target p99 ≤ {TARGET_P99_MS} ms  {}",
        latency.readings,
        latency.rate,
        latency.p50_ms,
        latency.p99_ms,
        latency.max_ms,
        pass(latency.p99_ms <= TARGET_P99_MS)
    );
    println!(
        "               (1 connection, 50 lines per 1 ms tick from their scheduled time; FIFO count-matching on the collector's stored counter, sampled every ~0.1 ms)"
    );
    println!("               {}", end.since(&wire));
    println!(
        "  agent RSS  : peak {:>6.1} MiB (VmHWM)   target ≤ {TARGET_PEAK_MIB} MiB  {}",
        mib(peak),
        pass(mib(peak) <= TARGET_PEAK_MIB)
    );
    println!(
        "               idle {:>6.1} MiB before load, {:.1} MiB after it drained   target ≤ {TARGET_IDLE_MIB} MiB  {}",
        mib(idle_before),
        mib(idle_after),
        pass(mib(idle_before) <= TARGET_IDLE_MIB && mib(idle_after) <= TARGET_IDLE_MIB)
    );
    println!(
        "  collector  : peak {:>6.1} MiB during the throughput phase (VmHWM of this process: the collector and the load generator)",
        mib(bench_peak)
    );
    println!(
        "  wire       : {:.2} bytes per reading at full rate ({} bytes of batch frames after zstd / {} readings, {:.0} readings per batch)   target ≤ {TARGET_WIRE}  {}",
        wire_per,
        wire.wire_bytes - start.wire_bytes,
        wire.readings_out - start.readings_out,
        (wire.readings_out - start.readings_out) as f64
            / (wire.batches_stored - start.batches_stored).max(1) as f64,
        pass(wire_per <= TARGET_WIRE)
    );
    println!(
        "               {:.2} bytes per reading at 50k/s ({:.0} readings per batch)",
        per_reading(&end, &wire),
        (end.readings_out - wire.readings_out) as f64
            / (end.batches_stored - wire.batches_stored).max(1) as f64,
    );
    println!("  producers  : (readings/s end to end; agent CPU per million readings; {CONNECTIONS} connections each)");
    for (name, t) in [("TCP", &throughput), ("HTTP /api/v2/write", &http)] {
        println!(
            "               {name:<19} {:>9} readings  {:>10.0} readings/s  {:.2} core-s per million",
            t.readings,
            t.rate,
            t.cpu_per_million()
        );
    }
    match &mqtt {
        Ok(t) => println!(
            "               {:<19} {:>9} readings  {:>10.0} readings/s  {:.2} core-s per million   (QoS 1, {SENSORS} lines per message; Mosquitto max_inflight_messages {MQTT_INFLIGHT})",
            "MQTT",
            t.readings,
            t.rate,
            t.cpu_per_million()
        ),
        Err(why) => println!("               MQTT                skipped: {why}"),
    }
    match &backlog {
        Some(b) => {
            println!(
                "  backlog    : {:>9} readings  journal {:.0} MiB, filled at {:.0} readings/s with the collector down; agent restarted on it",
                b.readings,
                mib(b.journal_bytes / 1024),
                b.fill_rate
            );
            println!(
                "               catch-up {:.1} s: drained {:.0} readings/s against a live ingest of {:.0} readings/s: {:.1}x   target ≥ {TARGET_DRAIN_RATIO}x  {}",
                b.catch_up.as_secs_f64(),
                b.drain_rate,
                b.live_rate,
                b.drain_rate / b.live_rate,
                pass(b.drain_rate / b.live_rate >= TARGET_DRAIN_RATIO)
            );
            println!(
                "               agent RSS during catch-up: peak {:.1} MiB (VmHWM), sampled max {:.1} MiB, at the end {:.1} MiB   target ≤ {TARGET_BACKLOG_MIB} MiB  {}",
                mib(b.peak_kib),
                mib(b.sampled_max_kib),
                mib(b.end_kib),
                pass(mib(b.peak_kib) <= TARGET_BACKLOG_MIB)
            );
        }
        None => println!("  backlog    : skipped (FERRY_BENCH_BACKLOG_BYTES=0)"),
    }
    match &fluent {
        Some(f) => {
            println!(
                "  Fluent Bit : {:>9} readings  {:>10.0} readings/s  {CONNECTIONS} connections, first byte → aggregator's null output {:.2} s ({})",
                f.readings,
                f.rate,
                f.elapsed.as_secs_f64(),
                f.version
            );
            println!(
                "               agent CPU {:.2} core-s per million readings; agent peak RSS {:.1} MiB, aggregator peak RSS {:.1} MiB",
                f.agent_cpu_s / (f.readings as f64 / 1e6),
                mib(f.agent_peak_kib),
                mib(f.aggregator_peak_kib)
            );
            let ratio = throughput.rate / f.rate;
            println!(
                "  vs Fluent Bit: Ferry {:.2}x the readings/s (target ≥ {TARGET_PEER_RATIO}x  {}); agent peak RSS {:.1} vs {:.1} MiB; collector/aggregator {:.1} vs {:.1} MiB",
                ratio,
                pass(ratio >= TARGET_PEER_RATIO),
                mib(peak),
                mib(f.agent_peak_kib),
                mib(bench_peak),
                mib(f.aggregator_peak_kib)
            );
        }
        None => println!(
            "  Fluent Bit : not run (FERRY_BENCH_FLUENT_BIT=$(scripts/fluent-bit.sh | tail -n1) runs it side by side)"
        ),
    }
    println!(
        "  baseline   : {:>9} readings  {:>10.0} readings/s  (raw redb, one row per reading, one durable commit per {BASELINE_CHUNK} readings, {CONNECTIONS} threads)",
        base.readings, base.rate
    );
    println!(
        "  ratio      : {:.2}x the baseline",
        throughput.rate / base.rate
    );
    println!("  losses     : none (every reading sent in every phase was stored)");
}

/// A phase's timestamps: series by series from `t0_ns`, `step_ns` apart;
/// the generator fails rather than reach `end_ns`.
#[derive(Debug, Clone, Copy)]
struct Span {
    t0_ns: i64,
    step_ns: i64,
    end_ns: i64,
}

fn reset_own_peak_rss() {
    // "5" resets VmHWM to the current RSS (proc(5), clear_refs).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn own_peak_rss_kib() -> u64 {
    status_kib("self", "VmHWM:")
}

fn status_kib(pid: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

// ---------------------------------------------------------------------------
// The collector (in process) and the agent (child process).

struct Collector {
    stored: Counter,
    handle: ferry_collector::Handle,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ferry_collector::Error>>,
}

/// Readings counted as not stored, by the collector.
#[derive(Debug, Default)]
struct Losses {
    /// Agents' drop reports and the collector's refusals: (what, readings).
    dropped: Vec<(String, u64)>,
    /// Batches the collector rejected (their readings reach `dropped` with
    /// the agent's next health report).
    rejected_batches: u64,
}

impl Losses {
    fn readings(&self) -> u64 {
        self.dropped.iter().map(|d| d.1).sum()
    }

    fn is_empty(&self) -> bool {
        self.readings() == 0 && self.rejected_batches == 0
    }

    fn describe(&self) -> String {
        let rows: Vec<String> = self
            .dropped
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        format!(
            "{} readings dropped or refused [{}], {} batches rejected",
            self.readings(),
            rows.join("; "),
            self.rejected_batches
        )
    }
}

impl Collector {
    /// Starts a collector on `dir/collector` (created on first use),
    /// listening for QUIC on `quic`.
    async fn start(dir: &Path, quic: SocketAddr) -> Self {
        let data = dir.join("collector");
        if !data.exists() {
            ferry_collector::init(&ferry_collector::InitOptions::new(&data))
                .expect("collector init");
        }
        let mut config = ferry_collector::Config::for_data_dir(&data);
        config.quic.listen = quic;
        let collector = ferry_collector::Collector::bind(config)
            .await
            .expect("collector bind");
        let handle = collector.handle();
        let stored = handle
            .metrics()
            .readings
            .get_or_create(&[("outcome", "stored")])
            .clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(collector.run(async {
            let _ = stopped.await;
        }));
        Self {
            stored,
            handle,
            stop,
            task,
        }
    }

    fn stored(&self) -> u64 {
        self.stored.get()
    }

    /// What the collector counts as not stored: durable drop totals from
    /// the store and the rejected-batch counter.
    fn losses(&self) -> Losses {
        let rows = ferry_collector::admin::drop_rows(self.handle.store())
            .expect("reading the collector's drop totals");
        let dropped = rows
            .into_iter()
            .filter(|r| r.readings > 0)
            .map(|r| {
                (
                    format!(
                        "{} (agent {}, origin {:?}, counted by {})",
                        r.reason, r.agent, r.device, r.counted_by
                    ),
                    r.readings,
                )
            })
            .collect();
        let text = self.handle.metrics().render();
        let rejected_batches = text
            .lines()
            .filter(|l| {
                l.starts_with("ferry_collector_batches_total{") && l.contains("outcome=\"rejected\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum::<f64>() as u64;
        Losses {
            dropped,
            rejected_batches,
        }
    }

    fn assert_no_losses(&self, what: &str) {
        let losses = self.losses();
        if !losses.is_empty() {
            panic!("e2e: FAILED: {what}: {}", losses.describe());
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        drop(self.handle);
        self.task
            .await
            .expect("collector task")
            .expect("collector run");
    }
}

/// The agent binary to run: the deployed build (profile `edge`), built now,
/// for `cargo bench`; the test build for `cargo test --benches`.
fn agent_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if !std::env::args().any(|a| a == "--bench") {
                return PathBuf::from(env!("CARGO_BIN_EXE_ferry-agent"));
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            eprintln!(
                "e2e: building the agent as deployed: cargo build --profile edge -p ferry-agent …"
            );
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--profile",
                    "edge",
                    "-p",
                    "ferry-agent",
                    "--bin",
                    "ferry-agent",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("running cargo");
            assert!(status.success(), "building the agent (profile edge) failed");
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
                PathBuf::from,
            );
            target.join("edge/ferry-agent")
        })
        .clone()
}

struct Agent {
    child: Child,
    influx: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

/// A port of this process's own on 127.0.0.1 (the shared test harness).
fn free_tcp_port() -> SocketAddr {
    ferry_tests::reserve_port()
}

/// The `[collector]` table of an agent enrolled as `bench` in `bundle`.
fn collector_table(collector: SocketAddr) -> String {
    format!(
        "[collector]\naddress = \"{collector}\"\nserver_name = \"localhost\"\nca = \"ca.crt\"\ncert = \"agent.crt\"\nkey = \"agent.key\"\nagent_id = \"bench\"\n"
    )
}

/// Name of the MQTT source's client id (the broker's log names it).
const MQTT_CLIENT: &str = "ferry-bench-agent";
/// Mosquitto's window of unacknowledged QoS 1 messages to the agent.
const MQTT_INFLIGHT: u32 = 1000;

impl Agent {
    fn start(dir: &Path, collector: SocketAddr, mqtt: Option<SocketAddr>) -> Self {
        let bundle = dir.join("bundle");
        ferry_collector::enroll(&dir.join("collector"), "bench", &bundle).expect("enroll");
        let (influx, http, admin) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
        let config = bundle.join("bench-agent.toml");
        let mqtt = mqtt.map_or_else(String::new, |broker| {
            format!(
                "[[mqtt]]\nname = \"bench-mqtt\"\nbroker = \"{broker}\"\nclient_id = \"{MQTT_CLIENT}\"\n\
                 topics = [\"bench/#\"]\nformat = \"line\"\ntopic_tag = \"\"\n"
            )
        });
        std::fs::write(
            &config,
            format!(
                "[agent]\ndata_dir = \"agent-data\"\nhealth_interval = \"1s\"\n\
                 {}\
                 [admin]\nlisten = \"{admin}\"\n\
                 [[influx_tcp]]\nlisten = \"{influx}\"\n\
                 [[influx_http]]\nlisten = \"{http}\"\n\
                 {mqtt}{}",
                collector_table(collector),
                // Tuning experiments: tables appended to agent.toml, e.g.
                // FERRY_BENCH_AGENT_TOML=$'[shipping]\nmax_in_flight = "8 MiB"'.
                std::env::var("FERRY_BENCH_AGENT_TOML").unwrap_or_default()
            ),
        )
        .expect("agent config");
        Self::spawn(&config, dir.join("agent.log"), influx, http, admin)
    }

    fn spawn(
        config: &Path,
        log: PathBuf,
        influx: SocketAddr,
        http: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        let child = Command::new(agent_binary())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("FERRY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("agent log"),
            )
            .spawn()
            .expect("starting ferry-agent");
        Self {
            child,
            influx,
            http,
            admin,
            log,
        }
    }

    fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("e2e: FAILED: {what}; agent log:\n{}", tail.join("\n"));
    }

    /// Waits until the admin endpoint answers (bounded).
    fn wait_admin(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if http_get(self.admin, "/metrics").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fail("the agent's admin endpoint did not answer within 60 s");
    }

    /// Waits until the admin endpoint answers and the shipper is connected.
    fn wait_connected(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(text) = http_get(self.admin, "/metrics")
                && metric(&text, "ferry_agent_connected") == 1
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fail("the agent did not connect to the collector within 60 s");
    }

    fn metrics(&self) -> AgentFigures {
        let text = http_get(self.admin, "/metrics")
            .unwrap_or_else(|| self.fail("the agent's /metrics did not answer"));
        AgentFigures {
            readings_in: metric(&text, "ferry_agent_readings_in_total"),
            readings_out: metric(&text, "ferry_agent_readings_out_total"),
            wire_bytes: metric(&text, "ferry_agent_wire_bytes_total"),
            batches_stored: metric(&text, "ferry_agent_batches_stored_total"),
            commits: metric(&text, "ferry_agent_commit_groups_total"),
            commit_s: metric_f64(&text, "ferry_agent_commit_seconds_sum"),
            acks: metric(&text, "ferry_agent_ack_seconds_count"),
            ack_s: metric_f64(&text, "ferry_agent_ack_seconds_sum"),
        }
    }

    /// The agent's figures once it has processed the acks of `readings_out`
    /// readings (it counts them when it commits their acks, just after the
    /// collector counted them stored).
    fn settled(&self, readings_out: u64) -> AgentFigures {
        let started = Instant::now();
        loop {
            let m = self.metrics();
            if m.readings_out >= readings_out || started.elapsed() > Duration::from_secs(10) {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rss_kib(&self) -> u64 {
        status_kib(&self.child.id().to_string(), "VmRSS:")
    }

    fn peak_rss_kib(&self) -> u64 {
        status_kib(&self.child.id().to_string(), "VmHWM:")
    }

    /// Bytes the agent caused to be written to storage so far
    /// (`/proc/<pid>/io`): its journal.
    fn written(&self) -> u64 {
        let io =
            std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).unwrap_or_default();
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// User + system CPU seconds of the agent so far.
    fn cpu_s(&self) -> f64 {
        cpu_s(self.child.id())
    }

    /// SIGTERM (graceful stop), then SIGKILL if it hangs.
    fn stop(mut self) {
        // What the agent logged (warnings by default, or FERRY_BENCH_LOG).
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for line in lines.iter().skip(lines.len().saturating_sub(20)) {
            eprintln!("e2e: agent log: {line}");
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("e2e: the agent did not stop within 30 s of SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // On a panic path: never leave the child behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct AgentFigures {
    readings_in: u64,
    readings_out: u64,
    wire_bytes: u64,
    batches_stored: u64,
    commits: u64,
    /// Seconds spent in journal commits.
    commit_s: f64,
    /// Batches acked, and seconds from sending them to their acks.
    acks: u64,
    ack_s: f64,
}

impl AgentFigures {
    /// Journal commits, readings per commit, mean commit ms, mean batch
    /// send → ack ms, since `before`.
    fn since(&self, before: &AgentFigures) -> String {
        let commits = self.commits - before.commits;
        let acks = self.acks - before.acks;
        format!(
            "{commits} journal commits ({:.0} readings each, mean {:.2} ms); {acks} batches, send → ack mean {:.2} ms",
            (self.readings_in - before.readings_in) as f64 / commits.max(1) as f64,
            (self.commit_s - before.commit_s) * 1e3 / commits.max(1) as f64,
            (self.ack_s - before.ack_s) * 1e3 / acks.max(1) as f64,
        )
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, rest) = body.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| rest.to_string())
}

fn metric(text: &str, name: &str) -> u64 {
    metric_f64(text, name) as u64
}

fn metric_f64(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Load: realistic lines, generated cheaply.

/// Slowly varying temperatures: values in hundredths doing a walk of at
/// most ±0.05 per reading; each series' timestamps `span.step_ns` apart.
struct Lines {
    series: Vec<(Vec<u8>, i64, i64)>, // (prefix up to "value=", hundredths, next ts in ns)
    next: usize,
    rng: u64,
    step_ns: i64,
    end_ns: i64,
}

impl Lines {
    fn new(connection: usize, span: Span) -> Self {
        let mut series = Vec::new();
        for d in 0..DEVICES_PER_CONNECTION {
            let device = connection * DEVICES_PER_CONNECTION + d;
            for s in 0..SENSORS {
                let prefix = format!("temperature,device=d{device:03},sensor=s{s} value=");
                series.push((
                    prefix.into_bytes(),
                    1800 + ((device * 7 + s * 13) % 900) as i64,
                    span.t0_ns,
                ));
            }
        }
        Self {
            series,
            next: 0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ connection as u64,
            step_ns: span.step_ns,
            end_ns: span.end_ns,
        }
    }

    /// Appends `n` lines to `buf`.
    fn push(&mut self, buf: &mut Vec<u8>, n: usize) {
        for _ in 0..n {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let (prefix, value, ts) = &mut self.series[self.next];
            assert!(
                *ts < self.end_ns,
                "e2e: FAILED: the load generator ran out of its phase's timestamp span (the collector would refuse the readings)"
            );
            *value = (*value + (self.rng % 11) as i64 - 5).clamp(1000, 3500);
            buf.extend_from_slice(prefix);
            push_decimal(buf, *value as u64 / 100);
            buf.push(b'.');
            let cents = *value as u64 % 100;
            buf.push(b'0' + (cents / 10) as u8);
            buf.push(b'0' + (cents % 10) as u8);
            buf.push(b' ');
            push_decimal(buf, *ts as u64);
            buf.push(b'\n');
            *ts += self.step_ns;
            self.next = (self.next + 1) % self.series.len();
        }
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Waits until every one of `target` readings is accounted for at the
/// collector: stored, or counted lost (dropped by the agent, refused or
/// rejected by the collector). Returns when all were stored; fails, naming
/// the counts, when any was lost or when `deadline` passes first.
fn wait_accounted(
    collector: &Collector,
    agent: &Agent,
    target: u64,
    what: &str,
    deadline: Duration,
) -> Instant {
    let started = Instant::now();
    let mut last_print = Instant::now();
    let mut last_losses = Instant::now();
    loop {
        let stored = collector.stored();
        if stored >= target {
            return Instant::now();
        }
        // The store's loss totals cost a read transaction: a few per second.
        if last_losses.elapsed() >= Duration::from_millis(250) {
            let losses = collector.losses();
            if stored + losses.readings() >= target {
                agent.fail(&format!(
                    "{what}: of {target} readings the collector stored {stored}; {}",
                    losses.describe()
                ));
            }
            if started.elapsed() > deadline {
                agent.fail(&format!(
                    "{what}: after {:.0} s the collector had stored {stored} of {target} readings; {}",
                    deadline.as_secs_f64(),
                    losses.describe()
                ));
            }
            last_losses = Instant::now();
        }
        if last_print.elapsed() > Duration::from_secs(1) {
            eprintln!("e2e: {what}: draining, {stored} of {target} stored");
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A deadline for draining `readings` that only a broken run misses.
fn drain_deadline(readings: u64) -> Duration {
    Duration::from_secs(120 + readings / 50_000)
}

struct Throughput {
    readings: u64,
    elapsed: Duration,
    rate: f64,
    agent_cpu_s: f64,
    /// Bytes the agent wrote to disk (journal) meanwhile.
    written: u64,
}

impl Throughput {
    fn cpu_per_million(&self) -> f64 {
        self.agent_cpu_s / (self.readings as f64 / 1e6).max(1e-9)
    }
}

/// Runs `CONNECTIONS` writer threads until `secs` pass (each returns the
/// readings it sent and got accepted), then waits until the collector has
/// stored them all.
fn run_writers(
    agent: &Agent,
    collector: &Collector,
    what: &str,
    secs: Duration,
    writer: impl Fn(usize, Instant, Arc<AtomicU64>) + Send + Sync + Clone + 'static,
) -> Throughput {
    eprintln!(
        "e2e: {what}: {CONNECTIONS} connections writing as fast as the agent takes them, for {:.1} s",
        secs.as_secs_f64()
    );
    let base = collector.stored();
    let cpu0 = agent.cpu_s();
    let written0 = agent.written();
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + secs;
    let writers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (sent, writer) = (sent.clone(), writer.clone());
            std::thread::spawn(move || writer(c, deadline, sent))
        })
        .collect();
    let mut last_print = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "e2e: {what}: {:.1} s, sent {}, stored {}, agent RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                collector.stored() - base,
                agent.rss_kib() as f64 / 1024.0
            );
            last_print = Instant::now();
        }
    }
    for w in writers {
        w.join()
            .unwrap_or_else(|_| agent.fail(&format!("{what}: a writer thread failed")));
    }
    let readings = sent.load(Ordering::Relaxed);
    let done = wait_accounted(
        collector,
        agent,
        base + readings,
        what,
        drain_deadline(readings),
    );
    let elapsed = done - started;
    Throughput {
        readings,
        elapsed,
        rate: readings as f64 / elapsed.as_secs_f64(),
        agent_cpu_s: agent.cpu_s() - cpu0,
        written: agent.written() - written0,
    }
}

fn throughput_phase(agent: &Agent, collector: &Collector, secs: Duration, span: Span) -> Throughput {
    let addr = agent.influx;
    run_writers(agent, collector, "throughput", secs, move |c, deadline, sent| {
        let mut tcp = TcpStream::connect(addr).expect("connect to the agent");
        let mut lines = Lines::new(c, span);
        let mut buf = Vec::with_capacity(256 << 10);
        while Instant::now() < deadline {
            buf.clear();
            lines.push(&mut buf, TCP_CHUNK);
            tcp.write_all(&buf).expect("write to the agent");
            sent.fetch_add(TCP_CHUNK as u64, Ordering::Relaxed);
        }
        tcp.shutdown(std::net::Shutdown::Write).ok();
        // Keep the socket open until the agent has read everything.
        let _ = tcp.read(&mut [0u8; 1]);
    })
}

/// The InfluxDB v2 write API: keep-alive connections, one request of
/// `HTTP_LINES` lines at a time, each answered 204 after the commit.
fn http_phase(agent: &Agent, collector: &Collector, secs: Duration, span: Span) -> Throughput {
    let addr = agent.http;
    run_writers(agent, collector, "HTTP write API", secs, move |c, deadline, sent| {
        let mut tcp = TcpStream::connect(addr).expect("connect to the agent's HTTP listener");
        tcp.set_nodelay(true).ok();
        let mut lines = Lines::new(c, span);
        let mut body = Vec::with_capacity(HTTP_LINES * 64);
        let mut request = Vec::with_capacity(HTTP_LINES * 64 + 256);
        let mut answer = Vec::with_capacity(4096);
        while Instant::now() < deadline {
            body.clear();
            lines.push(&mut body, HTTP_LINES);
            request.clear();
            request.extend_from_slice(
                format!(
                    "POST /api/v2/write?org=bench&bucket=bench&precision=ns HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(&body);
            tcp.write_all(&request).expect("write to the agent's HTTP listener");
            let (status, text) = read_http_answer(&mut tcp, &mut answer);
            assert_eq!(
                status, 204,
                "e2e: FAILED: POST /api/v2/write answered {status}: {text}"
            );
            sent.fetch_add(HTTP_LINES as u64, Ordering::Relaxed);
        }
    })
}

/// Reads one HTTP/1.1 answer: its status and body.
fn read_http_answer(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).expect("read the agent's answer");
        assert!(n > 0, "e2e: FAILED: the agent closed the HTTP connection");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = tcp.read(&mut chunk).expect("read the agent's answer");
        assert!(n > 0, "e2e: FAILED: the agent closed the HTTP connection");
        buf.extend_from_slice(&chunk[..n]);
    }
    (
        status,
        String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string(),
    )
}

// ---------------------------------------------------------------------------
// MQTT: Debian's Mosquitto, publishers with rumqttc.

struct Mosquitto {
    child: Child,
    port: SocketAddr,
    log: PathBuf,
}

impl Mosquitto {
    /// Starts `/usr/sbin/mosquitto` on a port of its own (persistence on, as
    /// docs/producers.md configures it), or says why not.
    fn start(dir: &Path) -> Result<Self, String> {
        let bin = Path::new("/usr/sbin/mosquitto");
        if !bin.exists() {
            return Err(format!(
                "{} is missing (scripts/producers.sh installs it)",
                bin.display()
            ));
        }
        let port = ferry_tests::reserve_port();
        let broker = dir.join("broker");
        std::fs::create_dir_all(&broker).expect("broker directory");
        let conf = broker.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user root`: a broker started as root would otherwise run
                // as `mosquitto`, which cannot write into this directory.
                "listener {} 127.0.0.1\nuser root\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\npersistence_file mosquitto.db\n\
                 max_queued_messages 0\nmax_inflight_messages {MQTT_INFLIGHT}\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\
                 log_type subscribe\n",
                port.port(),
                broker.display()
            ),
        )
        .expect("broker config");
        let log = dir.join("mosquitto.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("broker log"))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let b = Self { child, port, log };
        let started = Instant::now();
        while TcpStream::connect(port).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("Mosquitto did not listen on {port} within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(b)
    }

    /// Waits until the broker has logged the agent's subscription (QoS 1
    /// messages published before it would not be queued for the agent).
    fn wait_subscribed(&self, agent: &Agent) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log
                .lines()
                .any(|l| l.contains(MQTT_CLIENT) && l.contains("bench/#"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        agent.fail("the agent did not subscribe on Mosquitto within 60 s");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One device's sensors per message, QoS 1, as fast as the broker acks.
fn mqtt_phase(
    agent: &Agent,
    collector: &Collector,
    broker: &Mosquitto,
    secs: Duration,
    span: Span,
) -> Throughput {
    let port = broker.port;
    run_writers(agent, collector, "MQTT", secs, move |c, deadline, sent| {
        use rumqttc::{Event, Outgoing, Packet, QoS};
        let mut opts = rumqttc::MqttOptions::new(format!("bench-pub-{c}"), "127.0.0.1", port.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(100);
        let (client, mut connection) = rumqttc::Client::new(opts, 256);
        let acked = Arc::new(AtomicU64::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let events = {
            let (acked, stopping) = (acked.clone(), stopping.clone());
            std::thread::spawn(move || {
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(_) if stopping.load(Ordering::Relaxed) => break,
                        Err(e) => panic!("e2e: FAILED: MQTT publisher {c}: {e}"),
                    }
                }
            })
        };
        let topic = format!("bench/c{c}");
        let mut lines = Lines::new(c, span);
        let mut published = 0u64;
        let mut payload = Vec::with_capacity(512);
        while Instant::now() < deadline {
            payload.clear();
            lines.push(&mut payload, SENSORS);
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
                .expect("publish");
            published += 1;
            sent.fetch_add(SENSORS as u64, Ordering::Relaxed);
        }
        // Every message acknowledged by the broker (it then holds it for
        // the agent's persistent session).
        let started = Instant::now();
        while acked.load(Ordering::Relaxed) < published {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "e2e: FAILED: Mosquitto acknowledged {} of {published} messages of publisher {c} in 120 s",
                acked.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        stopping.store(true, Ordering::Relaxed);
        let _ = client.disconnect();
        let _ = events.join();
    })
}

struct Latency {
    readings: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn latency_phase(agent: &Agent, collector: &Collector, secs: Duration, span: Span) -> Latency {
    eprintln!(
        "e2e: latency: 1 connection at {PACED_RATE} readings/s for {:.1} s",
        secs.as_secs_f64()
    );
    let base = collector.stored();
    let per_tick = (PACED_RATE as f64 * PACED_TICK.as_secs_f64()) as usize;
    let ticks = (secs.as_secs_f64() / PACED_TICK.as_secs_f64()) as u64;
    let done = Arc::new(AtomicBool::new(false));

    // The collector's stored counter, sampled: (time, readings stored).
    let sampler = {
        let (stored, done) = (collector.stored.clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples: Vec<(Instant, u64)> = Vec::with_capacity(1 << 16);
            let mut last = u64::MAX;
            while !done.load(Ordering::Relaxed) {
                let now = Instant::now();
                let v = stored.get() - base;
                if v != last {
                    samples.push((now, v));
                    last = v;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            samples
        })
    };

    let mut tcp = TcpStream::connect(agent.influx).expect("connect to the agent");
    tcp.set_nodelay(true).ok();
    let mut lines = Lines::new(CONNECTIONS, span);
    let mut buf = Vec::with_capacity(per_tick * 80);
    // (scheduled send time, readings sent up to and including this tick)
    let mut sends: Vec<(Instant, u64)> = Vec::with_capacity(ticks as usize);
    let started = Instant::now() + Duration::from_millis(5);
    eprintln!(
        "e2e: latency: phase starts at unix {:.3} s (to match logs)",
        (ferry_collector::now_ns() + 5_000_000) as f64 / 1e9
    );
    let mut last_print = Instant::now();
    for i in 0..ticks {
        let scheduled = started + PACED_TICK * i as u32;
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        buf.clear();
        lines.push(&mut buf, per_tick);
        tcp.write_all(&buf).expect("write to the agent");
        sends.push((scheduled, (i + 1) * per_tick as u64));
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "e2e: latency: {:.1} s, sent {}, stored {}",
                started.elapsed().as_secs_f64(),
                (i + 1) * per_tick as u64,
                collector.stored() - base
            );
            last_print = Instant::now();
        }
    }
    let elapsed_send = started.elapsed();
    let total = ticks * per_tick as u64;
    wait_accounted(collector, agent, base + total, "latency", drain_deadline(total));
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler thread");
    drop(tcp);

    // Each tick's readings are acked when the counter first covers them.
    let mut lat: Vec<f64> = Vec::with_capacity(sends.len());
    let mut j = 0;
    for (scheduled, upto) in &sends {
        while j < samples.len() && samples[j].1 < *upto {
            j += 1;
        }
        let acked = samples.get(j).map_or(Instant::now(), |s| s.0);
        lat.push(acked.saturating_duration_since(*scheduled).as_secs_f64() * 1e3);
    }
    print_stalls(&lat);
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    Latency {
        readings: total,
        rate: total as f64 / elapsed_send.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    }
}

/// Where the latency went over the target: runs of consecutive ticks over
/// it, with their offset in the phase and their worst latency (to tell one
/// stall from a slow steady path).
fn print_stalls(lat: &[f64]) {
    let tick_s = PACED_TICK.as_secs_f64();
    let mut runs: Vec<(usize, usize, f64)> = Vec::new(); // (first tick, ticks, worst ms)
    for (i, &ms) in lat.iter().enumerate() {
        if ms <= TARGET_P99_MS {
            continue;
        }
        match runs.last_mut() {
            Some((first, n, worst)) if *first + *n == i => {
                *n += 1;
                *worst = worst.max(ms);
            }
            _ => runs.push((i, 1, ms)),
        }
    }
    let over: usize = runs.iter().map(|r| r.1).sum();
    runs.sort_by(|a, b| b.2.total_cmp(&a.2));
    let worst: Vec<String> = runs
        .iter()
        .take(5)
        .map(|(first, n, worst)| {
            format!(
                "+{:.2} s for {:.0} ms (worst {worst:.0} ms)",
                *first as f64 * tick_s,
                *n as f64 * tick_s * 1e3
            )
        })
        .collect();
    eprintln!(
        "e2e: latency: {over} of {} ticks over {TARGET_P99_MS} ms in {} runs; worst: {}",
        lat.len(),
        runs.len(),
        worst.join(", ")
    );
}

// ---------------------------------------------------------------------------
// Backlog: the agent restarted on a large journal.

struct Backlog {
    readings: u64,
    journal_bytes: u64,
    fill_rate: f64,
    catch_up: Duration,
    drain_rate: f64,
    live_rate: f64,
    peak_kib: u64,
    sampled_max_kib: u64,
    end_kib: u64,
}

fn backlog_phase(
    rt: &tokio::runtime::Runtime,
    collector: Collector,
    dir: &Path,
    quic: SocketAddr,
    bytes: u64,
    live_rate: u64,
    span: Span,
) -> (Backlog, Collector) {
    eprintln!(
        "e2e: backlog: collector down, filling a {:.0} MiB journal",
        bytes as f64 / (1u64 << 20) as f64
    );
    rt.block_on(collector.stop());
    let bundle = dir.join("bundle");
    let (influx, http, admin) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let config = bundle.join("backlog-agent.toml");
    // Room for the backlog; backpressure rather than drop when full (a
    // drop would fail the bench).
    let budget_mib = (bytes * 2 >> 20) + 512;
    std::fs::write(
        &config,
        format!(
            "[agent]\ndata_dir = \"backlog-data\"\nhealth_interval = \"1s\"\n\
             {}\
             [admin]\nlisten = \"{admin}\"\n\
             [[influx_tcp]]\nlisten = \"{influx}\"\n\
             [journal]\nbudget = \"{budget_mib} MiB\"\npolicy = \"backpressure\"\n",
            collector_table(quic)
        ),
    )
    .expect("backlog agent config");
    let data = bundle.join("backlog-data");
    let log = dir.join("backlog-agent.log");
    let agent = Agent::spawn(&config, log.clone(), influx, http, admin);
    agent.wait_admin();

    // Fill: full rate until the journal holds `bytes`.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut tcp = TcpStream::connect(influx).expect("connect to the agent");
                let mut lines = Lines::new(c, span);
                let mut buf = Vec::with_capacity(256 << 10);
                while !stop.load(Ordering::Relaxed) {
                    buf.clear();
                    lines.push(&mut buf, TCP_CHUNK);
                    tcp.write_all(&buf).expect("write to the agent");
                    sent.fetch_add(TCP_CHUNK as u64, Ordering::Relaxed);
                }
                tcp.shutdown(std::net::Shutdown::Write).ok();
                let _ = tcp.read(&mut [0u8; 1]);
            })
        })
        .collect();
    let fill_deadline = Duration::from_secs(120 + bytes / (256 << 10));
    let mut last_print = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let size = dir_bytes(&data);
        if size >= bytes && sent.load(Ordering::Relaxed) > 0 {
            break;
        }
        if started.elapsed() > fill_deadline {
            agent.fail(&format!(
                "backlog: the journal held {size} of {bytes} bytes after {:.0} s",
                fill_deadline.as_secs_f64()
            ));
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "e2e: backlog: {:.0} s, sent {}, journal {:.0} MiB, agent RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                size as f64 / (1u64 << 20) as f64,
                agent.rss_kib() as f64 / 1024.0
            );
            last_print = Instant::now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join()
            .unwrap_or_else(|_| agent.fail("backlog: a writer thread failed"));
    }
    let readings = sent.load(Ordering::Relaxed);
    // Everything sent is in the journal (counted in at its commit).
    let wait = Instant::now();
    while agent.metrics().readings_in < readings {
        if wait.elapsed() > Duration::from_secs(120) {
            agent.fail(&format!(
                "backlog: the agent journaled {} of {readings} readings",
                agent.metrics().readings_in
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let fill_rate = readings as f64 / started.elapsed().as_secs_f64();
    agent.stop();
    let journal_bytes = dir_bytes(&data);
    eprintln!(
        "e2e: backlog: {readings} readings in a {:.0} MiB journal; collector up, agent restarted on it, live load {live_rate} readings/s",
        journal_bytes as f64 / (1u64 << 20) as f64
    );

    // Catch-up: collector up, the agent restarted, live load meanwhile.
    let collector = rt.block_on(Collector::start(dir, quic));
    let base = collector.stored();
    let agent = Agent::spawn(&config, log, influx, http, admin);
    let restarted = Instant::now();
    let live_stop = Arc::new(AtomicBool::new(false));
    let live_sent = Arc::new(AtomicU64::new(0));
    let deadline = drain_deadline(readings);
    let live = {
        let (stop, sent) = (live_stop.clone(), live_sent.clone());
        let now_ns = ferry_collector::now_ns() as i64;
        let series = (DEVICES_PER_CONNECTION * SENSORS) as i64;
        let span = Span {
            t0_ns: now_ns,
            step_ns: 1_000_000_000 * series / live_rate.max(1) as i64,
            end_ns: now_ns + deadline.as_nanos() as i64 + 300_000_000_000,
        };
        std::thread::spawn(move || {
            let connect = Instant::now();
            let mut tcp = loop {
                match TcpStream::connect(influx) {
                    Ok(t) => break t,
                    Err(e) if connect.elapsed() > Duration::from_secs(60) => {
                        panic!("e2e: FAILED: backlog: the restarted agent's listener: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            tcp.set_nodelay(true).ok();
            let per_tick = (live_rate as usize / 1000).max(1);
            let mut lines = Lines::new(CONNECTIONS, span);
            let mut buf = Vec::new();
            let started = Instant::now();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let scheduled = started + PACED_TICK * i;
                if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                buf.clear();
                lines.push(&mut buf, per_tick);
                tcp.write_all(&buf).expect("write to the agent");
                sent.fetch_add(per_tick as u64, Ordering::Relaxed);
                i += 1;
            }
            let elapsed = started.elapsed();
            tcp.shutdown(std::net::Shutdown::Write).ok();
            let _ = tcp.read(&mut [0u8; 1]);
            elapsed
        })
    };
    // Caught up: everything sent more than 1 s ago is stored.
    let mut history: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut sampled_max_kib = 0;
    let mut last_print = Instant::now();
    let mut last_losses = Instant::now();
    let (catch_up, drained) = loop {
        let now = Instant::now();
        history.push_back((now, live_sent.load(Ordering::Relaxed)));
        let stored = collector.stored() - base;
        while history.len() > 1 && now - history[1].0 >= Duration::from_secs(1) {
            history.pop_front();
        }
        if now - history[0].0 >= Duration::from_secs(1) && stored >= readings + history[0].1 {
            break (now - restarted, stored);
        }
        sampled_max_kib = sampled_max_kib.max(agent.rss_kib());
        if last_losses.elapsed() >= Duration::from_secs(1) {
            let losses = collector.losses();
            if !losses.is_empty() {
                agent.fail(&format!("backlog: {}", losses.describe()));
            }
            if restarted.elapsed() > deadline {
                agent.fail(&format!(
                    "backlog: after {:.0} s the collector had stored {stored} of the {readings} backlog readings and {} live ones",
                    deadline.as_secs_f64(),
                    live_sent.load(Ordering::Relaxed)
                ));
            }
            last_losses = Instant::now();
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "e2e: backlog: catching up, {:.0} s, stored {stored} of {readings} + {} live, agent RSS {:.1} MiB",
                restarted.elapsed().as_secs_f64(),
                live_sent.load(Ordering::Relaxed),
                agent.rss_kib() as f64 / 1024.0
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    live_stop.store(true, Ordering::Relaxed);
    let live_elapsed = live
        .join()
        .unwrap_or_else(|_| agent.fail("backlog: the live producer failed"));
    let live_total = live_sent.load(Ordering::Relaxed);
    wait_accounted(
        &collector,
        &agent,
        base + readings + live_total,
        "backlog",
        drain_deadline(live_total),
    );
    let peak_kib = agent.peak_rss_kib();
    let end_kib = agent.rss_kib();
    agent.stop();
    (
        Backlog {
            readings,
            journal_bytes,
            fill_rate,
            catch_up,
            drain_rate: drained as f64 / catch_up.as_secs_f64(),
            live_rate: live_total as f64 / live_elapsed.as_secs_f64(),
            peak_kib,
            sampled_max_kib,
            end_kib,
        },
        collector,
    )
}

// ---------------------------------------------------------------------------
// Fluent Bit, side by side.

struct Peer {
    version: String,
    readings: u64,
    elapsed: Duration,
    rate: f64,
    agent_cpu_s: f64,
    agent_peak_kib: u64,
    aggregator_peak_kib: u64,
}

/// A child process killed if still running when dropped.
struct Running(Child);

impl Running {
    fn spawn(bin: &Path, conf: &Path, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("fluent-bit log");
        Self(
            Command::new(bin)
                .arg("-c")
                .arg(conf)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display())),
        )
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A sample of Fluent Bit's Prometheus text (values may carry a timestamp).
fn fb_metric(text: &str, key: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(key))
        .filter_map(|l| l[key.len()..].split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn fluent_bit_phase(bin: &Path, dir: &Path, lines_total: u64, span: Span) -> Peer {
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned())
        .unwrap_or_else(|e| panic!("FERRY_BENCH_FLUENT_BIT={}: {e}", bin.display()));
    eprintln!("e2e: Fluent Bit: {version}, {lines_total} lines over {CONNECTIONS} connections");
    let fb = dir.join("fluent-bit");
    std::fs::create_dir_all(&fb).expect("fluent-bit directory");
    let (fwd, agg_http, tcp, agent_http) = (
        free_tcp_port(),
        free_tcp_port(),
        free_tcp_port(),
        free_tcp_port(),
    );
    // Both hops durable, as ../shared/PEERS.md describes the comparable
    // pipeline: filesystem storage with `storage.sync full`, and the
    // aggregator's ack before the agent lets go of a chunk.
    let service = |name: &str, http: SocketAddr| {
        format!(
            "[SERVICE]\n    flush 1\n    log_level warn\n    storage.path {}\n    storage.sync full\n\
             \x20   http_server on\n    http_listen 127.0.0.1\n    http_port {}\n",
            fb.join(name).display(),
            http.port()
        )
    };
    let agg_conf = fb.join("aggregator.conf");
    std::fs::write(
        &agg_conf,
        format!(
            "{}[INPUT]\n    name forward\n    listen 127.0.0.1\n    port {}\n    storage.type filesystem\n\
             [OUTPUT]\n    name null\n    match *\n",
            service("aggregator-storage", agg_http),
            fwd.port()
        ),
    )
    .expect("aggregator config");
    let agent_conf = fb.join("agent.conf");
    std::fs::write(
        &agent_conf,
        format!(
            "{}[INPUT]\n    name tcp\n    listen 127.0.0.1\n    port {}\n    format none\n    storage.type filesystem\n\
             [OUTPUT]\n    name forward\n    match *\n    host 127.0.0.1\n    port {}\n    require_ack_response true\n",
            service("agent-storage", agent_http),
            tcp.port(),
            fwd.port()
        ),
    )
    .expect("agent config");
    let aggregator = Running::spawn(bin, &agg_conf, &fb.join("aggregator.log"));
    let metrics_path = "/api/v1/metrics/prometheus";
    let up = |addr: SocketAddr, what: &str| {
        let started = Instant::now();
        while http_get(addr, metrics_path).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "e2e: FAILED: Fluent Bit {what} did not answer on {addr} within 60 s (logs in {})",
                fb.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    up(agg_http, "aggregator");
    let agent = Running::spawn(bin, &agent_conf, &fb.join("agent.log"));
    up(agent_http, "agent");

    let per_connection = lines_total / CONNECTIONS as u64;
    let total = per_connection * CONNECTIONS as u64;
    let cpu0 = cpu_s(agent.0.id());
    let started = Instant::now();
    let writers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(tcp).expect("connect to Fluent Bit");
                let mut lines = Lines::new(c, span);
                let mut buf = Vec::with_capacity(256 << 10);
                let mut left = per_connection;
                while left > 0 {
                    let n = left.min(TCP_CHUNK as u64);
                    buf.clear();
                    lines.push(&mut buf, n as usize);
                    stream.write_all(&buf).expect("write to Fluent Bit");
                    left -= n;
                }
                stream.shutdown(std::net::Shutdown::Write).ok();
            })
        })
        .collect();
    for w in writers {
        w.join().expect("Fluent Bit writer");
    }
    let key = "fluentbit_output_proc_records_total{name=\"null.0\"}";
    let deadline = drain_deadline(total) + Duration::from_secs(120);
    let mut last_print = Instant::now();
    let done = loop {
        let text = http_get(agg_http, metrics_path).unwrap_or_default();
        let processed = fb_metric(&text, key);
        if processed >= total {
            break Instant::now();
        }
        if started.elapsed() > deadline {
            let agent_text = http_get(agent_http, metrics_path).unwrap_or_default();
            panic!(
                "e2e: FAILED: Fluent Bit's aggregator processed {processed} of {total} records in {:.0} s (agent: {} dropped, {} retried; logs in {})",
                deadline.as_secs_f64(),
                fb_metric(&agent_text, "fluentbit_output_dropped_records_total"),
                fb_metric(&agent_text, "fluentbit_output_retried_records_total"),
                fb.display()
            );
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "e2e: Fluent Bit: {:.1} s, {processed} of {total} through the aggregator, agent RSS {:.1} MiB, aggregator {:.1} MiB",
                started.elapsed().as_secs_f64(),
                status_kib(&agent.0.id().to_string(), "VmRSS:") as f64 / 1024.0,
                status_kib(&aggregator.0.id().to_string(), "VmRSS:") as f64 / 1024.0,
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = done - started;
    let agent_cpu_s = cpu_s(agent.0.id()) - cpu0;
    let agent_peak_kib = status_kib(&agent.0.id().to_string(), "VmHWM:");
    let aggregator_peak_kib = status_kib(&aggregator.0.id().to_string(), "VmHWM:");
    agent.stop();
    aggregator.stop();
    Peer {
        version,
        readings: total,
        elapsed,
        rate: total as f64 / elapsed.as_secs_f64(),
        agent_cpu_s,
        agent_peak_kib,
        aggregator_peak_kib,
    }
}

// ---------------------------------------------------------------------------
// Baseline: raw redb.

struct Baseline {
    readings: u64,
    rate: f64,
}

/// One row `(series, ts) → value` per reading, one durable commit per
/// chunk of [`BASELINE_CHUNK`] readings, chunks from [`CONNECTIONS`]
/// threads: what "journal every reading before acking it" costs without
/// blocks of readings per row.
fn baseline(dir: &Path, readings: u64) -> Baseline {
    const ROWS: TableDefinition<'_, (u64, i64), f64> = TableDefinition::new("rows");
    let db = Arc::new(Database::create(dir.join("baseline.redb")).expect("baseline db"));
    let per_thread = readings / CONNECTIONS as u64;
    let started = Instant::now();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let db = db.clone();
            std::thread::spawn(move || {
                let series = (DEVICES_PER_CONNECTION * SENSORS) as u64;
                let mut done = 0u64;
                let mut value = 2000i64;
                let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ c as u64;
                while done < per_thread {
                    let n = (per_thread - done).min(BASELINE_CHUNK as u64);
                    let txn = db.begin_write().expect("begin");
                    {
                        let mut rows = txn.open_table(ROWS).expect("table");
                        for i in done..done + n {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            value = (value + (rng % 11) as i64 - 5).clamp(1000, 3500);
                            let sid = c as u64 * series + i % series;
                            let ts = (i / series) as i64 * 1_000_000_000;
                            rows.insert((sid, ts), value as f64 / 100.0)
                                .expect("insert");
                        }
                    }
                    txn.commit().expect("commit");
                    done += n;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("baseline thread");
    }
    let elapsed = started.elapsed();
    let total = per_thread * CONNECTIONS as u64;
    Baseline {
        readings: total,
        rate: total as f64 / elapsed.as_secs_f64(),
    }
}
