//! The store without sockets: compaction, downsampling, retention by age
//! and by size, under a fake clock (plans are computed from a given `now`).

use std::sync::Arc;
use std::time::Duration;

use ferry_collector::config::{Limits, StorageConfig};
use ferry_collector::ingest::prepare;
use ferry_collector::query::{QueryParams, Selector};
use ferry_collector::store::{Applied, RetentionPlan, Store};
use ferry_proto::batch::{Batch, Reading, ReadingBlock};
use ferry_proto::series::SeriesKey;

const T0: i64 = 1_700_000_000_000_000_000 - 1_700_000_000_000_000_000 % 3_600_000_000_000;
const SEC: i64 = 1_000_000_000;

fn one_series_batch(seq: u64, readings: &[Reading]) -> Batch {
    Batch {
        seq,
        created_ns: T0,
        series: vec![SeriesKey::new("level", [("tank", "1")]).unwrap()],
        blocks: vec![ReadingBlock::encode(0, readings)],
        ..Batch::default()
    }
}

fn store_with(
    batches: &[Batch],
) -> (
    tempfile::TempDir,
    Store,
    ferry_collector::store::WriterState,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.redb")).unwrap();
    let mut state = store.writer_state().unwrap();
    let agent: Arc<str> = Arc::from("gw-1");
    let limits = Limits {
        max_past: Duration::from_secs(86_400 * 365),
        max_future: Duration::from_secs(86_400),
        ..Limits::default()
    };
    let prepared: Vec<_> = batches
        .iter()
        .map(|b| prepare(&agent, "test", b, &limits, T0).unwrap())
        .collect();
    let applied = store.apply_group(&mut state, &prepared, 1000, T0).unwrap();
    assert!(
        applied
            .iter()
            .all(|a| matches!(a, Applied::Stored { refused, .. } if refused.is_empty())),
        "{applied:?}"
    );
    (dir, store, state)
}

fn all(store: &Store, kind: &str, step: Option<&str>) -> ferry_collector::store::SeriesResult {
    let q = QueryParams {
        selector: Some("level".into()),
        from: Some((T0 - 86_400 * SEC).to_string()),
        to: Some((T0 + 86_400 * SEC).to_string()),
        step: step.map(str::to_owned),
        kind: Some(kind.into()),
    }
    .resolve(T0)
    .unwrap();
    let mut r = store.query(&q).unwrap();
    assert_eq!(r.len(), 1);
    r.remove(0)
}

/// A plan that compacts the bucket of `T0` (settled three hours later) and
/// does nothing else.
fn compaction_only() -> RetentionPlan {
    RetentionPlan {
        raw_before: None,
        downsample_len: 60 * SEC as u64,
        aggregates_before: None,
        max_bytes: None,
        compact_before: T0 + 3 * 3_600 * SEC,
    }
}

fn readings(range: std::ops::Range<i64>) -> Vec<Reading> {
    range
        .map(|i| Reading {
            ts_ns: T0 + i * SEC,
            value: 10.0 + (i % 7) as f64 * 0.5,
        })
        .collect()
}

#[test]
fn small_chunks_of_a_settled_bucket_are_compacted_into_one() {
    let (_dir, store, mut state) = store_with(&[
        one_series_batch(1, &readings(0..10)),
        one_series_batch(2, &readings(20..30)),
        one_series_batch(3, &readings(10..20)),
    ]);
    let before = all(&store, "raw", None).readings;
    let bytes_before = store.chunk_bytes().unwrap();
    let plan = compaction_only();
    let report = store.maintain(&mut state, &plan).unwrap();
    assert_eq!(report.compacted_chunks, 3);
    let after = all(&store, "raw", None).readings;
    assert_eq!(after, before);
    assert_eq!(after.len(), 30);
    assert!(after.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(store.chunk_bytes().unwrap() < bytes_before);
    // Nothing left to do.
    assert_eq!(
        store.maintain(&mut state, &plan).unwrap().compacted_chunks,
        0
    );
}

#[test]
fn old_readings_are_downsampled_into_windows_with_sketches() {
    let rs = readings(0..120);
    let (_dir, store, mut state) = store_with(&[one_series_batch(1, &rs)]);
    let cfg = StorageConfig {
        raw_retention: Duration::from_secs(3_600),
        downsample_window: Duration::from_secs(60),
        aggregate_retention: Duration::ZERO,
        ..StorageConfig::default()
    };
    // Fake clock: three hours later, the bucket of T0 is past retention.
    let plan = RetentionPlan::at(T0 + 3 * 3_600 * SEC, &cfg);
    let report = store.maintain(&mut state, &plan).unwrap();
    assert_eq!(report.downsampled_chunks, 1);
    assert_eq!(store.chunk_bytes().unwrap(), 0);
    let r = all(&store, "all", None);
    assert!(r.readings.is_empty());
    assert_eq!(r.windows.len(), 2);
    for (w, part) in r.windows.iter().zip(rs.chunks(60)) {
        assert_eq!(w.count, 60);
        assert_eq!(w.len_ns, 60 * SEC as u64);
        assert_eq!(w.sum, part.iter().map(|r| r.value).sum::<f64>());
        assert_eq!(w.first, part[0].value);
        assert_eq!(w.last, part[59].value);
        assert_eq!(w.min, 10.0);
        assert_eq!(w.max, 13.0);
        let p50 = w.p50.unwrap();
        assert!((p50 - 11.5).abs() <= 11.5 * 0.01, "{p50}");
    }
    // Re-bucketed into 2 minutes: one window, sketches merged.
    let r = all(&store, "aggregates", Some("2m"));
    assert_eq!(r.windows.len(), 1);
    assert_eq!(r.windows[0].count, 120);
    assert_eq!(r.windows[0].first, rs[0].value);
    assert_eq!(r.windows[0].last, rs[119].value);

    // Aggregate retention deletes them once they are old enough.
    let cfg = StorageConfig {
        aggregate_retention: Duration::from_secs(86_400),
        ..cfg
    };
    let report = store
        .maintain(&mut state, &RetentionPlan::at(T0 + 2 * 86_400 * SEC, &cfg))
        .unwrap();
    assert_eq!(report.aggregates_deleted, 2);
    let q = QueryParams {
        selector: Some("level".into()),
        from: Some((T0 - SEC).to_string()),
        to: Some((T0 + 86_400 * SEC).to_string()),
        ..QueryParams::default()
    };
    assert!(store.query(&q.resolve(T0).unwrap()).unwrap().is_empty());
    assert_eq!(store.series(&Selector::all()).unwrap().len(), 1);
}

#[test]
fn size_retention_evicts_oldest_chunks_first() {
    let hour = 3_600;
    let (_dir, store, mut state) = store_with(&[
        one_series_batch(1, &readings(0..100)),
        one_series_batch(2, &readings(hour..hour + 100)),
        one_series_batch(3, &readings(2 * hour..2 * hour + 100)),
    ]);
    let total = store.chunk_bytes().unwrap();
    let plan = RetentionPlan {
        raw_before: None,
        downsample_len: 60,
        aggregates_before: None,
        max_bytes: Some(total * 2 / 3),
        compact_before: i64::MIN,
    };
    let report = store.maintain(&mut state, &plan).unwrap();
    assert_eq!(report.chunks_evicted, 1);
    let r = all(&store, "raw", None);
    assert_eq!(r.readings.len(), 200);
    assert_eq!(r.readings[0].0, T0 + hour * SEC);
}

/// Readings of series new to a full store are refused one by one, counted
/// per device; the rest of the batch is stored.
#[test]
fn readings_of_series_past_the_limit_are_refused_and_the_rest_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.redb")).unwrap();
    let mut state = store.writer_state().unwrap();
    let agent: Arc<str> = Arc::from("gw-1");
    let mut b = one_series_batch(1, &readings(0..3));
    b.series
        .push(SeriesKey::new("level", [("device", "d2"), ("tank", "2")]).unwrap());
    b.blocks.push(ReadingBlock::encode(1, &readings(0..4)));
    let p = prepare(&agent, "test", &b, &Limits::default(), T0).unwrap();
    let applied = store
        .apply_group(&mut state, std::slice::from_ref(&p), 1, T0)
        .unwrap();
    assert_eq!(
        applied,
        [Applied::Stored {
            readings: 3,
            refused: vec![ferry_proto::session::Refused {
                code: ferry_proto::session::reason::SERIES_LIMIT,
                readings: 4
            }]
        }]
    );
    assert_eq!(store.series(&Selector::all()).unwrap().len(), 1);
    assert_eq!(
        store.refused().unwrap(),
        [(
            "gw-1".to_owned(),
            "d2".to_owned(),
            ferry_proto::session::reason::SERIES_LIMIT,
            4
        )]
    );
    let agents = store.agents().unwrap();
    assert_eq!((agents[0].readings, agents[0].refused), (3, 4));
    // Sent again: a duplicate, nothing counted twice.
    assert_eq!(
        store.apply_group(&mut state, &[p], 2, T0).unwrap(),
        [Applied::Duplicate]
    );
    assert_eq!(store.refused().unwrap()[0].3, 4);
}

/// Three series in every batch (what agents ship): a query reads the staged
/// bundles and the chunks alike; compaction turns the bundles into one chunk
/// per series and changes no reading; a late batch for a compacted bucket is
/// merged on the next pass.
#[test]
fn staged_bundles_of_many_series_become_per_series_chunks() {
    let tanks = ["1", "2", "3"];
    let batch = |seq: u64, range: std::ops::Range<i64>| Batch {
        seq,
        created_ns: T0,
        series: tanks
            .iter()
            .map(|t| SeriesKey::new("level", [("tank", *t)]).unwrap())
            .collect(),
        blocks: (0..3)
            .map(|i| ReadingBlock::encode(i, &readings(range.clone())))
            .collect(),
        ..Batch::default()
    };
    let (_dir, store, mut state) =
        store_with(&[batch(1, 0..10), batch(2, 20..30), batch(3, 10..20)]);
    let query = |store: &Store| {
        let q = QueryParams {
            selector: Some("level".into()),
            from: Some((T0 - 86_400 * SEC).to_string()),
            to: Some((T0 + 86_400 * SEC).to_string()),
            step: None,
            kind: Some("raw".into()),
        }
        .resolve(T0)
        .unwrap();
        store.query(&q).unwrap()
    };
    let expected: Vec<(i64, f64)> = readings(0..30).iter().map(|r| (r.ts_ns, r.value)).collect();
    let before = query(&store);
    assert_eq!(before.len(), 3);
    for s in &before {
        assert_eq!(s.readings, expected, "{}", s.series);
    }
    let plan = compaction_only();
    // 3 bundles × 3 series.
    assert_eq!(
        store.maintain(&mut state, &plan).unwrap().compacted_chunks,
        9
    );
    assert_eq!(
        store.maintain(&mut state, &plan).unwrap().compacted_chunks,
        0
    );
    let after = query(&store);
    assert_eq!(after.len(), 3);
    for s in &after {
        assert_eq!(s.readings, expected, "{}", s.series);
    }
    // A late batch for the compacted bucket: merged into the series' chunk.
    let late = prepare(
        &Arc::from("gw-1"),
        "test",
        &batch(4, 30..35),
        &Limits {
            max_past: Duration::from_secs(86_400 * 365),
            ..Limits::default()
        },
        T0,
    )
    .unwrap();
    store.apply_group(&mut state, &[late], 1000, T0).unwrap();
    assert_eq!(
        store.maintain(&mut state, &plan).unwrap().compacted_chunks,
        3
    );
    let expected: Vec<(i64, f64)> = readings(0..35).iter().map(|r| (r.ts_ns, r.value)).collect();
    for s in &query(&store) {
        assert_eq!(s.readings, expected, "{}", s.series);
    }
}

/// The event log is written with the batch only while enabled; a
/// processors' commit deletes the handled entries, assigns alert ids,
/// moves the cursor and keeps at most `max_alerts` alerts.
#[test]
fn event_log_and_fanout_commit() {
    use ferry_collector::fanout::{AlertEvent, AlertState};
    use ferry_collector::store::FanoutCommit;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.redb")).unwrap();
    let mut state = store.writer_state().unwrap();
    let agent: Arc<str> = Arc::from("gw-1");
    let limits = Limits {
        max_past: Duration::from_secs(86_400 * 365),
        max_future: Duration::from_secs(86_400),
        ..Limits::default()
    };
    let r = |i: i64| Reading {
        ts_ns: T0 + i * SEC,
        value: i as f64,
    };
    let p = |seq| {
        prepare(
            &agent,
            "test",
            &one_series_batch(seq, &[r(seq as i64)]),
            &limits,
            T0,
        )
        .unwrap()
    };
    store.apply_group(&mut state, &[p(1)], 1000, T0).unwrap();
    assert_eq!(store.fanout_heads().unwrap(), (0, 0));
    state.set_event_log(true);
    store
        .apply_group(&mut state, &[p(2), p(3), p(3)], 1000, T0 + SEC)
        .unwrap();
    assert_eq!(store.fanout_heads().unwrap(), (2, 0));
    let log = store.log_after(0, 10).unwrap();
    assert_eq!(log.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(log[0].1.agent, "gw-1");
    assert_eq!(log[0].1.stored_ns, T0 + SEC);
    assert_eq!(log[0].1.chunks.len(), 1);

    let alert = |subject: &str| AlertEvent {
        id: 0,
        rule: "threshold/t".into(),
        state: AlertState::Firing,
        subject: subject.into(),
        value: 1.0,
        ts_ns: T0,
        since_ns: T0,
        emitted_ns: T0,
        message: String::new(),
    };
    let (alerts, cursor) = store
        .commit_fanout(FanoutCommit {
            cursor: 1,
            handled: 1,
            alerts: vec![alert("a"), alert("b"), alert("c")],
            max_alerts: 2,
            // The writer sets the floor: every subscriber of the log (here
            // the processors alone) has passed entry 1.
            log_floor: 1,
            ..FanoutCommit::default()
        })
        .unwrap();
    assert_eq!(
        alerts.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!((cursor.seq, cursor.handled), (1, 1));
    assert_eq!(store.fanout_heads().unwrap(), (2, 3));
    assert_eq!(store.log_after(0, 10).unwrap().len(), 1);
    let kept = store.alerts_after(0, 10).unwrap();
    assert_eq!(
        kept.iter()
            .map(|a| (a.id, a.subject.as_str()))
            .collect::<Vec<_>>(),
        vec![(2, "b"), (3, "c")]
    );
    assert_eq!(store.cursors().unwrap()["processors"], cursor);
}

/// A pass is prepared from a snapshot while the writer keeps committing:
/// batches stored between preparing and applying stay staged and are read
/// once; work prepared from an older snapshot than the last applied pass is
/// refused whole, with the counters rolled back.
#[test]
fn maintenance_prepared_off_the_writer_keeps_batches_committed_meanwhile() {
    let (_dir, store, mut state) = store_with(&[
        one_series_batch(1, &readings(0..10)),
        one_series_batch(2, &readings(10..20)),
    ]);
    let plan = compaction_only();
    let work = store.prepare_maintenance(&plan).unwrap();
    let stale = store.prepare_maintenance(&plan).unwrap();
    assert!(!work.has_more());
    assert_eq!(work.size(), 2);
    // A batch for the same bucket commits before the work is applied.
    let late = prepare(
        &Arc::from("gw-1"),
        "test",
        &one_series_batch(3, &readings(20..30)),
        &Limits {
            max_past: Duration::from_secs(86_400 * 365),
            ..Limits::default()
        },
        T0,
    )
    .unwrap();
    assert_eq!(
        store.apply_group(&mut state, &[late], 1000, T0).unwrap(),
        [Applied::Stored {
            readings: 10,
            refused: vec![]
        }]
    );
    assert_eq!(
        store
            .apply_maintenance(&mut state, work)
            .unwrap()
            .compacted_chunks,
        2
    );
    let expected: Vec<(i64, f64)> = readings(0..30).iter().map(|r| (r.ts_ns, r.value)).collect();
    assert_eq!(all(&store, "raw", None).readings, expected);
    let bytes = store.chunk_bytes().unwrap();
    let counted = state.chunk_bytes();
    // The second work was prepared before the first was applied.
    let err = store.apply_maintenance(&mut state, stale).unwrap_err();
    assert_eq!(
        err.to_string(),
        "maintenance: a staged bundle changed since the maintenance pass was prepared"
    );
    assert_eq!(state.chunk_bytes(), counted);
    assert_eq!(store.chunk_bytes().unwrap(), bytes);
    assert_eq!(all(&store, "raw", None).readings, expected);
    // The late batch is compacted by the next pass.
    assert_eq!(
        store.maintain(&mut state, &plan).unwrap().compacted_chunks,
        1
    );
    assert_eq!(all(&store, "raw", None).readings, expected);
}
