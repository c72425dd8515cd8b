//! What the producer tests share (docs/producers.md): the Python with the
//! real client libraries, a collector with its HTTP API and a read token,
//! and exact reads of what it stored.

use std::net::SocketAddr;
use std::path::PathBuf;

use ferry_proto::query::SeriesResult;

use crate::{Site, http_get_with};

/// The Python with `paho-mqtt` and `influxdb-client`:
/// `$FERRY_PRODUCERS_PYTHON`, or the virtual environment
/// `scripts/producers.sh` makes in `target/producers-venv`.
pub fn producers_python() -> PathBuf {
    crate::servers::venv_python(
        "FERRY_PRODUCERS_PYTHON",
        "producers-venv",
        "scripts/producers.sh",
    )
}

/// Debian's Mosquitto broker.
pub fn mosquitto() -> PathBuf {
    let path = PathBuf::from("/usr/sbin/mosquitto");
    assert!(
        path.exists(),
        "{} is missing: run scripts/producers.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A collector running in this process with its HTTP API on a port of its
/// own, and a read token for that API (made as an operator makes one).
pub struct ApiCollector {
    /// The collector (stop it with [`crate::RunningCollector::stop`]).
    pub running: crate::RunningCollector,
    /// Its HTTP API.
    pub http: SocketAddr,
    /// A read token.
    pub token: String,
}

impl ApiCollector {
    /// Starts the collector of `site` with its HTTP API on 127.0.0.1:0.
    pub async fn start(site: &Site) -> Self {
        let mut config = ferry_collector::Config::for_data_dir(&site.data);
        config.quic.listen = site.quic;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let collector = ferry_collector::Collector::bind(config)
            .await
            .expect("bind");
        let http = collector.http_addr();
        let handle = collector.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(collector.run(async {
            let _ = stopped.await;
        }));
        let running = crate::RunningCollector::new(handle, stop, task);
        // The CLI finds a running server by the address file it writes.
        let addr_file = site.data.join(ferry_collector::admin::ADDR_FILE);
        crate::until("collector HTTP API up", || async {
            std::fs::read_to_string(&addr_file).is_ok_and(|a| a.trim() == http.to_string())
                && crate::http_get(http, "/healthz").await.is_some()
        })
        .await;
        let admin = ferry_collector::admin::Admin::connect(&site.data)
            .await
            .expect("admin connection");
        let token = admin
            .create_token("producers", ferry_collector::auth::Role::Read)
            .await
            .expect("read token")
            .token;
        Self {
            running,
            http,
            token,
        }
    }

    /// Raw readings of the series matching `selector`, through the HTTP
    /// query API (values exact: the API writes them as strings); `None`
    /// while it does not answer.
    pub async fn raw(&self, selector: &str) -> Option<Vec<SeriesResult>> {
        let path = format!(
            "/api/v1/query?match={}&from=0&to=4000000000000000000&kind=raw",
            encode(selector)
        );
        let body = http_get_with(self.http, &path, Some(&self.token)).await?;
        serde_json::from_str(&body).ok()
    }

    /// Readings stored for `selector` in all series.
    pub async fn count(&self, selector: &str) -> usize {
        self.raw(selector)
            .await
            .map_or(0, |s| s.iter().map(|s| s.readings.len()).sum())
    }
}

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
