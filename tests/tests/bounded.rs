//! The real agent under load and abuse (issue 15): its memory stays within
//! its budget however many distinct series producers send (series that do
//! not fit in its caches are parsed uncached, and past the budget the
//! connections wait: no reading is lost for it), and idle or slow
//! connections never lock a new producer out.

use std::net::SocketAddr;

use ferry_tests::{Site, free_tcp_port, http_get, run_agent, until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A counter or gauge from the agent's `/metrics`, summed over its labels.
async fn metric(admin: SocketAddr, name: &str) -> Option<u64> {
    let body = http_get(admin, "/metrics").await?;
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ')?;
        let bare = key.split('{').next()?;
        if bare == name {
            *found.get_or_insert(0) += value.parse::<f64>().ok()? as u64;
        }
    }
    found
}

/// Resident set size of `pid`: now and its peak (`VmRSS`, `VmHWM`), bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("status field")
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Raises this process's open-file limit to its hard limit (the agent it
/// starts inherits it): thousands of connections need thousands of
/// descriptors on both ends.
fn raise_nofile(at_least: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= at_least,
        "this test needs {at_least} open files; the hard limit is {}",
        lim.rlim_cur
    );
}

const CONNECTIONS: usize = 8;
const SERIES_PER_CONNECTION: usize = 65_536;
/// The journal's page cache, a bound of its own (`[journal] cache`): it
/// fills as the journal grows, which it does here, since every reading is
/// journaled.
const JOURNAL_CACHE: u64 = 1 << 20;
/// What the agent needs beyond its journal cache and memory budget
/// (agent/src/limits.rs, `RESERVE_BYTES`).
const RESERVE: u64 = 20 << 20;
/// The resident size the defaults are sized for (agent/src/limits.rs,
/// `AGENT_TARGET_BYTES`: the default budget is what is left of it after the
/// default 4 MiB journal cache and the reserve).
const AGENT_TARGET: u64 = 32 << 20;

/// The agent's memory settings in this test, and the bound its RSS peak
/// must stay under.
enum Memory {
    /// `memory_budget` and a 1 MiB journal cache (this test's default, a
    /// 4 MiB budget; `FERRY_TEST_MEMORY_BUDGET=<bytes>` measures others):
    /// the peak must stay within the RSS at start, the budget, the journal
    /// cache and the reserve (a debug build starts at ~15 MiB, against ~7.5
    /// for the `edge` build, so its start is counted apart from the reserve).
    Budget(u64),
    /// `FERRY_TEST_MEMORY_BUDGET=default`: the agent's defaults (no
    /// `memory_budget`, the default journal cache), which are sized for a
    /// 32 MiB agent: the peak must stay under 32 MiB, the binary and runtime
    /// included. Meant for the `edge` build (`FERRY_TEST_AGENT_BIN`).
    Defaults,
}

impl Memory {
    fn from_env() -> Memory {
        match std::env::var("FERRY_TEST_MEMORY_BUDGET") {
            Ok(v) if v == "default" => Memory::Defaults,
            Ok(v) => {
                Memory::Budget(v.parse().unwrap_or_else(|_| {
                    panic!("FERRY_TEST_MEMORY_BUDGET={v}: bytes, or \"default\"")
                }))
            }
            Err(_) => Memory::Budget(4 << 20),
        }
    }

    /// The agent.toml lines for it.
    fn config(&self) -> String {
        match self {
            Memory::Budget(budget) => {
                format!("memory_budget = {budget}\n\n[journal]\ncache = {JOURNAL_CACHE}\n")
            }
            Memory::Defaults => String::new(),
        }
    }

    /// The bound on the RSS peak for an agent that started at `baseline`,
    /// and how it is made up.
    fn bound(&self, baseline: u64) -> (u64, String) {
        match self {
            Memory::Budget(budget) => (
                baseline + budget + JOURNAL_CACHE + RESERVE,
                format!(
                    "at start {:.1} MiB + memory budget {:.1} MiB + journal cache {:.1} MiB + reserve {:.1} MiB",
                    mib(baseline),
                    mib(*budget),
                    mib(JOURNAL_CACHE),
                    mib(RESERVE)
                ),
            ),
            Memory::Defaults => (
                AGENT_TARGET,
                format!(
                    "the {:.0} MiB the defaults are sized for (default budget {:.0} MiB, journal cache 4 MiB, reserve {:.0} MiB)",
                    mib(AGENT_TARGET),
                    mib(AGENT_TARGET - (4 << 20) - RESERVE),
                    mib(RESERVE)
                ),
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_series_stay_within_the_memory_budget_and_every_reading_is_stored() {
    let site = Site::new();
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let memory = Memory::from_env();
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n{}\n\
         [admin]\nlisten = \"{admin}\"\n\n[[influx_tcp]]\nlisten = \"{influx}\"\n",
        memory.config()
    ));
    let collector = site.start_collector().await;
    let agent = run_agent(&config, admin, &site.dir.path().join("agent.log")).await;
    let pid = agent.0.id();
    let (baseline, _) = rss(pid);

    // Eight producers at once, each with 65,536 series of its own.
    let mut producers = Vec::new();
    for c in 0..CONNECTIONS {
        producers.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(influx).await.unwrap();
            let mut text = String::with_capacity(1 << 20);
            for i in 0..SERIES_PER_CONNECTION {
                text.push_str(&format!(
                    "flood,device=c{c},key=k{i:05}_with_some_length_to_it v={i}\n"
                ));
                if text.len() >= 1 << 20 {
                    tcp.write_all(text.as_bytes()).await.unwrap();
                    text.clear();
                }
            }
            tcp.write_all(text.as_bytes()).await.unwrap();
            tcp.shutdown().await.unwrap();
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let sent = (CONNECTIONS * SERIES_PER_CONNECTION) as u64;

    // Every reading is stored (or refused by the collector, counted there):
    // the series the caches had no room for were parsed uncached.
    let handle = collector.handle.clone().unwrap();
    let ledger = || {
        let stored: u64 = handle
            .store()
            .agents()
            .unwrap()
            .iter()
            .map(|a| a.readings + a.refused)
            .sum();
        let refused: u64 = handle
            .store()
            .health()
            .unwrap()
            .iter()
            .filter(|(_, _, kind, _)| *kind == ferry_proto::health::DROPPED_MEMORY_BUDGET)
            .map(|(_, _, _, n)| n)
            .sum();
        (stored, refused)
    };
    until("stored = sent", || async { ledger().0 == sent }).await;
    let (stored, refused) = ledger();
    let (now, peak) = rss(pid);
    let uncached = metric(admin, "ferry_agent_memory_uncached_lines_total")
        .await
        .unwrap();
    let evictions = metric(admin, "ferry_agent_memory_evictions_total")
        .await
        .unwrap();
    let waits = metric(admin, "ferry_agent_memory_waits_total")
        .await
        .unwrap();
    let (bound, made_of) = memory.bound(baseline);
    println!(
        "{CONNECTIONS} connections x {SERIES_PER_CONNECTION} distinct series: agent RSS peak {:.1} MiB \
         (at start {:.1} MiB, now {:.1} MiB; bound {:.1} MiB: {made_of}); {stored} readings stored, \
         {uncached} lines parsed uncached, {evictions} cache evictions, {waits} waits for room (backpressure)",
        mib(peak),
        mib(baseline),
        mib(now),
        mib(bound),
    );
    assert!(
        uncached > 0,
        "the budget holds far fewer than {sent} series"
    );
    assert_eq!(refused, 0, "no reading refused for the budget");
    assert_eq!(
        metric(admin, "ferry_agent_memory_refused_readings_total").await,
        Some(0)
    );
    // What the agent grew by stays within the budget, its journal cache
    // and its fixed reserve for what is not charged to the budget (batches
    // sealed and sent, the runtime): the keys and readings of chunks
    // waiting for their commit and the batch being filled are charged, and
    // connections wait (their producers' sockets fill) while it is full.
    assert!(
        peak <= bound,
        "peak RSS {:.1} MiB, more than {:.1} MiB ({made_of})",
        mib(peak),
        mib(bound),
    );

    // Every connection closed: everything charged is handed back.
    until("the memory budget is handed back", || async {
        metric(admin, "ferry_agent_memory_used_bytes").await == Some(0)
    })
    .await;

    agent.kill9();
    drop(handle);
    collector.stop().await;
}

const IDLE: usize = 2_000;
const SLOW: usize = 64;
const MAX_CONNECTIONS: usize = 64;
const FRESH: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_do_not_lock_a_new_producer_out() {
    raise_nofile((IDLE + SLOW) as u64 + 512);
    let site = Site::new();
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    // Timeouts far beyond the test: what lets the producer in is the
    // limit closing the idlest connection, and the counts are exact.
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nmax_connections = {MAX_CONNECTIONS}\n\
         idle_timeout = \"1h\"\nline_timeout = \"1h\"\n"
    ));
    let collector = site.start_collector().await;
    let agent = run_agent(&config, admin, &site.dir.path().join("agent.log")).await;

    // 2,000 connections that never send, then 64 that send half a line
    // and stall.
    let mut held = Vec::with_capacity(IDLE + SLOW);
    for _ in 0..IDLE {
        held.push(TcpStream::connect(influx).await.unwrap());
    }
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(influx).await.unwrap();
        s.write_all(b"slow,device=loris v=").await.unwrap();
        held.push(s);
    }
    let opened = (IDLE + SLOW) as u64;
    until("the agent accepted every connection", || async {
        metric(admin, "ferry_agent_influx_connections_total").await == Some(opened)
    })
    .await;
    assert_eq!(
        metric(admin, "ferry_agent_influx_connections_evicted_total").await,
        Some(opened - MAX_CONNECTIONS as u64),
        "each connection past the limit closed the idlest"
    );

    // A new producer is served, and what it sent is stored.
    let mut producer = TcpStream::connect(influx).await.unwrap();
    let mut text = String::new();
    for i in 0..FRESH {
        text.push_str(&format!("fresh,device=p v={i}\n"));
    }
    producer.write_all(text.as_bytes()).await.unwrap();
    producer.shutdown().await.unwrap();
    let data = site.data.clone();
    until("the new producer's readings are stored", || async {
        ferry_tests::stored(&data, "fresh_v")
            .await
            .is_some_and(|s| s.iter().map(|(_, r)| r.len()).sum::<usize>() == FRESH)
    })
    .await;
    assert_eq!(
        metric(admin, "ferry_agent_influx_connections_evicted_total").await,
        Some(opened + 1 - MAX_CONNECTIONS as u64)
    );
    assert_eq!(
        metric(admin, "ferry_agent_influx_lines_accepted_total").await,
        Some(FRESH as u64)
    );
    drop(held);
    agent.kill9();
    collector.stop().await;
}

/// `ferry-collector drops -f json` on the site's collector: its drop rows
/// (agent `gw`, by reason, summed) and agent `gw`'s ledger.
fn collector_drops(site: &Site) -> (std::collections::BTreeMap<String, u64>, serde_json::Value) {
    let out = std::process::Command::new(ferry_tests::binary("ferry-collector"))
        .args(["drops", "-f", "json", "--data-dir"])
        .arg(&site.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut rows = std::collections::BTreeMap::new();
    for r in v["drops"].as_array().unwrap() {
        if r["agent"] == "gw" {
            *rows
                .entry(r["reason"].as_str().unwrap().to_owned())
                .or_default() += r["readings"].as_u64().unwrap();
        }
    }
    let ledger = v["ledgers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["agent"] == "gw")
        .cloned()
        .unwrap_or_default();
    (rows, ledger)
}

/// Connections a listener closes (the idlest at its limit: health kind 13;
/// a line stalled past `line_timeout`: kind 14) reach the collector, where
/// `ferry-collector drops` lists them for the source, and they are no loss:
/// the ledger closes with nothing dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_reach_the_collector_and_are_no_loss() {
    let site = Site::new();
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\nhealth_interval = \"100ms\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [[influx_tcp]]\nname = \"lp\"\nlisten = \"{influx}\"\nmax_connections = 1\n\
         idle_timeout = \"0s\"\nline_timeout = \"200ms\"\n"
    ));
    let collector = site.start_collector().await;
    let agent = run_agent(&config, admin, &site.dir.path().join("agent.log")).await;

    // A sends a line and stays (no idle timeout).
    let mut a = TcpStream::connect(influx).await.unwrap();
    a.write_all(b"closes,device=a v=1\n").await.unwrap();
    let data = site.data.clone();
    until("A's reading stored", || async {
        ferry_tests::stored(&data, "closes_v")
            .await
            .is_some_and(|s| s.iter().map(|(_, r)| r.len()).sum::<usize>() == 1)
    })
    .await;
    // B is one past the limit: A, the idlest, is closed for it. B then
    // stalls in the middle of a line and is closed after line_timeout.
    let mut b = TcpStream::connect(influx).await.unwrap();
    let mut buf = [0u8; 16];

    assert_eq!(a.read(&mut buf).await.unwrap_or(0), 0, "A is closed");
    b.write_all(b"closes,device=b v=").await.unwrap();
    assert_eq!(b.read(&mut buf).await.unwrap_or(0), 0, "B is closed");
    assert_eq!(
        metric(admin, "ferry_agent_influx_connections_evicted_total").await,
        Some(1)
    );
    assert_eq!(
        metric(admin, "ferry_agent_influx_line_timeouts_total").await,
        Some(1)
    );

    until("the closes at the collector", || async {
        let (rows, _) = collector_drops(&site);
        rows.get("connections_evicted") == Some(&1) && rows.get("connections_timed_out") == Some(&1)
    })
    .await;
    until("the ledger closes", || async {
        let (_, l) = collector_drops(&site);
        l["received"] == 1 && l["in_transit"] == 0
    })
    .await;
    let (rows, ledger) = collector_drops(&site);
    println!("drops: {rows:?}; ledger: {ledger}");
    assert_eq!(ledger["stored"], 1);
    assert_eq!(ledger["dropped"], 0, "closed connections are no loss");
    // Listed for the source.
    let out = std::process::Command::new(ferry_tests::binary("ferry-collector"))
        .args(["drops", "--data-dir"])
        .arg(&site.data)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains("lp") && l.contains("connections_evicted")),
        "{table}"
    );
    agent.kill9();
    collector.stop().await;
}
