//! UARTE0 receive, interrupt-driven into a ring (`ferry_firmware::rx_ring`),
//! so that no byte is lost while the main loop waits on the sensor or the
//! flash. Transmit stays the HAL's blocking EasyDMA write.
//!
//! # How
//! EasyDMA into two one-byte buffers, alternately (nRF52840 Product
//! Specification v1.7, §6.34.4 "Reception", double buffering): the
//! `ENDRX_STARTRX` short starts the next one-byte transfer the moment one
//! ends, so the receiver never stops; the interrupt handler reads each
//! finished byte into the ring (`ENDRX`) and points `RXD.PTR` at the other
//! buffer as soon as a transfer has started (`RXSTARTED`), ready for the
//! next start. The main loop pops bytes from the ring whenever it comes
//! round; the ring (256 bytes, 22 ms of continuous traffic at 115 200 baud)
//! only has to outlast the main loop's longest absence (an SHT4x conversion
//! at high precision, 8.3 ms = 96 bytes).
//!
//! # Worst-case interrupt latency (from datasheet figures, not measured)
//! A byte takes 86.8 µs at 115 200 baud (10 bits). The handler must run
//! within about one byte time of `RXSTARTED`, or the next transfer reuses
//! the buffer of the byte it has not read yet. What can delay it: the
//! SysTick handler and `clock::now_ms`'s critical section (tens of cycles,
//! under 1 µs at 64 MHz); the handler itself (~1 µs); and in the journal
//! build the NVMC, which stalls the CPU while it programs a word (41 µs
//! max, PS §4.3.9 t_WRITE) — under one byte time, so no loss — or erases a
//! page (85 ms max, t_ERASEPAGE): about 980 byte times with the CPU, and
//! this handler, stopped. A downlink frame that arrives during a page erase
//! (one per ~46 reports in the report log, plus the translation layer's
//! collections while a fold runs) is lost beyond the bytes the transfer in
//! progress holds; it fails its CRC at the deframer and the gateway's next
//! ack (or its resend) makes up for it. Errors the peripheral flags
//! (`ERRORSRC`: overrun, framing, break) are cleared; the bytes they spoil
//! fail the frame's CRC, which the link counts.
#![allow(unsafe_code)]

use core::cell::RefCell;
use core::ptr::addr_of_mut;

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::NVIC;
use ferry_firmware::rx_ring::{Consumer, Producer, RxRing};
use nrf52840_hal::pac::{self, Interrupt, UARTE0, interrupt};

/// Bytes the receive ring holds.
pub const RX_RING: usize = 256;

/// The main loop's end of the receive ring.
pub type Rx = Consumer<'static, RX_RING>;

struct RxState {
    producer: Producer<'static, RX_RING>,
    /// Transfers started (`RXSTARTED` seen); the next one uses buffer
    /// `started % 2`.
    started: u32,
    /// Transfers ended (`ENDRX` seen); the next byte is in `ended % 2`.
    ended: u32,
}

static STATE: Mutex<RefCell<Option<RxState>>> = Mutex::new(RefCell::new(None));

/// The two one-byte EasyDMA buffers (RAM: EasyDMA cannot read flash). Only
/// the UARTE writes them and only the handler reads them.
static mut DMA: [u8; 2] = [0; 2];

fn uarte() -> &'static pac::uarte0::RegisterBlock {
    // SAFETY: UARTE0's register block is always mapped. The HAL's `Uarte`
    // owns the peripheral for transmission (TXD registers and TX events);
    // this module touches only the receive registers and events, which the
    // HAL does not use once `start` has run (it never receives).
    unsafe { &*UARTE0::ptr() }
}

/// Starts continuous reception on UARTE0 (configured and enabled by the
/// HAL's `Uarte::new`). `None` if called twice.
pub fn start() -> Option<Rx> {
    let ring = cortex_m::singleton!(: RxRing<RX_RING> = RxRing::new())?;
    let (producer, consumer) = ring.split();
    cortex_m::interrupt::free(|cs| {
        STATE.borrow(cs).replace(Some(RxState {
            producer,
            started: 0,
            ended: 0,
        }))
    });
    let u = uarte();
    let first = addr_of_mut!(DMA) as u32;
    // SAFETY: the pointer is `DMA[0]`, in RAM, for a one-byte transfer;
    // MAXCNT 1 keeps every transfer inside one buffer.
    u.rxd.ptr.write(|w| unsafe { w.ptr().bits(first) });
    u.rxd.maxcnt.write(|w| unsafe { w.maxcnt().bits(1) });
    u.shorts.write(|w| w.endrx_startrx().enabled());
    u.events_rxstarted.reset();
    u.events_endrx.reset();
    u.events_error.reset();
    u.intenset
        .write(|w| w.rxstarted().set().endrx().set().error().set());
    // SAFETY: the handler below only touches `STATE` (through a critical
    // section), the receive registers and `DMA`.
    unsafe { NVIC::unmask(Interrupt::UARTE0_UART0) };
    u.tasks_startrx.write(|w| unsafe { w.bits(1) });
    Some(consumer)
}

#[interrupt]
fn UARTE0_UART0() {
    let u = uarte();
    cortex_m::interrupt::free(|cs| {
        let mut state = STATE.borrow(cs).borrow_mut();
        let Some(s) = state.as_mut() else { return };
        // The byte of the transfer that ended first, then the buffer for
        // the transfer after the one that has just started.
        if u.events_endrx.read().bits() != 0 {
            u.events_endrx.reset();
            if u.rxd.amount.read().amount().bits() == 1 {
                let at = (addr_of_mut!(DMA) as *mut u8).wrapping_add((s.ended % 2) as usize);
                // SAFETY: `at` is one of the two DMA bytes; the transfer
                // that wrote it has ended, and the next one into it starts
                // only after the next RXSTARTED is handled.
                let byte = unsafe { core::ptr::read_volatile(at) };
                s.producer.push(byte);
            }
            s.ended = s.ended.wrapping_add(1);
        }
        if u.events_rxstarted.read().bits() != 0 {
            u.events_rxstarted.reset();
            s.started = s.started.wrapping_add(1);
            let next = (addr_of_mut!(DMA) as *mut u8).wrapping_add((s.started % 2) as usize);
            // SAFETY: see `start`; the other buffer, read already.
            u.rxd.ptr.write(|w| unsafe { w.ptr().bits(next as u32) });
        }
        if u.events_error.read().bits() != 0 {
            u.events_error.reset();
            let bits = u.errorsrc.read().bits();
            // SAFETY: writing back the bits read clears them (PS §6.34.10).
            u.errorsrc.write(|w| unsafe { w.bits(bits) });
        }
    });
}
