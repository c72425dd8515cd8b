//! The journal image's heap: a fixed array in `.bss` (so the size report
//! counts it as RAM) under `embedded-alloc`'s linked-list allocator. redb
//! and the flash translation layer's mapping live here.
#![allow(unsafe_code)]

use core::mem::MaybeUninit;

use embedded_alloc::LlffHeap;

/// Heap size: the emulated board's journal image peaked at 74 KB of its 80
/// KiB with the same journal budget (firmware/README.md, "Sizes"); this one
/// also holds the flash translation layer's mapping tables, and the nRF's
/// 256 KiB of RAM leave room for more.
pub const HEAP_BYTES: usize = 128 * 1024;

#[global_allocator]
static HEAP: LlffHeap = LlffHeap::empty();

/// Hands the heap its memory. Called once, first thing in `main`.
pub fn init() {
    static mut MEMORY: [MaybeUninit<u8>; HEAP_BYTES] = [MaybeUninit::uninit(); HEAP_BYTES];
    // SAFETY: called once before any allocation; `MEMORY` is used by nothing
    // else, and `&raw mut` takes its address without a reference.
    unsafe { HEAP.init((&raw mut MEMORY) as usize, HEAP_BYTES) }
}
