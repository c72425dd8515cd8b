//! Power cut at **every** flash operation of a journaling node's workload:
//! windows acked as they come, then an outage long enough to fold the
//! report log into the journal, then the gateway back (which
//! empties the journal in one commit), then more acked windows. redb and its
//! translation layer are on one simulated chip (4 KiB sectors), the report
//! log and the drop tally on another (three sectors of 1 KiB, so that the log
//! turns over quickly); each chip's operations are cut in turn. After each cut the
//! power comes back, the stores mount, the node starts and the gateway gets
//! everything: every sequence from 1 once (a resend is byte-identical to
//! what the gateway already had), each report the waveform's windows at
//! contiguous device time, nothing dropped.

use std::collections::BTreeMap;

use embedded_hal_mock::eh1::delay::NoopDelay;
use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_firmware::drivers::tmp102::Tmp102;
use ferry_firmware::journal_node::{JournalNode, JournalSettings, NodeStorage};
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::sensor::Sensor;
use ferry_firmware::sim::{self, EMULATED_EVERY, SimClock, SimSht4xBus, SimTmp102Bus, Simulated};
use ferry_firmware::storage::sim_flash::SimFlash;
use ferry_firmware::storage::{Config, LogConfig, NorBackend, ReportLog, Tally, open_database};
use ferry_proto::codec;
use ferry_proto::link::{
    DeviceId, Downlink, LinkAck, LinkConfig, ReportTime, TimeSync, Uplink, WindowReport,
};
use ferry_proto::serial::{self, Deframer};

/// redb's chip.
type Chip = SimFlash<4, 4096>;
/// The log's chip.
type LogChip = SimFlash<4, 1024>;

const EPOCH: u32 = 5;
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 20,
    window_ms: 200,
};
const TIMERS: LinkTimers = LinkTimers {
    resend_after_ms: 300,
    heartbeat_every_ms: 1_000,
    hello_every_ms: 500,
};
const DROPS: LogConfig = LogConfig {
    offset: 0,
    sectors: 2,
};
/// Three sectors of nine reports (three windows each).
const LOG: LogConfig = LogConfig {
    offset: 2 * 1024,
    sectors: 3,
};

/// Wall-clock time (Unix ms) at which power-up `p` began.
fn wall_zero(p: u32) -> i64 {
    1_700_000_000_000 + i64::from(p) * 60_000
}

#[derive(Default)]
struct Gateway {
    deframer: Deframer,
    reports: BTreeMap<u32, (Vec<WindowReport>, ReportTime)>,
    syncs: Vec<Downlink>,
}

impl Gateway {
    fn receive(&mut self, bytes: &[u8], context: &str) {
        for &b in bytes {
            let Some(Ok(p)) = self.deframer.push(b) else {
                continue;
            };
            let (power_up, uptime_ms) = match codec::from_bytes::<Uplink>("Uplink", p) {
                Ok(Uplink::Report(r)) => {
                    let got = (r.windows.to_vec(), r.time);
                    if let Some(old) = self.reports.insert(r.seq, got.clone()) {
                        assert_eq!(old, got, "{context}: report {} changed", r.seq);
                    }
                    continue;
                }
                Ok(Uplink::Hello(h)) => (h.power_up, h.uptime_ms),
                Ok(Uplink::Heartbeat(h)) => (h.power_up, h.uptime_ms),
                Err(_) => continue,
            };
            self.syncs.push(Downlink::TimeSync(TimeSync {
                power_up,
                uptime_ms,
                wall_ms: wall_zero(power_up) + uptime_ms as i64,
            }));
        }
    }

    /// Highest sequence received with every one below it.
    fn contiguous(&self) -> Option<u32> {
        (1..).take_while(|s| self.reports.contains_key(s)).last()
    }
}

fn deliver(node: &mut JournalNode<LogChip>, now: u64, msg: &Downlink) {
    let payload = codec::to_vec(msg).unwrap();
    let mut frame = [0u8; 64];
    let n = serial::encode_frame(&payload, &mut frame).unwrap();
    for &b in &frame[..n] {
        node.handle_rx(now, b);
    }
}
/// `None` if the power is (still) off.
fn start(chip: &Chip, log_chip: &LogChip) -> Option<JournalNode<LogChip>> {
    let backend = NorBackend::mount_or_format(chip.clone(), Config::new(0, 48)).ok()?;
    let db = open_database(redb::Builder::new().set_cache_size(16 * 1024), backend).ok()?;
    let log = ReportLog::mount(log_chip.clone(), LOG).ok()?;
    let drops = Tally::mount(log_chip.clone(), DROPS).ok()?;
    let clock = SimClock::new(0);
    let sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    JournalNode::start(
        0,
        NodeStorage { db, log, drops },
        JournalSettings::default(),
        DeviceId::from_bytes(&[0xCC]).unwrap(),
        EPOCH,
        CONFIG,
        TIMERS,
        &[&sht, &tmp],
        &EMULATED_EVERY,
    )
    .ok()
}

/// Runs `from..to` ms of uptime (10 ms steps); with `ack`, acks the highest
/// report seen. Stops when `dead()`.
fn run(
    node: &mut JournalNode<LogChip>,
    gw: &mut Gateway,
    span: (u64, u64),
    ack: bool,
    dead: &dyn Fn() -> bool,
    context: &str,
) {
    let clock = SimClock::new(0);
    let mut sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let mut tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    let mut buf = [0u8; TX_BUFFER];
    for now in (span.0..span.1).step_by(10) {
        if dead() {
            return;
        }
        node.poll(now, &mut [&mut sht as &mut dyn Sensor, &mut tmp]);
        while let Some(n) = node.poll_transmit(now, &mut buf) {
            gw.receive(&buf[..n], context);
        }
        for sync in std::mem::take(&mut gw.syncs) {
            deliver(node, now, &sync);
        }
        if ack && let Some(up_to) = gw.contiguous() {
            deliver(node, now, &Downlink::Ack(LinkAck { boot: EPOCH, up_to }));
        }
    }
}

/// The workload, until the power goes (or to its end).
fn workload(chip: &Chip, log_chip: &LogChip, gw: &mut Gateway) {
    let dead = || chip.is_cut() || log_chip.is_cut();
    let Some(mut node) = start(chip, log_chip) else {
        return;
    };
    run(&mut node, gw, (0, 1_000), true, &dead, "before");
    run(&mut node, gw, (1_000, 8_000), false, &dead, "before");
    run(&mut node, gw, (8_000, 10_000), true, &dead, "before");
    std::mem::forget(node);
}

/// After the power is back: everything arrives, exactly as the waveform.
fn recover(chip: &Chip, log_chip: &LogChip, gw: &mut Gateway, context: &str) -> (u32, u32) {
    chip.restore_power();
    log_chip.restore_power();
    let mut node = start(chip, log_chip).unwrap_or_else(|| panic!("{context}: no restart"));
    run(&mut node, gw, (0, 12_000), true, &|| false, context);
    assert_eq!(
        node.unacked(),
        0,
        "{context}: got {:?}, stats {:?}",
        gw.reports.keys().collect::<Vec<_>>(),
        node.stats()
    );
    let s = node.stats();
    assert_eq!(
        (s.dropped, s.journal_errors, s.unsendable),
        (0, 0, 0),
        "{context}: {s:?}"
    );
    let last = node.next_seq() as u32 - 1;
    let seqs: Vec<u32> = gw.reports.keys().copied().collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{context}: sequences");
    let mut prev: Option<(u32, u64)> = None;
    for (seq, (ws, time)) in &gw.reports {
        let start = ws[0].start_ms;
        assert_eq!(
            ws.as_slice(),
            sim::expected_windows(0, CONFIG, start).as_slice(),
            "{context}: report {seq}"
        );
        // Contiguous within a power-up, from its clock's 0.
        let want = match prev {
            Some((p, s)) if p == time.power_up => s + u64::from(CONFIG.window_ms),
            _ => 0,
        };
        assert_eq!(start, want, "{context}: report {seq}");
        prev = Some((time.power_up, start));
        assert_eq!(
            time.wall_at_zero_ms,
            wall_zero(time.power_up),
            "{context}: report {seq} placed off its power-up's true time"
        );
    }
    assert_eq!(
        node.journal().stats().unwrap().outbox_batches,
        0,
        "{context}"
    );
    (last, s.folds)
}

#[test]
fn power_cut_at_every_flash_operation_keeps_every_report_once() {
    // The workload's operations on each chip, uncut.
    let (chip, log_chip) = (Chip::new(48, 1), LogChip::new(6, 1));
    let mut gw = Gateway::default();
    workload(&chip, &log_chip, &mut gw);
    let (ops, log_ops) = (chip.stats().ops, log_chip.stats().ops);
    let folds = {
        let node = start(&chip, &log_chip).unwrap();
        let f = node.folded();
        std::mem::forget(node);
        f
    };
    assert!(folds >= 9, "the outage folded {folds} reports");
    println!("workload: {ops} operations on redb's chip, {log_ops} on the log's");
    if std::env::var_os("FERRY_CUT_COUNT_ONLY").is_some() {
        return;
    }

    let mut cuts = 0;
    let only: Option<u64> = std::env::var("FERRY_CUT_ONE")
        .ok()
        .and_then(|v| v.parse().ok());
    for (which, total) in [("redb", ops), ("log", log_ops)] {
        for cut in 0..total {
            if only.is_some_and(|o| o != cut) {
                continue;
            }
            let t0 = std::time::Instant::now();
            let (chip, log_chip) = (Chip::new(48, cut + 1), LogChip::new(6, cut + 1));
            if which == "redb" {
                chip.cut_at(Some(cut));
            } else {
                log_chip.cut_at(Some(cut));
            }
            let mut gw = Gateway::default();
            workload(&chip, &log_chip, &mut gw);
            assert!(
                chip.is_cut() || log_chip.is_cut(),
                "{which} cut {cut} never came"
            );
            let t1 = t0.elapsed();
            recover(
                &chip,
                &log_chip,
                &mut gw,
                &format!("{which} cut {cut}/{total}"),
            );
            if only.is_some() || std::env::var_os("FERRY_CUT_TRACE").is_some() {
                println!(
                    "{which} cut {cut}: workload {t1:?}, total {:?}",
                    t0.elapsed()
                );
            }
            cuts += 1;
        }
    }
    println!("{cuts} power cuts, each recovered with every report once");
}
