//! Fluent Bit, side by side: the same lines through a durable Fluent Bit
//! agent → aggregator pipeline (../shared/PEERS.md).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::free_tcp_port;
use crate::load::{Lines, Span, drain_deadline};
use crate::probe::{cpu_s, http_get, status_kib};
use crate::{CONNECTIONS, TCP_CHUNK};

// Fluent Bit, side by side.

pub struct Peer {
    pub version: String,
    pub readings: u64,
    pub elapsed: Duration,
    pub rate: f64,
    pub agent_cpu_s: f64,
    pub agent_peak_kib: u64,
    pub aggregator_peak_kib: u64,
}

/// A child process killed if still running when dropped.
pub struct Running(Child);

impl Running {
    pub fn spawn(bin: &Path, conf: &Path, log: &Path) -> Self {
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

    pub fn stop(mut self) {
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
pub fn fb_metric(text: &str, key: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(key))
        .filter_map(|l| {
            l[key.len()..]
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum::<f64>() as u64
}

pub fn fluent_bit_phase(bin: &Path, dir: &Path, lines_total: u64, span: Span) -> Peer {
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
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
