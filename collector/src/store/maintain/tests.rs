//! Tests of the maintenance plan and passes (`super`).

use super::*;

#[test]
fn plan_follows_the_clock() {
    let cfg = StorageConfig {
        raw_retention: Duration::from_secs(10),
        downsample_window: Duration::from_secs(2),
        aggregate_retention: Duration::ZERO,
        max_bytes: 5,
        ..StorageConfig::default()
    };
    let now = 1_000_000_000_000;
    let plan = RetentionPlan::at(now, &cfg);
    assert_eq!(plan.raw_before, Some(now - 10_000_000_000));
    assert_eq!(plan.downsample_len, 2_000_000_000);
    assert_eq!(plan.aggregates_before, None);
    assert_eq!(plan.max_bytes, Some(5));
    assert_eq!(plan.compact_before, now - COMPACT_SETTLE_NS);
}

/// Chunks of a store written before compaction compressed them are
/// plain MessagePack: they read back, merge with late readings in
/// compaction (re-encoded compressed), and downsample, bit for bit.
#[test]
fn plain_chunks_of_older_stores_read_compact_and_downsample() {
    use std::sync::Arc;

    use ferry_proto::batch::{Batch, ReadingBlock};
    use ferry_proto::series::SeriesKey;

    use crate::config::{Limits, QueryLimits};
    use crate::store::Want;

    const SEC: i64 = 1_000_000_000;
    let h = CHUNK_SPAN_NS;
    let t0 = 1_700_000_000_000_000_000 / h * h;
    let r = |s: i64, value: f64| Reading {
        ts_ns: t0 + s * SEC,
        value,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.redb")).unwrap();
    let mut state = store.writer_state().unwrap();
    let agent: Arc<str> = Arc::from("gw-1");
    let limits = Limits {
        max_past: Duration::from_secs(86_400),
        ..Limits::default()
    };
    let ingest = |state: &mut WriterState, seq: u64, rs: &[Reading]| {
        let batch = Batch {
            seq,
            created_ns: t0,
            series: vec![SeriesKey::new("level", [("tank", "1")]).unwrap()],
            blocks: vec![ReadingBlock::encode(0, rs)],
            ..Batch::default()
        };
        let prepared = crate::ingest::prepare(&agent, "test", &batch, &limits, t0 + 3 * h).unwrap();
        store
            .apply_group(state, &[prepared], 10, t0 + 3 * h)
            .unwrap();
    };
    // The series, and readings of the third hour, staged.
    let staged: Vec<Reading> = (7200..7800).map(|s| r(s, 3.5)).collect();
    ingest(&mut state, 1, &staged);
    let sid = store.series_keys().unwrap()[0].0;
    // What an older compaction wrote: plain chunks, a full one and a
    // float one in the first hour, a short one in the second.
    let full: Vec<Reading> = (0..1024)
        .map(|s| r(s, f64::from(2000 + (s as i32 * 7) % 11) / 100.0))
        .collect();
    let floats: Vec<Reading> = (1024..1100)
        .map(|s| {
            r(
                s,
                if s % 2 == 0 {
                    f64::NAN
                } else {
                    (s as f64).sqrt()
                },
            )
        })
        .collect();
    let second: Vec<Reading> = (3600..3900).map(|s| r(s, 21.25)).collect();
    state.begin();
    let txn = store.db().begin_write().unwrap();
    for (bucket, rs) in [(t0, &full), (t0, &floats), (t0 + h, &second)] {
        let bytes = chunk::encode(&ReadingBlock::encode(0, rs));
        assert_ne!(bytes[0], 0xC1);
        state.insert_chunk(&txn, sid, bucket, &bytes);
    }
    state.save_counters(&txn).unwrap();
    txn.commit().unwrap();

    let bits = |rs: &[Reading]| -> Vec<(i64, u64)> {
        rs.iter().map(|r| (r.ts_ns, r.value.to_bits())).collect()
    };
    let read = |store: &Store| {
        let want = Want {
            id: sid,
            raw: true,
            windows: true,
        };
        let mut out = store
            .read_series(&[want], t0, t0 + 4 * h, 0, &QueryLimits::default())
            .unwrap();
        out.remove(&sid).unwrap()
    };
    let mut expected: Vec<Reading> = [&full[..], &floats, &second, &staged].concat();
    assert_eq!(bits(&read(&store).readings), bits(&expected));

    // Late readings of the second hour: compaction merges them with
    // the short plain chunk; the first hour is left as it was.
    let late: Vec<Reading> = (3900..3950).map(|s| r(s, 21.5)).collect();
    ingest(&mut state, 2, &late);
    let plan = RetentionPlan {
        raw_before: None,
        downsample_len: 60 * SEC as u64,
        aggregates_before: None,
        max_bytes: None,
        compact_before: t0 + 4 * h,
    };
    store.maintain(&mut state, &plan).unwrap();
    let txn = store.db().begin_read().unwrap();
    let tags: Vec<(i64, bool)> = txn
        .open_table(CHUNKS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value().1, v.value()[0] == 0xC1)
        })
        .collect();
    drop(txn);
    assert_eq!(
        tags,
        vec![(t0, false), (t0, false), (t0 + h, true), (t0 + 2 * h, true)]
    );
    expected = [&full[..], &floats, &second, &late, &staged].concat();
    assert_eq!(bits(&read(&store).readings), bits(&expected));
    assert_eq!(
        store.chunk_bytes().unwrap(),
        store.footprint().unwrap().chunk_payload
    );

    // Downsampling the first hour reads its plain chunks.
    let plan = RetentionPlan {
        raw_before: Some(t0 + h),
        ..plan
    };
    let report = store.maintain(&mut state, &plan).unwrap();
    assert_eq!(report.downsampled_chunks, 2);
    let data = read(&store);
    assert_eq!(
        bits(&data.readings),
        bits(&[&second[..], &late, &staged].concat())
    );
    let counted: u64 = data.windows.iter().map(|w| w.count).sum();
    assert_eq!(counted, 1100);
    assert_eq!(data.windows.len(), 19);
}
