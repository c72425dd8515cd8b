//! Fleet benchmark: how many agents one collector holds.
//!
//! N simulated agents — one QUIC connection each, mutual TLS with a client
//! certificate issued by the collector's CA (the `pki` library issues them
//! in memory, once per run, and records them as `enroll` does), several per
//! UDP socket of this process — against the real `ferry-collector run` in
//! its own process. Every agent says hello, then ships a small batch (4
//! series × 5 readings) every 10 s, at its own phase of the period, and
//! waits for its ack. For N = 1,000, 5,000 and 10,000, side by side:
//! collector RSS (idle once connected, and peak while shipping), collector
//! CPU per batch (user + system, from /proc), ack latency p50/p99/max.
//! Then a flood: 1,000 agents ship while garbage UDP datagrams (bad fixed
//! bit, random short headers, Initials that fail decryption, unknown
//! versions) hit the QUIC port; the same figures, and the garbage counted.
//!
//! Every batch must be acked `stored`, and at the end the collector's own
//! agents table and /metrics must say every agent stored every batch: the
//! benchmark panics otherwise. Goal: 10,000 agents with RSS ≤ 512 MiB and
//! ack p99 ≤ 100 ms on a 2-core machine.
//!
//! Run: `cargo bench -p ferry-collector --bench fleet`
//! (`FERRY_FLEET_SIZES` = comma-separated N, default `1000,5000,10000`;
//! `FERRY_FLEET_ROUNDS` = batches per agent measured, default 3;
//! `FERRY_FLEET_FLOOD_RATE` = garbage datagrams per second, default 50000;
//! `FERRY_FLEET_TOML` = TOML tables appended to the collector's
//! configuration, e.g. `[limits]` settings to compare).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_collector::pki::{self, Authority, Issued};
use ferry_proto::batch::{Batch, Reading, ReadingBlock};
use ferry_proto::codec;
use ferry_proto::series::SeriesKey;
use ferry_proto::session::{Ack, Hello, PROTOCOL_VERSION, Welcome, compression};
use ferry_proto::stream::{FrameHeader, FrameType, HEADER_LEN, write_frame};
use tokio::sync::{Semaphore, watch};

const BIN: &str = env!("CARGO_BIN_EXE_ferry-collector");
const PERIOD: Duration = Duration::from_secs(10);
const SERIES: usize = 4;
const READINGS: usize = 5;
/// Client UDP sockets the agents share.
const ENDPOINTS: usize = 16;
/// Handshakes in flight while connecting.
const CONNECTING: usize = 64;
const GOAL_AGENTS: usize = 10_000;
const GOAL_RSS: u64 = 512 << 20;
const GOAL_P99: Duration = Duration::from_millis(100);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FERRY_FLEET_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 5_000, 10_000]);
    let rounds: u64 = env_or("FERRY_FLEET_ROUNDS", 3);
    let flood_rate: u64 = env_or("FERRY_FLEET_FLOOD_RATE", 50_000);
    let flood_agents = 1_000.min(sizes.iter().copied().max().unwrap_or(1_000));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(&sizes, rounds, flood_agents, flood_rate));
}

/// What one run measured.
struct Row {
    agents: usize,
    connect: Duration,
    rss_idle: u64,
    rss_peak: u64,
    cpu_per_batch: Duration,
    cpu_share: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    stored: u64,
    expected: u64,
    garbage_sent: u64,
    garbage_counted: u64,
    client_cpu_share: f64,
    commits: u64,
    commit_mean: Duration,
    round_p99: Vec<Duration>,
}

async fn bench(sizes: &[usize], rounds: u64, flood_agents: usize, flood_rate: u64) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca_dir = dir.path().join("ca");
    ferry_collector::init(&ferry_collector::InitOptions::new(&ca_dir)).expect("init");
    let most = sizes.iter().copied().max().unwrap_or(0).max(flood_agents);
    let started = Instant::now();
    let issued = issue_all(&ca_dir, most);
    let issuing = started.elapsed();
    let ca_pem = Authority::load(&ca_dir).expect("CA").ca_pem().to_owned();
    println!(
        "ferry-collector fleet benchmark: N agents (one QUIC connection each, mTLS with certificates from the collector's CA), \
         {SERIES} series x {READINGS} readings every {} s each, {rounds} batches per agent measured; the collector is `ferry-collector run` in its own process",
        PERIOD.as_secs()
    );
    println!(
        "  certificates: {most} issued in {:.1} s ({:.2} ms each, ECDSA P-256, the pki library on 2 threads)",
        issuing.as_secs_f64(),
        issuing.as_secs_f64() * 1000.0 / most.max(1) as f64
    );
    let mut rows = Vec::new();
    for &n in sizes {
        let row = run(dir.path(), &ca_dir, &ca_pem, &issued[..n], rounds, 0).await;
        print_row(&row, rows.is_empty());
        rows.push(row);
    }
    let flood = run(
        dir.path(),
        &ca_dir,
        &ca_pem,
        &issued[..flood_agents],
        rounds,
        flood_rate,
    )
    .await;
    println!(
        "  flood     : {} garbage datagrams sent at the QUIC port while the agents shipped ({} counted as not QUIC by the collector; the rest looked like QUIC and were dropped by quinn)",
        flood.garbage_sent, flood.garbage_counted
    );
    print_row(&flood, false);
    if let Some(base) = rows.iter().find(|r| r.agents == flood.agents) {
        println!(
            "  flood vs none ({} agents): RSS peak {} vs {}, ack p99 {:.1} vs {:.1} ms, CPU per batch {:.2} vs {:.2} ms",
            flood.agents,
            mib(flood.rss_peak),
            mib(base.rss_peak),
            ms(flood.p99),
            ms(base.p99),
            ms(flood.cpu_per_batch),
            ms(base.cpu_per_batch)
        );
    }
    for r in rows.iter().chain(std::iter::once(&flood)) {
        assert_eq!(
            r.stored, r.expected,
            "{} agents: {} batches stored, {} sent",
            r.agents, r.stored, r.expected
        );
    }
    if let Some(r) = rows.iter().find(|r| r.agents == GOAL_AGENTS) {
        let rss = r.rss_peak <= GOAL_RSS;
        let p99 = r.p99 <= GOAL_P99;
        println!(
            "  goal      : {GOAL_AGENTS} agents, collector RSS {} ≤ {}: {}; ack p99 {:.1} ms ≤ {} ms: {}",
            mib(r.rss_peak),
            mib(GOAL_RSS),
            if rss { "PASS" } else { "FAIL" },
            ms(r.p99),
            GOAL_P99.as_millis(),
            if p99 { "PASS" } else { "FAIL" }
        );
    }
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_row(r: &Row, header: bool) {
    if header {
        println!(
            "  {:>7}  {:>8}  {:>9}  {:>9}  {:>10}  {:>6}  {:>8}  {:>8}  {:>8}  {:>13}",
            "agents",
            "connect",
            "RSS idle",
            "RSS peak",
            "CPU/batch",
            "CPU",
            "ack p50",
            "ack p99",
            "ack max",
            "stored/sent"
        );
    }
    println!(
        "  {:>7}  {:>6.1} s  {:>9}  {:>9}  {:>7.2} ms  {:>5.1}%  {:>5.1} ms  {:>5.1} ms  {:>5.1} ms  {:>13}",
        r.agents,
        r.connect.as_secs_f64(),
        mib(r.rss_idle),
        mib(r.rss_peak),
        ms(r.cpu_per_batch),
        r.cpu_share * 100.0,
        ms(r.p50),
        ms(r.p99),
        ms(r.max),
        format!("{}/{}", r.stored, r.expected),
    );
    println!(
        "           ack p99 by round {:?} ms; {} durable commits, {:.1} ms each on average; the agents' process used {:.0}% of a core",
        r.round_p99
            .iter()
            .map(|d| (ms(*d) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        r.commits,
        ms(r.commit_mean),
        r.client_cpu_share * 100.0
    );
}

/// `n` certificates, `agent-00000`…, issued on two threads.
fn issue_all(ca_dir: &Path, n: usize) -> Vec<Issued> {
    let authority = Authority::load(ca_dir).expect("CA");
    let mut out: Vec<Option<Issued>> = vec![None; n];
    std::thread::scope(|s| {
        let (a, b) = out.split_at_mut(n / 2);
        let authority = &authority;
        s.spawn(move || {
            for (i, slot) in a.iter_mut().enumerate() {
                *slot = Some(authority.issue(&agent_id(i), 365).expect("issue"));
            }
        });
        let off = n / 2;
        s.spawn(move || {
            for (i, slot) in b.iter_mut().enumerate() {
                *slot = Some(authority.issue(&agent_id(off + i), 365).expect("issue"));
            }
        });
    });
    out.into_iter().map(|c| c.expect("issued")).collect()
}

fn agent_id(i: usize) -> String {
    format!("agent-{i:05}")
}

/// A data directory with the bench CA, the agents recorded as enrolled, and
/// a configuration with both listeners on loopback (defaults otherwise).
fn data_dir(root: &Path, ca_dir: &Path, agents: &[Issued], tag: &str) -> (PathBuf, SocketAddr) {
    let data = root.join(format!("run-{tag}"));
    std::fs::create_dir_all(&data).expect("data dir");
    for f in [pki::CA_CERT, pki::CA_KEY, pki::SERVER_CERT, pki::SERVER_KEY] {
        std::fs::copy(ca_dir.join(f), data.join(f)).expect("copy CA");
    }
    let authority = Authority::load(&data).expect("CA");
    for a in agents {
        authority.record(&a.agent_id, &a.cert_pem).expect("record");
    }
    let quic = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port");
    std::fs::write(
        data.join(pki::CONFIG_FILE),
        format!(
            "data_dir = \".\"\n[quic]\nlisten = \"{quic}\"\n[http]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .expect("collector.toml");
    (data, quic)
}

/// The collector process, killed if dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// User + system CPU time of a process.
fn cpu_time(pid: u32, tick: f64) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line: 12 and 13 here.
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / tick)
}

fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn http_get(addr: SocketAddr, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("HTTP");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("HTTP write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("HTTP read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn run(
    root: &Path,
    ca_dir: &Path,
    ca_pem: &str,
    agents: &[Issued],
    rounds: u64,
    flood_rate: u64,
) -> Row {
    let n = agents.len();
    let tag = if flood_rate > 0 {
        format!("{n}-flood")
    } else {
        n.to_string()
    };
    let (data, quic) = data_dir(root, ca_dir, agents, &tag);
    let log = std::fs::File::create(root.join(format!("collector-{tag}.log"))).expect("log");
    let server = Server(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(data.join(pki::CONFIG_FILE))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ferry-collector"),
    );
    let pid = server.0.id();
    let mut http = None;
    for _ in 0..3000 {
        if let Ok(t) = std::fs::read_to_string(data.join(ferry_collector::admin::ADDR_FILE))
            && let Ok(a) = t.trim().parse::<SocketAddr>()
            && tokio::net::TcpStream::connect(a).await.is_ok()
        {
            http = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let http = http.expect("the collector never answered on HTTP");
    let token = std::fs::read_to_string(data.join(ferry_collector::auth::LOCAL_TOKEN_FILE))
        .expect("admin.token")
        .trim()
        .to_owned();

    // Connect every agent, CONNECTING handshakes at a time.
    let endpoints: Vec<quinn::Endpoint> = (0..ENDPOINTS)
        .map(|_| quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint"))
        .collect();
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let (go_tx, go_rx) = watch::channel::<Option<Instant>>(None);
    let (done_tx, done_rx) = watch::channel(false);
    let latencies = Arc::new(Mutex::new(Vec::<(u64, Duration)>::with_capacity(
        n * rounds as usize,
    )));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let connected = Arc::new(AtomicU64::new(0));
    let connect_start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, cert) in agents.iter().enumerate() {
        let tls = pki::client_tls_pem(ca_pem, &cert.cert_pem, &cert.key_pem).expect("client TLS");
        let config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS"),
        ));
        let endpoint = endpoints[i % ENDPOINTS].clone();
        let gate = gate.clone();
        let mut go = go_rx.clone();
        let mut done = done_rx.clone();
        let latencies = latencies.clone();
        let failures = failures.clone();
        let connected = connected.clone();
        let phase = PERIOD.mul_f64(i as f64 / n as f64);
        let id = cert.agent_id.clone();
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let conn = match session(&endpoint, quic, config).await {
                Ok(c) => c,
                Err(e) => {
                    failures.lock().unwrap().push(format!("{id}: connect: {e}"));
                    return;
                }
            };
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            let _ = go.wait_for(Option::is_some).await;
            let start = go.borrow().expect("start time");
            let mut mine = Vec::with_capacity(rounds as usize);
            for r in 0..rounds {
                tokio::time::sleep_until((start + phase + PERIOD * r as u32).into()).await;
                let frame = batch_frame(i, r + 1);
                let t = Instant::now();
                match ship(&conn, &frame).await {
                    Ok(ack) if ack == Ack::stored(r + 1) => mine.push((r, t.elapsed())),
                    Ok(ack) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{id}: batch {}: {ack:?}", r + 1));
                    }
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{id}: batch {}: {e}", r + 1));
                    }
                }
            }
            latencies.lock().unwrap().extend(mine);
            // Stay connected until every agent is done and counted.
            let _ = done.wait_for(|d| *d).await;
            conn.close(0u32.into(), b"bench done");
        });
    }
    while connected.load(Ordering::Relaxed) < n as u64 {
        let f = failures.lock().unwrap().clone();
        assert!(
            f.is_empty(),
            "{} agents failed to connect: {:?}",
            f.len(),
            &f[..f.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect = connect_start.elapsed();
    // Settle, then the idle figure with everyone connected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = proc_status(pid, "VmRSS:");

    let stop_flood = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = if flood_rate > 0 {
        (0..2)
            .map(|k| {
                let stop = stop_flood.clone();
                std::thread::spawn(move || flood(quic, flood_rate / 2, k, &stop))
            })
            .collect()
    } else {
        Vec::new()
    };
    let metrics_before = http_get(http, "/metrics", &token).await;
    let tick = clock_tick();
    let cpu_start = cpu_time(pid, tick);
    let client_start = cpu_time(std::process::id(), tick);
    let wall_start = Instant::now();
    go_tx.send_replace(Some(Instant::now() + Duration::from_millis(200)));
    let mut rss_peak = rss_idle;
    let expected = n as u64 * rounds;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_peak = rss_peak.max(proc_status(pid, "VmRSS:"));
        let got = latencies.lock().unwrap().len() as u64;
        let failed = failures.lock().unwrap().len() as u64;
        if got + failed >= expected {
            break;
        }
        assert!(
            wall_start.elapsed() < PERIOD * (rounds as u32 + 6),
            "batches still unanswered: {got} acked, {failed} failed of {expected}"
        );
    }
    let cpu = cpu_time(pid, tick).saturating_sub(cpu_start);
    let client_cpu = cpu_time(std::process::id(), tick).saturating_sub(client_start);
    let wall = wall_start.elapsed();
    stop_flood.store(true, Ordering::Relaxed);
    let garbage_sent: u64 = flooders.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} batches failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The collector's own view: every agent connected, every batch stored.
    let agents_json = http_get(http, "/api/v1/agents", &token).await;
    let table: Vec<serde_json::Value> = serde_json::from_str(&agents_json).expect("agents JSON");
    let by_id: HashMap<&str, &serde_json::Value> = table
        .iter()
        .map(|a| (a["id"].as_str().unwrap_or(""), a))
        .collect();
    let mut stored = 0;
    for a in agents {
        let row = by_id
            .get(a.agent_id.as_str())
            .unwrap_or_else(|| panic!("{} is missing from the agents table", a.agent_id));
        assert_eq!(row["state"], "connected", "{row}");
        assert_eq!(
            row["readings"],
            rounds * (SERIES * READINGS) as u64,
            "{row}"
        );
        stored += row["batches"].as_u64().unwrap_or(0);
    }
    let metrics = http_get(http, "/metrics", &token).await;
    let stored_metric = metric(
        &metrics,
        "ferry_collector_batches_total{outcome=\"stored\",reason=\"\"}",
    );
    assert_eq!(stored_metric, expected, "stored batches in /metrics");
    assert_eq!(metric(&metrics, "ferry_collector_connections"), n as u64);
    let garbage = "ferry_collector_bad_input_total{kind=\"garbage_datagram\"}";
    let garbage_counted = metric(&metrics, garbage) - metric(&metrics_before, garbage);

    let commits_name = "ferry_collector_commit_seconds_count";
    let commits = metric(&metrics, commits_name) - metric(&metrics_before, commits_name);
    let sum = |t: &str| {
        t.lines()
            .find_map(|l| {
                l.strip_prefix("ferry_collector_commit_seconds_sum ")?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let commit_mean =
        Duration::from_secs_f64((sum(&metrics) - sum(&metrics_before)) / commits.max(1) as f64);
    let all = latencies.lock().unwrap().clone();
    let round_p99 = (0..rounds)
        .map(|r| {
            let mut v: Vec<Duration> = all.iter().filter(|(k, _)| *k == r).map(|x| x.1).collect();
            v.sort();
            v.get(((v.len().max(1) - 1) as f64 * 0.99).round() as usize)
                .copied()
                .unwrap_or_default()
        })
        .collect();
    let mut lat: Vec<Duration> = all.into_iter().map(|x| x.1).collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let row = Row {
        agents: n,
        connect,
        rss_idle,
        rss_peak: rss_peak.max(proc_status(pid, "VmRSS:")),
        cpu_per_batch: cpu / expected.max(1) as u32,
        cpu_share: cpu.as_secs_f64() / wall.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        max: *lat.last().unwrap_or(&Duration::ZERO),
        stored,
        expected,
        garbage_sent,
        garbage_counted,
        client_cpu_share: client_cpu.as_secs_f64() / wall.as_secs_f64(),
        commits,
        commit_mean,
        round_p99,
    };
    done_tx.send_replace(true);
    while tasks.join_next().await.is_some() {}
    for e in &endpoints {
        e.wait_idle().await;
    }
    // A graceful stop, checked.
    let mut server = server;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = server.0.wait().expect("collector exit");
    assert!(status.success(), "the collector exited with {status}");
    let _ = std::fs::remove_dir_all(&data);
    row
}

/// Every simulated agent's journal epoch (docs/protocol.md, Hello).
const FLEET_EPOCH: u64 = 1;

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<(FrameHeader, Vec<u8>), String> {
    let mut head = [0u8; HEADER_LEN];
    recv.read_exact(&mut head)
        .await
        .map_err(|e| e.to_string())?;
    let header = FrameHeader::parse(&head, u32::MAX).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; header.len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Ok((header, body))
}

/// Connects and completes the hello exchange.
async fn session(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, String> {
    let conn = endpoint
        .connect_with(config, server, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "fleet-bench 0".into(),
        compression: vec![compression::NONE],
        // One journal per simulated agent, never replaced.
        epoch: FLEET_EPOCH,
        resolved_below: 0,
    };
    let mut frame = Vec::new();
    write_frame(
        &mut frame,
        FrameType::Hello,
        0,
        &codec::to_vec(&hello).map_err(|e| e.to_string())?,
    );
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    let (header, body) = read_frame(&mut recv).await?;
    if header.frame_type != FrameType::Welcome {
        return Err(format!("hello answered with {:?}", header.frame_type));
    }
    codec::from_bytes::<Welcome>("Welcome", &body).map_err(|e| e.to_string())?;
    Ok(conn)
}

async fn ship(conn: &quinn::Connection, frame: &[u8]) -> Result<Ack, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(frame).await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    let (header, body) = read_frame(&mut recv).await?;
    if header.frame_type != FrameType::Ack {
        return Err(format!("answered with {:?}", header.frame_type));
    }
    codec::from_bytes("Ack", &body).map_err(|e| e.to_string())
}

/// Batch `seq` of agent `i`: 4 series (temperature, humidity, pressure,
/// battery of one device) × 5 readings a second apart, just before now.
fn batch_frame(i: usize, seq: u64) -> Vec<u8> {
    let now = ferry_collector::now_ns();
    let t0 = now - now % 1_000_000_000 - READINGS as i64 * 1_000_000_000;
    let mut b = Batch {
        seq,
        created_ns: now,
        epoch: FLEET_EPOCH,
        ..Batch::default()
    };
    for (s, metric) in ["temperature", "humidity", "pressure", "battery"]
        .iter()
        .enumerate()
        .take(SERIES)
    {
        b.series
            .push(SeriesKey::new(*metric, [("device", format!("dev-{i}"))]).expect("series key"));
        let readings: Vec<Reading> = (0..READINGS)
            .map(|k| Reading {
                ts_ns: t0 + k as i64 * 1_000_000_000,
                value: 20.0 + s as f64 + (seq as f64 + k as f64) * 0.01,
            })
            .collect();
        b.blocks.push(ReadingBlock::encode(s as u32, &readings));
    }
    let mut frame = Vec::new();
    write_frame(
        &mut frame,
        FrameType::Batch,
        0,
        &codec::to_vec(&b).expect("encode"),
    );
    frame
}

/// Garbage at `rate` datagrams per second until `stop`: four kinds in
/// turn. Returns how many were sent.
fn flood(target: SocketAddr, rate: u64, seed: u64, stop: &AtomicBool) -> u64 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("flood socket");
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = vec![0u8; 1200];
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for b in buf.iter_mut() {
            *b = rand() as u8;
        }
        let len = match sent % 4 {
            // Fixed bit clear: not QUIC at all.
            0 => {
                buf[0] &= !0x40;
                64 + (rand() % 1100) as usize
            }
            // A short header for a connection that does not exist.
            1 => {
                buf[0] = 0x40 | (buf[0] & 0x3f);
                30 + (rand() % 200) as usize
            }
            // An Initial of QUIC v1 whose payload does not decrypt.
            2 => {
                buf[0] = 0xc0 | (buf[0] & 0x0f);
                buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                buf[5] = 8;
                buf[14] = 8;
                buf[23] = 0; // no token
                buf[24] = 0x44; // length: 2-byte varint
                buf[25] = 0xa0;
                1200
            }
            // A version nobody speaks.
            _ => {
                buf[0] |= 0xc0;
                buf[1..5].copy_from_slice(&0x0a1a_2a3au32.to_be_bytes());
                buf[5] = 8;
                buf[14] = 8;
                1200
            }
        };
        if socket.send_to(&buf[..len], target).is_ok() {
            sent += 1;
        }
    }
    sent
}
