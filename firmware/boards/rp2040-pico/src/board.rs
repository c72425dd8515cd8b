//! The Pico's wiring: clocks, the second-stage bootloader, UART0, the SHT4x
//! on I2C0, the flash chip's unique id and a random boot number.
#![allow(unsafe_code)]

use ferry_firmware::drivers::sht4x::Sht4x;
use ferry_proto::link::{DeviceId, LinkConfig};
use rp2040_hal::clocks::{Clock, init_clocks_and_plls};
use rp2040_hal::fugit::RateExtU32;
use rp2040_hal::gpio::bank0::{Gpio0, Gpio1, Gpio4, Gpio5};
use rp2040_hal::gpio::{FunctionI2C, FunctionUart, Pin, Pins, PullDown, PullUp};
use rp2040_hal::pac::{self, I2C0, UART0};
use rp2040_hal::rosc::RingOscillator;
use rp2040_hal::uart::{DataBits, StopBits, UartConfig, UartPeripheral};
use rp2040_hal::{I2C, Sio, Timer, Watchdog};

use crate::uart;

/// The second-stage bootloader for the Pico's W25Q16JV, in the first 256
/// bytes of flash (memory.x).
#[unsafe(link_section = ".boot2")]
#[used]
pub static BOOT2_FIRMWARE: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

/// The Pico's crystal.
const XOSC_HZ: u32 = 12_000_000;

/// Sampling until the gateway says otherwise: 1 s samples, 10 s windows.
pub const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 1_000,
    window_ms: 10_000,
};

/// UART0 on GP0 (TX) and GP1 (RX).
pub type UartPins = (
    Pin<Gpio0, FunctionUart, PullDown>,
    Pin<Gpio1, FunctionUart, PullDown>,
);

/// I2C0 on GP4 (SDA) and GP5 (SCL).
type I2cBus = I2C<
    I2C0,
    (
        Pin<Gpio4, FunctionI2C, PullUp>,
        Pin<Gpio5, FunctionI2C, PullUp>,
    ),
>;

/// The SHT4x on I2C0, with the microsecond timer for its conversion delays.
pub type Sensor = Sht4x<I2cBus, Timer>;

/// The peripherals the firmware drives.
pub struct Board {
    /// Link to the gateway, transmit half.
    pub tx: rp2040_hal::uart::Writer<UART0, UartPins>,
    /// Link to the gateway, receive: bytes the UART's interrupt handler put
    /// in the ring.
    pub rx: uart::Rx,
    /// The temperature and humidity sensor.
    pub sht: Sensor,
    /// The flash chip's unique id.
    pub device_id: DeviceId,
    /// 32 random bits.
    pub random: u32,
    /// The microsecond timer, for the millisecond clock.
    pub timer: Timer,
}

/// Takes the peripherals and wires the board; `None` if they were taken
/// or the clocks did not start.
pub fn take() -> Option<Board> {
    // First, while nothing else runs: the flash chip's id needs the flash
    // out of execute-in-place mode for a moment (the code doing it runs
    // from RAM).
    let device_id = unique_id();
    let mut p = pac::Peripherals::take()?;
    let mut watchdog = Watchdog::new(p.WATCHDOG);
    let clocks = init_clocks_and_plls(
        XOSC_HZ,
        p.XOSC,
        p.CLOCKS,
        p.PLL_SYS,
        p.PLL_USB,
        &mut p.RESETS,
        &mut watchdog,
    )
    .ok()?;
    let sio = Sio::new(p.SIO);
    let pins = Pins::new(p.IO_BANK0, p.PADS_BANK0, sio.gpio_bank0, &mut p.RESETS);

    let uart_pins: UartPins = (pins.gpio0.into_function(), pins.gpio1.into_function());
    let mut uart = UartPeripheral::new(p.UART0, uart_pins, &mut p.RESETS)
        .enable(
            UartConfig::new(115_200.Hz(), DataBits::Eight, None, StopBits::One),
            clocks.peripheral_clock.freq(),
        )
        .ok()?;
    uart.enable_rx_interrupt();
    let (reader, tx) = uart.split();
    let rx = uart::start(reader)?;

    let i2c: I2cBus = I2C::i2c0(
        p.I2C0,
        pins.gpio4.reconfigure(),
        pins.gpio5.reconfigure(),
        100.kHz(),
        &mut p.RESETS,
        &clocks.system_clock,
    );
    let timer = Timer::new(p.TIMER, &mut p.RESETS, &clocks);
    let rosc = RingOscillator::new(p.ROSC).initialize();
    let random = (0..32).fold(0u32, |r, _| r << 1 | u32::from(rosc.get_random_bit()));
    Some(Board {
        tx,
        rx,
        sht: Sht4x::new(i2c, timer),
        device_id,
        random,
        timer,
    })
}

/// The flash chip's 64-bit unique id (command 0x4B), big-endian as read.
fn unique_id() -> DeviceId {
    let mut id = [0u8; 8];
    cortex_m::interrupt::free(|_| {
        // SAFETY: interrupts are off, core 1 is still parked in the boot
        // ROM and no DMA runs yet, so nothing touches the flash while it is
        // out of execute-in-place mode; `true` restores it with the boot2
        // configuration this image was started with.
        unsafe { rp2040_flash::flash::flash_unique_id(&mut id, true) }
    });
    DeviceId::from_bytes(&id).unwrap_or_default()
}

/// Stops here (nothing to report to: the link is not up).
pub fn halt() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}
