//! The journal build proper: entry point, main loop, panic handler.

use cortex_m_rt::entry;
use ferry_firmware::journal_node::{FlashLayout, JournalNode, JournalSettings, mount_flash};
use ferry_firmware::link::{LinkTimers, TX_BUFFER};

use crate::board::{self, CONFIG, halt};
use crate::{clock, flash, heap};

/// The journal region's stores: redb on 48 sectors, the drop tally on 2,
/// the report log on 78 (`FlashLayout::internal_512k`; the log's share is
/// what ten years of endurance need, firmware/README.md "Wear").
const LAYOUT: FlashLayout = FlashLayout::internal_512k(0);
/// Rows the journal keeps (folded reports) before it refuses more: what
/// redb's 48 sectors hold with room for a fold (tests/journal_nor.rs).
pub const JOURNAL: JournalSettings = JournalSettings {
    budget_bytes: 32 * 1024,
};

#[entry]
fn main() -> ! {
    heap::init();
    let Some((
        board::Board {
            mut tx,
            mut rx,
            mut sht,
            device_id,
            random,
            syst,
        },
        nvmc,
    )) = board::take()
    else {
        halt()
    };
    let Some(nvmc) = flash::take(nvmc) else {
        halt()
    };
    // A region with no valid anchor entry (blank flash at first boot) is
    // formatted; any other mount failure stops here rather than erasing
    // the journal.
    let Ok(storage) = mount_flash(nvmc, &LAYOUT) else {
        halt()
    };
    clock::start(syst);

    // The random number names the epoch of a new journal only; an existing
    // journal keeps its own (the resume record).
    let Ok(mut node) = JournalNode::start(
        clock::now_ms(),
        storage,
        JOURNAL,
        device_id,
        random,
        CONFIG,
        LinkTimers::default(),
        &[&sht],
        &[1],
    ) else {
        halt()
    };

    let mut frame = [0u8; TX_BUFFER];
    loop {
        let now = clock::now_ms();
        // Bytes the UARTE's interrupt handler received meanwhile.
        while let Some(byte) = rx.pop() {
            node.handle_rx(now, byte);
        }
        node.poll(now, &mut [&mut sht]);
        while let Some(n) = node.poll_transmit(now, &mut frame) {
            // A failed write loses the frame; the link resends reports.
            let _ = tx.write(&frame[..n]);
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // No debug channel but the probe: reset. The journal resumes where its
    // last commit left it.
    cortex_m::peripheral::SCB::sys_reset()
}
