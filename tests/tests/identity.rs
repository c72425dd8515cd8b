//! Journal identity and failure detection with the real binaries:
//!
//! - an agent whose data directory is wiped comes back with a new journal
//!   epoch: sequence numbers start again at 1, and every new reading is
//!   stored (before epochs, the collector answered them "duplicate" and
//!   0 of them were stored); the reset shows in the agents table;
//! - a killed agent leaves the `connected` state after the collector's idle
//!   timeout (6 s by default, was 30 s), and an agent notices a killed
//!   collector as soon.

use std::time::{Duration, Instant};

use ferry_collector::admin::{Admin, AgentView};
use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get, stored, until};
use tokio::io::AsyncWriteExt;

const N: usize = 1_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn agent_view(site: &Site) -> Option<AgentView> {
    let admin = Admin::connect(&site.data).await.ok()?;
    admin
        .agents()
        .await
        .ok()?
        .into_iter()
        .find(|a| a.id == "gw")
}

async fn send_lines(influx: std::net::SocketAddr, t0_ms: i64, tag: &str) {
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    let mut text = String::new();
    for i in 0..N {
        text.push_str(&format!(
            "flow,device={tag} litres={i} {}\n",
            t0_ms + i as i64
        ));
    }
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
}

async fn stored_count(site: &Site) -> usize {
    stored(&site.data, "flow_litres")
        .await
        .map_or(0, |s| s.iter().map(|x| x.1.len()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_journal_is_a_new_epoch_and_none_of_its_readings_are_lost() {
    let site = Site::new();
    let dir = site.dir.path();
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [journal]\nbatch_max_readings = 100\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    ));
    let args = ["run", "--config", config.to_str().unwrap()];
    let collector = site.start_collector().await;

    // The first journal: 1000 readings in batches from seq 1.
    let agent = Proc::spawn(&binary("ferry-agent"), &args, &dir.join("agent1.log"));
    until("agent up", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;
    let t0 = now_ms() - 600_000;
    send_lines(influx, t0, "m1").await;
    until("the first journal's readings stored", || async {
        stored_count(&site).await == N
    })
    .await;
    let first = agent_view(&site).await.unwrap();
    assert_eq!(first.epoch.len(), 16, "{first:?}");
    assert_eq!(first.journal_resets, 0);
    let last_seq = first.last_seq.unwrap();

    // The gateway is re-imaged: same certificate, empty data directory.
    agent.kill9();
    std::fs::remove_dir_all(site.bundle.join("data")).unwrap();
    let agent = Proc::spawn(&binary("ferry-agent"), &args, &dir.join("agent2.log"));
    until("agent up again", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;
    send_lines(influx, t0 + 100_000, "m2").await;
    until("the new journal's readings stored", || async {
        stored_count(&site).await == 2 * N
    })
    .await;
    until("the agent's outbox empty", || async {
        let Some(body) = http_get(admin, "/status").await else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["outbox_readings"] == 0 && v["pending_readings"] == 0
    })
    .await;
    let series = stored(&site.data, "flow_litres").await.unwrap();
    let per: Vec<(String, usize)> = series.iter().map(|s| (s.0.clone(), s.1.len())).collect();
    assert_eq!(
        per,
        [
            ("flow_litres{agent=\"gw\",device=\"m1\"}".to_owned(), N),
            ("flow_litres{agent=\"gw\",device=\"m2\"}".to_owned(), N)
        ]
    );
    // The new journal numbered its batches from 1 again; the collector
    // knows it as another epoch and shows the reset.
    let second = agent_view(&site).await.unwrap();
    assert_ne!(second.epoch, first.epoch);
    assert_eq!(second.previous_epoch, first.epoch);
    assert_eq!(second.journal_resets, 1);
    assert!(second.last_seq.unwrap() <= last_seq, "{second:?}");
    let epochs = collector.handle.as_ref().unwrap().store().epochs().unwrap();
    assert_eq!(epochs.len(), 2);
    assert!(
        epochs.iter().all(|(_, _, e)| e.readings == N as u64),
        "{epochs:?}"
    );
    agent.kill9();
    collector.stop().await;
}

/// `collector.toml` for the site with every default but the addresses.
fn collector_config(site: &Site) -> std::path::PathBuf {
    let path = site.data.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \".\"\n[quic]\nlisten = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            site.quic
        ),
    )
    .unwrap();
    path
}

async fn collector_http(site: &Site) -> std::net::SocketAddr {
    let file = site.data.join(ferry_collector::admin::ADDR_FILE);
    for _ in 0..12_000 {
        if let Some(addr) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            && http_get(addr, "/healthz").await.is_some()
        {
            return addr;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: collector HTTP up");
}

async fn agent_connected(admin: std::net::SocketAddr) -> Option<bool> {
    let m = http_get(admin, "/metrics").await?;
    Some(m.contains("\nferry_agent_connected 1\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peers_are_noticed_within_the_idle_timeout() {
    let site = Site::new();
    let dir = site.dir.path();
    let admin = free_tcp_port();
    let agent_toml = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n"
    ));
    let agent_args = ["run", "--config", agent_toml.to_str().unwrap()];
    let collector_toml = collector_config(&site);
    let collector_args = ["run", "--config", collector_toml.to_str().unwrap()];
    let collector = Proc::spawn(
        &binary("ferry-collector"),
        &collector_args,
        &dir.join("collector.log"),
    );
    collector_http(&site).await;

    // An agent connects, and is killed.
    let agent = Proc::spawn(&binary("ferry-agent"), &agent_args, &dir.join("agent1.log"));
    until("the agent shows as connected", || async {
        agent_view(&site)
            .await
            .is_some_and(|a| a.state == "connected")
    })
    .await;
    agent.kill9();
    let killed = Instant::now();
    until("the killed agent leaves the connected state", || async {
        agent_view(&site)
            .await
            .is_some_and(|a| a.state != "connected")
    })
    .await;
    let gone = killed.elapsed();
    // Nothing told the collector: only the idle timeout (6 s) can have.
    // Before keep-alives and a short timeout, this took 30 s.
    assert!(gone < Duration::from_secs(30), "{gone:?}");
    let state = agent_view(&site).await.unwrap().state;
    assert_eq!(state, "enrolled", "it never stored a batch");

    // An agent connects, and its collector is killed.
    let agent = Proc::spawn(&binary("ferry-agent"), &agent_args, &dir.join("agent2.log"));
    until("the agent is connected", || async {
        agent_connected(admin).await == Some(true)
    })
    .await;
    collector.kill9();
    let killed = Instant::now();
    until("the agent notices", || async {
        agent_connected(admin).await == Some(false)
    })
    .await;
    let noticed = killed.elapsed();
    assert!(noticed < Duration::from_secs(30), "{noticed:?}");
    let log = std::fs::read_to_string(dir.join("collector.log")).unwrap();
    assert!(
        log.contains("agent disconnected") && log.contains("timed out"),
        "the collector saw the first agent time out: {log}"
    );
    eprintln!(
        "killed agent gone from `connected` after {gone:?}; killed collector noticed after {noticed:?}"
    );
    agent.kill9();
}
