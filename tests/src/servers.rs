//! The real servers the storage-sink tests write to, each started on a
//! free loopback port in a temporary directory and stopped when dropped:
//! Debian's `prometheus` (remote-write receiver on), a throw-away
//! PostgreSQL 15 cluster (`pg_virtualenv`), and DuckDB (PyPI, in the
//! virtual environment `scripts/sink-servers.sh` makes) to read Parquet.
//!
//! `scripts/sink-servers.sh` installs them; a missing one fails the test
//! that needs it with the command that installs it.

use std::collections::BTreeMap;
use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{Proc, free_tcp_port, http_get, until};

fn need(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).exists()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: run scripts/sink-servers.sh (scripts/test.sh does)"
    );
}

/// A Prometheus server with `--web.enable-remote-write-receiver`.
pub struct Prometheus {
    /// Its HTTP address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl Prometheus {
    /// Starts one; `ooo_window` sets `out_of_order_time_window` (e.g.
    /// `"1h"`), `None` leaves Prometheus' default (none).
    pub async fn start(ooo_window: Option<&str>) -> Self {
        need("prometheus");
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = String::from("global:\n  scrape_interval: 1h\n");
        if let Some(w) = ooo_window {
            config.push_str(&format!(
                "storage:\n  tsdb:\n    out_of_order_time_window: {w}\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("prometheus.yml");
        let mut p = Self {
            addr: free_tcp_port(),
            dir,
            proc: None,
        };
        p.resume().await;
        p
    }

    /// Stops the server (SIGKILL), keeping its data.
    pub fn pause(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts it again on the same port and data; returns once ready.
    pub async fn resume(&mut self) {
        let d = self.dir.path();
        let args = [
            format!("--config.file={}", d.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", d.join("data").display()),
            format!("--web.listen-address={}", self.addr),
            "--web.enable-remote-write-receiver".to_owned(),
            "--log.level=warn".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.proc = Some(Proc::spawn(
            Path::new("prometheus"),
            &args,
            &d.join("prometheus.log"),
        ));
        let addr = self.addr;
        until("Prometheus ready", || async move {
            http_get(addr, "/-/ready").await.is_some()
        })
        .await;
    }

    /// `/api/v1/query_range`: every series' `(labels, [(ts_ms, value)])`.
    pub async fn query_range(
        &self,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Vec<(BTreeMap<String, String>, Vec<(i64, f64)>)> {
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step={}",
            encode(query),
            seconds(start_ms),
            seconds(end_ms),
            seconds(step_ms)
        );
        let body = http_get(self.addr, &path)
            .await
            .unwrap_or_else(|| panic!("Prometheus answered no 200 to {path}"));
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .expect("metric")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect();
                let values = s["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|p| {
                        let t = p[0].as_f64().expect("time");
                        let v: f64 = p[1].as_str().expect("value").parse().expect("number");
                        ((t * 1000.0).round() as i64, v)
                    })
                    .collect();
                (labels, values)
            })
            .collect()
    }
}

fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// Percent-encodes a query-string value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A throw-away PostgreSQL 15 cluster (`pg_virtualenv -t`), on a free
/// port. Dropping it ends `pg_virtualenv`, which drops the cluster.
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Postgres {
    /// Creates and starts the cluster (a few seconds).
    pub fn start() -> Self {
        need("pg_virtualenv");
        let port = free_tcp_port().port();
        let mut child = Command::new("pg_virtualenv")
            .args(["-t", "-v", "15", "-o", &format!("port={port}")])
            .args(["sh", "-c", "env; echo READY; read line"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pg_virtualenv");
        let out = child.stdout.take().expect("stdout");
        let mut env = Vec::new();
        let mut lines = std::io::BufReader::new(out).lines();
        for line in lines.by_ref() {
            let line = line.expect("pg_virtualenv output");
            if line == "READY" {
                break;
            }
            if let Some((k, v)) = line.split_once('=')
                && (k.starts_with("PG") || k == "PG_CLUSTER_CONF_ROOT")
            {
                env.push((k.to_owned(), v.to_owned()));
            }
        }
        assert!(
            env.iter().any(|(k, _)| k == "PGPASSWORD"),
            "pg_virtualenv did not start a cluster"
        );
        // pg_virtualenv reports its clean-up on stdout: a closed pipe would
        // kill it (SIGPIPE) before it drops the cluster. Drain it.
        let drain = std::thread::spawn(move || lines.for_each(drop));
        Self {
            port,
            env,
            child: Some(child),
            drain: Some(drain),
        }
    }

    fn var(&self, k: &str) -> &str {
        self.env
            .iter()
            .find(|(n, _)| n == k)
            .map_or("", |(_, v)| v.as_str())
    }

    /// A connection string for the collector's `dsn`.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={}",
            self.port,
            self.var("PGUSER"),
            self.var("PGPASSWORD"),
            self.var("PGDATABASE")
        )
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PGHOST", "127.0.0.1");
        c
    }

    /// Runs `sql` with `psql -At` (fields separated by `|`); its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Postgres::psql`], `None` on failure (e.g. no table yet).
    pub fn try_psql(&self, sql: &str) -> Option<String> {
        let out = self
            .command("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ctl(&self, action: &str) {
        let out = self
            .command("pg_ctlcluster")
            .args(["15", "regress", action, "-m", "immediate"])
            .output()
            .expect("pg_ctlcluster");
        assert!(
            out.status.success() || action == "start",
            "pg_ctlcluster {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Turns TLS on (`ssl = on`, reloaded) with a fresh CA and a server
    /// certificate for 127.0.0.1 issued by it; returns the CA's PEM.
    pub fn enable_tls(&self, dir: &Path) -> String {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca_params, &ca_key);
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        let (crt, pem) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&crt, cert.pem()).expect("server.crt");
        std::fs::write(&pem, key.serialize_pem()).expect("server.key");
        // The server runs as `postgres`: the key must be its own, 0600.
        let out = Command::new("chown")
            .args(["postgres:", crt.to_str().unwrap(), pem.to_str().unwrap()])
            .output()
            .expect("chown");
        assert!(
            out.status.success(),
            "chown: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        self.psql(&format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            crt.display()
        ));
        self.psql(&format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            pem.display()
        ));
        self.psql("ALTER SYSTEM SET ssl = on");
        self.psql("SELECT pg_reload_conf()");
        until_sync("PostgreSQL serves TLS", || {
            self.try_psql("SHOW ssl").is_some_and(|s| s.trim() == "on")
        });
        ca.pem()
    }

    /// Stops the server (immediate shutdown), keeping its data.
    pub fn pause(&self) {
        self.ctl("stop");
    }

    /// Starts it again.
    pub fn resume(&self) {
        let out = self
            .command("pg_ctlcluster")
            .args(["15", "regress", "start"])
            .output()
            .expect("pg_ctlcluster");
        assert!(
            out.status.success(),
            "pg_ctlcluster start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(mut stdin) = c.stdin.take() {
                let _ = writeln!(stdin);
            }
            let _ = c.wait();
        }
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}

fn until_sync(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..12_000 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("never happened: {what}");
}

/// The Python with DuckDB: `$FERRY_DUCKDB_PYTHON`, or the virtual
/// environment `scripts/sink-servers.sh` makes in `target/sink-venv`.
pub fn duckdb_python() -> PathBuf {
    venv_python(
        "FERRY_DUCKDB_PYTHON",
        "sink-venv",
        "scripts/sink-servers.sh",
    )
}

/// `$<env>`, or the Python of the virtual environment `target/<venv>` that
/// `script` makes (the test fails naming the script when it is missing).
pub fn venv_python(env: &str, venv: &str, script: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable");
    let target = exe
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "target"))
        .expect("target directory")
        .to_path_buf();
    let py = target.join(venv).join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run {script} (scripts/test.sh does)",
        py.display()
    );
    py
}

/// Runs `sql` in DuckDB; each row's columns joined by `|`.
pub fn duckdb(sql: &str) -> Vec<String> {
    let script = "import duckdb, sys\n\
                  for row in duckdb.sql(sys.argv[1]).fetchall():\n    \
                  print('|'.join(repr(c) if isinstance(c, float) else str(c) for c in row))\n";
    let out = Command::new(duckdb_python())
        .args(["-c", script, sql])
        .output()
        .expect("python with duckdb");
    assert!(
        out.status.success(),
        "duckdb {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
