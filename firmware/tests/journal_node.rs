//! The journaling node (feature `journal`) on simulated sensors with a fake
//! clock, its three stores — redb on the translation layer, the report log
//! and the drop tally — on one simulated NOR flash (the nRF52840's NVMC
//! geometry): windows go to the log and from there to the link; an acking
//! gateway costs no journal commit; an outage folds the log into the
//! journal; a power loss (the node vanishes without closing anything)
//! resumes the epoch and the sequence, and each power-up's windows are
//! placed in wall-clock time by the gateway's time syncs (marked when taken
//! before the sync, estimated when no sync came); a full journal counts its
//! drops across power loss.

use std::collections::BTreeMap;

use embedded_hal_mock::eh1::delay::NoopDelay;
use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_firmware::drivers::tmp102::Tmp102;
use ferry_firmware::journal_node::{
    FlashLayout, JournalEvent, JournalNode, JournalSettings, mount_flash,
};
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::sensor::Sensor;
use ferry_firmware::sim::{self, EMULATED_EVERY, SimClock, SimSht4xBus, SimTmp102Bus, Simulated};
use ferry_firmware::storage::sim_flash::SimFlash;
use ferry_firmware::storage::{Config, LogConfig, SharedFlash};
use ferry_proto::codec;
use ferry_proto::link::{
    DeviceId, Downlink, LinkAck, LinkConfig, ReportTime, TimeSync, Uplink, WindowReport,
    time_quality,
};
use ferry_proto::serial::{self, Deframer};

type Flash = SimFlash<4, 4096>;
type Node = JournalNode<SharedFlash<Flash>>;

const EPOCH: u32 = 41;
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 20,
    window_ms: 200,
};
const TIMERS: LinkTimers = LinkTimers {
    resend_after_ms: 300,
    heartbeat_every_ms: 1_000,
    hello_every_ms: 500,
};
/// 48 sectors of redb, a 2-sector tally and a 4-sector log (36 reports of
/// three windows per sector: an outage of ~30 s folds).
const LAYOUT: FlashLayout = FlashLayout {
    journal: Config::new(0, 48),
    drops: LogConfig {
        offset: 48 * 4096,
        sectors: 2,
    },
    log: LogConfig {
        offset: 50 * 4096,
        sectors: 4,
    },
    cache_bytes: 16 * 1024,
};
const SECTORS: usize = 54;

/// Wall-clock time (Unix ms) at which power-up `p` of a test began: the
/// power-ups of a test are a minute apart (the gaps are power-off time).
fn wall_zero(p: u32) -> i64 {
    1_700_000_000_000 + i64::from(p) * 60_000
}

/// The gateway end: keeps reports by sequence (checking resends are
/// identical), answers hellos and heartbeats with its clock (the true one:
/// [`wall_zero`] of the power-up plus its uptime), acks on demand.
#[derive(Default)]
struct Gateway {
    deframer: Deframer,
    hellos: Vec<(u32, u32, u64)>,
    reports: BTreeMap<u32, (Vec<WindowReport>, ReportTime)>,
    resends: usize,
    last_heartbeat: Option<ferry_proto::link::Heartbeat>,
    syncs: Vec<Downlink>,
}

impl Gateway {
    fn receive(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(r) = self.deframer.push(b) {
                match codec::from_bytes::<Uplink>("Uplink", r.unwrap()).unwrap() {
                    Uplink::Hello(h) => {
                        self.hellos.push((h.boot, h.power_up, h.uptime_ms));
                        self.sync(h.power_up, h.uptime_ms);
                    }
                    Uplink::Report(r) => {
                        let got = (r.windows.to_vec(), r.time);
                        if let Some(old) = self.reports.insert(r.seq, got.clone()) {
                            assert_eq!(old, got, "seq {} changed", r.seq);
                            self.resends += 1;
                        }
                    }
                    Uplink::Heartbeat(h) => {
                        self.sync(h.power_up, h.uptime_ms);
                        self.last_heartbeat = Some(h);
                    }
                }
            }
        }
    }

    fn sync(&mut self, power_up: u32, uptime_ms: u64) {
        self.syncs.push(Downlink::TimeSync(TimeSync {
            power_up,
            uptime_ms,
            wall_ms: wall_zero(power_up) + uptime_ms as i64,
        }));
    }
}

fn downlink(node: &mut Node, now: u64, msg: &Downlink) -> Vec<JournalEvent> {
    let payload = codec::to_vec(msg).unwrap();
    let mut frame = [0u8; serial::MAX_SERIAL_FRAME];
    let n = serial::encode_frame(&payload, &mut frame).unwrap();
    frame[..n]
        .iter()
        .filter_map(|&b| node.handle_rx(now, b))
        .collect()
}

/// Runs the node over uptimes `from..to` ms, 5 ms apart, delivering every
/// frame to `gw` and its time syncs back; with `ack`, the gateway acks the
/// highest report it holds.
fn run(node: &mut Node, gw: &mut Gateway, from: u64, to: u64, ack: bool) {
    let clock = SimClock::new(0);
    let mut sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let mut tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    let mut buf = [0u8; TX_BUFFER];
    for now in (from..to).step_by(5) {
        node.poll(now, &mut [&mut sht as &mut dyn Sensor, &mut tmp]);
        while let Some(n) = node.poll_transmit(now, &mut buf) {
            gw.receive(&buf[..n]);
        }
        for sync in std::mem::take(&mut gw.syncs) {
            downlink(node, now, &sync);
        }
        // As a gateway does: up to the highest contiguous sequence.
        let up_to = (1..).take_while(|s| gw.reports.contains_key(s)).last();
        if ack && let Some(up_to) = up_to {
            let msg = Downlink::Ack(LinkAck { boot: EPOCH, up_to });
            downlink(node, now, &msg);
        }
    }
}

fn start_with(flash: &Flash, new_epoch: u32, settings: JournalSettings) -> Node {
    let clock = SimClock::new(0);
    let sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    JournalNode::start(
        0,
        mount_flash(flash.clone(), &LAYOUT).unwrap(),
        settings,
        DeviceId::from_bytes(&[0xC0, 0xFF, 0xEE]).unwrap(),
        new_epoch,
        CONFIG,
        TIMERS,
        &[&sht, &tmp],
        &EMULATED_EVERY,
    )
    .unwrap()
}

fn start(flash: &Flash) -> Node {
    start_with(flash, EPOCH, JournalSettings::default())
}

/// The power goes: nothing is closed or flushed (redb's drop would write).
fn power_loss(node: Node) {
    std::mem::forget(node);
}

/// Erases of the sectors of `range` so far.
fn erases(flash: &Flash, range: std::ops::Range<usize>) -> u32 {
    flash.stats().erases[range].iter().sum()
}

/// Sequences 1..=`reports` once each; every report the waveform's windows
/// at its start (ms since its power-up), contiguous within a power-up;
/// returns each report's `(power-up, wall-clock start, quality)`.
fn assert_exact(gw: &Gateway, reports: u64) -> Vec<(u32, i64, u8)> {
    let seqs: Vec<u32> = gw.reports.keys().copied().collect();
    assert_eq!(seqs, (1..=reports as u32).collect::<Vec<_>>());
    let mut out: Vec<(u32, i64, u8)> = Vec::new();
    let mut prev: Option<(u32, u64)> = None;
    for (seq, (ws, time)) in &gw.reports {
        let start = ws[0].start_ms;
        assert_eq!(
            ws.as_slice(),
            sim::expected_windows(0, CONFIG, start).as_slice(),
            "report {seq}"
        );
        match prev {
            Some((p, s)) if p == time.power_up => {
                assert_eq!(
                    start,
                    s + u64::from(CONFIG.window_ms),
                    "report {seq}: a gap"
                )
            }
            _ => assert_eq!(
                start, 0,
                "report {seq}: a power-up's first window starts at 0"
            ),
        }
        prev = Some((time.power_up, start));
        out.push((
            time.power_up,
            time.wall_at_zero_ms + start as i64,
            time.quality,
        ));
    }
    out
}

/// Every report placed exactly where its power-up's true clock says.
fn assert_true_time(placed: &[(u32, i64, u8)]) {
    let mut by_power_up: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for &(p, wall, _) in placed {
        by_power_up.entry(p).or_default().push(wall);
    }
    for (p, walls) in by_power_up {
        for (k, wall) in walls.into_iter().enumerate() {
            assert_eq!(
                wall,
                wall_zero(p) + (k as i64) * i64::from(CONFIG.window_ms),
                "power-up {p}, window {k}"
            );
        }
    }
}

#[test]
fn an_acking_gateway_costs_the_journal_nothing() {
    let flash = Flash::new(SECTORS, 1);
    let mut node = start(&flash);
    let ftl_erases = erases(&flash, 0..48);
    let ftl_programs = flash.stats().programs;
    let mut gw = Gateway::default();
    // 60 s: 300 windows, the log turns over twice.
    run(&mut node, &mut gw, 0, 60_001, true);
    let placed = assert_exact(&gw, 300);
    assert_true_time(&placed);
    assert!(
        placed
            .iter()
            .all(|&(p, _, q)| p == 1 && q == time_quality::SYNCED)
    );
    assert_eq!(node.unacked(), 0);
    let s = node.stats();
    assert_eq!(
        (s.journaled, s.folds, s.dropped, s.journal_errors),
        (300, 0, 0, 0)
    );
    // Nothing reached redb: not one erase or commit in its region; every
    // program was a log record or header.
    assert_eq!(erases(&flash, 0..48), ftl_erases);
    let log = node.log().stats();
    let programs = flash.stats().programs - ftl_programs;
    // Records (300 reports, a power-up record copied forward) and sector
    // headers (at most one per erase).
    assert!(
        programs >= 300 && programs <= log.records + log.erases,
        "{programs} programs for {log:?}"
    );
    assert!(log.erases >= 8, "the log's sectors took turns: {log:?}");
    assert_eq!(node.journal().stats().unwrap().outbox_batches, 0);
}

#[test]
fn an_outage_folds_the_log_into_the_journal_and_everything_arrives_once() {
    let flash = Flash::new(SECTORS, 1);
    let mut node = start(&flash);
    let mut gw = Gateway::default();
    // 40 s without acks: 200 windows, far more than the log holds.
    run(&mut node, &mut gw, 0, 40_001, false);
    assert_eq!((node.next_seq(), node.unacked()), (201, 200));
    let s = node.stats();
    assert!(s.folds >= 3, "{s:?}");
    assert_eq!(u64::from(node.folded()), u64::from(s.folded_reports));
    let batches = node.journal().stats().unwrap().outbox_batches;
    assert_eq!(batches, u64::from(s.folds), "one batch per fold");
    // Four in flight, resent while unacked.
    assert_eq!(gw.reports.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(gw.resends > 0);
    let hb = gw.last_heartbeat.unwrap();
    assert_eq!((hb.queued, hb.next_seq, hb.dropped), (200, 201, 0));

    // Stale acks delete nothing.
    let stale = LinkAck { boot: 7, up_to: 3 };
    assert_eq!(
        downlink(&mut node, 40_001, &Downlink::Ack(stale)),
        [JournalEvent::StaleAck(stale)]
    );
    let future = LinkAck {
        boot: EPOCH,
        up_to: 201,
    };
    assert_eq!(
        downlink(&mut node, 40_001, &Downlink::Ack(future)),
        [JournalEvent::StaleAck(future)]
    );
    assert_eq!(node.unacked(), 200);

    // The gateway is back: the journal's reports, then the log's, in order.
    run(&mut node, &mut gw, 40_001, 44_100, true);
    assert_true_time(&assert_exact(&gw, 220));
    assert_eq!(node.unacked(), 0);
    assert_eq!(
        node.journal().stats().unwrap().outbox_batches,
        0,
        "one commit emptied the journal once the gateway had it all"
    );
    assert_eq!(node.stats().journal_errors, 0);
}

#[test]
fn a_power_loss_resumes_epoch_and_sequence_and_every_window_keeps_its_true_time() {
    let flash = Flash::new(SECTORS, 1);
    let mut node = start(&flash);
    let mut gw = Gateway::default();
    // 30.1 s without acks: 150 windows logged or folded, the next half
    // sampled; then two acked.
    run(&mut node, &mut gw, 0, 30_100, false);
    downlink(
        &mut node,
        30_100,
        &Downlink::Ack(LinkAck {
            boot: EPOCH,
            up_to: 2,
        }),
    );
    assert_eq!((node.next_seq(), node.unacked()), (151, 148));
    assert!(node.folded() > 0);
    assert_eq!(node.wall_at_zero_ms(), Some(wall_zero(1)));
    power_loss(node);

    // Power-up 2, its clock at 0 again (a minute later in wall-clock
    // time); a new epoch argument is ignored.
    let mut node = start_with(&flash, 999, JournalSettings::default());
    let r = node.record();
    assert_eq!((r.epoch, r.power_ups), (EPOCH, 2));
    assert_eq!(node.power_up(), 2);
    assert_eq!(node.next_seq(), 151);
    assert_eq!(node.wall_at_zero_ms(), None, "not synced yet");
    // The ack of 1..=2 was in RAM only: at most those come again.
    assert!(node.unacked() >= 148 && node.unacked() <= 150);
    run(&mut node, &mut gw, 0, 8_001, true);
    assert_eq!(gw.hellos.last(), Some(&(EPOCH, 2, 0)));
    assert_eq!(node.unacked(), 0);
    // 150 windows of power-up 1 and 40 of power-up 2, each at its true
    // time: the half-sampled window was lost with the power (never
    // journaled), and power-up 2's clock started again at 0.
    let placed = assert_exact(&gw, 190);
    assert_true_time(&placed);
    assert_eq!(placed.iter().filter(|p| p.0 == 2).count(), 40);
    assert!(placed.iter().all(|&(_, _, q)| q == time_quality::SYNCED));
    assert_eq!(node.journal().stats().unwrap().outbox_batches, 0);
}

#[test]
fn windows_before_a_sync_are_marked_and_a_power_up_never_synced_is_estimated() {
    let flash = Flash::new(SECTORS, 1);
    let mut node = start(&flash);
    let mut gw = Gateway::default();
    // Power-up 1 meets the gateway: 10 windows, acked.
    run(&mut node, &mut gw, 0, 2_001, true);
    assert_eq!(node.unacked(), 0);
    power_loss(node);

    // Power-up 2 never meets a gateway: 5 windows in 1.1 s, then the power
    // goes again. Its zero is estimated: power-up 1's zero plus the end of
    // its last window (2 s), as if the power had come back at once.
    let mut node = start(&flash);
    let mut away = Gateway::default();
    let clock = SimClock::new(0);
    let mut sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let mut tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    let mut buf = [0u8; TX_BUFFER];
    for now in (0..1_100).step_by(5) {
        node.poll(now, &mut [&mut sht as &mut dyn Sensor, &mut tmp]);
        while let Some(n) = node.poll_transmit(now, &mut buf) {
            away.receive(&buf[..n]);
        }
    }
    // Power-up 1's last report may go again (its ack was in RAM only);
    // none of power-up 2's goes out before a sync.
    assert!(
        away.reports.values().all(|(_, t)| t.power_up == 1),
        "no report of an unsynced power-up goes out"
    );
    // Five windows of power-up 2, and power-up 1's last report (its ack
    // came after its record).
    assert_eq!(node.unacked(), 6);
    // Waiting for a sync is not work: nothing is due before the next
    // sample (no busy loop reading the log).
    assert!(
        node.next_due_ms(1_095) > 1_095,
        "{}",
        node.next_due_ms(1_095)
    );
    power_loss(node);

    // Power-up 3: the gateway comes only after 1 s (the windows logged
    // before the sync: marked, and placed exactly by it).
    let mut node = start(&flash);
    let mut mute = Gateway::default();
    for now in (0..1_001).step_by(5) {
        node.poll(now, &mut [&mut sht as &mut dyn Sensor, &mut tmp]);
        while let Some(n) = node.poll_transmit(now, &mut buf) {
            mute.receive(&buf[..n]);
        }
    }
    run(&mut node, &mut gw, 1_001, 3_101, true);
    assert_eq!(node.unacked(), 0);
    let placed = assert_exact(&gw, 30);
    let quality = |p: u32| -> Vec<u8> {
        placed
            .iter()
            .filter(|x| x.0 == p)
            .map(|x| x.2)
            .collect::<Vec<_>>()
    };
    assert_eq!(quality(1), [time_quality::SYNCED; 10]);
    assert_eq!(quality(2), [time_quality::ESTIMATED; 5]);
    // Power-up 3: what it logged before its first sync (the gateway's
    // answer to its next hello, after 1 s), then synced.
    let q3 = quality(3);
    let before = q3
        .iter()
        .take_while(|&&q| q == time_quality::BEFORE_SYNC)
        .count();
    assert!(before >= 5, "{q3:?}");
    assert!(
        q3[before..].iter().all(|&q| q == time_quality::SYNCED),
        "{q3:?}"
    );
    // Power-up 2: right after power-up 1's last window (early by the time
    // the power was off); power-ups 1 and 3: their true times.
    let estimated: Vec<i64> = placed.iter().filter(|x| x.0 == 2).map(|x| x.1).collect();
    let after_one = wall_zero(1) + 2_000;
    assert_eq!(
        estimated,
        (0..5).map(|k| after_one + k * 200).collect::<Vec<_>>()
    );
    let exact: Vec<(u32, i64, u8)> = placed.iter().filter(|x| x.0 != 2).copied().collect();
    assert_true_time(&exact);
}

#[test]
fn a_full_journal_drops_windows_and_counts_them_across_power_loss() {
    let flash = Flash::new(SECTORS, 1);
    // A journal that refuses its first fold: only the log holds reports.
    let tiny = JournalSettings { budget_bytes: 1 };
    let mut node = start_with(&flash, EPOCH, tiny);
    let mut gw = Gateway::default();
    run(&mut node, &mut gw, 0, 60_001, false);
    let s = node.stats();
    let kept = node.unacked();
    assert!(s.dropped > 0 && s.folds <= 1, "{s:?}");
    assert_eq!(
        kept + u64::from(s.dropped),
        300,
        "every window kept or counted"
    );
    assert_eq!(gw.last_heartbeat.unwrap().dropped, s.dropped);
    power_loss(node);

    let mut node = start_with(&flash, EPOCH, tiny);
    assert_eq!(
        node.heartbeat(0).dropped,
        s.dropped,
        "the tally outlives the power"
    );
    assert_eq!(node.unacked(), kept);
    // The gateway comes back: what was kept arrives, and journaling resumes.
    run(&mut node, &mut gw, 0, 20_001, true);
    assert_eq!(node.unacked(), 0);
    let seqs: Vec<u32> = gw.reports.keys().copied().collect();
    assert_eq!(seqs, (1..node.next_seq() as u32).collect::<Vec<_>>());
    assert_eq!(
        node.stats().dropped,
        s.dropped,
        "no drop once there is room"
    );
}

#[test]
fn a_config_outlives_a_power_loss() {
    let flash = Flash::new(SECTORS, 1);
    let mut node = start(&flash);
    let mut gw = Gateway::default();
    let next = LinkConfig {
        sample_period_ms: 10,
        window_ms: 100,
    };
    downlink(&mut node, 0, &Downlink::Config(next));
    run(&mut node, &mut gw, 0, 1_001, true);
    assert_eq!(node.sampler().config(), next);
    power_loss(node);
    let node = start(&flash);
    assert_eq!(node.sampler().config(), next);
}
