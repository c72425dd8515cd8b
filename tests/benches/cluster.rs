//! Cluster-mode benchmark (docs/cluster.md, "Capacity figures"): readings/s
//! end to end through the cluster next to the single-process collector, in
//! one run, and the lag a worker's 30 s outage leaves and how fast it
//! drains.
//!
//! 1. Single process: a real agent ships `SERIES × PER_SERIES` readings
//!    (Influx line protocol over TCP, one write) to one `ferry-collector`;
//!    timed from the write until the collector's agents table counts them
//!    all stored.
//! 2. Cluster: three NATS nodes (stream R=3, `sync_interval: always`), one
//!    front end and one worker (release binaries); the same load through a
//!    real agent, timed until the front end has acked everything (it is in
//!    the log) and until the worker has stored everything (end to end).
//! 3. Outage: the worker is killed (SIGKILL) and the agent keeps taking
//!    `OUTAGE_RATE` readings/s for 30 s; once the front end has acked them,
//!    the worker's consumer lag (records, readings) is read from
//!    `cluster status`; the worker restarts and the time until its lag is
//!    zero and every reading is stored gives the drain rate.
//!
//! Every wait has a deadline; the run fails on any reading lost, refused,
//! dropped or rejected (agents tables exact, the agent's rejected batches
//! and the worker's rejected records zero).
//!
//! ```sh
//! cargo bench -p ferry-tests --bench cluster
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_collector::admin::Admin;
use ferry_tests::cluster::{Member, nats_cluster};
use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get};
use tokio::io::AsyncWriteExt;

const SERIES: usize = 1000;
const PER_SERIES: usize = 500;
/// Readings of the throughput phases.
const N: u64 = (SERIES * PER_SERIES) as u64;
/// How long the worker is down.
const OUTAGE: Duration = Duration::from_secs(30);
/// Readings/s the agent takes while the worker is down.
const OUTAGE_RATE: u64 = 10_000;
/// Rounds (one reading per series) written per 100 ms tick of the outage.
const ROUNDS_PER_TICK: usize = (OUTAGE_RATE as usize / 10) / SERIES;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Polls `cond` every 20 ms; panics after `limit`.
async fn wait<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Influx lines for rounds `rounds` (round r: one reading per series at
/// `t0 + r` seconds).
fn lines(t0: i64, rounds: std::ops::Range<usize>) -> String {
    let mut text = String::with_capacity(48 * SERIES * rounds.len());
    for i in rounds {
        for s in 0..SERIES {
            let cents = (i * 7 + s * 13) % 10_000;
            text.push_str(&format!(
                "bench,sensor=s{s:04} value={}.{:02} {}\n",
                cents / 100,
                cents % 100,
                t0 + i as i64 * 1000
            ));
        }
    }
    text
}

/// The first sample of `name` (a counter or gauge, labels included in
/// `name` when given) on `addr`'s /metrics; 0 when absent.
async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// The sum of every sample whose line starts with `prefix` and contains
/// `needle`.
async fn metric_sum(addr: SocketAddr, prefix: &str, needle: &str) -> u64 {
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The collector's HTTP address (its data directory's address file).
fn http_addr(data: &Path) -> SocketAddr {
    std::fs::read_to_string(data.join(ferry_collector::admin::ADDR_FILE))
        .expect("address file")
        .trim()
        .parse()
        .expect("an address")
}

/// Agent `gw` in the agents table of the collector in `data`:
/// `(readings, refused, dropped)`; zeros while it does not answer.
async fn stored(data: &Path) -> (u64, u64, u64) {
    let Ok(admin) = Admin::connect(data).await else {
        return (0, 0, 0);
    };
    admin
        .agents()
        .await
        .ok()
        .and_then(|a| a.into_iter().find(|a| a.id == "gw"))
        .map_or((0, 0, 0), |a| (a.readings, a.refused, a.dropped))
}

/// The agent took `readings` readings and has every batch acked.
async fn drained(admin: SocketAddr, readings: u64) -> bool {
    let Some(s) = http_get(admin, "/status").await else {
        return false;
    };
    let s: serde_json::Value = serde_json::from_str(&s).expect("agent status");
    s["readings_in"] == readings && s["outbox_batches"] == 0 && s["pending_readings"] == 0
}

/// Starts the agent of `site` with an Influx TCP listener; `(process,
/// influx address, admin address)`.
async fn agent(site: &Site, logs: &Path) -> (Proc, SocketAddr, SocketAddr) {
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let toml = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [journal]\nbudget = \"2 GiB\"\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    ));
    let proc = Proc::spawn(
        &binary("ferry-agent"),
        &["run", "--config", toml.to_str().unwrap()],
        &logs.join("agent.log"),
    );
    wait("agent up", Duration::from_secs(60), || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;
    (proc, influx, admin)
}

/// Writes `text` to the agent's Influx listener on one connection.
async fn send(influx: SocketAddr, text: &str) {
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
}

/// Fails the run on anything the agent had rejected for good.
async fn assert_nothing_rejected(agent_admin: SocketAddr, what: &str) {
    let rejected = metric(agent_admin, "ferry_agent_batches_rejected_total").await;
    assert_eq!(rejected, 0, "{what}: batches rejected for good");
}

/// The single-process row: seconds until all N readings are stored.
async fn single_process() -> f64 {
    let site = Site::new();
    let logs = site.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let toml = site.data.join("collector.toml");
    std::fs::write(
        &toml,
        format!(
            "data_dir = \".\"\n[quic]\nlisten = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            site.quic
        ),
    )
    .unwrap();
    let _collector = Proc::spawn(
        &binary("ferry-collector"),
        &["run", "--config", toml.to_str().unwrap()],
        &logs.join("collector.log"),
    );
    // Its address file and /healthz (Admin::connect before the address
    // file exists would open the store itself).
    let addr_file = site.data.join(ferry_collector::admin::ADDR_FILE);
    wait("collector up", Duration::from_secs(60), || async {
        match std::fs::read_to_string(&addr_file)
            .ok()
            .and_then(|t| t.trim().parse::<SocketAddr>().ok())
        {
            Some(a) => http_get(a, "/healthz").await.is_some(),
            None => false,
        }
    })
    .await;
    let (_agent, influx, agent_admin) = agent(&site, &logs).await;
    let text = lines(now_ms() - 3_600_000, 0..PER_SERIES);
    let start = Instant::now();
    send(influx, &text).await;
    drop(text);
    wait(
        "single process: every reading stored",
        Duration::from_secs(600),
        || async { stored(&site.data).await.0 >= N },
    )
    .await;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(stored(&site.data).await, (N, 0, 0), "single process");
    assert_nothing_rejected(agent_admin, "single process").await;
    secs
}

/// The worker's consumer in `cluster status`: `(pending, ack_pending)`.
async fn consumer_lag(front_end: &Member, consumer: &str) -> Option<(u64, u64)> {
    let toml = front_end.toml.clone();
    let s = tokio::task::spawn_blocking(move || ferry_tests::cluster::cluster_status(&toml))
        .await
        .ok()??;
    let c = s["consumers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == consumer)?
        .clone();
    Some((c["pending"].as_u64()?, c["ack_pending"].as_u64()?))
}

struct ClusterFigures {
    acked_secs: f64,
    stored_secs: f64,
    outage_readings: u64,
    outage_secs: f64,
    lag_records: u64,
    lag_readings: u64,
    drain_secs: f64,
}

async fn cluster() -> ClusterFigures {
    let site = Site::new();
    let root = site.dir.path().to_path_buf();
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (_nodes, urls) = nats_cluster(3, &root, &logs);
    let mut fe = Member::new(&site, &root, "fe1", Some(site.quic), &urls, "");
    let mut worker = Member::new(&site, &root, "w1", None, &urls, "");
    fe.start(&logs).await;
    worker.start(&logs).await;
    let (_agent, influx, agent_admin) = agent(&site, &logs).await;

    // Throughput.
    let t0 = now_ms() - 3_600_000;
    let text = lines(t0, 0..PER_SERIES);
    let start = Instant::now();
    send(influx, &text).await;
    drop(text);
    wait(
        "cluster: every reading acked by the front end",
        Duration::from_secs(600),
        || drained(agent_admin, N),
    )
    .await;
    let acked_secs = start.elapsed().as_secs_f64();
    wait(
        "cluster: every reading stored by the worker",
        Duration::from_secs(600),
        || async { stored(&worker.data).await.0 >= N },
    )
    .await;
    let stored_secs = start.elapsed().as_secs_f64();
    assert_eq!(stored(&worker.data).await, (N, 0, 0), "cluster: the worker");

    // The worker's outage: the agent keeps streaming.
    worker.kill9();
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let outage_start = Instant::now();
    let mut round = PER_SERIES;
    while outage_start.elapsed() < OUTAGE {
        tick.tick().await;
        let text = lines(t0, round..round + ROUNDS_PER_TICK);
        round += ROUNDS_PER_TICK;
        tcp.write_all(text.as_bytes()).await.unwrap();
    }
    tcp.shutdown().await.unwrap();
    drop(tcp);
    let total = (round * SERIES) as u64;
    let outage_readings = total - N;
    wait(
        "outage: every reading acked by the front end",
        Duration::from_secs(120),
        || drained(agent_admin, total),
    )
    .await;
    let outage_secs = outage_start.elapsed().as_secs_f64();
    // Records the log holds that the worker has not acked.
    let deadline = Instant::now() + Duration::from_secs(60);
    let lag = loop {
        if let Some(lag) = consumer_lag(&fe, "w1").await {
            break lag;
        }
        assert!(Instant::now() < deadline, "cluster status does not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (pending, ack_pending) = lag;
    let lag_records = pending + ack_pending;

    // Restart: how fast the lag drains.
    let start = Instant::now();
    worker.start(&logs).await;
    wait(
        "the worker drains its lag",
        Duration::from_secs(600),
        || async {
            stored(&worker.data).await.0 >= total && consumer_lag(&fe, "w1").await == Some((0, 0))
        },
    )
    .await;
    let drain_secs = start.elapsed().as_secs_f64();
    assert_eq!(
        stored(&worker.data).await,
        (total, 0, 0),
        "after the outage: the worker"
    );
    assert_nothing_rejected(agent_admin, "cluster").await;
    let w = http_addr(&worker.data);
    for outcome in ["rejected", "undecodable"] {
        let n = metric_sum(
            w,
            "ferry_collector_cluster_records",
            &format!("outcome=\"{outcome}\""),
        )
        .await;
        assert_eq!(n, 0, "the worker's {outcome} records");
    }
    ClusterFigures {
        acked_secs,
        stored_secs,
        outage_readings,
        outage_secs,
        lag_records,
        lag_readings: outage_readings,
        drain_secs,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for bin in ["ferry-collector", "ferry-agent"] {
            let _ = binary(bin);
        }
        println!(
            "ferry cluster benchmark ({SERIES} series × {PER_SERIES} readings = {N} readings through \
             a real agent; {} binaries; NATS 3 nodes, R=3, sync_interval always)",
            if cfg!(debug_assertions) { "debug" } else { "release" }
        );
        let single = single_process().await;
        let single_rate = N as f64 / single;
        println!(
            "  single process:                      {N} readings stored in {single:>6.2} s  {single_rate:>9.0} readings/s"
        );
        let c = cluster().await;
        let acked_rate = N as f64 / c.acked_secs;
        let stored_rate = N as f64 / c.stored_secs;
        println!(
            "  cluster (1 front end, 1 worker):     {N} readings acked  in {:>6.2} s  {acked_rate:>9.0} readings/s (in the log)",
            c.acked_secs
        );
        println!(
            "                                       {N} readings stored in {:>6.2} s  {stored_rate:>9.0} readings/s (end to end)",
            c.stored_secs
        );
        println!(
            "  cluster / single process (end to end): {:.2}",
            stored_rate / single_rate
        );
        let ingest_rate = c.outage_readings as f64 / c.outage_secs;
        println!(
            "  worker down {} s, agent streaming: {} readings in the log ({ingest_rate:.0} readings/s ingest); \
             lag left: {} records, {} readings",
            OUTAGE.as_secs(),
            c.outage_readings,
            c.lag_records,
            c.lag_readings
        );
        println!(
            "  worker restarted: lag zero after {:.2} s (restart included): {:.0} records/s, {:.0} readings/s \
             ({:.1}× the ingest rate)",
            c.drain_secs,
            c.lag_records as f64 / c.drain_secs,
            c.lag_readings as f64 / c.drain_secs,
            c.lag_readings as f64 / c.drain_secs / ingest_rate
        );
    });
}
