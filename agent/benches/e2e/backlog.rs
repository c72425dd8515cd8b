//! Backlog: the agent restarted on a large journal, with live load.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::agent::{Agent, collector_table, free_tcp_port};
use crate::collector::Collector;
use crate::load::{Lines, Span, drain_deadline, wait_accounted};
use crate::probe::dir_bytes;
use crate::{CONNECTIONS, DEVICES_PER_CONNECTION, PACED_TICK, SENSORS, TCP_CHUNK};

// Backlog: the agent restarted on a large journal.

pub struct Backlog {
    pub readings: u64,
    /// What the journal held when the agent stopped (its own count).
    pub journal_held: u64,
    /// The journal's files on disk then.
    pub journal_bytes: u64,
    pub fill_rate: f64,
    pub catch_up: Duration,
    pub drain_rate: f64,
    pub live_rate: f64,
    pub peak_kib: u64,
    pub sampled_max_kib: u64,
    pub end_kib: u64,
}

pub fn backlog_phase(
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
    let budget_mib = ((bytes * 2) >> 20) + 512;
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

    // Fill: full rate until the journal holds `bytes` (its own count of the
    // batches and rows it holds, not the file's size: redb grows the file
    // in doublings, so the file passes 2 GiB while it holds about 1 GiB).
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
        let held = agent.metrics().journal_held;
        if held >= bytes && sent.load(Ordering::Relaxed) > 0 {
            break;
        }
        if started.elapsed() > fill_deadline {
            agent.fail(&format!(
                "backlog: the journal held {held} of {bytes} bytes after {:.0} s",
                fill_deadline.as_secs_f64()
            ));
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "e2e: backlog: {:.0} s, sent {}, journal holds {:.0} MiB (file {:.0} MiB), agent RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                held as f64 / (1u64 << 20) as f64,
                dir_bytes(&data) as f64 / (1u64 << 20) as f64,
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
    let journal_held = agent.metrics().journal_held;
    agent.stop();
    let journal_bytes = dir_bytes(&data);
    eprintln!(
        "e2e: backlog: {readings} readings, {:.0} MiB held in a {:.0} MiB journal; collector up, agent restarted on it, live load {live_rate} readings/s",
        journal_held as f64 / (1u64 << 20) as f64,
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
            journal_held,
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
