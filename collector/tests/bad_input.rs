//! Bad input is rejected, counted and explained, and everyone else keeps
//! being served: malformed frames, oversized frames and bodies, unknown
//! versions, frames on the wrong stream, invalid batches, bad timestamps,
//! garbage UDP datagrams.

mod common;

use common::{Agent, Answer, Fixture, HelloReply, base_ns, batch, frame, hello, zstd_compress};
use ferry_collector::ingest::BadInput;
use ferry_proto::batch::{Batch, Reading, ReadingBlock};
use ferry_proto::codec;
use ferry_proto::session::{Ack, PROTOCOL_VERSION, Refused, close, reason};
use ferry_proto::stream::{FrameType, compression};

#[tokio::test]
async fn every_bad_frame_gets_a_named_rejection_and_the_stream_carries_on() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let mut config = fx.config();
    config.limits.max_frame_bytes = 64 * 1024;
    let server = common::Running::start(config).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let t0 = base_ns();

    // A frame that cannot be read as a batch has no sequence to ack: the
    // answer is an ErrorMsg on the stream, applied by the agent to the
    // batch it sent there. Unknown frame type: UNEXPECTED, as §1 says.
    let answer = agent.send_raw_answer(&[9, 0, 0, 0, 0, 0]).await.unwrap();
    assert_eq!(
        answer,
        Answer::error(reason::UNEXPECTED, "unknown frame type 9 at byte 0")
    );

    // Reserved flag bits.
    let answer = agent.send_raw_answer(&[3, 0x80, 0, 0, 0, 0]).await.unwrap();
    assert_eq!(
        answer,
        Answer::error(
            reason::MALFORMED,
            "invalid flags 0x80 at byte 1 for a Batch frame"
        )
    );

    // Declared length over the limit: refused before reading the body.
    let answer = agent
        .send_raw_answer(&[3, 0, 0x7f, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(
        answer,
        Answer::error(
            reason::TOO_LARGE,
            "frame body of 2147483647 bytes (bytes 2-5) exceeds the limit of 65536"
        )
    );

    // A zstd body that inflates past the limit.
    let bomb = zstd_compress(&vec![0u8; 200_000]);
    let answer = agent
        .send_raw_answer(&frame(FrameType::Batch, compression::ZSTD, &bomb))
        .await
        .unwrap();
    assert_eq!(
        answer,
        Answer::error(
            reason::TOO_LARGE,
            "decompressed batch exceeds the limit of 65536 bytes"
        )
    );

    // Not MessagePack of a Batch.
    let Answer::Error(e) = agent
        .send_raw_answer(&frame(FrameType::Batch, 0, &[0xc1, 0x00]))
        .await
        .unwrap()
    else {
        panic!("acked")
    };
    assert_eq!(e.code, reason::MALFORMED);
    assert!(e.message.starts_with("invalid Batch: "), "{}", e.message);

    // Trailing bytes after the batch: their own code.
    let mut body = codec::to_vec(&batch(1, t0, &["a"], 1)).unwrap();
    let len = body.len();
    body.push(0);
    let answer = agent
        .send_raw_answer(&frame(FrameType::Batch, 0, &body))
        .await
        .unwrap();
    assert_eq!(
        answer,
        Answer::error(
            reason::TRAILING_BYTES,
            &format!("invalid Batch: 1 trailing bytes after the message at offset {len}")
        )
    );

    // A Hello where a Batch belongs.
    let body = codec::to_vec(&hello(1)).unwrap();
    let answer = agent
        .send_raw_answer(&frame(FrameType::Hello, 0, &body))
        .await
        .unwrap();
    assert_eq!(
        answer,
        Answer::error(
            reason::UNEXPECTED,
            "expected a Batch frame on a batch stream, got Hello"
        )
    );

    // A block referencing a series the dictionary lacks.
    let mut bad = batch(2, t0, &["a"], 2);
    bad.blocks[0].series = 5;
    let ack = agent.send(&bad).await.unwrap();
    assert_eq!(
        ack,
        Ack::rejected(
            2,
            reason::INVALID,
            "block 0 references series 5, but the dictionary has 1"
        )
    );

    // A timestamp a day in the future: that reading is refused, the other
    // one of its block is stored, and the ack says so.
    let future = t0 + 86_400_000_000_000;
    let late = Batch {
        seq: 3,
        created_ns: t0,
        series: batch(3, t0, &["a"], 1).series,
        blocks: vec![ReadingBlock::encode(
            0,
            &[
                Reading {
                    ts_ns: t0,
                    value: 1.0,
                },
                Reading {
                    ts_ns: future,
                    value: 2.0,
                },
            ],
        )],
        ..Batch::default()
    };
    let ack = agent.send(&late).await.unwrap();
    assert_eq!(
        ack,
        Ack::stored_refusing(
            3,
            vec![Refused {
                code: reason::BAD_TIMESTAMP,
                readings: 1
            }]
        )
    );

    // The same connection still works, and nothing of the above was stored
    // but batch 3's good reading.
    assert_eq!(
        agent.send(&batch(4, t0, &["a"], 3)).await.unwrap(),
        Ack::stored(4)
    );
    let agents = server.admin().agents().await.unwrap();
    assert_eq!(
        (agents[0].batches, agents[0].readings, agents[0].refused),
        (2, 4, 1)
    );

    let m = server.handle.metrics();
    let counts: Vec<(BadInput, u64)> = [
        BadInput::MalformedFrame,
        BadInput::Oversized,
        BadInput::MalformedMessage,
        BadInput::UnexpectedFrame,
        BadInput::InvalidBatch,
        BadInput::RefusedReadings,
    ]
    .into_iter()
    .map(|k| (k, m.bad_count(k)))
    .collect();
    assert_eq!(
        counts,
        [
            (BadInput::MalformedFrame, 1),
            (BadInput::Oversized, 2),
            (BadInput::MalformedMessage, 2),
            (BadInput::UnexpectedFrame, 2),
            (BadInput::InvalidBatch, 1),
            (BadInput::RefusedReadings, 1),
        ]
    );
    let text = m.render();
    assert!(
        text.contains(
            "ferry_collector_batches_total{outcome=\"rejected\",reason=\"too_large\"} 2\n"
        ),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_protocol_version_is_refused_with_an_error_and_close() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let agent = Agent::connect(server.quic, &bundle).await.unwrap();
    match agent.hello(hello(9)).await.unwrap() {
        HelloReply::Error(e) => {
            assert_eq!(e.code, reason::UNSUPPORTED);
            assert_eq!(
                e.message,
                "protocol version 9 is not supported; this collector speaks 1"
            );
        }
        HelloReply::Welcome(w) => panic!("welcomed: {w:?}"),
    }
    match agent.conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close::VERSION.into())
        }
        other => panic!("{other}"),
    }

    // A batch frame where the hello belongs: an error and a protocol close.
    let agent = Agent::connect(server.quic, &bundle).await.unwrap();
    let (mut send, mut recv) = agent.conn.open_bi().await.unwrap();
    let body = codec::to_vec(&batch(1, base_ns(), &["a"], 1)).unwrap();
    send.write_all(&frame(FrameType::Batch, 0, &body))
        .await
        .unwrap();
    send.finish().unwrap();
    let (header, body) = common::read_frame(&mut recv).await.unwrap();
    assert_eq!(header.frame_type, FrameType::Error);
    let e: ferry_proto::session::ErrorMsg = codec::from_bytes("ErrorMsg", &body).unwrap();
    assert_eq!(e.code, reason::UNEXPECTED);
    assert_eq!(e.message, "expected a Hello frame first, got Batch");
    match agent.conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close::PROTOCOL.into())
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        server
            .handle
            .metrics()
            .bad_count(BadInput::UnsupportedVersion),
        1
    );
    assert_eq!(
        server.handle.metrics().bad_count(BadInput::UnexpectedFrame),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn garbage_datagrams_are_counted_and_ignored() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..50u8 {
        // First byte without the QUIC fixed bit.
        let mut d = vec![i & 0x3f; 40 + i as usize];
        d[0] = 0x00;
        sock.send_to(&d, server.quic).unwrap();
    }
    // Packets from one socket to the server arrive in order on loopback,
    // and the server reads its socket in order: once this agent's batch is
    // acknowledged, every garbage datagram sent before it has been seen.
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    assert_eq!(
        agent.send(&batch(1, base_ns(), &["a"], 1)).await.unwrap(),
        Ack::stored(1)
    );
    assert_eq!(
        server.handle.metrics().bad_count(BadInput::GarbageDatagram),
        50
    );
    server.stop().await;
}

#[tokio::test]
async fn rate_limited_agents_get_a_transient_rejection() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let mut config = fx.config();
    config.limits.agent_readings_per_sec = 5;
    let server = common::Running::start(config).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let t0 = base_ns();
    // Burst of two seconds: 10 readings pass; 500 more would need 100 s of
    // refill.
    assert_eq!(
        agent.send(&batch(1, t0, &["a"], 10)).await.unwrap(),
        Ack::stored(1)
    );
    let ack = agent.send(&batch(2, t0, &["b"], 500)).await.unwrap();
    assert_eq!(
        ack,
        Ack::rejected(
            2,
            reason::RATE_LIMITED,
            "agent is over its rate of 5 readings per second"
        )
    );
    assert!(reason::is_transient(ack.code));
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_counted() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let mut config = fx.config();
    config.limits.max_connections = 1;
    let server = common::Running::start(config).await;
    let (first, _) = Agent::session(server.quic, &bundle).await;
    let err = match Agent::connect(server.quic, &bundle).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("second connection accepted"),
    };
    assert_eq!(
        err,
        "aborted by peer: the server refused to accept a new connection"
    );
    let m = server.handle.metrics().render();
    assert!(
        m.contains("ferry_collector_connections_refused_total{reason=\"busy\"} 1\n"),
        "{m}"
    );
    // The first connection is unaffected.
    assert_eq!(
        first.send(&batch(1, base_ns(), &["a"], 1)).await.unwrap(),
        Ack::stored(1)
    );
    server.stop().await;
}

/// A control stream opened with a Hello that never completes (a byte of its
/// header, then silence) is closed at `quic.hello_timeout` like a missing
/// Hello, and its connection's slot freed.
#[tokio::test]
async fn an_unfinished_hello_is_closed_at_the_hello_timeout() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let mut config = fx.config();
    config.quic.hello_timeout = std::time::Duration::from_millis(300);
    let server = common::Running::start(config).await;
    let agent = Agent::connect(server.quic, &bundle).await.unwrap();
    let (mut send, _recv) = agent.conn.open_bi().await.unwrap();
    let bytes = frame(
        FrameType::Hello,
        0,
        &codec::to_vec(&hello(PROTOCOL_VERSION)).unwrap(),
    );
    send.write_all(&bytes[..1]).await.unwrap();
    match agent.conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close::PROTOCOL.into());
            assert_eq!(&c.reason[..], b"no hello in time");
        }
        other => panic!("{other}"),
    }
    server.stop().await;
}
