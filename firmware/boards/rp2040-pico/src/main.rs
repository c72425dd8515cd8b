//! Ferry firmware for the Raspberry Pi Pico (RP2040: Cortex-M0+, ARMv6-M,
//! `thumbv6m-none-eabi`), the RAM-ring build.
//!
//! - **Sensor:** a Sensirion SHT4x breakout on I2C0, SDA = GP4 (pin 6) and
//!   SCL = GP5 (pin 7), 100 kHz (the pins' internal pull-ups are on; a
//!   breakout's own are stronger and welcome).
//! - **Link:** UART0 at 115 200 baud 8N1, TX = GP0 (pin 1), RX = GP1 (pin 2),
//!   to a 3.3 V USB-serial adapter on the gateway (`/dev/ttyUSB0`); receive
//!   is interrupt-driven into a ring (`uart.rs`).
//! - **Identity:** the 64-bit unique id of the Pico's flash chip (the RP2040
//!   has none of its own; the Pico SDK's `pico_get_unique_board_id` reads
//!   the same), shown as 16 hex digits; nothing to provision.
//! - **Boot number:** 32 bits from the ring oscillator's random bit.
//! - **Time:** the RP2040's 64-bit microsecond timer.
//!
//! The same drivers, sampler and link as every other board, on a core with
//! no compare-and-swap (atomic loads and stores only) and no FPU.
//!
//! Flash and run with probe-rs (firmware/README.md):
//! `CARGO_TARGET_THUMBV6M_NONE_EABI_RUNNER="probe-rs run --chip RP2040"
//!  cargo run -p ferry-board-rp2040-pico --target thumbv6m-none-eabi --profile firmware`
//!
//! The binary exists only for the MCU (`target_os = "none"`); on the host it
//! is an explanation, so that `cargo test --workspace` and
//! `cargo clippy --workspace --all-targets` pass over it.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
mod board;
#[cfg(target_os = "none")]
mod firmware;
#[cfg(target_os = "none")]
mod uart;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "ferry-rp2040-pico runs on the MCU: build it with scripts/firmware.sh build \
         (cargo build -p {} --target thumbv6m-none-eabi --profile firmware)",
        env!("CARGO_PKG_NAME")
    );
    std::process::exit(2);
}
