//! The firmware proper: entry point, main loop, panic handler.

use cortex_m_rt::entry;
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::node::Node;

use crate::board::{self, CONFIG, halt};

/// Reports kept while the gateway is away: five minutes of 10 s windows
/// (static RAM is held to 8 KiB).
const RING: usize = 32;
/// Windows per report: the SHT4x has two channels.
const WINDOWS: usize = 2;

struct State {
    node: Node<RING, WINDOWS>,
    frame: [u8; TX_BUFFER],
}

#[entry]
fn main() -> ! {
    let Some(board::Board {
        tx,
        mut rx,
        mut sht,
        device_id,
        random,
        timer,
    }) = board::take()
    else {
        halt()
    };
    let now_ms = || timer.get_counter().ticks() / 1_000;

    let Ok(node) = Node::new(
        now_ms(),
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
        let now = now_ms();
        // Bytes the UART's interrupt handler received meanwhile.
        while let Some(byte) = rx.pop() {
            state.node.handle_rx(now, byte);
        }
        state.node.poll(now, &mut [&mut sht]);
        while let Some(n) = state.node.poll_transmit(now, &mut state.frame) {
            tx.write_full_blocking(&state.frame[..n]);
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // No debug channel but the probe: reset, and the boot number changes.
    cortex_m::peripheral::SCB::sys_reset()
}
