//! The agent's status report (`AgentStatus`, frame type 6 on the control
//! stream): asked for in the Welcome, kept per agent, shown in the agents
//! table, the devices list and `/metrics`; anything else on the control
//! stream is counted and closes the connection.

mod common;

use common::{Agent, Fixture, frame, hello, http_get, read_frame, until};
use ferry_proto::codec;
use ferry_proto::session::{AgentStatus, DeviceStatus, PROTOCOL_VERSION, Welcome, close};
use ferry_proto::stream::FrameType;

fn status(backlog: u64, firmware: &str) -> AgentStatus {
    AgentStatus {
        sent_ns: 2_000_000_000_000_000_000,
        backlog_readings: backlog,
        backlog_batches: 2,
        journal_bytes: 4096,
        journal_budget_bytes: 1 << 20,
        oldest_unacked_ns: 2_000_000_000_000_000_000 - 30_000_000_000,
        devices: vec![DeviceStatus {
            device: "00000000000000a1".into(),
            firmware: firmware.into(),
            link_version: 1,
            connected: true,
            last_seen_ns: 1_999_999_999_000_000_000,
        }],
    }
}

/// Says hello on a control stream it keeps open; returns its send side.
async fn control(agent: &Agent) -> (quinn::SendStream, Welcome) {
    let (mut send, mut recv) = agent.conn.open_bi().await.unwrap();
    let body = codec::to_vec(&hello(PROTOCOL_VERSION)).unwrap();
    send.write_all(&frame(FrameType::Hello, 0, &body))
        .await
        .unwrap();
    let (header, body) = read_frame(&mut recv).await.unwrap();
    assert_eq!(header.frame_type, FrameType::Welcome);
    (send, codec::from_bytes("Welcome", &body).unwrap())
}

#[tokio::test]
async fn the_newest_status_shows_in_the_agents_table_devices_and_metrics() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    fx.enroll("gw-2");
    let server = fx.start().await;
    let agent = Agent::connect(server.quic, &bundle).await.unwrap();
    let (mut send, welcome) = control(&agent).await;
    assert_eq!(welcome.status_interval_ms, 10_000);

    for (backlog, firmware) in [(500, "ferry-fw 0.1.0"), (12_345, "ferry-fw 0.2.0")] {
        let body = codec::to_vec(&status(backlog, firmware)).unwrap();
        send.write_all(&frame(FrameType::Status, 0, &body))
            .await
            .unwrap();
    }
    let admin = server.admin();
    until("the newest status is shown", || async {
        admin
            .agents()
            .await
            .unwrap()
            .iter()
            .any(|a| a.id == "gw-1" && a.backlog_readings == Some(12_345))
    })
    .await;
    let agents = admin.agents().await.unwrap();
    let gw1 = agents.iter().find(|a| a.id == "gw-1").unwrap();
    assert_eq!(
        (gw1.backlog_batches, gw1.oldest_unacked_ns),
        (Some(2), 2_000_000_000_000_000_000 - 30_000_000_000)
    );
    assert!(gw1.status_ns > 0);
    // An agent that sent none shows none.
    let gw2 = agents.iter().find(|a| a.id == "gw-2").unwrap();
    assert_eq!((gw2.backlog_readings, gw2.status_ns), (None, 0));

    let devices: serde_json::Value =
        serde_json::from_str(&http_get(server.http, "/api/v1/devices").await).unwrap();
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["agent"], "gw-1");
    assert_eq!(devices[0]["device"], "00000000000000a1");
    assert_eq!(devices[0]["firmware"], "ferry-fw 0.2.0");
    assert_eq!(devices[0]["link_up"], true);

    let metrics = http_get(server.http, "/metrics").await;
    assert!(
        metrics.contains("ferry_collector_agent_backlog_readings{agent=\"gw-1\"} 12345\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_collector_agent_backlog_age_seconds{agent=\"gw-1\"} 30.0\n"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_batch_on_the_control_stream_closes_the_connection() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let agent = Agent::connect(server.quic, &bundle).await.unwrap();
    let (mut send, _) = control(&agent).await;
    let batch = codec::to_vec(&common::batch(1, common::base_ns(), &["d1"], 1)).unwrap();
    send.write_all(&frame(FrameType::Batch, 0, &batch))
        .await
        .unwrap();
    let why = agent.conn.closed().await;
    match why {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(close::PROTOCOL));
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            assert!(
                reason.contains("expected only uncompressed AgentStatus frames"),
                "{reason}"
            );
        }
        other => panic!("closed for another reason: {other}"),
    }
    // Counted as bad input; nothing stored.
    let metrics = http_get(server.http, "/metrics").await;
    assert!(
        metrics.contains("ferry_collector_bad_input_total{kind=\"unexpected_frame\"} 1\n"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_status_over_its_limits_is_refused() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let agent = Agent::connect(server.quic, &bundle).await.unwrap();
    let (mut send, _) = control(&agent).await;
    let long = "x".repeat(65);
    let body = codec::to_vec(&status(1, &long)).unwrap();
    send.write_all(&frame(FrameType::Status, 0, &body))
        .await
        .unwrap();
    match agent.conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(close::PROTOCOL));
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            assert_eq!(
                reason,
                "AgentStatus: device 0: firmware is 65 bytes, over the limit of 64"
            );
        }
        other => panic!("closed for another reason: {other}"),
    }
    let agents = server.admin().agents().await.unwrap();
    assert_eq!(agents[0].backlog_readings, None);
    server.stop().await;
}
