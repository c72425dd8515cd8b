//! Milliseconds since boot, and a `DelayNs` on top of it. SysTick
//! interrupts every millisecond wake the main loop; the time itself comes
//! from the including crate's free-running counter (`crate::counter`) where
//! it has one, else from counting those interrupts. Shared with the
//! micro:bit board (`#[path]`): the core clock is the including crate's
//! `CORE_HZ`.

use core::cell::Cell;

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;

use crate::CORE_HZ;

static MILLIS: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));
/// The counter's last reading and the ticks counted up to it.
static COUNTER: Mutex<Cell<(u32, u64)>> = Mutex::new(Cell::new((0, 0)));

/// Starts a 1 kHz SysTick interrupt.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_HZ / 1_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
    crate::counter::start();
    let first = crate::counter::read().unwrap_or(0);
    cortex_m::interrupt::free(|cs| COUNTER.borrow(cs).set((first, 0)));
}

/// Milliseconds since [`start`].
pub fn now_ms() -> u64 {
    cortex_m::interrupt::free(|cs| match crate::counter::read() {
        Some(now) => {
            let counter = COUNTER.borrow(cs);
            let (last, ticks) = counter.get();
            let ticks = ticks + u64::from(now.wrapping_sub(last));
            counter.set((now, ticks));
            ticks / u64::from(crate::counter::TICKS_PER_MS)
        }
        None => MILLIS.borrow(cs).get(),
    })
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
