//! Fan-out end to end in one process: batches over real QUIC make a
//! threshold rule fire and resolve; the webhook receives exactly one
//! firing and one resolved event across a collector restart; reloads keep
//! unchanged rules' state and refuse bad files; a failing webhook
//! dead-letters without holding ingest.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use common::{Agent, Fixture, Receiver, Running, base_ns, series_batch, until};
use ferry_collector::Config;
use ferry_collector::fanout::{AlertParams, AlertState};
use ferry_proto::series::SeriesKey;
use ferry_proto::session::Ack;

const S: i64 = 1_000_000_000;

fn write_config(fx: &Fixture, body: &str) -> PathBuf {
    let path = fx.data.join("collector.toml");
    let text = format!(
        "data_dir = \".\"\n[quic]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n{body}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &Path) -> Config {
    Config::load(path).unwrap()
}

fn heart_rate(patient: &str) -> SeriesKey {
    SeriesKey::new("heart_rate_bpm", [("patient", patient)]).unwrap()
}

fn hr_rules(hook: std::net::SocketAddr) -> String {
    format!(
        r#"
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
backoff_min = "10ms"
backoff_max = "50ms"

[[sink.log]]
name = "log"
"#
    )
}

async fn sink_cursor(server: &Running, name: &str) -> u64 {
    server
        .admin()
        .subscribers()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .map_or(0, |s| s.cursor)
}

#[tokio::test]
async fn a_rule_fires_and_resolves_once_across_a_restart() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let hook = Receiver::start().await;
    let path = write_config(&fx, &hr_rules(hook.addr));
    let t0 = base_ns();

    let server = Running::start(load(&path)).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    // p1: 10 s normal, then 40 s at 130 bpm: fires at the 30th second of
    // the breach. p2 is out of range too but not selected.
    let mut values = vec![80.0; 10];
    values.extend([130.0; 40]);
    let b = series_batch(1, heart_rate("p1"), t0, &values);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(1));
    let b = series_batch(2, heart_rate("p2"), t0, &[300.0; 50]);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(2));
    until("the webhook got the firing event", || async {
        hook.received().len() == 1
    })
    .await;
    until("the webhook's cursor committed", || async {
        sink_cursor(&server, "sink/pager").await == 1
    })
    .await;
    let got = hook.received();
    assert_eq!(got[0]["id"], 1);
    assert_eq!(got[0]["state"], "firing");
    assert_eq!(got[0]["rule"], "threshold/heart-rate");
    assert_eq!(
        got[0]["subject"],
        r#"heart_rate_bpm{agent="gw-1",patient="p1"}"#
    );
    assert_eq!(got[0]["value"], 130.0);
    assert_eq!(got[0]["ts_ns"], t0 + 40 * S);
    assert_eq!(got[0]["since_ns"], t0 + 10 * S);
    drop(agent);
    server.stop().await;

    // Restarted: the rule's state (firing) comes back from the store.
    let server = Running::start(load(&path)).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    // Still high, then inside the hysteresis band (118), then normal.
    let mut values = vec![130.0; 5];
    values.extend([118.0, 118.0, 80.0, 80.0]);
    let b = series_batch(3, heart_rate("p1"), t0 + 50 * S, &values);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(3));
    until("the webhook got the resolved event", || async {
        hook.received().len() >= 2
    })
    .await;
    until("the webhook's cursor committed", || async {
        sink_cursor(&server, "sink/pager").await == 2
    })
    .await;
    let got = hook.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1]["id"], 2);
    assert_eq!(got[1]["state"], "resolved");
    assert_eq!(got[1]["ts_ns"], t0 + 57 * S);
    assert_eq!(got[1]["since_ns"], t0 + 10 * S);

    // Stored and queryable, with filters.
    let admin = server.admin();
    let all = admin.alerts(&AlertParams::default()).await.unwrap();
    let states: Vec<AlertState> = all.iter().map(|a| a.state).collect();
    assert_eq!(states, vec![AlertState::Firing, AlertState::Resolved]);
    let firing = admin
        .alerts(&AlertParams {
            state: Some("firing".into()),
            selector: Some(r#"heart_rate_bpm{patient="p1"}"#.into()),
            ..AlertParams::default()
        })
        .await
        .unwrap();
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0].id, 1);
    let none = admin
        .alerts(&AlertParams {
            selector: Some(r#"heart_rate_bpm{patient="p2"}"#.into()),
            ..AlertParams::default()
        })
        .await
        .unwrap();
    assert_eq!(none, vec![]);
    let late = admin
        .alerts(&AlertParams {
            from: Some((t0 + 41 * S).to_string()),
            ..AlertParams::default()
        })
        .await
        .unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].state, AlertState::Resolved);
    let err = admin
        .alerts(&AlertParams {
            state: Some("burning".into()),
            ..AlertParams::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"state "burning": expected firing"#),
        "{err}"
    );

    // Subscribers: everything handled, nothing skipped or dead.
    until("the log sink caught up", || async {
        sink_cursor(&server, "sink/log").await == 2
    })
    .await;
    let subs = admin.subscribers().await.unwrap();
    let summary: Vec<(String, u64, u64, u64, u64)> = subs
        .iter()
        .map(|s| (s.name.clone(), s.lag, s.handled, s.skipped, s.dead_letters))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("processors".into(), 0, 3, 0, 0),
            ("sink/log".into(), 0, 2, 0, 0),
            ("sink/pager".into(), 0, 2, 0, 0),
        ]
    );
    let metrics = common::http_get(server.http, "/metrics").await;
    for line in [
        r#"ferry_collector_alerts_total{rule="threshold/heart-rate",state="resolved"} 1"#,
        r#"ferry_collector_webhook_deliveries_total{sink="pager",outcome="delivered"} 1"#,
        r#"ferry_collector_fanout_lag{subscriber="sink/pager"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    drop(agent);
    server.stop().await;
    assert_eq!(hook.received().len(), 2);
}

#[tokio::test]
async fn reload_keeps_unchanged_rules_and_refuses_bad_files() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let hot = r#"
[[processor.threshold]]
name = "hot"
match = 'temp'
above = 30
for = "10s"
"#;
    let path = write_config(&fx, hot);
    let server = Running::start(load(&path)).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let key = SeriesKey::new("temp", [("room", "a")]).unwrap();
    let t0 = base_ns();
    // 6 s above 30: pending, not firing.
    let b = series_batch(1, key.clone(), t0, &[40.0; 6]);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(1));
    until("processed", || async {
        server
            .handle
            .bus()
            .record("processors")
            .is_some_and(|r| r.seq == 1)
    })
    .await;

    // A bad file is refused, naming the file, the line and the key.
    write_config(
        &fx,
        &format!("{hot}\n[[processor.anomaly]]\nname = \"z\"\nmatch = 'temp'\nalpah = 0.1\n"),
    );
    let err = server.handle.reload().await.unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("line 16"), "{err}");
    assert!(err.contains("unknown field `alpah`"), "{err}");
    assert!(err.contains("the running configuration stays"), "{err}");
    write_config(
        &fx,
        &format!("{hot}\n[[processor.rate]]\nname = \"r\"\nmatch = 'temp'\nwindow = \"soon\"\n"),
    );
    let err = server.handle.reload().await.unwrap_err().to_string();
    assert!(err.contains("window \"soon\""), "{err}");
    write_config(
        &fx,
        &format!("{hot}\n[[processor.threshold]]\nname = \"hot\"\nmatch = 'x'\nabove = 1\n"),
    );
    let err = server.handle.reload().await.unwrap_err().to_string();
    assert!(
        err.contains(r#"name "hot" is used by two processor rules"#),
        "{err}"
    );

    // A good one: "hot" unchanged keeps its `for` timer, "cold" is new.
    write_config(
        &fx,
        &format!("{hot}\n[[processor.threshold]]\nname = \"cold\"\nmatch = 'temp'\nbelow = 0\n"),
    );
    let report = server.handle.reload().await.unwrap();
    assert_eq!(report.rules, vec!["threshold/hot", "threshold/cold"]);
    // Through the CLI's path too (HTTP, loopback).
    let report = server.admin().reload().await.unwrap();
    assert_eq!(report.rules, vec!["threshold/hot", "threshold/cold"]);
    // 5 more seconds above 30: the breach reaches 10 s (t0 .. t0+10) only
    // if the timer started at t0 survived the reloads.
    let b = series_batch(2, key.clone(), t0 + 6 * S, &[40.0; 5]);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(2));
    until("the rule fired", || async {
        server
            .admin()
            .alerts(&AlertParams::default())
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    let a = &server
        .admin()
        .alerts(&AlertParams::default())
        .await
        .unwrap()[0];
    assert_eq!(
        (a.rule.as_str(), a.state),
        ("threshold/hot", AlertState::Firing)
    );
    assert_eq!((a.since_ns, a.ts_ns), (t0, t0 + 10 * S));
    let metrics = server.handle.metrics().render();
    assert!(
        metrics.contains(r#"ferry_collector_reloads_total{outcome="error"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ferry_collector_reloads_total{outcome="ok"} 2"#),
        "{metrics}"
    );
    drop(agent);
    server.stop().await;
}

#[tokio::test]
async fn a_failing_webhook_dead_letters_and_never_holds_ingest() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let hook = Receiver::start().await;
    hook.status.store(503, Ordering::SeqCst);
    let path = write_config(
        &fx,
        &format!(
            r#"
[[processor.threshold]]
name = "hot"
match = 'temp'
above = 30

[[sink.webhook]]
name = "down"
url = "http://{}/alerts"
max_attempts = 3
backoff_min = "5ms"
backoff_max = "10ms"
lag_budget = {{ max = 1000, policy = "skip" }}
"#,
            hook.addr
        ),
    );
    let server = Running::start(load(&path)).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let t0 = base_ns();
    let key = SeriesKey::new("temp", [("room", "a")]).unwrap();
    // Fires at once (no `for`), resolves, fires again: 3 events.
    let b = series_batch(1, key, t0, &[40.0, 20.0, 40.0]);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(1));
    until("three events dead-lettered", || async {
        server
            .admin()
            .subscribers()
            .await
            .unwrap()
            .iter()
            .any(|s| s.name == "sink/down" && s.dead_letters == 3 && s.lag == 0)
    })
    .await;
    // Each event was attempted max_attempts times.
    assert_eq!(hook.received().len(), 9);
    let metrics = server.handle.metrics().render();
    for line in [
        r#"ferry_collector_webhook_deliveries_total{sink="down",outcome="dead_letter"} 3"#,
        r#"ferry_collector_webhook_retries_total{sink="down"} 6"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    // A permanent refusal (4xx) is dead-lettered at the first attempt.
    hook.status.store(400, Ordering::SeqCst);
    let b = series_batch(
        2,
        SeriesKey::new("temp", [("room", "b")]).unwrap(),
        t0,
        &[40.0],
    );
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(2));
    until("the fourth event dead-lettered", || async {
        server
            .admin()
            .subscribers()
            .await
            .unwrap()
            .iter()
            .any(|s| s.name == "sink/down" && s.dead_letters == 4)
    })
    .await;
    assert_eq!(hook.received().len(), 10);
    drop(agent);
    server.stop().await;
}

#[tokio::test]
async fn a_stuck_sink_with_backpressure_holds_ingest_until_reconfigured_to_skip() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    // A webhook that accepts connections and never answers.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stuck.accept().await {
            held.push(s);
        }
    });
    let rules = |policy: &str| {
        format!(
            r#"
[[processor.threshold]]
name = "hot"
match = 'temp'
above = 30

[[sink.webhook]]
name = "stuck"
url = "http://{stuck_addr}/alerts"
timeout = "1h"
lag_budget = {{ max = 1, policy = "{policy}" }}
"#
        )
    };
    let path = write_config(&fx, &rules("backpressure"));
    let server = Running::start(load(&path)).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let t0 = base_ns();
    let key = SeriesKey::new("temp", [("room", "a")]).unwrap();
    // Three alert events (fire, resolve, fire); the sink is stuck on the
    // first: 3 behind, budget 1.
    let b = series_batch(1, key.clone(), t0, &[40.0, 20.0, 40.0]);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(1));
    let bus = server.handle.bus();
    until("the sink is 3 behind", || async {
        bus.views()
            .iter()
            .any(|v| v.name == "sink/stuck" && v.lag == 3)
    })
    .await;
    let sender = tokio::spawn(async move {
        let b = series_batch(2, key, t0 + 3 * S, &[40.0]);
        let ack = agent.send(&b).await;
        (agent, ack)
    });
    until("the next batch waits", || async {
        if sender.is_finished() {
            panic!("not held: {:?}", bus.views());
        }
        bus.waiting() == 1
    })
    .await;
    assert!(!sender.is_finished());
    let metrics = common::http_get(server.http, "/metrics").await;
    assert!(
        metrics.contains("ferry_collector_ingest_waiting 1\n"),
        "{metrics}"
    );

    // Reconfigured to skip: the sink jumps to the head, ingest goes on.
    write_config(&fx, &rules("skip"));
    server.handle.reload().await.unwrap();
    let (agent, ack) = sender.await.unwrap();
    assert_eq!(ack.unwrap(), Ack::stored(2));
    assert_eq!(bus.waiting(), 0);
    until("the skip is recorded", || async {
        bus.views()
            .iter()
            .any(|v| v.name == "sink/stuck" && v.lag == 0 && v.skipped == 3 && v.handled == 0)
    })
    .await;
    drop(agent);
    server.stop().await;
    holder.abort();
}

#[tokio::test]
async fn processors_past_a_skip_budget_jump_ahead_and_report_the_range() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let path = write_config(
        &fx,
        r#"
[processor]
lag_budget = { max = 2, policy = "skip" }

[[processor.threshold]]
name = "hot"
match = 'temp'
above = 30
"#,
    );
    let config = load(&path);
    let hold = config.faults.hold_processors.clone();
    hold.store(true, Ordering::SeqCst);
    let server = Running::start(config).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let t0 = base_ns();
    let key = SeriesKey::new("temp", [("room", "a")]).unwrap();
    // Four batches that would fire the rule, while the processors are held:
    // ingest never waits under `skip`.
    for seq in 1..=4 {
        let b = series_batch(seq, key.clone(), t0 + seq as i64 * S, &[40.0]);
        assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(seq));
    }
    let bus = server.handle.bus();
    assert_eq!(bus.event_head(), 4);
    assert_eq!(bus.waiting(), 0);
    // Released: 4 behind, budget 2: they skip 1..=4.
    hold.store(false, Ordering::SeqCst);
    until("the skip is recorded", || async {
        !server
            .admin()
            .alerts(&AlertParams::default())
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let alerts = server
        .admin()
        .alerts(&AlertParams::default())
        .await
        .unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].state, AlertState::Skipped);
    assert_eq!(alerts[0].rule, "processors");
    assert_eq!(alerts[0].subject, "event log 1..=4");
    assert_eq!(alerts[0].value, 4.0);
    let p = &server.admin().subscribers().await.unwrap()[0];
    assert_eq!(
        (p.name.as_str(), p.cursor, p.lag, p.handled, p.skipped),
        ("processors", 4, 0, 0, 4)
    );
    // Afterwards the rule runs again on new data.
    let b = series_batch(5, key, t0 + 5 * S, &[40.0]);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(5));
    until("the rule fired", || async {
        server
            .admin()
            .alerts(&AlertParams::default())
            .await
            .unwrap()
            .len()
            == 2
    })
    .await;
    let a = &server
        .admin()
        .alerts(&AlertParams::default())
        .await
        .unwrap()[1];
    assert_eq!((a.state, a.ts_ns), (AlertState::Firing, t0 + 5 * S));
    drop(agent);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_device_and_agent_go_offline_and_come_back_online() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let path = write_config(
        &fx,
        r#"
[processor.offline]
after = "300ms"
check_every = "20ms"

[[sink.log]]
name = "log"
"#,
    );
    let server = Running::start(load(&path)).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let t0 = base_ns();
    let key = SeriesKey::new("temp", [("device", "d1")]).unwrap();
    let b = series_batch(1, key.clone(), t0, &[20.0]);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(1));
    let admin = server.admin();
    let offline = AlertParams {
        state: Some("offline".into()),
        ..AlertParams::default()
    };
    until("both offline", || async {
        admin.alerts(&offline).await.unwrap().len() >= 2
    })
    .await;
    let b = series_batch(2, key, t0 + S, &[20.0]);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(2));
    until("both online", || async {
        admin.alerts(&AlertParams::default()).await.unwrap().len() >= 4
    })
    .await;
    // (Silent again for 300 ms, they would go offline again: look at the
    // first four.)
    let all = admin.alerts(&AlertParams::default()).await.unwrap();
    let got: Vec<(&str, AlertState)> = all[..4]
        .iter()
        .map(|a| (a.subject.as_str(), a.state))
        .collect();
    assert_eq!(
        got,
        vec![
            ("agent=gw-1", AlertState::Offline),
            ("device=d1", AlertState::Offline),
            ("agent=gw-1", AlertState::Online),
            ("device=d1", AlertState::Online),
        ]
    );
    assert!(all.iter().all(|a| a.rule == "offline/offline"));
    drop(agent);
    server.stop().await;
}
