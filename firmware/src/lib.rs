//! Ferry's sensor node: drivers, sampler, on-device windows and the device
//! side of the serial link, for microcontrollers without a heap.
//!
//! # Layout
//! - [`drivers`]: embedded-hal 1.0 drivers for real parts (Sensirion SHT4x,
//!   TI TMP102), one module each, no knowledge of anything else here;
//! - [`sensor`]: the [`Sensor`](sensor::Sensor) trait the sampler reads,
//!   implemented for each driver;
//! - [`window`]: tumbling windows (count, sum, min, max, first, last);
//! - [`sampler`]: reads each sensor on its own period into the windows;
//! - [`link`]: hello, reports with sequence numbers, the retry ring, acks,
//!   heartbeats, sans-IO with explicit instants;
//! - [`node`]: sampler + link + deframer, what a board's main loop drives;
//! - [`rx_ring`]: the byte ring between a UART's receive interrupt and the
//!   main loop (lock-free, atomic loads and stores only: ARMv6-M too);
//! - `journal_node` (feature `journal`): sampler + the agent's redb journal
//!   + the link, for parts with the flash and RAM for redb;
//! - [`emulated`]: the emulated board's command-line settings;
//! - [`sim`]: the emulated board's simulated sensors and their deterministic
//!   waveforms, which tests use to predict windows exactly;
//! - `storage` (feature `nor-flash`): redb on NOR flash — a flash
//!   translation layer behind redb's `StorageBackend`, and a simulated NOR
//!   flash for tests.
//!
//! **Architecture invariant:** nothing here needs `std`, a clock or a
//! peripheral, and nothing but `storage` (feature `nor-flash`) and
//! `journal_node` (feature `journal`), which redb needs, needs an allocator.
//! Time is a `u64` of milliseconds passed in by the caller; bytes come in
//! and frames go out through plain buffers; flash comes in as an
//! `embedded-storage` `NorFlash`. The board crates under `firmware/boards/`
//! are the only code that touches hardware.
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(feature = "nor-flash", feature = "journal"))]
extern crate alloc;

pub mod drivers;
pub mod emulated;
#[cfg(feature = "journal")]
pub mod journal_node;
pub mod link;
pub mod node;
pub mod rx_ring;
pub mod sampler;
pub mod sensor;
pub mod sim;
#[cfg(feature = "nor-flash")]
pub mod storage;
pub mod window;
