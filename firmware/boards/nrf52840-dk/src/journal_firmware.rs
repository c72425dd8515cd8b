//! The journal build proper: entry point, main loop, panic handler.

use cortex_m_rt::entry;
use ferry_firmware::journal_node::{JournalNode, JournalSettings};
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::storage::{self, NorBackend};

use crate::board::{self, CONFIG, halt};
use crate::{clock, flash, heap};

/// redb's page cache (read cache and write buffer together), as on the
/// emulated board.
const CACHE_BYTES: usize = 16 * 1024;

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
    // A region with no valid anchor entry (blank) is formatted; any other
    // mount failure stops here rather than erasing the journal.
    let Ok(backend) = NorBackend::mount_or_format(nvmc, storage::Config::new(0, flash::SECTORS))
    else {
        halt()
    };
    let Ok(db) = storage::open_database(redb::Builder::new().set_cache_size(CACHE_BYTES), backend)
    else {
        halt()
    };
    clock::start(syst);

    // The random number names the epoch of a new journal only; an existing
    // journal keeps its own (the resume record).
    let Ok(mut node) = JournalNode::start(
        clock::now_ms(),
        db,
        JournalSettings::default(),
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
