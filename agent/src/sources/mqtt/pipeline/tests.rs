//! Fake-clock tests of [`Pipeline`](super::Pipeline) and
//! [`Reconnect`](super::Reconnect): messages in, work and acks out, with
//! no broker and no journal.

use std::sync::Arc;

use super::*;

const S: i64 = ferry_clock::SEC;
const MS: i64 = 1_000_000;
const T0: i64 = 1_700_000_000 * S;

fn pipeline() -> (Pipeline, Arc<MqttStats>) {
    let stats = Arc::new(MqttStats::default());
    let cfg = MqttConfig {
        name: "mq".into(),
        ..MqttConfig::default()
    };
    (
        Pipeline::new(cfg, Dedupe::load("mq", &[]), stats.clone()),
        stats,
    )
}

fn publish(pkid: u16, payload: &str) -> Publish {
    let mut p = Publish::new("site/a", QoS::AtLeastOnce, payload.as_bytes().to_vec());
    p.pkid = pkid;
    p
}

fn redelivery(pkid: u16, payload: &str) -> Publish {
    let mut p = publish(pkid, payload);
    p.dup = true;
    p
}

/// The packet ids the client is handed now, all queued.
fn acks(p: &mut Pipeline, now: i64) -> Vec<u16> {
    let mut sent = Vec::new();
    p.flush_acks(now, |p| {
        sent.push(p.pkid);
        AckSent::Queued
    });
    sent
}

fn readings(work: &Work) -> usize {
    work.readings.iter().map(|g| g.readings.len()).sum()
}

fn full() -> Result<(), Refused> {
    Err(Refused::full(9, 8, Work::default()))
}

#[test]
fn messages_are_acked_only_after_the_commit_that_holds_them() {
    let (mut p, stats) = pipeline();
    assert!(p.poll_submit(T0).is_none(), "nothing to commit");
    p.handle_publish(T0, publish(1, "m v=1 1000"));
    p.handle_publish(T0, publish(2, "m v=2 2000"));
    let work = p.poll_submit(T0).unwrap();
    assert_eq!(readings(&work), 2);
    assert_eq!(work.marks.len(), 2, "each message's mark rides along");
    // Arriving during the commit: the next batch.
    p.handle_publish(T0 + MS, publish(3, "m v=3 3000"));
    assert!(p.poll_submit(T0 + MS).is_none(), "one commit at a time");
    assert_eq!(acks(&mut p, T0 + MS), [] as [u16; 0]);
    assert_eq!(stats.messages(), 0);
    assert_eq!(p.handle_answer(T0 + 2 * MS, Ok(())), Flow::Continue);
    assert_eq!(acks(&mut p, T0 + 2 * MS), [1, 2]);
    assert_eq!((stats.messages(), stats.readings_accepted()), (2, 2));
    let work = p.poll_submit(T0 + 2 * MS).unwrap();
    assert_eq!(readings(&work), 1);
    p.handle_answer(T0 + 3 * MS, Ok(()));
    assert_eq!(acks(&mut p, T0 + 3 * MS), [3]);
    assert_eq!(p.poll_wake(), None);
}

#[test]
fn a_refused_batch_goes_back_after_doubling_pauses_and_its_messages_wait() {
    let (mut p, stats) = pipeline();
    p.handle_publish(T0, publish(1, "m v=1 1000"));
    let mut work = p.poll_submit(T0).unwrap();
    let mut now = T0;
    let mut pauses = Vec::new();
    for _ in 0..9 {
        let back = Err(Refused::full(9, 8, work));
        assert_eq!(p.handle_answer(now, back), Flow::Continue);
        let at = p.poll_wake().unwrap();
        pauses.push((at - now) / MS);
        assert!(p.poll_submit(at - 1).is_none(), "not before its pause");
        work = p.poll_submit(at).unwrap();
        assert_eq!(readings(&work), 1, "the same batch");
        now = at;
    }
    assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    // Meanwhile new messages fill the next batch, not this one.
    p.handle_publish(now, publish(2, "m v=2 2000"));
    assert_eq!(acks(&mut p, now), [] as [u16; 0]);
    p.handle_answer(now, Ok(()));
    assert_eq!(acks(&mut p, now), [1]);
    assert_eq!(stats.messages(), 1);
    // The next batch starts from the first pause again.
    let _ = p.poll_submit(now).unwrap();
    p.handle_answer(now, full());
    assert_eq!(p.poll_wake(), Some(now + 10 * MS));
}

#[test]
fn a_failed_commit_leaves_its_messages_unacked_and_their_redeliveries_stored() {
    let (mut p, stats) = pipeline();
    p.handle_publish(T0, publish(7, "m v=1 1000"));
    let _ = p.poll_submit(T0).unwrap();
    let failed = Err(Refused::from(SubmitError::Storage("io".into())));
    assert_eq!(p.handle_answer(T0, failed), Flow::Continue);
    assert_eq!(acks(&mut p, T0), [] as [u16; 0]);
    assert_eq!(stats.messages(), 0);
    // The broker redelivers on the next connection: stored this time.
    p.handle_publish(S + T0, redelivery(7, "m v=1 1000"));
    let work = p.poll_submit(T0 + S).unwrap();
    assert_eq!((readings(&work), work.marks.len()), (1, 1));
    assert_eq!(stats.redeliveries_skipped(), 0);
}

#[test]
fn redeliveries_are_acked_without_being_stored_once_their_original_is_committed() {
    let (mut p, stats) = pipeline();
    p.handle_publish(T0, publish(1, "m v=1 1000"));
    let _ = p.poll_submit(T0).unwrap();
    // Redelivered while its commit runs: acked after the commit.
    p.handle_publish(T0, redelivery(1, "m v=1 1000"));
    assert_eq!(acks(&mut p, T0), [] as [u16; 0]);
    p.handle_answer(T0, Ok(()));
    assert_eq!(acks(&mut p, T0), [1]);
    let work = p.poll_submit(T0).unwrap();
    assert!(work.is_empty(), "the redelivery's batch holds only its ack");
    p.handle_answer(T0, Ok(()));
    assert_eq!(acks(&mut p, T0), [1]);
    // Redelivered after: acked at once, nothing to commit.
    p.handle_publish(T0, redelivery(1, "m v=1 1000"));
    assert_eq!(acks(&mut p, T0), [1]);
    assert!(p.poll_submit(T0).is_none());
    assert_eq!((stats.redeliveries_skipped(), stats.messages()), (2, 1));
}

#[test]
fn acks_the_client_has_no_room_for_are_retried_in_order() {
    let (mut p, _) = pipeline();
    for pkid in 1..=3 {
        p.handle_publish(T0, publish(pkid, "m v=1 1000"));
    }
    let _ = p.poll_submit(T0).unwrap();
    p.handle_answer(T0, Ok(()));
    let mut room = 1;
    let mut sent = Vec::new();
    p.flush_acks(T0, |a| {
        if room == 0 {
            return AckSent::Full;
        }
        room -= 1;
        sent.push(a.pkid);
        AckSent::Queued
    });
    assert_eq!(sent, [1]);
    assert_eq!(p.poll_wake(), Some(T0 + 10 * MS), "tried again shortly");
    assert_eq!(acks(&mut p, T0 + 10 * MS), [2, 3]);
    assert_eq!(p.poll_wake(), None);
    // A gone client: the acks are dropped (the broker redelivers).
    p.handle_publish(T0, publish(4, "m v=1 1000"));
    let _ = p.poll_submit(T0).unwrap();
    p.handle_answer(T0, Ok(()));
    p.flush_acks(T0, |_| AckSent::Gone);
    assert_eq!(acks(&mut p, T0), [] as [u16; 0]);
}

#[test]
fn malformed_payloads_are_one_health_count_per_batch_and_acked_after_it() {
    let (mut p, stats) = pipeline();
    p.handle_publish(T0, publish(1, "not line protocol"));
    p.handle_publish(T0, publish(2, "also bad"));
    let mut big = publish(3, "m v=1 1000");
    big.payload = vec![b'x'; (1 << 20) + 1].into();
    p.handle_publish(T0, big);
    p.handle_publish(T0, publish(4, "m v=1 1000"));
    let work = p.poll_submit(T0).unwrap();
    assert_eq!(readings(&work), 1);
    assert_eq!(work.health, [("mq".to_owned(), health::REJECTED_INPUT, 3)]);
    assert_eq!(stats.malformed(Malformed::LineProtocol), 0, "not before it");
    p.handle_answer(T0, Ok(()));
    assert_eq!(acks(&mut p, T0), [1, 2, 3, 4]);
    assert_eq!(stats.malformed(Malformed::LineProtocol), 2);
    assert_eq!(stats.malformed(Malformed::TooLarge), 1);
    assert_eq!(stats.messages(), 4);
}

#[test]
fn a_full_batch_stops_reading_and_qos0_needs_no_ack() {
    let (mut p, _) = pipeline();
    let mut q0 = publish(0, "m v=1 1000");
    q0.qos = QoS::AtMostOnce;
    p.handle_publish(T0, q0);
    let work = p.poll_submit(T0).unwrap();
    assert_eq!((readings(&work), work.marks.len()), (1, 0));
    p.handle_answer(T0, Ok(()));
    assert_eq!(acks(&mut p, T0), [] as [u16; 0]);
    for i in 0..MAX_BATCH {
        assert!(p.has_room());
        p.handle_publish(T0, publish(i as u16 + 1, "m v=1 1000"));
    }
    assert!(!p.has_room(), "the broker holds the rest");
    let _ = p.poll_submit(T0).unwrap();
    assert!(p.has_room(), "a new batch while that one commits");
}

#[test]
fn stopping_stops_and_leaves_the_batch_unacked() {
    let (mut p, _) = pipeline();
    p.handle_publish(T0, publish(1, "m v=1 1000"));
    let _ = p.poll_submit(T0).unwrap();
    let stop = Err(Refused::from(SubmitError::Shutdown));
    assert_eq!(p.handle_answer(T0, stop), Flow::Stop);
    assert_eq!(acks(&mut p, T0), [] as [u16; 0]);
}

#[test]
fn reconnects_back_off_from_50ms_to_5s_and_errors_are_logged_once_per_10s() {
    let mut r = Reconnect::default();
    let mut now = T0;
    let mut pauses = Vec::new();
    let mut logged = Vec::new();
    for _ in 0..9 {
        let (at, log) = r.handle_error(now);
        pauses.push((at - now) / MS);
        logged.push(log);
        now = at;
    }
    assert_eq!(pauses, [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    // At T0, then the first error 10 s later (T0 + 11.35 s), with the
    // seven held back since.
    assert_eq!(
        logged,
        [Some(0), None, None, None, None, None, None, None, Some(7)]
    );
    r.handle_connected();
    let (at, log) = r.handle_error(now);
    assert_eq!((at - now) / MS, 50, "from the first pause once connected");
    assert_eq!(log, None, "within 10 s of the last line");
}
