//! Enroll, connect, send, ack, query; duplicates; a crash between commit
//! and ack. Real QUIC on 127.0.0.1, real redb in temporary directories.

mod common;

use std::sync::atomic::Ordering;

use common::{Agent, Fixture, Running, base_ns, batch};
use ferry_collector::query::QueryParams;
use ferry_proto::batch::{HealthRecord, WindowAggregate};
use ferry_proto::session::{Ack, compression};
use ferry_proto::sketch::DdSketch;

fn params(selector: &str, from: i64, to: i64) -> QueryParams {
    QueryParams {
        selector: Some(selector.into()),
        from: Some(from.to_string()),
        to: Some(to.to_string()),
        step: None,
        kind: None,
    }
}

#[tokio::test]
async fn enroll_connect_send_ack_query() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let (agent, welcome) = Agent::session(server.quic, &bundle).await;
    assert_eq!(welcome.protocol, 1);
    assert_eq!(welcome.compression, compression::ZSTD);
    assert_eq!(welcome.max_frame, 4 << 20);
    assert_eq!(welcome.max_streams, 64);

    let t0 = base_ns();
    let mut b = batch(1, t0, &["a", "b"], 5);
    let mut sketch = DdSketch::new();
    sketch.add(3.0);
    sketch.add(5.0);
    b.aggregates.push(WindowAggregate {
        series: 1,
        start_ns: t0,
        len_ns: 60_000_000_000,
        count: 2,
        sum: 8.0,
        min: 3.0,
        max: 5.0,
        first: 3.0,
        last: 5.0,
        sketch: Some(sketch),
    });
    b.health.push(HealthRecord {
        source: "dev-a".into(),
        kind: ferry_proto::health::DROPPED_DEVICE_RING,
        count: 7,
        batch: 0,
    });
    assert_eq!(agent.send_zstd(&b).await.unwrap(), Ack::stored(1));

    let admin = server.admin();
    let res = admin
        .query(&params(r#"temperature{dev="a"}"#, t0, t0 + 10_000_000_000))
        .await
        .unwrap();
    assert_eq!(res.len(), 1);
    // The collector adds the sending agent's identity.
    assert_eq!(res[0].series, r#"temperature{agent="gw-1",dev="a"}"#);
    let expect: Vec<(i64, f64)> = (0..5)
        .map(|j| (t0 + j * 1_000_000_000, 20.0 + j as f64 * 0.25))
        .collect();
    assert_eq!(res[0].readings, expect);
    assert!(res[0].windows.is_empty());

    let res = admin
        .query(&params(r#"temperature{dev="b"}"#, t0, t0 + 60_000_000_000))
        .await
        .unwrap();
    assert_eq!(res[0].readings.len(), 5);
    assert_eq!(res[0].readings[4], (t0 + 4_000_000_000, 22.0));
    let w = &res[0].windows[0];
    assert_eq!(
        (w.count, w.sum, w.min, w.max, w.first, w.last),
        (2, 8.0, 3.0, 5.0, 3.0, 5.0)
    );

    // Re-bucketed by a step: raw readings and the stored window merge.
    let mut p = params(r#"temperature{dev="b"}"#, t0, t0 + 60_000_000_000);
    p.step = Some("1h".into());
    let res = admin.query(&p).await.unwrap();
    assert!(res[0].readings.is_empty());
    let total: u64 = res[0].windows.iter().map(|w| w.count).sum();
    assert_eq!(total, 7);

    let series = admin.series("temperature").await.unwrap();
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            r#"temperature{agent="gw-1",dev="a"}"#,
            r#"temperature{agent="gw-1",dev="b"}"#
        ]
    );

    let agents = admin.agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    let a = &agents[0];
    assert_eq!(a.id, "gw-1");
    assert_eq!(a.state, "connected");
    assert_eq!(
        (a.batches, a.readings, a.last_seq, a.dropped),
        (1, 10, Some(1), 7)
    );
    assert_eq!(a.connections, 1);

    let metrics = server.handle.metrics().render();
    assert!(
        metrics.contains("ferry_collector_batches_total{outcome=\"stored\",reason=\"\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("ferry_collector_readings_total{outcome=\"stored\"} 10\n"));
    assert!(metrics.contains("ferry_collector_connections 1\n"));
    assert!(metrics.contains("ferry_collector_series 2\n"));

    agent.conn.close(0u32.into(), b"done");
    server.stop().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = common::authorization(addr);
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn healthz_and_metrics_over_http() {
    let fx = Fixture::new();
    let server = fx.start().await;
    let (head, body) = http_get(server.http, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok\n");
    let (head, body) = http_get(server.http, "/metrics").await;
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for name in [
        "ferry_collector_connections 0",
        "ferry_collector_bad_input_total{kind=\"garbage_datagram\"} 0",
        "# TYPE ferry_collector_commit_seconds histogram",
        "ferry_collector_store_file_bytes ",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
    let (head, body) = http_get(server.http, "/api/v1/query?match=t%7Ba%3Db%7D").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(
        body,
        r#"{"error":"selector \"t{a=b}\" at byte 4: expected `\"` to open the tag value"}"#
    );
    server.stop().await;
}

#[tokio::test]
async fn resent_batch_is_duplicate_and_stored_once() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let t0 = base_ns();
    let b = batch(42, t0, &["a"], 3);
    assert_eq!(agent.send(&b).await.unwrap(), Ack::stored(42));
    assert_eq!(agent.send(&b).await.unwrap(), Ack::duplicate(42));
    // Another connection of the same agent: still a duplicate.
    let (again, _) = Agent::session(server.quic, &bundle).await;
    assert_eq!(again.send_zstd(&b).await.unwrap(), Ack::duplicate(42));
    // The same sequence from another agent is its own batch.
    let other = fx.enroll("gw-2");
    let (agent2, _) = Agent::session(server.quic, &other).await;
    assert_eq!(agent2.send(&b).await.unwrap(), Ack::stored(42));

    let res = server
        .admin()
        .query(&params("temperature", t0, t0 + 10_000_000_000))
        .await
        .unwrap();
    // One series per agent (the `agent` tag), each stored once.
    assert_eq!(res.len(), 2);
    assert_eq!(res[0].series, r#"temperature{agent="gw-1",dev="a"}"#);
    assert_eq!(res[1].series, r#"temperature{agent="gw-2",dev="a"}"#);
    assert_eq!(
        (res[0].readings.len(), res[1].readings.len()),
        (3, 3),
        "stored once per agent"
    );
    let agents = server.admin().agents().await.unwrap();
    assert_eq!((agents[0].batches, agents[0].readings), (1, 3));
    let m = server.handle.metrics().render();
    assert!(
        m.contains("ferry_collector_batches_total{outcome=\"duplicate\",reason=\"\"} 2\n"),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn concurrent_streams_share_group_commits() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let agent = std::sync::Arc::new(agent);
    let t0 = base_ns();
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 1..=40u64 {
        let agent = agent.clone();
        tasks.spawn(async move {
            let b = batch(
                seq,
                t0 + seq as i64 * 100_000_000_000 / 100,
                &["a", "b"],
                10,
            );
            agent.send(&b).await.unwrap()
        });
    }
    let mut acks: Vec<Ack> = Vec::new();
    while let Some(a) = tasks.join_next().await {
        acks.push(a.unwrap());
    }
    acks.sort_by_key(|a| a.seq);
    assert_eq!(acks, (1..=40).map(Ack::stored).collect::<Vec<_>>());
    let res = server
        .admin()
        .query(&params("temperature", t0, t0 + 3_600_000_000_000))
        .await
        .unwrap();
    assert_eq!(res.iter().map(|r| r.readings.len()).sum::<usize>(), 800);
    server.stop().await;
}

#[tokio::test]
async fn crash_between_commit_and_ack_then_resend_is_duplicate() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let config = fx.config();
    let crash = config.faults.crash_after_commit.clone();
    let server = Running::start(config).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let t0 = base_ns();
    let b = batch(7, t0, &["a"], 4);
    crash.store(true, Ordering::SeqCst);
    let err = agent.send(&b).await.unwrap_err();
    assert_eq!(err, "stream reset by peer: error 0");
    server.stop().await;

    // A new process on the same data directory.
    let server = fx.start().await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    assert_eq!(agent.send(&b).await.unwrap(), Ack::duplicate(7));
    let res = server
        .admin()
        .query(&params("temperature", t0, t0 + 10_000_000_000))
        .await
        .unwrap();
    assert_eq!(res[0].readings.len(), 4);
    let agents = server.admin().agents().await.unwrap();
    assert_eq!((agents[0].batches, agents[0].last_seq), (1, Some(7)));
    server.stop().await;
}

#[tokio::test]
async fn restart_on_the_same_port_right_after_stop() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let (quic, http) = (server.quic, server.http);
    let (agent, _) = Agent::session(quic, &bundle).await;
    assert_eq!(
        agent.send(&batch(1, base_ns(), &["a"], 1)).await.unwrap(),
        Ack::stored(1)
    );
    server.stop().await;
    for _ in 0..3 {
        let mut config = fx.config();
        config.quic.listen = quic;
        config.http.listen = http;
        let server = Running::start(config).await;
        let (agent, _) = Agent::session(quic, &bundle).await;
        assert_eq!(
            agent.send(&batch(1, base_ns(), &["a"], 1)).await.unwrap(),
            Ack::duplicate(1)
        );
        server.stop().await;
    }
}
