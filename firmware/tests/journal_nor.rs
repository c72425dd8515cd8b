//! The nRF52840-DK journal image's storage, run on the host: the journaling
//! node on a simulated flash with the NVMC's geometry (4 KiB erase pages,
//! 4-byte words) and the board's layout — `FlashLayout::internal_512k`
//! (redb on 48 sectors, the tally on 2, the report log on 78) and its
//! journal budget (`firmware/boards/nrf52840-dk/src/journal_firmware.rs`).
//! With no gateway, the log fills and folds into the journal until the
//! journal's budget refuses (never the flash), then windows are dropped and
//! counted; a power loss keeps every journaled report and the count; one
//! ack empties both.

use embedded_hal_mock::eh1::delay::NoopDelay;
use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_firmware::drivers::tmp102::Tmp102;
use ferry_firmware::journal_node::{
    FlashLayout, JournalEvent, JournalNode, JournalSettings, mount_flash,
};
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::sensor::Sensor;
use ferry_firmware::sim::{EMULATED_EVERY, SimClock, SimSht4xBus, SimTmp102Bus, Simulated};
use ferry_firmware::storage::SharedFlash;
use ferry_firmware::storage::sim_flash::SimFlash;
use ferry_proto::codec;
use ferry_proto::link::{DeviceId, Downlink, LinkAck, LinkConfig};
use ferry_proto::serial;

/// The NVMC: 4-byte words, 4 KiB pages.
type Nvmc = SimFlash<4, 4096>;

/// The board's journal region (`flash::SECTORS`).
const SECTORS: u32 = 128;
/// The board's journal budget (`journal_firmware::JOURNAL`).
const JOURNAL: JournalSettings = JournalSettings {
    budget_bytes: 32 * 1024,
};
const EPOCH: u32 = 9;
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 20,
    window_ms: 200,
};

fn start(flash: &Nvmc, clock: &SimClock) -> JournalNode<SharedFlash<Nvmc>> {
    let storage = mount_flash(flash.clone(), &FlashLayout::internal_512k(0)).unwrap();
    assert_eq!(SECTORS, 48 + 2 + 78);
    let sht = Simulated::new(clock, Sht4x::new(SimSht4xBus::new(clock), NoopDelay));
    let tmp = Simulated::new(clock, Tmp102::new(SimTmp102Bus::new(clock)));
    JournalNode::start(
        0,
        storage,
        JOURNAL,
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
fn the_dk_journal_region_holds_log_and_budget_across_a_power_loss() {
    let flash = Nvmc::new(SECTORS as usize, 3);
    let clock = SimClock::new(0);
    let mut node = start(&flash, &clock);
    let mut sht = Simulated::new(&clock, Sht4x::new(SimSht4xBus::new(&clock), NoopDelay));
    let mut tmp = Simulated::new(&clock, Tmp102::new(SimTmp102Bus::new(&clock)));
    let mut out = [0u8; TX_BUFFER];
    // No gateway: windows are logged and folded until the budget refuses.
    let mut now = 0;
    while node.stats().dropped == 0 {
        assert!(now < 2_000_000, "the budget was never reached");
        node.poll(now, &mut [&mut sht as &mut dyn Sensor, &mut tmp]);
        while node.poll_transmit(now, &mut out).is_some() {}
        now += 5;
    }
    let before = node.stats();
    let unacked = node.unacked();
    // The first window refused is the budget's doing, not a flash or redb
    // failure, which would have come earlier and below it.
    assert_eq!((before.dropped, before.journal_errors), (1, 0));
    assert!(before.folds > 3, "{before:?}");
    assert_eq!(u64::from(before.journaled), unacked);
    assert_eq!(node.next_seq(), unacked + 1);
    assert!(
        node.journal().stats().unwrap().bytes >= JOURNAL.budget_bytes,
        "refused below the budget"
    );
    println!(
        "DK region: {unacked} reports kept ({} folded into the journal, {} in the log) over {} s of 200 ms windows",
        node.folded(),
        unacked - u64::from(node.folded()),
        now / 1_000
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
