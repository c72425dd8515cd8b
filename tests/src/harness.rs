//! The harness every real-binary test shares: binaries built from the
//! current tree, and loopback ports that cannot race.
//!
//! **Binaries.** [`binary`] runs `cargo build --workspace --bins` for the
//! test's own profile and target directory the first time a test process
//! asks for a binary (a no-op when it is up to date), so a test never runs
//! a binary left over from an older tree, whichever `cargo test` line
//! started it. The whole workspace, not `-p <package>`: a package selection
//! resolves features differently, so it would rebuild much of the
//! dependency tree next to what `cargo build --workspace --bins` (the line
//! scripts/test.sh runs first) already built, and replace those binaries.
//!
//! **Ports.** A server that a test restarts, or whose address goes into a
//! configuration before it starts, needs a port chosen in advance. Binding
//! port 0 and releasing it races with every other process binding port 0
//! (the kernel hands the same ephemeral ports out again). [`reserve_port`]
//! picks ports *below* the kernel's ephemeral range, which port 0 never
//! hands out, and holds a lock file per port (`flock`, released when the
//! test process exits) so that concurrent test processes never pick the
//! same one; the port is checked free for TCP and UDP before it is
//! returned. Servers whose address a test can read back still bind port 0.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Path of workspace binary `name` (`ferry-agent`, `ferry-collector`),
/// built from the current tree for this test's profile.
///
/// `FERRY_TEST_AGENT_BIN=<path>` runs that agent binary instead (e.g. the
/// `edge` build gateways get, to measure it: agent/README.md); nothing is
/// built for it, and the test prints which binary it runs.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);
    if let Some(given) = std::env::var_os("FERRY_TEST_AGENT_BIN").filter(|_| name == "ferry-agent")
    {
        let path = PathBuf::from(given);
        assert!(
            path.is_file(),
            "FERRY_TEST_AGENT_BIN={}: no such file",
            path.display()
        );
        eprintln!("FERRY_TEST_AGENT_BIN: running {}", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        build(profile_dir);
        *built = true;
    }
    assert!(
        path.is_file(),
        "{name} is not a binary of this workspace ({} missing)",
        path.display()
    );
    path
}

fn build(profile_dir: &Path) {
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some("release") => "release",
        Some(other) => other,
    };
    let target_dir = profile_dir.parent().expect("target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let out = Command::new(&cargo)
        .args(["build", "--profile", profile, "--workspace", "--bins"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace)
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} to build the binaries: {e}"));
    assert!(
        out.status.success(),
        "building the workspace's binaries from the current tree failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first port of the kernel's ephemeral range (port 0 hands out ports
/// from there up).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A loopback port of its own for this test process, free for both TCP and
/// UDP, that no other test process and no port-0 bind will take.
pub fn reserve_port() -> SocketAddr {
    static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
    let top = ephemeral_start().clamp(11_000, 49_152);
    let low = 10_000u16;
    let span = u32::from(top - low);
    let dir = std::env::temp_dir().join("ferry-test-ports");
    std::fs::create_dir_all(&dir).expect("port lock directory");
    // Start somewhere different per process: fewer lock files to try.
    let start = std::process::id() % span;
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        let lock = File::create(dir.join(format!("{port}.lock"))).expect("port lock file");
        if lock.try_lock().is_err() {
            continue; // another test process holds it
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            held.push(lock);
            return addr;
        }
    }
    panic!("no free loopback port below {top}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_below_the_ephemeral_range_and_locked() {
        let a = reserve_port();
        let b = reserve_port();
        assert_ne!(a, b);
        for p in [a, b] {
            assert!(p.port() < ephemeral_start(), "{p}");
            let lock = File::open(
                std::env::temp_dir().join(format!("ferry-test-ports/{}.lock", p.port())),
            )
            .unwrap();
            assert!(lock.try_lock().is_err(), "held while this process runs");
            assert!(TcpListener::bind(p).is_ok(), "and free to bind");
        }
    }
}
