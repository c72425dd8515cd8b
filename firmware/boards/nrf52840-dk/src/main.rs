//! Ferry firmware for the Nordic nRF52840-DK (PCA10056).
//!
//! - **Sensor:** a Sensirion SHT4x breakout on TWIM0, SDA = P0.26 and
//!   SCL = P0.27 (the Arduino header's SDA/SCL), 100 kHz, with pull-ups.
//! - **Link:** UARTE0 at 115 200 baud 8N1 on the on-board J-Link's virtual
//!   COM port (TXD = P0.06, RXD = P0.08): the gateway opens `/dev/ttyACM0`.
//! - **Identity:** the factory-programmed 64-bit FICR DEVICEID, shown as 16
//!   hex digits; nothing to provision.
//! - **Boot number:** 32 bits from the hardware RNG, so `(boot, seq)` is
//!   unique across boots without writing flash.
//! - **Time:** SysTick at 1 kHz from the 64 MHz core clock (HFXO).
//!
//! Flash and run with probe-rs (firmware/README.md):
//! `CARGO_TARGET_THUMBV7EM_NONE_EABIHF_RUNNER="probe-rs run --chip nRF52840_xxAA"
//!  cargo run -p ferry-board-nrf52840-dk --target thumbv7em-none-eabihf --profile firmware`
//!
//! The binary exists only for the MCU (`target_os = "none"`); on the host it
//! is an explanation, so that `cargo test --workspace` and
//! `cargo clippy --workspace --all-targets` pass over it.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
mod board;
#[cfg(target_os = "none")]
mod clock;
#[cfg(target_os = "none")]
mod firmware;
#[cfg(target_os = "none")]
mod uart;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "ferry-nrf52840-dk runs on the MCU: build it with scripts/firmware.sh build \
         (cargo build -p {} --target thumbv7em-none-eabihf --profile firmware)",
        env!("CARGO_PKG_NAME")
    );
    std::process::exit(2);
}
