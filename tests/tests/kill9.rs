//! `kill -9` of the real agent binary, between journal commit and shipping
//! and in the middle of shipping: the collector ends up with every reading
//! the agent had accepted, exactly once.

use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get, stored, until};
use tokio::io::AsyncWriteExt;

const N: usize = 20_000;

fn agent_config(influx: std::net::SocketAddr, admin: std::net::SocketAddr) -> String {
    format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\nmax_in_flight = 65536\n\n\
         [journal]\nbatch_max_readings = 500\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    )
}

/// Readings the agent holds in its journal (batched or not), from /status.
async fn journaled(admin: std::net::SocketAddr) -> Option<u64> {
    let body = http_get(admin, "/status").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v["outbox_readings"].as_u64()? + v["pending_readings"].as_u64()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_and_while_shipping_loses_and_doubles_nothing() {
    let site = Site::new();
    let (dir, data) = (site.dir.path(), &site.data);
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&agent_config(influx, admin));
    let agent_bin = binary("ferry-agent");
    let args = ["run", "--config", config.to_str().unwrap()];

    // 1. The collector is down; the agent journals N readings.
    let agent = Proc::spawn(&agent_bin, &args, &dir.join("agent1.log"));
    until("agent admin endpoint up", || async {
        journaled(admin).await.is_some()
    })
    .await;
    // The agent re-executed itself (same pid) with malloc's per-thread
    // caches off (agent/src/memory.rs).
    let environ = std::fs::read(format!("/proc/{}/environ", agent.0.id())).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|v| v == b"GLIBC_TUNABLES=glibc.malloc.tcache_count=0"),
        "the running agent has its thread caches off"
    );
    // ... and runs without libm.so (its one use, `pow`, is linked in:
    // agent/src/main.rs), against glibc itself.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", agent.0.id())).unwrap();
    let libraries: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|name| name.contains(".so"))
        .collect();
    assert!(libraries.contains("libc.so.6"), "{libraries:?}");
    assert!(!libraries.contains("libm.so.6"), "{libraries:?}");
    let now_ms = ferry_proto_now_ms() - 3_600_000;
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    let mut text = String::new();
    for i in 0..N {
        text.push_str(&format!(
            "power,device=m{} watts={}.{} {}\n",
            i % 10,
            i % 97,
            i % 10,
            now_ms + i as i64
        ));
    }
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    until("agent journaled every reading", || async {
        journaled(admin).await == Some(N as u64)
    })
    .await;

    // 2. kill -9 between journal commit and shipping.
    agent.kill9();

    // 3. Collector up; agent back; kill -9 again once shipping is under way.
    let collector = site.start_collector().await;
    let agent = Proc::spawn(&agent_bin, &args, &dir.join("agent2.log"));
    until("some readings stored", || async {
        stored(data, "power_watts")
            .await
            .is_some_and(|s| s.iter().map(|x| x.1.len()).sum::<usize>() > 0)
    })
    .await;
    agent.kill9();

    // 4. Restarted for good: everything arrives, once.
    let agent = Proc::spawn(&agent_bin, &args, &dir.join("agent3.log"));
    until("all readings stored", || async {
        stored(data, "power_watts")
            .await
            .is_some_and(|s| s.iter().map(|x| x.1.len()).sum::<usize>() >= N)
    })
    .await;
    until("agent outbox empty", || async {
        journaled(admin).await == Some(0)
    })
    .await;
    let series = stored(data, "power_watts").await.unwrap();
    assert_eq!(series.len(), 10);
    let mut all: Vec<(i64, f64)> = series.into_iter().flat_map(|s| s.1).collect();
    all.sort_by_key(|r| r.0);
    assert_eq!(all.len(), N, "stored exactly once");
    for (i, (ts, v)) in all.iter().enumerate() {
        assert_eq!(*ts, (now_ms + i as i64) * 1_000_000);
        assert_eq!(*v, format!("{}.{}", i % 97, i % 10).parse::<f64>().unwrap());
    }
    agent.kill9();
    collector.stop().await;
}

fn ferry_proto_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
