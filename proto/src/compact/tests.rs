use super::*;
use alloc::collections::BTreeMap;
use alloc::string::ToString;
use alloc::vec;
use proptest::prelude::*;

fn key(n: u32) -> SeriesKey {
    SeriesKey::new("temperature", [("device", alloc::format!("d{n:03}"))]).unwrap()
}

fn batch(runs: &[(u32, Vec<Reading>)]) -> Batch {
    Batch {
        seq: 7,
        created_ns: 1_700_000_000_000_000_000,
        series: runs.iter().map(|(i, _)| key(*i)).collect(),
        blocks: runs
            .iter()
            .enumerate()
            .map(|(i, (_, r))| ReadingBlock::encode(i as u32, r))
            .collect(),
        epoch: 9,
        ..Batch::default()
    }
}

fn readings(t0: i64, step: i64, values: &[f64]) -> Vec<Reading> {
    values
        .iter()
        .enumerate()
        .map(|(i, &value)| Reading {
            ts_ns: t0 + i as i64 * step,
            value,
        })
        .collect()
}

/// Every reading of `b`, per series key, in order.
fn by_key(b: &Batch) -> BTreeMap<SeriesKey, Vec<(i64, u64)>> {
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

#[test]
fn columns_of_a_regular_batch_are_small_repeated_integers() {
    let t = 1_700_000_000_000_000_000;
    let b = batch(&[
        (3, readings(t, 1_000_000, &[21.5, 21.52, 21.49])),
        (4, readings(t, 1_000_000, &[19.0, 19.01, 19.02])),
    ]);
    let ids = [10, 11];
    let c = CompactBatch::from_batch(&b, &ids).unwrap();
    assert_eq!(c.readings.ids, vec![10, 1]);
    assert_eq!(c.readings.counts, vec![3, 3]);
    assert_eq!(c.readings.starts, vec![t, 0]);
    assert_eq!(c.readings.dods, vec![1_000_000, 0, 1_000_000, 0]);
    assert_eq!(
        c.readings.values,
        Values::Decimal(crate::batch::DecimalValues {
            scale: 2,
            deltas: vec![2150, 2, -3, -249, 1, 1]
        })
    );
    let back = c
        .resolve(|id| {
            ids.iter()
                .position(|&i| i == id)
                .map(|i| b.series[i].clone())
        })
        .unwrap();
    assert_eq!(back, b);
}

#[test]
fn unknown_ids_are_named() {
    let b = batch(&[(1, readings(5, 1, &[1.0]))]);
    let c = CompactBatch::from_batch(&b, &[42]).unwrap();
    assert_eq!(c.resolve(|_| None), Err(CompactError::UnknownId(42)));
    assert_eq!(c.series_ids().unwrap(), vec![42]);
}

#[test]
fn broken_columns_are_errors_not_panics() {
    let good = CompactBatch::from_batch(
        &batch(&[
            (1, readings(5, 1, &[1.0, 2.0])),
            (2, readings(5, 1, &[3.0])),
        ]),
        &[1, 2],
    )
    .unwrap();
    let any = |_| Some(key(0));
    let mut c = good.clone();
    c.readings.ids = vec![1, 0];
    assert_eq!(c.resolve(any), Err(CompactError::IdOrder { at: 1 }));
    let mut c = good.clone();
    c.readings.ids = vec![u32::MAX, 1];
    assert_eq!(c.resolve(any), Err(CompactError::IdOrder { at: 1 }));
    let mut c = good.clone();
    c.readings.counts = vec![2, 0];
    assert_eq!(c.resolve(any), Err(CompactError::EmptySeries { id: 1 }));
    let mut c = good.clone();
    c.readings.counts = vec![2];
    assert!(matches!(
        c.resolve(any),
        Err(CompactError::Length { what: "counts", .. })
    ));
    let mut c = good.clone();
    c.readings.counts = vec![u32::MAX, u32::MAX];
    assert!(matches!(
        c.resolve(any),
        Err(CompactError::Length { what: "values", .. })
    ));
    let mut c = good.clone();
    c.readings.dods.clear();
    assert!(matches!(
        c.resolve(any),
        Err(CompactError::Length { what: "dods", .. })
    ));
    let mut c = good.clone();
    c.readings.values = Values::Decimal(crate::batch::DecimalValues {
        scale: 0,
        deltas: vec![i64::MAX, 1, 1],
    });
    assert!(matches!(
        c.resolve(any),
        Err(CompactError::Values(BlockError::Overflow { at: 1 }))
    ));
    let mut c = good.clone();
    c.readings.values = Values::Decimal(crate::batch::DecimalValues {
        scale: 12,
        deltas: vec![1, 1, 1],
    });
    assert!(matches!(
        c.resolve(any),
        Err(CompactError::Values(BlockError::BadScale { scale: 12 }))
    ));
    let mut c = good.clone();
    c.aggregates.push(WindowAggregate {
        series: 99,
        start_ns: 0,
        len_ns: 0,
        count: 1,
        sum: 1.0,
        min: 1.0,
        max: 1.0,
        first: 1.0,
        last: 1.0,
        sketch: None,
    });
    assert_eq!(
        c.resolve(|id| (id != 99).then(|| key(id))),
        Err(CompactError::UnknownId(99))
    );
    assert!(matches!(
        c.resolve(|id| Some(key(id))),
        Err(CompactError::Batch(_))
    ));
}

#[test]
fn definitions_pair_up_and_never_repeat_an_id() {
    let d = Definitions {
        ids: vec![1, 2],
        keys: vec![key(1), key(2)],
    };
    assert_eq!(d.validate(), Ok(()));
    let mut bad = d.clone();
    bad.ids = vec![1, 1];
    assert_eq!(bad.validate(), Err(CompactError::Redefined { id: 1 }));
    let mut bad = d.clone();
    bad.keys.pop();
    assert!(matches!(bad.validate(), Err(CompactError::Length { .. })));
    let mut bad = d;
    bad.keys[0].metric = "9x".to_string();
    assert!(matches!(
        bad.validate(),
        Err(CompactError::Series { id: 1, .. })
    ));
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-100_000i64..100_000, 0u32..4).prop_map(|(n, s)| n as f64 / 10f64.powi(s as i32)),
        any::<f64>(),
    ]
}

proptest! {
    #[test]
    fn compact_batches_resolve_to_the_same_readings(
        series in proptest::collection::btree_map(
            0u32..5_000,
            proptest::collection::vec((any::<i64>(), value()), 1..8),
            1..20,
        ),
        ids in proptest::collection::vec(any::<u32>(), 20),
    ) {
        let runs: Vec<(u32, Vec<Reading>)> = series
            .iter()
            .map(|(&n, rs)| (n, rs.iter().map(|&(ts_ns, value)| Reading { ts_ns, value }).collect()))
            .collect();
        let b = batch(&runs);
        let mut ids: Vec<u32> = ids;
        ids.sort_unstable();
        ids.dedup();
        prop_assume!(ids.len() >= runs.len());
        let ids = &ids[..runs.len()];
        let c = CompactBatch::from_batch(&b, ids).unwrap();
        let bytes = crate::codec::to_vec(&c).unwrap();
        let c: CompactBatch = crate::codec::from_bytes("CompactBatch", &bytes).unwrap();
        let back = c
            .resolve(|id| ids.iter().position(|&i| i == id).map(|i| b.series[i].clone()))
            .unwrap();
        prop_assert_eq!(by_key(&back), by_key(&b));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(c) = crate::codec::from_bytes::<CompactBatch>("CompactBatch", &bytes) {
            let _ = c.resolve(|id| Some(key(id)));
        }
        if let Ok(d) = crate::codec::from_bytes::<Definitions>("Definitions", &bytes) {
            let _ = d.validate();
        }
    }
}
