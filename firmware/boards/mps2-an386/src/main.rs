//! Ferry firmware for the emulated board: QEMU `mps2-an386` (Cortex-M4F).
//!
//! Two simulated sensors — an SHT4x and a TMP102 — answer the real drivers
//! over the embedded-hal `I2c` trait, with the waveforms of
//! `ferry_firmware::sim`; the link runs over UART0. Settings (device id,
//! boot number, sampling, timers) come from the semihosting command line
//! (`ferry_firmware::emulated`). Diagnostics go to the host's stderr through
//! semihosting, never to UART0, which carries only frames.
//!
//! ```text
//! qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic \
//!   -semihosting-config enable=on,target=native,arg=ferry,arg=device=0a1b2c,arg=boot=7 \
//!   -kernel ferry-mps2-an386
//! ```
//!
//! The binary exists only for the MCU (`target_os = "none"`); on the host it
//! is an explanation, so that `cargo test --workspace` and
//! `cargo clippy --workspace --all-targets` pass over it.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
mod clock;
#[cfg(target_os = "none")]
mod counter;
/// The MPS2 AN386 core clock (SysTick counts it).
#[cfg(target_os = "none")]
const CORE_HZ: u32 = 25_000_000;
#[cfg(target_os = "none")]
mod firmware;
#[cfg(target_os = "none")]
mod semihosting;
#[cfg(target_os = "none")]
mod uart;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "ferry-mps2-an386 runs on the MCU: build it with scripts/firmware.sh build \
         (cargo build -p {} --target thumbv7em-none-eabihf --profile firmware)",
        env!("CARGO_PKG_NAME")
    );
    std::process::exit(2);
}
