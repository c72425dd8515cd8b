//! The journal's flash region: the upper 512 KiB of the internal flash
//! (`journal.x`, symbols `__journal_start` / `__journal_end`; the image is
//! asserted to end below it), handed to the HAL's NVMC driver (an
//! `embedded-storage` `NorFlash`: 4 KiB erase pages, 4-byte words, and it
//! waits for the NVMC's READY flag before returning from a write or erase,
//! as the translation layer requires).
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicBool, Ordering};

use nrf52840_hal::nvmc::Nvmc;
use nrf52840_hal::pac::NVMC;

unsafe extern "C" {
    static mut __journal_start: u8;
    static __journal_end: u8;
}

/// NVMC pages of 4 KiB in the region.
pub const SECTORS: u32 = 128;

/// The NVMC over the journal region, once; `None` on a second call.
pub fn take(nvmc: NVMC) -> Option<Nvmc<NVMC>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::Relaxed) {
        return None;
    }
    // Only the symbols' addresses are taken, never their values.
    let start = &raw mut __journal_start;
    let len = (&raw const __journal_end) as usize - start as usize;
    if len != SECTORS as usize * 4096 {
        return None;
    }
    // SAFETY: [start, start + len) is flash above the image's end (journal.x
    // asserts it), mapped for reading; `TAKEN` makes
    // this the only reference to it, and only the NVMC driver writes it.
    let region = unsafe { core::slice::from_raw_parts_mut(start, len) };
    Some(Nvmc::new(nvmc, region))
}
