//! The journal's identity (invariants 8 and 9 of `journal/mod.rs`): a
//! random epoch chosen at creation, kept across reopenings, carried by every
//! sealed batch; and every batch dropped leaves a health record naming it.

use ferry_agent::journal::{Journal, JournalConfig, SeriesReadings, Work};
use ferry_proto::batch::{Batch, Reading};
use ferry_proto::codec;
use ferry_proto::health;
use ferry_proto::series::SeriesKey;
use redb::Database;
use redb::backends::InMemoryBackend;

fn config() -> JournalConfig {
    JournalConfig {
        batch_max_readings: 4,
        batch_linger_ns: 0,
        ..JournalConfig::default()
    }
}

fn work(n: usize) -> Work {
    Work {
        readings: vec![SeriesReadings {
            series: SeriesKey::new("t", [("device", "d1")]).unwrap(),
            origin: "d1".into(),
            readings: (0..n)
                .map(|i| Reading {
                    ts_ns: i as i64,
                    value: 1.0,
                })
                .collect(),
        }],
        ..Work::default()
    }
}

fn sent(journal: &mut Journal) -> Vec<Batch> {
    journal
        .next_to_send(u64::MAX, false)
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| codec::from_bytes::<Batch>("Batch", &bytes).unwrap())
        .collect()
}

#[test]
fn a_journal_keeps_its_epoch_and_every_batch_carries_it() {
    let db = Database::builder()
        .create_with_backend(InMemoryBackend::new())
        .unwrap();
    let mut j = Journal::open(db, config()).unwrap();
    let epoch = j.epoch();
    assert_ne!(epoch, 0);
    j.commit(work(4), 10).unwrap();
    let batches = sent(&mut j);
    assert_eq!(batches.len(), 1);
    assert_eq!((batches[0].seq, batches[0].epoch), (1, epoch));

    // Reopened (a restart): the same identity, whatever epoch is offered.
    let db = j.into_database();
    let j = Journal::open_with_epoch(db, config(), 42).unwrap();
    assert_eq!(j.epoch(), epoch);

    // A new journal (a wiped data directory): another identity, sequence
    // numbers from 1 again.
    let db = Database::builder()
        .create_with_backend(InMemoryBackend::new())
        .unwrap();
    let mut fresh = Journal::open(db, config()).unwrap();
    assert_ne!(fresh.epoch(), epoch);
    fresh.commit(work(4), 10).unwrap();
    assert_eq!(sent(&mut fresh)[0].seq, 1);
}

#[test]
fn a_dropped_batch_without_readings_is_still_named() {
    let db = Database::builder()
        .create_with_backend(InMemoryBackend::new())
        .unwrap();
    let mut j = Journal::open(db, config()).unwrap();
    // A batch of health records only.
    let health_only = Work {
        health: vec![("d1".into(), health::DROPPED_QUEUE_FULL, 3)],
        ..Work::default()
    };
    j.commit(health_only, 10).unwrap();
    let b = sent(&mut j);
    assert_eq!((b.len(), b[0].reading_count()), (1, 0));
    // The collector rejects it permanently: dropped, named in the next.
    j.commit(
        Work {
            acks: vec![(b[0].seq, false)],
            ..Work::default()
        },
        20,
    )
    .unwrap();
    j.commit(work(4), 30).unwrap();
    let next = sent(&mut j);
    let mut named: Vec<(String, u16, u64, u64)> = next[0]
        .health
        .iter()
        .map(|h| (h.source.clone(), h.kind, h.count, h.batch))
        .collect();
    named.sort();
    assert_eq!(
        named,
        [
            ("".into(), health::DROPPED_REJECTED, 0, 1),
            ("d1".into(), health::DROPPED_QUEUE_FULL, 3, 0),
        ]
    );
}

/// Sources' marks (`Work::marks`) are committed with the readings they go
/// with, replaced by key, read back by prefix after a reopening, and kept
/// apart per prefix.
#[test]
fn source_marks_are_committed_with_their_work_and_read_by_prefix() {
    let db = Database::builder()
        .create_with_backend(InMemoryBackend::new())
        .unwrap();
    let mut j = Journal::open(db, config()).unwrap();
    let mark = |k: &[u8], v: &[u8]| (k.to_vec(), v.to_vec());
    let mut w = work(1);
    w.marks = vec![
        mark(b"mqtt\0a\0\0\x00\x01", b"one"),
        mark(b"mqtt\0ab\0\0\x00\x01", b"other source"),
    ];
    j.commit(w, 10).unwrap();
    // Marks alone are work too.
    let marks_only = Work {
        marks: vec![
            mark(b"mqtt\0a\0\0\x00\x01", b"two"),
            mark(b"mqtt\0a\0\0\x00\x02", b"three"),
        ],
        ..Work::default()
    };
    assert!(!marks_only.is_empty());
    j.commit(marks_only, 11).unwrap();
    let db = j.into_database();
    let j = Journal::open(db, config()).unwrap();
    assert_eq!(
        j.source_marks(b"mqtt\0a\0\0").unwrap(),
        [
            mark(b"mqtt\0a\0\0\x00\x01", b"two"),
            mark(b"mqtt\0a\0\0\x00\x02", b"three")
        ]
    );
    assert_eq!(j.source_marks(b"mqtt\0ab\0\0").unwrap().len(), 1);
    assert_eq!(j.source_marks(b"mqtt\0c\0\0").unwrap(), []);
}
