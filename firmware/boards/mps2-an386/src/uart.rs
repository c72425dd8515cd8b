//! CMSDK APB UART0 of the MPS2 boards, polled. The only `unsafe` of the
//! board: volatile accesses to the UART's registers.
#![allow(unsafe_code)]

use core::ptr::{read_volatile, write_volatile};

const BASE: usize = 0x4000_4000;
const DATA: *mut u32 = BASE as *mut u32;
const STATE: *mut u32 = (BASE + 0x04) as *mut u32;
const CTRL: *mut u32 = (BASE + 0x08) as *mut u32;
const BAUDDIV: *mut u32 = (BASE + 0x10) as *mut u32;

const STATE_TX_FULL: u32 = 1 << 0;
const STATE_RX_FULL: u32 = 1 << 1;
const CTRL_TX_RX_ENABLE: u32 = 0b11;

/// UART0; owning it is owning the peripheral (see [`Uart0::take`]).
pub struct Uart0(());

impl Uart0 {
    /// Enables TX and RX. Called once, from `main`.
    pub fn take() -> Self {
        // SAFETY: the addresses are UART0's registers on MPS2 (AN386 TRM);
        // this is their only user.
        unsafe {
            write_volatile(BAUDDIV, 16);
            write_volatile(CTRL, CTRL_TX_RX_ENABLE);
        }
        Self(())
    }

    /// The received byte, if one is waiting.
    pub fn read(&mut self) -> Option<u8> {
        // SAFETY: see `take`.
        unsafe {
            if read_volatile(STATE) & STATE_RX_FULL == 0 {
                return None;
            }
            Some(read_volatile(DATA) as u8)
        }
    }

    /// Sends `bytes`, waiting while the transmitter is full.
    pub fn write_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            // SAFETY: see `take`.
            unsafe {
                while read_volatile(STATE) & STATE_TX_FULL != 0 {}
                write_volatile(DATA, u32::from(b));
            }
        }
    }
}
