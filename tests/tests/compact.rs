//! Protocol revisions 4 and 5 with the real agent binary and an
//! in-process collector: small batches go compact, their series defined
//! once per session and their values coded against value references;
//! across a collector restart (a new session, definitions sent
//! again) and a `kill -9` of the agent while shipping, every reading is
//! stored exactly once.

use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get, stored, until};
use tokio::io::AsyncWriteExt;

/// Readings per phase, over [`SERIES`] series.
const N: usize = 6_000;
const SERIES: usize = 60;

fn agent_config(influx: std::net::SocketAddr, admin: std::net::SocketAddr) -> String {
    format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [journal]\nbatch_max_readings = 200\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    )
}

/// Readings the agent holds in its journal (batched or not), from /status.
async fn journaled(admin: std::net::SocketAddr) -> Option<u64> {
    let body = http_get(admin, "/status").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["outbox_readings"].as_u64()? + v["pending_readings"].as_u64()?)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Writes readings `from..to` (reading `i`: series `i % SERIES`, value
/// `i / 100`, at `t0 + i` ms).
async fn send(influx: std::net::SocketAddr, t0: i64, from: usize, to: usize) {
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    let mut text = String::new();
    for i in from..to {
        text.push_str(&format!(
            "temp,device=d{:03} c={}.{:02} {}\n",
            i % SERIES,
            i / 100,
            i % 100,
            t0 + i as i64
        ));
    }
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
}

async fn stored_count(data: &std::path::Path) -> usize {
    stored(data, "temp_c")
        .await
        .map_or(0, |s| s.iter().map(|x| x.1.len()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_batches_across_a_collector_restart_and_an_agent_kill_store_every_reading_once() {
    let site = Site::new();
    let (dir, data) = (site.dir.path(), &site.data);
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&agent_config(influx, admin));
    let agent_bin = binary("ferry-agent");
    let args = ["run", "--config", config.to_str().unwrap()];
    let t0 = now_ms() - 3_600_000;
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("compact: {what} after {:?}", started.elapsed());

    // 1. Session one: everything goes, compact.
    let collector = site.start_collector().await;
    let agent = Proc::spawn(&agent_bin, &args, &dir.join("agent1.log"));
    until("agent up", || async { journaled(admin).await.is_some() }).await;
    // In two halves: the second goes once every batch of the first is
    // acknowledged, so coded against the reference generation the first
    // batch set (a burst goes out before any answer, coded against none).
    send(influx, t0, 0, N / 2).await;
    until("first half of phase 1 acknowledged", || async {
        stored_count(data).await == N / 2 && journaled(admin).await == Some(0)
    })
    .await;
    send(influx, t0, N / 2, N).await;
    until("phase 1 stored", || async { stored_count(data).await == N }).await;
    phase("phase 1 stored");
    let compact = collector
        .handle
        .as_ref()
        .unwrap()
        .metrics()
        .compact_batches
        .get();
    assert!(compact > 0, "the agent sent compact batches");
    let referenced = collector
        .handle
        .as_ref()
        .unwrap()
        .metrics()
        .referenced_batches
        .get();
    assert!(referenced > 0, "values coded against references");
    collector.stop().await;

    // 2. The collector is down: the agent journals the next phase; a new
    //    collector process knows no ids, so the agent defines them again.
    send(influx, t0, N, 2 * N).await;
    until("phase 2 journaled", || async {
        journaled(admin).await == Some(N as u64)
    })
    .await;
    phase("phase 2 journaled");
    let collector = site.start_collector().await;
    until("some of phase 2 stored", || async {
        stored_count(data).await > N
    })
    .await;
    phase("some of phase 2 stored");
    // 3. kill -9 while shipping, journal a third phase, and restart.
    agent.kill9();
    let agent = Proc::spawn(&agent_bin, &args, &dir.join("agent2.log"));
    until("agent back", || async { journaled(admin).await.is_some() }).await;
    phase("agent back");
    send(influx, t0, 2 * N, 2 * N + N / 2).await;
    until("phase 2 and half of phase 3 acknowledged", || async {
        stored_count(data).await == 2 * N + N / 2 && journaled(admin).await == Some(0)
    })
    .await;
    send(influx, t0, 2 * N + N / 2, 3 * N).await;
    until("all stored", || async { stored_count(data).await >= 3 * N }).await;
    phase("all stored");
    until("agent outbox empty", || async {
        journaled(admin).await == Some(0)
    })
    .await;
    phase("agent outbox empty");

    let metrics = collector.handle.as_ref().unwrap().metrics();
    assert!(
        metrics.compact_batches.get() > 0,
        "compact after the restart too"
    );
    assert!(
        metrics.referenced_batches.get() > 0,
        "values coded against references after the restart too"
    );
    let series = stored(data, "temp_c").await.unwrap();
    assert_eq!(series.len(), SERIES);
    let mut all: Vec<(i64, f64)> = series.into_iter().flat_map(|s| s.1).collect();
    all.sort_by_key(|r| r.0);
    assert_eq!(all.len(), 3 * N, "stored exactly once");
    for (i, (ts, v)) in all.iter().enumerate() {
        assert_eq!(*ts, (t0 + i as i64) * 1_000_000);
        assert_eq!(
            *v,
            format!("{}.{:02}", i / 100, i % 100)
                .parse::<f64>()
                .unwrap()
        );
    }
    agent.kill9();
    collector.stop().await;
}
