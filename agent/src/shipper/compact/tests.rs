use super::*;
use ferry_proto::batch::{Reading, ReadingBlock};
use ferry_proto::stream::Parsed;

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
    }
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

/// Resolves the frames as a collector would, with the definitions it
/// learnt so far in `session`.
fn resolve(session: &mut HashMap<u32, SeriesKey>, fs: &[(FrameType, Vec<u8>)]) -> Batch {
    for (t, body) in fs {
        match t {
            FrameType::Definitions => {
                let d: Definitions = codec::from_bytes("Definitions", body).unwrap();
                d.validate().unwrap();
                session.extend(d.ids.into_iter().zip(d.keys));
            }
            FrameType::CompactBatch => {
                let c: CompactBatch = codec::from_bytes("CompactBatch", body).unwrap();
                return c.resolve(|id| session.get(&id).cloned()).unwrap();
            }
            FrameType::Batch => return codec::from_bytes("Batch", body).unwrap(),
            other => panic!("{other:?}"),
        }
    }
    panic!("no batch frame")
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
    let mut collector = HashMap::new();
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
    same_readings(&resolve(&mut HashMap::new(), &f2), &b2);
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
