//! The journal image's heap: a fixed array in `.bss` (so the size report
//! counts it as RAM) under `embedded-alloc`'s linked-list allocator, with a
//! high-water mark of the bytes in use.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};

use embedded_alloc::LlffHeap;

/// Heap size: with the image's statics and stack, within the 128 KiB RAM
/// budget (README "Sizes").
pub const HEAP_BYTES: usize = 80 * 1024;

#[global_allocator]
static HEAP: TrackedHeap = TrackedHeap {
    heap: LlffHeap::empty(),
    used: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

struct TrackedHeap {
    heap: LlffHeap,
    used: AtomicUsize,
    peak: AtomicUsize,
}

/// Hands the heap its memory. Called once, first thing in `main`.
pub fn init() {
    static mut MEMORY: [MaybeUninit<u8>; HEAP_BYTES] = [MaybeUninit::uninit(); HEAP_BYTES];
    // SAFETY: called once before any allocation; `MEMORY` is used by nothing
    // else, and `&raw mut` takes its address without a reference.
    unsafe { HEAP.heap.init((&raw mut MEMORY) as usize, HEAP_BYTES) }
}

/// Bytes allocated now.
pub fn used() -> usize {
    HEAP.used.load(Ordering::Relaxed)
}

/// Most bytes ever allocated at once.
pub fn peak() -> usize {
    HEAP.peak.load(Ordering::Relaxed)
}

// SAFETY: every call is passed to the linked-list heap unchanged; the
// counters only observe sizes.
unsafe impl GlobalAlloc for TrackedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.heap.alloc(layout) };
        if !p.is_null() {
            let now = self.used.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.heap.dealloc(ptr, layout) };
        self.used.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}
