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

/// The stack's high-water mark: RAM between the end of the statics and the
/// stack is painted at start-up, and [`stack_peak`] finds the deepest word
/// the stack has overwritten since. (cortex-m-rt gives the stack the RAM
/// above `__sheap`, growing down from `_stack_start`.)
pub mod stack {
    const PAINT: u32 = 0x5A5A_A5A5;

    unsafe extern "C" {
        static mut __sheap: u32;
        static _stack_start: u32;
    }

    fn bounds() -> (usize, usize) {
        // Only the symbols' addresses are taken, never their values.
        (
            (&raw const __sheap) as usize,
            (&raw const _stack_start) as usize,
        )
    }

    /// Paints the free stack below the current frame (less a margin).
    pub fn paint() {
        let (low, _) = bounds();
        let sp = cortex_m::register::msp::read() as usize;
        let mut at = low;
        while at + 4 <= sp.saturating_sub(256) {
            // SAFETY: [low, sp - 256) is RAM that nothing uses yet: above the
            // statics and the heap (in .bss), below the live stack.
            unsafe { core::ptr::write_volatile(at as *mut u32, PAINT) };
            at += 4;
        }
    }

    /// Most bytes of stack used since [`paint`].
    pub fn peak() -> usize {
        let (low, high) = bounds();
        let mut at = low;
        // SAFETY: reads of RAM words in [low, high), which is mapped; the
        // painted part is used by nobody else.
        while at < high && unsafe { core::ptr::read_volatile(at as *const u32) } == PAINT {
            at += 4;
        }
        high - at
    }
}
