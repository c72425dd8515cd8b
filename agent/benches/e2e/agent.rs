//! The agent as a child process: its configuration, metrics, RSS and CPU.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::probe::{cpu_s, http_get, metric, metric_f64, status_kib};

/// The agent binary to run: `FERRY_BENCH_AGENT_BIN` if set (e.g. a release
/// build, to profile it); else the deployed build (profile `edge`), built
/// now, for `cargo bench`; the test build for `cargo test --benches`.
pub fn agent_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("FERRY_BENCH_AGENT_BIN") {
                return PathBuf::from(bin);
            }
            if !std::env::args().any(|a| a == "--bench") {
                return PathBuf::from(env!("CARGO_BIN_EXE_ferry-agent"));
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            eprintln!(
                "e2e: building the agent as deployed: cargo build --profile edge -p ferry-agent …"
            );
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--profile",
                    "edge",
                    "-p",
                    "ferry-agent",
                    "--bin",
                    "ferry-agent",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("running cargo");
            assert!(status.success(), "building the agent (profile edge) failed");
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
                PathBuf::from,
            );
            target.join("edge/ferry-agent")
        })
        .clone()
}

pub struct Agent {
    pub child: Child,
    pub influx: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// A port of this process's own on 127.0.0.1 (the shared test harness).
pub fn free_tcp_port() -> SocketAddr {
    ferry_tests::reserve_port()
}

/// The `[collector]` table of an agent enrolled as `bench` in `bundle`.
pub fn collector_table(collector: SocketAddr) -> String {
    format!(
        "[collector]\naddress = \"{collector}\"\nserver_name = \"localhost\"\nca = \"ca.crt\"\ncert = \"agent.crt\"\nkey = \"agent.key\"\nagent_id = \"bench\"\n"
    )
}

/// Name of the MQTT source's client id (the broker's log names it).
pub const MQTT_CLIENT: &str = "ferry-bench-agent";
/// Mosquitto's window of unacknowledged QoS 1 messages to the agent.
pub const MQTT_INFLIGHT: u32 = 1000;

impl Agent {
    pub fn start(dir: &Path, collector: SocketAddr, mqtt: Option<SocketAddr>) -> Self {
        let bundle = dir.join("bundle");
        ferry_collector::enroll(&dir.join("collector"), "bench", &bundle).expect("enroll");
        let (influx, http, admin) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
        let config = bundle.join("bench-agent.toml");
        let mqtt = mqtt.map_or_else(String::new, |broker| {
            format!(
                "[[mqtt]]\nname = \"bench-mqtt\"\nbroker = \"{broker}\"\nclient_id = \"{MQTT_CLIENT}\"\n\
                 topics = [\"bench/#\"]\nformat = \"line\"\ntopic_tag = \"\"\n"
            )
        });
        std::fs::write(
            &config,
            format!(
                "[agent]\ndata_dir = \"agent-data\"\nhealth_interval = \"1s\"\n\
                 {}\
                 [admin]\nlisten = \"{admin}\"\n\
                 [[influx_tcp]]\nlisten = \"{influx}\"\n\
                 [[influx_http]]\nlisten = \"{http}\"\n\
                 {mqtt}{}",
                collector_table(collector),
                // Tuning experiments: tables appended to agent.toml, e.g.
                // FERRY_BENCH_AGENT_TOML=$'[shipping]\nmax_in_flight = "8 MiB"'.
                std::env::var("FERRY_BENCH_AGENT_TOML").unwrap_or_default()
            ),
        )
        .expect("agent config");
        Self::spawn(&config, dir.join("agent.log"), influx, http, admin)
    }

    pub fn spawn(
        config: &Path,
        log: PathBuf,
        influx: SocketAddr,
        http: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        let child = Command::new(agent_binary())
            .arg("run")
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("FERRY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("agent log"),
            )
            .spawn()
            .expect("starting ferry-agent");
        Self {
            child,
            influx,
            http,
            admin,
            log,
        }
    }

    pub fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("e2e: FAILED: {what}; agent log:\n{}", tail.join("\n"));
    }

    /// Waits until the admin endpoint answers (bounded).
    pub fn wait_admin(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if http_get(self.admin, "/metrics").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fail("the agent's admin endpoint did not answer within 60 s");
    }

    /// Waits until the admin endpoint answers and the shipper is connected.
    pub fn wait_connected(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(text) = http_get(self.admin, "/metrics")
                && metric(&text, "ferry_agent_connected") == 1
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fail("the agent did not connect to the collector within 60 s");
    }

    pub fn metrics(&self) -> AgentFigures {
        let text = http_get(self.admin, "/metrics")
            .unwrap_or_else(|| self.fail("the agent's /metrics did not answer"));
        AgentFigures {
            readings_in: metric(&text, "ferry_agent_readings_in_total"),
            readings_out: metric(&text, "ferry_agent_readings_out_total"),
            wire_bytes: metric(&text, "ferry_agent_wire_bytes_total"),
            batches_stored: metric(&text, "ferry_agent_batches_stored_total"),
            commits: metric(&text, "ferry_agent_commit_groups_total"),
            commit_s: metric_f64(&text, "ferry_agent_commit_seconds_sum"),
            acks: metric(&text, "ferry_agent_ack_seconds_count"),
            ack_s: metric_f64(&text, "ferry_agent_ack_seconds_sum"),
            journal_held: metric(&text, "ferry_agent_journal_bytes"),
        }
    }

    /// The agent's figures once it has processed the acks of `readings_out`
    /// readings (it counts them when it commits their acks, just after the
    /// collector counted them stored).
    pub fn settled(&self, readings_out: u64) -> AgentFigures {
        let started = Instant::now();
        loop {
            let m = self.metrics();
            if m.readings_out >= readings_out || started.elapsed() > Duration::from_secs(10) {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn rss_kib(&self) -> u64 {
        status_kib(&self.child.id().to_string(), "VmRSS:")
    }

    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(&self.child.id().to_string(), "VmHWM:")
    }

    /// Bytes the agent caused to be written to storage so far
    /// (`/proc/<pid>/io`): its journal.
    pub fn written(&self) -> u64 {
        let io =
            std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).unwrap_or_default();
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// User + system CPU seconds of the agent so far.
    pub fn cpu_s(&self) -> f64 {
        cpu_s(self.child.id())
    }

    /// SIGTERM (graceful stop), then SIGKILL if it hangs.
    pub fn stop(mut self) {
        // What the agent logged (warnings by default, or FERRY_BENCH_LOG).
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for line in lines.iter().skip(lines.len().saturating_sub(20)) {
            eprintln!("e2e: agent log: {line}");
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("e2e: the agent did not stop within 30 s of SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // On a panic path: never leave the child behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct AgentFigures {
    pub readings_in: u64,
    pub readings_out: u64,
    pub wire_bytes: u64,
    pub batches_stored: u64,
    pub commits: u64,
    /// Seconds spent in journal commits.
    pub commit_s: f64,
    /// Batches acked, and seconds from sending them to their acks.
    pub acks: u64,
    pub ack_s: f64,
    /// Bytes of batches and pending rows the journal holds
    /// (`ferry_agent_journal_bytes`, what its budget counts; the file is
    /// larger: redb grows it in steps and keeps free pages).
    pub journal_held: u64,
}

impl AgentFigures {
    /// Journal commits, readings per commit, mean commit ms, mean batch
    /// send → ack ms, since `before`.
    pub fn since(&self, before: &AgentFigures) -> String {
        let commits = self.commits - before.commits;
        let acks = self.acks - before.acks;
        format!(
            "{commits} journal commits ({:.0} readings each, mean {:.2} ms); {acks} batches, send → ack mean {:.2} ms",
            (self.readings_in - before.readings_in) as f64 / commits.max(1) as f64,
            (self.commit_s - before.commit_s) * 1e3 / commits.max(1) as f64,
            (self.ack_s - before.ack_s) * 1e3 / acks.max(1) as f64,
        )
    }
}
