//! The agent and the collector as their `Type=notify` units run them
//! (packaging/), with the test standing in for systemd: it owns the
//! `NOTIFY_SOCKET` and sets `WATCHDOG_USEC`.
//!
//! - `READY=1` comes once every listener accepts: the test connects to each
//!   address `STATUS=` names as soon as `READY=1` arrives, and readings sent
//!   then are committed.
//! - `WATCHDOG=1` comes from the loop that commits: once the writer is stuck
//!   (the `FERRY_FAULT_STALL_WRITER` hook), the pings stop while the process
//!   and its other endpoints live on, so only the watchdog can catch it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use ferry_tests::systemd::{LogLines, NotifySocket, status_addresses};
use ferry_tests::{Proc, Site, binary};

/// The watchdog period the test asks for: pings every 1 s.
const WATCHDOG_USEC: &str = "2000000";

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

fn spawn(bin: &Path, args: &[&str], notify: &NotifySocket, stall: &Path) -> Child {
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env(ferry_agent_stall_env(), stall)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// `FERRY_FAULT_STALL_WRITER` (docs/deploying.md, "Fault hooks").
fn ferry_agent_stall_env() -> &'static str {
    ferry_collector::systemd::STALL_WRITER_ENV
}

fn watchdogs(messages: &[Vec<String>]) -> usize {
    messages
        .iter()
        .filter(|m| m.iter().any(|l| l == "WATCHDOG=1"))
        .count()
}

/// After the stall: the daemon says its writer has not answered, twice,
/// and no `WATCHDOG=1` comes between the two (the watchdog loop is
/// sequential, so the first warning follows every ping it had sent).
fn watchdog_stops(notify: &NotifySocket, log: &mut LogLines, stall: &Path, writer: &str) {
    std::fs::write(stall, b"").unwrap();
    log.wait_for(&format!("the {writer} stalls here for good"));
    log.wait_for(&format!("the {writer} has not answered"));
    let before = notify.drain();
    log.wait_for(&format!("the {writer} has not answered"));
    let after = notify.drain();
    assert_eq!(
        watchdogs(&after),
        0,
        "WATCHDOG=1 after the writer stalled: {after:?} (before the first warning: {before:?})"
    );
}

#[test]
fn agent_is_ready_once_its_listeners_accept_and_its_watchdog_stops_with_the_writer() {
    let site = Site::new();
    let config = site.agent_config(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[influx_tcp]]\nlisten = \"127.0.0.1:0\"\nprecision = \"s\"\n\n\
         [[influx_udp]]\nlisten = \"127.0.0.1:0\"\nprecision = \"s\"\n\n\
         [[device_tcp_listen]]\nlisten = \"127.0.0.1:0\"\n",
    );
    let notify = NotifySocket::bind(site.dir.path());
    let stall = site.dir.path().join("stall");
    let mut child = spawn(
        &binary("ferry-agent"),
        &["run", "--config", config.to_str().unwrap()],
        &notify,
        &stall,
    );
    let mut log = LogLines::of(&mut child);
    let agent = Proc(child);

    // The first message is READY=1, naming every listener.
    let ready = notify.recv();
    assert!(ready.contains(&"READY=1".to_owned()), "{ready:?}");
    let addrs = status_addresses(&ready);
    let what: Vec<&str> = addrs.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        what,
        ["admin", "influx_tcp", "influx_udp", "device_tcp_listen"]
    );
    let addr = |w: &str| addrs.iter().find(|(x, _)| x == w).unwrap().1;

    // Every listener accepts now, with no retry.
    let status = get(addr("admin"), "/status");
    assert!(status.starts_with("HTTP/1.0 200 OK\r\n"), "{status}");
    TcpStream::connect(addr("device_tcp_listen")).expect("device link accepts");
    // Timestamps of now: older than 30 days would be refused at ingest.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut tcp = TcpStream::connect(addr("influx_tcp")).expect("line protocol accepts");
    tcp.write_all(format!("temperature,device=d1 value=21.5 {now_s}\n").as_bytes())
        .unwrap();
    drop(tcp);
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(
            format!("temperature,device=d2 value=19.25 {now_s}\n").as_bytes(),
            addr("influx_udp"),
        )
        .unwrap();
    // Both readings committed: the journal writer runs behind READY=1 too.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = addr("admin");
    rt.block_on(ferry_tests::until(
        "both readings journaled",
        || async move {
            ferry_tests::http_get(admin, "/status")
                .await
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .is_some_and(|s| s["readings_in"] == 2)
        },
    ));

    // WATCHDOG=1 while the writer answers.
    let mut pings = 0;
    while pings < 2 {
        let m = notify.recv();
        assert!(!m.contains(&"READY=1".to_owned()), "READY=1 twice: {m:?}");
        pings += usize::from(m.contains(&"WATCHDOG=1".to_owned()));
    }

    watchdog_stops(&notify, &mut log, &stall, "journal writer");
    // Only the writer is stuck: the process and its admin endpoint live on,
    // which is why the watchdog is what must catch it.
    let status = get(admin, "/metrics");
    assert!(status.starts_with("HTTP/1.0 200 OK\r\n"), "{status}");
    agent.kill9();
}

fn collector_config(site: &Site) -> std::path::PathBuf {
    let path = site.dir.path().join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n[quic]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            site.data
        ),
    )
    .unwrap();
    path
}

#[test]
fn collector_is_ready_once_served_reloads_as_the_unit_does_and_says_when_it_stops() {
    let site = Site::new();
    let config = collector_config(&site);
    let notify = NotifySocket::bind(site.dir.path());
    let stall = site.dir.path().join("stall");
    let bin = binary("ferry-collector");
    let mut child = spawn(
        &bin,
        &["run", "--config", config.to_str().unwrap()],
        &notify,
        &stall,
    );
    let mut log = LogLines::of(&mut child);
    let mut collector = Proc(child);

    let ready = notify.recv();
    assert!(ready.contains(&"READY=1".to_owned()), "{ready:?}");
    let addrs = status_addresses(&ready);
    let what: Vec<&str> = addrs.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(what, ["quic", "http"]);
    let (quic, http) = (addrs[0].1, addrs[1].1);
    let health = get(http, "/healthz");
    assert!(health.starts_with("HTTP/1.0 200 OK\r\n"), "{health}");
    let taken = UdpSocket::bind(quic).expect_err("QUIC is bound");
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);

    // The unit's ExecReload, right after READY=1.
    let reload = Command::new(&bin)
        .args(["reload", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    log.wait_for("configuration reloaded");

    let mut pings = 0;
    while pings < 2 {
        pings += usize::from(notify.recv().contains(&"WATCHDOG=1".to_owned()));
    }

    // SIGTERM (systemctl stop): STOPPING=1, then a clean exit.
    let term = Command::new("kill")
        .args(["-TERM", &collector.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    loop {
        let m = notify.recv();
        if m.contains(&"STOPPING=1".to_owned()) {
            break;
        }
        assert_eq!(m, ["WATCHDOG=1"], "only pings before STOPPING=1");
    }
    let exit = collector.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}\n{}", log.seen.join("\n"));
}

#[test]
fn collector_watchdog_stops_with_its_store_writer() {
    let site = Site::new();
    let config = collector_config(&site);
    let notify = NotifySocket::bind(site.dir.path());
    let stall = site.dir.path().join("stall");
    let mut child = spawn(
        &binary("ferry-collector"),
        &["run", "--config", config.to_str().unwrap()],
        &notify,
        &stall,
    );
    let mut log = LogLines::of(&mut child);
    let collector = Proc(child);
    let ready = notify.recv();
    assert!(ready.contains(&"READY=1".to_owned()), "{ready:?}");
    let http = status_addresses(&ready)[1].1;
    assert_eq!(notify.recv(), ["WATCHDOG=1"]);
    watchdog_stops(&notify, &mut log, &stall, "store writer");
    let health = get(http, "/healthz");
    assert!(health.starts_with("HTTP/1.0 200 OK\r\n"), "{health}");
    collector.kill9();
}
