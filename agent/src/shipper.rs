//! The QUIC shipper: batches from the outbox to the collector, deleted only
//! when acknowledged.
//!
//! One long-lived connection (mTLS with the enrolled bundle, ALPN `ferry/1`);
//! a hello/welcome on the first stream; then each batch on its own stream,
//! with up to `max_in_flight_bytes` (about 1 MiB was the sweet spot measured
//! on these machines) and `Welcome.max_streams` batches in flight. Acks go
//! back to the writer: stored/duplicate delete the batch, permanent
//! rejections drop it with accounting, transient ones hand it out again. A
//! lost connection releases every in-flight batch; the shipper reconnects
//! with exponential backoff and jitter ([`Backoff`]) and drains the backlog
//! at full speed, oldest first unless configured otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::codec;
use ferry_proto::session::{
    Ack, ErrorMsg, Hello, Outcome, PROTOCOL_VERSION, Welcome, compression, reason,
};
use ferry_proto::stream::{self, FrameHeader, FrameType, HEADER_LEN};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::journal::StoredBatch;
use crate::metrics::AgentMetrics;
use crate::writer::{Control, WriterHandle};

/// Exponential backoff with full jitter, as a plain state machine: the
/// caller supplies randomness (a seed) and does the sleeping.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Delays between `min` and `max`; `seed` makes jitter reproducible.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The next delay: uniform in `[min, min(max, min·2^attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = ceiling.saturating_sub(self.min).as_nanos() as u64;
        let jitter = if span == 0 { 0 } else { self.rng % (span + 1) };
        self.min + Duration::from_nanos(jitter)
    }

    /// After a successful connection: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Where and how to ship.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// Collector QUIC address.
    pub address: SocketAddr,
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
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    /// Upper bound of the backoff.
    pub backoff_max: Duration,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable.
    #[error("{path}: not a readable PEM {what}")]
    Pem {
        /// The file.
        path: String,
        /// What it should hold.
        what: &'static str,
    },
    /// rustls refused the material.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// The agent's TLS configuration from its enrolled bundle: the collector's
/// CA as the only root, the agent's certificate and key, TLS 1.3, ALPN
/// `ferry/1`.
pub fn client_tls(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ClientConfig, TlsError> {
    let pem = |path: &std::path::Path, what| TlsError::Pem {
        path: path.display().to_string(),
        what,
    };
    let certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let v: Vec<_> = CertificateDer::pem_file_iter(path)
            .map_err(|_| pem(path, "certificate"))?
            .collect::<Result<_, _>>()
            .map_err(|_| pem(path, "certificate"))?;
        if v.is_empty() {
            return Err(pem(path, "certificate"));
        }
        Ok(v)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| TlsError::Rustls(e.to_string()))?;
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| pem(key, "private key"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(tls_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(cert)?, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![ferry_proto::session::ALPN.to_vec()];
    Ok(config)
}

/// The TLS the agent speaks: TLS 1.3 with AES-128-GCM, key exchange on
/// P-256, ECDSA P-256 signatures. That is what `ferry-collector enroll`
/// issues (rcgen's ECDSA P-256 keys, for the CA, the collector and every
/// agent) and what every QUIC stack implements. ring's default provider also
/// carries X25519, ChaCha20-Poly1305, P-384 and RSA; listing only what is used
/// lets the linker leave them out, code the idle agent would otherwise keep
/// resident (agent/README.md, "What bounds it").
pub fn tls_provider() -> rustls::crypto::CryptoProvider {
    use rustls::SignatureScheme;
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::crypto::ring::{cipher_suite, kx_group};
    use webpki::ring::ECDSA_P256_SHA256;
    static SIGNATURES: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
        all: &[ECDSA_P256_SHA256],
        mapping: &[(SignatureScheme::ECDSA_NISTP256_SHA256, &[ECDSA_P256_SHA256])],
    };
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![kx_group::SECP256R1],
        signature_verification_algorithms: SIGNATURES,
        secure_random: &RingKeys,
        key_provider: &RingKeys,
    }
}

/// Randomness and the agent's private key, from ring: what rustls' own ring
/// provider does, without naming every algorithm it has.
#[derive(Debug)]
struct RingKeys;

impl rustls::crypto::SecureRandom for RingKeys {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

impl rustls::crypto::KeyProvider for RingKeys {
    fn load_private_key(
        &self,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        rustls::crypto::ring::sign::any_ecdsa_type(&key)
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
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the collector refused the session: {0} (code {1})")]
    Refused(String, u16),
    #[error("writer stopped")]
    WriterGone,
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: u32,
) -> Result<(FrameHeader, Vec<u8>), SessionError> {
    let mut head = [0u8; HEADER_LEN];
    recv.read_exact(&mut head).await?;
    let header =
        FrameHeader::parse(&head, max).map_err(|e| SessionError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; header.len as usize];
    recv.read_exact(&mut body).await?;
    Ok((header, body))
}

/// Runs the shipper until `shutdown` turns true.
pub async fn run(
    config: ShipperConfig,
    writer: WriterHandle,
    metrics: Arc<AgentMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let bind: SocketAddr = if config.address.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let endpoint = match quinn::Endpoint::client(bind) {
        Ok(mut e) => {
            match quinn::crypto::rustls::QuicClientConfig::try_from(config.tls.as_ref().clone()) {
                Ok(crypto) => {
                    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
                    let mut transport = quinn::TransportConfig::default();
                    transport.keep_alive_interval(Some(Duration::from_secs(5)));
                    client.transport_config(Arc::new(transport));
                    e.set_default_client_config(client);
                }
                Err(err) => {
                    tracing::error!(error = %err, "TLS configuration unusable for QUIC; shipping disabled");
                    return;
                }
            }
            e
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot open a UDP socket; shipping disabled");
            return;
        }
    };
    let seed = ferry_clock::now_ns() as u64;
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max, seed);
    while !*shutdown.borrow() {
        metrics.connects.add(1);
        let result = session(
            &endpoint,
            &config,
            &writer,
            &metrics,
            &mut backoff,
            &mut shutdown,
        )
        .await;
        metrics.connected.set(0);
        writer.send(Control::ReleaseAll).await;
        match result {
            Ok(()) => break,
            Err(SessionError::WriterGone) => break,
            Err(e) => {
                metrics.disconnects.add(1);
                let delay = backoff.next_delay();
                tracing::warn!(collector = %config.address, error = %e, retry_in = ?delay, "collector unreachable");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    endpoint.close(0u32.into(), b"agent stopping");
    endpoint.wait_idle().await;
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

    fn compress(&self, raw: &[u8]) -> Option<Vec<u8>> {
        zstd::bulk::compress(raw, 1)
            .ok()
            .filter(|c| c.len() < raw.len())
    }

    fn decompress(&self, stored: &[u8], max: usize) -> Result<Vec<u8>, String> {
        zstd::bulk::decompress(stored, max).map_err(|e| format!("zstd: {e}"))
    }
}

/// One batch's journey: its own stream, one frame out, one ack back.
async fn send_batch(
    conn: quinn::Connection,
    batch: StoredBatch,
    zstd: bool,
    max_frame: u32,
) -> Result<(u64, Ack, u64, Duration), SessionError> {
    let started = Instant::now();
    let seq = batch.seq;
    // As stored when the collector takes it; re-encoded otherwise.
    let (payload, codec_id) = match (batch.codec, zstd) {
        (compression::ZSTD, true) | (compression::NONE, false) => (batch.body, batch.codec),
        (compression::NONE, true) => match zstd::bulk::compress(&batch.body, 1) {
            Ok(c) if c.len() < batch.body.len() => (c, compression::ZSTD),
            _ => (batch.body, compression::NONE),
        },
        (compression::ZSTD, false) => (
            zstd::bulk::decompress(&batch.body, stream::DEFAULT_MAX_FRAME as usize)
                .map_err(|e| SessionError::Protocol(format!("batch {seq} in the journal: {e}")))?,
            compression::NONE,
        ),
        (other, _) => {
            return Err(SessionError::Protocol(format!(
                "batch {seq} is stored with unknown codec {other}"
            )));
        }
    };
    let mut frame = Vec::with_capacity(payload.len() + HEADER_LEN);
    stream::write_frame(&mut frame, FrameType::Batch, codec_id, &payload);
    let wire = frame.len() as u64;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&frame).await?;
    send.finish()?;
    let (header, body) = read_frame(&mut recv, max_frame).await?;
    match header.frame_type {
        FrameType::Ack => {
            let ack: Ack = codec::from_bytes("Ack", &body)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            if ack.seq != seq {
                return Err(SessionError::Protocol(format!(
                    "ack for batch {} on the stream of batch {seq}",
                    ack.seq
                )));
            }
            Ok((seq, ack, wire, started.elapsed()))
        }
        FrameType::Error => {
            let e: ErrorMsg = codec::from_bytes("ErrorMsg", &body)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            Ok((
                seq,
                Ack::rejected(seq, e.code, e.message),
                wire,
                started.elapsed(),
            ))
        }
        other => Err(SessionError::Protocol(format!(
            "{other:?} frame where an ack was expected"
        ))),
    }
}

async fn session(
    endpoint: &quinn::Endpoint,
    config: &ShipperConfig,
    writer: &WriterHandle,
    metrics: &AgentMetrics,
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let conn = endpoint
        .connect(config.address, &config.server_name)?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: concat!("ferry-agent ", env!("CARGO_PKG_VERSION")).into(),
        compression: if config.zstd {
            vec![compression::ZSTD, compression::NONE]
        } else {
            vec![compression::NONE]
        },
    };
    let mut frame = Vec::new();
    stream::write_frame(
        &mut frame,
        FrameType::Hello,
        compression::NONE,
        &codec::to_vec(&hello).map_err(|e| SessionError::Protocol(e.to_string()))?,
    );
    send.write_all(&frame).await?;
    send.finish()?;
    let (header, body) = read_frame(&mut recv, stream::DEFAULT_MAX_FRAME).await?;
    let welcome: Welcome = match header.frame_type {
        FrameType::Welcome => codec::from_bytes("Welcome", &body)
            .map_err(|e| SessionError::Protocol(e.to_string()))?,
        FrameType::Error => {
            let e: ErrorMsg = codec::from_bytes("ErrorMsg", &body)
                .map_err(|e| SessionError::Protocol(e.to_string()))?;
            return Err(SessionError::Refused(e.message, e.code));
        }
        other => {
            return Err(SessionError::Protocol(format!(
                "{other:?} frame where a welcome was expected"
            )));
        }
    };
    backoff.reset();
    metrics.connected.set(1);
    tracing::info!(collector = %config.address, version = %welcome.collector_version, "connected");
    let zstd = config.zstd && welcome.compression == compression::ZSTD;
    let max_streams = welcome.max_streams.max(1) as usize;
    let mut tasks: JoinSet<Result<(u64, Ack, u64, Duration), SessionError>> = JoinSet::new();
    let mut sizes: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut in_flight_bytes = 0u64;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        // Fill the window.
        while in_flight_bytes < config.max_in_flight_bytes && tasks.len() < max_streams {
            let (tx, rx) = oneshot::channel();
            let room = config.max_in_flight_bytes - in_flight_bytes;
            if !writer
                .send(Control::Fetch {
                    max_bytes: room,
                    newest_first: config.newest_first,
                    reply: tx,
                })
                .await
            {
                return Err(SessionError::WriterGone);
            }
            let batches = rx.await.map_err(|_| SessionError::WriterGone)?;
            if batches.is_empty() {
                break;
            }
            let mut extra = Vec::new();
            for batch in batches {
                if tasks.len() >= max_streams {
                    extra.push(batch.seq);
                    continue;
                }
                in_flight_bytes += batch.body.len() as u64;
                sizes.insert(batch.seq, batch.body.len() as u64);
                tasks.spawn(send_batch(
                    conn.clone(),
                    batch,
                    zstd,
                    welcome.max_frame.max(1024),
                ));
            }
            if !extra.is_empty() {
                writer.send(Control::Release(extra)).await;
                break;
            }
        }
        let sealed = writer.sealed.notified();
        tokio::select! {
            Some(done) = tasks.join_next() => {
                let mut results = vec![done];
                while let Some(more) = tasks.try_join_next() {
                    results.push(more);
                }
                let mut acks = Vec::new();
                let mut release = Vec::new();
                for r in results {
                    let (seq, ack, wire, latency) = match r {
                        Ok(Ok(v)) => v,
                        Ok(Err(e)) => return Err(e),
                        Err(join) => return Err(SessionError::Protocol(format!("batch task failed: {join}"))),
                    };
                    in_flight_bytes -= sizes.remove(&seq).unwrap_or(0).min(in_flight_bytes);
                    metrics.wire_bytes.add(wire);
                    metrics.ack_latency.observe(latency);
                    match ack.outcome() {
                        Outcome::Stored => { metrics.batches_stored.add(1); acks.push((seq, true)); }
                        Outcome::Duplicate => { metrics.batches_duplicate.add(1); acks.push((seq, true)); }
                        Outcome::Rejected { code, reason: text } if !reason::is_transient(code) => {
                            metrics.batches_rejected.add(1);
                            tracing::error!(seq, code, reason = text, "collector rejected a batch; its readings are counted as dropped");
                            acks.push((seq, false));
                        }
                        Outcome::Rejected { code, reason: text } => {
                            metrics.batches_retried.add(1);
                            tracing::debug!(seq, code, reason = text, "collector asked to retry a batch");
                            release.push(seq);
                        }
                        Outcome::Unknown(status) => {
                            metrics.batches_retried.add(1);
                            tracing::warn!(seq, status, "unknown ack status; keeping the batch");
                            release.push(seq);
                        }
                    }
                }
                if !acks.is_empty() && !writer.send(Control::Acks(acks)).await {
                    return Err(SessionError::WriterGone);
                }
                if !release.is_empty() {
                    writer.send(Control::Release(release)).await;
                    // Transient refusals: give the collector a moment.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            _ = sealed => {}
            _ = poll.tick() => {}
            e = conn.closed() => return Err(SessionError::Connection(e)),
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    // Let in-flight batches finish (their acks delete them).
                    let mut acks = Vec::new();
                    while let Some(Ok(Ok((seq, ack, _, _)))) = tasks.join_next().await {
                        if matches!(ack.outcome(), Outcome::Stored | Outcome::Duplicate) {
                            acks.push((seq, true));
                        }
                    }
                    writer.send(Control::Acks(acks)).await;
                    conn.close(0u32.into(), b"agent stopping");
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_bounded_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 42);
        let mut ceilings = Vec::new();
        for i in 0..8 {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(100 * (1 << i)).min(Duration::from_secs(2));
            assert!(
                d >= Duration::from_millis(100) && d <= ceiling,
                "{i}: {d:?}"
            );
            ceilings.push(d);
        }
        // Jitter: not every delay equals its ceiling or floor.
        assert!(ceilings.iter().any(|d| *d != Duration::from_millis(100)));
        b.reset();
        assert!(b.next_delay() == Duration::from_millis(100));
        // Same seed, same sequence.
        let mut x = Backoff::new(Duration::from_millis(1), Duration::from_secs(1), 7);
        let mut y = Backoff::new(Duration::from_millis(1), Duration::from_secs(1), 7);
        for _ in 0..5 {
            assert_eq!(x.next_delay(), y.next_delay());
        }
    }
}
