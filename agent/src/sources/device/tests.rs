//! The gateway link's tests: the sans-IO protocol, driven with a fake clock.

use ferry_proto::link::{Channel, DeviceId, ReportTime, TimeSync, time_quality};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_proto::codec;
use ferry_proto::link::{
    DeviceHello, Downlink, Heartbeat, LINK_VERSION, LinkAck, LinkConfig, Report, Uplink,
    WindowReport,
};
use ferry_proto::serial::{self, Deframer, MAX_SERIAL_FRAME};

use crate::intake::SubmitError;
use crate::journal::CommitReport;
use crate::window::Partial;

use super::*;

/// The fake wall clock at the first hello.
const T0: i64 = 1_700_000_000_000_000_000;
const MS: i64 = 1_000_000;
const HEX: &str = "0a1b2c";

fn n(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn frame(msg: &Uplink) -> Vec<u8> {
    let payload = codec::to_vec(msg).unwrap();
    let mut out = [0u8; MAX_SERIAL_FRAME];
    let len = serial::encode_frame(&payload, &mut out).unwrap();
    out[..len].to_vec()
}

fn channel(id: u8, sensor: &str, quantity: &str, unit: &str) -> Channel {
    Channel {
        id,
        sensor: sensor.try_into().unwrap(),
        quantity: quantity.try_into().unwrap(),
        unit: unit.try_into().unwrap(),
    }
}

fn hello(boot: u32, uptime_ms: u64) -> Uplink {
    Uplink::Hello(DeviceHello {
        link_version: LINK_VERSION,
        device_id: DeviceId::from_bytes(&[0x0a, 0x1b, 0x2c]).unwrap(),
        boot,
        firmware: "ferry-fw 0.1.0".try_into().unwrap(),
        uptime_ms,
        channels: [
            channel(0, "sht4x", "temperature", "Cel"),
            channel(1, "sht4x", "relative_humidity", "%"),
            channel(2, "tmp102", "temperature", "Cel"),
        ]
        .into_iter()
        .collect(),
        power_up: boot,
    })
}

fn window(channel: u8, start_ms: u64, v: f32) -> WindowReport {
    WindowReport {
        channel,
        start_ms,
        len_ms: 1_000,
        count: 10,
        sum: v * 10.0,
        min: v - 0.25,
        max: v + 0.5,
        first: v - 0.1,
        last: v + 0.3,
    }
}

/// A report of boot 7's clock, whose zero the device learnt from the
/// sync answering its hello (at T0, 5 s of uptime).
fn report(seq: u32, windows: &[WindowReport]) -> Uplink {
    Uplink::Report(Report {
        seq,
        windows: windows.iter().copied().collect(),
        time: ReportTime {
            power_up: 7,
            wall_at_zero_ms: T0 / MS - 5_000,
            quality: time_quality::SYNCED,
        },
    })
}

fn heartbeat(dropped: u32, queued: u16, next_seq: u32) -> Uplink {
    Uplink::Heartbeat(Heartbeat {
        uptime_ms: 0,
        dropped,
        queued,
        next_seq,
        power_up: 7,
    })
}

fn link_with(config: DeviceLinkConfig, registry: DeviceRegistry) -> GatewayLink {
    GatewayLink::new(Arc::new(config), registry, Arc::default())
}

fn link() -> GatewayLink {
    link_with(DeviceLinkConfig::default(), DeviceRegistry::new())
}

fn send(link: &mut GatewayLink, now: i64, msg: &Uplink) {
    link.handle_bytes(now, &frame(msg));
}

/// The downlinks waiting, without the time syncs (the test below
/// checks those).
fn drain(link: &mut GatewayLink) -> Vec<Downlink> {
    core::iter::from_fn(|| link.poll_transmit())
        .filter(|m| !matches!(m, Downlink::TimeSync(_)))
        .collect()
}

#[test]
fn hellos_and_heartbeats_get_the_wall_clock_and_reports_are_placed_by_their_own_clock() {
    let mut link = link();
    send(&mut link, T0, &hello(7, 5_000));
    let sync = TimeSync {
        power_up: 7,
        uptime_ms: 5_000,
        wall_ms: T0 / MS,
    };
    assert_eq!(
        core::iter::from_fn(|| link.poll_transmit()).collect::<Vec<_>>(),
        [ack(7, 0), Downlink::TimeSync(sync)]
    );
    // A heartbeat a second later: one sync queued, the latest.
    send(&mut link, T0 + 1_000 * MS, &heartbeat(0, 0, 1));
    send(&mut link, T0 + 2_000 * MS, &heartbeat(0, 0, 1));
    assert_eq!(
        core::iter::from_fn(|| link.poll_transmit()).collect::<Vec<_>>(),
        [Downlink::TimeSync(TimeSync {
            power_up: 7,
            uptime_ms: 0,
            wall_ms: T0 / MS + 2_000,
        })]
    );
    // A journaling device sends a report of an earlier power-up (3),
    // whose zero it could only estimate: placed there, and counted.
    let zero_ms = T0 / MS - 3_600_000;
    let Uplink::Report(mut r) = report(1, &[window(0, 10_000, 21.0)]) else {
        unreachable!()
    };
    r.time = ReportTime {
        power_up: 3,
        wall_at_zero_ms: zero_ms,
        quality: time_quality::ESTIMATED,
    };
    send(&mut link, T0 + 2_000 * MS, &Uplink::Report(r));
    let work = link.poll_work().unwrap();
    let (_, window) = &work.reports[0].windows[0];
    assert_eq!(window.start_ns, (zero_ms + 10_000) * MS);
    assert_eq!(n(&link.stats().reports_time_estimated), 1);
}

fn ack(boot: u32, up_to: u32) -> Downlink {
    Downlink::Ack(LinkAck { boot, up_to })
}

fn answered(reports: &[bool]) -> CommitReport {
    CommitReport {
        reports: reports.to_vec(),
        wrote: true,
        ..CommitReport::default()
    }
}

/// A link that has heard the hello of boot 7 at T0 with 5 s of uptime.
fn greeted() -> GatewayLink {
    let mut l = link();
    send(&mut l, T0, &hello(7, 5_000));
    assert_eq!(drain(&mut l), [ack(7, 0)]);
    l
}

#[test]
fn hello_is_acked_with_what_the_journal_holds_of_that_boot_and_config_follows() {
    let registry =
        DeviceRegistry::from_journal([(HEX.to_owned(), 7, 4), ("ffff".to_owned(), 1, 9)]);
    let push = LinkConfig {
        sample_period_ms: 20,
        window_ms: 200,
    };
    let config = DeviceLinkConfig {
        push_config: Some(push),
        ..DeviceLinkConfig::default()
    };
    let mut l = link_with(config.clone(), registry.clone());
    send(&mut l, T0, &hello(7, 5_000));
    assert_eq!(drain(&mut l), [ack(7, 4), Downlink::Config(push)]);
    assert_eq!(l.device(), Some((HEX, 7)));
    assert_eq!(l.acked_up_to(), Some(4));
    let mark = registry.get(HEX).unwrap();
    assert_eq!(mark.offset_ns, Some(T0 - 5_000 * MS));
    assert!(mark.said_hello);

    // The hello repeated (the device had not heard us yet): same answer,
    // the offset measured at the first hello stays.
    send(&mut l, T0 + 2_000 * MS, &hello(7, 7_003));
    assert_eq!(drain(&mut l), [ack(7, 4), Downlink::Config(push)]);
    assert_eq!(registry.get(HEX).unwrap().offset_ns, Some(T0 - 5_000 * MS));

    // A reconnect (new link) keeps the offset of this boot too.
    let mut again = link_with(config.clone(), registry.clone());
    send(&mut again, T0 + 9_000 * MS, &hello(7, 14_010));
    assert_eq!(drain(&mut again)[0], ack(7, 4));

    // A new boot starts from nothing.
    send(&mut l, T0 + 60_000 * MS, &hello(8, 100));
    assert_eq!(drain(&mut l), [ack(8, 0), Downlink::Config(push)]);
    assert_eq!(
        registry.get(HEX).unwrap(),
        DeviceMark {
            boot: 8,
            journaled: 0,
            dropped_forwarded: 0,
            offset_ns: Some(T0 + 60_000 * MS - 100 * MS),
            said_hello: true,
        }
    );
    assert_eq!(n(&l.stats().hellos), 3);
    assert_eq!(n(&l.stats().devices_seen), 1);
    assert_eq!(n(&again.stats().devices_seen), 0, "seen by the first link");

    // Another link version is refused (version 1 had no time sync).
    let mut v2 = link();
    let Uplink::Hello(mut h) = hello(7, 0) else {
        unreachable!()
    };
    h.link_version = 1;
    send(&mut v2, T0, &Uplink::Hello(h));
    assert_eq!(drain(&mut v2), []);
    assert_eq!(v2.device(), None);
    assert_eq!(n(&v2.stats().bad_hellos), 1);
}

#[test]
fn a_report_becomes_exact_wall_clock_windows_and_is_acked_after_the_commit() {
    let mut l = greeted();
    let offset = T0 - 5_000 * MS;
    send(
        &mut l,
        T0 + 10 * MS,
        &report(1, &[window(0, 4_000, 21.37), window(2, 4_000, 19.0625)]),
    );
    assert_eq!(drain(&mut l), [], "no ack before the journal has it");
    let work = l.poll_work().unwrap();
    assert!(l.poll_work().is_none(), "one commit in flight");
    assert!(work.health.is_empty() && work.readings.is_empty());
    let [rep] = &work.reports[..] else {
        panic!("{work:?}")
    };
    assert_eq!(
        (rep.device.as_str(), rep.boot, rep.seq, rep.floor),
        (HEX, 7, 1, 0)
    );
    let names: Vec<String> = rep.windows.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(
        names,
        [
            r#"temperature{device="0a1b2c",sensor="sht4x",unit="Cel"}"#,
            r#"temperature{device="0a1b2c",sensor="tmp102",unit="Cel"}"#,
        ]
    );
    let start = offset + 4_000 * MS;
    let w = window(0, 4_000, 21.37);
    assert_eq!(
        rep.windows[0].1,
        Partial {
            start_ns: start,
            len_ns: 1_000_000_000,
            count: 10,
            sum: f64::from(w.sum),
            min: f64::from(w.min),
            max: f64::from(w.max),
            first_ts: start,
            first: f64::from(w.first),
            last_ts: start + 1_000 * MS - 1,
            last: f64::from(w.last),
            sketch: None,
        }
    );
    // Widened exactly: the f32's value, not the decimal it was written as.
    assert_eq!(rep.windows[0].1.sum, 213.700_012_207_031_25);
    assert_eq!(rep.windows[0].1.min, 21.120_000_839_233_4);
    assert_eq!(
        rep.windows[1].1.min, 18.8125,
        "19.0625 − 0.25 is exact in f32"
    );

    l.handle_commit(T0 + 20 * MS, Ok(&answered(&[true])));
    assert_eq!(drain(&mut l), [ack(7, 1)]);
    assert!(!l.commit_in_flight());
    assert_eq!(n(&l.stats().reports_journaled), 1);
}

#[test]
fn duplicates_are_acked_without_a_second_commit() {
    let registry = DeviceRegistry::new();
    let mut l = link_with(DeviceLinkConfig::default(), registry.clone());
    send(&mut l, T0, &hello(7, 0));
    drain(&mut l);
    send(&mut l, T0, &report(1, &[window(0, 0, 1.0)]));
    send(&mut l, T0, &report(2, &[window(0, 1_000, 2.0)]));
    let work = l.poll_work().unwrap();
    assert_eq!(work.reports.len(), 2);
    // Resent while its commit is in flight: nothing new to commit.
    send(
        &mut l,
        T0 + 2_000 * MS,
        &report(2, &[window(0, 1_000, 2.0)]),
    );
    l.handle_commit(T0, Ok(&answered(&[true, true])));
    assert!(l.poll_work().is_none());
    assert_eq!(drain(&mut l), [ack(7, 2)]);
    assert_eq!(registry.get(HEX).unwrap().journaled, 2);
    // Resent after the ack was lost: acked again at once.
    send(&mut l, T0 + 4_000 * MS, &report(1, &[window(0, 0, 1.0)]));
    assert!(l.poll_work().is_none());
    assert_eq!(drain(&mut l), [ack(7, 2)]);
    assert_eq!(n(&l.stats().reports_duplicate), 2);
    assert_eq!(n(&l.stats().reports_journaled), 2);

    // A gateway that does not know what the journal holds (no registry
    // mark) submits the report; the journal answers "held before"; acked.
    let mut fresh = link();
    send(&mut fresh, T0, &hello(7, 0));
    assert_eq!(drain(&mut fresh), [ack(7, 0)]);
    send(&mut fresh, T0, &report(2, &[window(0, 1_000, 2.0)]));
    assert_eq!(fresh.poll_work().unwrap().reports[0].seq, 2);
    fresh.handle_commit(T0, Ok(&answered(&[true])));
    assert_eq!(drain(&mut fresh), [ack(7, 2)]);
}

#[test]
fn out_of_order_reports_are_not_acked_until_the_gap_is_filled() {
    let mut l = greeted();
    send(&mut l, T0, &report(3, &[window(0, 2_000, 3.0)]));
    send(&mut l, T0, &report(2, &[window(0, 1_000, 2.0)]));
    let work = l.poll_work().unwrap();
    let seqs: Vec<u32> = work.reports.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [2, 3], "sorted by sequence");
    l.handle_commit(T0, Ok(&answered(&[false, false])));
    assert_eq!(drain(&mut l), []);
    assert_eq!(n(&l.stats().reports_out_of_order), 2);

    // Report 1 comes, then the resends.
    for seq in 1..=3 {
        send(&mut l, T0, &report(seq, &[window(0, 0, 1.0)]));
    }
    assert_eq!(l.poll_work().unwrap().reports.len(), 3);
    l.handle_commit(T0, Ok(&answered(&[true, true, false])));
    assert_eq!(drain(&mut l), [ack(7, 2)]);
    assert_eq!(n(&l.stats().reports_journaled), 2);
    assert_eq!(n(&l.stats().reports_out_of_order), 3);
}

#[test]
fn a_commit_failure_acks_nothing() {
    let mut l = greeted();
    send(&mut l, T0, &report(1, &[window(0, 0, 1.0)]));
    l.poll_work().unwrap();
    l.handle_commit(T0, Err(&SubmitError::Full { used: 9, budget: 8 }));
    assert_eq!(drain(&mut l), []);
    assert!(l.poll_work().is_none(), "the device resends; nothing kept");
    assert_eq!(n(&l.stats().commit_failures), 1);
    send(&mut l, T0, &report(1, &[window(0, 0, 1.0)]));
    l.poll_work().unwrap();
    l.handle_commit(T0, Ok(&answered(&[true])));
    assert_eq!(drain(&mut l), [ack(7, 1)]);
}

#[test]
fn reports_and_heartbeats_before_any_hello_ask_for_one_at_a_bounded_rate() {
    let mut l = link();
    send(&mut l, T0, &report(4, &[window(0, 0, 1.0)]));
    assert!(l.poll_work().is_none(), "no catalogue: nothing journaled");
    assert_eq!(drain(&mut l), [Downlink::HelloRequest(())]);
    send(&mut l, T0 + 500 * MS, &report(5, &[window(0, 0, 1.0)]));
    send(&mut l, T0 + 600 * MS, &heartbeat(0, 2, 6));
    assert_eq!(drain(&mut l), [], "one request a second");
    send(&mut l, T0 + 1_000 * MS, &heartbeat(0, 2, 6));
    assert_eq!(drain(&mut l), [Downlink::HelloRequest(())]);
    assert_eq!(n(&l.stats().before_hello), 4);
    assert_eq!(n(&l.stats().hello_requests), 2);
    assert!(l.poll_work().is_none());

    send(&mut l, T0 + 1_100 * MS, &hello(7, 3_000));
    assert_eq!(drain(&mut l), [ack(7, 0)]);
    send(&mut l, T0 + 1_200 * MS, &report(4, &[window(0, 0, 1.0)]));
    assert_eq!(l.poll_work().unwrap().reports.len(), 1);
}

#[test]
fn heartbeats_set_the_floor_and_forward_drop_increases_per_boot() {
    let mut l = greeted();
    // next_seq 9 with 3 queued: 1..=5 were acked or dropped.
    send(&mut l, T0, &heartbeat(0, 3, 9));
    assert!(l.poll_work().is_none(), "no drops: nothing to commit");
    send(&mut l, T0, &report(6, &[window(0, 5_000, 6.0)]));
    let work = l.poll_work().unwrap();
    assert_eq!(work.reports[0].floor, 5);
    l.handle_commit(T0, Ok(&answered(&[true])));
    assert_eq!(drain(&mut l), [ack(7, 6)]);

    send(&mut l, T0, &heartbeat(3, 2, 9));
    let work = l.poll_work().unwrap();
    assert_eq!(work.device_dropped, [(HEX.to_owned(), 7, 3)]);
    assert!(work.reports.is_empty());
    // A failed commit forwards nothing; the next heartbeat tries again.
    l.handle_commit(T0, Err(&SubmitError::Storage("disk".into())));
    assert!(l.poll_work().is_none());
    send(&mut l, T0, &heartbeat(3, 2, 9));
    assert_eq!(l.poll_work().unwrap().device_dropped[0].2, 3);
    l.handle_commit(T0, Ok(&answered(&[])));
    assert_eq!(n(&l.stats().device_dropped), 3);

    send(&mut l, T0, &heartbeat(3, 2, 9));
    assert!(l.poll_work().is_none(), "no increase");
    send(&mut l, T0, &heartbeat(5, 2, 10));
    let work = l.poll_work().unwrap();
    assert_eq!(work.device_dropped, [(HEX.to_owned(), 7, 5)]);
    l.handle_commit(T0, Ok(&answered(&[])));

    // A new boot counts from 0 again.
    send(&mut l, T0, &hello(8, 10));
    drain(&mut l);
    send(&mut l, T0, &heartbeat(1, 0, 2));
    assert_eq!(
        l.poll_work().unwrap().device_dropped,
        [(HEX.to_owned(), 8, 1)]
    );
    l.handle_commit(T0, Ok(&answered(&[])));
    assert_eq!(n(&l.stats().device_dropped), 6);
}

#[test]
fn unknown_channels_and_empty_windows_reject_the_report_every_time() {
    let mut l = greeted();
    for _ in 0..3 {
        send(
            &mut l,
            T0,
            &report(1, &[window(0, 0, 1.0), window(9, 0, 1.0)]),
        );
    }
    let mut empty = window(1, 0, 1.0);
    empty.count = 0;
    send(&mut l, T0, &report(1, &[empty]));
    assert!(l.poll_work().is_none());
    assert_eq!(drain(&mut l), []);
    assert_eq!(n(&l.stats().reports_rejected), 4);
}

#[test]
fn bad_frames_are_counted_by_kind_and_the_stream_carries_on() {
    let mut l = link();
    let good = frame(&hello(7, 0));
    let mut bytes = Vec::new();
    // CRC: one flipped bit in the body.
    let mut crc = good.clone();
    crc[3] ^= 0x10;
    bytes.extend_from_slice(&crc);
    // COBS: a code byte pointing past the frame's end.
    bytes.extend_from_slice(&[0x09, 0x41, 0x00]);
    // Shorter than the CRC.
    bytes.extend_from_slice(&[0x03, 0x41, 0x42, 0x00]);
    // Too long: no delimiter for 600 bytes.
    bytes.extend_from_slice(&[0x55; 600]);
    bytes.push(0);
    // A good CRC around bytes that are no uplink message.
    let mut junk = [0u8; 16];
    let len = serial::encode_frame(&[0xc1, 0x01], &mut junk).unwrap();
    bytes.extend_from_slice(&junk[..len]);
    bytes.extend_from_slice(&good);
    // Fed in awkward pieces, as a UART delivers them.
    for chunk in bytes.chunks(7) {
        l.handle_bytes(T0, chunk);
    }
    let s = l.stats();
    assert_eq!(
        [
            n(&s.bad_crc),
            n(&s.bad_cobs),
            n(&s.too_short),
            n(&s.too_long),
            n(&s.undecodable),
            n(&s.frames_ok),
        ],
        [1, 1, 1, 1, 1, 1]
    );
    assert_eq!(l.device(), Some((HEX, 7)));
    assert_eq!(drain(&mut l), [ack(7, 0)]);
}

#[test]
fn bounded_pending_reports() {
    let config = DeviceLinkConfig {
        max_pending_reports: 2,
        ..DeviceLinkConfig::default()
    };
    let mut l = link_with(config, DeviceRegistry::new());
    send(&mut l, T0, &hello(7, 0));
    for seq in 1..=3 {
        send(&mut l, T0, &report(seq, &[window(0, 0, 1.0)]));
    }
    assert_eq!(l.poll_work().unwrap().reports.len(), 2);
    assert_eq!(n(&l.stats().reports_overflow), 1);
}

#[test]
fn config_reads_from_toml() {
    let c: DeviceLinkConfig = toml::from_str(
        "name = \"uart0\"\npush_config = { sample_period_ms = 20, window_ms = 200 }\nreconnect_max_ms = 5000\n",
    )
    .unwrap();
    assert_eq!(c.name, "uart0");
    assert_eq!(
        c.push_config,
        Some(LinkConfig {
            sample_period_ms: 20,
            window_ms: 200
        })
    );
    assert_eq!(c.reconnect_max_ms, 5_000);
    assert_eq!(
        c.reconnect_min_ms,
        DeviceLinkConfig::default().reconnect_min_ms
    );
    let err = toml::from_str::<DeviceLinkConfig>("nmae = \"x\"").unwrap_err();
    assert!(err.to_string().contains("nmae"), "{err}");
}

#[test]
fn downlinks_frame_for_the_device() {
    let bytes = encode_downlink(&ack(7, 3));
    let mut d = Deframer::new();
    let (last, body) = bytes.split_last().unwrap();
    assert!(body.iter().all(|&b| d.push(b).is_none()));
    let payload = d.push(*last).unwrap().unwrap();
    assert_eq!(
        codec::from_bytes::<Downlink>("Downlink", payload).unwrap(),
        ack(7, 3)
    );
}

#[test]
fn device_stats_render_as_prometheus_samples() {
    let stats = DeviceStats::default();
    DeviceStats::add(&stats.bad_crc, 2);
    DeviceStats::add(&stats.too_long, 1);
    DeviceStats::add(&stats.connections_refused, 4);
    let mut out = String::new();
    stats.render_prometheus("uart", &mut out);
    assert_eq!(
        out,
        "ferry_agent_device_frames_ok_total{source=\"uart\"} 0\n\
         ferry_agent_device_bad_frames_total{source=\"uart\"} 3\n\
         ferry_agent_device_reports_journaled_total{source=\"uart\"} 0\n\
         ferry_agent_device_reports_rejected_total{source=\"uart\"} 0\n\
         ferry_agent_device_connections_total{source=\"uart\"} 0\n\
         ferry_agent_device_connections_refused_total{source=\"uart\"} 4\n\
         ferry_agent_device_idle_timeouts_total{source=\"uart\"} 0\n"
    );
}
