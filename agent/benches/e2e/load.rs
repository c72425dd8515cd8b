//! The load: realistic line protocol, generated cheaply; the writers of
//! the full-rate TCP and HTTP rows, and the bounded wait for the collector.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::agent::Agent;
use crate::collector::Collector;
use crate::{CONNECTIONS, DEVICES_PER_CONNECTION, HTTP_LINES, SENSORS, TCP_CHUNK};

/// A phase's timestamps: series by series from `t0_ns`, `step_ns` apart;
/// the generator fails rather than reach `end_ns`.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub t0_ns: i64,
    pub step_ns: i64,
    pub end_ns: i64,
}

// Load: realistic lines, generated cheaply.

/// Slowly varying temperatures: values in hundredths doing a walk of at
/// most ±0.05 per reading; each series' timestamps `span.step_ns` apart.
pub struct Lines {
    pub series: Vec<(Vec<u8>, i64, i64)>, // (prefix up to "value=", hundredths, next ts in ns)
    pub next: usize,
    pub rng: u64,
    pub step_ns: i64,
    pub end_ns: i64,
}

impl Lines {
    pub fn new(connection: usize, span: Span) -> Self {
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
    pub fn push(&mut self, buf: &mut Vec<u8>, n: usize) {
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

pub fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
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
pub fn wait_accounted(
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
pub fn drain_deadline(readings: u64) -> Duration {
    Duration::from_secs(120 + readings / 50_000)
}

pub struct Throughput {
    pub readings: u64,
    pub elapsed: Duration,
    pub rate: f64,
    pub agent_cpu_s: f64,
    /// Bytes the agent wrote to disk (journal) meanwhile.
    pub written: u64,
}

impl Throughput {
    pub fn cpu_per_million(&self) -> f64 {
        self.agent_cpu_s / (self.readings as f64 / 1e6).max(1e-9)
    }
}

/// Runs `CONNECTIONS` writer threads until `secs` pass (each returns the
/// readings it sent and got accepted), then waits until the collector has
/// stored them all.
pub fn run_writers(
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

pub fn throughput_phase(
    agent: &Agent,
    collector: &Collector,
    secs: Duration,
    span: Span,
) -> Throughput {
    let addr = agent.influx;
    run_writers(
        agent,
        collector,
        "throughput",
        secs,
        move |c, deadline, sent| {
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
        },
    )
}

/// The InfluxDB v2 write API: keep-alive connections, one request of
/// `HTTP_LINES` lines at a time, each answered 204 after the commit.
pub fn http_phase(agent: &Agent, collector: &Collector, secs: Duration, span: Span) -> Throughput {
    let addr = agent.http;
    run_writers(
        agent,
        collector,
        "HTTP write API",
        secs,
        move |c, deadline, sent| {
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
                tcp.write_all(&request)
                    .expect("write to the agent's HTTP listener");
                let (status, text) = read_http_answer(&mut tcp, &mut answer);
                assert_eq!(
                    status, 204,
                    "e2e: FAILED: POST /api/v2/write answered {status}: {text}"
                );
                sent.fetch_add(HTTP_LINES as u64, Ordering::Relaxed);
            }
        },
    )
}

/// Reads one HTTP/1.1 answer: its status and body.
pub fn read_http_answer(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
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
