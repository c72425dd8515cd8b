//! The journal against a model: appends, windows, shipping, acks,
//! rejections, the disk budget and crashes (a storage backend that forgets
//! every byte not synced), checked for the journal's invariants:
//! everything accepted is delivered exactly once or counted as dropped,
//! per origin; sequences are never reused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ferry_agent::journal::{
    AggregateRule, CommitError, DeviceReport, FullPolicy, Journal, JournalConfig, SeriesReadings,
    Work,
};
use ferry_agent::window::{LatePolicy, Partial, WindowRule};
use ferry_proto::batch::{Batch, Reading};
use ferry_proto::codec;
use ferry_proto::health;
use ferry_proto::series::SeriesKey;
use proptest::prelude::*;
use redb::{BackendError, Database, ReadableTable, StorageBackend};

/// Storage that keeps two images: what was written, and what was synced.
/// A crash keeps only the synced image, as power loss would.
#[derive(Debug, Clone, Default)]
struct CrashDisk(Arc<Mutex<(Vec<u8>, Vec<u8>)>>);

impl CrashDisk {
    fn crash(&self) -> CrashDisk {
        let synced = self.0.lock().unwrap().1.clone();
        CrashDisk(Arc::new(Mutex::new((synced.clone(), synced))))
    }
}

fn range_err() -> BackendError {
    BackendError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "out of range",
    ))
}

impl StorageBackend for CrashDisk {
    fn len(&self) -> Result<u64, BackendError> {
        Ok(self.0.lock().unwrap().0.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let g = self.0.lock().unwrap();
        let o = offset as usize;
        out.copy_from_slice(g.0.get(o..o + out.len()).ok_or_else(range_err)?);
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.0.lock().unwrap().0.resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), BackendError> {
        let mut g = self.0.lock().unwrap();
        g.1 = g.0.clone();
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let mut g = self.0.lock().unwrap();
        let o = offset as usize;
        g.0.get_mut(o..o + data.len())
            .ok_or_else(range_err)?
            .copy_from_slice(data);
        Ok(())
    }
}

/// Opens the journal; with `eager_seal` (the gateway's settings) its
/// batches are also stored zstd-compressed, as the gateway stores them.
fn open(disk: &CrashDisk, config: &JournalConfig) -> Journal {
    let db = Database::builder()
        .create_with_backend(disk.clone())
        .unwrap();
    let mut journal = Journal::open(db, config.clone()).unwrap();
    if config.eager_seal {
        journal.set_compressor(Box::new(ferry_agent::shipper::Zstd));
    }
    journal
}

const SEC: i64 = 1_000_000_000;

fn series(metric: &str, device: usize) -> SeriesKey {
    SeriesKey::new(metric, [("device", format!("d{device}"))]).unwrap()
}

/// What the collector received, per origin (the series' device tag).
#[derive(Default, Debug)]
struct Collector {
    seqs: BTreeSet<u64>,
    delivered: BTreeMap<String, u64>,
    dropped: BTreeMap<String, u64>,
}

impl Collector {
    fn receive(&mut self, seq: u64, bytes: &[u8]) {
        let batch: Batch = codec::from_bytes("Batch", bytes).unwrap();
        assert_eq!(batch.seq, seq);
        batch.validate().unwrap();
        assert!(self.seqs.insert(seq), "batch {seq} stored twice");
        for b in &batch.blocks {
            let dev = batch.series[b.series as usize]
                .tag("device")
                .unwrap()
                .to_string();
            *self.delivered.entry(dev).or_default() += b.len() as u64;
        }
        for a in &batch.aggregates {
            let dev = batch.series[a.series as usize]
                .tag("device")
                .unwrap()
                .to_string();
            *self.delivered.entry(dev).or_default() += a.count;
        }
        for h in &batch.health {
            if h.batch != 0 && self.seqs.contains(&h.batch) {
                continue; // delivered after all; only its ack was lost
            }
            if matches!(
                h.kind,
                health::DROPPED_JOURNAL_FULL
                    | health::DROPPED_LATE
                    | ferry_agent::journal::DROPPED_REJECTED
            ) {
                *self.dropped.entry(h.source.clone()).or_default() += h.count;
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// `n` readings of metric `m` on device `d`, `dt` seconds after the clock.
    Append {
        m: usize,
        d: usize,
        n: usize,
        dt: i64,
    },
    /// Advance the clock.
    Tick(i64),
    /// Ship up to this many bytes; the collector stores each batch.
    Ship { bytes: u64, newest_first: bool },
    /// Ack everything stored (lost acks: `ack` false keeps them in flight).
    Ack { ack: bool },
    /// The collector rejects the next in-flight batch permanently.
    Reject,
    /// The connection drops: in-flight batches are released.
    Release,
    /// Power loss and restart.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, 1..40usize, -3..3i64).prop_map(|(m, d, n, dt)| Op::Append { m, d, n, dt }),
        2 => (0..20i64).prop_map(Op::Tick),
        2 => (1u64..4000, any::<bool>()).prop_map(|(bytes, newest_first)| Op::Ship { bytes, newest_first }),
        2 => any::<bool>().prop_map(|ack| Op::Ack { ack }),
        1 => Just(Op::Reject),
        1 => Just(Op::Release),
        1 => Just(Op::Crash),
    ]
}

fn config(budget: u64, policy: FullPolicy) -> JournalConfig {
    JournalConfig {
        budget_bytes: budget,
        policy,
        eager_seal: false,
        eager_seal_unacked: 0,
        batch_max_readings: 50,
        batch_linger_ns: 2 * SEC,
        rules: vec![AggregateRule {
            // m0 is aggregated into 5 s windows; m1, m2 pass raw.
            metric: "m0".into(),
            window: WindowRule {
                period_ns: 5 * SEC as u64,
                lateness_ns: SEC as u64,
                sketch: true,
                late: LatePolicy::Raw,
            },
        }],
    }
}

/// Runs `ops`, then drains the journal, and checks conservation per origin.
fn check(ops: &[Op], budget: u64, policy: FullPolicy, eager_seal: bool) {
    let config = JournalConfig {
        eager_seal,
        ..config(budget, policy)
    };
    let mut disk = CrashDisk::default();
    let mut journal = open(&disk, &config);
    let mut now = 1_000 * SEC;
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut collector = Collector::default();
    let mut stored_unacked: Vec<u64> = Vec::new();
    let mut in_flight: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut ts = 0i64;
    for op in ops {
        match op {
            Op::Append { m, d, n, dt } => {
                let readings = (0..*n)
                    .map(|i| {
                        ts += 1;
                        Reading {
                            ts_ns: now + dt * SEC + i as i64 * 1_000_000 + ts,
                            value: (i % 7) as f64 * 0.5,
                        }
                    })
                    .collect();
                let work = Work {
                    readings: vec![SeriesReadings {
                        series: series(&format!("m{m}"), *d),
                        origin: format!("d{d}"),
                        readings,
                    }],
                    ..Work::default()
                };
                match journal.commit(work, now) {
                    Ok(_) => *sent.entry(format!("d{d}")).or_default() += *n as u64,
                    Err(CommitError::Full { .. }) => assert_eq!(policy, FullPolicy::Backpressure),
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Tick(s) => {
                now += s * SEC;
                journal.commit(Work::default(), now).unwrap();
            }
            Op::Ship {
                bytes,
                newest_first,
            } => {
                for (seq, body) in journal.next_to_send(*bytes, *newest_first).unwrap() {
                    in_flight.push((seq, body));
                }
            }
            Op::Ack { ack } => {
                for (seq, body) in in_flight.drain(..) {
                    if !collector.seqs.contains(&seq) {
                        collector.receive(seq, &body);
                    }
                    stored_unacked.push(seq);
                }
                if *ack {
                    let acks = stored_unacked.drain(..).map(|s| (s, true)).collect();
                    journal
                        .commit(
                            Work {
                                acks,
                                ..Work::default()
                            },
                            now,
                        )
                        .unwrap();
                }
            }
            Op::Reject => {
                // A collector answers "duplicate" for a batch it stored;
                // it can only reject one it has not.
                if !in_flight.is_empty() {
                    let (seq, _) = in_flight.remove(0);
                    let delivered = collector.seqs.contains(&seq);
                    journal
                        .commit(
                            Work {
                                acks: vec![(seq, delivered)],
                                ..Work::default()
                            },
                            now,
                        )
                        .unwrap();
                }
            }
            Op::Release => {
                in_flight.clear();
                stored_unacked.clear();
                journal.release_in_flight();
            }
            Op::Crash => {
                drop(journal);
                disk = disk.crash();
                journal = open(&disk, &config);
                in_flight.clear();
                stored_unacked.clear();
            }
        }
        let stats = journal.stats().unwrap();
        if policy == FullPolicy::DropOldest {
            // Invariant 5: only in-flight batches may keep the journal over budget.
            let over = stats.bytes.saturating_sub(budget);
            assert!(
                over == 0 || stats.in_flight > 0 || stats.outbox_batches == 0,
                "{stats:?}"
            );
        }
    }
    // Drain: the link comes back and stays up.
    journal.release_in_flight();
    now += 3_600 * SEC;
    for _ in 0..1000 {
        journal.commit(Work::default(), now).unwrap();
        let batches = journal.next_to_send(u64::MAX, false).unwrap();
        if batches.is_empty() {
            let stats = journal.stats().unwrap();
            if stats.pending_readings == 0
                && stats.window_readings == 0
                && stats.outbox_batches == 0
            {
                break;
            }
            now += 3_600 * SEC;
            continue;
        }
        let mut acks = Vec::new();
        for (seq, body) in batches {
            if !collector.seqs.contains(&seq) {
                collector.receive(seq, &body);
            }
            acks.push((seq, true));
        }
        journal
            .commit(
                Work {
                    acks,
                    ..Work::default()
                },
                now,
            )
            .unwrap();
    }
    // Health records from the last acks are sealed on the next linger.
    now += 3_600 * SEC;
    journal.commit(Work::default(), now).unwrap();
    for (seq, body) in journal.next_to_send(u64::MAX, false).unwrap() {
        collector.receive(seq, &body);
        journal
            .commit(
                Work {
                    acks: vec![(seq, true)],
                    ..Work::default()
                },
                now,
            )
            .unwrap();
    }
    let stats = journal.stats().unwrap();
    assert_eq!(
        (
            stats.outbox_batches,
            stats.pending_readings,
            stats.window_readings
        ),
        (0, 0, 0)
    );
    for (origin, n) in &sent {
        let delivered = collector.delivered.get(origin).copied().unwrap_or(0);
        let dropped = collector.dropped.get(origin).copied().unwrap_or(0);
        assert_eq!(
            delivered + dropped,
            *n,
            "origin {origin}: delivered {delivered} + dropped {dropped}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn nothing_lost_or_doubled_with_room(ops in proptest::collection::vec(op(), 1..60), eager in any::<bool>()) {
        check(&ops, 1 << 30, FullPolicy::DropOldest, eager);
    }

    #[test]
    fn drop_oldest_accounts_every_reading(ops in proptest::collection::vec(op(), 1..60), eager in any::<bool>()) {
        check(&ops, 3_000, FullPolicy::DropOldest, eager);
    }

    #[test]
    fn backpressure_refuses_but_never_loses(ops in proptest::collection::vec(op(), 1..60), eager in any::<bool>()) {
        check(&ops, 3_000, FullPolicy::Backpressure, eager);
    }
}

#[test]
fn crash_after_commit_keeps_everything_and_seq_never_repeats() {
    let config = config(1 << 30, FullPolicy::DropOldest);
    let disk = CrashDisk::default();
    let mut j = open(&disk, &config);
    let readings = (0..100)
        .map(|i| Reading {
            ts_ns: i * SEC,
            value: i as f64,
        })
        .collect();
    let r = j
        .commit(
            Work {
                readings: vec![SeriesReadings {
                    series: series("m1", 1),
                    origin: "d1".into(),
                    readings,
                }],
                ..Work::default()
            },
            0,
        )
        .unwrap();
    assert_eq!(r.accepted, 100);
    assert_eq!(r.sealed, vec![1]);
    drop(j);
    let disk = disk.crash();
    let mut j = open(&disk, &config);
    let stats = j.stats().unwrap();
    assert_eq!(
        (stats.outbox_batches, stats.outbox_readings, stats.next_seq),
        (1, 100, 2)
    );
    let sent = j.next_to_send(u64::MAX, false).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, 1);
}

#[test]
fn device_reports_are_journaled_once_and_in_order() {
    let config = config(1 << 30, FullPolicy::DropOldest);
    let disk = CrashDisk::default();
    let mut j = open(&disk, &config);
    let window = |start: i64| Partial {
        start_ns: start,
        len_ns: SEC as u64,
        count: 10,
        sum: 10.0,
        min: 1.0,
        max: 1.0,
        first_ts: start,
        first: 1.0,
        last_ts: start,
        last: 1.0,
        sketch: None,
    };
    let report = |seq: u32, floor: u32| DeviceReport {
        device: "d7".into(),
        boot: 3,
        seq,
        floor,
        offset_ns: 0,
        windows: vec![(series("temperature", 7), window(seq as i64 * SEC))],
    };
    let work = Work {
        reports: vec![report(1, 0), report(1, 0), report(3, 0), report(2, 0)],
        ..Work::default()
    };
    let r = j.commit(work, 0).unwrap();
    // 1 journaled, 1 again (duplicate: ack), 3 is a gap (no ack), 2 journaled.
    assert_eq!(r.reports, vec![true, true, false, true]);
    assert_eq!(r.accepted, 20);
    // The device says it dropped 3..=5 (floor 5): 6 is accepted next.
    let r = j
        .commit(
            Work {
                reports: vec![report(6, 5)],
                ..Work::default()
            },
            0,
        )
        .unwrap();
    assert_eq!(r.reports, vec![true]);
    assert_eq!(j.devices().unwrap(), vec![("d7".to_string(), 3, 6)]);
    // Device drop totals are counted once, however often they are sent.
    let totals = |t: u32| Work {
        device_dropped: vec![("d7".into(), 3, t)],
        ..Work::default()
    };
    j.commit(totals(4), 0).unwrap();
    j.commit(totals(4), 0).unwrap();
    drop(j);
    let mut j = open(&disk.crash(), &config);
    j.commit(totals(6), 0).unwrap();
    let mut health = 0;
    j.commit(Work::default(), 10 * SEC).unwrap();
    for (_, body) in j.next_to_send(u64::MAX, false).unwrap() {
        let batch: Batch = codec::from_bytes("Batch", &body).unwrap();
        health += batch
            .health
            .iter()
            .filter(|h| h.kind == health::DROPPED_DEVICE_RING)
            .map(|h| h.count)
            .sum::<u64>();
    }
    assert_eq!(health, 6);
    // A new boot starts again from 1.
    let mut rep = report(1, 0);
    rep.boot = 4;
    let r = j
        .commit(
            Work {
                reports: vec![rep],
                ..Work::default()
            },
            0,
        )
        .unwrap();
    assert_eq!(r.reports, vec![true]);
}

/// Rows in the journal's `pending` table.
fn pending_rows(j: Journal) -> (u64, Journal, JournalConfig) {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let config = j.config().clone();
    let db = j.into_database();
    let rows = db
        .begin_read()
        .unwrap()
        .open_table(ferry_agent::journal::layout::Bytes::new("pending"))
        .unwrap()
        .len()
        .unwrap();
    let mut j = Journal::open(db, config.clone()).unwrap();
    j.set_compressor(Box::new(ferry_agent::shipper::Zstd));
    (rows, j, config)
}

/// `n` readings of series m1 (origin d1), one per second from `base` s.
fn m1_work(n: i64, base: i64) -> Work {
    Work {
        readings: vec![SeriesReadings {
            series: series("m1", 1),
            origin: "d1".into(),
            readings: (0..n)
                .map(|i| Reading {
                    ts_ns: (base + i) * SEC,
                    value: 20.0 + (i % 5) as f64 * 0.01,
                })
                .collect(),
        }],
        ..Work::default()
    }
}

#[test]
fn sealing_commits_write_readings_once_and_store_batches_compressed() {
    let config = JournalConfig {
        batch_max_readings: 10_000,
        eager_seal: true,
        eager_seal_unacked: usize::MAX,
        ..config(1 << 30, FullPolicy::DropOldest)
    };
    let disk = CrashDisk::default();
    let mut j = open(&disk, &config);
    let work = m1_work;
    // Nothing waits to be sent: the commit seals its own readings directly.
    let r = j.commit(work(1000, 0), 0).unwrap();
    assert_eq!(r.sealed, vec![1]);
    let (rows, mut j, _) = pending_rows(j);
    assert_eq!(rows, 0);
    // Batch 1 is unsent: the next small commit waits in a pending row.
    let r = j.commit(work(10, 1000), 1).unwrap();
    assert_eq!(r.sealed, Vec::<u64>::new());
    let (rows, mut j, _) = pending_rows(j);
    assert_eq!(rows, 1);
    // Stored zstd-compressed; next_to_send gives the plain encoding.
    let shipped = j.next_to_ship(u64::MAX, false).unwrap();
    assert_eq!(shipped.len(), 1);
    assert_eq!(
        (shipped[0].seq, shipped[0].codec),
        (1, ferry_proto::stream::compression::ZSTD)
    );
    let plain = zstd::bulk::decompress(&shipped[0].body, 1 << 20).unwrap();
    assert!(
        shipped[0].body.len() * 4 < plain.len(),
        "{} vs {}",
        shipped[0].body.len(),
        plain.len()
    );
    j.release(&[1]);
    let sent = j.next_to_send(u64::MAX, false).unwrap();
    assert_eq!(sent, vec![(1, plain.clone())]);
    let batch: Batch = ferry_proto::codec::from_bytes("Batch", &plain).unwrap();
    assert_eq!(batch.reading_count(), 1000);
    // Batch 1 in flight, nothing unsent: the next commit seals the pending
    // row with its own readings, and the pending table empties.
    let r = j.commit(work(5, 1010), 2).unwrap();
    assert_eq!(r.sealed, vec![2]);
    let (rows, mut j, _) = pending_rows(j);
    assert_eq!(rows, 0);
    let sent = j.next_to_send(u64::MAX, false).unwrap();
    assert_eq!(sent.len(), 2); // the reopen forgot what was in flight
    let batch: Batch = ferry_proto::codec::from_bytes("Batch", &sent[1].1).unwrap();
    assert_eq!((batch.seq, batch.reading_count()), (2, 15));
}

/// Nagle's rule (`eager_seal_unacked = 0`, the gateway's default): while a
/// sealed batch awaits its ack, commits gather in a pending row; the commit
/// that applies the ack seals them, with that commit's own readings.
#[test]
fn eager_sealing_waits_for_the_ack_of_the_batch_in_flight() {
    let config = JournalConfig {
        batch_max_readings: 10_000,
        eager_seal: true,
        eager_seal_unacked: 0,
        ..config(1 << 30, FullPolicy::DropOldest)
    };
    let disk = CrashDisk::default();
    let mut j = open(&disk, &config);
    let work = m1_work;
    // Nothing sealed: the first commit seals at once.
    assert_eq!(j.commit(work(3, 0), 0).unwrap().sealed, vec![1]);
    assert_eq!(j.next_to_send(u64::MAX, false).unwrap().len(), 1);
    // Batch 1 in flight, unanswered: two commits wait in pending rows.
    assert_eq!(j.commit(work(4, 3), 1).unwrap().sealed, Vec::<u64>::new());
    assert_eq!(j.commit(work(5, 7), 2).unwrap().sealed, Vec::<u64>::new());
    assert_eq!(j.next_due(), Some(1 + config.batch_linger_ns));
    // The ack alone seals both, in one batch.
    let ack = Work {
        acks: vec![(1, true)],
        ..Work::default()
    };
    let r = j.commit(ack, 3).unwrap();
    assert_eq!((r.sealed, r.delivered_readings), (vec![2], 3));
    let sent = j.next_to_send(u64::MAX, false).unwrap();
    assert_eq!(sent.len(), 1);
    let batch: Batch = ferry_proto::codec::from_bytes("Batch", &sent[0].1).unwrap();
    assert_eq!((batch.seq, batch.reading_count()), (2, 9));
    // With batch 2 unanswered, the linger still bounds the wait.
    assert_eq!(j.commit(work(1, 12), 4).unwrap().sealed, Vec::<u64>::new());
    let r = j
        .commit(Work::default(), 4 + config.batch_linger_ns)
        .unwrap();
    assert_eq!(r.sealed, vec![3]);
    let (rows, _, _) = pending_rows(j);
    assert_eq!(rows, 0);
}

/// With `eager_seal_unacked = 1`, a second batch is sealed while the first
/// awaits its ack, a third waits.
#[test]
fn eager_sealing_allows_the_configured_batches_awaiting_their_ack() {
    let config = JournalConfig {
        batch_max_readings: 10_000,
        eager_seal: true,
        eager_seal_unacked: 1,
        ..config(1 << 30, FullPolicy::DropOldest)
    };
    let disk = CrashDisk::default();
    let mut j = open(&disk, &config);
    let work = |base: i64| m1_work(1, base);
    assert_eq!(j.commit(work(0), 0).unwrap().sealed, vec![1]);
    assert_eq!(j.next_to_send(u64::MAX, false).unwrap().len(), 1);
    assert_eq!(j.commit(work(1), 1).unwrap().sealed, vec![2]);
    assert_eq!(j.next_to_send(u64::MAX, false).unwrap().len(), 1);
    assert_eq!(j.commit(work(2), 2).unwrap().sealed, Vec::<u64>::new());
    let ack = Work {
        acks: vec![(1, true)],
        ..Work::default()
    };
    assert_eq!(j.commit(ack, 3).unwrap().sealed, vec![3]);
}

/// The journal records its on-disk format and refuses a file of another
/// format by name (the agent then moves the file aside).
#[test]
fn a_journal_of_another_format_is_refused_by_name() {
    let config = config(1 << 30, FullPolicy::DropOldest);
    let disk = CrashDisk::default();
    drop(open(&disk, &config));
    let db = Database::builder()
        .create_with_backend(disk.clone())
        .unwrap();
    let txn = db.begin_write().unwrap();
    {
        let meta = ferry_agent::journal::layout::Bytes::new("meta");
        let mut meta = txn.open_table(meta).unwrap();
        let stored = meta
            .get(b"format".as_slice())
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        assert_eq!(stored, ferry_agent::journal::FORMAT.to_le_bytes());
        meta.insert(b"format".as_slice(), 7u64.to_le_bytes().as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
    let Err(err) = Journal::open(db, config) else {
        panic!("a journal of format 7 opened");
    };
    assert!(matches!(err, CommitError::Format { found: 7 }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "journal format 7: this build reads format 2 only"
    );
}
