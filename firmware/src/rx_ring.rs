//! A byte ring between a UART's receive interrupt (the producer) and the
//! main loop (the consumer), so that no byte is lost while the main loop is
//! busy elsewhere (an SHT4x conversion waits 8.3 ms; at 115 200 baud that
//! is 96 bytes, more than any UART's FIFO holds).
//!
//! ```text
//!  UART IRQ ─▶ Producer::push ─▶ [ N bytes ] ─▶ Consumer::pop ─▶ node.handle_rx
//!                    └─ full: the byte is dropped and counted (`overflows`)
//! ```
//!
//! Lock-free and single-producer/single-consumer, with **atomic loads and
//! stores only** (no compare-and-swap, no read-modify-write), so it builds
//! and is correct on ARMv6-M (Cortex-M0/M0+: `thumbv6m-none-eabi`), which
//! has no such instructions, as on ARMv7-M. The bytes are `AtomicU8` cells,
//! so the module has no `unsafe`.
//!
//! **Invariants:** `head` (bytes pushed, wrapping) is written only by the
//! producer and `tail` (bytes popped) only by the consumer; `head − tail`
//! (wrapping) is in `0..=N`; a byte is written to its cell before `head`
//! moves past it (release) and read before `tail` moves past it, so neither
//! side ever sees the other's half-done work; bytes come out in the order
//! they went in; a byte pushed into a full ring is counted in `overflows`
//! (written only by the producer) and nothing already in the ring is lost.
//! [`RxRing::split`] hands out one producer and one consumer, borrowing the
//! ring mutably, so there can be no second one of either.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};

/// A ring of `N` bytes (a power of two); see the module docs.
#[derive(Debug)]
pub struct RxRing<const N: usize> {
    cells: [AtomicU8; N],
    head: AtomicUsize,
    tail: AtomicUsize,
    overflows: AtomicU32,
}

impl<const N: usize> Default for RxRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RxRing<N> {
    /// An empty ring (usable in a `static` or `cortex_m::singleton!`).
    pub const fn new() -> Self {
        Self::starting_at(0)
    }

    /// An empty ring whose position counters start at `position`: tests use
    /// it to cross the counters' wrap-around; anything else wants
    /// [`RxRing::new`].
    #[doc(hidden)]
    pub const fn starting_at(position: usize) -> Self {
        // A power of two: `position % N` stays continuous where the
        // counters wrap around.
        const { assert!(N.is_power_of_two(), "a ring's size is a power of two") };
        Self {
            cells: [const { AtomicU8::new(0) }; N],
            head: AtomicUsize::new(position),
            tail: AtomicUsize::new(position),
            overflows: AtomicU32::new(0),
        }
    }

    /// The one producer and the one consumer of this ring.
    pub fn split(&mut self) -> (Producer<'_, N>, Consumer<'_, N>) {
        let ring: &Self = self;
        (Producer { ring }, Consumer { ring })
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        let head = self.head.load(Ordering::Acquire);
        head.wrapping_sub(self.tail.load(Ordering::Acquire))
    }

    /// Whether no byte is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes dropped because the ring was full.
    pub fn overflows(&self) -> u32 {
        self.overflows.load(Ordering::Relaxed)
    }
}

/// The receive interrupt's end of an [`RxRing`].
#[derive(Debug)]
pub struct Producer<'a, const N: usize> {
    ring: &'a RxRing<N>,
}

impl<const N: usize> Producer<'_, N> {
    /// Appends `byte`; `false` (and counted) if the ring is full. Never
    /// waits: it runs in an interrupt handler.
    pub fn push(&mut self, byte: u8) -> bool {
        let ring = self.ring;
        let head = ring.head.load(Ordering::Relaxed);
        let tail = ring.tail.load(Ordering::Acquire);
        if head.wrapping_sub(tail) >= N {
            // Only the producer writes `overflows`: a load and a store are
            // an increment here, with no read-modify-write instruction.
            let n = ring.overflows.load(Ordering::Relaxed);
            ring.overflows.store(n.wrapping_add(1), Ordering::Relaxed);
            return false;
        }
        ring.cells[head % N].store(byte, Ordering::Relaxed);
        ring.head.store(head.wrapping_add(1), Ordering::Release);
        true
    }

    /// The ring.
    pub fn ring(&self) -> &RxRing<N> {
        self.ring
    }
}

/// The main loop's end of an [`RxRing`].
#[derive(Debug)]
pub struct Consumer<'a, const N: usize> {
    ring: &'a RxRing<N>,
}

impl<const N: usize> Consumer<'_, N> {
    /// The oldest byte, if any.
    pub fn pop(&mut self) -> Option<u8> {
        let ring = self.ring;
        let tail = ring.tail.load(Ordering::Relaxed);
        let head = ring.head.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let byte = ring.cells[tail % N].load(Ordering::Relaxed);
        ring.tail.store(tail.wrapping_add(1), Ordering::Release);
        Some(byte)
    }

    /// The ring.
    pub fn ring(&self) -> &RxRing<N> {
        self.ring
    }
}
