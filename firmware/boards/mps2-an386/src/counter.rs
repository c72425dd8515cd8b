//! The MPS2's free-running time base: CMSDK APB timer 0 counting down
//! from `u32::MAX` at the 25 MHz peripheral clock (wrapping every ~172 s).
//!
//! `clock::now_ms` reads it instead of counting SysTick interrupts: an
//! interrupt that is late by more than a period (interrupts masked, or —
//! under QEMU on a loaded host — the emulated CPU not scheduled for a few
//! milliseconds) loses a tick for good, and the device's clock falls
//! behind true time, which moves every window it places after its sync.
//! A counter read is exact however late it is read, as long as it is read
//! once per wrap (the main loop reads it every millisecond).
#![allow(unsafe_code)]

/// CMSDK APB timer 0 (MPS2 AN385/AN386 memory map).
const TIMER0: usize = 0x4000_0000;
const CTRL: *mut u32 = TIMER0 as *mut u32;
const VALUE: *mut u32 = (TIMER0 + 0x04) as *mut u32;
const RELOAD: *mut u32 = (TIMER0 + 0x08) as *mut u32;

/// Counter ticks per millisecond (the peripheral clock is the core's).
pub const TICKS_PER_MS: u32 = crate::CORE_HZ / 1_000;

/// Starts the counter from zero.
pub fn start() {
    // SAFETY: TIMER0's registers on this board, used by nothing else;
    // volatile 32-bit accesses as the CMSDK timer requires.
    unsafe {
        CTRL.write_volatile(0);
        RELOAD.write_volatile(u32::MAX);
        VALUE.write_volatile(u32::MAX);
        CTRL.write_volatile(1); // enable, no interrupt, internal clock
    }
}

/// Ticks since [`start`], modulo 2³².
pub fn read() -> Option<u32> {
    // SAFETY: as in `start`; a read has no side effect.
    Some(u32::MAX - unsafe { VALUE.read_volatile() })
}
