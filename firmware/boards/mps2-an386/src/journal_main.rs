//! Ferry firmware for the emulated board, **journal build**: the same
//! simulated sensors and link as `ferry-mps2-an386`, but closed windows go
//! into the report log (`ferry_firmware::journal_node`) on a host file that
//! plays a NOR chip (`semihosting_nor`, `<flash>.nor`), folded when needed
//! into the gateway agent's redb journal on another host file
//! (`semihosting_file`), and leave them only when the gateway acks them. Killing QEMU is a power loss; started
//! again on the same file, the board carries on where its journal was.
//!
//! ```text
//! qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic \
//!   -semihosting-config enable=on,target=native,arg=ferry,arg=device=0a1b2c,arg=flash=/tmp/flash.bin \
//!   -kernel ferry-mps2-an386-journal
//! ```
//!
//! Built with `--features journal --bin ferry-mps2-an386-journal`; only for
//! the MCU (on the host it is an explanation).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod clock;
#[cfg(target_os = "none")]
mod counter;
/// The MPS2 AN386 core clock (SysTick counts it).
#[cfg(target_os = "none")]
const CORE_HZ: u32 = 25_000_000;
#[cfg(target_os = "none")]
mod heap;
#[cfg(target_os = "none")]
mod journal_firmware;
#[cfg(target_os = "none")]
mod semihosting;
#[cfg(target_os = "none")]
mod semihosting_file;
#[cfg(target_os = "none")]
mod semihosting_nor;
#[cfg(target_os = "none")]
mod uart;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "ferry-mps2-an386-journal runs on the MCU: build it with scripts/firmware.sh build \
         (cargo build -p {} --features journal --bin ferry-mps2-an386-journal \
         --target thumbv7em-none-eabihf --profile firmware)",
        env!("CARGO_PKG_NAME")
    );
    std::process::exit(2);
}
