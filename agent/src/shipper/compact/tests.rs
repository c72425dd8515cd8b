use super::*;
use ferry_proto::batch::{Reading, ReadingBlock};
use ferry_proto::compact::{CompactBatch, CompactError, References};
use ferry_proto::stream::Parsed;

/// A revision-5 collector's Welcome (value references on).
fn welcome(max_series_ids: u32) -> Welcome {
    Welcome {
        protocol: 1,
        collector_version: "test".into(),
        compression: compression::ZSTD,
        max_frame: 4 << 20,
        max_streams: 8,
        max_past_ns: 0,
        max_future_ns: 0,
        now_ns: 0,
        max_batch_readings: 0,
        rate_per_sec: 0,
        rate_burst: 0,
        idle_timeout_ms: 0,
        hello_timeout_ms: 0,
        status_interval_ms: 0,
        max_series_ids,
        reference_generations: 2,
    }
}

/// What a collector keeps per session: definitions and references.
#[derive(Default)]
struct Collector {
    keys: HashMap<u32, SeriesKey>,
    refs: References,
}

fn key(dev: u32) -> SeriesKey {
    SeriesKey::new("temperature", [("device", format!("d{dev:03}"))]).unwrap()
}

/// Batch `seq` with `per` readings of each of `devs`, stored zstd.
fn stored(seq: u64, devs: &[u32], per: usize) -> (Batch, StoredBatch) {
    let mut b = Batch {
        seq,
        created_ns: 1_700_000_000_000_000_000,
        epoch: 5,
        ..Batch::default()
    };
    for (i, &d) in devs.iter().enumerate() {
        b.series.push(key(d));
        let readings: Vec<Reading> = (0..per)
            .map(|j| Reading {
                ts_ns: 1_700_000_000_000_000_000 + j as i64 * 1_000_000,
                value: 20.0 + d as f64 / 100.0 + j as f64,
            })
            .collect();
        b.blocks.push(ReadingBlock::encode(i as u32, &readings));
    }
    let body = zstd::bulk::compress(&codec::to_vec(&b).unwrap(), 1).unwrap();
    let s = StoredBatch {
        seq,
        wire_seq: seq,
        codec: compression::ZSTD,
        body,
    };
    (b, s)
}

/// The frames' types and decompressed bodies.
fn frames(mut bytes: &[u8]) -> Vec<(FrameType, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Ok(Parsed::Frame {
            header,
            body,
            consumed,
        }) = stream::parse(bytes, u32::MAX)
        else {
            panic!("not a frame");
        };
        let body = if header.compression == compression::ZSTD {
            zstd::bulk::decompress(body, 1 << 20).unwrap()
        } else {
            body.to_vec()
        };
        out.push((header.frame_type, body));
        bytes = &bytes[consumed..];
    }
    out
}

fn ack(seq: u64, status: u8, code: u16) -> Vec<u8> {
    codec::to_vec(&Ack {
        seq,
        status,
        code,
        reason: String::new(),
        refused: vec![],
    })
    .unwrap()
}

/// Resolves the frames as a collector would, with the definitions and
/// references it holds in `session`.
fn try_resolve(
    session: &mut Collector,
    fs: &[(FrameType, Vec<u8>)],
) -> Result<(Batch, Option<CompactBatch>), CompactError> {
    for (t, body) in fs {
        match t {
            FrameType::Definitions => {
                let d: Definitions = codec::from_bytes("Definitions", body).unwrap();
                d.validate().unwrap();
                session.keys.extend(d.ids.into_iter().zip(d.keys));
            }
            FrameType::CompactBatch => {
                let c: CompactBatch = codec::from_bytes("CompactBatch", body).unwrap();
                let keys = &session.keys;
                let b = session.refs.resolve(&c, |id| keys.get(&id).cloned())?;
                return Ok((b, Some(c)));
            }
            FrameType::Batch => return Ok((codec::from_bytes("Batch", body).unwrap(), None)),
            other => panic!("{other:?}"),
        }
    }
    panic!("no batch frame")
}

fn resolve(session: &mut Collector, fs: &[(FrameType, Vec<u8>)]) -> Batch {
    try_resolve(session, fs).unwrap().0
}

fn same_readings(a: &Batch, b: &Batch) {
    let flat = |x: &Batch| {
        let mut v: Vec<(SeriesKey, i64, u64)> = x
            .blocks
            .iter()
            .flat_map(|bl| {
                let k = x.series[bl.series as usize].clone();
                bl.readings()
                    .unwrap()
                    .into_iter()
                    .map(move |r| (k.clone(), r.ts_ns, r.value.to_bits()))
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(flat(a), flat(b));
    assert_eq!(
        (a.seq, a.epoch, a.created_ns),
        (b.seq, b.epoch, b.created_ns)
    );
}

#[test]
fn definitions_go_until_a_stream_carrying_them_is_acked() {
    let mut ids = SessionIds::new(&welcome(65_536));
    let mut collector = Collector::default();
    let (b1, s1) = stored(1, &[1, 2, 3], 2);
    let f1 = frames(&ids.frames(s1, true).unwrap());
    assert_eq!(f1[0].0, FrameType::Definitions);
    assert_eq!(f1[1].0, FrameType::CompactBatch);
    same_readings(&resolve(&mut collector, &f1), &b1);
    // Batch 2 goes out before batch 1's ack: it defines what it uses again.
    let (b2, s2) = stored(2, &[2, 3, 4], 1);
    let f2 = frames(&ids.frames(s2, true).unwrap());
    let d2: Definitions = codec::from_bytes("Definitions", &f2[0].1).unwrap();
    assert_eq!(d2.ids, vec![1, 2, 3]);
    same_readings(&resolve(&mut collector, &f2), &b2);
    // Batch 1 stored, batch 2 refused transiently (rate): only batch 1's
    // definitions are known now.
    ids.answered(1, FrameType::Ack, &ack(1, status::STORED, 0));
    ids.answered(
        2,
        FrameType::Ack,
        &ack(2, status::REJECTED, reason::RATE_LIMITED),
    );
    let (b3, s3) = stored(3, &[1, 2, 3, 4], 1);
    let f3 = frames(&ids.frames(s3, true).unwrap());
    let d3: Definitions = codec::from_bytes("Definitions", &f3[0].1).unwrap();
    assert_eq!(d3.ids, vec![3]);
    same_readings(&resolve(&mut collector, &f3), &b3);
    ids.answered(3, FrameType::Ack, &ack(3, status::DUPLICATE, 0));
    // Everything known: the compact batch alone.
    let (b4, s4) = stored(4, &[4, 1], 3);
    let f4 = frames(&ids.frames(s4, true).unwrap());
    assert_eq!(f4.len(), 1);
    same_readings(&resolve(&mut collector, &f4), &b4);
    assert_eq!(ids.len(), 4);
}

#[test]
fn a_collector_that_lost_definitions_gets_them_again() {
    let mut ids = SessionIds::new(&welcome(65_536));
    let (_, s1) = stored(1, &[1], 1);
    ids.frames(s1, false).unwrap();
    ids.answered(1, FrameType::Ack, &ack(1, status::STORED, 0));
    let (_, s2) = stored(2, &[1], 1);
    assert_eq!(frames(&ids.frames(s2.clone(), false).unwrap()).len(), 1);
    ids.answered(
        2,
        FrameType::Ack,
        &ack(2, status::REJECTED, reason::UNKNOWN_SERIES_ID),
    );
    let f = frames(&ids.frames(s2, false).unwrap());
    assert_eq!(f[0].0, FrameType::Definitions);
}

#[test]
fn batches_past_the_bounds_go_self_contained() {
    // The collector's bound (3 ids) is below the agent's.
    let mut ids = SessionIds::new(&welcome(3));
    let (_, s1) = stored(1, &[1, 2], 1);
    assert_eq!(
        frames(&ids.frames(s1, true).unwrap())[1].0,
        FrameType::CompactBatch
    );
    let (b2, s2) = stored(2, &[3, 4], 1);
    let f2 = frames(&ids.frames(s2, true).unwrap());
    assert_eq!(f2.len(), 1);
    assert_eq!(f2[0].0, FrameType::Batch);
    same_readings(&resolve(&mut Collector::default(), &f2), &b2);
    // Refused as SERIES_IDS_FULL: that batch goes self-contained.
    let (_, s3) = stored(3, &[1], 1);
    ids.frames(s3.clone(), true).unwrap();
    ids.answered(
        3,
        FrameType::Ack,
        &ack(3, status::REJECTED, reason::SERIES_IDS_FULL),
    );
    assert_eq!(
        frames(&ids.frames(s3, true).unwrap())[0].0,
        FrameType::Batch
    );
    // A large batch keeps its layout.
    let (_, big) = stored(4, &[1], MAX_COMPACT_READINGS + 1);
    assert_eq!(
        frames(&ids.frames(big, true).unwrap())[0].0,
        FrameType::Batch
    );
    // A salvaged batch is sent as it is.
    let (_, mut salvaged) = stored(5, &[1], 1);
    salvaged.wire_seq = 77;
    assert_eq!(
        frames(&ids.frames(salvaged, true).unwrap())[0].0,
        FrameType::Batch
    );
    // A revision-3 collector: never compact.
    let mut old = SessionIds::new(&welcome(0));
    let (_, s) = stored(6, &[1], 1);
    assert_eq!(frames(&old.frames(s, true).unwrap())[0].0, FrameType::Batch);
    assert!(old.is_empty());
}

/// Batch `seq` with one reading of each of `devs`, dev `d` at
/// `20 + d / 100 + seq / 100` (a slow walk, stored zstd).
fn walk(seq: u64, devs: &[u32]) -> (Batch, StoredBatch) {
    let mut b = Batch {
        seq,
        created_ns: 1_700_000_000_000_000_000,
        epoch: 5,
        ..Batch::default()
    };
    for (i, &d) in devs.iter().enumerate() {
        b.series.push(key(d));
        let r = [Reading {
            ts_ns: 1_700_000_000_000_000_000 + seq as i64 * 1_000_000,
            value: (2000 + d as i64 + seq as i64) as f64 / 100.0,
        }];
        b.blocks.push(ReadingBlock::encode(i as u32, &r));
    }
    let body = zstd::bulk::compress(&codec::to_vec(&b).unwrap(), 1).unwrap();
    let s = StoredBatch {
        seq,
        wire_seq: seq,
        codec: compression::ZSTD,
        body,
    };
    (b, s)
}

/// Sends batch `seq` of `devs`: the compact batch's (ref_base, ref_sets),
/// checked against what the collector resolves.
fn send(ids: &mut SessionIds, collector: &mut Collector, seq: u64, devs: &[u32]) -> (u64, u64) {
    let (b, s) = walk(seq, devs);
    let f = frames(&ids.frames(s, true).unwrap());
    let (back, c) = try_resolve(collector, &f).unwrap();
    same_readings(&back, &b);
    let c = c.expect("compact");
    (c.ref_base, c.ref_sets)
}

#[test]
fn values_are_coded_against_generations_the_collector_confirmed() {
    let mut ids = SessionIds::new(&welcome(65_536));
    let mut collector = Collector::default();
    let stored = |ids: &mut SessionIds, seq| {
        ids.answered(seq, FrameType::Ack, &ack(seq, status::STORED, 0));
    };
    // Batch 1 sets generation 1 on top of none; batch 2 goes before its
    // answer, coded against none and setting nothing.
    assert_eq!(send(&mut ids, &mut collector, 1, &[1, 2]), (0, 1));
    assert_eq!(send(&mut ids, &mut collector, 2, &[1, 2, 3]), (0, 0));
    stored(&mut ids, 1);
    assert_eq!(ids.refs.latest(), 1);
    // Against generation 1, setting 2.
    assert_eq!(send(&mut ids, &mut collector, 3, &[2, 3]), (1, 2));
    stored(&mut ids, 2);
    assert_eq!(send(&mut ids, &mut collector, 4, &[1, 3]), (1, 0));
    stored(&mut ids, 3);
    assert_eq!(ids.refs.latest(), 2);
    // Batch 4, in flight, is coded against generation 1, which setting 3
    // would push out of the collector's two: no setting until it is
    // answered.
    assert_eq!(send(&mut ids, &mut collector, 5, &[1, 2, 3]), (2, 0));
    stored(&mut ids, 4);
    assert_eq!(send(&mut ids, &mut collector, 6, &[1, 2, 3]), (2, 3));
    // A duplicate answer confirms as stored does.
    ids.answered(6, FrameType::Ack, &ack(6, status::DUPLICATE, 0));
    assert_eq!(ids.refs.latest(), 3);
    assert_eq!(ids.refs.resets(), 0);
}

#[test]
fn an_unknown_reference_starts_the_references_afresh() {
    let mut ids = SessionIds::new(&welcome(65_536));
    let mut collector = Collector::default();
    assert_eq!(send(&mut ids, &mut collector, 1, &[1, 2]), (0, 1));
    ids.answered(1, FrameType::Ack, &ack(1, status::STORED, 0));
    // Batch 2 sets generation 2; the collector applies it but its answer
    // is a transient refusal (it could not commit): the agent cannot know.
    assert_eq!(send(&mut ids, &mut collector, 2, &[1, 2]), (1, 2));
    ids.answered(
        2,
        FrameType::Ack,
        &ack(2, status::REJECTED, reason::STORAGE),
    );
    assert_eq!(ids.refs.latest(), 1);
    // Batch 3 sets generation 3 on top of 1, which is not the
    // collector's latest: refused.
    let (_, s3) = walk(3, &[1, 2]);
    let f3 = frames(&ids.frames(s3, true).unwrap());
    assert_eq!(
        try_resolve(&mut collector, &f3).unwrap_err(),
        CompactError::UnknownReference(1)
    );
    // Batch 4 goes before that answer, coded against 1 (setting nothing);
    // it reaches the collector late.
    let (b4, s4) = walk(4, &[1]);
    let f4 = frames(&ids.frames(s4.clone(), true).unwrap());
    ids.answered(
        3,
        FrameType::Ack,
        &ack(3, status::REJECTED, reason::UNKNOWN_REFERENCE),
    );
    assert_eq!((ids.refs.latest(), ids.refs.resets()), (0, 1));
    // Batch 5: coded against none, setting a fresh generation.
    assert_eq!(send(&mut ids, &mut collector, 5, &[1, 2]), (0, 4));
    // Batch 4, coded against the forgotten references, is refused now;
    // that does not start afresh again.
    assert_eq!(
        try_resolve(&mut collector, &f4).unwrap_err(),
        CompactError::UnknownReference(1)
    );
    ids.answered(
        4,
        FrameType::Ack,
        &ack(4, status::REJECTED, reason::UNKNOWN_REFERENCE),
    );
    assert_eq!(ids.refs.resets(), 1);
    ids.answered(5, FrameType::Ack, &ack(5, status::STORED, 0));
    // Resent, batch 4 is coded against generation 4 and resolves.
    let f4 = frames(&ids.frames(s4, true).unwrap());
    let (back, c) = try_resolve(&mut collector, &f4).unwrap();
    same_readings(&back, &b4);
    let c = c.unwrap();
    assert_eq!((c.ref_base, c.ref_sets), (4, 5));
}

#[test]
fn a_revision_4_collector_gets_no_references() {
    let mut ids = SessionIds::new(&Welcome {
        reference_generations: 0,
        ..welcome(65_536)
    });
    let mut collector = Collector::default();
    assert_eq!(send(&mut ids, &mut collector, 1, &[1, 2]), (0, 0));
    ids.answered(1, FrameType::Ack, &ack(1, status::STORED, 0));
    assert_eq!(send(&mut ids, &mut collector, 2, &[1, 2]), (0, 0));
    // Fields 7 and 8 are 0: a revision-4 collector, which ignores them,
    // reads the batch as it was written.
    let (b, s) = walk(3, &[1, 2]);
    let f = frames(&ids.frames(s, true).unwrap());
    let c: CompactBatch = codec::from_bytes("CompactBatch", &f[0].1).unwrap();
    let keys = &collector.keys;
    same_readings(&c.resolve(|id| keys.get(&id).cloned()).unwrap(), &b);
}
