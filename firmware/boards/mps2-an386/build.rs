//! Puts each image's memory layout where cortex-m-rt's link.x finds it
//! (`INCLUDE memory.x`): one directory per binary, on that binary's search
//! path, so the RAM-ring image keeps its small part and the journal image
//! gets the larger one.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (bin, layout) in [
        ("ferry-mps2-an386", &include_bytes!("memory.x")[..]),
        (
            "ferry-mps2-an386-journal",
            &include_bytes!("memory-journal.x")[..],
        ),
    ] {
        let dir = out.join(bin);
        fs::create_dir_all(&dir).expect("create layout directory");
        fs::write(dir.join("memory.x"), layout).expect("write memory.x");
        println!("cargo:rustc-link-arg-bin={bin}=-L{}", dir.display());
    }
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=memory-journal.x");
    println!("cargo:rerun-if-changed=build.rs");
}
