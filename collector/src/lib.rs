//! Ferry's central collector: agents connect over QUIC with client
//! certificates, ship batches, and get an ack for each once it is durably
//! stored; operators query readings over HTTP and manage agents with the
//! `ferry-collector` CLI.
//!
//! # Layout
//! - [`config`]: `collector.toml`, every bound in one place;
//! - [`pki`]: the collector's CA, `init`, `enroll`, and the client
//!   certificate verifier (identity = certificate Common Name; revocation);
//! - `server`: the QUIC endpoint: hello/welcome, one batch per stream;
//! - [`ingest`]: decompress, decode, validate, split into chunks (plain
//!   functions with a `now` parameter), rate limiter, log limiter;
//! - `writer`: the single writer thread doing group commits;
//! - [`fanout`]: the event log, processors (threshold, rate, anomaly,
//!   offline), alerts and sinks (webhook, log) — docs/alerts.md;
//! - [`store`]: the redb layout (docs/storage.md), dedupe, queries,
//!   maintenance (compaction, downsampling, retention); `maintenance`: the
//!   task that runs it on a schedule;
//! - [`query`]: selectors and time ranges;
//! - `http`: the axum API ([`json`]: how it writes timestamps and values);
//!   [`auth`]: operators' tokens and roles, which request needs which;
//!   [`admin`]: the CLI's access, through the running server or the data
//!   directory; [`metrics`]: Prometheus;
//! - [`systemd`]: readiness, the watchdog and stop notices under a
//!   `Type=notify` unit (`packaging/collector/`).
//!
//! # Ports
//! QUIC on UDP [`config::DEFAULT_QUIC_PORT`] (7410), HTTP on TCP
//! [`config::DEFAULT_HTTP_PORT`] (7411, loopback by default).
//!
//! # Embedding (and tests)
//! ```no_run
//! # async fn demo() -> Result<(), ferry_collector::Error> {
//! use ferry_collector::{Collector, Config, init, enroll, pki::InitOptions};
//! let dir = std::path::Path::new("/tmp/ferry-demo");
//! init(&InitOptions::new(dir.join("data")))?;
//! let bundle = enroll(&dir.join("data"), "gw-1", &dir.join("gw-1"))?;
//! let collector = Collector::bind(Config::for_data_dir(dir.join("data"))).await?;
//! println!("QUIC on {}, HTTP on {}", collector.quic_addr(), collector.http_addr());
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(collector.run(async { let _ = stopped.await; }));
//! // ... connect an agent with bundle.cert / bundle.key / bundle.ca ...
//! let _ = stop.send(());
//! server.await.expect("collector task")?;
//! # Ok(()) }
//! ```
//!
//! **Architecture invariant:** an ack is sent only after the write
//! transaction holding the batch and its dedupe entry has committed durably.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod fanout;
pub mod fleet;
mod http;
pub mod ingest;
pub mod json;
mod maintenance;
pub mod metrics;
pub mod pki;
pub mod prometheus;
pub mod query;
pub mod report;
pub mod series_ids;
mod server;
pub mod store;
pub mod systemd;
mod udp;
mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use config::{Config, ConfigError};
pub use pki::{Bundle, EnrollOptions, InitOptions, PkiError, enroll, enroll_with, init};
pub use server::{LiveConnection, MaintainError, ReloadError, ReloadReport, RevokeError};
pub use store::{MaintenanceReport, RetentionPlan, Store, StoreError};
pub use writer::Faults;

/// Name of the store file in the data directory.
pub const STORE_FILE: &str = "ferry.redb";

/// Why the collector could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates could not be loaded or issued.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket could not be bound or used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The QUIC or TLS setup failed.
    #[error("QUIC setup: {0}")]
    Quic(String),
    /// The operators' tokens could not be loaded, or the local admin
    /// credential written.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// Cluster mode: the log could not be reached or set up.
    #[error(transparent)]
    Cluster(#[from] cluster::LogError),
}

/// Resolves when the watched flag is true (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Nanoseconds since the Unix epoch by the system clock (the one clock,
/// [`ferry_clock`]).
pub use ferry_clock::now_ns;

/// A bound, not yet running collector. See the crate docs for an example.
#[derive(Debug)]
pub struct Collector {
    endpoint: quinn::Endpoint,
    http: tokio::net::TcpListener,
    quic_addr: SocketAddr,
    http_addr: SocketAddr,
    shared: Arc<server::Shared>,
    writer_rx: mpsc::Receiver<writer::Command>,
    writer_state: store::WriterState,
    socket_closed: oneshot::Receiver<()>,
}

/// A handle to a running collector, for embedding and tests. It keeps the
/// store open: drop every handle before opening the same data directory
/// again (a restart in a test, or the CLI's fallback).
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<server::Shared>,
}

impl Handle {
    /// Revokes an agent, as `POST /api/v1/agents/{id}/revoke` does: recorded
    /// durably, open connections closed with `close::REVOKED`.
    pub async fn revoke(&self, agent: &str) -> Result<bool, RevokeError> {
        self.shared.revoke(agent).await
    }

    /// Runs maintenance passes with `plan` until one leaves nothing more
    /// to do, and returns their summed report.
    pub async fn maintain(&self, plan: RetentionPlan) -> Result<MaintenanceReport, MaintainError> {
        let mut total = MaintenanceReport::default();
        loop {
            let (report, more) = self.shared.maintain(plan).await?;
            total.add(&report);
            if !more {
                return Ok(total);
            }
        }
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.shared.metrics
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Live agent connections.
    pub fn live(&self) -> Vec<LiveConnection> {
        self.shared.live()
    }

    /// Re-reads the configuration file and applies its `[processor]` and
    /// `[sink]` tables, as SIGHUP and `ferry-collector reload` do. On error
    /// the running configuration stays.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.shared.reload().await
    }

    /// The fan-out bus: heads, cursors, lag.
    pub fn bus(&self) -> &fanout::Bus {
        &self.shared.bus
    }

    /// True once the store's writer has taken a ping from its queue (after
    /// everything queued before it); false if it has stopped. A writer stuck
    /// in a commit never answers: the systemd watchdog ([`systemd`]) waits
    /// for this with a deadline.
    pub async fn writer_alive(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .shared
            .writer
            .send(writer::Command::Ping(tx))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.is_ok()
    }

    /// The local admin credential (also in `<data_dir>/admin.token`), for
    /// embedding and tests that call the HTTP API.
    pub fn admin_token(&self) -> auth::Token {
        self.shared.auth.local_token()
    }
}

impl Collector {
    /// Opens the store, loads the certificates from `config.data_dir`
    /// (created by [`init`]) and binds both sockets. Must run inside a tokio
    /// runtime. Listening on port 0 picks a free port: ask
    /// [`Collector::quic_addr`] and [`Collector::http_addr`].
    pub async fn bind(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let store = Arc::new(Store::open(&config.store_path())?);
        let revoked = Arc::new(pki::RevocationList::new(store.revoked()?));
        let metrics = Arc::new(metrics::Metrics::new());
        let tls = pki::server_tls(&config.data_dir, revoked.clone())?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| Error::Quic(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // One extra stream for the hello.
        transport
            .max_concurrent_bidi_streams((config.limits.max_streams_per_connection + 1).into());
        transport.max_concurrent_uni_streams(0u8.into());
        transport.max_idle_timeout(Some(
            config
                .quic
                .idle_timeout
                .try_into()
                .map_err(|_| Error::Quic("quic.idle_timeout is too long".into()))?,
        ));
        transport.keep_alive_interval(Some(config.quic.keep_alive));
        server_config.transport_config(Arc::new(transport));

        let socket = std::net::UdpSocket::bind(config.quic.listen).map_err(|source| Error::Io {
            what: format!("binding QUIC on udp {}", config.quic.listen),
            source,
        })?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let wrapped = runtime
            .wrap_udp_socket(socket)
            .map_err(|source| Error::Io {
                what: "QUIC socket".into(),
                source,
            })?;
        let (socket_closed_tx, socket_closed) = oneshot::channel();
        let counting = Arc::new(udp::CountingSocket::new(
            wrapped,
            metrics.clone(),
            socket_closed_tx,
        ));
        let mut endpoint_config = quinn::EndpointConfig::default();
        // Peers must keep the fixed bit set, so a clear bit marks garbage.
        endpoint_config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            counting,
            runtime,
        )
        .map_err(|source| Error::Io {
            what: "QUIC endpoint".into(),
            source,
        })?;
        let quic_addr = endpoint.local_addr().map_err(|source| Error::Io {
            what: "QUIC address".into(),
            source,
        })?;
        let http = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| Error::Io {
                what: format!("binding HTTP on tcp {}", config.http.listen),
                source,
            })?;
        let http_addr = http.local_addr().map_err(|source| Error::Io {
            what: "HTTP address".into(),
            source,
        })?;
        let writer_state = store.writer_state()?;
        metrics.series.set(writer_state.series_count());
        metrics.store_chunk_bytes.set(writer_state.chunk_bytes());
        let (event_head, alert_head) = store.fanout_heads()?;
        let bus = Arc::new(fanout::Bus::new(event_head, alert_head));
        // Before the first batch can arrive: the event log is written from
        // the first stored batch on for its subscribers (the processors, if
        // they have rules, and the storage sinks), whose budgets apply at
        // once and who hold the log from their durable cursors.
        let cursors = store.cursors()?;
        if !config.processor.is_empty() {
            let cursor = cursors.get(fanout::PROCESSORS).copied().unwrap_or_default();
            bus.subscribe(
                fanout::PROCESSORS,
                fanout::bus::LogKind::Events,
                cursor,
                config.processor.lag_budget,
            );
        }
        fanout::sinks::subscribe_storage_sinks(&bus, &cursors, &config.sink);
        // A new storage sink's starting point is durable before any batch
        // can be stored after it.
        for s in &config.sink.storage {
            if !cursors.contains_key(&s.key()) {
                store.commit_sink(&store::SinkCommit {
                    name: s.name.clone(),
                    cursor: event_head,
                    reads_log: true,
                    ..store::SinkCommit::default()
                })?;
            }
        }
        let (writer_tx, writer_rx) = mpsc::channel(config.storage.max_batches_per_commit * 2);
        // After the store: its lock keeps the CLI from editing tokens.json
        // behind a running server.
        let gate = auth::Gate::open(config.http.auth, &config.data_dir)?;
        let log = match &config.cluster {
            Some(c) => {
                let log: Arc<dyn cluster::Log> =
                    Arc::new(cluster::nats::JetStream::connect(c).await?);
                Some(log)
            }
            None => None,
        };
        let shared = Arc::new(server::Shared::new(
            config, store, writer_tx, metrics, revoked, bus, gate, log,
        ));
        Ok(Self {
            endpoint,
            http,
            quic_addr,
            http_addr,
            shared,
            writer_rx,
            writer_state,
            socket_closed,
        })
    }

    /// The bound QUIC (UDP) address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The bound HTTP (TCP) address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// A handle for revocation, maintenance and metrics while running.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, finishes
    /// in-flight batches (committed and acked), closes connections with
    /// `close::SHUTDOWN` and returns once the store is committed and both
    /// ports are released (a restart may bind the same addresses).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        self.run_with_ready(shutdown, || {}).await
    }

    /// [`Collector::run`], calling `ready` once the server is up: store open,
    /// both sockets bound, the writer, the HTTP server and the accept loop
    /// started and `collector.http` written (`ferry-collector run` tells
    /// systemd `READY=1` there).
    pub async fn run_with_ready(
        self,
        shutdown: impl Future<Output = ()>,
        ready: impl FnOnce(),
    ) -> Result<(), Error> {
        let Collector {
            endpoint,
            http,
            quic_addr,
            http_addr,
            shared,
            writer_rx,
            writer_state,
            socket_closed,
        } = self;
        let config = shared.config.clone();
        let writer = {
            let store = shared.store.clone();
            let metrics = shared.metrics.clone();
            let faults = config.faults.clone();
            let max_group = config.storage.max_batches_per_commit;
            let max_series = config.limits.max_series;
            let dedupe = store::DedupeLimits {
                max_ranges: config.limits.max_dedupe_ranges,
                max_epochs: config.limits.max_epochs_per_agent,
            };
            let bus = shared.bus.clone();
            std::thread::Builder::new()
                .name("ferry-writer".into())
                .spawn(move || {
                    writer::run(
                        store,
                        writer_state,
                        writer_rx,
                        writer::WriterLimits {
                            max_group,
                            max_series,
                            dedupe,
                        },
                        faults,
                        metrics,
                        bus,
                    )
                })
                .map_err(|source| Error::Io {
                    what: "starting the writer thread".into(),
                    source,
                })?
        };
        let addr_file = config.data_dir.join(admin::ADDR_FILE);
        if let Err(e) = std::fs::write(&addr_file, format!("{http_addr}\n")) {
            tracing::warn!(
                "cannot write {}: {e}; the CLI will not find this server",
                addr_file.display()
            );
        }
        tracing::info!(%quic_addr, %http_addr, data_dir = %config.data_dir.display(), auth = ?config.http.auth, tokens = shared.auth.list().len(), "collector running");

        let (stop_tx, stop_rx) = watch::channel(false);
        let http_task = {
            let app = http::router(shared.clone());
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let serve = axum::serve(
                    http,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
                if let Err(e) = serve.await {
                    tracing::error!("HTTP server: {e}");
                }
            })
        };
        let maintenance = tokio::spawn(maintenance::run(
            shared.clone(),
            config.storage.maintenance_interval,
            stop_rx.clone(),
        ));
        let processors = tokio::spawn(fanout::run::processors(
            shared.clone(),
            shared.fanout.processors.subscribe(),
            stop_rx.clone(),
        ));
        let sinks = tokio::spawn(fanout::run::sinks(
            shared.clone(),
            shared.fanout.sinks.subscribe(),
            stop_rx.clone(),
        ));
        let cluster_status = shared.log.clone().map(|log| {
            tokio::spawn(cluster::worker::watch_status(
                shared.clone(),
                log,
                Duration::from_secs(2),
                stop_rx.clone(),
            ))
        });
        let accept = match (&shared.log, &config.cluster) {
            // A worker takes its records from the log, not from agents.
            (Some(log), Some(c)) if c.role == config::ClusterRole::Worker => {
                tokio::spawn(cluster::worker::run(
                    shared.clone(),
                    log.clone(),
                    c.consumer.clone().unwrap_or_default(),
                    stop_rx,
                ))
            }
            _ => tokio::spawn(server::accept_loop(
                endpoint.clone(),
                shared.clone(),
                stop_rx,
            )),
        };
        ready();

        shutdown.await;
        tracing::info!("shutting down: finishing in-flight batches");
        let _ = stop_tx.send(true);
        // Batches waiting for a lagging subscriber go ahead: they are
        // committed and acked, and the subscriber finds them at restart.
        shared.bus.close();
        let _ = accept.await;
        if let Some(t) = cluster_status {
            let _ = t.await;
        }
        let _ = processors.await;
        let _ = sinks.await;
        let _ = http_task.await;
        let _ = maintenance.await;
        endpoint.close(
            quinn::VarInt::from_u32(ferry_proto::session::close::SHUTDOWN),
            b"shutdown",
        );
        // Everything queued before Stop is committed and answered first.
        let _ = shared.writer.send(writer::Command::Stop).await;
        drop(shared);
        let joined = tokio::task::spawn_blocking(move || writer.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("the writer thread panicked");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        drop(endpoint);
        // Return only once the UDP port is free again, so that a restart on
        // the same address can bind it.
        if tokio::time::timeout(Duration::from_secs(5), socket_closed)
            .await
            .is_err()
        {
            tracing::warn!("the QUIC socket was not released within 5 s");
        }
        let _ = std::fs::remove_file(&addr_file);
        let _ = std::fs::remove_file(config.data_dir.join(auth::LOCAL_TOKEN_FILE));
        tracing::info!("collector stopped");
        Ok(())
    }
}
