//! Power loss, for real: the emulated board's **journal image**
//! (`ferry-mps2-an386-journal`) journals its windows in redb on a host file
//! that plays its flash chip, and streams them over the device link to the
//! real `ferry-agent`, which ships them to `ferry-collector`. QEMU is killed
//! (SIGKILL: the power goes) at random instants, many times, and started
//! again on the same flash file; the agent is also killed and stays down for
//! part of the run. At the end the collector holds every window the
//! firmware computed exactly once, each bit-identical to the deterministic
//! waveform (`ferry_firmware::sim::expected_windows`), contiguous from the
//! first window of the journal's epoch.
//!
//! The kill instants come from a seeded RNG (printed; `FERRY_POWER_SEED=N`
//! replays a run): that is fault injection. Every wait is a polled condition.
//!
//! Needs qemu-system-arm and the journal image (`scripts/firmware.sh build`;
//! scripts/test.sh does both).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_proto::link::LinkConfig;
use ferry_tests::{Proc, binary, free_tcp_port, http_get, until};

const DEVICE: &str = "c0ffee00dead0001";
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 20,
    window_ms: 200,
};
/// Power cycles (QEMU killed and restarted).
const CYCLES: usize = 24;
/// Cycles (by index) during which the agent is down.
const AGENT_DOWN: std::ops::Range<usize> = 8..13;

fn elf() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_MPS2_JOURNAL_ELF") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/thumbv7em-none-eabihf/firmware-journal/ferry-mps2-an386-journal")
}

/// splitmix64: the kill schedule, from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Stored = ferry_tests::StoredWindow;

/// Every window the collector holds for the device, duplicates included.
async fn stored_windows(data: &Path) -> Vec<Stored> {
    ferry_tests::stored_windows(data, DEVICE).await
}

/// Windows of channel 0 the collector holds.
async fn sht_windows(data: &Path) -> usize {
    stored_windows(data)
        .await
        .iter()
        .filter(|((s, _), _)| ferry_tests::board_channel(s) == 0)
        .count()
}

fn qemu(elf: &Path, link_port: u16, flash: &Path, log: &Path) -> Proc {
    let semihosting = format!(
        "enable=on,target=native,arg=ferry,arg=device={DEVICE},arg=boot=77,arg=period={},arg=window={},\
         arg=resend=300,arg=heartbeat=500,arg=flash={}",
        CONFIG.sample_period_ms,
        CONFIG.window_ms,
        flash.display()
    );
    Proc(
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
            .args([
                "-chardev",
                &format!("socket,id=s0,host=127.0.0.1,port={link_port},server=off,reconnect=1"),
            ])
            .args(["-serial", "chardev:s0", "-kernel"])
            .arg(elf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start qemu-system-arm"),
    )
}

/// The lines of `text` that are whole: QEMU writes a line in pieces, and a
/// log read while it runs (or cut by a kill) may end in half a line.
fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
}

/// The board's start-up line in `log`, once it is there (whole).
fn resumed_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    complete_lines(&text)
        .find(|l| l.starts_with("ferry: journal device"))
        .map(str::to_owned)
}

/// `key N` in the start-up line.
fn field(line: &str, key: &str) -> u64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("{key} in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_board_survives_power_loss_and_agent_loss_exactly_once() {
    match Command::new("qemu-system-arm").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "qemu-system-arm is missing: apt-get install qemu-system-arm (scripts/test.sh installs it)"
        ),
    }
    let elf = elf();
    assert!(
        elf.is_file(),
        "no journal image at {}: run scripts/firmware.sh build",
        elf.display()
    );
    let seed = std::env::var("FERRY_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("power-loss seed {seed} (FERRY_POWER_SEED={seed} replays the kill schedule)");
    let mut rng = Rng(seed);
    let began = Instant::now();

    let site = ferry_tests::Site::new();
    let (dir, data) = (site.dir.path(), &site.data);
    let collector = site.start_collector().await;
    let flash = dir.join("flash.bin");

    let (link, admin) = (free_tcp_port(), free_tcp_port());
    let config = site.agent_config(&format!(
        "\n[agent]\ndata_dir = \"data\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [shipping]\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\n\n\
         [[device_tcp_listen]]\nlisten = \"{link}\"\n"
    ));
    let args = ["run", "--config", config.to_str().unwrap()];
    let agent_up = || async {
        until("agent up", || async {
            http_get(admin, "/status").await.is_some()
        })
        .await;
    };
    let mut agent = Some(Proc::spawn(
        &binary("ferry-agent"),
        &args,
        &dir.join("agent-0.log"),
    ));
    agent_up().await;

    let mut logs: Vec<PathBuf> = Vec::new();
    let mut kills_ms = Vec::new();
    let mut agent_runs = 1;
    for cycle in 0..CYCLES {
        if cycle == AGENT_DOWN.start {
            agent.take().expect("agent running").kill9();
        }
        if cycle == AGENT_DOWN.end {
            agent = Some(Proc::spawn(
                &binary("ferry-agent"),
                &args,
                &dir.join(format!("agent-{agent_runs}.log")),
            ));
            agent_runs += 1;
            agent_up().await;
        }
        let log = dir.join(format!("qemu-{cycle}.log"));
        let board = qemu(&elf, link.port(), &flash, &log);
        until("the board started on its journal", || async {
            resumed_line(&log).is_some()
        })
        .await;
        // Power loss at a random instant of the next 0–1.5 s.
        let after = rng.below(1_500);
        kills_ms.push(after);
        tokio::time::sleep(Duration::from_millis(after)).await;
        board.kill9();
        logs.push(log);
    }
    assert!(agent.is_some(), "the agent is back after its outage");
    println!("power cycles {CYCLES}, kill delays (ms after start-up) {kills_ms:?}");

    // Last power-up: everything the journal holds goes out.
    let log = dir.join("qemu-final.log");
    let board = qemu(&elf, link.port(), &flash, &log);
    until("the board started on its journal", || async {
        resumed_line(&log).is_some()
    })
    .await;
    let line = resumed_line(&log).unwrap();
    println!("final start-up: {line}");
    assert_eq!(field(&line, "power-up "), CYCLES as u64 + 1, "{line}");
    assert_eq!(field(&line, "epoch "), 77, "the epoch outlives power loss");
    // Every window before this instant was computed before the last power-up.
    let computed = field(&line, "resumes at ") / u64::from(CONFIG.window_ms);
    assert!(computed > 0, "the board journaled windows before: {line}");
    until(
        "every window computed before the last power-up stored",
        || async { sht_windows(data).await as u64 >= computed },
    )
    .await;
    board.kill9();
    logs.push(log);
    until("agent outbox empty", || async {
        http_get(admin, "/status").await.is_some_and(|b| {
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            v["outbox_readings"] == 0 && v["pending_readings"] == 0
        })
    })
    .await;

    let got = stored_windows(data).await;
    // Exactly once: no (series, start) twice.
    let mut keys: Vec<_> = got.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!(before, keys.len(), "a window is stored twice");
    // Device time 0 ↦ the offset the agent measured at the epoch's first hello.
    let per_channel = ferry_tests::check_board_windows(&got, CONFIG);
    assert_eq!(per_channel.len(), 3, "three channels");
    for (ch, starts) in &per_channel {
        let n = starts.len() as u64;
        let contiguous: Vec<u64> = (0..n).map(|k| k * u64::from(CONFIG.window_ms)).collect();
        assert_eq!(
            starts, &contiguous,
            "channel {ch}: every window of the epoch, once, none missing"
        );
        assert!(n >= computed, "channel {ch}: {n} windows of {computed}");
    }

    // The board never failed; some start-ups found reports journaled and
    // not yet acked (the agent was down): they were carried across the power
    // loss and delivered once.
    let (mut heap_peak, mut stack_peak) = (0u64, 0u64);
    let mut carried = 0u64;
    for log in &logs {
        if let Some(line) = resumed_line(log) {
            carried = carried.max(field(&line, "unacked "));
        }
        let text = std::fs::read_to_string(log).unwrap();
        for bad in ["panic", "journal refused", "no database", "no flash"] {
            assert!(!text.contains(bad), "{}: {bad}\n{text}", log.display());
        }
        for l in complete_lines(&text) {
            if l.starts_with("ferry: heap peak ") {
                heap_peak = heap_peak.max(field(l, "heap peak "));
                stack_peak = stack_peak.max(field(l, "stack peak "));
            }
        }
    }
    assert!(carried > 0, "no start-up had unacked reports to carry");
    println!(
        "journal board: {CYCLES} power losses, up to {carried} unacked reports carried across one, agent down for cycles {AGENT_DOWN:?}, \
         {computed} windows per channel before the last power-up, {} stored per channel, \
         heap peak {heap_peak} B, stack peak {stack_peak} B, {:.1} s",
        per_channel[&0].len(),
        began.elapsed().as_secs_f64()
    );
    if let Some(a) = agent {
        a.kill9();
    }
    collector.stop().await;
}
