//! The agent against a real collector on 127.0.0.1:0: QUIC with mTLS from an
//! enrolled bundle, real redb on both sides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_agent::config::Config;
use ferry_agent::journal::{SeriesReadings, Work};
use ferry_agent::run::{self, Running};
use ferry_collector::admin::Admin;
use ferry_collector::query::QueryParams;
use ferry_collector::{Collector, InitOptions};
use ferry_proto::batch::Reading;
use ferry_proto::series::SeriesKey;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct CollectorProc {
    quic: SocketAddr,
    handle: ferry_collector::Handle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ferry_collector::Error>>,
}

impl CollectorProc {
    async fn start(data: &Path, quic: SocketAddr) -> Self {
        let mut config = ferry_collector::Config::for_data_dir(data);
        config.quic.listen = quic;
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        let collector = Collector::bind(config).await.unwrap();
        let quic = collector.quic_addr();
        let handle = collector.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(collector.run(async {
            let _ = stopped.await;
        }));
        Self {
            quic,
            handle,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A temporary directory with a collector data directory (`init`) and the
/// bundle of agent `gw-1` (`enroll`): `(dir, data, bundle)`.
fn site() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("collector");
    ferry_collector::init(&InitOptions::new(&data)).unwrap();
    let bundle = dir.path().join("gw-1");
    ferry_collector::enroll(&data, "gw-1", &bundle).unwrap();
    (dir, data, bundle)
}

fn agent_config(bundle: &Path, data: &Path, collector: SocketAddr, extra: &str) -> Config {
    let text = format!(
        "[agent]\ndata_dir = {data:?}\ntick = \"5ms\"\nhealth_interval = \"20ms\"\n\
         [collector]\naddress = \"{collector}\"\nserver_name = \"localhost\"\nca = \"ca.crt\"\ncert = \"agent.crt\"\nkey = \"agent.key\"\nagent_id = \"gw-1\"\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{extra}",
    );
    Config::parse(&text, "agent.toml", bundle.to_path_buf()).unwrap()
}

fn readings(device: &str, n: usize, t0: i64) -> Work {
    Work {
        readings: vec![SeriesReadings {
            series: SeriesKey::new("temperature", [("device", device)]).unwrap(),
            origin: device.into(),
            readings: (0..n)
                .map(|i| Reading {
                    ts_ns: t0 + i as i64 * 1_000_000_000,
                    value: 20.0 + i as f64 * 0.25,
                })
                .collect(),
        }],
        ..Work::default()
    }
}

/// Two hours ago on a whole second: inside the collector's sanity window.
fn recent() -> i64 {
    let now = ferry_clock::now_ns();
    now - 7_200_000_000_000 - now.rem_euclid(1_000_000_000)
}

/// Waits until the collector holds `want` raw readings of `temperature`
/// series; returns them. Polls the store's query (a condition, not a
/// duration: the bound only turns a hang into a failure).
async fn wait_for_readings(data: &Path, want: usize) -> Vec<(String, Vec<(i64, f64)>)> {
    wait_for(data, "temperature", want).await
}

/// As [`wait_for_readings`], for the series matching `selector`.
async fn wait_for(data: &Path, selector: &str, want: usize) -> Vec<(String, Vec<(i64, f64)>)> {
    for _ in 0..6000 {
        // The server may not have published its address yet.
        let Ok(admin) = Admin::connect(data).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let params = QueryParams {
            selector: Some(selector.into()),
            from: Some("0".into()),
            to: Some("4000000000000000000".into()),
            step: None,
            kind: Some("raw".into()),
        };
        let Ok(res) = admin.query(&params).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let got: usize = res.iter().map(|s| s.readings.len()).sum();
        if got >= want {
            return res.into_iter().map(|s| (s.series, s.readings)).collect();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the collector never held {want} readings");
}

async fn agent_waits_for_acks(agent: &Running, readings: u64) {
    for _ in 0..6000 {
        if agent.metrics.readings_out.get() >= readings
            || agent.metrics.batches_stored.get() > 0 && agent.metrics.outbox_batches.get() == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the agent never got its acks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_arrive_exactly_and_once() {
    let (dir, data, bundle) = site();
    let collector = CollectorProc::start(&data, "127.0.0.1:0".parse().unwrap()).await;
    let agent = run::start(agent_config(
        &bundle,
        &dir.path().join("agent"),
        collector.quic,
        "",
    ))
    .await
    .unwrap();
    let t0 = recent();
    agent.intake.submit(readings("a1", 100, t0)).await.unwrap();
    agent.intake.submit(readings("b2", 50, t0)).await.unwrap();
    let got = wait_for_readings(&data, 150).await;
    assert_eq!(got.len(), 2);
    for (series, rows) in &got {
        let n = if series.contains("a1") { 100 } else { 50 };
        let want: Vec<(i64, f64)> = (0..n)
            .map(|i| (t0 + i as i64 * 1_000_000_000, 20.0 + i as f64 * 0.25))
            .collect();
        assert_eq!(rows, &want, "{series}");
    }
    // The agent counts acknowledged readings (status, metrics) exactly.
    for _ in 0..6000 {
        if agent.metrics.readings_out.get() >= 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(agent.metrics.readings_out.get(), 150);
    // The periodic health records account for every reading received.
    let received = |origin: &str| -> u64 {
        collector
            .handle
            .store()
            .health()
            .unwrap()
            .iter()
            .filter(|(_, s, k, _)| s == origin && *k == ferry_proto::health::RECEIVED)
            .map(|(_, _, _, n)| n)
            .sum()
    };
    for _ in 0..6000 {
        if received("a1") + received("b2") >= 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((received("a1"), received("b2")), (100, 50));
    agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_then_up_everything_arrives_once() {
    let (dir, data, bundle) = site();
    // A port nobody serves yet, and nobody else will take.
    let port = ferry_tests::reserve_port();
    let agent_dir = dir.path().join("agent");
    let agent = run::start(agent_config(&bundle, &agent_dir, port, ""))
        .await
        .unwrap();
    let t0 = recent();
    for k in 0..20 {
        agent
            .intake
            .submit(readings("a1", 50, t0 + k * 50_000_000_000))
            .await
            .unwrap();
    }
    // Stopped while offline: everything stays in the journal.
    agent.stop().await;
    let agent = run::start(agent_config(&bundle, &agent_dir, port, ""))
        .await
        .unwrap();
    let collector = CollectorProc::start(&data, port).await;
    let got = wait_for_readings(&data, 1000).await;
    assert_eq!(got.iter().map(|(_, r)| r.len()).sum::<usize>(), 1000);
    agent_waits_for_acks(&agent, 1000).await;
    agent.stop().await;
    // Once more from the same journal: nothing is resent, nothing doubled.
    let agent = run::start(agent_config(&bundle, &agent_dir, collector.quic, ""))
        .await
        .unwrap();
    agent
        .intake
        .submit(readings("a1", 1, t0 - 1_000_000_000))
        .await
        .unwrap();
    let got = wait_for_readings(&data, 1001).await;
    let mut ts: Vec<i64> = got
        .iter()
        .flat_map(|(_, r)| r.iter().map(|x| x.0))
        .collect();
    let n = ts.len();
    ts.sort();
    ts.dedup();
    assert_eq!((n, ts.len()), (1001, 1001));
    agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_are_aggregated_and_shipped() {
    let (dir, data, bundle) = site();
    let collector = CollectorProc::start(&data, "127.0.0.1:0".parse().unwrap()).await;
    let rule =
        "[[aggregate]]\nmetric = \"temp*\"\nperiod = \"10s\"\nlateness = \"1h\"\nsketch = true\n";
    let mut config = agent_config(&bundle, &dir.path().join("agent"), collector.quic, rule);
    // The reading an hour ahead is this test's watermark: not refused at
    // ingest (`[agent] check_timestamps`).
    config.agent.check_timestamps = false;
    let agent = run::start(config).await.unwrap();
    // Half an hour ago, within the hour of lateness: three windows; then a
    // reading 1 h 30 s later moves the series' watermark past their close.
    let now = ferry_clock::now_ns();
    let t0 = now - 1_800_000_000_000 - now.rem_euclid(10_000_000_000);
    agent.intake.submit(readings("a1", 30, t0)).await.unwrap();
    let mut late = readings("a1", 1, t0 + 3_630_000_000_000);
    late.readings[0].readings[0].value = 99.0;
    agent.intake.submit(late).await.unwrap();
    let mut windows = Vec::new();
    for _ in 0..6000 {
        let Ok(admin) = Admin::connect(&data).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let res = admin
            .query(&QueryParams {
                selector: Some("temperature".into()),
                from: Some("0".into()),
                to: Some("4000000000000000000".into()),
                step: None,
                kind: Some("aggregates".into()),
            })
            .await
            .unwrap();
        windows = res.into_iter().flat_map(|s| s.windows).collect();
        if windows.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(windows.len(), 3);
    for (k, w) in windows.iter().enumerate() {
        let vals: Vec<f64> = (k * 10..k * 10 + 10)
            .map(|i| 20.0 + i as f64 * 0.25)
            .collect();
        assert_eq!(w.start_ns, t0 + k as i64 * 10_000_000_000);
        assert_eq!(w.count, 10);
        assert_eq!(w.sum, vals.iter().sum::<f64>());
        assert_eq!((w.min, w.max), (vals[0], vals[9]));
    }
    agent.stop().await;
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_protocol_in_collector_query_out() {
    use tokio::io::AsyncWriteExt;
    let (dir, data, bundle) = site();
    let collector = CollectorProc::start(&data, "127.0.0.1:0".parse().unwrap()).await;
    let source = "[[influx_tcp]]\nlisten = \"127.0.0.1:0\"\nprecision = \"s\"\n";
    let agent = run::start(agent_config(
        &bundle,
        &dir.path().join("agent"),
        collector.quic,
        source,
    ))
    .await
    .unwrap();
    let t0 = recent() / 1_000_000_000;
    let mut tcp = tokio::net::TcpStream::connect(agent.influx_tcp_addrs[0])
        .await
        .unwrap();
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!(
            "temperature,device=a1,room=lab\\ 1 value=2{i}.5,ok=t {}\n",
            t0 + i
        ));
    }
    text.push_str("temperature,device=a1 value=\"hot\" 1\n"); // a string field: rejected
    text.push_str(&format!("temperature,device=b2 value=-3i {t0}\n"));
    tcp.write_all(text.as_bytes()).await.unwrap();
    tcp.shutdown().await.unwrap();
    let got = wait_for(&data, "temperature_value", 11).await;
    let a1 = got
        .iter()
        .find(|(s, _)| s.contains("a1"))
        .expect("series of a1");
    assert_eq!(
        a1.0,
        r#"temperature_value{agent="gw-1",device="a1",room="lab 1"}"#
    );
    let want: Vec<(i64, f64)> = (0..10)
        .map(|i| ((t0 + i) * 1_000_000_000, 20.5 + i as f64))
        .collect();
    assert_eq!(a1.1, want);
    let b2 = got
        .iter()
        .find(|(s, _)| s.contains("b2"))
        .expect("series of b2");
    assert_eq!(b2.1, vec![(t0 * 1_000_000_000, -3.0)]);
    agent.stop().await;
    collector.stop().await;
}

/// A reading dated a year ahead among good ones from another device: the
/// agent journals it (validation at the edge is not this test's subject),
/// the collector stores the good readings and refuses that one, counted for
/// its device; the agent counts the refusal on its /metrics and does not
/// report it back, so the collector's ledger closes without counting it
/// twice. The agent says hello with its journal's epoch and publishes the
/// collector's terms from the Welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reading_costs_only_itself_and_the_ledger_closes() {
    let (dir, data, bundle) = site();
    let collector = CollectorProc::start(&data, "127.0.0.1:0".parse().unwrap()).await;
    let mut config = agent_config(&bundle, &dir.path().join("agent"), collector.quic, "");
    // The collector's refusal is the subject: no check at ingest.
    config.agent.check_timestamps = false;
    let agent = run::start(config).await.unwrap();
    let t0 = recent();
    let year = 365 * 86_400 * 1_000_000_000i64;
    let mut work = readings("d1", 5, t0);
    let mut bad = readings("d2", 3, t0);
    bad.readings[0].readings[1].ts_ns += year;
    work.readings.append(&mut bad.readings);
    agent.intake.submit(work).await.unwrap();
    wait_for_readings(&data, 7).await;
    agent_waits_for_acks(&agent, 8).await;
    for _ in 0..6000 {
        if agent
            .metrics
            .readings_refused
            .get(ferry_proto::session::reason::BAD_TIMESTAMP)
            > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = agent.metrics.render();
    assert!(
        text.contains("ferry_agent_readings_refused_total{reason=\"bad_timestamp\"} 1\n"),
        "{text}"
    );
    // The ledger as the collector reports it: 8 received = 7 stored + 1
    // refused (once the agent's received count arrived).
    let admin = Admin::connect(&data).await.unwrap();
    let mut ledger = None;
    for _ in 0..6000 {
        let drops = admin.drops().await.unwrap();
        if drops.ledgers.first().is_some_and(|l| l.received == 8) {
            ledger = Some(drops);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drops = ledger.expect("the agent reported what it received");
    let l = &drops.ledgers[0];
    assert_eq!(
        (l.received, l.stored, l.dropped, l.refused, l.in_transit),
        (8, 7, 0, 1, 0)
    );
    assert_eq!(drops.drops.len(), 1);
    assert_eq!(
        (
            drops.drops[0].device.as_str(),
            drops.drops[0].reason.as_str()
        ),
        ("d2", "bad_timestamp")
    );
    // Identity and terms.
    let view = admin.agents().await.unwrap().remove(0);
    assert_eq!(view.epoch, format!("{:016x}", agent.epoch));
    let terms = agent.collector_terms.borrow().clone().expect("a Welcome");
    let now = ferry_clock::now_ns();
    let (lo, hi) = terms.timestamp_window(now).unwrap();
    assert!(lo < t0 && t0 < hi && t0 + year > hi);
    assert_eq!(terms.welcome.idle_timeout_ms, 6_000);
    agent.stop().await;
    collector.stop().await;
}
