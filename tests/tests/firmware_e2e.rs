//! The emulated board (firmware/boards/mps2-an386 in qemu-system-arm) →
//! the real ferry-agent binary over its device link → ferry-collector: the
//! collector's windows are exactly the ones the firmware computed from its
//! deterministic sensors; then the agent is killed (SIGKILL) while the
//! firmware keeps sampling, and restarted: no window lost, none duplicated.
//!
//! Needs qemu-system-arm and the cross-built image (`scripts/firmware.sh
//! build`; scripts/test.sh does both).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ferry_proto::link::LinkConfig;
use ferry_tests::{Proc, Site, binary, free_tcp_port, http_get, until};

const DEVICE: &str = "c0ffee0012345678";
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 20,
    window_ms: 200,
};

fn elf() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_MPS2_ELF") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/thumbv7em-none-eabihf/firmware/ferry-mps2-an386")
}

/// `(series, start_ns) → (count, sum, min, max, first, last)` as stored.
type Windows = BTreeMap<(String, i64), (u64, f64, f64, f64, f64, f64)>;

async fn windows(data: &std::path::Path) -> Windows {
    ferry_tests::stored_windows(data, DEVICE)
        .await
        .into_iter()
        .collect()
}

fn per_series_count(w: &Windows, sensor: &str) -> usize {
    w.keys()
        .filter(|(s, _)| s.contains(sensor) && s.starts_with("temperature"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_to_collector_exactly_and_through_an_agent_crash() {
    match Command::new("qemu-system-arm").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "qemu-system-arm is missing: apt-get install qemu-system-arm (scripts/test.sh installs it)"
        ),
    }
    let elf = elf();
    assert!(
        elf.is_file(),
        "no firmware image at {}: run scripts/firmware.sh build",
        elf.display()
    );

    let site = Site::new();
    let (dir, data) = (site.dir.path(), &site.data);
    let collector = site.start_collector().await;

    let (link, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [[device_tcp_listen]]\nlisten = \"{link}\"\n"
    ));
    let args = ["run", "--config", config.to_str().unwrap()];
    let agent = Proc::spawn(&binary("ferry-agent"), &args, &dir.join("agent1.log"));
    until("agent up", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;

    let semihosting = format!(
        "enable=on,target=native,arg=ferry,arg=device={DEVICE},arg=boot=77,arg=period={},arg=window={},\
         arg=resend=300,arg=heartbeat=500,arg=exit_after=120000",
        CONFIG.sample_period_ms, CONFIG.window_ms
    );
    let qemu = Proc(
        Command::new("qemu-system-arm")
            .args([
                "-machine",
                "mps2-an386",
                "-cpu",
                "cortex-m4",
                "-display",
                "none",
                "-monitor",
                "none",
            ])
            .args(["-semihosting-config", &semihosting])
            // reconnect=1: QEMU dials the agent again when it goes away.
            .args([
                "-chardev",
                &format!(
                    "socket,id=s0,host=127.0.0.1,port={},server=off,reconnect=1",
                    link.port()
                ),
            ])
            .args(["-serial", "chardev:s0", "-kernel"])
            .arg(&elf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.log")).unwrap())
            .spawn()
            .expect("start qemu-system-arm"),
    );

    until("8 windows stored", || async {
        per_series_count(&windows(data).await, "sht4x") >= 8
    })
    .await;
    agent.kill9();
    // The board keeps sampling into its retry ring while nobody listens.
    let agent = Proc::spawn(&binary("ferry-agent"), &args, &dir.join("agent2.log"));
    until("30 windows stored", || async {
        per_series_count(&windows(data).await, "sht4x") >= 30
    })
    .await;
    qemu.kill9();
    until("agent outbox empty", || async {
        http_get(admin, "/status").await.is_some_and(|b| {
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            v["outbox_readings"] == 0 && v["pending_readings"] == 0
        })
    })
    .await;

    let got: Vec<ferry_tests::StoredWindow> = windows(data).await.into_iter().collect();
    let per_channel = ferry_tests::check_board_windows(&got, CONFIG);
    for (ch, starts) in &per_channel {
        let n = starts.len() as u64;
        let contiguous: Vec<u64> = (0..n).map(|k| k * u64::from(CONFIG.window_ms)).collect();
        assert_eq!(
            starts, &contiguous,
            "channel {ch}: every window from boot, once"
        );
        assert!(n >= 30, "channel {ch}: {n} windows");
    }
    agent.kill9();
    collector.stop().await;
}
