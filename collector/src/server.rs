//! The QUIC side: accept connections, identify the agent by its
//! certificate, run the hello exchange, and serve one batch per stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_proto::codec;
use ferry_proto::session::{
    self, Ack, AgentStatus, ErrorMsg, Hello, PROTOCOL_VERSION, Welcome, close, reason,
};
use ferry_proto::stream::{FrameHeader, FrameType, HEADER_LEN, compression, write_frame};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::ingest::{self, BadInput, RateLimiter, Rejection};
use crate::metrics::Metrics;
use crate::pki::{RevocationList, agent_id_of};
use crate::store::{
    Applied, MaintenanceReport, RetentionPlan, SessionOutcome, SessionRequest, Store,
};
use crate::writer::Command;

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
    Store(String),
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
    ) -> Result<(MaintenanceReport, bool), String> {
        let _one_at_a_time = self.maintenance.lock().await;
        let store = self.store.clone();
        let work = tokio::task::spawn_blocking(move || store.prepare_maintenance(&plan))
            .await
            .map_err(|e| format!("maintenance task: {e}"))?
            .map_err(|e| e.to_string())?;
        let more = work.has_more();
        let (tx, rx) = oneshot::channel();
        let gone = || "the collector is shutting down".to_owned();
        self.writer
            .send(Command::Maintain {
                work,
                reply: Some(tx),
            })
            .await
            .map_err(|_| gone())?;
        let report = rx.await.map_err(|_| gone())??;
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
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let Some(path) = self.config.source.clone() else {
            self.metrics
                .reloads
                .get_or_create(&[("outcome", "error")])
                .inc();
            return Err(
                "this collector was started without a configuration file: nothing to reload".into(),
            );
        };
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Config::load(&path))
                .await
                .map_err(|e| e.to_string())?
        };
        let config = match loaded {
            Ok(c) => c,
            Err(e) => {
                self.metrics
                    .reloads
                    .get_or_create(&[("outcome", "error")])
                    .inc();
                tracing::error!("reload refused, the running configuration stays: {e}");
                return Err(format!("{e} (the running configuration stays)"));
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

/// Accepts connections until `shutdown` turns true; then waits for every
/// connection task to finish its in-flight batches.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = crate::stopped(&mut shutdown) => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        if tasks.len() >= shared.config.limits.max_connections {
            shared
                .metrics
                .connections_refused
                .get_or_create(&[("reason", "busy")])
                .inc();
            tracing::warn!(remote = %incoming.remote_address(), "connection refused: at max_connections");
            incoming.refuse();
            continue;
        }
        tasks.spawn(connection(incoming, shared.clone(), shutdown.clone()));
    }
    endpoint.set_server_config(None);
    while tasks.join_next().await.is_some() {}
}

async fn connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            shared.metrics.bad(
                BadInput::Handshake,
                &format_args!("handshake from {remote} failed: {e}"),
            );
            return;
        }
    };
    let agent = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(agent_id_of));
    let Some(agent) = agent else {
        // The verifier accepts no certificate without a valid id; defensive.
        conn.close(VarInt::from_u32(close::PROTOCOL), b"no agent identity");
        return;
    };
    if shared.revoked.contains(&agent) {
        shared
            .metrics
            .connections_refused
            .get_or_create(&[("reason", "revoked")])
            .inc();
        conn.close(VarInt::from_u32(close::REVOKED), b"agent revoked");
        return;
    }
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    shared
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            id,
            LiveConnection {
                id,
                agent: agent.clone(),
                remote,
                since_ns: crate::now_ns(),
                conn: conn.clone(),
            },
        );
    shared.metrics.connections.inc();
    shared.metrics.connections_accepted.inc();
    tracing::info!(agent, %remote, "agent connected");
    let agent: Arc<str> = Arc::from(agent);
    let reason = session(&conn, &shared, &agent, remote, shutdown).await;
    shared
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    shared.metrics.connections.dec();
    tracing::info!(agent = &*agent, %remote, reason, "agent disconnected");
}

async fn session(
    conn: &Connection,
    shared: &Arc<Shared>,
    agent: &Arc<str>,
    remote: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> String {
    let limits = &shared.config.limits;
    let hello = tokio::time::timeout(shared.config.quic.hello_timeout, conn.accept_bi()).await;
    let (mut send, mut recv) = match hello {
        Err(_) => {
            conn.close(VarInt::from_u32(close::PROTOCOL), b"no hello in time");
            return "no hello in time".into();
        }
        Ok(Err(e)) => return e.to_string(),
        Ok(Ok(s)) => s,
    };
    let hello = match read_frame(&mut recv, limits.max_frame_bytes).await {
        Ok(Some((h, body))) if h.frame_type == FrameType::Hello => {
            match codec::from_bytes_prefix::<Hello>("Hello", &body) {
                Ok((hello, used)) if used == body.len() => Ok(hello),
                Ok((_, used)) => Err(Rejection {
                    kind: BadInput::MalformedMessage,
                    code: reason::TRAILING_BYTES,
                    reason: codec::trailing_bytes("Hello", body.len() - used, used).to_string(),
                }),
                Err(e) => Err(Rejection {
                    kind: BadInput::MalformedMessage,
                    code: reason::MALFORMED,
                    reason: e.to_string(),
                }),
            }
        }
        Ok(Some((h, _))) => Err(Rejection {
            kind: BadInput::UnexpectedFrame,
            code: reason::UNEXPECTED,
            reason: format!("expected a Hello frame first, got {:?}", h.frame_type),
        }),
        Ok(None) => return "hello stream ended".into(),
        Err(r) => Err(r),
    };
    let hello = hello.and_then(|h| {
        if h.protocol == PROTOCOL_VERSION {
            Ok(h)
        } else {
            Err(Rejection {
                kind: BadInput::UnsupportedVersion,
                code: reason::UNSUPPORTED,
                reason: format!(
                    "protocol version {} is not supported; this collector speaks {PROTOCOL_VERSION}",
                    h.protocol
                ),
            })
        }
    });
    let hello = match hello {
        Ok(h) => h,
        Err(r) => {
            shared.metrics.bad(
                r.kind,
                &format_args!("agent {agent} ({remote}): {}", r.reason),
            );
            send_error(&mut send, r.code, &r.reason).await;
            let code = if r.kind == BadInput::UnsupportedVersion {
                close::VERSION
            } else {
                close::PROTOCOL
            };
            conn.close(VarInt::from_u32(code), r.reason.as_bytes());
            return r.reason;
        }
    };
    // The Hello's journal identity, durably recorded before the Welcome: a
    // new epoch (the agent's journal was replaced) is counted and shown.
    let (tx, rx) = oneshot::channel();
    let recorded = if let Some(log) = &shared.log {
        // Cluster mode: the workers record it, in log order before this
        // session's batches.
        let record = crate::cluster::Record {
            agent: agent.to_string(),
            remote: remote.to_string(),
            now_ns: crate::now_ns(),
            body: crate::cluster::RecordBody::Session {
                epoch: hello.epoch,
                resolved_below: hello.resolved_below,
            },
        };
        Some(
            crate::cluster::publish(log, &shared.metrics, &record)
                .await
                .map(|_| SessionOutcome::Recorded {
                    previous_epoch: None,
                    journal_resets: 0,
                })
                .map_err(|e| e.to_string()),
        )
    } else if shared
        .writer
        .send(Command::Session {
            session: SessionRequest {
                agent: agent.clone(),
                epoch: hello.epoch,
                resolved_below: hello.resolved_below,
            },
            reply: tx,
        })
        .await
        .is_ok()
    {
        rx.await.ok()
    } else {
        None
    };
    let refusal = match recorded {
        Some(Ok(SessionOutcome::Recorded {
            previous_epoch: Some(previous),
            journal_resets,
        })) => {
            shared.metrics.journal_resets.inc();
            tracing::warn!(
                agent = &**agent,
                epoch = format_args!("{:016x}", hello.epoch),
                previous = format_args!("{previous:016x}"),
                journal_resets,
                "agent came back with a new journal (its journal was replaced): \
                 its sequence numbers start again in the new epoch"
            );
            None
        }
        Some(Ok(SessionOutcome::Recorded { .. })) => None,
        Some(Ok(SessionOutcome::TooManyEpochs(n))) => Some((
            reason::DEDUPE_FULL,
            format!(
                "agent {agent} has {n} journal epochs, the limit (limits.max_epochs_per_agent)"
            ),
        )),
        Some(Err(e)) => Some((reason::STORAGE, format!("recording the session: {e}"))),
        None => Some((
            reason::SHUTTING_DOWN,
            "the collector is shutting down".to_owned(),
        )),
    };
    if let Some((code, message)) = refusal {
        if code == reason::DEDUPE_FULL {
            shared.metrics.bad(
                BadInput::DedupeFull,
                &format_args!("agent {agent} ({remote}): session refused: {message}"),
            );
        } else {
            tracing::warn!(agent = &**agent, %remote, code, "session refused: {message}");
        }
        send_error(&mut send, code, &message).await;
        conn.close(VarInt::from_u32(close::REFUSED), message.as_bytes());
        return message;
    }
    let compression = if hello.compression.contains(&session::compression::ZSTD) {
        session::compression::ZSTD
    } else {
        session::compression::NONE
    };
    let millis = |d: std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let rate = limits.agent_readings_per_sec;
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        collector_version: concat!("ferry-collector ", env!("CARGO_PKG_VERSION")).into(),
        compression,
        max_frame: limits.max_frame_bytes,
        max_streams: limits.max_streams_per_connection,
        max_past_ns: nanos(limits.max_past),
        max_future_ns: nanos(limits.max_future),
        now_ns: crate::now_ns(),
        max_batch_readings: u32::try_from(limits.max_batch_readings).unwrap_or(u32::MAX),
        rate_per_sec: rate,
        rate_burst: rate.saturating_mul(ingest::RATE_BURST_SECS),
        idle_timeout_ms: millis(shared.config.quic.idle_timeout),
        hello_timeout_ms: millis(shared.config.quic.hello_timeout),
        status_interval_ms: millis(STATUS_INTERVAL),
        max_series_ids: crate::series_ids::MAX_SERIES_IDS,
    };
    let mut frame = Vec::new();
    write_frame(
        &mut frame,
        FrameType::Welcome,
        compression::NONE,
        &codec::to_vec(&welcome).unwrap_or_default(),
    );
    if let Err(e) = send.write_all(&frame).await {
        return e.to_string();
    }
    let _ = send.finish();
    // The control stream stays open for the agent's status reports; its
    // reader ends with the stream, and is aborted with the session.
    let mut control = JoinSet::new();
    control.spawn(status_reports(
        conn.clone(),
        shared.clone(),
        agent.clone(),
        remote,
        recv,
        limits.max_frame_bytes,
    ));
    let terms = Arc::new(SessionTerms {
        epoch: hello.epoch,
        compression,
        ids: Default::default(),
    });

    let mut streams = JoinSet::new();
    let why = loop {
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => break "collector shutting down".to_owned(),
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    streams.spawn(batch_stream(
                        shared.clone(),
                        agent.clone(),
                        terms.clone(),
                        remote,
                        send,
                        recv,
                    ));
                }
                Err(e) => break e.to_string(),
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    };
    // Finish in-flight batches (their acks are sent if the connection lives).
    while streams.join_next().await.is_some() {}
    if *shutdown.borrow() {
        conn.close(
            VarInt::from_u32(close::SHUTDOWN),
            b"collector shutting down",
        );
    }
    why
}

/// Reads the agent's [`AgentStatus`] frames from the control stream until
/// it ends. Anything else there is bad input, counted, and a protocol
/// violation: the connection is closed with code 1 (the control stream's
/// send side is finished after the Welcome, so no `ErrorMsg` can go).
async fn status_reports(
    conn: Connection,
    shared: Arc<Shared>,
    agent: Arc<str>,
    remote: SocketAddr,
    mut recv: RecvStream,
    max_frame: u32,
) {
    loop {
        let rejection = match read_frame(&mut recv, max_frame).await {
            Ok(None) => return,
            Ok(Some((h, body)))
                if h.frame_type == FrameType::Status && h.compression == compression::NONE =>
            {
                match codec::from_bytes_prefix::<AgentStatus>("AgentStatus", &body) {
                    Ok((status, used)) if used == body.len() => match status.validate() {
                        Ok(()) => {
                            shared.record_status(&agent, status);
                            continue;
                        }
                        Err(e) => Rejection {
                            kind: BadInput::InvalidBatch,
                            code: reason::INVALID,
                            reason: format!("AgentStatus: {e}"),
                        },
                    },
                    Ok((_, used)) => Rejection {
                        kind: BadInput::MalformedMessage,
                        code: reason::TRAILING_BYTES,
                        reason: codec::trailing_bytes("AgentStatus", body.len() - used, used)
                            .to_string(),
                    },
                    Err(e) => Rejection {
                        kind: BadInput::MalformedMessage,
                        code: reason::MALFORMED,
                        reason: e.to_string(),
                    },
                }
            }
            Ok(Some((h, _))) => Rejection {
                kind: BadInput::UnexpectedFrame,
                code: reason::UNEXPECTED,
                reason: format!(
                    "expected only uncompressed AgentStatus frames on the control stream, got {:?} (compression {})",
                    h.frame_type, h.compression
                ),
            },
            Err(r) => r,
        };
        shared.metrics.bad(
            rejection.kind,
            &format_args!(
                "agent {agent} ({remote}): control stream: {}; connection closed",
                rejection.reason
            ),
        );
        conn.close(
            VarInt::from_u32(close::PROTOCOL),
            rejection.reason.as_bytes(),
        );
        return;
    }
}

/// Reads one frame; `Ok(None)` if the stream ended or was reset before a
/// whole header arrived.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    max: u32,
) -> Result<Option<(FrameHeader, Vec<u8>)>, Rejection> {
    let mut head = [0u8; HEADER_LEN];
    if recv.read_exact(&mut head).await.is_err() {
        return Ok(None);
    }
    let header = FrameHeader::parse(&head, max).map_err(|e| ingest::frame_rejection(&e))?;
    let mut body = vec![0u8; header.len as usize];
    if recv.read_exact(&mut body).await.is_err() {
        return Ok(None);
    }
    Ok(Some((header, body)))
}

/// What a session's batch streams need from its Hello and Welcome.
#[derive(Debug)]
struct SessionTerms {
    /// The Hello's journal epoch: the epoch of batches that name none.
    epoch: u64,
    /// The compression the Welcome chose.
    compression: u8,
    /// Revision 4: the series ids the agent defined in this session.
    ids: std::sync::Mutex<crate::series_ids::SessionIds>,
}

/// Writes one ErrorMsg frame and finishes the stream.
async fn send_error(send: &mut SendStream, code: u16, message: &str) {
    let body = codec::to_vec(&ErrorMsg {
        code,
        message: message.to_owned(),
    })
    .unwrap_or_default();
    let mut frame = Vec::new();
    write_frame(&mut frame, FrameType::Error, compression::NONE, &body);
    let _ = send.write_all(&frame).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// How a batch stream is answered: an Ack for a batch whose sequence was
/// read, an ErrorMsg for a frame that could not be read as a batch.
enum Answer {
    Ack(Ack),
    Error(u16, String),
}

async fn batch_stream(
    shared: Arc<Shared>,
    agent: Arc<str>,
    terms: Arc<SessionTerms>,
    remote: SocketAddr,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let Some(answer) = batch_answer(&shared, &agent, &terms, remote, &mut recv).await else {
        // No ack can be given (stream reset, connection lost, or the writer
        // dropped the reply): the agent resends.
        let _ = send.reset(VarInt::from_u32(0));
        return;
    };
    let _ = recv.stop(VarInt::from_u32(0));
    let ack = match answer {
        Answer::Ack(ack) => ack,
        Answer::Error(code, message) => {
            send_error(&mut send, code, &message).await;
            return;
        }
    };
    let mut frame = Vec::new();
    write_frame(
        &mut frame,
        FrameType::Ack,
        compression::NONE,
        &codec::to_vec(&ack).unwrap_or_default(),
    );
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
}

async fn batch_answer(
    shared: &Shared,
    agent: &Arc<str>,
    terms: &SessionTerms,
    remote: SocketAddr,
    recv: &mut RecvStream,
) -> Option<Answer> {
    let limits = &shared.config.limits;
    let reject = |seq: u64, r: Rejection| {
        shared.metrics.bad(
            r.kind,
            &format_args!("agent {agent} ({remote}) batch {seq}: {}", r.reason),
        );
        shared.metrics.batch("rejected", r.code, 0);
        Some(Answer::Ack(Ack::rejected(seq, r.code, r.reason)))
    };
    // Before the sequence is known, refusals are ErrorMsg frames: the
    // agent applies them to the batch it sent on this stream.
    let refuse = |r: Rejection| {
        shared.metrics.bad(
            r.kind,
            &format_args!("agent {agent} ({remote}) batch stream: {}", r.reason),
        );
        shared.metrics.batch("rejected", r.code, 0);
        Some(Answer::Error(r.code, r.reason))
    };
    // A Batch frame, or revision 4's Definitions and CompactBatch frames,
    // resolved into the batch they stand for (series_ids.rs).
    let batch = match crate::series_ids::read_batch(
        recv,
        limits.max_frame_bytes,
        terms.compression,
        &terms.ids,
        &shared.metrics,
    )
    .await?
    {
        Ok(b) => b,
        Err((None, r)) => return refuse(r),
        Err((Some(seq), r)) => return reject(seq, r),
    };
    let now = crate::now_ns();
    let readings = batch.reading_count() as u64;
    let admitted = shared
        .rate
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(agent, readings, now);
    if !admitted {
        return reject(
            batch.seq,
            Rejection {
                kind: BadInput::RateLimited,
                code: reason::RATE_LIMITED,
                reason: format!(
                    "agent is over its rate of {} readings per second",
                    limits.agent_readings_per_sec
                ),
            },
        );
    }
    let mut prepared = match ingest::prepare(agent, &remote.to_string(), &batch, limits, now) {
        Ok(p) => p,
        Err(r) => return reject(batch.seq, r),
    };
    if prepared.epoch == 0 {
        prepared.epoch = terms.epoch;
    }
    let seq = batch.seq;
    if let Some(log) = &shared.log {
        return Some(Answer::Ack(
            publish_batch(shared, log, agent, remote, batch, &prepared, now).await,
        ));
    }
    // A `backpressure` subscriber past its lag budget holds ingest here;
    // the agent keeps the batch on disk meanwhile.
    if shared.bus.wait_for_room().await {
        shared.metrics.backpressure_waits.inc();
    }
    let (tx, rx) = oneshot::channel();
    if shared
        .writer
        .send(Command::Batch {
            batch: prepared,
            reply: tx,
        })
        .await
        .is_err()
    {
        shared.metrics.batch("rejected", reason::SHUTTING_DOWN, 0);
        return Some(Answer::Ack(Ack::rejected(
            seq,
            reason::SHUTTING_DOWN,
            "the collector is shutting down",
        )));
    }
    let ack = match rx.await.ok()? {
        Ok(Applied::Stored { readings, refused }) => {
            shared.metrics.batch("stored", 0, readings);
            shared.metrics.refused(&refused);
            if !refused.is_empty() {
                let n: u64 = refused.iter().map(|r| r.readings).sum();
                shared.metrics.bad(
                    BadInput::RefusedReadings,
                    &format_args!(
                        "agent {agent} ({remote}) batch {seq}: {n} readings refused ({})",
                        refused
                            .iter()
                            .map(|r| format!("{} {}", r.readings, reason::name(r.code)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            Ack::stored_refusing(seq, refused)
        }
        Ok(Applied::Duplicate) => {
            shared.metrics.batch("duplicate", 0, readings);
            Ack::duplicate(seq)
        }
        Ok(Applied::Rejected { code, reason }) => {
            return reject(
                seq,
                Rejection {
                    kind: if code == reason::DEDUPE_FULL {
                        BadInput::DedupeFull
                    } else {
                        BadInput::InvalidBatch
                    },
                    code,
                    reason,
                },
            );
        }
        Err(e) => {
            shared.metrics.batch("rejected", reason::STORAGE, 0);
            Ack::rejected(seq, reason::STORAGE, format!("commit failed: {e}"))
        }
    };
    Some(Answer::Ack(ack))
}

/// Cluster mode: the validated batch goes to the log; the agent's ack says
/// stored once the log has acked it durable (the workers store it), with
/// the readings refused here.
async fn publish_batch(
    shared: &Shared,
    log: &Arc<dyn crate::cluster::Log>,
    agent: &Arc<str>,
    remote: SocketAddr,
    mut batch: ferry_proto::batch::Batch,
    prepared: &crate::store::PreparedBatch,
    now: i64,
) -> Ack {
    let seq = batch.seq;
    batch.epoch = prepared.epoch;
    let readings = prepared.readings;
    let mut by_reason = std::collections::BTreeMap::<u16, u64>::new();
    for &(_, code, n) in &prepared.refused {
        *by_reason.entry(code).or_default() += n;
    }
    let refused: Vec<ferry_proto::session::Refused> = by_reason
        .into_iter()
        .map(|(code, readings)| ferry_proto::session::Refused { code, readings })
        .collect();
    let record = crate::cluster::Record {
        agent: agent.to_string(),
        remote: remote.to_string(),
        now_ns: now,
        body: crate::cluster::RecordBody::Batch(batch),
    };
    match crate::cluster::publish(log, &shared.metrics, &record).await {
        Ok(_) => {
            shared.metrics.batch("stored", 0, readings);
            shared.metrics.refused(&refused);
            Ack::stored_refusing(seq, refused)
        }
        Err(e) => {
            shared.metrics.batch("rejected", reason::STORAGE, 0);
            Ack::rejected(
                seq,
                reason::STORAGE,
                format!("the log did not take it: {e}"),
            )
        }
    }
}
