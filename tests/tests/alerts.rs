//! Alerts end to end with the real binaries: readings enter a real agent
//! (Influx line protocol over TCP), reach a real `ferry-collector run`, a
//! threshold rule fires and then resolves, and a webhook receiver gets
//! exactly one firing and one resolved event, although the collector is
//! killed with SIGKILL in between.

use ferry_collector::admin::Admin;
use ferry_collector::fanout::AlertParams;
use ferry_tests::{Proc, Site, WebhookReceiver, binary, free_tcp_port, http_get, stored, until};
use tokio::io::AsyncWriteExt;

const S: i64 = 1_000_000_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sends `(second, bpm)` readings of patient p1 to the agent, stamped
/// `t0_ms + second`, and waits until the collector stored `total` of them.
async fn send(
    site: &Site,
    influx: std::net::SocketAddr,
    t0_ms: i64,
    readings: &[(i64, f64)],
    total: usize,
) {
    let mut tcp = tokio::net::TcpStream::connect(influx).await.unwrap();
    let mut text = String::new();
    for (s, v) in readings {
        text.push_str(&format!(
            "heart_rate,patient=p1 bpm={v} {}\n",
            t0_ms + s * 1000
        ));
    }
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    until("readings stored", || async {
        stored(&site.data, "heart_rate_bpm")
            .await
            .is_some_and(|s| s.iter().map(|x| x.1.len()).sum::<usize>() == total)
    })
    .await;
}

/// Waits until a collector other than the one at `old` answers on the
/// address in `collector.http`; returns that address. Until then nothing
/// may open the store from outside (the collector would find it locked).
async fn collector_up(site: &Site, old: Option<String>) -> String {
    let file = site.data.join(ferry_collector::admin::ADDR_FILE);
    for _ in 0..12_000 {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let text = text.trim().to_owned();
            if Some(&text) != old.as_ref()
                && let Ok(sock) = text.parse()
                && http_get(sock, "/healthz").await.is_some()
            {
                return text;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never happened: collector HTTP up");
}

async fn cursor(site: &Site, name: &str) -> Option<u64> {
    let admin = Admin::connect(&site.data).await.ok()?;
    let subs = admin.subscribers().await.ok()?;
    subs.into_iter().find(|s| s.name == name).map(|s| s.cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_fires_and_resolves_once_through_an_agent_and_a_collector_kill() {
    let site = Site::new();
    let dir = site.dir.path();
    let hook = WebhookReceiver::start().await;
    let collector_toml = site.data.join("collector.toml");
    std::fs::write(
        &collector_toml,
        format!(
            r#"data_dir = "."
[quic]
listen = "{quic}"
[http]
listen = "127.0.0.1:0"

[[processor.threshold]]
name = "heart-rate"
match = 'heart_rate_bpm{{patient="p1"}}'
above = 120
below = 40
for = "30s"
hysteresis = 5

[[sink.webhook]]
name = "pager"
url = "http://{hook}/alerts"
backoff_min = "20ms"
backoff_max = "200ms"
"#,
            quic = site.quic,
            hook = hook.addr
        ),
    )
    .unwrap();
    let (influx, admin) = (free_tcp_port(), free_tcp_port());
    let agent_toml = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [[influx_tcp]]\nlisten = \"{influx}\"\nprecision = \"ms\"\n"
    ));
    let collector_bin = binary("ferry-collector");
    let collector_args = ["run", "--config", collector_toml.to_str().unwrap()];
    let collector = Proc::spawn(&collector_bin, &collector_args, &dir.join("collector1.log"));
    let first = collector_up(&site, None).await;
    let agent = Proc::spawn(
        &binary("ferry-agent"),
        &["run", "--config", agent_toml.to_str().unwrap()],
        &dir.join("agent.log"),
    );
    until("agent admin endpoint up", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;

    let t0_ms = now_ms() - 600_000;
    let t0 = t0_ms * 1_000_000;
    // 10 s normal, then the breach starts at second 10 ...
    let mut r: Vec<(i64, f64)> = (0..10).map(|s| (s, 80.0)).collect();
    r.push((10, 130.0));
    send(&site, influx, t0_ms, &r, 11).await;
    // ... and lasts to second 49: the rule fires (at second 40 when the
    // readings arrive in order).
    let r: Vec<(i64, f64)> = (11..50).map(|s| (s, 130.0)).collect();
    send(&site, influx, t0_ms, &r, 50).await;
    until("the webhook got the firing event", || async {
        !hook.received().is_empty()
    })
    .await;
    until("the webhook's cursor committed", || async {
        cursor(&site, "sink/pager").await == Some(1)
    })
    .await;

    // SIGKILL, and a new collector on the same data directory.
    collector.kill9();
    let collector = Proc::spawn(&collector_bin, &collector_args, &dir.join("collector2.log"));
    collector_up(&site, Some(first)).await;
    let r: Vec<(i64, f64)> = (50..55).map(|s| (s, 130.0)).collect();
    send(&site, influx, t0_ms, &r, 55).await;
    // Inside the hysteresis band (118 > 115): still firing; then normal.
    let r = [(55, 118.0), (56, 118.0), (57, 80.0), (58, 80.0)];
    send(&site, influx, t0_ms, &r, 59).await;
    until("the webhook got the resolved event", || async {
        hook.received().len() >= 2
    })
    .await;
    until("the webhook's cursor committed", || async {
        cursor(&site, "sink/pager").await == Some(2)
    })
    .await;

    let got = hook.received();
    assert_eq!(
        got.len(),
        2,
        "exactly one firing and one resolved: {got:#?}"
    );
    assert_eq!(
        (got[0]["id"].as_u64(), got[0]["state"].as_str()),
        (Some(1), Some("firing"))
    );
    assert_eq!(
        (got[1]["id"].as_u64(), got[1]["state"].as_str()),
        (Some(2), Some("resolved"))
    );
    for g in &got {
        assert_eq!(g["rule"], "threshold/heart-rate");
        assert_eq!(g["subject"], r#"heart_rate_bpm{agent="gw",patient="p1"}"#);
        assert_eq!(g["since_ns"].as_i64(), Some(t0 + 10 * S));
    }
    assert!(got[0]["ts_ns"].as_i64().unwrap() >= t0 + 40 * S);
    assert!(got[1]["ts_ns"].as_i64().unwrap() >= t0 + 57 * S);
    let stored_alerts = Admin::connect(&site.data)
        .await
        .unwrap()
        .alerts(&AlertParams::default())
        .await
        .unwrap();
    assert_eq!(stored_alerts.len(), 2);
    agent.kill9();
    collector.kill9();
}
