//! The host side of the emulator: command line and time, over semihosting.
#![allow(unsafe_code)]

use cortex_m_semihosting::{nr, syscall, syscall1};

/// The command line QEMU was given with `-semihosting-config arg=...`,
/// written into `buf`; empty if there is none or it does not fit.
pub fn cmdline(buf: &mut [u8]) -> &str {
    buf.fill(0);
    let block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: SYS_GET_CMDLINE writes at most `buf.len()` bytes (NUL
    // included) into `buf` and its length into `block[1]`; both outlive the call.
    let status = unsafe { syscall(nr::GET_CMDLINE, &block) };
    if status != 0 {
        return "";
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(0);
    core::str::from_utf8(&buf[..len]).unwrap_or("")
}

/// Host time in seconds since 1970 (`SYS_TIME`).
pub fn unix_time() -> u32 {
    // SAFETY: SYS_TIME takes no argument block.
    unsafe { syscall1(nr::TIME, 0) as u32 }
}

/// Milliseconds QEMU has run (`SYS_ELAPSED` over `SYS_TICKFREQ`), `None`
/// if the host does not say. (The journal image's; the ring images share
/// this file.)
#[allow(dead_code)]
pub fn elapsed_ms() -> Option<u64> {
    let mut ticks = [0usize; 2];
    // SAFETY: SYS_ELAPSED writes the 64-bit tick count into the two words
    // at the address in r1: `ticks`, which lives across the call.
    let status = unsafe { syscall1(nr::ELAPSED, ticks.as_mut_ptr() as usize) as isize };
    // SAFETY: SYS_TICKFREQ takes no argument block.
    let freq = unsafe { syscall1(nr::TICKFREQ, 0) as isize };
    if status != 0 || freq <= 0 {
        return None;
    }
    let ticks = (ticks[1] as u64) << 32 | ticks[0] as u64;
    Some(ticks / (freq as u64 / 1_000).max(1))
}
