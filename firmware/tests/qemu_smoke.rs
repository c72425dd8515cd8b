//! Boots the emulated boards' RAM-ring image in `qemu-system-arm` with the
//! UART on a TCP socket and plays the gateway: deframes the hello and the
//! reports, checks every window against `ferry_firmware::sim`, withholds
//! acks until a report is resent, acks, pushes a config and checks the new
//! windows. Twice: on the Cortex-M4F (`mps2-an386`) and on the Cortex-M0
//! (`microbit`: ARMv6-M, no atomic read-modify-write, no FPU).
//!
//! Needs qemu-system-arm and the cross-built images; `scripts/firmware.sh
//! smoke` builds them and runs this (feature `qemu-smoke`). The image paths
//! are `$FERRY_MPS2_ELF` and `$FERRY_MICROBIT_ELF`, by default
//! `target/thumbv7em-none-eabihf/firmware/ferry-mps2-an386` and
//! `target/thumbv6m-none-eabi/firmware/ferry-microbit`.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_firmware::sim;
use ferry_proto::codec;
use ferry_proto::link::{Downlink, LinkAck, LinkConfig, Report, TimeSync, Uplink};
use ferry_proto::serial::{self, Deframer};

const DEVICE: &str = "f0e1d2c3b4a59687";
/// The gateway's clock at the board's uptime 0, in this test (Unix ms).
const WALL_ZERO: i64 = 1_700_000_000_000;
const BOOT: u32 = 4242;
const START: LinkConfig = LinkConfig {
    sample_period_ms: 20,
    window_ms: 200,
};
const NEXT: LinkConfig = LinkConfig {
    sample_period_ms: 10,
    window_ms: 100,
};
/// Bound on the whole exchange; the board exits by itself after 60 s.
const DEADLINE: Duration = Duration::from_secs(45);

/// An emulated board: QEMU machine and CPU, and where its image is.
struct Board {
    machine: &'static str,
    cpu: Option<&'static str>,
    elf_env: &'static str,
    elf: &'static str,
}

const MPS2_AN386: Board = Board {
    machine: "mps2-an386",
    cpu: Some("cortex-m4"),
    elf_env: "FERRY_MPS2_ELF",
    elf: "thumbv7em-none-eabihf/firmware/ferry-mps2-an386",
};

const MICROBIT: Board = Board {
    machine: "microbit",
    cpu: None,
    elf_env: "FERRY_MICROBIT_ELF",
    elf: "thumbv6m-none-eabi/firmware/ferry-microbit",
};

fn elf(board: &Board) -> PathBuf {
    if let Some(p) = std::env::var_os(board.elf_env) {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join(board.elf)
}

/// Kills QEMU however the test ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Qemu {
    fn stderr(&mut self) -> String {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut s = String::new();
        if let Some(e) = self.0.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

fn send(stream: &mut TcpStream, msg: &Downlink) {
    let mut payload = [0u8; 64];
    let n = codec::to_slice(msg, &mut payload).unwrap();
    let mut frame = [0u8; 80];
    let m = serial::encode_frame(&payload[..n], &mut frame).unwrap();
    stream.write_all(&frame[..m]).unwrap();
}

#[derive(Debug, PartialEq)]
enum Phase {
    /// No acks yet: wait until report 1 comes a second time.
    WithholdAcks,
    /// Acking everything; config sent, waiting for windows of the new length.
    Acking,
}

#[test]
fn cortex_m4_board_streams_predicted_windows_and_obeys_acks_and_config() {
    smoke(&MPS2_AN386);
}

#[test]
fn cortex_m0_board_streams_predicted_windows_and_obeys_acks_and_config() {
    smoke(&MICROBIT);
}

fn smoke(board: &Board) {
    match Command::new("qemu-system-arm").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "qemu-system-arm is not installed or does not run: apt-get install qemu-system-arm \
             (this test must not be skipped)"
        ),
    }
    let elf = elf(board);
    assert!(
        elf.is_file(),
        "no firmware image at {}: build it with scripts/firmware.sh build (or set {})",
        elf.display(),
        board.elf_env
    );

    // QEMU connects to our listener: the port is ours before QEMU starts.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let semihosting = format!(
        "enable=on,target=native,arg=ferry,arg=device={DEVICE},arg=boot={BOOT},arg=period={},arg=window={},\
         arg=resend=300,arg=heartbeat=500,arg=exit_after=60000",
        START.sample_period_ms, START.window_ms
    );
    let mut cmd = Command::new("qemu-system-arm");
    cmd.args(["-machine", board.machine]);
    if let Some(cpu) = board.cpu {
        cmd.args(["-cpu", cpu]);
    }
    let child = cmd
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
        .spawn()
        .expect("start qemu-system-arm");
    let mut qemu = Qemu(child);
    listener.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if let Ok(Some(status)) = qemu.0.try_wait() {
                    panic!(
                        "qemu exited with {status} before connecting: {}",
                        qemu.stderr()
                    );
                }
                assert!(started.elapsed() < DEADLINE, "qemu never connected");
                // Waiting for another process to start, bounded by DEADLINE.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let mut deframer = Deframer::new();
    let mut hello = None;
    let mut reports: Vec<Report> = Vec::new(); // first copy of each seq, in order
    let mut report1_copies = 0;
    let mut heartbeats = Vec::new();
    let mut phase = Phase::WithholdAcks;
    let mut epoch = 0u64;
    let mut config = START;
    let mut new_windows = 0;
    let mut buf = [0u8; 512];
    'run: loop {
        if started.elapsed() > DEADLINE {
            panic!(
                "timed out in {phase:?} with {} reports; qemu said: {}",
                reports.len(),
                qemu.stderr()
            );
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => panic!("qemu closed the link; it said: {}", qemu.stderr()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("read: {e}"),
        };
        for &b in &buf[..n] {
            let Some(frame) = deframer.push(b) else {
                continue;
            };
            let payload = frame.unwrap_or_else(|e| panic!("bad frame from the board: {e}"));
            match codec::from_bytes::<Uplink>("Uplink", payload).unwrap() {
                Uplink::Hello(h) => {
                    assert_eq!(h.device_id.to_string(), DEVICE);
                    assert_eq!(h.boot, BOOT);
                    assert_eq!(h.power_up, BOOT, "a RAM-ring board's power-up is its boot");
                    assert_eq!(h.channels.len(), 3);
                    // The gateway's clock, in answer: reports wait for it.
                    let sync = TimeSync {
                        power_up: h.power_up,
                        uptime_ms: h.uptime_ms,
                        wall_ms: WALL_ZERO + h.uptime_ms as i64,
                    };
                    send(&mut stream, &Downlink::TimeSync(sync));
                    hello.get_or_insert(h);
                }
                Uplink::Heartbeat(h) => {
                    assert_eq!(h.dropped, 0);
                    heartbeats.push(h);
                }
                Uplink::Report(r) => {
                    assert!(hello.is_some(), "report before hello");
                    assert_eq!(
                        (r.time.power_up, r.time.wall_at_zero_ms),
                        (BOOT, WALL_ZERO),
                        "report {} placed by the sync",
                        r.seq
                    );
                    if let Some(first) = reports.get(r.seq as usize - 1) {
                        // A resend: same content.
                        assert_eq!(first, &r);
                        if r.seq == 1 {
                            report1_copies += 1;
                        }
                        continue;
                    }
                    assert_eq!(r.seq as usize, reports.len() + 1, "sequence gap");
                    let start = r.windows[0].start_ms;
                    if let Some(prev) = reports.last() {
                        let p = prev.windows[0];
                        assert_eq!(
                            start,
                            p.start_ms + u64::from(p.len_ms),
                            "windows not contiguous"
                        );
                    }
                    if r.windows[0].len_ms == NEXT.window_ms && config == START {
                        config = NEXT;
                        epoch = start;
                    }
                    let want = sim::expected_windows(epoch, config, start);
                    assert_eq!(
                        &r.windows[..],
                        &want[..],
                        "report {} differs from the waveform",
                        r.seq
                    );
                    if r.seq == 1 {
                        report1_copies += 1;
                    }
                    if config == NEXT {
                        new_windows += 1;
                    }
                    reports.push(r);
                }
            }
        }
        if phase == Phase::WithholdAcks && report1_copies >= 2 {
            phase = Phase::Acking;
            send(&mut stream, &Downlink::Config(NEXT));
        }
        if phase == Phase::Acking && !reports.is_empty() {
            send(
                &mut stream,
                &Downlink::Ack(LinkAck {
                    boot: BOOT,
                    up_to: reports.len() as u32,
                }),
            );
        }
        if new_windows >= 5 {
            break 'run;
        }
    }
    assert!(!heartbeats.is_empty(), "heartbeats every 500 ms");
    assert_eq!(
        hello.unwrap().firmware.as_str(),
        ferry_firmware::node::FIRMWARE
    );
    let log = qemu.stderr();
    assert!(
        log.contains(&format!("device {DEVICE} boot {BOOT}")),
        "{log}"
    );
}
