//! Helpers for Ferry's end-to-end tests: finding the real binaries, running
//! them as child processes, and a collector in-process to stop and start.
//!
//! The harness ([`binary`], [`reserve_port`]) builds the binaries from the
//! current tree and hands out ports that cannot race; see [`harness`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub mod harness;
pub use harness::{binary, reserve_port};
use std::time::Duration;

use ferry_collector::admin::Admin;
use ferry_collector::query::QueryParams;

pub mod cluster;
pub mod producers;
pub mod servers;
pub mod systemd;

/// A collector data directory with an enrolled agent `gw`, whose bundle's
/// `agent.toml` points at a free QUIC port the collector will use.
pub struct Site {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// The collector's data directory.
    pub data: PathBuf,
    /// The collector's QUIC address.
    pub quic: SocketAddr,
    /// The agent's bundle (certificates and `agent.toml`).
    pub bundle: PathBuf,
}

impl Site {
    /// `init` and `enroll gw`.
    pub fn new() -> Self {
        let mut dir = tempfile::tempdir().expect("temporary directory");
        if std::env::var_os("FERRY_TEST_KEEP").is_some() {
            // Logs and data stay for a post-mortem (the path is printed).
            dir.disable_cleanup(true);
            println!(
                "FERRY_TEST_KEEP: the site stays in {}",
                dir.path().display()
            );
        }
        let data = dir.path().join("collector");
        ferry_collector::init(&ferry_collector::InitOptions::new(&data)).expect("init");
        let quic = free_udp_port();
        let bundle = dir.path().join("gw");
        let mut opts = ferry_collector::EnrollOptions::new(&data, "gw", &bundle);
        opts.address = quic.to_string();
        ferry_collector::enroll_with(&opts).expect("enroll");
        Self {
            dir,
            data,
            quic,
            bundle,
        }
    }

    /// Appends `extra` to the bundle's `agent.toml`; returns its path.
    pub fn agent_config(&self, extra: &str) -> PathBuf {
        let path = self.bundle.join("agent.toml");
        let mut text = std::fs::read_to_string(&path).expect("agent.toml");
        text.push_str(extra);
        std::fs::write(&path, text).expect("agent.toml");
        path
    }

    /// Starts the collector in-process on [`Site::quic`].
    pub async fn start_collector(&self) -> RunningCollector {
        self.start_collector_with(|_| {}).await
    }

    /// [`Site::start_collector`], with its configuration changed by `edit`
    /// first.
    pub async fn start_collector_with(
        &self,
        edit: impl FnOnce(&mut ferry_collector::Config),
    ) -> RunningCollector {
        let mut config = ferry_collector::Config::for_data_dir(&self.data);
        config.quic.listen = self.quic;
        edit(&mut config);
        let collector = ferry_collector::Collector::bind(config)
            .await
            .expect("bind");
        let handle = collector.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(collector.run(async {
            let _ = stopped.await;
        }));
        RunningCollector {
            handle: Some(handle),
            stop: Some(stop),
            task,
        }
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

/// A collector running in this process.
pub struct RunningCollector {
    /// Access to its store and metrics (dropped before it stops).
    pub handle: Option<ferry_collector::Handle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ferry_collector::Error>>,
}

impl RunningCollector {
    /// A collector started by the caller: its handle, the sender that stops
    /// it, and its task.
    pub fn new(
        handle: ferry_collector::Handle,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), ferry_collector::Error>>,
    ) -> Self {
        Self {
            handle: Some(handle),
            stop: Some(stop),
            task,
        }
    }

    /// Stops it gracefully and checks it stopped without error.
    pub async fn stop(mut self) {
        self.handle = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .await
            .expect("collector task")
            .expect("collector run");
    }
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `bin args…` with stderr into `log`.
    pub fn spawn(bin: &Path, args: &[&str], log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn");
        Proc(child)
    }

    /// SIGKILL, as power loss or the OOM killer would.
    pub fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port for a TCP server started later ([`reserve_port`]).
pub fn free_tcp_port() -> SocketAddr {
    reserve_port()
}

/// A loopback port for a UDP server started later ([`reserve_port`]).
pub fn free_udp_port() -> SocketAddr {
    reserve_port()
}

/// Raw readings the collector in `data` holds for series matching
/// `selector`, `(series, [(ts, value)])`; `None` while it cannot answer.
pub async fn stored(data: &Path, selector: &str) -> Option<Vec<(String, Vec<(i64, f64)>)>> {
    let admin = Admin::connect(data).await.ok()?;
    let res = admin
        .query(&QueryParams {
            selector: Some(selector.into()),
            from: Some("0".into()),
            to: Some("4000000000000000000".into()),
            step: None,
            kind: Some("raw".into()),
        })
        .await
        .ok()?;
    Some(res.into_iter().map(|s| (s.series, s.readings)).collect())
}

/// Starts `ferry-agent run --config <config>` (its log in `log`) and waits
/// until its admin endpoint `admin` answers.
pub async fn run_agent(config: &Path, admin: SocketAddr, log: &Path) -> Proc {
    let agent = Proc::spawn(
        &binary("ferry-agent"),
        &["run", "--config", config.to_str().expect("a UTF-8 path")],
        log,
    );
    until("agent up", || async {
        http_get(admin, "/status").await.is_some()
    })
    .await;
    agent
}

/// Polls `cond` until it holds (the bound only turns a hang into a failure).
pub async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..12_000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// GET `path` from an HTTP/1.0 endpoint; the body, or `None` on failure.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    http_get_with(addr, path, None).await
}

/// [`http_get`] with a bearer token (the collector's API needs one).
pub async fn http_get_with(addr: SocketAddr, path: &str, token: Option<&str>) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    let (head, rest) = body.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| rest.to_string())
}

/// A webhook receiver on 127.0.0.1:0: records every POSTed JSON body and
/// answers 200. Stopped when dropped.
pub struct WebhookReceiver {
    /// Its address.
    pub addr: SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Binds and serves.
    pub async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let bodies = bodies.clone();
                    tokio::spawn(async move {
                        let mut raw = Vec::new();
                        let mut buf = [0u8; 4096];
                        let body = loop {
                            let n = s.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            raw.extend_from_slice(&buf[..n]);
                            let text = String::from_utf8_lossy(&raw).to_string();
                            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                                let len: usize = head
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-length:")
                                            .and_then(|v| v.trim().parse().ok())
                                    })
                                    .unwrap_or(0);
                                if body.len() >= len {
                                    break body[..len].to_owned();
                                }
                            }
                        };
                        if let Ok(v) = serde_json::from_str(&body) {
                            bodies.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                    });
                }
            })
        };
        Self { addr, bodies, task }
    }

    /// Every body received so far, in arrival order.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One stored window: `(series, start_ns)` and `(count, sum, min, max,
/// first, last)`.
pub type StoredWindow = ((String, i64), (u64, f64, f64, f64, f64, f64));

/// Every window of the last hour the collector holds for `device`'s
/// temperature and humidity series, duplicates included; empty while the
/// collector is not answering.
pub async fn stored_windows(data: &Path, device: &str) -> Vec<StoredWindow> {
    let mut out = Vec::new();
    let Ok(admin) = Admin::connect(data).await else {
        return out;
    };
    for metric in ["temperature", "relative_humidity"] {
        let Ok(res) = admin
            .query(&QueryParams {
                selector: Some(format!("{metric}{{device=\"{device}\"}}")),
                from: Some("-1h".into()),
                to: Some("now".into()),
                step: None,
                kind: Some("aggregates".into()),
            })
            .await
        else {
            return Vec::new();
        };
        for s in res {
            for w in s.windows {
                out.push((
                    (s.series.clone(), w.start_ns),
                    (w.count, w.sum, w.min, w.max, w.first, w.last),
                ));
            }
        }
    }
    out
}

/// The emulated board's sensor channel of a stored series: 0 the SHT4x
/// temperature, 1 its humidity, 2 the TMP102.
pub fn board_channel(series: &str) -> u8 {
    if series.starts_with("relative_humidity") {
        1
    } else if series.contains("tmp102") {
        2
    } else {
        0
    }
}

/// Checks every stored window bit for bit against the emulated board's
/// deterministic waveform under `config` and returns the windows' starts in
/// device milliseconds per channel, sorted.
///
/// Device time 0 maps to the earliest window's start (the zero the device
/// was first synced to). A device may later move its zero earlier by
/// `RESYNC_MS` or more (its first sync answered a hello that waited in a
/// buffer: docs/protocol.md, Device time), which moves the windows after
/// it against the first ones by that much; such a window is found by its
/// exact values among the window starts nearby, and the moves are printed.
pub fn check_board_windows(
    got: &[StoredWindow],
    config: ferry_proto::link::LinkConfig,
) -> std::collections::BTreeMap<u8, Vec<u64>> {
    let offset = got
        .iter()
        .map(|((_, start), _)| *start)
        .min()
        .expect("windows");
    let window = i64::from(config.window_ms);
    let values = |ch: u8, start_ms: u64| {
        let want = ferry_firmware::sim::expected_windows(0, config, start_ms);
        let w = want
            .iter()
            .find(|w| w.channel == ch)
            .expect("channel window");
        (
            u64::from(w.count),
            f64::from(w.sum),
            f64::from(w.min),
            f64::from(w.max),
            f64::from(w.first),
            f64::from(w.last),
        )
    };
    let mut per_channel: std::collections::BTreeMap<u8, Vec<u64>> = Default::default();
    let mut moves = std::collections::BTreeSet::new();
    for ((series, start_ns), (count, sum, min, max, first, last)) in got {
        let rel = start_ns - offset;
        assert_eq!(
            rel % 1_000_000,
            0,
            "{series}: start not on a device millisecond"
        );
        let rel_ms = rel / 1_000_000;
        let ch = board_channel(series);
        let stored = (*count, *sum, *min, *max, *first, *last);
        // Where the device's zero did not move, the window is at `rel_ms`;
        // else at a window start within 5 s of it with exactly its values.
        let start_ms = if rel_ms % window == 0 && values(ch, rel_ms as u64) == stored {
            rel_ms
        } else {
            let near = (rel_ms.div_euclid(window) - 25..=rel_ms.div_euclid(window) + 25)
                .map(|k| k * window)
                .filter(|&d| d >= 0 && values(ch, d as u64) == stored)
                .collect::<Vec<_>>();
            assert_eq!(
                near.len(),
                1,
                "{series} window stored at {rel_ms} ms: {stored:?} is no window of the waveform \
                 at {rel_ms} ms ({:?}) nor exactly one within 5 s (found at {near:?})",
                values(ch, rel_ms.max(0) as u64),
            );
            moves.insert(rel_ms - near[0]);
            near[0]
        };
        per_channel.entry(ch).or_default().push(start_ms as u64);
    }
    if !moves.is_empty() {
        eprintln!("board windows after a move of the device's zero by {moves:?} ms");
    }
    for starts in per_channel.values_mut() {
        starts.sort_unstable();
    }
    per_channel
}
