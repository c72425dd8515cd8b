//! Power loss, for real: the emulated board's **journal image**
//! (`ferry-mps2-an386-journal`) logs its windows in a report log on a host
//! file that plays its NOR flash (folding into redb on another when the log
//! fills), and streams them over the device link to the real `ferry-agent`,
//! which ships them to `ferry-collector`. QEMU is killed (SIGKILL: the power
//! goes) at random instants, and started again on the same files after a
//! power-off gap of 2–5 s; once, the agent is killed while the board runs,
//! the board loses its power while the agent is down, and the agent is back
//! before the board. At the end the collector holds every window the
//! firmware journaled exactly once, each bit-identical to the deterministic
//! waveform **at its true time**: the board samples the waveform at the
//! host's clock (`wall0=`), and each stored window must sit where the
//! waveform says it was taken, to within the time sync's error, whatever the
//! gaps without power.
//!
//! The kill instants and gaps come from a seeded RNG (printed;
//! `FERRY_POWER_SEED=N` replays a run): that is fault injection. Every wait
//! for an outcome is a polled condition.
//!
//! Needs qemu-system-arm and the journal image (`scripts/firmware.sh build`;
//! scripts/test.sh does both).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_proto::link::LinkConfig;
use ferry_tests::{Proc, binary, free_tcp_port, http_get, until, until_or_show};

const DEVICE: &str = "c0ffee00dead0001";
const CONFIG: LinkConfig = LinkConfig {
    sample_period_ms: 20,
    window_ms: 200,
};
/// Power cycles (QEMU killed and restarted).
const CYCLES: usize = 12;
/// The cycle whose power-up outlives the agent (killed mid-run, back only
/// after the board's power loss).
const AGENT_DOWN: usize = 5;
/// How far a stored window may sit from its true time: the time sync's
/// error (the hello's transit, QEMU's start-up). A power-off gap is 2–5 s.
const PLACEMENT_TOLERANCE_MS: i64 = 500;

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

const MS: i64 = 1_000_000;

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

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn qemu(elf: &Path, link_port: u16, flash: &Path, log: &Path) -> Proc {
    let semihosting = format!(
        "enable=on,target=native,arg=ferry,arg=device={DEVICE},arg=boot=77,arg=period={},arg=window={},\
         arg=resend=300,arg=heartbeat=500,arg=flash={},arg=wall0={}",
        CONFIG.sample_period_ms,
        CONFIG.window_ms,
        flash.display(),
        unix_ms()
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
    let mut gaps_ms = Vec::new();
    // (power-up, true time of its clock's zero in ms)
    let mut zeros: Vec<(u64, u64)> = Vec::new();
    let mut agent_runs = 1;
    for cycle in 0..CYCLES {
        let log = dir.join(format!("qemu-{cycle}.log"));
        let board = qemu(&elf, link.port(), &flash, &log);
        until("the board started on its journal", || async {
            resumed_line(&log).is_some()
        })
        .await;
        let line = resumed_line(&log).unwrap();
        let zero = field(&line, "true zero ");
        zeros.push((field(&line, "power-up "), zero));
        // The gateway has synced this power-up's clock once one of its
        // windows is stored (its reports wait for the sync).
        let agent_log = dir.join(format!("agent-{}.log", agent_runs - 1));
        until_or_show(
            "a window of this power-up stored",
            || async {
                stored_windows(data)
                    .await
                    .iter()
                    .any(|((_, start), _)| *start >= (zero as i64 - PLACEMENT_TOLERANCE_MS) * MS)
            },
            &[&log, &agent_log],
        )
        .await;
        if cycle == AGENT_DOWN {
            agent.take().expect("agent running").kill9();
        }
        // Power loss at a random instant of the next 0–1.5 s (with the
        // agent down: journaling what it cannot send).
        let after = rng.below(1_500);
        kills_ms.push(after);
        tokio::time::sleep(Duration::from_millis(after)).await;
        board.kill9();
        logs.push(log);
        if cycle == AGENT_DOWN {
            agent = Some(Proc::spawn(
                &binary("ferry-agent"),
                &args,
                &dir.join(format!("agent-{agent_runs}.log")),
            ));
            agent_runs += 1;
            agent_up().await;
        }
        // Without power for 2–5 s: no clock runs.
        let gap = 2_000 + rng.below(3_000);
        gaps_ms.push(gap);
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    println!(
        "power cycles {CYCLES}, kill delays (ms after the first stored window) {kills_ms:?}, power-off gaps (ms) {gaps_ms:?}"
    );

    // Last power-up: everything journaled goes out.
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
    zeros.push((field(&line, "power-up "), field(&line, "true zero ")));
    // Every report journaled before this power-up, one window per channel.
    let journaled = field(&line, "next seq ") - 1;
    assert!(journaled > 0, "the board journaled windows before: {line}");
    until(
        "every window journaled before the last power-up stored",
        || async { sht_windows(data).await as u64 >= journaled },
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
    // Each window: the waveform's values at a true window within the
    // tolerance of where it is stored; per power-up and channel, windows
    // 0, 1, 2, ... of its clock with none missing.
    let mut per: BTreeMap<(u64, u8), Vec<u64>> = BTreeMap::new();
    let mut worst_ms = 0i64;
    for ((series, start_ns), values) in &got {
        let ch = ferry_tests::board_channel(series);
        let start_ms = start_ns.div_euclid(MS);
        let &(power_up, zero) = zeros
            .iter()
            .rev()
            .find(|(_, z)| (*z as i64) <= start_ms + PLACEMENT_TOLERANCE_MS)
            .unwrap_or_else(|| panic!("{series} at {start_ms} ms: before the first power-up"));
        let window = i64::from(CONFIG.window_ms);
        let guess = (start_ms - zero as i64 + window / 2)
            .div_euclid(window)
            .max(0);
        let found = (guess.saturating_sub(2).max(0)..=guess + 2).find_map(|k| {
            let true_start = zero + k as u64 * u64::from(CONFIG.window_ms);
            let want = ferry_firmware::sim::expected_windows(zero, CONFIG, true_start);
            let w = want.iter().find(|w| w.channel == ch)?;
            let same = *values
                == (
                    u64::from(w.count),
                    f64::from(w.sum),
                    f64::from(w.min),
                    f64::from(w.max),
                    f64::from(w.first),
                    f64::from(w.last),
                );
            same.then_some((k as u64, start_ms - true_start as i64))
        });
        let Some((k, err)) = found else {
            panic!(
                "{series} at {start_ms} ms (power-up {power_up}, {} ms after its true zero): \
                 not the waveform of any window near its place",
                start_ms - zero as i64
            )
        };
        assert!(
            err.abs() <= PLACEMENT_TOLERANCE_MS,
            "{series}: window {k} of power-up {power_up} stored {err} ms off its true time"
        );
        worst_ms = worst_ms.max(err.abs());
        per.entry((power_up, ch)).or_default().push(k);
    }
    let mut total = 0;
    for ((power_up, ch), ks) in &mut per {
        ks.sort_unstable();
        let want: Vec<u64> = (0..ks.len() as u64).collect();
        assert_eq!(
            ks, &want,
            "power-up {power_up} channel {ch}: a window is missing"
        );
        if *ch == 0 {
            total += ks.len() as u64;
        }
    }
    assert!(
        total >= journaled,
        "{total} windows stored of {journaled} journaled"
    );

    // The board never failed; a start-up found reports journaled and not
    // yet acked (the agent was down): they were carried across the power
    // loss and delivered once, at their true times.
    let (mut heap_peak, mut stack_peak) = (0u64, 0u64);
    let mut carried = 0u64;
    for log in &logs {
        if let Some(line) = resumed_line(log) {
            carried = carried.max(field(&line, "unacked "));
        }
        let text = std::fs::read_to_string(log).unwrap();
        for bad in [
            "panic",
            "journal refused",
            "no database",
            "no flash",
            "report log",
        ] {
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
        "journal board: {CYCLES} power losses with 2-5 s off, up to {carried} unacked reports carried across one, \
         {total} windows per channel stored over {} power-ups, each within {worst_ms} ms of its true time \
         (tolerance {PLACEMENT_TOLERANCE_MS} ms), heap peak {heap_peak} B, stack peak {stack_peak} B, {:.1} s",
        zeros.len(),
        began.elapsed().as_secs_f64()
    );
    if let Some(a) = agent {
        a.kill9();
    }
    collector.stop().await;
}
