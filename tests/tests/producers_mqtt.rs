//! MQTT into the real agent binary, through Debian's Mosquitto, from
//! paho-mqtt QoS 1 publishers (`scripts/producers.sh` installs both): the
//! agent is killed with SIGKILL while the broker is delivering to it, and
//! the broker is restarted while it is delivering the queue to the
//! restarted agent; every published reading is stored exactly once. And
//! malformed payloads are counted by reason, reach the collector, and cost
//! no good reading.
//!
//! The publishers' own hop is QoS 1 too, so a publisher that resends a
//! message the broker had already taken (after a broker restart) makes the
//! broker forward it twice: that duplicate is the publisher's, not the
//! agent's. The publishers therefore have every message acknowledged by
//! the broker before the broker is restarted; what the restart interrupts
//! is the broker's delivery to the agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::producers::{ApiCollector, mosquitto, producers_python};
use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get, reserve_port, until};

/// Readings published, in four publisher runs of `N / 4`.
const N: usize = 16_000;

const PUBLISHER: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
port, start, count, t0 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-%d" % start, clean_session=True)
c.max_inflight_messages_set(100)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
sent = [c.publish("sensors/dev%d" % (i % 4), json.dumps({"v": i * 0.5, "ts": t0 + i}), qos=1)
        for i in range(start, start + count)]
for info in sent:
    info.wait_for_publish(timeout=120)
missing = sum(1 for info in sent if not info.is_published())
c.loop_stop()
c.disconnect()
if missing:
    sys.exit("%d messages not acknowledged by the broker" % missing)
print(count)
"#;

/// On a failure, the logs of the agents and brokers are copied to
/// `$TMPDIR/ferry-producers-mqtt-logs` (the test's directory is removed).
struct KeepLogs(std::path::PathBuf);

impl Drop for KeepLogs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let keep = std::env::temp_dir().join("ferry-producers-mqtt-logs");
        let _ = std::fs::create_dir_all(&keep);
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
            }
        }
        eprintln!("logs kept in {}", keep.display());
    }
}

/// A Mosquitto broker of one test: its configuration and database in
/// `<dir>/broker`, on a reserved port; started (and restarted) with a log in
/// `<dir>`.
struct Broker {
    mosquitto: PathBuf,
    conf: PathBuf,
    port: SocketAddr,
    logs: PathBuf,
}

impl Broker {
    fn configure(dir: &Path) -> Self {
        let mosquitto = mosquitto();
        let port = reserve_port();
        let broker_dir = dir.join("broker");
        std::fs::create_dir_all(&broker_dir).unwrap();
        let conf = broker_config(&broker_dir, port);
        Self {
            mosquitto,
            conf,
            port,
            logs: dir.to_path_buf(),
        }
    }

    /// Starts it, logging to `<dir>/<log>`, and waits until it accepts
    /// connections.
    async fn start(&self, log: &str) -> Proc {
        let broker = Proc::spawn(
            &self.mosquitto,
            &["-c", self.conf.to_str().unwrap()],
            &self.logs.join(log),
        );
        until(&format!("broker up ({log})"), || broker_up(self.port)).await;
        broker
    }
}

fn broker_config(dir: &Path, port: SocketAddr) -> PathBuf {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            // `user root`: a broker started as root would otherwise run as
            // `mosquitto`, which cannot write its database into the test's
            // private directory (a broker started by another user stays
            // that user).
            "listener {} 127.0.0.1\nuser root\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\npersistence_file mosquitto.db\n\
             max_queued_messages 0\n\
             log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\
             log_type information\nlog_type subscribe\n",
            port.port(),
            dir.display()
        ),
    )
    .unwrap();
    conf
}

async fn broker_up(port: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(port).await.is_ok()
}

/// Runs a publisher of readings `start..start + count` to completion.
fn publish(port: SocketAddr, t0_ms: i64, start: usize, count: usize) -> std::process::Child {
    Command::new(producers_python())
        .args(["-c", PUBLISHER])
        .args([
            port.port().to_string(),
            start.to_string(),
            count.to_string(),
            t0_ms.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python")
}

fn finished(child: std::process::Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn terminate(mut broker: Proc) {
    let pid = broker.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    broker.0.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_agent_and_a_broker_restart_store_every_reading_once() {
    producers_python();
    let site = Site::new();
    let dir = site.dir.path();
    let _logs = KeepLogs(dir.to_path_buf());
    let collector = ApiCollector::start(&site).await;
    let admin = free_tcp_port();
    let mq = Broker::configure(dir);
    let broker_port = mq.port;
    let broker = mq.start("broker1.log").await;

    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [[mqtt]]\nname = \"sensors\"\nbroker = \"{broker_port}\"\nclient_id = \"ferry-test-gw\"\n\
         topics = [\"sensors/#\"]\nformat = \"json\"\nmeasurement = \"stream\"\n\
         json_timestamp = \"ts\"\nprecision = \"ms\"\n"
    ));
    let agent_bin = binary("ferry-agent");
    let args = ["run", "--config", config.to_str().unwrap()];
    let agent = Proc::spawn(&agent_bin, &args, &dir.join("agent1.log"));
    until("agent up", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;
    // The agent's session exists before anything is published: the broker
    // queues for it from the first message on.
    until("agent subscribed", || async {
        std::fs::read_to_string(dir.join("broker1.log"))
            .is_ok_and(|l| l.contains("ferry-test-gw 1 sensors/#"))
    })
    .await;

    // 1. Two publishers; the agent is killed while it is receiving.
    let q = N / 4;
    // An hour ago (the collector takes the last 30 days).
    let t0_ms = ferry_collector::now_ns() / 1_000_000 - 3_600_000;
    let (p1, p2) = (
        publish(broker_port, t0_ms, 0, q),
        publish(broker_port, t0_ms, q, q),
    );
    until("some readings stored", || async {
        collector.count("stream_v").await >= N / 16
    })
    .await;
    agent.kill9();
    finished(p1);
    finished(p2);

    // 2. The agent back; the broker restarted while it delivers the queue.
    let agent = Proc::spawn(&agent_bin, &args, &dir.join("agent2.log"));
    let before = collector.count("stream_v").await;
    until("the agent receiving again", || async {
        collector.count("stream_v").await > before
    })
    .await;
    terminate(broker);
    let broker = mq.start("broker2.log").await;

    // 3. More publishers after the restart.
    let (p3, p4) = (
        publish(broker_port, t0_ms, 2 * q, q),
        publish(broker_port, t0_ms, 3 * q, q),
    );
    finished(p3);
    finished(p4);

    until("every reading stored", || async {
        let n = collector.count("stream_v").await;
        if n < N {
            eprint!("\rstored {n} of {N}");
        }
        n >= N
    })
    .await;
    until("agent outbox empty", || async {
        let Some(body) = http_get(admin, "/status").await else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["outbox_readings"].as_u64() == Some(0) && v["pending_readings"].as_u64() == Some(0)
    })
    .await;
    let series = collector.raw("stream_v").await.unwrap();
    assert_eq!(series.len(), 4, "one series per topic");
    let mut all: Vec<(i64, f64)> = series.into_iter().flat_map(|s| s.readings).collect();
    all.sort_by_key(|r| r.0);
    let want: Vec<(i64, f64)> = (0..N)
        .map(|i| ((t0_ms + i as i64) * 1_000_000, i as f64 * 0.5))
        .collect();
    // On a failure, which readings were stored twice or not at all.
    let mut seen = vec![0u32; N];
    for (ts, _) in &all {
        let i = (ts / 1_000_000 - t0_ms) as usize;
        if let Some(s) = seen.get_mut(i) {
            *s += 1;
        }
    }
    let ranges = |want: u32| -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for (i, &n) in seen.iter().enumerate() {
            if (want == 0 && n == 0) || (want > 1 && n > 1) {
                match out.last_mut() {
                    Some(r) if r.1 + 1 == i => r.1 = i,
                    _ => out.push((i, i)),
                }
            }
        }
        out
    };
    assert_eq!(
        all.len(),
        N,
        "stored exactly once; twice or more: {:?}; never: {:?}",
        ranges(2),
        ranges(0)
    );
    assert_eq!(all, want);
    agent.kill9();
    terminate(broker);
    collector.running.stop().await;
}

const PUBLISH_LIST: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
port, messages = int(sys.argv[1]), json.loads(sys.argv[2])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-list", clean_session=True)
c.connect("127.0.0.1", port)
c.loop_start()
sent = [c.publish(topic, payload, qos=1) for topic, payload in messages]
for info in sent:
    info.wait_for_publish(timeout=60)
c.loop_stop()
c.disconnect()
if not all(info.is_published() for info in sent):
    sys.exit("not every message was acknowledged by the broker")
"#;

/// Malformed payloads among good ones: each is counted by reason on the
/// agent's `/metrics` and reaches the collector as `rejected_input` for the
/// source, the good readings are stored, and nothing is redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_by_reason_and_cost_no_good_reading() {
    producers_python();
    let site = Site::new();
    let dir = site.dir.path();
    let _logs = KeepLogs(dir.to_path_buf());
    let collector = ApiCollector::start(&site).await;
    let admin = free_tcp_port();
    let mq = Broker::configure(dir);
    let broker_port = mq.port;
    let broker = mq.start("broker.log").await;
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [[mqtt]]\nname = \"sensors\"\nbroker = \"{broker_port}\"\nclient_id = \"ferry-test-bad\"\n\
         topics = [\"sensors/#\"]\nformat = \"json\"\nmeasurement = \"stream\"\n\
         json_timestamp = \"ts\"\nprecision = \"ms\"\n"
    ));
    let args = ["run", "--config", config.to_str().unwrap()];
    let agent = Proc::spawn(&binary("ferry-agent"), &args, &dir.join("agent.log"));
    until("agent subscribed", || async {
        std::fs::read_to_string(dir.join("broker.log"))
            .is_ok_and(|l| l.contains("ferry-test-bad 1 sensors/#"))
    })
    .await;

    let t0_ms = ferry_collector::now_ns() / 1_000_000 - 60_000;
    let good = |v: f64, i: i64| serde_json::json!({"v": v, "ts": t0_ms + i}).to_string();
    let messages = serde_json::json!([
        ["sensors/a", good(1.5, 0)],
        ["sensors/a", "not json"],
        ["sensors/a", "[1, 2]"],
        ["sensors/a", r#"{"ts": 5, "state": "on"}"#],
        ["sensors/a", r#"{"v": 2.5}"#],
        ["sensors/a", good(3.5, 1)],
    ]);
    let out = Command::new(producers_python())
        .args(["-c", PUBLISH_LIST])
        .arg(broker_port.port().to_string())
        .arg(messages.to_string())
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let metric = |body: &str, reason: &str| -> Option<u64> {
        let name =
            format!("ferry_agent_mqtt_malformed_total{{source=\"sensors\",reason=\"{reason}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    until("the agent counted the four bad payloads", || async {
        http_get(admin, "/metrics").await.is_some_and(|m| {
            ["json", "json_field", "json_timestamp"]
                .iter()
                .map(|r| metric(&m, r).unwrap_or(0))
                .sum::<u64>()
                == 4
        })
    })
    .await;
    let m = http_get(admin, "/metrics").await.unwrap();
    let counts: Vec<(&str, Option<u64>)> = ["json", "json_field", "json_timestamp", "number"]
        .iter()
        .map(|r| (*r, metric(&m, r)))
        .collect();
    assert_eq!(
        counts,
        [
            ("json", Some(2)),
            ("json_field", Some(1)),
            ("json_timestamp", Some(1)),
            ("number", Some(0))
        ],
        "{m}"
    );

    // The good readings are stored; the collector sees the four as
    // rejected input of the source.
    until("both good readings stored", || async {
        collector.count("stream_v").await == 2
    })
    .await;
    let series = collector.raw("stream_v").await.unwrap();
    let readings: Vec<(i64, f64)> = series.into_iter().flat_map(|s| s.readings).collect();
    assert_eq!(
        readings,
        [(t0_ms * 1_000_000, 1.5), ((t0_ms + 1) * 1_000_000, 3.5)]
    );
    until("the collector has the source's rejected input", || async {
        ferry_tests::http_get_with(collector.http, "/api/v1/health", Some(&collector.token))
            .await
            .is_some_and(|b| {
                let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
                v.as_array().is_some_and(|rows| {
                    rows.iter().any(|r| {
                        r["source"] == "sensors"
                            && r["reason"] == "rejected_input"
                            && r["total"] == 4
                    })
                })
            })
    })
    .await;
    agent.kill9();
    terminate(broker);
    collector.running.stop().await;
}
