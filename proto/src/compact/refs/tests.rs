use super::*;
use crate::batch::{Reading, ReadingBlock};
use alloc::collections::BTreeMap;
use alloc::vec;
use proptest::prelude::*;

fn key(n: u32) -> SeriesKey {
    SeriesKey::new("temperature", [("device", alloc::format!("d{n:03}"))]).unwrap()
}

/// A batch of `runs` (series key `key(id)`, dictionary in run order) and
/// the ids of its dictionary.
fn batch(seq: u64, runs: &[(u32, Vec<Reading>)]) -> (Batch, Vec<u32>) {
    let b = Batch {
        seq,
        created_ns: 1_700_000_000_000_000_000,
        series: runs.iter().map(|(i, _)| key(*i)).collect(),
        blocks: runs
            .iter()
            .enumerate()
            .map(|(i, (_, r))| ReadingBlock::encode(i as u32, r))
            .collect(),
        ..Batch::default()
    };
    (b, runs.iter().map(|(i, _)| *i).collect())
}

fn one(id: u32, values: &[f64]) -> (u32, Vec<Reading>) {
    let readings = values
        .iter()
        .enumerate()
        .map(|(i, &value)| Reading {
            ts_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000_000,
            value,
        })
        .collect();
    (id, readings)
}

fn bits(b: &Batch) -> BTreeMap<SeriesKey, Vec<(i64, u64)>> {
    let mut out: BTreeMap<SeriesKey, Vec<(i64, u64)>> = BTreeMap::new();
    for block in &b.blocks {
        let k = b.series[block.series as usize].clone();
        for r in block.readings().unwrap() {
            out.entry(k.clone())
                .or_default()
                .push((r.ts_ns, r.value.to_bits()));
        }
    }
    out
}

/// Per series id its two references, values as bits.
type Slots = Vec<(u32, [(u64, u64); 2])>;

/// The references bit for bit (NaN payloads included).
fn state(r: &References) -> (u64, u64, Slots) {
    let values = r
        .values
        .iter()
        .map(|(&id, s)| (id, [(s[0].0, s[0].1.to_bits()), (s[1].0, s[1].1.to_bits())]))
        .collect();
    (r.latest, r.previous, values)
}

fn roundtrip(c: &CompactBatch) -> CompactBatch {
    let bytes = crate::codec::to_vec(c).unwrap();
    crate::codec::from_bytes("CompactBatch", &bytes).unwrap()
}

#[test]
fn values_are_coded_against_their_series_reference() {
    let mut agent = References::default();
    let mut collector = References::default();
    // Generation 1 on top of none: coded as revision 4, sets references.
    let (b, ids) = batch(1, &[one(1, &[21.5, 21.52]), one(2, &[40.5])]);
    let (c, last) = agent.encode(&b, &ids, 1).unwrap();
    assert_eq!((c.ref_base, c.ref_sets), (0, 1));
    assert_eq!(last, vec![(1, 21.52), (2, 40.5)]);
    assert_eq!(
        bits(
            &collector
                .resolve(&roundtrip(&c), |id| Some(key(id)))
                .unwrap()
        ),
        bits(&b)
    );
    assert_eq!(collector.latest(), 1);
    // The agent learns the generation from the ack.
    agent.set(c.ref_base, c.ref_sets, &last).unwrap();
    assert_eq!(state(&agent), state(&collector));
    // Against generation 1: each series starts from its own reference.
    let (b, ids) = batch(2, &[one(1, &[21.49]), one(2, &[40.25]), one(3, &[7.0])]);
    let (c, _) = agent.encode(&b, &ids, 0).unwrap();
    assert_eq!(c.ref_base, 1);
    assert_eq!(
        c.readings.values,
        Values::Decimal(DecimalValues {
            scale: 2,
            deltas: vec![-3, -25, 700 - 4025]
        })
    );
    assert_eq!(
        bits(
            &collector
                .resolve(&roundtrip(&c), |id| Some(key(id)))
                .unwrap()
        ),
        bits(&b)
    );
    // Without the references, the same batch is unknown (transient).
    assert_eq!(
        c.resolve(|id| Some(key(id))),
        Err(CompactError::UnknownReference(1))
    );
    assert_eq!(
        References::default().resolve(&c, |id| Some(key(id))),
        Err(CompactError::UnknownReference(1))
    );
}

#[test]
fn two_generations_are_kept_and_older_ones_refused() {
    let mut r = References::default();
    r.set(0, 1, &[(1, 1.0), (2, 2.0)]).unwrap();
    r.set(1, 2, &[(1, 1.5)]).unwrap();
    assert_eq!((r.latest(), r.previous()), (2, 1));
    assert_eq!(r.reference(1, 2), Some(1.5));
    assert_eq!(r.reference(1, 1), Some(1.0));
    assert_eq!(r.reference(2, 2), Some(2.0));
    assert_eq!(r.reference(3, 2), None);
    assert_eq!(r.reference(1, 0), None);
    r.set(2, 3, &[(1, 1.75)]).unwrap();
    // Generation 1 is gone: a batch naming it is refused.
    assert_eq!(r.check(1, 0), Err(CompactError::UnknownReference(1)));
    assert_eq!(r.reference(1, 2), Some(1.5));
    assert_eq!(r.reference(1, 3), Some(1.75));
    // Setting on top of the previous generation, or reusing a generation.
    assert_eq!(r.check(2, 4), Err(CompactError::UnknownReference(2)));
    assert_eq!(
        r.check(3, 3),
        Err(CompactError::Generation { sets: 3, latest: 3 })
    );
    // On top of none: afresh.
    r.set(0, 9, &[(2, 8.0)]).unwrap();
    assert_eq!((r.latest(), r.previous(), r.len()), (9, 0, 1));
    assert_eq!(r.check(3, 0), Err(CompactError::UnknownReference(3)));
}

#[test]
fn references_without_an_exact_decimal_fall_back_to_the_running_sum() {
    let mut r = References::default();
    // A NaN, −0.0, a reference finer than the column's scale, infinity.
    r.set(
        0,
        1,
        &[(1, f64::NAN), (2, -0.0), (3, 0.125), (4, f64::INFINITY)],
    )
    .unwrap();
    let (b, ids) = batch(
        1,
        &[
            one(1, &[1.5]),
            one(2, &[2.5]),
            one(3, &[3.5]),
            one(4, &[4.5]),
        ],
    );
    let (c, _) = r.encode(&b, &ids, 0).unwrap();
    assert_eq!(
        c.readings.values,
        Values::Decimal(DecimalValues {
            scale: 1,
            deltas: vec![15, 10, 10, 10]
        })
    );
    let mut collector = r.clone();
    assert_eq!(
        bits(&collector.resolve(&c, |id| Some(key(id))).unwrap()),
        bits(&b)
    );
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-100_000i64..100_000, 0u32..4).prop_map(|(n, s)| n as f64 / 10f64.powi(s as i32)),
        any::<f64>(),
        Just(-0.0),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        any::<u64>().prop_map(|p| f64::from_bits(0x7ff8_0000_0000_0000 | (p >> 13))),
    ]
}

fn runs() -> impl Strategy<Value = Vec<(u32, Vec<Reading>)>> {
    proptest::collection::btree_map(
        0u32..64,
        proptest::collection::vec((any::<i64>(), value()), 1..5),
        1..12,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(id, rs)| {
                let rs = rs
                    .into_iter()
                    .map(|(ts_ns, value)| Reading { ts_ns, value })
                    .collect();
                (id, rs)
            })
            .collect()
    })
}

proptest! {
    /// A session of batches, each setting a generation or not, and acked
    /// at once: the collector gives back every reading bit for bit, and
    /// both sides hold the same references.
    #[test]
    fn a_session_resolves_the_same_readings(
        session in proptest::collection::vec((runs(), any::<bool>()), 1..6),
    ) {
        let mut agent = References::default();
        let mut collector = References::default();
        for (n, (runs, setter)) in session.iter().enumerate() {
            let (b, ids) = batch(n as u64 + 1, runs);
            let sets = if *setter { n as u64 + 1 } else { 0 };
            let (c, last) = agent.encode(&b, &ids, sets).unwrap();
            let back = collector.resolve(&roundtrip(&c), |id| Some(key(id))).unwrap();
            prop_assert_eq!(bits(&back), bits(&b));
            agent.set(c.ref_base, c.ref_sets, &last).unwrap();
            prop_assert_eq!(state(&agent), state(&collector));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        refs in proptest::collection::vec((0u32..8, value()), 0..8),
    ) {
        let mut r = References::default();
        r.set(0, 1, &refs).unwrap();
        if let Ok(c) = crate::codec::from_bytes::<CompactBatch>("CompactBatch", &bytes) {
            let _ = r.resolve(&c, |id| Some(key(id)));
        }
    }
}
