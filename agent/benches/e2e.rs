//! End-to-end benchmark: Influx line protocol over TCP into a real
//! `ferry-agent` process, shipped over QUIC (mTLS) to a real collector, both
//! hops durable: the agent commits (fsync) each chunk of lines to its journal
//! before reading more of the connection, and the collector acks a batch only
//! after its durable group commit.
//!
//! - the agent is the binary as deployed on gateways: built by the bench
//!   with `cargo build --profile edge -p ferry-agent` (fat LTO, panic =
//!   abort; the first run takes minutes) and run as a child process
//!   (`ferry-agent run --config`), so its RSS is its own. `cargo test
//!   --benches` uses the test build instead;
//! - the collector runs in this process, on its own tokio runtime (the
//!   library `ferry-collector run` wraps); this process also generates the
//!   load from plain threads with blocking sockets;
//! - everything binds 127.0.0.1 (free ports found by binding port 0).
//!
//! Phases, printed with their method:
//! 1. **throughput**: 4 connections write lines as fast as the agent reads
//!    them for a fixed time; readings/s = readings sent ÷ time from the first
//!    byte to the collector's ack of the last reading (its stored-readings
//!    counter reaching the total);
//! 2. **latency** at 50,000 readings/s: one connection writes 50 lines every
//!    millisecond; the k-th reading sent counts as acked when the collector's
//!    stored-readings counter (bumped when a batch's durable commit is
//!    answered, just before its ack is sent) reaches k: both hops keep a
//!    connection's order, so the counter is a FIFO clock. Latency is from the
//!    reading's *scheduled* send time (a sender held up by backpressure does
//!    not hide the delay);
//! 3. **RSS** of the agent (`/proc/<pid>/status`): idle before load, peak
//!    (`VmHWM`), idle after the load drained;
//! 4. **wire bytes per reading**: the agent's `wire_bytes` (batch frames
//!    after zstd) ÷ its `readings_out`;
//! 5. **baseline** in the same run: raw redb, one row per reading and one
//!    durable commit per chunk of 4096 readings, from 4 threads.
//!
//! Run (the agent binary is built by `cargo bench` itself):
//! `cargo bench -p ferry-agent --bench e2e`
//! (`FERRY_BENCH_SECS`: seconds of full-rate sending, default 8;
//! `FERRY_BENCH_LATENCY_SECS`: seconds at 50k/s, default 10;
//! `FERRY_BENCH_LOG`: a `tracing` filter for the in-process collector's logs,
//! e.g. `ferry_collector=debug`, and the agent's `RUST_LOG`.)

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

/// Targets from the agent's issue, and the Fluent Bit reference.
const TARGET_RATE: f64 = 1_000_000.0;
const TARGET_P99_MS: f64 = 25.0;
const TARGET_PEAK_MIB: f64 = 32.0;
const TARGET_IDLE_MIB: f64 = 8.0;
const TARGET_WIRE: f64 = 3.0;

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
    let env_secs = |name: &str, full: f64, quick_v: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(if quick { quick_v } else { full })
    };
    let full_secs = Duration::from_secs_f64(env_secs("FERRY_BENCH_SECS", 8.0, 0.5));
    let latency_secs = Duration::from_secs_f64(env_secs("FERRY_BENCH_LATENCY_SECS", 10.0, 0.5));

    let dir = tempfile::tempdir().expect("temporary directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("collector runtime");
    let collector = rt.block_on(Collector::start(dir.path()));
    let agent = Agent::start(dir.path(), collector.quic);
    eprintln!(
        "e2e: agent pid {} (influx {}, admin {}), collector on {}",
        agent.child.id(),
        agent.influx,
        agent.admin,
        collector.quic
    );
    agent.wait_connected();
    std::thread::sleep(Duration::from_secs(if quick { 0 } else { 2 }));
    let idle_before = agent.rss_kib();

    // Timestamps: per series one reading per second, starting 6 h ago.
    let t0_s = ferry_collector::now_ns() / 1_000_000_000 - 6 * 3600;
    let start = agent.metrics();
    let throughput = throughput_phase(&agent, &collector, full_secs, t0_s);
    let peak = agent.peak_rss_kib();
    let wire = agent.settled(start.readings_out + throughput.readings);

    let latency = latency_phase(&agent, &collector, latency_secs, t0_s + 3 * 3600);
    std::thread::sleep(Duration::from_secs(if quick { 0 } else { 3 }));
    let idle_after = agent.rss_kib();
    let end = agent.settled(wire.readings_out + latency.readings);

    agent.stop();
    rt.block_on(collector.stop());
    drop(rt);

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
        throughput.agent_cpu_s / (throughput.readings as f64 / 1e6)
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
    println!(
        "  baseline   : {:>9} readings  {:>10.0} readings/s  (raw redb, one row per reading, one durable commit per {BASELINE_CHUNK} readings, {CONNECTIONS} threads)",
        base.readings, base.rate
    );
    println!(
        "  ratio      : {:.2}x the baseline",
        throughput.rate / base.rate
    );
    println!(
        "  reference  : Fluent Bit (same machine kind): 0.93–1.0 M records/s, p99 ~100 ms at 10k/s, agent RSS 86–115 MiB"
    );
}

// ---------------------------------------------------------------------------
// The collector (in process) and the agent (child process).

struct Collector {
    quic: SocketAddr,
    stored: Counter,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ferry_collector::Error>>,
}

impl Collector {
    async fn start(dir: &Path) -> Self {
        let data = dir.join("collector");
        ferry_collector::init(&ferry_collector::InitOptions::new(&data)).expect("collector init");
        let collector =
            ferry_collector::Collector::bind(ferry_collector::Config::for_data_dir(&data))
                .await
                .expect("collector bind");
        let quic = collector.quic_addr();
        let stored = collector
            .handle()
            .metrics()
            .readings
            .get_or_create(&[("outcome", "stored")])
            .clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(collector.run(async {
            let _ = stopped.await;
        }));
        Self {
            quic,
            stored,
            stop,
            task,
        }
    }

    fn stored(&self) -> u64 {
        self.stored.get()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
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
    admin: SocketAddr,
    log: PathBuf,
}

/// A port of this process's own on 127.0.0.1 (the shared test harness).
fn free_tcp_port() -> SocketAddr {
    ferry_tests::reserve_port()
}

impl Agent {
    fn start(dir: &Path, collector: SocketAddr) -> Self {
        let bundle = dir.join("bundle");
        ferry_collector::enroll(&dir.join("collector"), "bench", &bundle).expect("enroll");
        let (influx, admin) = (free_tcp_port(), free_tcp_port());
        let config = bundle.join("bench-agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\ndata_dir = \"agent-data\"\n\
                 [collector]\naddress = \"{collector}\"\nserver_name = \"localhost\"\nca = \"ca.crt\"\ncert = \"agent.crt\"\nkey = \"agent.key\"\nagent_id = \"bench\"\n\
                 [admin]\nlisten = \"{admin}\"\n\
                 [[influx_tcp]]\nlisten = \"{influx}\"\n{}",
                // Tuning experiments: tables appended to agent.toml, e.g.
                // FERRY_BENCH_AGENT_TOML=$'[shipping]\nmax_in_flight = "8 MiB"'.
                std::env::var("FERRY_BENCH_AGENT_TOML").unwrap_or_default()
            ),
        )
        .expect("agent config");
        let log = dir.join("agent.log");
        let child = Command::new(agent_binary())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("FERRY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("starting ferry-agent");
        Self {
            child,
            influx,
            admin,
            log,
        }
    }

    fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{what}; agent log:\n{}", tail.join("\n"));
    }

    /// Waits until the admin endpoint answers and the shipper is connected.
    fn wait_connected(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(text) = http_get(self.admin, "/metrics")
                && metric(&text, "ferry_agent_connected") == 1
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fail("the agent did not connect to the collector within 30 s");
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

    fn status_kib(&self, key: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
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
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
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
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("e2e: the agent did not stop within 10 s of SIGTERM; killing it");
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

/// Slowly varying temperatures: one reading per second per series, values
/// in hundredths doing a walk of at most ±0.05 per reading.
struct Lines {
    series: Vec<(Vec<u8>, i64, i64)>, // (prefix up to "value=", hundredths, next ts in s)
    next: usize,
    rng: u64,
}

impl Lines {
    fn new(connection: usize, t0_s: i64) -> Self {
        let mut series = Vec::new();
        for d in 0..DEVICES_PER_CONNECTION {
            let device = connection * DEVICES_PER_CONNECTION + d;
            for s in 0..SENSORS {
                let prefix = format!("temperature,device=d{device:03},sensor=s{s} value=");
                series.push((
                    prefix.into_bytes(),
                    1800 + ((device * 7 + s * 13) % 900) as i64,
                    t0_s,
                ));
            }
        }
        Self {
            series,
            next: 0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ connection as u64,
        }
    }

    /// Appends `n` lines to `buf`.
    fn push(&mut self, buf: &mut Vec<u8>, n: usize) {
        for _ in 0..n {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let (prefix, value, ts) = &mut self.series[self.next];
            *value = (*value + (self.rng % 11) as i64 - 5).clamp(1000, 3500);
            buf.extend_from_slice(prefix);
            push_decimal(buf, *value as u64 / 100);
            buf.push(b'.');
            let cents = *value as u64 % 100;
            buf.push(b'0' + (cents / 10) as u8);
            buf.push(b'0' + (cents % 10) as u8);
            buf.push(b' ');
            push_decimal(buf, *ts as u64);
            buf.extend_from_slice(b"000000000\n");
            *ts += 1;
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

/// Waits until the collector has stored `target` readings (bounded).
fn wait_stored(collector: &Collector, agent: &Agent, target: u64, what: &str) -> Instant {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let stored = collector.stored();
        if stored >= target {
            return Instant::now();
        }
        if started.elapsed() > Duration::from_secs(180) {
            agent.fail(&format!(
                "{what}: the collector stored {stored} of {target} readings after 180 s"
            ));
        }
        if last_print.elapsed() > Duration::from_secs(1) {
            eprintln!("e2e: {what}: draining, {stored} of {target} stored");
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

struct Throughput {
    readings: u64,
    elapsed: Duration,
    rate: f64,
    agent_cpu_s: f64,
    /// Bytes the agent wrote to disk (journal) meanwhile.
    written: u64,
}

fn throughput_phase(agent: &Agent, collector: &Collector, secs: Duration, t0_s: i64) -> Throughput {
    eprintln!(
        "e2e: throughput: {CONNECTIONS} connections writing as fast as the agent reads, for {:.1} s",
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
            let (addr, sent) = (agent.influx, sent.clone());
            std::thread::spawn(move || {
                let mut tcp = TcpStream::connect(addr).expect("connect to the agent");
                let mut lines = Lines::new(c, t0_s);
                let mut buf = Vec::with_capacity(256 << 10);
                while Instant::now() < deadline {
                    buf.clear();
                    lines.push(&mut buf, 2048);
                    tcp.write_all(&buf).expect("write to the agent");
                    sent.fetch_add(2048, Ordering::Relaxed);
                }
                tcp.shutdown(std::net::Shutdown::Write).ok();
                // Keep the socket open until the agent has read everything.
                let _ = tcp.read(&mut [0u8; 1]);
            })
        })
        .collect();
    let mut last_print = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "e2e: throughput: {:.1} s, sent {}, stored {}, agent RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                collector.stored() - base,
                agent.rss_kib() as f64 / 1024.0
            );
            last_print = Instant::now();
        }
    }
    for w in writers {
        w.join().expect("writer thread");
    }
    let readings = sent.load(Ordering::Relaxed);
    let done = wait_stored(collector, agent, base + readings, "throughput");
    let elapsed = done - started;
    Throughput {
        readings,
        elapsed,
        rate: readings as f64 / elapsed.as_secs_f64(),
        agent_cpu_s: agent.cpu_s() - cpu0,
        written: agent.written() - written0,
    }
}

struct Latency {
    readings: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn latency_phase(agent: &Agent, collector: &Collector, secs: Duration, t0_s: i64) -> Latency {
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
    let mut lines = Lines::new(CONNECTIONS, t0_s);
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
    wait_stored(collector, agent, base + total, "latency");
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
