//! The firmware proper: entry point, main loop, panic handler.

use cortex_m_rt::entry;
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::node::Node;

use crate::board::{self, CONFIG, halt};
use crate::clock;

/// Reports kept while the gateway is away: ten minutes of 10 s windows.
const RING: usize = 64;
/// Windows per report: the SHT4x has two channels.
const WINDOWS: usize = 2;

struct State {
    node: Node<RING, WINDOWS>,
    frame: [u8; TX_BUFFER],
}

#[entry]
fn main() -> ! {
    let Some((
        board::Board {
            mut tx,
            mut rx,
            mut sht,
            device_id,
            random,
            syst,
        },
        _,
    )) = board::take()
    else {
        halt()
    };
    clock::start(syst);

    let Ok(node) = Node::new(
        0,
        device_id,
        random,
        CONFIG,
        LinkTimers::default(),
        &[&sht],
        &[1],
    ) else {
        halt()
    };
    let Some(state) = cortex_m::singleton!(: State = State { node, frame: [0; TX_BUFFER] }) else {
        halt()
    };

    loop {
        let now = clock::now_ms();
        // Bytes the UARTE's interrupt handler received meanwhile.
        while let Some(byte) = rx.pop() {
            state.node.handle_rx(now, byte);
        }
        state.node.poll(now, &mut [&mut sht]);
        while let Some(n) = state.node.poll_transmit(now, &mut state.frame) {
            // A failed write loses the frame; the link resends reports.
            let _ = tx.write(&state.frame[..n]);
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // No debug channel but the probe: reset, and the boot number changes.
    cortex_m::peripheral::SCB::sys_reset()
}
