//! The device link with a fake clock: hello, sequence numbers, acks, resends,
//! ring overflow accounting, heartbeats and time sync (reports wait for the
//! first sync and carry it, marked when queued before it).

use ferry_firmware::link::{Event, Identity, Link, LinkTimers, TX_BUFFER};
use ferry_proto::codec;
use ferry_proto::link::{
    Channel, DeviceId, Downlink, Heartbeat, LinkAck, LinkConfig, Report, ReportTime, TimeSync,
    Uplink, WindowReport, time_quality,
};
use ferry_proto::serial::{self, Deframer};

const BOOT: u32 = 7;
const TIMERS: LinkTimers = LinkTimers {
    resend_after_ms: 1_000,
    heartbeat_every_ms: 5_000,
    hello_every_ms: 500,
};

fn identity() -> Identity {
    let mut channels = heapless::Vec::new();
    channels
        .push(Channel {
            id: 0,
            sensor: "sht4x".try_into().unwrap(),
            quantity: "temperature".try_into().unwrap(),
            unit: "Cel".try_into().unwrap(),
        })
        .unwrap();
    Identity {
        device_id: DeviceId::from_bytes(&[0xA1, 0xB2, 0xC3]).unwrap(),
        boot: BOOT,
        firmware: "ferry-fw test".try_into().unwrap(),
        channels,
    }
}

fn window(start_ms: u64) -> WindowReport {
    WindowReport {
        channel: 0,
        start_ms,
        len_ms: 1_000,
        count: 2,
        sum: 3.0,
        min: 1.0,
        max: 2.0,
        first: 1.0,
        last: 2.0,
    }
}

/// Everything the link sends at `now`, decoded.
fn drain<const N: usize, const W: usize>(link: &mut Link<N, W>, now: u64) -> Vec<Uplink> {
    let mut out = Vec::new();
    let mut buf = [0u8; TX_BUFFER];
    while let Some(n) = link.poll_transmit(now, &mut buf) {
        let mut d = Deframer::new();
        let mut payload = None;
        for &b in &buf[..n] {
            if let Some(r) = d.push(b) {
                payload = Some(r.unwrap().to_vec());
            }
        }
        out.push(
            codec::from_bytes::<Uplink>("Uplink", &payload.expect("one whole frame")).unwrap(),
        );
        assert!(out.len() < 100, "link keeps sending");
    }
    out
}

fn seqs(msgs: &[Uplink]) -> Vec<u32> {
    msgs.iter()
        .filter_map(|m| match m {
            Uplink::Report(Report { seq, .. }) => Some(*seq),
            _ => None,
        })
        .collect()
}

fn downlink_frame(msg: &Downlink) -> Vec<u8> {
    let mut payload = [0u8; 64];
    let n = codec::to_slice(msg, &mut payload).unwrap();
    let mut frame = [0u8; 80];
    let m = serial::encode_frame(&payload[..n], &mut frame).unwrap();
    frame[..m - 1].to_vec() // without the delimiter: decode_frame input
}

/// Wall-clock time (Unix ms) of the boot's uptime 0 in these tests.
const WALL_ZERO: i64 = 1_700_000_000_000;

/// The gateway's answer to a hello or heartbeat at uptime `now`.
fn sync<const N: usize, const W: usize>(link: &mut Link<N, W>, now: u64) -> Event {
    link.handle_downlink(
        now,
        Downlink::TimeSync(TimeSync {
            power_up: BOOT,
            uptime_ms: now,
            wall_ms: WALL_ZERO + now as i64,
        }),
    )
}

/// A link that starts at `now` and has been synced.
fn synced<const N: usize, const W: usize>(now: u64) -> Link<N, W> {
    let mut link = Link::new(now, identity(), TIMERS);
    sync(&mut link, now);
    link
}

fn ack<const N: usize, const W: usize>(
    link: &mut Link<N, W>,
    now: u64,
    boot: u32,
    up_to: u32,
) -> Event {
    link.handle_downlink(now, Downlink::Ack(LinkAck { boot, up_to }))
}

#[test]
fn hello_first_then_repeated_until_the_gateway_speaks() {
    let mut link: Link<4> = Link::new(100, identity(), TIMERS);
    let sent = drain(&mut link, 100);
    let [Uplink::Hello(hello)] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert_eq!(hello.boot, BOOT);
    // Uptime is the caller's clock: ms since boot.
    assert_eq!(hello.uptime_ms, 100);
    assert_eq!(hello.power_up, BOOT);
    assert_eq!(hello.device_id.to_string(), "a1b2c3");
    assert_eq!(hello.channels.len(), 1);
    assert_eq!(hello.link_version, ferry_proto::link::LINK_VERSION);
    assert!(drain(&mut link, 599).is_empty());
    assert_eq!(link.next_due_ms(), 600);
    let again = drain(&mut link, 600);
    assert!(matches!(&again[..], [Uplink::Hello(h)] if h.uptime_ms == 600));
    // Any downlink proves the gateway is there: no more unsolicited hellos.
    ack(&mut link, 700, BOOT, 0);
    let s = drain(&mut link, 1_100);
    assert!(s.is_empty(), "{s:?}");
    assert!(drain(&mut link, 4_000).is_empty());
}

#[test]
fn reports_get_sequence_numbers_from_one_and_leave_on_cumulative_ack() {
    let mut link: Link<8> = synced(0);
    drain(&mut link, 0);
    ack(&mut link, 0, BOOT, 0);
    link.push_report(&[window(0)]);
    link.push_report(&[window(1_000)]);
    link.push_report(&[window(2_000)]);
    let sent = drain(&mut link, 10);
    assert_eq!(seqs(&sent), [1, 2, 3]);
    let Uplink::Report(first) = &sent[0] else {
        panic!()
    };
    assert_eq!(&first.windows[..], &[window(0)]);
    assert_eq!(link.queued(), 3);
    assert_eq!(
        ack(&mut link, 20, BOOT, 2),
        Event::Acked {
            up_to: 2,
            released: 2
        }
    );
    assert_eq!(link.queued_seqs().collect::<Vec<_>>(), [3]);
    // A repeated ack releases nothing more.
    assert_eq!(
        ack(&mut link, 21, BOOT, 2),
        Event::Acked {
            up_to: 2,
            released: 0
        }
    );
    assert_eq!(link.stats().acked, 2);
    assert_eq!(link.next_seq(), 4);
}

#[test]
fn unacked_reports_are_resent_after_the_timeout_and_only_then() {
    let mut link: Link<8> = synced(0);
    drain(&mut link, 0);
    ack(&mut link, 0, BOOT, 0);
    link.push_report(&[window(0)]);
    assert_eq!(seqs(&drain(&mut link, 100)), [1]);
    link.push_report(&[window(1_000)]);
    assert_eq!(seqs(&drain(&mut link, 600)), [2]);
    assert!(drain(&mut link, 1_099).is_empty());
    assert_eq!(link.next_due_ms(), 1_100);
    assert_eq!(seqs(&drain(&mut link, 1_100)), [1]);
    assert_eq!(seqs(&drain(&mut link, 1_600)), [2]);
    ack(&mut link, 1_700, BOOT, 1);
    assert_eq!(seqs(&drain(&mut link, 2_600)), [2]);
    ack(&mut link, 2_700, BOOT, 2);
    assert!(seqs(&drain(&mut link, 10_000)).is_empty());
    assert_eq!(link.stats().resent, 3);
}

#[test]
fn acks_of_another_boot_or_of_unsent_sequences_are_ignored() {
    let mut link: Link<8> = synced(0);
    link.push_report(&[window(0)]);
    link.push_report(&[window(1_000)]);
    let stale = LinkAck {
        boot: BOOT - 1,
        up_to: 2,
    };
    assert_eq!(
        link.handle_downlink(5, Downlink::Ack(stale)),
        Event::StaleAck(stale)
    );
    let future = LinkAck {
        boot: BOOT,
        up_to: 3,
    };
    assert_eq!(
        link.handle_downlink(5, Downlink::Ack(future)),
        Event::StaleAck(future)
    );
    assert_eq!(link.queued(), 2);
    assert_eq!(link.stats().stale_acks, 2);
}

#[test]
fn full_ring_drops_the_oldest_and_heartbeats_count_it() {
    let mut link: Link<3> = synced(0);
    drain(&mut link, 0);
    for i in 0..5 {
        link.push_report(&[window(i * 1_000)]);
    }
    assert_eq!(link.queued_seqs().collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(link.stats().dropped, 2);
    assert_eq!(seqs(&drain(&mut link, 10)), [3, 4, 5]);
    assert_eq!(
        link.heartbeat(10),
        Heartbeat {
            power_up: BOOT,
            uptime_ms: 10,
            dropped: 2,
            queued: 3,
            next_seq: 6
        }
    );
    // Acking past dropped sequences is fine: they are gone, and counted.
    ack(&mut link, 20, BOOT, 4);
    assert_eq!(link.queued_seqs().collect::<Vec<_>>(), [5]);
    // The heartbeat is due at 5 000; the unacked report too (sent at 10).
    let sent = drain(&mut link, 5_000);
    assert_eq!(seqs(&sent), [5]);
    assert_eq!(
        sent.last(),
        Some(&Uplink::Heartbeat(Heartbeat {
            power_up: BOOT,
            uptime_ms: 5_000,
            dropped: 2,
            queued: 1,
            next_seq: 6
        }))
    );
    // Accounting: everything numbered is acked, queued or dropped.
    let s = link.stats();
    assert_eq!(
        s.acked + link.queued() as u32 + s.dropped,
        link.next_seq() - 1
    );
}

#[test]
fn heartbeats_come_on_their_period() {
    let mut link: Link<2> = Link::new(1_000, identity(), TIMERS);
    drain(&mut link, 1_000);
    ack(&mut link, 1_000, BOOT, 0);
    assert!(drain(&mut link, 5_999).is_empty());
    let sent = drain(&mut link, 6_000);
    assert!(matches!(&sent[..], [Uplink::Heartbeat(h)] if h.uptime_ms == 6_000 && h.next_seq == 1));
    assert_eq!(link.next_due_ms(), 11_000);
}

#[test]
fn hello_request_resends_hello_and_everything_unacked_at_once() {
    let mut link: Link<4> = synced(0);
    drain(&mut link, 0);
    ack(&mut link, 0, BOOT, 0);
    link.push_report(&[window(0)]);
    link.push_report(&[window(1_000)]);
    assert_eq!(seqs(&drain(&mut link, 10)), [1, 2]);
    assert_eq!(
        link.handle_downlink(20, Downlink::HelloRequest(())),
        Event::HelloRequested
    );
    let sent = drain(&mut link, 20);
    assert!(matches!(sent[0], Uplink::Hello(_)));
    assert_eq!(seqs(&sent), [1, 2]);
}

#[test]
fn frames_are_decoded_and_bad_ones_counted() {
    let mut link: Link<4> = synced(0);
    let mut frame = downlink_frame(&Downlink::Config(LinkConfig {
        sample_period_ms: 50,
        window_ms: 500,
    }));
    let payload = serial::decode_frame(&mut frame).unwrap().to_vec();
    assert_eq!(
        link.handle_payload(0, &payload),
        Event::Config(LinkConfig {
            sample_period_ms: 50,
            window_ms: 500
        })
    );
    assert_eq!(link.handle_payload(0, &[0x92, 0x09, 0xC0]), Event::BadFrame);
    assert_eq!(link.handle_bad_frame(), Event::BadFrame);
    assert_eq!(link.stats().bad_frames, 2);
}

#[test]
fn many_windows_are_split_into_reports_of_at_most_w() {
    let mut link: Link<4, 2> = synced(0);
    drain(&mut link, 0);
    let windows: Vec<_> = (0..5).map(|i| window(i * 1_000)).collect();
    link.push_report(&windows);
    let sent = drain(&mut link, 1);
    let reports: Vec<_> = sent
        .iter()
        .filter_map(|m| match m {
            Uplink::Report(r) => Some((r.seq, r.windows.len())),
            _ => None,
        })
        .collect();
    assert_eq!(reports, [(1, 2), (2, 2), (3, 1)]);
}

#[test]
fn reports_wait_for_the_first_sync_and_carry_it_marked_when_queued_before() {
    let mut link: Link<8> = Link::new(0, identity(), TIMERS);
    assert!(matches!(&drain(&mut link, 0)[..], [Uplink::Hello(_)]));
    link.push_report(&[window(0)]);
    // No sync yet: nothing says where the window is in wall-clock time.
    assert!(drain(&mut link, 10).is_empty());
    assert_eq!(link.next_due_ms(), 500, "only the hello is due again");
    // A sync for another boot, or echoing an uptime not reached, is ignored.
    let other = TimeSync {
        power_up: BOOT + 1,
        uptime_ms: 0,
        wall_ms: WALL_ZERO,
    };
    assert_eq!(
        link.handle_downlink(20, Downlink::TimeSync(other)),
        Event::StaleTimeSync(other)
    );
    let future = TimeSync {
        power_up: BOOT,
        uptime_ms: 21,
        wall_ms: WALL_ZERO,
    };
    assert_eq!(
        link.handle_downlink(20, Downlink::TimeSync(future)),
        Event::StaleTimeSync(future)
    );
    assert!(drain(&mut link, 20).is_empty());
    // The sync: "at your uptime 0 it was WALL_ZERO" (answering the hello).
    assert_eq!(
        link.handle_downlink(
            30,
            Downlink::TimeSync(TimeSync {
                power_up: BOOT,
                uptime_ms: 0,
                wall_ms: WALL_ZERO,
            })
        ),
        Event::TimeSynced {
            wall_at_zero_ms: WALL_ZERO
        }
    );
    link.push_report(&[window(1_000)]);
    let sent = drain(&mut link, 30);
    let times: Vec<ReportTime> = sent
        .iter()
        .filter_map(|m| match m {
            Uplink::Report(r) => Some(r.time),
            _ => None,
        })
        .collect();
    let at = |quality| ReportTime {
        power_up: BOOT,
        wall_at_zero_ms: WALL_ZERO,
        quality,
    };
    assert_eq!(
        times,
        [at(time_quality::BEFORE_SYNC), at(time_quality::SYNCED)]
    );
}
