//! Journal identity and per-reading refusal over a real QUIC session: a new
//! journal epoch of a known agent is stored and shown, never answered
//! "duplicate"; a bad reading costs only itself, counted per device and
//! reason where the operator looks (CLI, HTTP API, /metrics); the Welcome
//! carries the collector's limits.

mod common;

use common::{Agent, Answer, EPOCH, Fixture, base_ns, batch, frame, hello_epoch, http_get};
use ferry_collector::admin::DropRow;
use ferry_proto::batch::{Batch, HealthRecord, Reading, ReadingBlock};
use ferry_proto::codec;
use ferry_proto::health;
use ferry_proto::series::SeriesKey;
use ferry_proto::session::{Ack, PROTOCOL_VERSION, Refused, compression, reason};
use ferry_proto::stream::FrameType;

const NEW_EPOCH: u64 = 0x7e57_0000_0000_0002;

fn readings(t0: i64, n: usize) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            ts_ns: t0 + i as i64 * 1_000_000_000,
            value: i as f64,
        })
        .collect()
}

#[tokio::test]
async fn a_new_journal_epoch_is_stored_shown_and_counted() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let t0 = base_ns();

    // The first journal: batches 1..=3.
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    for seq in 1..=3 {
        assert_eq!(
            agent
                .send(&batch(seq, t0 + seq as i64, &["a"], 2))
                .await
                .unwrap(),
            Ack::stored(seq)
        );
    }
    let a = &server.admin().agents().await.unwrap()[0];
    assert_eq!(
        (a.epoch.as_str(), a.journal_resets, a.last_seq),
        ("0123456789abcdef", 0, Some(3))
    );
    agent.conn.close(0u32.into(), b"bye");

    // The journal is replaced: the same sequence numbers in a new epoch are
    // new batches, stored.
    let (agent, _) = Agent::session_with(
        server.quic,
        &bundle,
        hello_epoch(PROTOCOL_VERSION, NEW_EPOCH),
    )
    .await;
    for seq in 1..=3 {
        assert_eq!(
            agent
                .send(&batch(seq, t0 + 1000 + seq as i64, &["a"], 2))
                .await
                .unwrap(),
            Ack::stored(seq),
            "batch {seq} of the new epoch"
        );
    }
    // A batch salvaged from the old journal keeps its epoch: its seq 2 was
    // stored, its seq 4 was not.
    let salvaged = |seq| Batch {
        epoch: EPOCH,
        ..batch(seq, t0 + 2000 + seq as i64, &["a"], 2)
    };
    assert_eq!(agent.send(&salvaged(2)).await.unwrap(), Ack::duplicate(2));
    assert_eq!(agent.send(&salvaged(4)).await.unwrap(), Ack::stored(4));

    let a = &server.admin().agents().await.unwrap()[0];
    assert_eq!(
        (
            a.epoch.as_str(),
            a.previous_epoch.as_str(),
            a.journal_resets,
            a.batches,
            a.readings,
            a.last_seq
        ),
        ("7e57000000000002", "0123456789abcdef", 1, 7, 14, Some(3))
    );
    assert!(a.epoch_since_ns > t0, "{a:?}");
    let epochs = server.handle.store().epochs().unwrap();
    let per: Vec<(u64, u64, u64)> = epochs
        .iter()
        .map(|(_, e, r)| (*e, r.batches, r.readings))
        .collect();
    assert_eq!(per, [(EPOCH, 4, 8), (NEW_EPOCH, 3, 6)]);
    assert_eq!(
        server.handle.store().dedupe_ranges("gw-1", EPOCH).unwrap(),
        [(1, 4)]
    );
    let metrics = http_get(server.http, "/metrics").await;
    for line in [
        "ferry_collector_journal_resets_total 1\n",
        "ferry_collector_agent_journal_resets{agent=\"gw-1\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // The JSON agents API writes the epoch as hex and times as strings.
    let json: serde_json::Value =
        serde_json::from_str(&http_get(server.http, "/api/v1/agents").await).unwrap();
    assert_eq!(json[0]["epoch"], "7e57000000000002");
    assert_eq!(json[0]["journal_resets"], 1);
    assert!(json[0]["last_seen_ns"].is_string(), "{json}");
    server.stop().await;
}

/// Four producers (devices) in one batch; one reading of device d2 is dated
/// a year ahead. The 11 good readings are stored; the bad one is refused,
/// counted for d2 and `bad_timestamp`, and the ack says so. Drops an agent
/// reported (health records) show in the same table.
#[tokio::test]
async fn one_bad_reading_costs_only_itself_and_is_counted_per_device() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let t0 = base_ns();
    let (agent, welcome) = Agent::session(server.quic, &bundle).await;
    // The Welcome tells the agent the window the collector applies.
    let (lo, hi) = welcome.timestamp_window(welcome.now_ns).unwrap();
    assert_eq!(welcome.max_past_ns, 30 * 86_400 * 1_000_000_000);
    assert_eq!(welcome.max_future_ns, 600 * 1_000_000_000);
    assert_eq!(hi - lo, (30 * 86_400 + 600) * 1_000_000_000);
    assert!((welcome.now_ns - ferry_collector::now_ns()).abs() < 60_000_000_000);
    assert_eq!(
        (welcome.idle_timeout_ms, welcome.hello_timeout_ms),
        (6_000, 10_000)
    );
    assert_eq!(welcome.max_batch_readings, 1 << 20);

    let year = 365 * 86_400 * 1_000_000_000i64;
    let mut b = Batch {
        seq: 1,
        created_ns: t0,
        ..Batch::default()
    };
    for (i, dev) in ["d1", "d2", "d3", "d4"].iter().enumerate() {
        b.series
            .push(SeriesKey::new("temperature", [("device", *dev)]).unwrap());
        let mut r = readings(t0, 3);
        if *dev == "d2" {
            r[1].ts_ns += year;
        }
        b.blocks.push(ReadingBlock::encode(i as u32, &r));
    }
    // Health records from the agent: 5 readings of d3 dropped (journal
    // full) in its batch 0 (never sent), 7 late for d1.
    b.health = vec![
        HealthRecord {
            source: "d1".into(),
            kind: health::DROPPED_LATE,
            count: 7,
            batch: 0,
        },
        HealthRecord {
            source: "d3".into(),
            kind: health::DROPPED_JOURNAL_FULL,
            count: 5,
            batch: 9,
        },
        HealthRecord {
            source: "d1".into(),
            kind: health::RECEIVED,
            // 11 stored, 12 dropped by the agent, 11 refused (with batch 2).
            count: 11 + 7 + 5 + 11,
            batch: 0,
        },
    ];
    assert_eq!(
        agent.send(&b).await.unwrap(),
        Ack::stored_refusing(
            1,
            vec![Refused {
                code: reason::BAD_TIMESTAMP,
                readings: 1
            }]
        )
    );
    // A window aggregate dated a year back is refused with its count.
    let mut w = Batch {
        seq: 2,
        created_ns: t0,
        series: vec![SeriesKey::new("temperature", [("device", "d4")]).unwrap()],
        ..Batch::default()
    };
    w.aggregates.push(ferry_proto::batch::WindowAggregate {
        series: 0,
        start_ns: t0 - year,
        len_ns: 10_000_000_000,
        count: 10,
        sum: 10.0,
        min: 1.0,
        max: 1.0,
        first: 1.0,
        last: 1.0,
        sketch: None,
    });
    assert_eq!(
        agent.send(&w).await.unwrap(),
        Ack::stored_refusing(
            2,
            vec![Refused {
                code: reason::BAD_TIMESTAMP,
                readings: 10
            }]
        )
    );

    // Good readings of every device are stored.
    let q = ferry_collector::query::QueryParams {
        selector: Some("temperature".into()),
        from: Some((t0 - 1).to_string()),
        to: Some((t0 + 10_000_000_000).to_string()),
        step: None,
        kind: Some("raw".into()),
    };
    let res = server.admin().query(&q).await.unwrap();
    let counts: Vec<(String, usize)> = res
        .iter()
        .map(|s| (s.series.clone(), s.readings.len()))
        .collect();
    assert_eq!(
        counts,
        [
            ("temperature{agent=\"gw-1\",device=\"d1\"}".to_owned(), 3),
            ("temperature{agent=\"gw-1\",device=\"d2\"}".to_owned(), 2),
            ("temperature{agent=\"gw-1\",device=\"d3\"}".to_owned(), 3),
            ("temperature{agent=\"gw-1\",device=\"d4\"}".to_owned(), 3),
        ]
    );

    // The drops table: the agent's counts and the collector's refusals.
    let row = |device: &str, reason: &str, by: &str, readings| DropRow {
        agent: "gw-1".into(),
        device: device.into(),
        reason: reason.into(),
        counted_by: by.into(),
        readings,
    };
    let drops = server.admin().drops().await.unwrap();
    assert_eq!(
        drops.drops,
        [
            row("d1", "late", "agent", 7),
            row("d2", "bad_timestamp", "collector", 1),
            row("d3", "journal_full", "agent", 5),
            row("d4", "bad_timestamp", "collector", 10),
        ]
    );
    // The ledger closes: received = stored + dropped + refused.
    let l = &drops.ledgers[0];
    assert_eq!(
        (l.received, l.stored, l.dropped, l.refused, l.in_transit),
        (34, 11, 12, 11, 0)
    );
    let agents = server.admin().agents().await.unwrap();
    assert_eq!(
        (agents[0].readings, agents[0].refused, agents[0].dropped),
        (11, 11, 12)
    );
    let metrics = http_get(server.http, "/metrics").await;
    for line in [
        "ferry_collector_dropped_readings{agent=\"gw-1\",device=\"d2\",reason=\"bad_timestamp\",by=\"collector\"} 1\n",
        "ferry_collector_dropped_readings{agent=\"gw-1\",device=\"d3\",reason=\"journal_full\",by=\"agent\"} 5\n",
        "ferry_collector_refused_readings_total{reason=\"bad_timestamp\"} 11\n",
        "ferry_collector_readings_total{outcome=\"refused\"} 11\n",
        "ferry_collector_readings_total{outcome=\"stored\"} 11\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&http_get(server.http, "/api/v1/drops").await).unwrap();
    assert_eq!(json["drops"][1]["device"], "d2");
    assert_eq!(json["drops"][1]["reason"], "bad_timestamp");
    assert_eq!(json["drops"][1]["readings"], 1);

    // Resent (its ack lost): a duplicate, nothing counted twice.
    assert_eq!(agent.send(&b).await.unwrap(), Ack::duplicate(1));
    assert_eq!(server.admin().drops().await.unwrap().drops, drops.drops);
    server.stop().await;
}

#[tokio::test]
async fn a_compressed_batch_after_a_welcome_without_compression_is_refused() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let mut h = hello_epoch(PROTOCOL_VERSION, EPOCH);
    h.compression = vec![compression::NONE];
    let (agent, welcome) = Agent::session_with(server.quic, &bundle, h).await;
    assert_eq!(welcome.compression, compression::NONE);
    let body = common::zstd_compress(&codec::to_vec(&batch(1, base_ns(), &["a"], 1)).unwrap());
    assert_eq!(
        agent
            .send_raw_answer(&frame(FrameType::Batch, compression::ZSTD, &body))
            .await
            .unwrap(),
        Answer::error(
            reason::UNSUPPORTED,
            "a zstd-compressed batch, but the Welcome chose no compression"
        )
    );
    // The session goes on.
    assert_eq!(
        agent.send(&batch(1, base_ns(), &["a"], 1)).await.unwrap(),
        Ack::stored(1)
    );
    server.stop().await;
}
