//! The journaling node (feature `journal`) on simulated sensors with a fake
//! clock, over redb on a storage that outlives the node: windows go through
//! the agent's journal to the link, leave it only on an ack, and a power
//! loss (the node and its database vanish without closing) resumes the
//! epoch, the sequence and the sampling schedule exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use embedded_hal_mock::eh1::delay::NoopDelay;
use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_firmware::drivers::tmp102::Tmp102;
use ferry_firmware::journal_node::{JournalEvent, JournalNode, JournalSettings};
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::sensor::Sensor;
use ferry_firmware::sim::{self, EMULATED_EVERY, SimClock, SimSht4xBus, SimTmp102Bus, Simulated};
use ferry_proto::codec;
use ferry_proto::link::{DeviceId, Downlink, LinkAck, LinkConfig, Uplink, WindowReport};
use ferry_proto::serial::{self, Deframer};
use redb::{BackendError, StorageBackend};

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

/// A flash chip: bytes that survive the database that wrote them. With
/// `die_at`, the power goes at that write: it and every later write or
/// resize are not applied (and fail), as when QEMU is killed.
#[derive(Debug, Clone, Default)]
struct Flash {
    bytes: Arc<Mutex<Vec<u8>>>,
    writes: Arc<AtomicUsize>,
    die_at: Option<usize>,
}

impl Flash {
    /// The same chip after the power came back.
    fn power_up(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            ..Self::default()
        }
    }

    fn dead(&self) -> bool {
        self.die_at
            .is_some_and(|k| self.writes.load(Ordering::SeqCst) >= k)
    }

    fn count_write(&self) -> Result<(), BackendError> {
        if self.dead() {
            return Err(BackendError::Io(std::io::Error::other("no power")));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.dead() {
            return Err(BackendError::Io(std::io::Error::other("no power")));
        }
        Ok(())
    }
}

impl StorageBackend for Flash {
    fn len(&self) -> Result<u64, BackendError> {
        Ok(self.bytes.lock().unwrap().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let bytes = self.bytes.lock().unwrap();
        let start = offset as usize;
        let src = bytes
            .get(start..start + out.len())
            .ok_or_else(|| BackendError::Io(std::io::Error::other("read past the end")))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.count_write()?;
        self.bytes.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.count_write()?;
        let mut bytes = self.bytes.lock().unwrap();
        let start = offset as usize;
        let dst = bytes
            .get_mut(start..start + data.len())
            .ok_or_else(|| BackendError::Io(std::io::Error::other("write past the end")))?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

fn open(flash: &Flash) -> redb::Database {
    redb::Builder::new()
        .set_cache_size(16 * 1024)
        .create_with_backend(flash.clone())
        .unwrap()
}

/// The gateway end: keeps reports by sequence, counts resends, acks on demand.
#[derive(Default)]
struct Gateway {
    deframer: Deframer,
    hellos: Vec<(u32, u64)>,
    reports: BTreeMap<u32, Vec<WindowReport>>,
    resends: usize,
    last_heartbeat: Option<ferry_proto::link::Heartbeat>,
}

impl Gateway {
    fn receive(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(r) = self.deframer.push(b) {
                match codec::from_bytes::<Uplink>("Uplink", r.unwrap()).unwrap() {
                    Uplink::Hello(h) => self.hellos.push((h.boot, h.uptime_ms)),
                    Uplink::Report(r) => {
                        if let Some(old) = self.reports.insert(r.seq, r.windows.to_vec()) {
                            assert_eq!(old, r.windows.to_vec(), "seq {} changed", r.seq);
                            self.resends += 1;
                        }
                    }
                    Uplink::Heartbeat(h) => self.last_heartbeat = Some(h),
                }
            }
        }
    }
}

fn downlink(node: &mut JournalNode, now: u64, msg: &Downlink) -> Vec<JournalEvent> {
    let payload = codec::to_vec(msg).unwrap();
    let mut frame = [0u8; serial::MAX_SERIAL_FRAME];
    let n = serial::encode_frame(&payload, &mut frame).unwrap();
    frame[..n]
        .iter()
        .filter_map(|&b| node.handle_rx(now, b))
        .collect()
}

/// Runs the node over uptimes `from..to` ms, 1 ms apart, delivering every
/// frame to `gw`; with `ack`, the gateway acks every report as it arrives.
fn run(node: &mut JournalNode, gw: &mut Gateway, from: u64, to: u64, ack: bool) {
    run_while(node, gw, from, to, ack, &|| true);
}

/// [`run`], stopping early when `alive` turns false.
fn run_while(
    node: &mut JournalNode,
    gw: &mut Gateway,
    from: u64,
    to: u64,
    ack: bool,
    alive: &dyn Fn() -> bool,
) {
    let clock = SimClock::new(0);
    let mut sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let mut tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    let mut buf = [0u8; TX_BUFFER];
    for now in from..to {
        if !alive() {
            return;
        }
        node.poll(now, &mut [&mut sht as &mut dyn Sensor, &mut tmp]);
        while let Some(n) = node.poll_transmit(now, &mut buf) {
            gw.receive(&buf[..n]);
        }
        if ack && let Some(&up_to) = gw.reports.keys().next_back() {
            let msg = Downlink::Ack(LinkAck { boot: EPOCH, up_to });
            downlink(node, now, &msg);
        }
    }
}

fn start(flash: &Flash, now: u64, new_epoch: u32) -> JournalNode {
    let clock = SimClock::new(0);
    let sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    JournalNode::start(
        now,
        open(flash),
        JournalSettings::default(),
        DeviceId::from_bytes(&[0xC0, 0xFF, 0xEE]).unwrap(),
        new_epoch,
        CONFIG,
        TIMERS,
        &[&sht, &tmp],
        &EMULATED_EVERY,
    )
    .unwrap()
}

/// Every report is the waveform's windows for its start, and the reports
/// cover `[0, windows × 200 ms)` once each, in sequence order.
fn assert_exact(gw: &Gateway, windows: u64) {
    let seqs: Vec<u32> = gw.reports.keys().copied().collect();
    assert_eq!(seqs, (1..=windows as u32).collect::<Vec<_>>());
    let mut starts: Vec<u64> = gw.reports.values().flatten().map(|w| w.start_ms).collect();
    starts.dedup();
    assert_eq!(starts.len() as u64, windows, "one start per report");
    for (seq, ws) in &gw.reports {
        let start = (u64::from(*seq) - 1) * u64::from(CONFIG.window_ms);
        assert_eq!(
            ws.as_slice(),
            sim::expected_windows(0, CONFIG, start).as_slice(),
            "report {seq}"
        );
    }
}

#[test]
fn windows_leave_the_journal_only_when_acked() {
    let flash = Flash::default();
    let mut node = start(&flash, 0, EPOCH);
    let mut gw = Gateway::default();
    run(&mut node, &mut gw, 0, 2_001, false);

    // Ten windows journaled, four in flight (sent and resent), none deleted.
    assert_eq!((node.next_seq(), node.unacked()), (11, 10));
    assert_eq!(gw.reports.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(gw.resends > 0);
    assert_eq!(node.journal().stats().unwrap().outbox_batches, 10);
    let hb = gw.last_heartbeat.unwrap();
    assert_eq!((hb.queued, hb.next_seq, hb.dropped), (10, 11, 0));

    // A stale ack (another epoch, or a sequence never sent) deletes nothing.
    let stale = LinkAck { boot: 7, up_to: 3 };
    assert_eq!(
        downlink(&mut node, 2_000, &Downlink::Ack(stale)),
        [JournalEvent::StaleAck(stale)]
    );
    let future = LinkAck {
        boot: EPOCH,
        up_to: 11,
    };
    assert_eq!(
        downlink(&mut node, 2_000, &Downlink::Ack(future)),
        [JournalEvent::StaleAck(future)]
    );
    assert_eq!(node.unacked(), 10);

    // An ack deletes up to its sequence; the rest go out.
    let ack = LinkAck {
        boot: EPOCH,
        up_to: 4,
    };
    assert_eq!(
        downlink(&mut node, 2_000, &Downlink::Ack(ack)),
        [JournalEvent::Acked {
            up_to: 4,
            released: 4
        }]
    );
    assert_eq!(node.journal().stats().unwrap().outbox_batches, 6);
    run(&mut node, &mut gw, 2_001, 2_010, true);
    assert_eq!(node.unacked(), 0);
    assert_eq!(node.journal().stats().unwrap().outbox_batches, 0);
    assert_exact(&gw, 10);
    let s = node.stats();
    assert_eq!(
        (
            s.journaled,
            s.rejournaled,
            s.acked,
            s.dropped,
            s.journal_errors
        ),
        (10, 0, 10, 0, 0)
    );
}

#[test]
fn one_ack_deletes_a_long_backlog_in_chunks() {
    let flash = Flash::default();
    let mut node = start(&flash, 0, EPOCH);
    let mut gw = Gateway::default();
    // 20 s without acks: 100 windows journaled.
    run(&mut node, &mut gw, 0, 20_001, false);
    assert_eq!(node.unacked(), 100);
    let ack = LinkAck {
        boot: EPOCH,
        up_to: 100,
    };
    assert_eq!(
        downlink(&mut node, 20_001, &Downlink::Ack(ack)),
        [JournalEvent::Acked {
            up_to: 100,
            released: 100
        }]
    );
    assert_eq!(node.unacked(), 0);
    assert_eq!(node.journal().stats().unwrap().outbox_batches, 0);
    assert_eq!(node.stats().acked, 100);
}

#[test]
fn a_power_loss_resumes_epoch_sequence_and_schedule() {
    let flash = Flash::default();
    let mut node = start(&flash, 0, EPOCH);
    let mut gw = Gateway::default();
    // 1.1 s: five windows journaled, the sixth half sampled; two acked.
    run(&mut node, &mut gw, 0, 1_100, false);
    downlink(
        &mut node,
        1_100,
        &Downlink::Ack(LinkAck {
            boot: EPOCH,
            up_to: 2,
        }),
    );
    assert_eq!((node.next_seq(), node.unacked()), (6, 3));
    // The power goes: nothing is closed or flushed.
    std::mem::forget(node);

    // Power-up, uptime 0 again; a new epoch argument is ignored.
    let mut node = start(&flash, 0, 999);
    let r = node.record();
    assert_eq!(
        (r.epoch, r.power_ups, r.window_start_ms, r.next_report),
        (EPOCH, 2, 1_000, 6)
    );
    assert_eq!((node.next_seq(), node.unacked()), (6, 3));
    assert_eq!(node.device_ms(0), 1_000);
    run(&mut node, &mut gw, 0, 1_001, true);
    // The hello carries device time, so the gateway's offset holds.
    assert_eq!(gw.hellos.last(), Some(&(EPOCH, 1_000)));
    assert_eq!(node.unacked(), 0);
    // Windows 0..10 once each: the half-sampled window was sampled again
    // from its start, nothing was journaled twice.
    assert_exact(&gw, 10);
    assert_eq!(node.stats().rejournaled, 0);
}

#[test]
fn a_full_journal_drops_windows_and_counts_them() {
    let flash = Flash::default();
    let clock = SimClock::new(0);
    let sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    let mut node = JournalNode::start(
        0,
        open(&flash),
        JournalSettings { budget_bytes: 1 },
        DeviceId::from_bytes(&[1]).unwrap(),
        EPOCH,
        CONFIG,
        TIMERS,
        &[&sht, &tmp],
        &EMULATED_EVERY,
    )
    .unwrap();
    let mut gw = Gateway::default();
    run(&mut node, &mut gw, 0, 1_001, false);
    // The first window fills the 1-byte budget; the next four are refused
    // and counted, and the count survives a power loss.
    assert_eq!((node.next_seq(), node.unacked()), (2, 1));
    assert_eq!(node.stats().dropped, 4);
    std::mem::forget(node);
    let node = start(&flash, 0, EPOCH);
    assert_eq!(node.heartbeat(0).dropped, 4);
    assert_eq!(node.record().window_start_ms, 1_000);
}

/// The power goes at every k-th storage write of a run (redb's pages and
/// headers, the resume record, ack deletions), including between a
/// report's journal commit and its resume record; after the power-up the
/// gateway still gets every window exactly once, bit-identical, contiguous.
#[test]
fn power_loss_at_any_write_loses_and_repeats_nothing() {
    // Writes of an undisturbed run, to spread the kill points over.
    let probe = Flash::default();
    let mut node = start(&probe, 0, EPOCH);
    run(&mut node, &mut Gateway::default(), 0, 1_001, true);
    let total = probe.writes.load(Ordering::SeqCst);
    assert!(total > 20, "{total} writes");
    drop(node);

    let mut rejournaled = 0;
    for k in (1..total).step_by(3) {
        let flash = Flash {
            die_at: Some(k),
            ..Flash::default()
        };
        let mut gw = Gateway::default();
        // start() itself writes: the power may go before it is done.
        let clock = SimClock::new(0);
        let sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
        let tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
        let db = redb::Builder::new()
            .set_cache_size(16 * 1024)
            .create_with_backend(flash.clone());
        if let Ok(db) = db
            && let Ok(mut node) = JournalNode::start(
                0,
                db,
                JournalSettings::default(),
                DeviceId::from_bytes(&[0xC0, 0xFF, 0xEE]).unwrap(),
                EPOCH,
                CONFIG,
                TIMERS,
                &[&sht, &tmp],
                &EMULATED_EVERY,
            )
        {
            run_while(&mut node, &mut gw, 0, 1_001, true, &|| !flash.dead());
            std::mem::forget(node);
        }
        assert!(flash.dead(), "write {k} of {total} never came");

        let mut node = start(&flash.power_up(), 0, EPOCH);
        let resumed = node.record().window_start_ms;
        run(&mut node, &mut gw, 0, 1_001, true);
        assert_eq!(node.unacked(), 0, "kill at write {k}");
        let windows = (resumed + 1_000) / u64::from(CONFIG.window_ms);
        assert_exact(&gw, windows);
        rejournaled += node.stats().rejournaled;
    }
    // Some kill fell between a journal commit and its resume record.
    assert!(rejournaled > 0, "no kill point hit the two-transaction gap");
}
