//! The QUIC shipper: batches from the outbox to the collector, deleted only
//! when acknowledged.
//!
//! One long-lived connection (mTLS with the enrolled bundle, ALPN `ferry/1`);
//! a hello/welcome on the first stream; then each batch on its own stream,
//! with up to `max_in_flight_bytes` (about 1 MiB was the sweet spot measured
//! on these machines) and `Welcome.max_streams` batches in flight. Acks go
//! back to the writer: stored/duplicate delete the batch (readings the
//! collector refused one by one are counted on /metrics), permanent
//! rejections drop it with accounting, transient ones hand it out again. A
//! lost connection (silent for `[shipping] idle_timeout`; keep-alives every
//! `keep_alive`) releases every in-flight batch; the shipper reconnects
//! with exponential backoff and jitter and drains the backlog at full speed,
//! oldest first unless configured otherwise (and oldest first for the rest
//! of a session once the collector's dedupe state is full). The Hello
//! carries the journal's epoch; every Welcome's terms are published
//! ([`ShipperConfig::terms`]).
//!
//! # Layout
//! - [`flight`]: every decision above, as the sans-IO state machine
//!   [`Flight`] (hello and welcome, the window, answers, pauses, backoff),
//!   tested with a fake clock and no sockets.
//! - [`failover`]: which collector address to connect to (the first, its
//!   fallbacks, and back), the sans-IO [`Failover`].
//! - this module: the tokio driver — QUIC connection, one task per batch
//!   stream, the writer's channel, sleeping until the machine's deadlines.
//! - `tls`: the client TLS configuration from the enrolled bundle.

mod compact;
pub mod failover;
pub mod flight;
pub mod status;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_clock::{Clock, SystemClock};
use ferry_proto::session::compression;
use ferry_proto::stream::{FrameHeader, FrameType, HEADER_LEN};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

pub use self::failover::Failover;
pub use self::flight::{CollectorTerms, Flight, ProtocolError, Terms};
pub use self::tls::{TlsError, client_tls, tls_provider};
use crate::metrics::AgentMetrics;
use crate::writer::{Control, WriterHandle};

/// The shipper looks for new batches at least this often, even when no
/// seal notification came.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Where and how to ship.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// Collector QUIC address (the primary).
    pub address: SocketAddr,
    /// Other collectors' addresses, tried in order when the primary cannot
    /// be reached (cluster mode, docs/cluster.md).
    pub fallbacks: Vec<SocketAddr>,
    /// How long a session with a fallback lasts before the primary is
    /// tried again.
    pub fail_back_after: Duration,
    /// Name the collector's certificate is checked against.
    pub server_name: String,
    /// TLS client configuration (CA, client certificate, ALPN).
    pub tls: Arc<rustls::ClientConfig>,
    /// Most bytes of batches in flight.
    pub max_in_flight_bytes: u64,
    /// Send the newest batches first during a backlog.
    pub newest_first: bool,
    /// Offer zstd compression.
    pub zstd: bool,
    /// Send small batches compact when the collector takes them
    /// (`[shipping] compact`).
    pub compact: bool,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    /// Upper bound of the backoff.
    pub backoff_max: Duration,
    /// QUIC idle timeout: a connection silent this long is given up.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (shorter than `idle_timeout`).
    pub keep_alive: Duration,
    /// The journal's identity, sent in every Hello.
    pub epoch: u64,
    /// Where each Welcome's terms are published.
    pub terms: watch::Sender<Option<CollectorTerms>>,
    /// The device links' devices, reported in the agent's status.
    pub devices: crate::sources::device::DeviceRegistry,
}

/// zstd level 1 for the journal's sealed batches: they are stored as they
/// are sent, so the journal writes ~1 byte per reading and the shipper does
/// not compress on the way out.
#[derive(Debug, Clone, Copy)]
pub struct Zstd;

impl crate::journal::Compressor for Zstd {
    fn codec(&self) -> u8 {
        compression::ZSTD
    }

    /// Level 1, with the frame's content checksum: a stored batch that was
    /// damaged on disk fails to decompress instead of decoding into other
    /// readings (what salvaging a quarantined journal relies on).
    fn compress(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let mut c = zstd::bulk::Compressor::new(1).ok()?;
        c.include_checksum(true).ok()?;
        c.compress(raw).ok().filter(|c| c.len() < raw.len())
    }

    fn decompress(
        &self,
        stored: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, crate::journal::DecompressError> {
        zstd::bulk::decompress(stored, max).map_err(|e| crate::journal::DecompressError {
            codec: compression::ZSTD,
            reason: format!("zstd: {e}"),
        })
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("frame: {0}")]
    Frame(#[from] ferry_proto::stream::FrameError),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("batch task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("writer stopped")]
    WriterGone,
    #[error("leaving a fallback collector for the first one")]
    FailBack,
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: u32,
) -> Result<(FrameHeader, Vec<u8>), SessionError> {
    let mut head = [0u8; HEADER_LEN];
    recv.read_exact(&mut head).await?;
    let header = FrameHeader::parse(&head, max)?;
    let mut body = vec![0u8; header.len as usize];
    recv.read_exact(&mut body).await?;
    Ok((header, body))
}

/// Runs the shipper until `shutdown` turns true.
pub async fn run(
    config: ShipperConfig,
    writer: WriterHandle,
    metrics: Arc<AgentMetrics>,
    shutdown: watch::Receiver<bool>,
) {
    run_with_clock(config, writer, metrics, Arc::new(SystemClock), shutdown).await;
}

/// [`run`] with time from `clock`.
pub async fn run_with_clock(
    config: ShipperConfig,
    writer: WriterHandle,
    metrics: Arc<AgentMetrics>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(endpoint) = endpoint(&config) else {
        return;
    };
    let mut flight = Flight::new(&config, metrics, clock.now_ns() as u64);
    let addresses: Vec<SocketAddr> = std::iter::once(config.address)
        .chain(config.fallbacks.iter().copied())
        .collect();
    let mut failover = Failover::new(addresses.len(), config.fail_back_after);
    while !*shutdown.borrow() {
        flight.handle_connecting();
        let address = addresses[failover.current()];
        let result = session(
            &endpoint,
            &config,
            address,
            &writer,
            &mut flight,
            &mut failover,
            &*clock,
            &mut shutdown,
        )
        .await;
        writer.send(Control::ReleaseAll).await;
        match result {
            Ok(()) | Err(SessionError::WriterGone) => {
                flight.handle_closed();
                break;
            }
            Err(SessionError::FailBack) => {
                flight.handle_closed();
                failover.handle_fail_back();
                tracing::info!(collector = %address, primary = %config.address, "going back to the first collector");
            }
            Err(e) => {
                let now = clock.now_ns();
                let backoff = ferry_clock::until(now, flight.handle_disconnect(now));
                let at_once = failover.handle_failed(now);
                let next = addresses[failover.current()];
                if at_once {
                    tracing::warn!(collector = %address, error = %e, next = %next, "collector unreachable; trying the next");
                    continue;
                }
                tracing::warn!(collector = %address, error = %e, retry_in = ?backoff, "collector unreachable");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    endpoint.close(0u32.into(), b"agent stopping");
    endpoint.wait_idle().await;
}

/// The QUIC client endpoint, or `None` (logged) when it cannot be had.
fn endpoint(config: &ShipperConfig) -> Option<quinn::Endpoint> {
    let bind: SocketAddr = if config.address.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let mut e = match quinn::Endpoint::client(bind) {
        Ok(e) => e,
        Err(err) => {
            tracing::error!(error = %err, "cannot open a UDP socket; shipping disabled");
            return None;
        }
    };
    match quinn::crypto::rustls::QuicClientConfig::try_from(config.tls.as_ref().clone()) {
        Ok(crypto) => {
            let mut client = quinn::ClientConfig::new(Arc::new(crypto));
            let mut transport = quinn::TransportConfig::default();
            transport.keep_alive_interval(Some(config.keep_alive));
            transport.max_idle_timeout(config.idle_timeout.try_into().ok());
            client.transport_config(Arc::new(transport));
            e.set_default_client_config(client);
            Some(e)
        }
        Err(err) => {
            tracing::error!(error = %err, "TLS configuration unusable for QUIC; shipping disabled");
            None
        }
    }
}

/// What a batch's stream brought back.
struct Answer {
    seq: u64,
    frame: FrameType,
    body: Vec<u8>,
    wire: u64,
    latency: Duration,
}

/// One batch's journey: its own stream, its frames out (a `Batch`, or
/// revision 4's `Definitions` and `CompactBatch`), one answer back.
async fn send_batch(
    conn: quinn::Connection,
    seq: u64,
    frame: Vec<u8>,
    max_frame: u32,
) -> Result<Answer, SessionError> {
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&frame).await?;
    send.finish()?;
    let (header, body) = read_frame(&mut recv, max_frame).await?;
    Ok(Answer {
        seq,
        frame: header.frame_type,
        body,
        wire: frame.len() as u64,
        latency: started.elapsed(),
    })
}

/// Passes the machine's messages for the writer on.
async fn to_writer(flight: &mut Flight, writer: &WriterHandle) -> Result<(), SessionError> {
    while let Some(c) = flight.poll_control() {
        if !writer.send(c).await {
            return Err(SessionError::WriterGone);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn session(
    endpoint: &quinn::Endpoint,
    config: &ShipperConfig,
    address: SocketAddr,
    writer: &WriterHandle,
    flight: &mut Flight,
    failover: &mut Failover,
    clock: &dyn Clock,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let conn = endpoint.connect(address, &config.server_name)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&flight.hello_frame()?).await?;
    let (header, body) = read_frame(&mut recv, ferry_proto::stream::DEFAULT_MAX_FRAME).await?;
    let welcome = flight.handle_welcome(clock.now_ns(), header.frame_type, &body)?;
    config.terms.send_replace(flight.collector_terms().cloned());
    tracing::info!(collector = %address, version = %welcome.collector_version, "connected");
    failover.handle_welcomed();
    let fail_back = failover.poll_fail_back();
    let terms = flight.terms().expect("welcomed");
    let mut ids = if config.compact {
        compact::SessionIds::new(&welcome)
    } else {
        compact::SessionIds::default()
    };
    // The control stream carries the agent's status reports when the
    // collector asks for them; otherwise it is finished here.
    let status_every = Duration::from_millis(u64::from(welcome.status_interval_ms));
    let mut control = if status_every.is_zero() {
        send.finish()?;
        None
    } else {
        Some(send)
    };
    let mut status_tick = tokio::time::interval(status_every.max(Duration::from_millis(1)));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks: JoinSet<Result<Answer, SessionError>> = JoinSet::new();
    let mut look = tokio::time::interval(LOOK_EVERY);
    loop {
        // Fill the window.
        while let Some(fetch) = flight.poll_fetch(clock.now_ns()) {
            let (tx, rx) = oneshot::channel();
            let asked = writer.send(Control::Fetch {
                max_bytes: fetch.max_bytes,
                newest_first: fetch.newest_first,
                reply: tx,
            });
            if !asked.await {
                return Err(SessionError::WriterGone);
            }
            let batches = rx.await.map_err(|_| SessionError::WriterGone)?;
            for batch in flight.handle_fetched(batches) {
                let seq = batch.seq;
                let frame = ids.frames(batch, terms.zstd)?;
                tasks.spawn(send_batch(conn.clone(), seq, frame, terms.max_frame));
            }
            to_writer(flight, writer).await?;
        }
        let pause = flight
            .poll_timeout()
            .map(|at| ferry_clock::until(clock.now_ns(), at));
        let paused = async move {
            match pause {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let sealed = writer.sealed.notified();
        let fail_back_at = async move {
            match fail_back {
                Some(at) => tokio::time::sleep(ferry_clock::until(clock.now_ns(), at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = fail_back_at => {
                // Finish what is in flight here (acks delete it), then go.
                while let Some(Ok(Ok(a))) = tasks.join_next().await {
                    ids.answered(a.seq, a.frame, &a.body);
                    let _ = flight.handle_answer(clock.now_ns(), a.seq, a.frame, &a.body, a.wire, a.latency);
                }
                to_writer(flight, writer).await?;
                conn.close(0u32.into(), b"going back to the first collector");
                return Err(SessionError::FailBack);
            }
            Some(done) = tasks.join_next() => {
                let mut results = vec![done];
                while let Some(more) = tasks.try_join_next() {
                    results.push(more);
                }
                for r in results {
                    let a = r??;
                    ids.answered(a.seq, a.frame, &a.body);
                    flight.handle_answer(clock.now_ns(), a.seq, a.frame, &a.body, a.wire, a.latency)?;
                }
                to_writer(flight, writer).await?;
            }
            _ = status_tick.tick(), if control.is_some() => {
                let Some(stats) = writer.stats().await else {
                    return Err(SessionError::WriterGone);
                };
                let frame = status::frame(&status::report(
                    clock.now_ns(),
                    &stats,
                    &config.devices.device_infos(),
                ));
                if let Some(send) = control.as_mut()
                    && let Err(e) = send.write_all(&frame).await
                {
                    tracing::debug!(error = %e, "status report not sent; no more this session");
                    control = None;
                }
            }
            _ = sealed => flight.handle_news(),
            _ = look.tick() => flight.handle_news(),
            _ = paused => flight.handle_timeout(clock.now_ns()),
            e = conn.closed() => return Err(SessionError::Connection(e)),
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    // Let in-flight batches finish (their acks delete them).
                    while let Some(Ok(Ok(a))) = tasks.join_next().await {
                        ids.answered(a.seq, a.frame, &a.body);
                    let _ = flight.handle_answer(clock.now_ns(), a.seq, a.frame, &a.body, a.wire, a.latency);
                    }
                    to_writer(flight, writer).await?;
                    conn.close(0u32.into(), b"agent stopping");
                    return Ok(());
                }
            }
        }
    }
}
