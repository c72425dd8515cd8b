//! [`Udp`](super::Udp) without a socket: datagrams in at a given `now`,
//! the writer played by the test through the intake's channel.

use tokio::sync::mpsc;

use super::*;
use crate::intake::{Refused, Submission};
use crate::journal::CommitReport;

const S: i64 = ferry_clock::SEC;
const MS: i64 = 1_000_000;
const T0: i64 = 1_700_000_000 * S;

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

fn udp(queue: usize, budget: Option<Arc<MemoryBudget>>) -> (Udp, mpsc::Receiver<Submission>) {
    let (intake, rx) = Intake::channel(queue);
    let intake = match budget {
        Some(b) => intake.with_budget(b),
        None => intake,
    };
    let cfg = InfluxConfig {
        name: "udp-in".into(),
        ..InfluxConfig::default()
    };
    (Udp::new(cfg, intake, Arc::default()), rx)
}

/// Two origins, three readings, one bad line.
const DATAGRAM: &[u8] = b"m,device=d1 v=1 1000\nm,device=d2 v=2,w=3 2000\nnot line protocol\n";

fn answer(sub: Submission, outcome: Outcome) -> Work {
    let work = sub.work;
    sub.done.send(outcome).unwrap();
    work
}

fn committed() -> Outcome {
    Ok(CommitReport::default())
}

fn readings_per_origin(work: &Work) -> Vec<(String, usize)> {
    work.readings
        .iter()
        .map(|g| (g.origin.clone(), g.readings.len()))
        .collect()
}

/// The answer, which the writer has given already (or dropped).
fn now_answered(s: Submitted) -> (Sent, Answer) {
    let mut answer = s.answer;
    (s.sent, Answer::of(answer.try_recv().ok()))
}

#[test]
fn a_datagram_becomes_one_submission_counted_once_committed() {
    let (mut u, mut rx) = udp(4, None);
    let sub = u.datagram(T0, DATAGRAM, peer()).unwrap();
    assert_eq!(u.stats.bytes(), DATAGRAM.len() as u64);
    assert_eq!(u.stats.lines_rejected(), 1);
    assert_eq!(u.stats.readings_accepted(), 0, "not before the commit");
    let work = answer(rx.try_recv().unwrap(), committed());
    assert_eq!(
        readings_per_origin(&work),
        [("d1".into(), 1), ("d2".into(), 1), ("d2".into(), 1)]
    );
    assert_eq!(
        work.health,
        [("udp-in".to_owned(), health::REJECTED_INPUT, 1)]
    );
    let (sent, answer) = now_answered(sub);
    u.answered(T0, sent, answer);
    assert_eq!(u.stats.lines_accepted(), 2);
    assert_eq!(u.stats.readings_accepted(), 3);
    assert_eq!(u.stats.dropped_readings(), 0);
    assert_eq!(u.poll_retry(), None, "nothing pending");
}

#[test]
fn a_full_queue_drops_and_counts_per_origin_and_a_retry_carries_the_counts() {
    let (mut u, mut rx) = udp(1, None);
    let first = u.datagram(T0, b"m,device=d1 v=1 1\n", peer());
    assert!(first.is_some(), "the queue takes one");
    assert!(u.datagram(T0 + MS, DATAGRAM, peer()).is_none(), "full");
    assert_eq!(u.stats.dropped_readings(), 3);
    assert_eq!(u.poll_retry(), Some(T0 + 101 * MS), "100 ms after the loss");
    assert!(u.handle_retry(T0 + 100 * MS).is_none(), "not due");
    // Due, still full: lost again, retried 100 ms later.
    assert!(u.handle_retry(T0 + 101 * MS).is_none());
    assert_eq!(u.poll_retry(), Some(T0 + 201 * MS));
    assert_eq!(u.stats.dropped_readings(), 3, "counts are not readings");
    // The writer takes the first; the retry carries the drop counts.
    answer(rx.try_recv().unwrap(), committed());
    let retry = u.handle_retry(T0 + 201 * MS).unwrap();
    let work = answer(rx.try_recv().unwrap(), committed());
    assert!(work.readings.is_empty());
    assert_eq!(
        work.health,
        [
            ("d1".to_owned(), health::DROPPED_QUEUE_FULL, 1),
            ("d2".to_owned(), health::DROPPED_QUEUE_FULL, 2),
            ("udp-in".to_owned(), health::REJECTED_INPUT, 1),
        ]
    );
    assert_eq!(u.poll_retry(), None);
    let (sent, a) = now_answered(retry);
    u.answered(T0 + 202 * MS, sent, a);
    assert_eq!(u.poll_retry(), None);
}

#[test]
fn pending_counts_ride_along_with_the_next_datagram() {
    let (mut u, mut rx) = udp(1, None);
    let _first = u.datagram(T0, b"m,device=d1 v=1 1\n", peer()).unwrap();
    assert!(u.datagram(T0, b"m,device=d9 v=1 1\n", peer()).is_none());
    answer(rx.try_recv().unwrap(), committed());
    let _next = u.datagram(T0 + MS, b"m,device=d1 v=2 2\n", peer()).unwrap();
    let work = answer(rx.try_recv().unwrap(), committed());
    assert_eq!(readings_per_origin(&work), [("d1".into(), 1)]);
    assert_eq!(
        work.health,
        [("d9".to_owned(), health::DROPPED_QUEUE_FULL, 1)]
    );
    assert_eq!(u.poll_retry(), None, "handed over: no retry");
}

#[test]
fn a_refusal_pends_what_the_submission_carried_and_a_gone_writer_only_counts() {
    let (mut u, mut rx) = udp(4, None);
    let sub = u.datagram(T0, DATAGRAM, peer()).unwrap();
    let full = Err(Refused::full(9, 8, Work::default()));
    answer(rx.try_recv().unwrap(), full);
    let (sent, a) = now_answered(sub);
    assert!(matches!(a, Answer::Refused(SubmitError::Full { .. })));
    u.answered(T0 + 5 * MS, sent, a);
    assert_eq!(u.stats.dropped_readings(), 3);
    assert_eq!(u.stats.readings_accepted(), 0);
    assert_eq!(u.poll_retry(), Some(T0 + 105 * MS));
    assert_eq!(
        u.pending
            .iter()
            .map(|(k, n)| (k.0.as_str(), k.1, *n))
            .collect::<Vec<_>>(),
        [
            ("d1", health::DROPPED_QUEUE_FULL, 1),
            ("d2", health::DROPPED_QUEUE_FULL, 2),
            ("udp-in", health::REJECTED_INPUT, 1),
        ]
    );
    // The retry's answer never comes: the writer is gone.
    let retry = u.handle_retry(T0 + 105 * MS).unwrap();
    drop(rx.try_recv().unwrap());
    let (sent, a) = now_answered(retry);
    assert!(matches!(a, Answer::WriterGone));
    u.answered(T0 + 106 * MS, sent, a);
    assert_eq!(u.stats.dropped_readings(), 3, "a retry carries no readings");
    assert_eq!(u.poll_retry(), None, "nothing more can be recorded");
}

#[test]
fn pending_origins_are_bounded_the_rest_counted_under_the_source() {
    let (mut u, _rx) = udp(1, None);
    for i in 0..MAX_PENDING_ORIGINS + 2 {
        u.pend(format!("d{i}"), health::DROPPED_QUEUE_FULL, 1);
    }
    u.pend("d0".into(), health::DROPPED_QUEUE_FULL, 1);
    assert_eq!(u.pending.len(), MAX_PENDING_ORIGINS + 1);
    assert_eq!(
        u.pending[&("udp-in".to_owned(), health::DROPPED_QUEUE_FULL)],
        2,
        "origins past the bound"
    );
    assert_eq!(u.pending[&("d0".to_owned(), health::DROPPED_QUEUE_FULL)], 2);
}

#[test]
fn the_buffer_and_a_datagram_in_flight_are_charged_to_the_memory_budget() {
    let budget = MemoryBudget::new(64 << 20);
    let buf = RecvBuf::new(Some(&budget));
    assert_eq!(budget.used(), RECV_BUF as u64, "the receive buffer");
    let (mut u, mut rx) = udp(4, Some(budget.clone()));
    let sub = u.datagram(T0, DATAGRAM, peer()).unwrap();
    let keys = u.keys.charged();
    assert!(keys > 0, "the series keys are cached and charged");
    let in_flight = sub.sent.charge.as_ref().unwrap().bytes();
    assert!(in_flight > 0);
    assert_eq!(budget.used(), RECV_BUF as u64 + keys + in_flight);
    answer(rx.try_recv().unwrap(), committed());
    let (sent, a) = now_answered(sub);
    u.answered(T0, sent, a);
    assert_eq!(
        budget.used(),
        RECV_BUF as u64 + keys,
        "handed back once answered"
    );
    drop(u);
    drop(buf);
    assert_eq!(budget.used(), 0);
}
