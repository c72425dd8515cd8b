//! Ferry's RAM-ring firmware on an emulated Cortex-M0: QEMU's `microbit`
//! machine (nRF51822, ARMv6-M, `thumbv6m-none-eabi`).
//!
//! It runs the emulated board's firmware (`../mps2-an386/src/firmware.rs`,
//! included as it is, with its SysTick clock and semihosting command line):
//! the simulated SHT4x and TMP102 behind the real drivers, the sampler and
//! the link, here on a core without atomic read-modify-write instructions
//! (no CAS: load/store only) and without an FPU. Only the UART differs: the
//! nRF51's UART on the micro:bit's USB serial pins, which QEMU routes to
//! `-serial`. `tests/qemu_smoke.rs` boots it as it boots the M4 board.
//!
//! ```text
//! qemu-system-arm -machine microbit -nographic \
//!   -semihosting-config enable=on,target=native,arg=ferry,arg=device=0a1b2c,arg=boot=7 \
//!   -kernel ferry-microbit
//! ```
//!
//! The binary exists only for the MCU (`target_os = "none"`); on the host it
//! is an explanation, so that `cargo test --workspace` and
//! `cargo clippy --workspace --all-targets` pass over it.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
#[path = "../../mps2-an386/src/clock.rs"]
mod clock;
#[cfg(target_os = "none")]
mod counter;
#[cfg(target_os = "none")]
#[path = "../../mps2-an386/src/firmware.rs"]
mod firmware;
#[cfg(target_os = "none")]
#[path = "../../mps2-an386/src/semihosting.rs"]
mod semihosting;
#[cfg(target_os = "none")]
mod uart;

/// The nRF51's core clock as QEMU models it (HFCLK, 16 MHz).
#[cfg(target_os = "none")]
const CORE_HZ: u32 = 16_000_000;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "ferry-microbit runs on the MCU (QEMU's microbit machine): build it with \
         scripts/firmware.sh build (cargo build -p {} --target thumbv6m-none-eabi --profile firmware)",
        env!("CARGO_PKG_NAME")
    );
    std::process::exit(2);
}
