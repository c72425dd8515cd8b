//! The firmware proper: entry point, main loop, panic handler.

use crate::clock;
use cortex_m_rt::entry;
use embedded_io::{Read as _, ReadReady as _, Write as _};
use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_firmware::link::{LinkTimers, TX_BUFFER};
use ferry_firmware::node::Node;
use ferry_proto::link::{DeviceId, LinkConfig};
use nrf52840_hal::clocks::Clocks;
use nrf52840_hal::gpio::{Level, p0};
use nrf52840_hal::pac;
use nrf52840_hal::twim::{self, Twim};
use nrf52840_hal::uarte::{self, Baudrate, Parity, Uarte};
use nrf52840_hal::{Rng, Timer};

/// Reports kept while the gateway is away: ten minutes of 10 s windows.
const RING: usize = 64;
/// Windows per report: the SHT4x has two channels.
const WINDOWS: usize = 2;
/// Sampling until the gateway says otherwise: 1 s samples, 10 s windows.
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 1_000,
    window_ms: 10_000,
};

struct State {
    node: Node<RING, WINDOWS>,
    frame: [u8; TX_BUFFER],
}

#[entry]
fn main() -> ! {
    let (Some(p), Some(cp)) = (pac::Peripherals::take(), cortex_m::Peripherals::take()) else {
        halt()
    };
    let _clocks = Clocks::new(p.CLOCK).enable_ext_hfosc();
    let port0 = p0::Parts::new(p.P0);

    let uarte = Uarte::new(
        p.UARTE0,
        uarte::Pins {
            txd: port0.p0_06.into_push_pull_output(Level::High).degrade(),
            rxd: port0.p0_08.into_floating_input().degrade(),
            cts: None,
            rts: None,
        },
        Parity::EXCLUDED,
        Baudrate::BAUD115200,
    );
    let Some(dma_tx) = cortex_m::singleton!(: [u8; 64] = [0; 64]) else {
        halt()
    };
    let Some(dma_rx) = cortex_m::singleton!(: [u8; 1] = [0; 1]) else {
        halt()
    };
    let Ok((mut tx, mut rx)) = uarte.split(dma_tx, dma_rx) else {
        halt()
    };

    let i2c = Twim::new(
        p.TWIM0,
        twim::Pins {
            scl: port0.p0_27.into_floating_input().degrade(),
            sda: port0.p0_26.into_floating_input().degrade(),
        },
        twim::Frequency::K100,
    );
    let mut sht = Sht4x::new(i2c, Timer::new(p.TIMER0));

    let device_id = unique_id(&p.FICR);
    let boot = Rng::new(p.RNG).random_u32();
    clock::start(cp.SYST);

    let Ok(node) = Node::new(
        0,
        device_id,
        boot,
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
        // One byte per DMA transfer; the UARTE's RX FIFO covers the gaps.
        while rx.read_ready().unwrap_or(false) {
            let mut byte = [0u8; 1];
            if matches!(rx.read(&mut byte), Ok(1)) {
                state.node.handle_rx(now, byte[0]);
            }
        }
        state.node.poll(now, &mut [&mut sht]);
        while let Some(n) = state.node.poll_transmit(now, &mut state.frame) {
            // A failed write loses the frame; the link resends reports.
            let _ = tx.write_all(&state.frame[..n]).and_then(|()| tx.flush());
        }
    }
}

/// FICR DEVICEID: 64 bits programmed at the factory, unique per chip,
/// as `DEVICEID[1]:DEVICEID[0]` big-endian (how nrfjprog prints it).
fn unique_id(ficr: &pac::FICR) -> DeviceId {
    let hi = ficr.deviceid[1].read().bits();
    let lo = ficr.deviceid[0].read().bits();
    let id = (u64::from(hi) << 32 | u64::from(lo)).to_be_bytes();
    DeviceId::from_bytes(&id).unwrap_or_default()
}

fn halt() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // No debug channel but the probe: reset, and the boot number changes.
    cortex_m::peripheral::SCB::sys_reset()
}
