//! The QUIC side: the state every connection task and the HTTP API share
//! (live connections, reported statuses, revocation, maintenance, reload).
//! Accepting connections and the hello exchange are in `server/session.rs`, one
//! batch per stream in `server/batch.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use ferry_proto::session::{AgentStatus, close};
use quinn::{Connection, VarInt};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::ingest::RateLimiter;
use crate::metrics::Metrics;
use crate::pki::RevocationList;
use crate::store::{MaintenanceReport, RetentionPlan, Store};
use crate::writer::Command;

mod batch;
mod handshake;
pub(crate) mod session;

pub use session::accept_loop;

/// A live agent connection, for `agents` and revocation.
#[derive(Debug, Clone)]
pub struct LiveConnection {
    /// Connection number (process-unique).
    pub id: u64,
    /// The agent.
    pub agent: String,
    /// Its address.
    pub remote: SocketAddr,
    /// When it connected, ns since the epoch.
    pub since_ns: i64,
    conn: Connection,
}

/// How often agents are asked for an [`AgentStatus`] (`Welcome.status_interval_ms`).
pub const STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The newest [`AgentStatus`] an agent sent, and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedStatus {
    /// When the collector received it, ns since the epoch (its clock).
    pub received_ns: i64,
    /// What the agent reported.
    pub status: AgentStatus,
}

/// State shared by every connection task and the HTTP API.
#[derive(Debug)]
pub struct Shared {
    pub(crate) config: Config,
    pub(crate) store: Arc<Store>,
    pub(crate) writer: mpsc::Sender<Command>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) revoked: Arc<RevocationList>,
    pub(crate) bus: Arc<crate::fanout::Bus>,
    pub(crate) fanout: crate::fanout::run::Control,
    pub(crate) auth: crate::auth::Gate,
    /// Cluster mode: the log front ends publish to and workers consume.
    pub(crate) log: Option<Arc<dyn crate::cluster::Log>>,
    live: Mutex<HashMap<u64, LiveConnection>>,
    /// The newest status of each agent that sent one since this process
    /// started (one entry per agent: bounded by the enrolled agents).
    statuses: Mutex<HashMap<String, ReportedStatus>>,
    next_conn: AtomicU64,
    rate: Mutex<RateLimiter>,
    /// Maintenance passes run one at a time (their work is prepared on a
    /// snapshot that must still hold when the writer applies it).
    maintenance: tokio::sync::Mutex<()>,
}

/// Why a revocation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// The agent id is not a valid id.
    #[error(transparent)]
    BadId(#[from] crate::pki::PkiError),
    /// The store could not record it.
    #[error("recording the revocation: {0}")]
    Store(crate::writer::WriterError),
    /// The server is stopping.
    #[error("the collector is shutting down")]
    ShuttingDown,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Config,
        store: Arc<Store>,
        writer: mpsc::Sender<Command>,
        metrics: Arc<Metrics>,
        revoked: Arc<RevocationList>,
        bus: Arc<crate::fanout::Bus>,
        auth: crate::auth::Gate,
        log: Option<Arc<dyn crate::cluster::Log>>,
    ) -> Self {
        let rate = RateLimiter::new(config.limits.agent_readings_per_sec);
        let fanout = crate::fanout::run::Control::new(&config.processor, &config.sink);
        Self {
            config,
            store,
            writer,
            metrics,
            revoked,
            bus,
            fanout,
            auth,
            log,
            live: Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            rate: Mutex::new(rate),
            maintenance: tokio::sync::Mutex::new(()),
        }
    }

    /// One maintenance pass: the work (decoding, merging, re-encoding
    /// chunks) is prepared on a blocking thread from a read snapshot, and
    /// only applying it takes the writer, so ingest commits carry on
    /// meanwhile. Returns the report and whether more work is waiting.
    pub(crate) async fn maintain(
        &self,
        plan: RetentionPlan,
    ) -> Result<(MaintenanceReport, bool), MaintainError> {
        let _one_at_a_time = self.maintenance.lock().await;
        let store = self.store.clone();
        let work = tokio::task::spawn_blocking(move || store.prepare_maintenance(&plan)).await??;
        let more = work.has_more();
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Command::Maintain {
                work,
                reply: Some(tx),
            })
            .await
            .map_err(|_| MaintainError::ShuttingDown)?;
        let report = rx
            .await
            .map_err(|_| MaintainError::ShuttingDown)?
            .map_err(MaintainError::Apply)?;
        Ok((report, more))
    }

    /// The newest status each agent reported, by agent.
    pub fn statuses(&self) -> HashMap<String, ReportedStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record_status(&self, agent: &str, status: AgentStatus) {
        self.metrics.set_agent_status(agent, &status);
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                agent.to_owned(),
                ReportedStatus {
                    received_ns: crate::now_ns(),
                    status,
                },
            );
    }

    /// Live connections, sorted by agent.
    pub fn live(&self) -> Vec<LiveConnection> {
        let mut v: Vec<_> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.agent.cmp(&b.agent).then(a.id.cmp(&b.id)));
        v
    }

    /// Revokes `agent`: durably recorded, refused at handshake from now on,
    /// and its open connections closed with `close::REVOKED`. True if it was
    /// not revoked before.
    pub async fn revoke(&self, agent: &str) -> Result<bool, RevokeError> {
        crate::pki::validate_agent_id(agent)?;
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Command::Revoke {
                agent: agent.to_owned(),
                reply: tx,
            })
            .await
            .map_err(|_| RevokeError::ShuttingDown)?;
        let changed = rx
            .await
            .map_err(|_| RevokeError::ShuttingDown)?
            .map_err(RevokeError::Store)?;
        self.revoked.insert(agent);
        self.metrics.revocations.inc();
        let conns: Vec<Connection> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|c| c.agent == agent)
            .map(|c| c.conn.clone())
            .collect();
        for conn in &conns {
            conn.close(VarInt::from_u32(close::REVOKED), b"agent revoked");
        }
        tracing::info!(agent, closed = conns.len(), "agent revoked");
        Ok(changed)
    }
}

/// Why a maintenance pass failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaintainError {
    /// Preparing the work on its blocking thread panicked or was cancelled.
    #[error("maintenance task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Reading the store to prepare the work failed.
    #[error(transparent)]
    Prepare(#[from] crate::store::StoreError),
    /// The writer could not apply the work (its commit failed).
    #[error("{0}")]
    Apply(crate::writer::WriterError),
    /// The server is stopping.
    #[error("the collector is shutting down")]
    ShuttingDown,
}

/// Why a reload was refused; the running configuration stays in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The collector was started from defaults, without a file.
    #[error("this collector was started without a configuration file: nothing to reload")]
    NoFile,
    /// Reading the file on its blocking thread panicked or was cancelled.
    #[error("reading the configuration: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The file does not load: unreadable, not TOML, an unknown key or a
    /// value out of range (the message names the file, line and key).
    #[error("{0} (the running configuration stays)")]
    Config(#[source] crate::config::ConfigError),
}

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    /// The file read.
    pub config: String,
    /// Processor rules now running, `kind/name`.
    pub rules: Vec<String>,
    /// Sinks now running.
    pub sinks: Vec<String>,
}

impl Shared {
    /// Re-reads the configuration file and applies its `[processor]` and
    /// `[sink]` tables; on any error the running configuration stays.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let Some(path) = self.config.source.clone() else {
            self.metrics
                .reloads
                .get_or_create(&[("outcome", "error")])
                .inc();
            return Err(ReloadError::NoFile);
        };
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Config::load(&path)).await?
        };
        let config = match loaded {
            Ok(c) => c,
            Err(e) => {
                self.metrics
                    .reloads
                    .get_or_create(&[("outcome", "error")])
                    .inc();
                tracing::error!("reload refused, the running configuration stays: {e}");
                return Err(ReloadError::Config(e));
            }
        };
        let report = ReloadReport {
            config: path.display().to_string(),
            rules: config.processor.rule_ids(),
            sinks: config
                .sink
                .webhook
                .iter()
                .map(|w| w.raw.name.clone())
                .chain(config.sink.log.iter().map(|l| l.name.clone()))
                .chain(config.sink.storage.iter().map(|s| s.name.clone()))
                .collect(),
        };
        self.fanout
            .processors
            .send_replace(Arc::new(config.processor));
        self.fanout.sinks.send_replace(Arc::new(config.sink));
        self.metrics
            .reloads
            .get_or_create(&[("outcome", "ok")])
            .inc();
        tracing::info!(rules = ?report.rules, sinks = ?report.sinks, "configuration reloaded");
        Ok(report)
    }
}
