//! The real agent offline with a small disk budget under `drop_oldest`:
//! once the collector is back, for every device, readings stored plus
//! readings the agent reported dropped equal readings sent.

use std::collections::BTreeMap;

use ferry_tests::{Site, free_tcp_port, http_get, run_agent, stored, until};
use tokio::io::AsyncWriteExt;

const DEVICES: usize = 4;
const ROUNDS: usize = 20;
const PER_ROUND: usize = 2_000;

/// A well-mixed hash of `i` (SplitMix64's finaliser).
fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_accounts_for_every_reading_per_device() {
    let site = Site::new();
    let (dir, data) = (site.dir.path(), &site.data);
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"100ms\"\n\n\
         [journal]\nbudget = \"64 KiB\"\npolicy = \"drop_oldest\"\nbatch_max_readings = 1000\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    ));
    let agent = run_agent(&config, admin, &dir.join("agent.log")).await;

    // Offline: far more than 64 KiB of readings, even zstd-compressed as
    // the journal stores batches.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    let mut i = 0i64;
    for _ in 0..ROUNDS {
        let mut text = String::new();
        for _ in 0..PER_ROUND {
            let d = format!("d{}", i as usize % DEVICES);
            // Pseudo-random values (six decimals) compress badly: the
            // budget fills fast.
            let x = splitmix64(i as u64);
            text.push_str(&format!(
                "load,device={d} v={}.{:06} {}\n",
                (x >> 40) % 1000,
                (x >> 8) % 1_000_000,
                t0 + i
            ));
            *sent.entry(d).or_default() += 1;
            i += 1;
        }
        tcp.write_all(text.as_bytes()).await.unwrap();
    }
    tcp.shutdown().await.unwrap();
    let total: usize = sent.values().sum();
    until("agent took every line and dropped some", || async {
        let Some(body) = http_get(admin, "/status").await else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let held = v["outbox_readings"].as_u64().unwrap() + v["pending_readings"].as_u64().unwrap();
        let dropped: u64 = v["dropped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[2].as_u64().unwrap())
            .sum();
        dropped > 0 && held + dropped == total as u64
    })
    .await;

    // Online: everything left arrives, and so do the drop counts.
    let collector = site.start_collector().await;
    let handle = collector.handle.clone().unwrap();
    let accounted = || async {
        let stored_by_dev: BTreeMap<String, usize> = stored(data, "load_v")
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(s, r)| {
                (
                    s.split("device=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                        .to_string(),
                    r.len(),
                )
            })
            .collect();
        let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
        for (_, source, kind, n) in handle.store().health().unwrap() {
            if kind == ferry_proto::health::DROPPED_JOURNAL_FULL {
                *dropped.entry(source).or_default() += n as usize;
            }
        }
        (stored_by_dev, dropped)
    };
    until("stored + dropped = sent for every device", || async {
        let (s, d) = accounted().await;
        sent.iter().all(|(dev, n)| {
            s.get(dev).copied().unwrap_or(0) + d.get(dev).copied().unwrap_or(0) == *n
        })
    })
    .await;
    let (s, d) = accounted().await;
    for (dev, n) in &sent {
        assert!(
            d.get(dev).copied().unwrap_or(0) > 0,
            "{dev} lost nothing? stored {s:?}"
        );
        assert_eq!(s[dev] + d[dev], *n, "{dev}");
    }
    agent.kill9();
    drop(handle);
    collector.stop().await;
}
