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

mod agent;
mod backlog;
mod baseline;
mod collector;
mod fluent_bit;
mod latency;
mod load;
mod mqtt;
mod probe;

use std::path::PathBuf;
use std::time::Duration;

use agent::{Agent, AgentFigures, MQTT_INFLIGHT, agent_binary};
use backlog::backlog_phase;
use baseline::baseline;
use collector::Collector;
use fluent_bit::fluent_bit_phase;
use latency::latency_phase;
use load::{Span, http_phase, throughput_phase};
use mqtt::{Mosquitto, mqtt_phase};
use probe::{own_peak_rss_kib, reset_own_peak_rss};

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
/// Issue 21: at 50k/s, default settings, p99 ≤ 25 ms.
const TARGET_PACED_WIRE: f64 = 2.0;
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
    let backlog_bytes = env_f64(
        "FERRY_BENCH_BACKLOG_BYTES",
        (2u64 << 30) as f64,
        (4u64 << 20) as f64,
    ) as u64;
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
    let agent = Agent::start(dir.path(), quic, Some(broker.port));
    eprintln!(
        "e2e: agent pid {} (influx TCP {}, HTTP {}, admin {}), collector on {quic}",
        agent.child.id(),
        agent.influx,
        agent.http,
        agent.admin,
    );
    agent.wait_connected();
    broker.wait_subscribed(&agent);
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
    let mqtt = mqtt_phase(&agent, &collector, &broker, producer_secs, hour(5));
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

    let fluent =
        fluent_bit.map(|bin| fluent_bit_phase(&bin, dir.path(), throughput.readings, hour(7)));

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
        "               {:.2} bytes per reading at 50k/s ({:.0} readings per batch)   target ≤ {TARGET_PACED_WIRE}  {}",
        per_reading(&end, &wire),
        (end.readings_out - wire.readings_out) as f64
            / (end.batches_stored - wire.batches_stored).max(1) as f64,
        pass(per_reading(&end, &wire) <= TARGET_PACED_WIRE)
    );
    println!(
        "  producers  : (readings/s end to end; agent CPU per million readings; {CONNECTIONS} connections each)"
    );
    for (name, t) in [("TCP", &throughput), ("HTTP /api/v2/write", &http)] {
        println!(
            "               {name:<19} {:>9} readings  {:>10.0} readings/s  {:.2} core-s per million",
            t.readings,
            t.rate,
            t.cpu_per_million()
        );
    }
    println!(
        "               {:<19} {:>9} readings  {:>10.0} readings/s  {:.2} core-s per million   (QoS 1, {SENSORS} lines per message; Mosquitto max_inflight_messages {MQTT_INFLIGHT})",
        "MQTT",
        mqtt.readings,
        mqtt.rate,
        mqtt.cpu_per_million()
    );
    match &backlog {
        Some(b) => {
            println!(
                "  backlog    : {:>9} readings  journal holds {:.0} MiB (file {:.0} MiB), filled at {:.0} readings/s with the collector down; agent restarted on it",
                b.readings,
                mib(b.journal_held / 1024),
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
