//! The DK's wiring, shared by both images: UARTE0 on the J-Link VCOM
//! (receiving through `uart`'s interrupt-driven ring), the SHT4x on TWIM0,
//! the chip's identity and a random number.

use cortex_m::peripheral::SYST;
use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_proto::link::{DeviceId, LinkConfig};
use nrf52840_hal::gpio::{Level, p0};
use nrf52840_hal::pac::{self, NVMC, TIMER0, TWIM0, UARTE0};
use nrf52840_hal::twim::{self, Twim};
use nrf52840_hal::uarte::{self, Baudrate, Parity, Uarte};
use nrf52840_hal::{Rng, Timer, clocks::Clocks};

use crate::uart;

/// Sampling until the gateway says otherwise: 1 s samples, 10 s windows.
pub const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 1_000,
    window_ms: 10_000,
};

/// The SHT4x on TWIM0, with TIMER0 for its conversion delays.
pub type Sensor = Sht4x<Twim<TWIM0>, Timer<TIMER0>>;

/// The peripherals the firmware drives.
pub struct Board {
    /// Link to the gateway, transmit (blocking EasyDMA writes).
    pub tx: Uarte<UARTE0>,
    /// Link to the gateway, receive: bytes the UARTE's interrupt handler
    /// put in the ring.
    pub rx: uart::Rx,
    /// The temperature and humidity sensor.
    pub sht: Sensor,
    /// FICR DEVICEID.
    pub device_id: DeviceId,
    /// 32 bits from the hardware RNG.
    pub random: u32,
    /// SysTick, for the millisecond clock.
    pub syst: SYST,
}

/// Takes the peripherals and wires the board; `None` if they were taken.
/// The flash controller comes apart: only the journal build uses it.
pub fn take() -> Option<(Board, NVMC)> {
    let p = pac::Peripherals::take()?;
    let cp = cortex_m::Peripherals::take()?;
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
    let rx = uart::start()?;

    let i2c = Twim::new(
        p.TWIM0,
        twim::Pins {
            scl: port0.p0_27.into_floating_input().degrade(),
            sda: port0.p0_26.into_floating_input().degrade(),
        },
        twim::Frequency::K100,
    );
    let board = Board {
        tx: uarte,
        rx,
        sht: Sht4x::new(i2c, Timer::new(p.TIMER0)),
        device_id: unique_id(&p.FICR),
        random: Rng::new(p.RNG).random_u32(),
        syst: cp.SYST,
    };
    Some((board, p.NVMC))
}

/// FICR DEVICEID: 64 bits programmed at the factory, unique per chip,
/// as `DEVICEID[1]:DEVICEID[0]` big-endian (how nrfjprog prints it).
fn unique_id(ficr: &pac::FICR) -> DeviceId {
    let hi = ficr.deviceid[1].read().bits();
    let lo = ficr.deviceid[0].read().bits();
    let id = (u64::from(hi) << 32 | u64::from(lo)).to_be_bytes();
    DeviceId::from_bytes(&id).unwrap_or_default()
}

/// Stops here (nothing to report to: the link is not up).
pub fn halt() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}
