//! The gateway builds, run under emulation (Debian's qemu-user-static):
//!
//! - the aarch64 agent (static, musl) reads line protocol and ships it to an
//!   x86_64 collector on loopback, and the collector's store holds exactly
//!   the readings sent;
//! - the armv7 agent (glibc, linked against 2.17) starts and answers
//!   `--version`.
//!
//! Feature `cross`: `scripts/test.sh` builds these binaries first with
//! `scripts/package.sh` (profile `cross-test`, or `FERRY_CROSS_PROFILE`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ferry_tests::systemd::{NotifySocket, status_addresses};
use ferry_tests::{Proc, Site, stored};

/// `target/<triple>/<profile>/ferry-agent` of this workspace.
fn cross_agent(triple: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target
    let target = exe.ancestors().nth(3).expect("target/");
    let profile = std::env::var("FERRY_CROSS_PROFILE").unwrap_or_else(|_| "cross-test".into());
    let path = target.join(triple).join(profile).join("ferry-agent");
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh builds it with scripts/package.sh",
        path.display()
    );
    path
}

fn qemu(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: apt-get install qemu-user-static (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The ELF header's machine: 183 AArch64, 40 ARM.
fn elf_machine(path: &std::path::Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn aarch64_agent_under_qemu_ships_to_an_x86_64_collector_exactly() {
    let agent = cross_agent("aarch64-unknown-linux-musl");
    assert_eq!(elf_machine(&agent), 183, "an AArch64 binary");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let site = Site::new();
    let collector = rt.block_on(site.start_collector());
    let config = site.agent_config(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[influx_tcp]]\nlisten = \"127.0.0.1:0\"\nprecision = \"ms\"\n",
    );
    let notify = NotifySocket::bind(site.dir.path());
    let log = std::fs::File::create(site.dir.path().join("agent.log")).unwrap();
    let child = Command::new(qemu("qemu-aarch64-static"))
        .arg(&agent)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let emulated = Proc(child);
    let ready = notify.recv();
    assert!(ready.contains(&"READY=1".to_owned()), "{ready:?}");
    let influx = status_addresses(&ready)
        .into_iter()
        .find(|(w, _)| w == "influx_tcp")
        .unwrap()
        .1;

    // 10 series × 100 readings, one a second, over one connection.
    let base_ms = ferry_collector::now_ns() / 1_000_000 - 3_600_000;
    let mut sent: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    let mut lines = String::new();
    for i in 0..100i64 {
        for d in 0..10 {
            let (ts, value) = (base_ms + i * 1000, f64::from(d) * 100.0 + i as f64 * 0.25);
            lines.push_str(&format!("qemu_temp,device=d{d} value={value} {ts}\n"));
            sent.entry(format!("qemu_temp_value{{agent=\"gw\",device=\"d{d}\"}}"))
                .or_default()
                .push((ts * 1_000_000, value));
        }
    }
    let mut tcp = TcpStream::connect(influx).unwrap();
    tcp.write_all(lines.as_bytes()).unwrap();
    drop(tcp);

    let data = site.data.clone();
    let log_path = site.dir.path().join("agent.log");
    let got = rt.block_on(async {
        for _ in 0..12_000 {
            if let Some(s) = stored(&data, "qemu_temp_value").await
                && s.iter().map(|(_, r)| r.len()).sum::<usize>() >= 1000
            {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "never stored 1000 readings (stored: {:?}); the agent's log:\n{}",
            stored(&data, "qemu_temp_value").await,
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    });
    let got: BTreeMap<String, Vec<(i64, f64)>> = got.into_iter().collect();
    assert_eq!(got, sent, "the collector stores exactly what was sent");

    emulated.kill9();
    rt.block_on(collector.stop());
}

/// The glibc symbol versions a binary needs (`GLIBC_2.17` → (2, 17)), read
/// from the version names in its dynamic string table.
fn glibc_versions(path: &std::path::Path) -> Vec<(u32, u32)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    for (i, _) in bytes
        .windows(8)
        .enumerate()
        .filter(|(_, w)| w == b"GLIBC_2.")
    {
        let digits: String = bytes[i + 8..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        if let Ok(minor) = digits.parse() {
            out.push((2, minor));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[test]
fn armv7_agent_answers_version_under_qemu_arm() {
    let agent = cross_agent("armv7-unknown-linux-gnueabihf");
    assert_eq!(elf_machine(&agent), 40, "a 32-bit ARM binary");
    let needed = glibc_versions(&agent);
    assert!(
        needed.last().is_some_and(|&v| v <= (2, 17)),
        "linked against glibc 2.17 at most: {needed:?}"
    );
    // glibc's loader and libc for armhf (Debian's libc6-armhf-cross).
    let prefix = "/usr/arm-linux-gnueabihf";
    assert!(
        std::path::Path::new(prefix)
            .join("lib/ld-linux-armhf.so.3")
            .exists(),
        "apt-get install libc6-armhf-cross (scripts/test.sh does)"
    );
    let out = Command::new(qemu("qemu-arm-static"))
        .arg(&agent)
        .arg("--version")
        .env("QEMU_LD_PREFIX", prefix)
        // A glibc agent re-executes itself once to turn malloc's per-thread
        // caches off (agent/src/memory.rs). Under qemu-user without binfmt
        // that exec would be of an ARM binary by the host kernel, which
        // fails (and glibc then hands the file to /bin/sh); with the
        // tunable already set there is no re-exec, as after the real one.
        .env("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("ferry-agent {}\n", env!("CARGO_PKG_VERSION"))
    );
}
