//! The emulated board (`firmware/boards/mps2-an386` in `qemu-system-arm`)
//! connects to the agent's device-link listener; the reports go into a real
//! redb journal, and the journaled windows are exactly the ones the
//! firmware's deterministic sensors produce (`ferry_firmware::sim`).
//!
//! Needs qemu-system-arm and the cross-built image (feature `qemu`):
//! `scripts/firmware.sh build && cargo test -p ferry-agent --features qemu
//! --test device_qemu`. The image path is `$FERRY_MPS2_ELF`, by default
//! `target/thumbv7em-none-eabihf/firmware/ferry-mps2-an386`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_agent::intake::{Intake, SubmitError};
use ferry_agent::journal::{Journal, JournalConfig};
use ferry_agent::sources::device::{
    DeviceLinkConfig, DeviceRegistry, DeviceSource, run_tcp_listener,
};
use ferry_agent::window::Partial;
use ferry_firmware::sim;
use ferry_proto::batch::{Batch, WindowAggregate};
use ferry_proto::codec;
use ferry_proto::link::LinkConfig;
use ferry_proto::series::SeriesKey;
use tokio::io::AsyncReadExt;

const DEVICE: &str = "f0e1d2c3b4a59600";
const BOOT: u32 = 5151;
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 20,
    window_ms: 200,
};
/// Reports to journal before the test stops.
const REPORTS: u32 = 12;
/// Bound on the whole run (a hang guard, not a measurement): the board
/// produces a report every 200 ms.
const DEADLINE: Duration = Duration::from_secs(60);

fn elf() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_MPS2_ELF") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("thumbv7em-none-eabihf/firmware/ferry-mps2-an386")
}

fn series(channel: u8) -> SeriesKey {
    let (sensor, quantity, unit) = match channel {
        0 => ("sht4x", "temperature", "Cel"),
        1 => ("sht4x", "relative_humidity", "%"),
        _ => ("tmp102", "temperature", "Cel"),
    };
    SeriesKey::new(
        quantity,
        [("device", DEVICE), ("sensor", sensor), ("unit", unit)],
    )
    .unwrap()
}

#[tokio::test]
async fn the_emulated_board_reports_land_in_the_journal_exactly() {
    match std::process::Command::new("qemu-system-arm")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "qemu-system-arm is not installed or does not run: apt-get install qemu-system-arm \
             (this test must not be skipped)"
        ),
    }
    let elf = elf();
    assert!(
        elf.is_file(),
        "no firmware image at {}: build it with scripts/firmware.sh build (or set FERRY_MPS2_ELF)",
        elf.display()
    );

    // The journal and its writer; the writer publishes the device's mark.
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("journal.redb")).unwrap();
    let config = JournalConfig {
        batch_max_readings: 1, // seal at every commit, to read the batches back
        ..JournalConfig::default()
    };
    let journal = Arc::new(Mutex::new(Journal::open(db, config).unwrap()));
    let (intake, mut rx) = Intake::channel(16);
    let (mark_tx, mut mark) = tokio::sync::watch::channel(0u32);
    let writer_journal = journal.clone();
    tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            let mut j = writer_journal.lock().unwrap();
            let result = j.commit(s.work, ferry_clock::now_ns());
            if let Some((_, _, seq)) = j.devices().unwrap().first() {
                mark_tx.send_replace(*seq);
            }
            drop(j);
            let _ = s
                .done
                .send(result.map_err(|e| SubmitError::Storage(e.to_string()).into()));
        }
    });
    let registry = DeviceRegistry::new();
    let source = DeviceSource::new(DeviceLinkConfig::default(), intake, registry.clone());
    let stats = source.stats.clone();

    // QEMU connects to our listener (server=off): the port is ours first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(async move {
        run_tcp_listener(listener, &source, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
    });
    let semihosting = format!(
        "enable=on,target=native,arg=ferry,arg=device={DEVICE},arg=boot={BOOT},arg=period={},\
         arg=window={},arg=resend=300,arg=heartbeat=500,arg=exit_after=60000",
        CONFIG.sample_period_ms, CONFIG.window_ms
    );
    let mut qemu = tokio::process::Command::new("qemu-system-arm")
        .args(["-machine", "mps2-an386", "-cpu", "cortex-m4"])
        .args(["-display", "none", "-monitor", "none"])
        .args(["-semihosting-config", &semihosting])
        .args([
            "-chardev",
            &format!("socket,id=s0,host=127.0.0.1,port={port},server=off"),
        ])
        .args(["-serial", "chardev:s0", "-kernel"])
        .arg(&elf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start qemu-system-arm");

    let reached = tokio::time::timeout(DEADLINE, mark.wait_for(|&s| s >= REPORTS))
        .await
        .is_ok_and(|r| r.is_ok());
    if !reached {
        let _ = qemu.start_kill();
        let mut log = String::new();
        if let Some(mut e) = qemu.stderr.take() {
            let _ = e.read_to_string(&mut log).await;
        }
        panic!(
            "the journal holds reports up to {} of {REPORTS} after {DEADLINE:?}; \
             frames ok {}, bad crc {}; qemu said: {log}",
            *mark.borrow(),
            stats.frames_ok.load(std::sync::atomic::Ordering::Relaxed),
            stats.bad_crc.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    stop.send(true).unwrap();
    agent.await.unwrap().unwrap();
    qemu.kill().await.unwrap();

    // What the journal holds: every report 1..=n once, each window exactly
    // as the firmware's waveforms predict, at offset + start_ms.
    let mut journal = journal.lock().unwrap();
    let [(device, boot, last)] = &journal.devices().unwrap()[..] else {
        panic!("one device expected")
    };
    assert_eq!((device.as_str(), *boot), (DEVICE, BOOT));
    let offset = registry.get(DEVICE).unwrap().offset_ns.unwrap();
    let mut got: Vec<(SeriesKey, WindowAggregate)> = Vec::new();
    for (_, bytes) in journal.next_to_send(u64::MAX, false).unwrap() {
        let batch: Batch = codec::from_bytes("Batch", &bytes).unwrap();
        assert!(batch.health.is_empty(), "no loss: {:?}", batch.health);
        for a in &batch.aggregates {
            let mut a = a.clone();
            let key = batch.series[a.series as usize].clone();
            a.series = 0;
            got.push((key, a));
        }
    }
    let mut starts: Vec<u64> = got
        .iter()
        .map(|(_, a)| u64::try_from((a.start_ns - offset) / 1_000_000).unwrap())
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let contiguous: Vec<u64> = (0..u64::from(*last))
        .map(|k| k * u64::from(CONFIG.window_ms))
        .collect();
    assert_eq!(
        starts, contiguous,
        "reports 1..={last}, each once, from boot"
    );
    let mut want = Vec::new();
    for &start_ms in &starts {
        for w in sim::expected_windows(0, CONFIG, start_ms) {
            let start = offset + start_ms as i64 * 1_000_000;
            let len = u64::from(w.len_ms) * 1_000_000;
            let p = Partial {
                start_ns: start,
                len_ns: len,
                count: u64::from(w.count),
                sum: f64::from(w.sum),
                min: f64::from(w.min),
                max: f64::from(w.max),
                first_ts: start,
                first: f64::from(w.first),
                last_ts: start + len as i64 - 1,
                last: f64::from(w.last),
                sketch: None,
            };
            want.push((series(w.channel), p.to_aggregate(0)));
        }
    }
    got.sort_by_key(|(k, a)| (a.start_ns, k.clone()));
    want.sort_by_key(|(k, a)| (a.start_ns, k.clone()));
    assert_eq!(got.len(), want.len(), "one window per channel per report");
    assert_eq!(got, want);
}
