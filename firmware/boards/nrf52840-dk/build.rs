//! Puts memory.x where cortex-m-rt's link.x finds it, and gives the journal
//! image its flash region (`journal.x`, linked after link.x).

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("write memory.x");
    fs::write(out.join("journal.x"), include_bytes!("journal.x")).expect("write journal.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bin=ferry-nrf52840-dk-journal=-Tjournal.x");
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=journal.x");
    println!("cargo:rerun-if-changed=build.rs");
}
