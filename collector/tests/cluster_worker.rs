//! A cluster worker's store (docs/cluster.md), without NATS: records are
//! prepared exactly as the worker prepares them
//! ([`ferry_collector::cluster::worker::prepare`]) and applied through the
//! store's group commit, each delivery in its own commit as a worker does
//! after a kill -9 (the record committed, its ack lost, delivered again).
//!
//! - A record delivered twice counts once in the agents table (batches and
//!   readings), a health-only batch included.
//! - A batch the worker's store refuses for good (its epoch's dedupe ranges
//!   at `limits.max_dedupe_ranges`) reaches the ledger that
//!   `ferry-collector drops` shows: its readings are counted as refused
//!   (`dedupe_full`), its health records count, so received = stored +
//!   refused; delivered again it is a duplicate, counted once.

use std::sync::Arc;

use ferry_collector::admin;
use ferry_collector::cluster::worker::prepare;
use ferry_collector::cluster::{Record, RecordBody};
use ferry_collector::config::Limits;
use ferry_collector::store::{Applied, DedupeLimits, Store, WriterState};
use ferry_proto::batch::{Batch, HealthRecord, Reading, ReadingBlock};
use ferry_proto::health::RECEIVED;
use ferry_proto::series::SeriesKey;
use ferry_proto::session::reason;

const T0: i64 = 1_700_000_000_000_000_000;
const AGENT: &str = "gw";
const EPOCH: u64 = 0xfe;

struct Worker {
    _dir: tempfile::TempDir,
    store: Store,
    state: WriterState,
    agent: Arc<str>,
}

impl Worker {
    fn new(max_ranges: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.redb")).unwrap();
        let mut state = store.writer_state().unwrap();
        state.set_dedupe_limits(DedupeLimits {
            max_ranges,
            max_epochs: 10,
        });
        Self {
            _dir: dir,
            store,
            state,
            agent: Arc::from(AGENT),
        }
    }

    /// Delivers `batch` as a record, in a commit of its own.
    fn deliver(&mut self, batch: &Batch) -> Applied {
        let record = Record {
            agent: AGENT.into(),
            remote: "127.0.0.1:5000".into(),
            now_ns: T0,
            body: RecordBody::Batch(batch.clone()),
        };
        let prepared = prepare(&self.agent, &record, batch, &Limits::default()).unwrap();
        assert!(prepared.count_refusal, "a worker counts its refusals");
        assert_eq!(prepared.resolved_below, 0, "a worker applies no promise");
        let mut out = self
            .store
            .apply_group(&mut self.state, &[prepared], 1000, T0)
            .unwrap();
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    fn ledger(&self) -> admin::Ledger {
        admin::ledgers(&self.store)
            .unwrap()
            .into_iter()
            .find(|l| l.agent == AGENT)
            .expect("the agent's ledger")
    }

    fn agent(&self) -> ferry_collector::store::AgentRecord {
        self.store
            .agents()
            .unwrap()
            .into_iter()
            .find(|a| a.id == AGENT)
            .expect("the agent's record")
    }
}

/// Batch `seq` with `readings` readings of one series and the agent's
/// received count `received` (its health report), as an agent seals it.
fn batch(seq: u64, readings: u64, received: u64) -> Batch {
    let values: Vec<Reading> = (0..readings)
        .map(|i| Reading {
            ts_ns: T0 - 1_000_000_000 + (seq * 1000 + i) as i64,
            value: i as f64,
        })
        .collect();
    Batch {
        seq,
        created_ns: T0,
        epoch: EPOCH,
        series: vec![SeriesKey::new("temp", [("device", "d1")]).unwrap()],
        blocks: if values.is_empty() {
            vec![]
        } else {
            vec![ReadingBlock::encode(0, &values)]
        },
        health: if received == 0 {
            vec![]
        } else {
            vec![HealthRecord {
                source: "d1".into(),
                kind: RECEIVED,
                count: received,
                batch: 0,
            }]
        },
        ..Batch::default()
    }
}

fn stored(a: &Applied) -> u64 {
    match a {
        Applied::Stored { readings, refused } => {
            assert!(refused.is_empty(), "{refused:?}");
            *readings
        }
        other => panic!("expected stored, got {other:?}"),
    }
}

#[test]
fn a_record_delivered_again_counts_once_in_the_agents_table() {
    let mut w = Worker::new(100);
    // Two data batches, then the health-only batch an agent seals when its
    // received counts fall due with nothing else to ship.
    let batches = [batch(1, 40, 0), batch(2, 40, 0), batch(3, 0, 80)];
    for b in &batches {
        let n = b.reading_count() as u64;
        assert_eq!(stored(&w.deliver(b)), n);
    }
    // Every record again (redelivery after a kill -9), newest first.
    for b in batches.iter().rev() {
        assert_eq!(w.deliver(b), Applied::Duplicate);
    }
    let a = w.agent();
    assert_eq!((a.batches, a.readings, a.refused), (3, 80, 0));
    let l = w.ledger();
    assert_eq!((l.received, l.stored, l.in_transit), (80, 80, 0));
}

#[test]
fn a_batch_the_worker_refuses_for_good_reaches_the_ledger() {
    // Two ranges at most per epoch: batches 1 and 3 hold two (batch 2 a
    // front end refused for good, say; batch 4 still on its way), and
    // batch 5 would open a third.
    let mut w = Worker::new(2);
    for seq in [1, 3] {
        assert_eq!(stored(&w.deliver(&batch(seq, 10, 10))), 10);
    }
    let refused = batch(5, 25, 35);
    let answer = w.deliver(&refused);
    let Applied::Rejected { code, reason: why } = &answer else {
        panic!("expected the dedupe bound's refusal, got {answer:?}");
    };
    assert_eq!(*code, reason::DEDUPE_FULL, "{why}");
    assert!(why.contains("25 readings counted as refused"), "{why}");
    // Delivered again (the worker died before its ack): counted once.
    assert_eq!(w.deliver(&refused), Applied::Duplicate);

    let a = w.agent();
    assert_eq!((a.batches, a.readings, a.refused), (2, 20, 25));
    // received (10 + 10 + 35) = stored (20) + refused (25) + the 10
    // readings of batch 4, still on their way.
    let l = w.ledger();
    assert_eq!(
        (l.received, l.stored, l.refused, l.in_transit),
        (55, 20, 25, 10)
    );
    // Batch 4 bridges two ranges: stored.
    assert_eq!(stored(&w.deliver(&batch(4, 10, 0))), 10);
    let l = w.ledger();
    assert_eq!(
        (l.received, l.stored, l.refused, l.dropped, l.in_transit),
        (55, 30, 25, 0, 0),
        "sent = stored + counted"
    );
    let rows = admin::drop_rows(&w.store).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (
            rows[0].device.as_str(),
            rows[0].reason.as_str(),
            rows[0].counted_by.as_str(),
            rows[0].readings
        ),
        ("d1", "dedupe_full", "collector", 25)
    );
}
