//! The nRF51's UART (not the UARTE: the nRF51 has no EasyDMA), polled, on
//! the micro:bit's USB serial pins (TX P0.24, RX P0.25); QEMU routes it to
//! `-serial`. The same API as the MPS2 board's `Uart0`, for the shared
//! `firmware.rs`. The only `unsafe` of the board: volatile register
//! accesses (nRF51 Series Reference Manual v3.0, §29 UART).
#![allow(unsafe_code)]

use core::ptr::{read_volatile, write_volatile};

const BASE: usize = 0x4000_2000;
const TASKS_STARTRX: *mut u32 = BASE as *mut u32;
const TASKS_STARTTX: *mut u32 = (BASE + 0x008) as *mut u32;
const EVENTS_RXDRDY: *mut u32 = (BASE + 0x108) as *mut u32;
const EVENTS_TXDRDY: *mut u32 = (BASE + 0x11C) as *mut u32;
const ENABLE: *mut u32 = (BASE + 0x500) as *mut u32;
const PSELTXD: *mut u32 = (BASE + 0x50C) as *mut u32;
const PSELRXD: *mut u32 = (BASE + 0x514) as *mut u32;
const RXD: *mut u32 = (BASE + 0x518) as *mut u32;
const TXD: *mut u32 = (BASE + 0x51C) as *mut u32;
const BAUDRATE: *mut u32 = (BASE + 0x524) as *mut u32;

const ENABLE_UART: u32 = 4;
const BAUD_115200: u32 = 0x01D7_E000;
const PIN_TX: u32 = 24;
const PIN_RX: u32 = 25;

/// The UART; owning it is owning the peripheral (see [`Uart0::take`]).
pub struct Uart0(());

impl Uart0 {
    /// Configures 115 200 8N1 and starts both directions. Called once.
    pub fn take() -> Self {
        // SAFETY: the addresses are the UART's registers on the nRF51
        // (Reference Manual, §29.10); this is their only user.
        unsafe {
            write_volatile(PSELTXD, PIN_TX);
            write_volatile(PSELRXD, PIN_RX);
            write_volatile(BAUDRATE, BAUD_115200);
            write_volatile(ENABLE, ENABLE_UART);
            write_volatile(EVENTS_RXDRDY, 0);
            write_volatile(EVENTS_TXDRDY, 0);
            write_volatile(TASKS_STARTRX, 1);
            write_volatile(TASKS_STARTTX, 1);
        }
        Self(())
    }

    /// The received byte, if one is waiting.
    pub fn read(&mut self) -> Option<u8> {
        // SAFETY: see `take`. RXDRDY is cleared before RXD is read, so a
        // byte arriving after the read raises it again (§29.5).
        unsafe {
            if read_volatile(EVENTS_RXDRDY) == 0 {
                return None;
            }
            write_volatile(EVENTS_RXDRDY, 0);
            Some(read_volatile(RXD) as u8)
        }
    }

    /// Sends `bytes`, one at a time, each after the previous one left.
    pub fn write_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // SAFETY: see `take`.
            unsafe {
                write_volatile(TXD, u32::from(b));
                while read_volatile(EVENTS_TXDRDY) == 0 {}
                write_volatile(EVENTS_TXDRDY, 0);
            }
        }
    }
}
