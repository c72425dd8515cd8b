//! The journal writer's answers to sources: a full journal (`backpressure`)
//! hands each refused submission its work back, untouched, and still commits
//! what came with it.

use std::sync::Arc;
use std::time::Duration;

use ferry_agent::intake::{Intake, Refused, SubmitError};
use ferry_agent::journal::{FullPolicy, Journal, JournalConfig, SeriesReadings, Work};
use ferry_agent::metrics::AgentMetrics;
use ferry_agent::writer::Writer;
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
