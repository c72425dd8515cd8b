//! The nRF52840-DK journal image's storage, run on the host: the journaling
//! node over `NorBackend` on a simulated flash with the NVMC's geometry
//! (4 KiB erase pages, 4-byte words) and the board's layout — 128 sectors
//! from the region's start, default `Config`, a 16 KiB redb cache and the
//! default journal budget (`firmware/boards/nrf52840-dk/src/{flash,
//! journal_firmware}.rs`). The journal fills to its budget without running
//! out of flash, a power loss keeps every journaled report, and one ack
//! empties it.

use embedded_hal_mock::eh1::delay::NoopDelay;
use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_firmware::drivers::tmp102::Tmp102;
use ferry_firmware::journal_node::{JournalEvent, JournalNode, JournalSettings};
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::sensor::Sensor;
use ferry_firmware::sim::{EMULATED_EVERY, SimClock, SimSht4xBus, SimTmp102Bus, Simulated};
use ferry_firmware::storage::sim_flash::SimFlash;
use ferry_firmware::storage::{Config, NorBackend, open_database};
use ferry_proto::codec;
use ferry_proto::link::{DeviceId, Downlink, LinkAck, LinkConfig};
use ferry_proto::serial;

/// The NVMC: 4-byte words, 4 KiB pages.
type Nvmc = SimFlash<4, 4096>;

/// The board's journal region (`flash::SECTORS`).
const SECTORS: u32 = 128;
const EPOCH: u32 = 9;
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 20,
    window_ms: 200,
};

fn start(flash: &Nvmc, clock: &SimClock) -> JournalNode {
    let backend = NorBackend::mount_or_format(flash.clone(), Config::new(0, SECTORS)).unwrap();
    let db = open_database(redb::Builder::new().set_cache_size(16 * 1024), backend).unwrap();
    let sht = Simulated::new(clock, Sht4x::new(SimSht4xBus::new(clock), NoopDelay));
    let tmp = Simulated::new(clock, Tmp102::new(SimTmp102Bus::new(clock)));
    JournalNode::start(
        0,
        db,
        JournalSettings::default(),
        DeviceId::from_bytes(&[0x52, 0x84]).unwrap(),
        EPOCH,
        CONFIG,
        LinkTimers::default(),
        &[&sht, &tmp],
        &EMULATED_EVERY,
    )
    .unwrap()
}

#[test]
fn the_dk_journal_region_holds_the_whole_budget_across_a_power_loss() {
    let flash = Nvmc::new(SECTORS as usize, 3);
    let clock = SimClock::new(0);
    let mut node = start(&flash, &clock);
    let mut sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let mut tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    let mut out = [0u8; TX_BUFFER];
    // No gateway: windows are journaled until the budget refuses them.
    let mut now = 0;
    while node.stats().dropped == 0 {
        assert!(now < 1_000_000, "the budget was never reached");
        node.poll(now, &mut [&mut sht as &mut dyn Sensor, &mut tmp]);
        while node.poll_transmit(now, &mut out).is_some() {}
        now += 1;
    }
    let before = node.stats();
    let unacked = node.unacked();
    // The one window refused is the budget's doing (a commit is refused as
    // full only at or past it), not a flash or redb failure, which would
    // have come earlier and below it.
    assert_eq!((before.dropped, before.journal_errors), (1, 1));
    assert_eq!(u64::from(before.journaled), unacked);
    assert_eq!(node.next_seq(), unacked + 1);
    assert!(
        node.journal().stats().unwrap().bytes >= JournalSettings::default().budget_bytes,
        "refused below the budget"
    );

    // Power loss: nothing is closed; the flash keeps what was programmed.
    std::mem::forget(node);
    let mut node = start(&flash, &clock);
    assert_eq!(node.unacked(), unacked);
    assert_eq!(node.next_seq(), unacked + 1);
    assert_eq!(node.heartbeat(0).dropped, before.dropped);
    assert_eq!(node.record().epoch, EPOCH);

    // One ack empties the journal.
    let up_to = u32::try_from(unacked).unwrap();
    let payload = codec::to_vec(&Downlink::Ack(LinkAck { boot: EPOCH, up_to })).unwrap();
    let mut frame = [0u8; serial::MAX_SERIAL_FRAME];
    let n = serial::encode_frame(&payload, &mut frame).unwrap();
    let events: Vec<JournalEvent> = frame[..n]
        .iter()
        .filter_map(|&b| node.handle_rx(now, b))
        .collect();
    assert_eq!(
        events,
        [JournalEvent::Acked {
            up_to,
            released: up_to
        }]
    );
    assert_eq!(node.unacked(), 0);
    assert_eq!(node.journal().stats().unwrap().outbox_batches, 0);
    assert_eq!(node.stats().journal_errors, 0);
}
