//! No free-running counter wired up on this board: `clock::now_ms` counts
//! SysTick interrupts (a tick lost to a late interrupt is lost; the M4
//! board reads a hardware counter instead).

/// Unused without a counter.
pub const TICKS_PER_MS: u32 = 1;

/// Nothing to start.
pub fn start() {}

/// No counter: SysTick counts milliseconds.
pub fn read() -> Option<u32> {
    None
}
