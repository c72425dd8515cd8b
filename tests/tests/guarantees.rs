//! What the agent guarantees on the paths operators walk (issue 14), with
//! the real binaries:
//!
//! - a second `run` on a live configuration, and `status`/`buffer inspect`
//!   whose admin address does not answer, leave the data directory byte for
//!   byte as it was (nothing is quarantined, nothing written); an idle agent
//!   runs no journal write transaction; the CLI exits quietly on a closed
//!   pipe;
//! - one producer's bad timestamps cost no other reading: they are refused
//!   at ingest, per line, and counted (health kind 8);
//! - a filesystem that really fills up (a small tmpfs) pauses the sources,
//!   loses nothing uncounted, and the agent resumes by itself;
//! - datagrams the kernel drops on the agent's UDP socket are counted and
//!   reach the collector (health kind 9).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_collector::admin::{Admin, DropRow};
use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get, run_agent, stored, until};
use tokio::io::AsyncWriteExt;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every file under `dir`, by relative path, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs the agent binary; `(exit code, stdout, stderr)`.
fn agent_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary("ferry-agent"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A sample of the agent's `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> Option<u64> {
    let text = http_get(admin, "/metrics").await?;
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}

fn sigterm(agent: &mut Proc) {
    let status = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    agent.0.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_and_offline_commands_leave_the_data_directory_unchanged() {
    let site = Site::new();
    let dir = site.dir.path();
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\nhealth_interval = \"100ms\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    ));
    let collector = site.start_collector().await;
    let mut agent = Proc::spawn(
        &binary("ferry-agent"),
        &["run", "--config", config.to_str().unwrap()],
        &dir.join("agent.log"),
    );
    until("agent up", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;
    // Some data, stored; then the agent is idle and connected.
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    let t0 = now_ms() - 60_000;
    let text: String = (0..100)
        .map(|i| format!("flow,device=m1 litres={i} {}\n", t0 + i))
        .collect();
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    until("stored", || async {
        stored(&site.data, "flow_litres")
            .await
            .is_some_and(|s| s.iter().map(|x| x.1.len()).sum::<usize>() == 100)
    })
    .await;
    // Idle: the readings and their received count (health, every 100 ms)
    // are stored, and the batch carrying the count is acked.
    until("the received count at the collector", || async {
        let Ok(admin) = Admin::connect(&site.data).await else {
            return false;
        };
        admin.drops().await.is_ok_and(|d| {
            d.ledgers
                .iter()
                .any(|l| l.agent == "gw" && l.received == 100 && l.in_transit == 0)
        })
    })
    .await;
    until("acked and idle", || async {
        let Some(body) = http_get(admin, "/status").await else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["outbox_batches"] == 0 && v["pending_readings"] == 0 && v["connected"] == true
    })
    .await;

    // Idle: control messages to the journal writer (status, buffer: the
    // same path as the shipper's fetch poll) begin no write transaction.
    let before = metric(admin, "ferry_agent_journal_transactions_total")
        .await
        .unwrap();
    for _ in 0..50 {
        assert!(http_get(admin, "/status").await.is_some());
        assert!(http_get(admin, "/buffer").await.is_some());
    }
    let after = metric(admin, "ferry_agent_journal_transactions_total")
        .await
        .unwrap();
    assert_eq!(after, before, "an idle agent begins no journal transaction");

    // The idle agent writes nothing: the data directory is stable.
    let data = site.bundle.join("data");
    let live = snapshot(&data);
    assert!(live.contains_key(Path::new("journal.redb")));

    // A second `run` on the live configuration: refused, nothing moved.
    let (code, _, err) = agent_cli(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("another ferry-agent is running on this journal"),
        "{err}"
    );
    assert_eq!(
        snapshot(&data),
        live,
        "a second run changed the data directory"
    );

    // A copy of the configuration whose admin address answers nothing.
    let text = std::fs::read_to_string(&config).unwrap();
    let silent = free_tcp_port();
    let other = site.bundle.join("other.toml");
    std::fs::write(
        &other,
        text.replace(
            &format!("listen = \"{admin}\""),
            &format!("listen = \"{silent}\""),
        ),
    )
    .unwrap();
    let other = other.to_str().unwrap();
    for args in [
        &["status", "--config", other][..],
        &["buffer", "inspect", "--config", other][..],
    ] {
        let (code, _, err) = agent_cli(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains("another ferry-agent is running on this journal"),
            "{args:?}: {err}"
        );
        assert_eq!(snapshot(&data), live, "{args:?} changed the data directory");
    }
    assert!(http_get(admin, "/status").await.is_some(), "still running");

    // Stopped cleanly: `status` and `buffer inspect` read the journal
    // read-only.
    sigterm(&mut agent);
    let stopped = snapshot(&data);
    let (code, out, err) = agent_cli(&["status", "--config", other]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("agent            stopped (read from the journal)\n"),
        "{out}"
    );
    assert!(
        out.contains("waiting          0 readings in 0 batches"),
        "{out}"
    );
    let (code, out, err) = agent_cli(&["buffer", "inspect", "--config", other]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.ends_with("(nothing waiting)\n"), "{out}");
    assert_eq!(snapshot(&data), stopped, "offline commands wrote");

    // A closed pipe (`ferry-agent status | head -0`): quiet success.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(binary("ferry-agent"))
        .args(["status", "--config", other])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    // Killed (not closed cleanly): a read-only open does not repair; the
    // command says so and changes nothing.
    let mut agent = Proc::spawn(
        &binary("ferry-agent"),
        &["run", "--config", config.to_str().unwrap()],
        &dir.join("agent2.log"),
    );
    until("agent up again", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;
    let _ = agent.0.kill();
    agent.0.wait().unwrap();
    let killed = snapshot(&data);
    let (code, out, err) = agent_cli(&["status", "--config", other]);
    assert!(
        (code == Some(0) && out.contains("stopped (read from the journal)"))
            || (code == Some(1) && err.contains("not closed cleanly")),
        "{code:?} {out} {err}"
    );
    assert_eq!(snapshot(&data), killed, "status after a kill wrote");
    let corrupt: Vec<_> = killed
        .keys()
        .filter(|p| p.to_string_lossy().contains("corrupt"))
        .collect();
    assert!(corrupt.is_empty(), "nothing was quarantined: {corrupt:?}");
    collector.stop().await;
}

/// The collector's drop rows for agent `gw`.
async fn drop_rows(site: &Site) -> Vec<DropRow> {
    let Ok(admin) = Admin::connect(&site.data).await else {
        return Vec::new();
    };
    admin
        .drops()
        .await
        .map(|d| d.drops)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.agent == "gw")
        .collect()
}

/// The collector's ledger for agent `gw`.
async fn gw_ledger(site: &Site) -> Option<ferry_collector::admin::Ledger> {
    let admin = Admin::connect(&site.data).await.ok()?;
    admin
        .drops()
        .await
        .ok()?
        .ledgers
        .into_iter()
        .find(|l| l.agent == "gw")
}

fn dropped(rows: &[DropRow], device: &str, reason: &str) -> u64 {
    rows.iter()
        .filter(|r| r.device == device && r.reason == reason)
        .map(|r| r.readings)
        .sum()
}

async fn stored_per_device(site: &Site, selector: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (series, readings) in stored(&site.data, selector).await.unwrap_or_default() {
        let device = series
            .split("device=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_owned();
        *out.entry(device).or_default() += readings.len();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_producers_bad_timestamps_cost_no_other_readings() {
    const N: usize = 2_000;
    const BAD: usize = 5;
    let site = Site::new();
    let dir = site.dir.path();
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\nhealth_interval = \"100ms\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [journal]\nbatch_max_readings = 4096\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    ));
    let collector = site.start_collector().await;
    let _agent = run_agent(&config, admin, &dir.join("agent.log")).await;
    let t0 = now_ms() - 600_000;
    let year_ahead = now_ms() + 365 * 86_400_000;
    // Four good producers and one whose clock is wrong for a few lines,
    // all at once, into the same journal commits.
    let mut producers = Vec::new();
    for p in 1..=5 {
        producers.push(tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
            let mut text = String::new();
            for i in 0..N {
                let ts = if p == 5 && i % (N / BAD) == 7 {
                    year_ahead + i as i64
                } else {
                    t0 + i as i64
                };
                text.push_str(&format!("flow,device=p{p} litres={i} {ts}\n"));
            }
            tcp.write_all(text.as_bytes()).await.unwrap();
            tcp.shutdown().await.unwrap();
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let want: BTreeMap<String, usize> = (1..=5)
        .map(|p| (format!("p{p}"), if p == 5 { N - BAD } else { N }))
        .collect();
    until("every good reading stored", || async {
        stored_per_device(&site, "flow_litres").await == want
    })
    .await;
    until("the bad ones counted, at the collector", || async {
        dropped(&drop_rows(&site).await, "p5", "rejected_timestamp") == BAD as u64
    })
    .await;
    let rows = drop_rows(&site).await;
    let lost: u64 = rows
        .iter()
        .filter(|r| ferry_proto::health::is_dropped(kind_of(&r.reason)))
        .map(|r| r.readings)
        .sum();
    assert_eq!(lost, BAD as u64, "nothing else dropped: {rows:?}");
    assert_eq!(
        metric(admin, "ferry_agent_readings_rejected_timestamp_total").await,
        Some(BAD as u64)
    );
    // The source's own counters are on /metrics.
    let text = http_get(admin, "/metrics").await.unwrap();
    assert!(
        text.contains("ferry_agent_influx_connections_total{source=\"influx\"} 5\n"),
        "{text}"
    );
    collector.stop().await;
}

/// The health kind of a drop row's reason name.
fn kind_of(reason: &str) -> u16 {
    (0..64)
        .find(|k| ferry_proto::health::name(*k) == Some(reason))
        .unwrap_or(u16::MAX)
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the filesystem refuses (ENOSPC).
fn fill(path: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "ENOSPC expected: {e}");
            break;
        }
    }
    // What is left is less than a chunk: fill it byte by byte.
    let small = [0u8; 512];
    while f.write_all(&small).and_then(|()| f.sync_all()).is_ok() {}
}

/// The agent of the full-disk and damaged-journal tests: data in `data/`,
/// health every 100 ms, fast reconnects, batches of 500, one Influx TCP
/// listener (`precision = "ms"`) and its admin endpoint; `extra` is
/// appended to its configuration.
struct FlowAgent {
    config: PathBuf,
    admin: SocketAddr,
    influx: SocketAddr,
    /// The first reading's time, ms: ten minutes ago.
    t0: i64,
}

impl FlowAgent {
    fn configure(site: &Site, extra: &str) -> Self {
        let (influx, admin) = (free_tcp_port(), free_tcp_port());
        let config = site.agent_config(&format!(
            "\n[agent]\ndata_dir = \"data\"\nhealth_interval = \"100ms\"\n\n\
             [admin]\nlisten = \"{admin}\"\n\n\
             [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
             [journal]\nbatch_max_readings = 500\n\n\
             [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n{extra}"
        ));
        Self {
            config,
            admin,
            influx,
            t0: now_ms() - 600_000,
        }
    }

    /// Sends readings `from..from + n` of `device` (`flow_litres`, one ms
    /// apart from `t0`) over one TCP connection, and closes it.
    fn send(
        &self,
        device: &'static str,
        from: usize,
        n: usize,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (influx, t0) = (self.influx, self.t0);
        async move {
            let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
            let text: String = (from..from + n)
                .map(|i| format!("flow,device={device} litres={i} {}\n", t0 + i as i64))
                .collect();
            tcp.write_all(text.as_bytes()).await.unwrap();
            tcp.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_pauses_sources_and_the_agent_resumes_by_itself() {
    const N: usize = 3_000;
    const DATAGRAMS: usize = 20;
    let site = Site::new();
    let dir = site.dir.path();
    let data = site.bundle.join("data");
    let _tmpfs = Tmpfs::mount(&data, "24m");
    let udp = free_tcp_port();
    let flow = FlowAgent::configure(
        &site,
        &format!("\n[[influx_udp]]\nname = \"udp\"\nlisten = \"{udp}\"\nprecision = \"ms\"\n"),
    );
    let (config, admin, t0) = (&flow.config, flow.admin, flow.t0);
    let collector = site.start_collector().await;
    let _agent = run_agent(config, admin, &dir.join("agent.log")).await;
    let send = |device: &'static str, from: usize| flow.send(device, from, N);
    send("m1", 0).await;
    until("the first readings stored", || async {
        stored_per_device(&site, "flow_litres").await.get("m1") == Some(&N)
    })
    .await;

    // The filesystem fills up (another writer takes every byte).
    let filler = data.join("filler");
    fill(&filler);
    let producer = tokio::spawn(send("m2", N));
    until("the agent shows the full disk", || async {
        metric(admin, "ferry_agent_disk_full").await == Some(1)
    })
    .await;
    let status = agent_cli(&["status", "--config", config.to_str().unwrap()]).1;
    assert!(status.contains("disk             FULL"), "{status}");
    // UDP cannot wait: what it loses is counted.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..DATAGRAMS {
        sock.send_to(
            format!("flow,device=u1 litres={i} {}\n", t0 + i as i64).as_bytes(),
            udp,
        )
        .unwrap();
    }
    // Every datagram reached the agent's source (received or refused).
    until("datagrams handled", || async {
        metric_labelled(admin, "ferry_agent_influx_bytes_total", "udp")
            .await
            .is_some_and(|b| b > 0)
            && metric_labelled(admin, "ferry_agent_influx_dropped_readings_total", "udp")
                .await
                .unwrap_or(0)
                + metric_labelled(admin, "ferry_agent_influx_readings_accepted_total", "udp")
                    .await
                    .unwrap_or(0)
                == DATAGRAMS as u64
    })
    .await;
    assert_eq!(
        stored_per_device(&site, "flow_litres").await.get("m2"),
        None,
        "nothing of m2 could be journaled"
    );

    // Space returns: the agent resumes without a restart, and the TCP
    // producer's readings, which waited, are all stored.
    std::fs::remove_file(&filler).unwrap();
    producer.await.unwrap();
    until("m2 stored", || async {
        stored_per_device(&site, "flow_litres").await.get("m2") == Some(&N)
    })
    .await;
    until("disk no longer full", || async {
        metric(admin, "ferry_agent_disk_full").await == Some(0)
    })
    .await;
    // UDP: every datagram stored or counted dropped, at the collector.
    until("the UDP ledger closes", || async {
        let stored = stored_per_device(&site, "flow_litres")
            .await
            .get("u1")
            .copied()
            .unwrap_or(0) as u64;
        let dropped = dropped(&drop_rows(&site).await, "u1", "queue_full");
        stored + dropped == DATAGRAMS as u64
    })
    .await;
    // The ledger closes: what the sources handed over is stored (the UDP
    // readings lost while the disk was full never reached the journal:
    // counted as queue_full, not received).
    let udp_lost = dropped(&drop_rows(&site).await, "u1", "queue_full");
    let received = (2 * N + DATAGRAMS) as u64 - udp_lost;
    until("the ledger closes", || async {
        gw_ledger(&site)
            .await
            .is_some_and(|l| l.received == received && l.stored == received && l.in_transit == 0)
    })
    .await;
    eprintln!(
        "disk full: {udp_lost} UDP readings counted lost; ledger {:?}",
        gw_ledger(&site).await
    );
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(log.contains("DISK FULL"), "{log}");
    assert!(log.contains("disk space is back"), "{log}");
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    assert!(
        errors <= 3,
        "errors are rate-limited: {errors} lines\n{log}"
    );
    collector.stop().await;
}

/// A sample of the agent's `/metrics` with `source="<source>"`.
async fn metric_labelled(admin: SocketAddr, name: &str, source: &str) -> Option<u64> {
    let text = http_get(admin, "/metrics").await?;
    let prefix = format!("{name}{{source=\"{source}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_the_kernel_drops_are_counted_and_reach_the_collector() {
    const DATAGRAMS: usize = 4_000;
    let site = Site::new();
    let dir = site.dir.path();
    let (udp, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\nhealth_interval = \"100ms\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [[influx_udp]]\nname = \"udp\"\nlisten = \"{udp}\"\nprecision = \"ms\"\n"
    ));
    let collector = site.start_collector().await;
    let agent = run_agent(&config, admin, &dir.join("agent.log")).await;
    // The agent is stopped (SIGSTOP) while a burst arrives: its socket's
    // receive buffer holds a few hundred datagrams, the kernel drops the
    // rest.
    let pid = agent.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = now_ms() - 600_000;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..DATAGRAMS {
        let line = format!("flow,device=u1 litres={i} {}\n", t0 + i as i64);
        sock.send_to(line.as_bytes(), udp).unwrap();
    }
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    until(
        "every datagram stored or counted dropped by the kernel",
        || async {
            let stored = stored_per_device(&site, "flow_litres")
                .await
                .get("u1")
                .copied()
                .unwrap_or(0) as u64;
            let kernel = dropped(&drop_rows(&site).await, "udp", "dropped_kernel");
            stored + kernel == DATAGRAMS as u64 && kernel > 0
        },
    )
    .await;
    let kernel = dropped(&drop_rows(&site).await, "udp", "dropped_kernel");
    assert_eq!(
        metric(admin, "ferry_agent_udp_kernel_drops_total").await,
        Some(kernel)
    );
    drop(agent);
    collector.stop().await;
}

/// `order = "newest_first"` with a backlog of batches far beyond what the
/// collector's dedupe state may hold (`limits.max_dedupe_ranges` = 2 here,
/// 200 batches): every reading is stored exactly once, none answered
/// "duplicate" and deleted unstored (a collector whose dedupe state is full
/// refuses as transient, `DEDUPE_FULL`, and the agent then ships oldest
/// first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_first_with_a_backlog_beyond_the_dedupe_state_loses_nothing() {
    const N: usize = 20_000;
    let site = Site::new();
    let dir = site.dir.path();
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\norder = \"newest_first\"\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\
         max_in_flight = 4096\n\n\
         [journal]\nbatch_max_readings = 100\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    ));
    let _agent = run_agent(&config, admin, &dir.join("agent.log")).await;
    // The collector is down: a backlog of 200 batches builds up.
    let t0 = now_ms() - 600_000;
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    let text: String = (0..N)
        .map(|i| format!("flow,device=m1 litres={i} {}\n", t0 + i as i64))
        .collect();
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    until("the backlog sealed", || async {
        let Some(body) = http_get(admin, "/status").await else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["outbox_readings"] == N as u64
    })
    .await;
    let collector = site
        .start_collector_with(|c| c.limits.max_dedupe_ranges = 2)
        .await;
    until("every reading stored", || async {
        stored_per_device(&site, "flow_litres").await.get("m1") == Some(&N)
    })
    .await;
    until("the outbox empty", || async {
        let Some(body) = http_get(admin, "/status").await else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["outbox_readings"] == 0
    })
    .await;
    // Exactly once: each value once.
    let series = stored(&site.data, "flow_litres").await.unwrap();
    let mut values: Vec<i64> = series[0].1.iter().map(|(_, v)| *v as i64).collect();
    values.sort_unstable();
    assert_eq!(values, (0..N as i64).collect::<Vec<_>>());
    assert_eq!(
        metric(admin, "ferry_agent_batches_duplicate_total").await,
        Some(0),
        "no batch was answered duplicate"
    );
    collector.stop().await;
}

/// Offsets of the batches stored in a journal file, in either form: zstd
/// (`[codec 1]` followed by zstd's frame magic) or plain (`[codec 0]`
/// followed by an encoded batch of the journal's epoch, read from its
/// ledger file beside it).
fn batch_offsets(journal: &Path, bytes: &[u8]) -> Vec<usize> {
    let mut ledger = journal.as_os_str().to_owned();
    ledger.push(".ledger");
    let ledger = std::fs::read_to_string(ledger).unwrap();
    let epoch: u64 = ledger
        .lines()
        .find_map(|l| l.strip_prefix("epoch "))
        .unwrap()
        .parse()
        .unwrap();
    let (mut zstd, mut plain) = (Vec::new(), Vec::new());
    for i in 0..bytes.len().saturating_sub(5) {
        if bytes[i..i + 5] == [1, 0x28, 0xb5, 0x2f, 0xfd] {
            zstd.push(i);
        } else if bytes[i..i + 2] == [0, 0x98]
            && ferry_proto::codec::from_bytes_prefix::<ferry_proto::batch::Batch>(
                "Batch",
                &bytes[i + 1..],
            )
            .is_ok_and(|(b, _)| b.epoch == epoch)
        {
            plain.push(i);
        }
    }
    eprintln!("batches in the journal: zstd at {zstd:?}, plain at {plain:?}");
    let mut all = [zstd, plain].concat();
    all.sort_unstable();
    all
}

/// An agent whose journal holds `N` readings of `m1` (none shipped: the
/// collector is not up) is killed, its journal damaged by `damage`, and
/// started again with the collector up: the journal is quarantined, what is
/// readable in it is stored, what is not is counted as `corrupt_journal`
/// at the collector, and readings sent after the restart are stored.
async fn a_damaged_journal_is_salvaged(damage: fn(&Path), whole_batches_lost: fn(u64) -> bool) {
    const N: usize = 5_000;
    const AFTER: usize = 1_000;
    let site = Site::new();
    let dir = site.dir.path();
    let flow = FlowAgent::configure(&site, "");
    let (config, admin) = (&flow.config, flow.admin);
    let agent = run_agent(config, admin, &dir.join("agent.log")).await;
    let send = |device: &'static str, from: usize, n: usize| flow.send(device, from, n);
    // In parts, each sealed before the next is sent: a batch is sealed from
    // whole commits, and one write of N lines would make a few large ones.
    const PART: usize = 500;
    for part in 0..N / PART {
        send("m1", part * PART, PART).await;
        until("the part sealed in the outbox", || async {
            metric(admin, "ferry_agent_outbox_readings").await == Some(((part + 1) * PART) as u64)
        })
        .await;
    }
    // The journal's ledger file says it holds them, and their received
    // counts (journaled every health_interval).
    let ledger_file = site.bundle.join("data/journal.redb.ledger");
    until(
        "the ledger file holds every reading and its received count",
        || async {
            let ledger = std::fs::read_to_string(&ledger_file).unwrap_or_default();
            ledger.contains(&format!("\nheld {N}\n"))
                && ledger.lines().any(|l| {
                    l.strip_prefix("health ")
                        .is_some_and(|h| h.split(' ').any(|c| c == format!("7:{N}")))
                })
        },
    )
    .await;
    agent.kill9();
    let journal = site.bundle.join("data/journal.redb");
    damage(&journal);

    let collector = site.start_collector().await;
    let _agent = run_agent(config, admin, &dir.join("agent2.log")).await;
    send("m2", 0, AFTER).await;
    until("the readings sent after the restart stored", || async {
        stored_per_device(&site, "flow_litres").await.get("m2") == Some(&AFTER)
    })
    .await;
    until(
        "every reading of the old journal stored or counted",
        || async {
            let stored = stored_per_device(&site, "flow_litres")
                .await
                .get("m1")
                .copied()
                .unwrap_or(0) as u64;
            stored + dropped(&drop_rows(&site).await, "journal", "corrupt_journal") == N as u64
        },
    )
    .await;
    let stored = stored_per_device(&site, "flow_litres").await;
    let rows = drop_rows(&site).await;
    let lost = dropped(&rows, "journal", "corrupt_journal");
    eprintln!(
        "salvaged: {:?} stored, {lost} counted as corrupt_journal",
        stored.get("m1")
    );
    assert!(lost > 0, "the damage cost readings: {rows:?}");
    // Batches are lost whole (every one holds PART readings).
    assert_eq!(lost % PART as u64, 0, "{rows:?}");
    assert!(
        whole_batches_lost(lost / PART as u64),
        "{lost} lost: {rows:?}"
    );
    assert!(
        stored.get("m1").is_some_and(|&m1| m1 > 0),
        "some were salvaged"
    );
    let other: u64 = rows
        .iter()
        .filter(|r| r.reason != "corrupt_journal")
        .filter(|r| ferry_proto::health::is_dropped(kind_of(&r.reason)))
        .map(|r| r.readings)
        .sum();
    assert_eq!(other, 0, "nothing else dropped: {rows:?}");
    // The ledger closes as the collector reports it: the received counts
    // the lost batches carried were counted again, so received = every
    // reading sent = stored + counted dropped.
    until("the ledger closes", || async {
        gw_ledger(&site)
            .await
            .is_some_and(|l| l.received == (N + AFTER) as u64 && l.in_transit == 0)
    })
    .await;
    let ledger = gw_ledger(&site).await.unwrap();
    eprintln!("ledger after the salvage: {ledger:?}");
    assert_eq!(ledger.stored + ledger.dropped, (N + AFTER) as u64);
    assert_eq!((ledger.dropped, ledger.refused), (lost, 0));
    let log = std::fs::read_to_string(dir.join("agent2.log")).unwrap();
    assert!(log.contains("salvaged the quarantined journal"), "{log}");
    let aside = std::fs::read_dir(site.bundle.join("data"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("journal.redb.corrupt-") && !name.ends_with(".ledger")
        })
        .count();
    assert_eq!(aside, 1);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_journal_is_salvaged_and_the_rest_counted() {
    a_damaged_journal_is_salvaged(
        |journal| {
            // Cut in the middle of the stored batches: those before the cut are
            // whole, the one cut and those after it are gone.
            let bytes = std::fs::read(journal).unwrap();
            let at = batch_offsets(journal, &bytes);
            assert!(at.len() >= 4, "batches in the journal: {at:?}");
            let cut = at[at.len() / 2] + 10;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(journal)
                .unwrap();
            f.set_len(cut as u64).unwrap();
        },
        |batches| batches >= 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_journal_is_salvaged_and_the_rest_counted() {
    a_damaged_journal_is_salvaged(
        |journal| {
            // One bit inside one stored batch, and one in the file's header
            // (redb's magic number): the file is not a journal any more.
            let mut bytes = std::fs::read(journal).unwrap();
            let at = batch_offsets(journal, &bytes);
            assert!(at.len() >= 4, "batches in the journal: {at:?}");
            // (A batch of 500 readings here is some 60 bytes.)
            let original = bytes[at[1]..at[1] + 40].to_vec();
            for &a in &at {
                // Every copy redb left of that batch.
                if bytes.get(a..a + 40) == Some(&original[..]) {
                    bytes[a + 20] ^= 0x10;
                }
            }
            bytes[0] ^= 0x01;
            std::fs::write(journal, bytes).unwrap();
        },
        |batches| batches == 1,
    )
    .await;
}
