//! One agent connection: accept it, identify the agent by its certificate,
//! run the hello exchange (journal identity recorded before the Welcome;
//! its deadline and the Hello's checks: the sans-IO `server/handshake.rs`),
//! read the agent's status reports on the control stream, and hand each
//! batch stream to `server/batch.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_clock::{Clock, SystemClock, until};
use ferry_proto::codec;
use ferry_proto::session::{self, AgentStatus, ErrorMsg, PROTOCOL_VERSION, Welcome, close, reason};
use ferry_proto::stream::{FrameHeader, FrameType, HEADER_LEN, compression, write_frame};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::batch::batch_stream;
use super::handshake::{Handshake, HelloRead, NO_HELLO};
use super::{LiveConnection, STATUS_INTERVAL, Shared};
use crate::ingest::{self, BadInput, Rejection};
use crate::pki::agent_id_of;
use crate::store::{SessionOutcome, SessionRequest};
use crate::writer::Command;

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
    // The hello exchange's decisions are `Handshake`'s; this moves the
    // stream, the frame and the clock.
    let clock = SystemClock;
    let mut handshake = Handshake::new(clock.now_ns(), shared.config.quic.hello_timeout);
    let Some(opened) = by_hello_deadline(conn, &mut handshake, conn.accept_bi()).await else {
        return NO_HELLO.into();
    };
    let (mut send, mut recv) = match opened {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    // The first frame, by the same deadline (a Hello sent a byte at a time,
    // or never finished, is closed like a missing one).
    let read = read_frame(&mut recv, limits.max_frame_bytes);
    let Some(first) = by_hello_deadline(conn, &mut handshake, read).await else {
        return NO_HELLO.into();
    };
    let hello = match handshake.handle_frame(first) {
        HelloRead::Hello(h) => Ok(h),
        HelloRead::Refused(r) => Err(r),
        HelloRead::Ended => return "hello stream ended".into(),
    };
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
                .map_err(RecordError::Log),
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
        rx.await.ok().map(|r| r.map_err(RecordError::Writer))
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
        reference_generations: ferry_proto::compact::refs::REFERENCE_GENERATIONS,
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

/// `work` until the hello deadline ([`Handshake::poll_timeout`]): `None`
/// when the deadline passed first, and the connection is closed
/// ([`NO_HELLO`]).
async fn by_hello_deadline<T>(
    conn: &Connection,
    handshake: &mut Handshake,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let clock = SystemClock;
    tokio::pin!(work);
    loop {
        let deadline = handshake.poll_timeout().unwrap_or(i64::MAX);
        tokio::select! {
            done = &mut work => return Some(done),
            _ = tokio::time::sleep(until(clock.now_ns(), deadline)) => {
                if handshake.handle_timeout(clock.now_ns()) {
                    conn.close(VarInt::from_u32(close::PROTOCOL), NO_HELLO.as_bytes());
                    return None;
                }
            }
        }
    }
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
pub(super) struct SessionTerms {
    /// The Hello's journal epoch: the epoch of batches that name none.
    pub(super) epoch: u64,
    /// The compression the Welcome chose.
    pub(super) compression: u8,
    /// Revision 4: the series ids the agent defined in this session.
    pub(super) ids: std::sync::Mutex<crate::series_ids::SessionIds>,
}

/// Writes one ErrorMsg frame and finishes the stream.
pub(super) async fn send_error(send: &mut SendStream, code: u16, message: &str) {
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

/// Why a session's hello was not recorded (the agent is refused with
/// `STORAGE` and the message).
#[derive(Debug, thiserror::Error)]
enum RecordError {
    /// The writer could not commit it.
    #[error(transparent)]
    Writer(crate::writer::WriterError),
    /// The cluster log did not take it.
    #[error(transparent)]
    Log(crate::cluster::LogError),
}
