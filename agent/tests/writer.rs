//! The journal writer's answers to sources: a full journal (`backpressure`)
//! hands each refused submission its work back, untouched, and still commits
//! what came with it. And when the writer must wake without input: exactly
//! when the journal says something is due ([`Journal::next_due`]), never when
//! nothing waits on time.

use std::sync::Arc;
use std::time::Duration;

use ferry_agent::intake::{Intake, Refused, SubmitError};
use ferry_agent::journal::{
    AggregateRule, FullPolicy, Journal, JournalConfig, SeriesReadings, Work,
};
use ferry_agent::metrics::AgentMetrics;
use ferry_agent::window::{LatePolicy, WindowRule};
use ferry_agent::writer::Writer;
use ferry_clock::ManualClock;
use ferry_proto::batch::Reading;
use ferry_proto::series::SeriesKey;
use tokio::sync::watch;

fn work(n: usize) -> Work {
    Work {
        readings: vec![SeriesReadings {
            series: SeriesKey::new("temperature", [("device", "a1")]).unwrap(),
            origin: "a1".into(),
            readings: (0..n)
                .map(|i| Reading {
                    ts_ns: 1_700_000_000_000_000_000 + i as i64,
                    value: i as f64 / 4.0,
                })
                .collect(),
        }],
        ..Work::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_hands_refused_work_back_and_commits_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("journal.redb")).unwrap();
    let config = JournalConfig {
        budget_bytes: 1,
        policy: FullPolicy::Backpressure,
        ..JournalConfig::default()
    };
    let journal = Journal::open(db, config).unwrap();
    let (intake, rx) = Intake::channel(8);
    let metrics = Arc::new(AgentMetrics::default());
    let (writer, _handle) = Writer::new(journal, rx, metrics.clone(), Duration::from_secs(3600));
    // A clock that stands still: the batch's 10 ms linger never passes, so
    // the readings stay in the batch being filled however slow the machine.
    let writer = writer.with_clock(Arc::new(ManualClock::new(1_700_000_000_000_000_000)));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(writer.run(stopped));

    // The first commit starts under the budget and takes the journal past it.
    let first = intake.submit_or_return(work(10)).await.unwrap();
    assert_eq!(first.accepted, 10);

    let refused = work(3);
    let Err(Refused {
        error: SubmitError::Full { used, budget: 1 },
        work: Some(back),
    }) = intake.submit_or_return(refused.clone()).await
    else {
        panic!("a full journal refuses data and returns it");
    };
    assert!(used > 1, "{used} bytes used");
    assert_eq!(*back, refused, "the work comes back untouched");
    assert_eq!(metrics.backpressure.get(), 1);

    // Work without readings (health) is still committed.
    let health = Work {
        health: vec![("a1".into(), 3, 1)],
        ..Work::default()
    };
    assert!(intake.submit_or_return(health).await.is_ok());
    assert_eq!(metrics.readings_in.get(), 10);

    stop.send(true).unwrap();
    let journal = task.await.unwrap();
    assert_eq!(journal.stats().unwrap().pending_readings, 10);
}

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000_000_000_000;

fn one(metric: &str, ts_ns: i64) -> Work {
    Work {
        readings: vec![SeriesReadings {
            series: SeriesKey::new(metric, [("device", "a1")]).unwrap(),
            origin: "a1".into(),
            readings: vec![Reading { ts_ns, value: 1.5 }],
        }],
        ..Work::default()
    }
}

#[test]
fn the_journal_is_due_exactly_at_a_batch_linger_or_a_window_close() {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("journal.redb")).unwrap();
    let config = JournalConfig {
        eager_seal: false,
        batch_linger_ns: 2 * SEC,
        rules: vec![AggregateRule {
            metric: "agg".into(),
            window: WindowRule {
                period_ns: 10 * SEC as u64,
                lateness_ns: SEC as u64,
                sketch: false,
                late: LatePolicy::Raw,
            },
        }],
        ..JournalConfig::default()
    };
    let mut journal = Journal::open(db, config).unwrap();
    assert_eq!(
        journal.next_due(),
        None,
        "an empty journal waits on nothing"
    );

    // A raw reading: due when its batch's linger ends, and not before.
    journal.commit(one("raw", T0), T0).unwrap();
    assert_eq!(journal.next_due(), Some(T0 + 2 * SEC));
    let early = journal.commit(Work::default(), T0 + 2 * SEC - 1).unwrap();
    assert!(!early.wrote && early.sealed.is_empty());
    let sealed = journal.commit(Work::default(), T0 + 2 * SEC).unwrap();
    assert_eq!(sealed.sealed.len(), 1);
    assert_eq!(journal.next_due(), None, "sealed: nothing waits on time");

    // A windowed reading at T0 + 3 s: its window [T0, T0 + 10 s) closes at
    // T0 + 11 s; then the closed window lingers 2 s in the batch.
    journal
        .commit(one("agg", T0 + 3 * SEC), T0 + 3 * SEC)
        .unwrap();
    assert_eq!(journal.next_due(), Some(T0 + 11 * SEC));
    let closed = journal.commit(Work::default(), T0 + 11 * SEC).unwrap();
    assert!(closed.wrote && closed.sealed.is_empty());
    assert_eq!(journal.next_due(), Some(T0 + 13 * SEC));
    let sealed = journal.commit(Work::default(), T0 + 13 * SEC).unwrap();
    assert_eq!(sealed.sealed.len(), 1);
    assert_eq!(journal.next_due(), None);
    assert_eq!(journal.stats().unwrap().outbox_readings, 2);
}
