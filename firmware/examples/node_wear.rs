//! Flash endurance of the journal build, measured: the real journaling
//! node (`JournalNode`: report log, drop tally, redb on the translation
//! layer) on a simulated NOR flash with a board's layout, sampling the
//! simulated SHT4x on the nRF52840-DK's default schedule (1 s samples,
//! 10 s windows), its reports acked by a simulated gateway; erases counted
//! per sector and region, and the lifetime each region's most-erased sector
//! projects at the part's rated cycles.
//!
//! ```sh
//! cargo run --release -p ferry-firmware --features journal --example node_wear    # every scenario, 30 days each
//! # what scripts/firmware.sh wear runs: the defaults only, 10 days, fail under 10 years
//! cargo run -p ferry-firmware --features journal --example node_wear -- --check --days 10
//! ```
//!
//! Scenarios (each on both layouts):
//! - **defaults**: 10 s windows, the gateway acks every report as it
//!   comes (the device's steady state) — 30 days simulated. `--check` fails
//!   if its projected lifetime is under 10 years.
//! - **1 s windows**: ten times the report rate, acked — 3 days.
//! - **daily outage**: 10 s windows, the gateway away every day for half an
//!   hour longer than the report log holds (11 h on the nRF52840's region,
//!   17.5 h on the SPI NOR): that half hour is folded into redb, a few
//!   folds a day, and deleted in one commit when the gateway is back — 30
//!   days.
//!
//! The projection is linear: erases of the most-erased sector of a region
//! per day of simulation, against the rated cycles (nRF52840 internal
//! flash: 10 000, Product Specification §4.3.9; SPI NOR: 100 000, e.g.
//! Winbond W25Q80DV). One power-up per run: each further power-up costs a
//! translation-layer mount (one erase in redb's region) and a log sector
//! started afresh (one erase in the log's).

use std::time::Instant;

use embedded_hal_mock::eh1::delay::NoopDelay;
use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_firmware::journal_node::{FlashLayout, JournalNode, JournalSettings, mount_flash};
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::sensor::Sensor;
use ferry_firmware::sim::{SimClock, SimSht4xBus, Simulated};
use ferry_firmware::storage::SharedFlash;
use ferry_firmware::storage::sim_flash::SimFlash;
use ferry_proto::codec;
use ferry_proto::link::{DeviceId, Downlink, LinkAck, LinkConfig, TimeSync, Uplink};
use ferry_proto::serial::{self, Deframer};

const DAY_MS: u64 = 24 * 3600 * 1000;
const YEAR_DAYS: f64 = 365.25;
/// The lifetime the journal build must reach at its defaults.
const REQUIRED_YEARS: f64 = 10.0;

const EPOCH: u32 = 1;

/// The nRF52840-DK's default sampling (`boards/nrf52840-dk/src/board.rs`).
const DEFAULTS: LinkConfig = LinkConfig {
    sample_period_ms: 1_000,
    window_ms: 10_000,
};

struct Part {
    name: &'static str,
    cycles: f64,
    layout: FlashLayout,
    settings: JournalSettings,
}

/// What one run measured.
struct Wear {
    days: f64,
    /// Per region: name, sectors, max and mean erases during the run.
    regions: Vec<(&'static str, usize, u32, f64)>,
    reports: u64,
    folds: u32,
    dropped: u32,
    bytes_programmed: u64,
}

impl Wear {
    /// Years until the most-erased sector of any region reaches `cycles`,
    /// and which region that is.
    fn lifetime(&self, cycles: f64) -> (f64, &'static str) {
        self.regions
            .iter()
            .map(|&(name, _, max, _)| {
                let per_day = f64::from(max) / self.days;
                let years = if per_day > 0.0 {
                    cycles / per_day / YEAR_DAYS
                } else {
                    f64::INFINITY
                };
                (years, name)
            })
            .fold(
                (f64::INFINITY, "none"),
                |a, b| if b.0 < a.0 { b } else { a },
            )
    }
}

/// Runs the node for `days` on `flash`: `away(now_ms)` says whether the
/// gateway is gone at that instant.
fn simulate<const W: usize>(
    part: &Part,
    sectors: usize,
    config: LinkConfig,
    days: f64,
    away: &dyn Fn(u64) -> bool,
) -> Wear {
    let flash = SimFlash::<W, 4096>::new(sectors, 7);
    let clock = SimClock::new(0);
    let mut sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let storage = mount_flash(flash.clone(), &part.layout).expect("mount");
    let mut node: JournalNode<SharedFlash<SimFlash<W, 4096>>> = JournalNode::start(
        0,
        storage,
        part.settings,
        DeviceId::from_bytes(&[0x52, 0x84]).unwrap(),
        EPOCH,
        config,
        LinkTimers::default(),
        &[&sht],
        &[1],
    )
    .expect("start");
    // Wear from here on: formatting and the first power-up are not the
    // steady state.
    let before = flash.stats();
    let end = (days * DAY_MS as f64) as u64;
    let mut deframer = Deframer::new();
    let mut out = [0u8; TX_BUFFER];
    let mut highest = 0u32;
    let mut now = 0u64;
    let mut frame = [0u8; 64];
    let mut downlink = |node: &mut JournalNode<_>, now: u64, msg: &Downlink| {
        let payload = codec::to_vec(msg).unwrap();
        let n = serial::encode_frame(&payload, &mut frame).unwrap();
        for &b in &frame[..n] {
            node.handle_rx(now, b);
        }
    };
    while now < end {
        node.poll(now, &mut [&mut sht as &mut dyn Sensor]);
        let gone = away(now);
        let mut syncs = Vec::new();
        while let Some(n) = node.poll_transmit(now, &mut out) {
            if gone {
                continue;
            }
            for &b in &out[..n] {
                let Some(Ok(payload)) = deframer.push(b) else {
                    continue;
                };
                match codec::from_bytes::<Uplink>("Uplink", payload) {
                    Ok(Uplink::Report(r)) => highest = highest.max(r.seq),
                    // The gateway answers hellos and heartbeats with its clock.
                    Ok(Uplink::Hello(h)) => syncs.push((h.power_up, h.uptime_ms)),
                    Ok(Uplink::Heartbeat(h)) => syncs.push((h.power_up, h.uptime_ms)),
                    Err(_) => {}
                }
            }
        }
        for (power_up, uptime_ms) in syncs {
            let sync = TimeSync {
                power_up,
                uptime_ms,
                wall_ms: 1_700_000_000_000 + uptime_ms as i64,
            };
            downlink(&mut node, now, &Downlink::TimeSync(sync));
        }
        if !gone && highest > 0 {
            let msg = Downlink::Ack(LinkAck {
                boot: EPOCH,
                up_to: highest,
            });
            downlink(&mut node, now, &msg);
        }
        // On to the next instant with work (a sample, a resend, a
        // heartbeat), or the gateway's return.
        let mut next = node.next_due_ms(now).max(now + 1);
        if gone {
            next = next.min(now + 60_000);
        }
        now = next;
    }
    let after = flash.stats();
    let erases: Vec<u32> = after
        .erases
        .iter()
        .zip(&before.erases)
        .map(|(a, b)| a - b)
        .collect();
    let l = &part.layout;
    let region = |name: &'static str, from: u32, n: u32| {
        let from = (from / 4096) as usize;
        let e = &erases[from..from + n as usize];
        let max = e.iter().copied().max().unwrap_or(0);
        let mean = f64::from(e.iter().sum::<u32>()) / e.len() as f64;
        (name, n as usize, max, mean)
    };
    let s = node.stats();
    assert_eq!(s.journal_errors, 0, "{}: the flash failed", part.name);
    Wear {
        days,
        regions: vec![
            region("report log", l.log.offset, l.log.sectors),
            region("drop tally", l.drops.offset, l.drops.sectors),
            region("journal (redb)", l.journal.offset, l.journal.sectors),
        ],
        reports: u64::from(s.journaled),
        folds: s.folds,
        dropped: s.dropped,
        bytes_programmed: after.bytes_programmed - before.bytes_programmed,
    }
}

fn print(part: &Part, scenario: &str, w: &Wear) -> f64 {
    let (years, binding) = w.lifetime(part.cycles);
    println!(
        "wear: {} / {scenario}: {:.1} days, {} reports, {} folds, {} dropped, {:.0} B programmed per report",
        part.name,
        w.days,
        w.reports,
        w.folds,
        w.dropped,
        w.bytes_programmed as f64 / w.reports.max(1) as f64
    );
    for &(name, sectors, max, mean) in &w.regions {
        println!(
            "wear:   {name:<15} {sectors:>3} sectors: erases per sector max {max} / mean {mean:.1}"
        );
    }
    println!(
        "wear:   projected lifetime {} at {:.0} cycles (bound by the {binding})",
        if years.is_finite() {
            format!("{years:.1} years")
        } else {
            "unbounded".to_string()
        },
        part.cycles
    );
    years
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let check = args.iter().any(|a| a == "--check");
    let days: f64 = args
        .iter()
        .position(|a| a == "--days")
        .and_then(|i| args.get(i + 1))
        .map_or(30.0, |d| d.parse().expect("--days: a number of days"));
    let parts = [
        Part {
            name: "nRF52840 internal flash, 512 KiB region (128 x 4 KiB, 4-byte words)",
            cycles: 10_000.0,
            layout: FlashLayout::internal_512k(0),
            settings: JournalSettings {
                budget_bytes: 32 * 1024,
            },
        },
        Part {
            name: "SPI NOR, 1 MiB (256 x 4 KiB, byte writes)",
            cycles: 100_000.0,
            layout: FlashLayout::spi_nor_1m(0),
            settings: JournalSettings {
                budget_bytes: 96 * 1024,
            },
        },
    ];
    let began = Instant::now();
    let mut worst = f64::INFINITY;
    let mut summary = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let run = |config: LinkConfig, days: f64, away: &dyn Fn(u64) -> bool| {
            if i == 0 {
                simulate::<4>(part, 128, config, days, away)
            } else {
                simulate::<1>(part, 256, config, days, away)
            }
        };
        let w = run(DEFAULTS, days, &|_| false);
        let years = print(
            part,
            "defaults (1 s samples, 10 s windows, gateway acking)",
            &w,
        );
        worst = worst.min(years);
        summary.push(format!(
            "firmware lifetime: {:<70} {years:>6.1} years at defaults ({:.0} cycles; required {REQUIRED_YEARS})",
            part.name, part.cycles
        ));
        if !check {
            let fast = LinkConfig {
                sample_period_ms: 100,
                window_ms: 1_000,
            };
            let w = run(fast, days / 10.0, &|_| false);
            print(part, "1 s windows (100 ms samples), gateway acking", &w);
            // What the log holds at 10 s windows (51 reports of two
            // windows per sector, one sector kept free), and half an hour.
            let span_ms = u64::from(part.layout.log.sectors - 1) * 51 * 10_000;
            let outage = span_ms + 1_800_000;
            let away = |now: u64| now % DAY_MS < outage;
            let w = run(DEFAULTS, days, &away);
            let scenario = format!(
                "defaults, gateway away {:.1} h every day",
                outage as f64 / 3_600_000.0
            );
            print(part, &scenario, &w);
        }
    }
    println!("wear: simulated in {:.1} s", began.elapsed().as_secs_f64());
    for line in summary {
        println!("{line}");
    }
    if check && worst < REQUIRED_YEARS {
        eprintln!(
            "wear: a journal build's projected flash lifetime is under {REQUIRED_YEARS} years"
        );
        std::process::exit(1);
    }
}
