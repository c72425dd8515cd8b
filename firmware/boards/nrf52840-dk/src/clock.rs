//! Milliseconds since boot from SysTick.

use core::cell::Cell;

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;

/// The nRF52840 core clock.
const CORE_HZ: u32 = 64_000_000;

static MILLIS: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));

/// Starts a 1 kHz SysTick interrupt.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_HZ / 1_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Milliseconds since [`start`].
pub fn now_ms() -> u64 {
    cortex_m::interrupt::free(|cs| MILLIS.borrow(cs).get())
}

#[exception]
fn SysTick() {
    cortex_m::interrupt::free(|cs| {
        let ms = MILLIS.borrow(cs);
        ms.set(ms.get() + 1);
    });
}
