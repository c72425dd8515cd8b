//! Milliseconds since boot from SysTick, and a `DelayNs` on top of it.
//! Shared with the micro:bit board (`#[path]`): the core clock is the
//! including crate's `CORE_HZ`.

use core::cell::Cell;

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;

use crate::CORE_HZ;

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

/// Sleeps (WFI) for at least the requested time, at 1 ms resolution.
pub struct TickDelay;

impl embedded_hal::delay::DelayNs for TickDelay {
    fn delay_ns(&mut self, ns: u32) {
        // +1: the current millisecond may be almost over.
        let until = now_ms() + u64::from(ns.div_ceil(1_000_000)) + 1;
        while now_ms() < until {
            cortex_m::asm::wfi();
        }
    }
}
