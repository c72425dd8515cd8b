//! Ferry firmware for the nRF52840-DK, **journal build**: the same sensor,
//! link and identity as `ferry-nrf52840-dk`, but closed windows go into the
//! gateway agent's redb journal (`ferry_firmware::journal_node`) on the upper
//! 512 KiB of the internal flash, through the NVMC and the flash translation
//! layer (`ferry_firmware::storage::NorBackend`), and leave it only when the
//! gateway acks them. A power loss loses nothing journaled.
//!
//! Built with `--features journal --bin ferry-nrf52840-dk-journal`; only for
//! the MCU (on the host it is an explanation). Not yet run on hardware.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod board;
#[cfg(target_os = "none")]
mod clock;
#[cfg(target_os = "none")]
mod flash;
#[cfg(target_os = "none")]
mod heap;
#[cfg(target_os = "none")]
mod journal_firmware;
#[cfg(target_os = "none")]
mod uart;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "ferry-nrf52840-dk-journal runs on the MCU: build it with scripts/firmware.sh build \
         (cargo build -p {} --features journal --bin ferry-nrf52840-dk-journal \
         --target thumbv7em-none-eabihf --profile firmware-journal)",
        env!("CARGO_PKG_NAME")
    );
    std::process::exit(2);
}
