//! Revision 4 on the collector: compact batches whose series are journal
//! ids, defined per session by `Definitions` frames; revision 5: their
//! values coded against value references. Real QUIC on 127.0.0.1, real
//! redb in temporary directories.

mod common;

use common::{Agent, Answer, Fixture, base_ns, batch, frame, http_get, zstd_compress};
use ferry_collector::query::QueryParams;
use ferry_proto::batch::Batch;
use ferry_proto::batch::{Reading, ReadingBlock};
use ferry_proto::codec;
use ferry_proto::compact::{CompactBatch, DEFAULT_MAX_SERIES_IDS, Definitions, References};
use ferry_proto::series::SeriesKey;
use ferry_proto::session::{Ack, compression, reason, status};
use ferry_proto::stream::FrameType;

/// Journal ids of the test agent's series `temperature{dev=…}`.
const IDS: [u32; 3] = [7, 8, 40];
const DEVS: [&str; 3] = ["a", "b", "c"];

/// Batch `seq` with `per_series` readings of each of `devs` (of [`DEVS`]).
fn plain(seq: u64, t0: i64, devs: &[usize], per_series: usize) -> (Batch, Vec<u32>) {
    let names: Vec<&str> = devs.iter().map(|&d| DEVS[d]).collect();
    let mut b = batch(seq, t0, &names, per_series);
    b.epoch = common::EPOCH;
    (b, devs.iter().map(|&d| IDS[d]).collect())
}

fn definitions(b: &Batch, ids: &[u32]) -> Definitions {
    Definitions {
        ids: ids.to_vec(),
        keys: b.series.clone(),
    }
}

/// The frames of a batch stream: the definitions (if any), then the
/// compact batch, zstd-compressed as the agent sends them.
fn stream(defs: Option<&Definitions>, compact: &CompactBatch) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(d) = defs {
        out.extend(frame(
            FrameType::Definitions,
            compression::ZSTD,
            &zstd_compress(&codec::to_vec(d).unwrap()),
        ));
    }
    out.extend(frame(
        FrameType::CompactBatch,
        compression::ZSTD,
        &zstd_compress(&codec::to_vec(compact).unwrap()),
    ));
    out
}

fn params(selector: &str, from: i64, to: i64) -> QueryParams {
    QueryParams {
        selector: Some(selector.into()),
        from: Some(from.to_string()),
        to: Some(to.to_string()),
        step: None,
        kind: None,
    }
}

async fn metric(http: std::net::SocketAddr, name: &str) -> String {
    let body = http_get(http, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .to_owned()
}

#[tokio::test]
async fn compact_batches_resolve_through_session_definitions_across_reconnects() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let t0 = base_ns();
    let (agent, welcome) = Agent::session(server.quic, &bundle).await;
    assert_eq!(welcome.max_series_ids, DEFAULT_MAX_SERIES_IDS);

    // Batch 1 defines ids 7 and 8 and uses them.
    let (b1, ids1) = plain(1, t0, &[0, 1], 5);
    let c1 = CompactBatch::from_batch(&b1, &ids1).unwrap();
    let defs1 = definitions(&b1, &ids1);
    assert_eq!(
        agent.send_raw(&stream(Some(&defs1), &c1)).await.unwrap(),
        Ack::stored(1)
    );
    // Batch 2 uses id 8 again without a definition, and defines 40.
    let (b2, ids2) = plain(2, t0 + 5_000_000_000, &[1, 2], 3);
    let c2 = CompactBatch::from_batch(&b2, &ids2).unwrap();
    let defs2 = Definitions {
        ids: vec![40],
        keys: vec![b2.series[1].clone()],
    };
    assert_eq!(
        agent.send_raw(&stream(Some(&defs2), &c2)).await.unwrap(),
        Ack::stored(2)
    );
    drop(agent);

    // A new session knows no ids: the batch is refused, transiently, and
    // stored once its definitions come along.
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let (b3, ids3) = plain(3, t0 + 10_000_000_000, &[0, 1, 2], 2);
    let c3 = CompactBatch::from_batch(&b3, &ids3).unwrap();
    let ack = agent.send_raw(&stream(None, &c3)).await.unwrap();
    assert_eq!(
        (ack.seq, ack.status, ack.code),
        (3, status::REJECTED, reason::UNKNOWN_SERIES_ID)
    );
    assert!(reason::is_transient(ack.code));
    assert_eq!(
        agent
            .send_raw(&stream(Some(&definitions(&b3, &ids3)), &c3))
            .await
            .unwrap(),
        Ack::stored(3)
    );
    // A resent batch is a duplicate, in whatever form it comes.
    assert_eq!(
        agent.send_raw(&stream(None, &c1)).await.unwrap(),
        Ack::duplicate(1)
    );
    assert_eq!(agent.send(&b2).await.unwrap(), Ack::duplicate(2));

    // Every reading stored exactly once, under its key.
    let admin = server.admin();
    for (dev, n) in [("a", 5 + 2), ("b", 5 + 3 + 2), ("c", 3 + 2)] {
        let res = admin
            .query(&params(
                &format!(r#"temperature{{dev="{dev}"}}"#),
                t0,
                t0 + 60_000_000_000,
            ))
            .await
            .unwrap();
        assert_eq!(res.len(), 1, "{dev}");
        assert_eq!(res[0].readings.len(), n, "{dev}");
    }
    assert_eq!(
        metric(
            server.http,
            "ferry_collector_bad_input_total{kind=\"unknown_series_id\"}"
        )
        .await,
        "ferry_collector_bad_input_total{kind=\"unknown_series_id\"} 1"
    );
    // Batches 1, 2, 3 and the duplicate 1 came compact.
    assert_eq!(
        metric(server.http, "ferry_collector_compact_batches_total").await,
        "ferry_collector_compact_batches_total 4"
    );
    drop(agent);
    server.stop().await;
}

#[tokio::test]
async fn bad_definitions_and_frame_orders_are_refused_and_counted() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let t0 = base_ns();
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let (b, ids) = plain(1, t0, &[0, 1], 2);
    let c = CompactBatch::from_batch(&b, &ids).unwrap();

    // Definitions that do not decode: no seq is known, an ErrorMsg.
    let mut bytes = frame(FrameType::Definitions, 0, &[0x92, 0xc1]);
    bytes.extend(frame(
        FrameType::CompactBatch,
        0,
        &codec::to_vec(&c).unwrap(),
    ));
    match agent.send_raw_answer(&bytes).await.unwrap() {
        Answer::Error(e) => assert_eq!(e.code, reason::MALFORMED, "{e:?}"),
        other => panic!("{other:?}"),
    }
    // Definitions followed by a Batch frame.
    let mut bytes = frame(
        FrameType::Definitions,
        0,
        &codec::to_vec(&definitions(&b, &ids)).unwrap(),
    );
    bytes.extend(frame(FrameType::Batch, 0, &codec::to_vec(&b).unwrap()));
    match agent.send_raw_answer(&bytes).await.unwrap() {
        Answer::Error(e) => assert_eq!(e.code, reason::UNEXPECTED, "{e:?}"),
        other => panic!("{other:?}"),
    }
    // A definition whose key breaks the series rules: the batch is known,
    // rejected as invalid.
    let mut bad = definitions(&b, &ids);
    bad.keys[0].metric = "9x".into();
    let ack = agent.send_raw(&stream(Some(&bad), &c)).await.unwrap();
    assert_eq!((ack.status, ack.code), (status::REJECTED, reason::INVALID));
    // Nothing above defined anything: the batch still needs its definitions.
    let ack = agent.send_raw(&stream(None, &c)).await.unwrap();
    assert_eq!(ack.code, reason::UNKNOWN_SERIES_ID);
    assert_eq!(
        agent
            .send_raw(&stream(Some(&definitions(&b, &ids)), &c))
            .await
            .unwrap(),
        Ack::stored(1)
    );
    // The same id for another series, later in the session.
    let (b2, _) = plain(2, t0 + 5_000_000_000, &[2], 1);
    let c2 = CompactBatch::from_batch(&b2, &[IDS[0]]).unwrap();
    let redefined = definitions(&b2, &[IDS[0]]);
    let ack = agent
        .send_raw(&stream(Some(&redefined), &c2))
        .await
        .unwrap();
    assert_eq!(
        (ack.seq, ack.status, ack.code),
        (2, status::REJECTED, reason::INVALID)
    );
    assert_eq!(
        metric(
            server.http,
            "ferry_collector_bad_input_total{kind=\"malformed_message\"}"
        )
        .await,
        "ferry_collector_bad_input_total{kind=\"malformed_message\"} 1"
    );
    drop(agent);
    server.stop().await;
}

/// Batch `seq` with one reading of each of [`DEVS`] at `t0 + seq` s: dev
/// `d` reads `20 + d + seq / 100` (a slow walk, in hundredths).
fn walk(seq: u64, t0: i64) -> (Batch, Vec<u32>) {
    let mut b = Batch {
        seq,
        created_ns: t0,
        epoch: common::EPOCH,
        ..Batch::default()
    };
    for (d, dev) in DEVS.iter().enumerate() {
        b.series
            .push(SeriesKey::new("temperature", [("dev", *dev)]).unwrap());
        let r = [Reading {
            ts_ns: t0 + seq as i64 * 1_000_000_000,
            value: (2000 + 100 * d as i64 + seq as i64) as f64 / 100.0,
        }];
        b.blocks.push(ReadingBlock::encode(d as u32, &r));
    }
    (b, IDS.to_vec())
}

#[tokio::test]
async fn value_references_resolve_and_are_reestablished_after_refusals_and_reconnects() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let server = fx.start().await;
    let t0 = base_ns();
    let (agent, welcome) = Agent::session(server.quic, &bundle).await;
    assert_eq!(welcome.reference_generations, 2);

    // The agent's references, as its shipper keeps them: a generation
    // counts once its batch is stored.
    let mut refs = References::default();
    let send = async |agent: &Agent, refs: &mut References, seq: u64, sets: u64, defs: bool| {
        let (b, ids) = walk(seq, t0);
        let (c, last) = refs.encode(&b, &ids, sets).unwrap();
        let d = definitions(&b, &ids);
        let ack = agent
            .send_raw(&stream(defs.then_some(&d), &c))
            .await
            .unwrap();
        if ack.status == status::STORED || ack.status == status::DUPLICATE {
            refs.set(c.ref_base, c.ref_sets, &last).unwrap();
        }
        (ack, c)
    };
    // Batch 1 sets generation 1 on top of none; 2 and 3 set 2 and 3.
    let (ack, c) = send(&agent, &mut refs, 1, 1, true).await;
    assert_eq!((ack, c.ref_base), (Ack::stored(1), 0));
    let after_first = refs.clone();
    let (ack, c) = send(&agent, &mut refs, 2, 2, false).await;
    assert_eq!((ack, c.ref_base), (Ack::stored(2), 1));
    let (ack, c) = send(&agent, &mut refs, 3, 3, false).await;
    assert_eq!((ack, c.ref_base), (Ack::stored(3), 2));
    assert_eq!((refs.latest(), refs.previous()), (3, 2));
    // Batch 4 coded against generation 1, which the collector no longer
    // holds: refused, transiently; coded again against what the session
    // holds, stored.
    let mut stale = after_first;
    let (ack, c) = send(&agent, &mut stale, 4, 0, false).await;
    assert_eq!(c.ref_base, 1);
    assert_eq!(
        (ack.seq, ack.status, ack.code),
        (4, status::REJECTED, reason::UNKNOWN_REFERENCE)
    );
    assert!(reason::is_transient(ack.code));
    let (ack, c) = send(&agent, &mut refs, 4, 0, false).await;
    assert_eq!((ack, c.ref_base), (Ack::stored(4), 3));
    drop(agent);

    // A new session holds no references: batch 5 coded against
    // generation 3 is refused; the agent starts afresh (a generation on
    // top of none) and it is stored.
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    let (ack, _) = send(&agent, &mut refs, 5, 0, true).await;
    assert_eq!(ack.code, reason::UNKNOWN_REFERENCE);
    let mut refs = References::default();
    let (ack, c) = send(&agent, &mut refs, 5, 4, true).await;
    assert_eq!((ack, c.ref_base, refs.latest()), (Ack::stored(5), 0, 4));
    // A resent batch, coded against this session's references, is the
    // same batch: a duplicate.
    let (ack, c) = send(&agent, &mut refs, 2, 0, false).await;
    assert_eq!((ack, c.ref_base), (Ack::duplicate(2), 4));

    // Every reading stored once, bit for bit.
    let admin = server.admin();
    for (d, dev) in DEVS.iter().enumerate() {
        let res = admin
            .query(&params(
                &format!(r#"temperature{{dev="{dev}"}}"#),
                t0,
                t0 + 60_000_000_000,
            ))
            .await
            .unwrap();
        let expected: Vec<(i64, f64)> = (1..=5)
            .map(|seq| walk(seq, t0).0.blocks[d].readings().unwrap()[0])
            .map(|r| (r.ts_ns, r.value))
            .collect();
        assert_eq!(res[0].readings, expected, "{dev}");
    }
    assert_eq!(
        metric(
            server.http,
            "ferry_collector_bad_input_total{kind=\"unknown_reference\"}"
        )
        .await,
        "ferry_collector_bad_input_total{kind=\"unknown_reference\"} 2"
    );
    drop(agent);
    server.stop().await;
}
