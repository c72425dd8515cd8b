//! UART0 receive, interrupt-driven into a ring (`ferry_firmware::rx_ring`),
//! so that no byte is lost while the main loop waits on the sensor.
//!
//! The PL011 raises its interrupt when its 32-byte receive FIFO reaches the
//! watermark (half full) or holds bytes that have waited 32 bit periods
//! (the receive timeout); the handler moves everything in the FIFO into the
//! ring. So the handler may be late by up to 16 byte times (1.4 ms at
//! 115 200 baud) before the FIFO overflows; nothing in this firmware masks
//! interrupts for longer than a few microseconds. An overrun the UART
//! reports is cleared; its bytes fail the frame's CRC, which the link
//! counts, and the link resends.
#![allow(unsafe_code)]

use core::cell::RefCell;

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::NVIC;
use ferry_firmware::rx_ring::{Consumer, Producer, RxRing};
use rp2040_hal::pac::{Interrupt, UART0, interrupt};
use rp2040_hal::uart::Reader;

use crate::board::UartPins;

/// Bytes the receive ring holds.
pub const RX_RING: usize = 256;

/// The main loop's end of the receive ring.
pub type Rx = Consumer<'static, RX_RING>;

struct RxState {
    reader: Reader<UART0, UartPins>,
    producer: Producer<'static, RX_RING>,
}

static STATE: Mutex<RefCell<Option<RxState>>> = Mutex::new(RefCell::new(None));

/// Hands the receive half (its interrupt enabled) to the handler and
/// unmasks UART0's interrupt. `None` if called twice.
pub fn start(reader: Reader<UART0, UartPins>) -> Option<Rx> {
    let ring = cortex_m::singleton!(: RxRing<RX_RING> = RxRing::new())?;
    let (producer, consumer) = ring.split();
    cortex_m::interrupt::free(|cs| STATE.borrow(cs).replace(Some(RxState { reader, producer })));
    // SAFETY: the handler only touches `STATE`, through a critical section.
    unsafe { NVIC::unmask(Interrupt::UART0_IRQ) };
    Some(consumer)
}

#[interrupt]
fn UART0_IRQ() {
    cortex_m::interrupt::free(|cs| {
        let mut state = STATE.borrow(cs).borrow_mut();
        let Some(s) = state.as_mut() else { return };
        let mut buf = [0u8; 32];
        // Until the FIFO is empty (WouldBlock), which also clears the
        // interrupt; an overrun error is cleared by the read that reports it.
        while let Ok(n) = s.reader.read_raw(&mut buf) {
            for &b in &buf[..n] {
                s.producer.push(b);
            }
        }
    });
}
