//! A whole node on simulated sensors (real drivers over simulated I2C), with
//! a fake clock and a test gateway that decodes frames and sends acks.

use std::collections::BTreeMap;

use embedded_hal_mock::eh1::delay::NoopDelay;
use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_firmware::drivers::tmp102::{ConversionRate, Tmp102};
use ferry_firmware::link::{Event, LinkTimers, TX_BUFFER};
use ferry_firmware::node::{FIRMWARE, Node};
use ferry_firmware::sensor::Sensor;
use ferry_firmware::sim::{
    self, EMULATED_EVERY, SIM_SHT4X_SERIAL, SimClock, SimSht4xBus, SimTmp102Bus, Simulated,
};
use ferry_proto::codec;
use ferry_proto::link::{DeviceId, Downlink, Heartbeat, LinkAck, LinkConfig, Uplink, WindowReport};
use ferry_proto::serial::{self, Deframer};

const BOOT: u32 = 3;
const TIMERS: LinkTimers = LinkTimers {
    resend_after_ms: 1_000,
    heartbeat_every_ms: 10_000,
    hello_every_ms: 1_000,
};

fn cfg(sample_period_ms: u32, window_ms: u32) -> LinkConfig {
    LinkConfig {
        sample_period_ms,
        window_ms,
    }
}

/// The gateway end: deframes uplink bytes, keeps windows by (seq), acks.
#[derive(Default)]
struct Gateway {
    deframer: Deframer,
    hellos: usize,
    reports: BTreeMap<u32, Vec<WindowReport>>,
    duplicates: usize,
    heartbeats: Vec<Heartbeat>,
    /// Time syncs to send: the answers to hellos and heartbeats.
    syncs: Vec<Downlink>,
}

/// Wall-clock time (Unix ms) of the boot's uptime 0.
const WALL_ZERO: i64 = 1_700_000_000_000;

impl Gateway {
    fn receive(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(r) = self.deframer.push(b) {
                match codec::from_bytes::<Uplink>("Uplink", r.unwrap()).unwrap() {
                    Uplink::Hello(h) => {
                        assert_eq!(h.boot, BOOT);
                        assert_eq!(h.firmware.as_str(), FIRMWARE);
                        let names: Vec<_> = h
                            .channels
                            .iter()
                            .map(|c| {
                                (
                                    c.id,
                                    c.sensor.as_str(),
                                    c.quantity.as_str(),
                                    c.unit.as_str(),
                                )
                            })
                            .collect();
                        assert_eq!(
                            names,
                            [
                                (0, "sht4x", "temperature", "Cel"),
                                (1, "sht4x", "relative_humidity", "%"),
                                (2, "tmp102", "temperature", "Cel"),
                            ]
                        );
                        self.hellos += 1;
                        self.sync(h.power_up, h.uptime_ms);
                    }
                    Uplink::Report(r) => {
                        assert_eq!(r.time.power_up, BOOT);
                        assert_eq!(r.time.wall_at_zero_ms, WALL_ZERO);
                        if self.reports.insert(r.seq, r.windows.to_vec()).is_some() {
                            self.duplicates += 1;
                        }
                    }
                    Uplink::Heartbeat(h) => {
                        self.sync(h.power_up, h.uptime_ms);
                        self.heartbeats.push(h);
                    }
                }
            }
        }
    }

    fn sync(&mut self, power_up: u32, uptime_ms: u64) {
        self.syncs
            .push(Downlink::TimeSync(ferry_proto::link::TimeSync {
                power_up,
                uptime_ms,
                wall_ms: WALL_ZERO + uptime_ms as i64,
            }));
    }

    /// A gateway answers the hello with an ack of what it holds of this
    /// boot (0 for nothing): any downlink stops the device repeating its hello.
    fn ack(&self) -> Option<Downlink> {
        if self.hellos == 0 {
            return None;
        }
        let up_to = self.reports.keys().next_back().copied().unwrap_or(0);
        Some(Downlink::Ack(LinkAck { boot: BOOT, up_to }))
    }

    fn windows(&self) -> Vec<WindowReport> {
        self.reports.values().flatten().copied().collect()
    }
}

fn encode(msg: &Downlink) -> Vec<u8> {
    let mut payload = [0u8; 64];
    let n = codec::to_slice(msg, &mut payload).unwrap();
    let mut frame = [0u8; 80];
    let m = serial::encode_frame(&payload[..n], &mut frame).unwrap();
    frame[..m].to_vec()
}

/// Runs `node` from `from` to `to` (inclusive) in 10 ms steps; the gateway
/// acks after every step while `online`.
#[allow(clippy::too_many_arguments)]
fn run<const N: usize, const W: usize>(
    node: &mut Node<N, W>,
    sensors: &mut [&mut dyn Sensor],
    gw: &mut Gateway,
    from: u64,
    to: u64,
    online: bool,
) {
    let mut buf = [0u8; TX_BUFFER];
    for now in (from..=to).step_by(10) {
        node.poll(now, sensors);
        while let Some(n) = node.poll_transmit(now, &mut buf) {
            if online {
                gw.receive(&buf[..n]);
            }
        }
        for sync in std::mem::take(&mut gw.syncs) {
            for b in encode(&sync) {
                node.handle_rx(now, b);
            }
        }
        if online && let Some(ack) = gw.ack() {
            for b in encode(&ack) {
                node.handle_rx(now, b);
            }
        }
    }
}

fn expected(
    epoch: u64,
    config: LinkConfig,
    starts: impl Iterator<Item = u64>,
) -> Vec<WindowReport> {
    starts
        .flat_map(|s| sim::expected_windows(epoch, config, s).into_iter())
        .collect()
}

#[test]
fn streams_exactly_the_predicted_windows_and_applies_config_from_the_gateway() {
    let clock = SimClock::new(0);
    let mut sht = Simulated::new(
        &clock,
        Sht4x::new(SimSht4xBus::new(&clock), NoopDelay::new()),
    );
    let mut tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    let id = DeviceId::from_bytes(b"emu-1").unwrap();
    let mut node: Node<8, 3> = Node::new(
        0,
        id,
        BOOT,
        cfg(100, 1_000),
        TIMERS,
        &[&sht, &tmp],
        &EMULATED_EVERY,
    )
    .unwrap();
    let mut gw = Gateway::default();
    run(
        &mut node,
        &mut [&mut sht, &mut tmp],
        &mut gw,
        0,
        5_000,
        true,
    );
    assert_eq!(gw.hellos, 1);
    assert_eq!(
        gw.windows(),
        expected(0, cfg(100, 1_000), (0..5).map(|k| k * 1_000))
    );
    assert_eq!(
        gw.reports.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let w = &gw.windows()[0];
    assert_eq!((w.channel, w.count), (0, 10));
    assert_eq!(gw.windows()[2].count, 5, "the TMP102 is read every 200 ms");

    // A config frame at 5 050 applies at the 6 000 boundary.
    let event = encode(&Downlink::Config(cfg(50, 400)))
        .into_iter()
        .filter_map(|b| node.handle_rx(5_050, b))
        .collect::<Vec<_>>();
    assert_eq!(event, [Event::Config(cfg(50, 400))]);
    run(
        &mut node,
        &mut [&mut sht, &mut tmp],
        &mut gw,
        5_010,
        7_200,
        true,
    );
    let mut want = expected(0, cfg(100, 1_000), (0..6).map(|k| k * 1_000));
    want.extend(expected(
        6_000,
        cfg(50, 400),
        [6_000, 6_400, 6_800].into_iter(),
    ));
    assert_eq!(gw.windows(), want);
    assert_eq!(gw.duplicates, 0);
    assert_eq!(node.link().queued(), 0);

    // An out-of-range config is refused and counted; nothing changes.
    for b in encode(&Downlink::Config(cfg(1, 400))) {
        node.handle_rx(7_200, b);
    }
    assert_eq!(node.stats().configs_rejected, 1);
    assert_eq!(node.sampler().pending_config(), None);
}

#[test]
fn gateway_outage_resends_within_the_ring_and_counts_what_overflowed() {
    let clock = SimClock::new(0);
    let mut sht = Simulated::new(
        &clock,
        Sht4x::new(SimSht4xBus::new(&clock), NoopDelay::new()),
    );
    let mut tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    let id = DeviceId::from_bytes(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let config = cfg(100, 500);
    let mut node: Node<4, 3> =
        Node::new(0, id, BOOT, config, TIMERS, &[&sht, &tmp], &EMULATED_EVERY).unwrap();
    let mut gw = Gateway::default();
    run(
        &mut node,
        &mut [&mut sht, &mut tmp],
        &mut gw,
        0,
        1_000,
        true,
    );
    assert_eq!(gw.reports.len(), 2);
    // Offline for 3 s: six windows close, the ring keeps the newest four.
    run(
        &mut node,
        &mut [&mut sht, &mut tmp],
        &mut gw,
        1_010,
        4_000,
        false,
    );
    assert_eq!(node.link().queued_seqs().collect::<Vec<_>>(), [5, 6, 7, 8]);
    assert_eq!(node.stats().link.dropped, 2);
    // Back online: the gateway restarted, asks for a hello, gets the ring.
    for b in encode(&Downlink::HelloRequest(())) {
        node.handle_rx(4_010, b);
    }
    run(
        &mut node,
        &mut [&mut sht, &mut tmp],
        &mut gw,
        4_010,
        11_000,
        true,
    );
    assert_eq!(gw.hellos, 2);
    assert_eq!(gw.duplicates, 0);
    let seqs: Vec<_> = gw.reports.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=22).filter(|s| ![3, 4].contains(s)).collect::<Vec<_>>()
    );
    let starts = (0..22u64).filter(|k| ![2, 3].contains(k)).map(|k| k * 500);
    assert_eq!(gw.windows(), expected(0, config, starts));
    let hb = gw.heartbeats.last().unwrap();
    assert_eq!((hb.dropped, hb.uptime_ms), (2, 10_000));
}

#[test]
fn simulated_parts_answer_like_the_real_ones() {
    let clock = SimClock::new(15_000);
    let mut sht = Sht4x::new(SimSht4xBus::new(&clock), NoopDelay::new());
    assert_eq!(sht.serial_number(), Ok(SIM_SHT4X_SERIAL));
    let m = sht.measure().unwrap();
    // 15 s is half-way up the 60 s temperature triangle: 25 °C.
    assert_eq!(m.temperature_raw, sim::sht4x_temperature_raw(15_000));
    assert!(
        (m.temperature_celsius() - 25.0).abs() < 0.002,
        "{}",
        m.temperature_celsius()
    );
    // Humidity at 15 s of a 90 s triangle 40..60 %: 40 + 20·15/45.
    assert!(
        (m.humidity_percent() - 46.666).abs() < 0.002,
        "{}",
        m.humidity_percent()
    );
    let (mut bus, _) = sht.destroy();
    let mut buf = [0u8; 6];
    // Reading without a command is NACKed, as on the real part.
    assert!(embedded_hal::i2c::I2c::read(&mut bus, 0x44, &mut buf).is_err());
    assert!(embedded_hal::i2c::I2c::write(&mut bus, 0x45, &[0xFD]).is_err());

    let mut tmp = Tmp102::new(SimTmp102Bus::new(&clock));
    // 15 s of a 45 s triangle 15..25 °C: 15 + 10·15/22.5 = 21.666 → 347 counts.
    assert_eq!(tmp.temperature().unwrap().0, 347);
    tmp.configure(ConversionRate::Hz8, false).unwrap();
    assert_eq!(tmp.config(), Ok(0x60E0));
    clock.set(22_500);
    assert_eq!(tmp.temperature().unwrap().celsius(), 25.0);
}

#[test]
fn waveforms_are_triangles() {
    assert_eq!(sim::tri(0, 60_000, 20_000, 30_000), 20_000);
    assert_eq!(sim::tri(30_000, 60_000, 20_000, 30_000), 30_000);
    assert_eq!(sim::tri(45_000, 60_000, 20_000, 30_000), 25_000);
    assert_eq!(sim::tri(60_000, 60_000, 20_000, 30_000), 20_000);
    assert_eq!(sim::sample(2, 0), Some(15.0));
    assert_eq!(sim::sample(3, 0), None);
}

#[test]
fn emulated_board_arguments() {
    use ferry_firmware::emulated::{ArgError, BootArgs, DEFAULT_CONFIG, DEFAULT_DEVICE_ID};
    let a = BootArgs::parse(
        "ferry device=0a1B2c boot=7 period=20 window=200 resend=300 exit_after=5000",
    )
    .unwrap();
    assert_eq!(a.device_id.as_bytes(), [0x0a, 0x1b, 0x2c]);
    assert_eq!(a.boot, Some(7));
    assert_eq!(a.config, cfg(20, 200));
    assert_eq!(a.timers.resend_after_ms, 300);
    assert_eq!(
        a.timers.heartbeat_every_ms,
        LinkTimers::default().heartbeat_every_ms
    );
    assert_eq!(a.exit_after_ms, Some(5_000));
    let d = BootArgs::parse("").unwrap();
    assert_eq!(d.device_id.as_bytes(), DEFAULT_DEVICE_ID);
    assert_eq!(
        (d.boot, d.config, d.exit_after_ms),
        (None, DEFAULT_CONFIG, None)
    );
    assert_eq!(
        BootArgs::parse("x colour=red"),
        Err(ArgError::UnknownKey("colour=red"))
    );
    assert_eq!(
        BootArgs::parse("device=abc"),
        Err(ArgError::BadValue("device=abc"))
    );
    assert_eq!(
        BootArgs::parse("device="),
        Err(ArgError::BadValue("device="))
    );
    assert_eq!(
        BootArgs::parse("device=zz"),
        Err(ArgError::BadValue("device=zz"))
    );
    let long = format!("device={}", "00".repeat(17));
    assert!(matches!(BootArgs::parse(&long), Err(ArgError::BadValue(_))));
    assert_eq!(
        BootArgs::parse("boot=-1"),
        Err(ArgError::BadValue("boot=-1"))
    );
    // The journal image's flash file.
    let f = BootArgs::parse("ferry flash=/tmp/x/flash.bin").unwrap();
    assert_eq!(f.flash.as_deref(), Some("/tmp/x/flash.bin"));
    assert_eq!(d.flash, None);
    assert_eq!(BootArgs::parse("flash="), Err(ArgError::BadValue("flash=")));
    let long = format!("flash=/{}", "a".repeat(200));
    assert!(matches!(BootArgs::parse(&long), Err(ArgError::BadValue(_))));
}
