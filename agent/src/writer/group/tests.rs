//! Tests of the writer's group commit.

use ferry_clock::SEC;
use ferry_proto::batch::Reading;
use ferry_proto::series::SeriesKey;

use super::*;
use crate::journal::{FullPolicy, JournalConfig, SeriesReadings};

const T0: i64 = 1_700_000_000 * SEC;

fn journal(config: JournalConfig) -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("journal.redb")).unwrap();
    (dir, Journal::open(db, config).unwrap())
}

fn work(origin: &str, n: usize, ts: i64) -> Work {
    Work {
        readings: vec![SeriesReadings {
            series: SeriesKey::new("temperature", [("device", origin)]).unwrap(),
            origin: origin.into(),
            readings: (0..n)
                .map(|i| Reading {
                    ts_ns: ts + i as i64,
                    value: i as f64,
                })
                .collect(),
        }],
        ..Work::default()
    }
}

fn pacing(tick_ms: u64, health_s: u64) -> Pacing {
    Pacing {
        tick: Duration::from_millis(tick_ms),
        health_interval: Duration::from_secs(health_s),
    }
}

fn lingering() -> JournalConfig {
    JournalConfig {
        eager_seal: false,
        batch_linger_ns: 2 * SEC,
        ..JournalConfig::default()
    }
}

#[test]
fn an_idle_writer_never_wakes_and_a_lingering_batch_wakes_it_at_its_linger() {
    let (_dir, j) = journal(lingering());
    let mut g = GroupCommit::new(j, Arc::default(), pacing(5, 3600));
    assert_eq!(g.poll_wake(), None, "nothing waits on time");
    let r = g.handle_group(T0, vec![work("a1", 3, T0)], Vec::new());
    assert_eq!(r.outcomes.len(), 1);
    assert_eq!(r.outcomes[0].as_ref().unwrap().accepted, 3);
    assert!(!r.sealed);
    // The batch lingers 2 s; the received counts wait for their hour.
    assert_eq!(g.poll_wake(), Some(T0 + 2 * SEC));
    let r = g.handle_group(T0 + 2 * SEC, Vec::new(), Vec::new());
    assert!(r.sealed, "sealed at its linger");
    assert_eq!(
        g.poll_wake(),
        Some(T0 + 3600 * SEC),
        "only health waits now"
    );
}

#[test]
fn wakes_are_never_sooner_than_a_tick_after_the_last_commit() {
    let config = JournalConfig {
        batch_linger_ns: 1_000_000, // 1 ms, shorter than the tick
        ..lingering()
    };
    let (_dir, j) = journal(config);
    let mut g = GroupCommit::new(j, Arc::default(), pacing(5, 3600));
    g.handle_group(T0, vec![work("a1", 1, T0)], Vec::new());
    assert_eq!(g.poll_wake(), Some(T0 + 5_000_000), "held to the tick");
}

#[test]
fn received_counts_ride_along_once_per_health_interval() {
    let (_dir, j) = journal(lingering());
    let mut g = GroupCommit::new(j, Arc::default(), pacing(5, 10));
    g.handle_group(T0, vec![work("a1", 4, T0), work("b2", 1, T0)], Vec::new());
    g.handle_group(T0 + SEC, vec![work("a1", 2, T0)], Vec::new());
    let counts: Vec<_> = g.received().iter().map(|(o, n)| (o.as_str(), *n)).collect();
    assert_eq!(counts, [("a1", 6), ("b2", 1)]);
    // The readings' batch seals at T0 + 2 s; then only health waits, and
    // its interval runs from the first commit.
    assert!(g.handle_group(T0 + 2 * SEC, Vec::new(), Vec::new()).sealed);
    assert_eq!(g.poll_wake(), Some(T0 + 10 * SEC));
    g.handle_group(T0 + 10 * SEC - 1, Vec::new(), Vec::new());
    assert_eq!(g.received().len(), 2, "not yet due");
    assert_eq!(g.journal().next_due(), None);
    g.handle_group(T0 + 10 * SEC, Vec::new(), Vec::new());
    assert!(g.received().is_empty(), "journaled as health");
    // The health rows are in the journal, lingering like readings do.
    assert_eq!(g.poll_wake(), Some(T0 + 12 * SEC));
    let batches = g.journal().stats().unwrap().outbox_batches;
    assert!(g.handle_group(T0 + 12 * SEC, Vec::new(), Vec::new()).sealed);
    assert_eq!(g.journal().stats().unwrap().outbox_batches, batches + 1);
    assert_eq!(g.poll_wake(), None, "nothing received since: nothing due");
    g.handle_group(T0 + 13 * SEC, vec![work("a1", 1, T0)], Vec::new());
    assert!(g.handle_group(T0 + 15 * SEC, Vec::new(), Vec::new()).sealed);
    assert_eq!(g.poll_wake(), Some(T0 + 20 * SEC), "the next interval");
}

#[test]
fn a_full_journal_refuses_each_data_submission_with_its_work_and_commits_the_rest() {
    let config = JournalConfig {
        budget_bytes: 1,
        policy: FullPolicy::Backpressure,
        ..JournalConfig::default()
    };
    let (_dir, j) = journal(config);
    let metrics = Arc::new(AgentMetrics::default());
    let mut g = GroupCommit::new(j, metrics.clone(), pacing(5, 3600));
    // Under the budget at the start of the commit: taken.
    let first = g.handle_group(T0, vec![work("a1", 10, T0)], Vec::new());
    assert_eq!(first.outcomes[0].as_ref().unwrap().accepted, 10);
    let health = Work {
        health: vec![("a1".into(), 3, 1)],
        ..Work::default()
    };
    let refused = work("a1", 3, T0 + 10);
    let second = g.handle_group(
        T0 + SEC,
        vec![refused.clone(), health, work("b2", 1, T0)],
        Vec::new(),
    );
    let mut outcomes = second.outcomes.into_iter();
    let Some(Err(Refused {
        error: SubmitError::Full { used, budget: 1 },
        work: Some(back),
    })) = outcomes.next()
    else {
        panic!("a full journal refuses data and returns it");
    };
    assert!(used > 1, "{used} bytes used");
    assert_eq!(*back, refused, "the work comes back untouched");
    assert_eq!(
        outcomes.next().unwrap().unwrap().accepted,
        0,
        "health is committed"
    );
    assert!(matches!(
        outcomes.next(),
        Some(Err(Refused { work: Some(_), .. }))
    ));
    assert_eq!(metrics.backpressure.get(), 2);
    assert_eq!(metrics.readings_in.get(), 10);
    assert_eq!(
        g.received().get("a1"),
        Some(&10),
        "refused readings are not received"
    );
    assert_eq!(g.received().get("b2"), None);
}

#[test]
fn a_group_with_nothing_to_do_begins_no_transaction() {
    let (_dir, j) = journal(lingering());
    let metrics = Arc::new(AgentMetrics::default());
    let mut g = GroupCommit::new(j, metrics.clone(), pacing(5, 3600));
    for i in 0..10 {
        g.handle_group(T0 + i, Vec::new(), Vec::new());
    }
    assert_eq!(metrics.guard.journal_transactions.get(), 0);
    g.handle_group(T0 + 10, vec![work("a1", 1, T0)], Vec::new());
    assert_eq!(metrics.guard.journal_transactions.get(), 1);
    // The batch lingers 2 s: nothing is due before.
    g.handle_group(T0 + SEC, Vec::new(), Vec::new());
    assert_eq!(metrics.guard.journal_transactions.get(), 1);
    assert!(
        g.handle_group(T0 + 2 * SEC + 10, Vec::new(), Vec::new())
            .sealed
    );
    assert_eq!(metrics.guard.journal_transactions.get(), 2);
}

#[test]
fn readings_outside_the_window_are_refused_alone_and_counted_per_origin() {
    let (_dir, j) = journal(JournalConfig::default());
    let metrics = Arc::new(AgentMetrics::default());
    let mut g = GroupCommit::new(j, metrics.clone(), pacing(5, 3600));
    g.set_timestamp_window(Some((T0, T0 + 10)));
    // a1: 20 readings at T0.., 10 of them past the window; b2 all good.
    let r = g.handle_group(
        T0,
        vec![work("a1", 20, T0 + 1), work("b2", 5, T0)],
        Vec::new(),
    );
    assert_eq!(r.outcomes[0].as_ref().unwrap().accepted, 10);
    assert_eq!(r.outcomes[1].as_ref().unwrap().accepted, 5);
    assert_eq!(metrics.guard.readings_rejected_timestamp.get(), 10);
    assert_eq!(metrics.readings_in.get(), 15);
    let received: Vec<_> = g.received().iter().map(|(o, n)| (o.as_str(), *n)).collect();
    assert_eq!(
        received,
        [("a1", 10), ("b2", 5)],
        "refused ones not received"
    );
    let stats = g.journal().stats().unwrap();
    assert_eq!(
        stats.dropped,
        [("a1".to_owned(), ferry_proto::health::REJECTED_TIMESTAMP, 10)]
    );
    // A work whose readings are all outside keeps only its count.
    let mut w = work("c3", 3, T0 - 100);
    assert_eq!(reject_outside(&mut w, (T0, T0 + 10)), 3);
    assert!(w.readings.is_empty());
    assert_eq!(
        w.health,
        [("c3".to_owned(), ferry_proto::health::REJECTED_TIMESTAMP, 3)]
    );
}

#[test]
fn near_a_full_disk_a_held_journal_hands_data_back_and_commits_health() {
    let (_dir, j) = journal(JournalConfig::default());
    let metrics = Arc::new(AgentMetrics::default());
    let mut g = GroupCommit::new(j, metrics.clone(), pacing(5, 3600));
    g.set_disk_hold(Some(100));
    let health = Work {
        health: vec![("u1".into(), ferry_proto::health::DROPPED_QUEUE_FULL, 2)],
        ..Work::default()
    };
    let data = work("a1", 4, T0);
    let r = g.handle_group(T0, vec![data.clone(), health], Vec::new());
    let mut outcomes = r.outcomes.into_iter();
    let Some(Err(Refused {
        error: SubmitError::DiskFull { free: 100 },
        work: Some(back),
    })) = outcomes.next()
    else {
        panic!("data is handed back while the disk is full");
    };
    assert_eq!(*back, data);
    assert!(outcomes.next().unwrap().is_ok(), "health is committed");
    g.set_disk_hold(None);
    let r = g.handle_group(T0 + 1, vec![data], Vec::new());
    assert_eq!(r.outcomes[0].as_ref().unwrap().accepted, 4);
}

/// Window state is charged per series: a new aggregated series past the
/// budget is refused and counted as kind 11 (not as received), series
/// already in a window go on, and closing windows hands the bytes back.
#[test]
fn new_window_series_past_the_budget_are_refused_and_counted() {
    use crate::journal::AggregateRule;
    use crate::window::{LatePolicy, WindowRule};
    let config = JournalConfig {
        rules: vec![AggregateRule {
            metric: "temperature".into(),
            window: WindowRule {
                period_ns: 10 * SEC as u64,
                lateness_ns: 0,
                sketch: false,
                late: LatePolicy::Raw,
            },
        }],
        ..lingering()
    };
    let (_dir, j) = journal(config);
    let mut g = GroupCommit::new(j, Arc::default(), pacing(5, 3600));
    let budget = MemoryBudget::new(2 * WINDOW_SERIES_BYTES);
    g.set_memory_budget(budget.clone());
    let r = g.handle_group(
        T0,
        vec![work("a1", 2, T0), work("b2", 1, T0), work("c3", 5, T0)],
        Vec::new(),
    );
    let accepted: Vec<u64> = r
        .outcomes
        .iter()
        .map(|o| o.as_ref().unwrap().accepted)
        .collect();
    assert_eq!(accepted, [2, 1, 0], "c3's series did not fit");
    assert_eq!(budget.used(), 2 * WINDOW_SERIES_BYTES);
    assert_eq!((budget.refused_series(), budget.refused_readings()), (1, 5));
    let received: Vec<_> = g.received().iter().map(|(o, n)| (o.as_str(), *n)).collect();
    assert_eq!(
        received,
        [("a1", 2), ("b2", 1)],
        "refused readings were never received"
    );
    // A series with open windows takes more readings at the bound.
    let r = g.handle_group(T0 + 1, vec![work("a1", 3, T0 + 5)], Vec::new());
    assert_eq!(r.outcomes[0].as_ref().unwrap().accepted, 3);
    // Its windows close: their bytes come back, and c3 fits.
    g.handle_group(T0 + 20 * SEC, Vec::new(), Vec::new());
    assert_eq!(budget.used(), 0);
    let r = g.handle_group(
        T0 + 21 * SEC,
        vec![work("c3", 1, T0 + 21 * SEC)],
        Vec::new(),
    );
    assert_eq!(r.outcomes[0].as_ref().unwrap().accepted, 1);
    // The count reaches the collector in a batch.
    g.handle_group(T0 + 30 * SEC, Vec::new(), Vec::new());
    let mut counted = Vec::new();
    for (_, bytes) in g.journal().next_to_send(u64::MAX, false).unwrap() {
        let batch: ferry_proto::batch::Batch =
            ferry_proto::codec::from_bytes("Batch", &bytes).unwrap();
        for h in batch.health {
            if h.kind == DROPPED_MEMORY_BUDGET {
                counted.push((h.source, h.count));
            }
        }
    }
    assert_eq!(counted, [("c3".to_string(), 5)]);
}
