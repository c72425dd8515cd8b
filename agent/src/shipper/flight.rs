//! The shipper's session logic as a sans-IO state machine.
//!
//! [`Flight`] holds everything the shipper decides: the [`Hello`] it sends
//! (with the journal's epoch) and what it makes of the collector's
//! [`Welcome`] (one place for both: [`Flight::hello`],
//! [`Flight::handle_welcome`]: the session's [`Terms`] and the collector's
//! announced [`CollectorTerms`]), which batches fit the in-flight window
//! ([`Flight::poll_fetch`], [`Flight::handle_fetched`]), what each answer
//! means for the journal ([`Flight::handle_answer`], then
//! [`Flight::poll_control`]: acks, refused readings counted, oldest first
//! after `DEDUPE_FULL`), the pause after a transient refusal, and the
//! reconnect schedule ([`Flight::handle_disconnect`]). Every `now` is
//! wall-clock ns ([`ferry_clock`]); the tokio driver in the parent module
//! only moves frames and sleeps until [`Flight::poll_timeout`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_clock::Backoff;
use ferry_proto::codec;
use ferry_proto::session::{
    Ack, ErrorMsg, Hello, Outcome, PROTOCOL_VERSION, Welcome, compression, reason,
};
use ferry_proto::stream::{self, FrameType, HEADER_LEN};

use crate::journal::StoredBatch;
use crate::metrics::AgentMetrics;
use crate::writer::Control;

/// After the collector asks to retry a batch (a transient refusal), the
/// shipper fetches nothing new for this long: the collector gets a moment.
/// Answers to batches already in flight are still handled meanwhile.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the collector or a stored batch did that the protocol does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame's body did not decode as what its type says.
    #[error("undecodable {what}: {detail}")]
    Undecodable {
        /// The message expected.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// A frame of the wrong type.
    #[error("{got:?} frame where {expected} was expected")]
    Unexpected {
        /// The frame's type.
        got: FrameType,
        /// What was expected.
        expected: &'static str,
    },
    /// An ack for another batch than the stream's.
    #[error("ack for batch {got} on the stream of batch {expected}")]
    WrongAck {
        /// The ack's sequence.
        got: u64,
        /// The stream's batch.
        expected: u64,
    },
    /// The collector refused the session.
    #[error("the collector refused the session: {message} (code {code})")]
    Refused {
        /// Its explanation.
        message: String,
        /// A [`reason`] code.
        code: u16,
    },
    /// A batch in the journal cannot be sent as it is stored.
    #[error("batch {seq} in the journal: {detail}")]
    Stored {
        /// The batch.
        seq: u64,
        /// What is wrong with it.
        detail: String,
    },
}

/// The terms of a connected session, from the collector's [`Welcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Batch bodies go zstd-compressed.
    pub zstd: bool,
    /// Most batch streams open at once.
    pub max_streams: usize,
    /// Largest answer frame read.
    pub max_frame: u32,
}

/// What the collector announced in its latest Welcome: its accepted time
/// window and limits, for sources that check readings before journaling
/// them. The driver publishes it in [`ShipperConfig::terms`](super::ShipperConfig::terms)
/// at every Welcome ([`Flight::collector_terms`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorTerms {
    /// The Welcome as received.
    pub welcome: Welcome,
    /// The collector's clock minus the agent's when the Welcome arrived, ns
    /// (0 when the Welcome carries no clock).
    pub clock_offset_ns: i64,
}

impl CollectorTerms {
    /// Terms from a Welcome received at agent time `now_ns`.
    pub fn new(welcome: Welcome, now_ns: i64) -> Self {
        let clock_offset_ns = if welcome.now_ns == 0 {
            0
        } else {
            welcome.now_ns.saturating_sub(now_ns)
        };
        Self {
            welcome,
            clock_offset_ns,
        }
    }

    /// The timestamps the collector accepts, `[lo, hi]`, at agent time
    /// `now_ns` (its clock as measured at the Welcome); `None` when it
    /// announced no window. A reading outside it would be refused by the
    /// collector as `BAD_TIMESTAMP` if shipped now.
    pub fn timestamp_window(&self, now_ns: i64) -> Option<(i64, i64)> {
        self.welcome
            .timestamp_window(now_ns.saturating_add(self.clock_offset_ns))
    }
}

/// A request for batches from the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// Byte budget: the room left in the window.
    pub max_bytes: u64,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
}

/// The shipper's window and connection state.
#[derive(Debug)]
pub struct Flight {
    offer_zstd: bool,
    /// The journal's identity, sent in every Hello.
    epoch: u64,
    /// Newest first as configured.
    newest_first_configured: bool,
    /// Newest first in this session: as configured, until the collector
    /// answers `DEDUPE_FULL` (then oldest first: the batches below fill
    /// its gaps; docs/protocol.md, DEDUPE_FULL).
    newest_first: bool,
    max_in_flight_bytes: u64,
    backoff: Backoff,
    metrics: Arc<AgentMetrics>,
    /// `Some` while connected.
    terms: Option<Terms>,
    /// The latest Welcome's announcement, kept across disconnects.
    collector: Option<CollectorTerms>,
    /// Bytes of each batch in flight and the seq its body carries (which
    /// the ack names: not the outbox seq for a salvaged batch), by outbox
    /// sequence.
    in_flight: HashMap<u64, (u64, u64)>,
    in_flight_bytes: u64,
    /// The journal had nothing more (or the window overflowed): fetch again
    /// after news (an answer, a sealed batch, a tick).
    drained: bool,
    /// No fetching until then (after a transient refusal).
    hold_until: Option<i64>,
    acks: Vec<(u64, bool)>,
    release: Vec<u64>,
}

impl Flight {
    /// A disconnected shipper. `seed` jitters the reconnect backoff.
    pub fn new(config: &super::ShipperConfig, metrics: Arc<AgentMetrics>, seed: u64) -> Self {
        Self {
            offer_zstd: config.zstd,
            epoch: config.epoch,
            newest_first_configured: config.newest_first,
            newest_first: config.newest_first,
            max_in_flight_bytes: config.max_in_flight_bytes,
            backoff: Backoff::new(config.backoff_min, config.backoff_max).with_jitter(seed),
            metrics,
            terms: None,
            collector: None,
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            drained: false,
            hold_until: None,
            acks: Vec::new(),
            release: Vec::new(),
        }
    }

    /// The session's terms while connected.
    pub fn terms(&self) -> Option<Terms> {
        self.terms
    }

    /// What the collector announced in its latest Welcome (`None` before
    /// the first one; kept while disconnected).
    pub fn collector_terms(&self) -> Option<&CollectorTerms> {
        self.collector.as_ref()
    }

    /// A connection attempt starts.
    pub fn handle_connecting(&mut self) {
        self.metrics.connects.add(1);
    }

    /// The agent's [`Hello`].
    pub fn hello(&self) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: concat!("ferry-agent ", env!("CARGO_PKG_VERSION")).into(),
            compression: if self.offer_zstd {
                vec![compression::ZSTD, compression::NONE]
            } else {
                vec![compression::NONE]
            },
            epoch: self.epoch,
            // No promise: the collector resolves sequences from what it
            // stores and from the drops this journal reports
            // (docs/protocol.md).
            resolved_below: 0,
        }
    }

    /// The [`Hello`] as a frame for the first stream.
    pub fn hello_frame(&self) -> Result<Vec<u8>, ProtocolError> {
        let body = codec::to_vec(&self.hello()).map_err(|e| ProtocolError::Undecodable {
            what: "Hello",
            detail: e.to_string(),
        })?;
        let mut frame = Vec::with_capacity(body.len() + HEADER_LEN);
        stream::write_frame(&mut frame, FrameType::Hello, compression::NONE, &body);
        Ok(frame)
    }

    /// The collector's answer to the hello, received at `now`: connected
    /// with its terms (the session's [`Terms`], and the announced
    /// [`CollectorTerms`] for [`collector_terms`](Self::collector_terms)),
    /// or refused.
    pub fn handle_welcome(
        &mut self,
        now: i64,
        frame: FrameType,
        body: &[u8],
    ) -> Result<Welcome, ProtocolError> {
        let welcome: Welcome = match frame {
            FrameType::Welcome => decode("Welcome", body)?,
            FrameType::Error => {
                let e: ErrorMsg = decode("ErrorMsg", body)?;
                return Err(ProtocolError::Refused {
                    message: e.message,
                    code: e.code,
                });
            }
            got => {
                return Err(ProtocolError::Unexpected {
                    got,
                    expected: "a welcome",
                });
            }
        };
        self.backoff.reset();
        self.metrics.connected.set(1);
        self.terms = Some(Terms {
            zstd: self.offer_zstd && welcome.compression == compression::ZSTD,
            max_streams: welcome.max_streams.max(1) as usize,
            max_frame: welcome.max_frame.max(1024),
        });
        self.collector = Some(CollectorTerms::new(welcome.clone(), now));
        self.newest_first = self.newest_first_configured;
        self.drained = false;
        Ok(welcome)
    }

    /// Batches to ask the journal for now, if the window has room and the
    /// shipper is not pausing.
    pub fn poll_fetch(&self, now: i64) -> Option<Fetch> {
        let terms = self.terms?;
        let held = self.hold_until.is_some_and(|t| now < t);
        let room = self.in_flight_bytes < self.max_in_flight_bytes
            && self.in_flight.len() < terms.max_streams;
        (room && !held && !self.drained).then(|| Fetch {
            max_bytes: self.max_in_flight_bytes - self.in_flight_bytes,
            newest_first: self.newest_first,
        })
    }

    /// What the journal handed out for a [`Fetch`]: the batches to send now
    /// (they are in flight from here), and the sequences beyond the stream
    /// limit, to hand back ([`poll_control`](Self::poll_control)).
    pub fn handle_fetched(&mut self, batches: Vec<StoredBatch>) -> Vec<StoredBatch> {
        let Some(terms) = self.terms else {
            self.release.extend(batches.iter().map(|b| b.seq));
            return Vec::new();
        };
        if batches.is_empty() {
            self.drained = true;
        }
        let mut send = Vec::with_capacity(batches.len());
        for batch in batches {
            if self.in_flight.len() >= terms.max_streams {
                self.release.push(batch.seq);
                self.drained = true;
                continue;
            }
            let bytes = batch.body.len() as u64;
            self.in_flight_bytes += bytes;
            self.in_flight.insert(batch.seq, (bytes, batch.wire_seq));
            send.push(batch);
        }
        send
    }

    /// A batch was sealed, or the periodic look: fetch again.
    pub fn handle_news(&mut self) {
        self.drained = false;
    }

    /// When the driver must wake for the state machine: the end of a pause.
    pub fn poll_timeout(&self) -> Option<i64> {
        self.hold_until
    }

    /// Time passed: a pause that ended is over.
    pub fn handle_timeout(&mut self, now: i64) {
        if self.hold_until.is_some_and(|t| now >= t) {
            self.hold_until = None;
            self.drained = false;
        }
    }

    /// The collector's answer on batch `seq`'s stream (an `Ack` or an
    /// `Error` frame), `wire` bytes sent, `latency` to the answer.
    pub fn handle_answer(
        &mut self,
        now: i64,
        seq: u64,
        frame: FrameType,
        body: &[u8],
        wire: u64,
        latency: Duration,
    ) -> Result<(), ProtocolError> {
        let ack = match frame {
            FrameType::Ack => {
                let mut ack: Ack = decode("Ack", body)?;
                let expected = self.in_flight.get(&seq).map_or(seq, |&(_, wire)| wire);
                if ack.seq != expected {
                    return Err(ProtocolError::WrongAck {
                        got: ack.seq,
                        expected,
                    });
                }
                // From here on, the batch by its outbox seq.
                ack.seq = seq;
                ack
            }
            FrameType::Error => {
                let e: ErrorMsg = decode("ErrorMsg", body)?;
                Ack::rejected(seq, e.code, e.message)
            }
            got => {
                return Err(ProtocolError::Unexpected {
                    got,
                    expected: "an ack",
                });
            }
        };
        let bytes = self.in_flight.remove(&seq).map_or(0, |(bytes, _)| bytes);
        self.in_flight_bytes -= bytes.min(self.in_flight_bytes);
        self.drained = false;
        self.metrics.wire_bytes.add(wire);
        self.metrics.ack_latency.observe(latency);
        match ack.outcome() {
            Outcome::Stored => {
                self.metrics.batches_stored.add(1);
                // Refused readings: counted by the collector (per device
                // and reason, in its store); here only on /metrics, never
                // reported back.
                for r in &ack.refused {
                    self.metrics.readings_refused.add(r.code, r.readings);
                }
                if !ack.refused.is_empty() {
                    tracing::debug!(
                        seq,
                        refused = ack.refused_readings(),
                        "the collector refused readings of a stored batch"
                    );
                }
                self.acks.push((seq, true));
            }
            Outcome::Duplicate => {
                self.metrics.batches_duplicate.add(1);
                self.acks.push((seq, true));
            }
            Outcome::Rejected { code, reason: text } if !reason::is_transient(code) => {
                self.metrics.batches_rejected.add(1);
                tracing::error!(
                    seq,
                    code,
                    reason = text,
                    "collector rejected a batch; its readings are counted as dropped"
                );
                self.acks.push((seq, false));
            }
            Outcome::Rejected { code, reason: text } => {
                self.metrics.batches_retried.add(1);
                if code == reason::DEDUPE_FULL && self.newest_first {
                    tracing::warn!(
                        seq,
                        reason = text,
                        "the collector's dedupe state is full: shipping oldest first for this session"
                    );
                    self.newest_first = false;
                }
                tracing::debug!(seq, code, reason = text, "collector asked to retry a batch");
                self.retry_later(now, seq);
            }
            Outcome::Unknown(status) => {
                self.metrics.batches_retried.add(1);
                tracing::warn!(seq, status, "unknown ack status; keeping the batch");
                self.retry_later(now, seq);
            }
        }
        Ok(())
    }

    fn retry_later(&mut self, now: i64, seq: u64) {
        self.release.push(seq);
        self.hold_until = Some(ferry_clock::after(now, RETRY_PAUSE));
    }

    /// What the journal writer must hear: acks (delete, or drop with
    /// accounting), then batches to hand out again.
    pub fn poll_control(&mut self) -> Option<Control> {
        if !self.acks.is_empty() {
            return Some(Control::Acks(std::mem::take(&mut self.acks)));
        }
        if !self.release.is_empty() {
            return Some(Control::Release(std::mem::take(&mut self.release)));
        }
        None
    }

    /// The connection is gone (the driver hands every in-flight batch back
    /// with [`Control::ReleaseAll`]): when to try again.
    pub fn handle_disconnect(&mut self, now: i64) -> i64 {
        self.metrics.disconnects.add(1);
        self.handle_closed();
        self.backoff.next_at(now)
    }

    /// The session ended without an error (shutdown).
    pub fn handle_closed(&mut self) {
        self.metrics.connected.set(0);
        self.terms = None;
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        self.hold_until = None;
        self.release.clear();
    }

    /// Bytes in flight.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, ProtocolError> {
    codec::from_bytes(what, body).map_err(|e| ProtocolError::Undecodable {
        what,
        detail: e.to_string(),
    })
}

/// Batch `batch` as a frame: its stored bytes when the session's codec is
/// the one it is stored with, re-encoded otherwise.
pub fn batch_frame(batch: StoredBatch, zstd: bool) -> Result<Vec<u8>, ProtocolError> {
    let seq = batch.seq;
    let (payload, codec_id) = match (batch.codec, zstd) {
        (compression::ZSTD, true) | (compression::NONE, false) => (batch.body, batch.codec),
        (compression::NONE, true) => match zstd::bulk::compress(&batch.body, 1) {
            Ok(c) if c.len() < batch.body.len() => (c, compression::ZSTD),
            _ => (batch.body, compression::NONE),
        },
        (compression::ZSTD, false) => (
            zstd::bulk::decompress(&batch.body, stream::DEFAULT_MAX_FRAME as usize).map_err(
                |e| ProtocolError::Stored {
                    seq,
                    detail: format!("zstd: {e}"),
                },
            )?,
            compression::NONE,
        ),
        (other, _) => {
            return Err(ProtocolError::Stored {
                seq,
                detail: format!("stored with unknown codec {other}"),
            });
        }
    };
    let mut frame = Vec::with_capacity(payload.len() + HEADER_LEN);
    stream::write_frame(&mut frame, FrameType::Batch, codec_id, &payload);
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use ferry_clock::SEC;
    use ferry_proto::session::{Refused, status};

    use super::*;
    use crate::shipper::ShipperConfig;

    const T0: i64 = 1_700_000_000 * SEC;
    const MS: i64 = 1_000_000;
    const EPOCH: u64 = 0x5eed_fa11_0000_0001;

    fn config(max_in_flight_bytes: u64) -> ShipperConfig {
        let roots = rustls::RootCertStore::empty();
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(crate::shipper::tls_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        ShipperConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 1)),
            fallbacks: Vec::new(),
            fail_back_after: Duration::from_secs(300),
            server_name: "collector".into(),
            tls: Arc::new(tls),
            max_in_flight_bytes,
            newest_first: false,
            zstd: true,
            compact: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(6),
            keep_alive: Duration::from_secs(2),
            epoch: EPOCH,
            terms: tokio::sync::watch::channel(None).0,
            devices: crate::sources::device::DeviceRegistry::new(),
        }
    }

    fn welcome(max_streams: u32, compression: u8) -> Vec<u8> {
        codec::to_vec(&welcome_msg(max_streams, compression)).unwrap()
    }

    /// A Welcome announcing no time window and no clock (an older
    /// collector's, as far as the window goes).
    fn welcome_msg(max_streams: u32, compression: u8) -> Welcome {
        Welcome {
            protocol: PROTOCOL_VERSION,
            collector_version: "test".into(),
            compression,
            max_frame: 1 << 20,
            max_streams,
            max_past_ns: 0,
            max_future_ns: 0,
            now_ns: 0,
            max_batch_readings: 0,
            rate_per_sec: 0,
            rate_burst: 0,
            idle_timeout_ms: 0,
            hello_timeout_ms: 0,
            status_interval_ms: 0,
            max_series_ids: 0,
        }
    }

    fn connected(max_in_flight_bytes: u64, max_streams: u32) -> (Flight, Arc<AgentMetrics>) {
        let metrics = Arc::new(AgentMetrics::default());
        let mut f = Flight::new(&config(max_in_flight_bytes), metrics.clone(), 1);
        f.handle_connecting();
        f.handle_welcome(
            T0,
            FrameType::Welcome,
            &welcome(max_streams, compression::ZSTD),
        )
        .unwrap();
        (f, metrics)
    }

    fn batch(seq: u64, bytes: usize) -> StoredBatch {
        StoredBatch {
            seq,
            wire_seq: seq,
            codec: compression::NONE,
            body: vec![7; bytes],
        }
    }

    fn ack(seq: u64, status: u8, code: u16) -> Vec<u8> {
        codec::to_vec(&Ack {
            seq,
            status,
            code,
            reason: String::new(),
            refused: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn the_hello_offers_what_is_configured_and_the_welcome_sets_the_terms() {
        let metrics = Arc::new(AgentMetrics::default());
        let mut f = Flight::new(&config(1000), metrics.clone(), 1);
        assert_eq!(
            f.hello().compression,
            [compression::ZSTD, compression::NONE]
        );
        assert_eq!(f.poll_fetch(T0), None, "not connected: nothing to fetch");
        let w = f
            .handle_welcome(T0, FrameType::Welcome, &welcome(0, compression::NONE))
            .unwrap();
        assert_eq!(w.collector_version, "test");
        assert_eq!(
            f.terms(),
            Some(Terms {
                zstd: false,
                max_streams: 1,
                max_frame: 1 << 20
            }),
            "the collector's choice of codec wins; at least one stream"
        );
        assert_eq!(metrics.connected.get(), 1);
        // The frame decodes as the hello.
        let frame = f.hello_frame().unwrap();
        let hello: Hello = codec::from_bytes("Hello", &frame[HEADER_LEN..]).unwrap();
        assert_eq!(hello, f.hello());
    }

    #[test]
    fn a_refusal_or_a_wrong_frame_ends_the_handshake_with_its_reason() {
        let metrics = Arc::new(AgentMetrics::default());
        let mut f = Flight::new(&config(1000), metrics, 1);
        let refusal = codec::to_vec(&ErrorMsg {
            code: reason::UNSUPPORTED,
            message: "revoked".into(),
        })
        .unwrap();
        assert_eq!(
            f.handle_welcome(T0, FrameType::Error, &refusal),
            Err(ProtocolError::Refused {
                message: "revoked".into(),
                code: reason::UNSUPPORTED
            })
        );
        assert_eq!(
            f.handle_welcome(T0, FrameType::Ack, &[]),
            Err(ProtocolError::Unexpected {
                got: FrameType::Ack,
                expected: "a welcome"
            })
        );
        assert!(matches!(
            f.handle_welcome(T0, FrameType::Welcome, &[0xc1]),
            Err(ProtocolError::Undecodable {
                what: "Welcome",
                ..
            })
        ));
        assert_eq!(f.terms(), None);
    }

    #[test]
    fn the_window_holds_at_most_its_bytes_and_streams_and_hands_the_rest_back() {
        let (mut f, _) = connected(1000, 2);
        let fetch = f.poll_fetch(T0).unwrap();
        assert_eq!(fetch.max_bytes, 1000);
        assert!(!fetch.newest_first);
        let sent = f.handle_fetched(vec![batch(1, 300), batch(2, 300), batch(3, 300)]);
        assert_eq!(sent.iter().map(|b| b.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(matches!(f.poll_control(), Some(Control::Release(s)) if s == [3]));
        assert_eq!(f.in_flight_bytes(), 600);
        assert_eq!(f.poll_fetch(T0), None, "two streams open: full");
        // One answer frees a stream and 300 bytes.
        f.handle_answer(
            T0,
            1,
            FrameType::Ack,
            &ack(1, status::STORED, 0),
            310,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(f.poll_fetch(T0).map(|f| f.max_bytes), Some(700));
        // Bytes bound the window too.
        let sent = f.handle_fetched(vec![batch(4, 800)]);
        assert_eq!(sent.len(), 1, "a batch is sent if any room is left");
        assert_eq!(f.poll_fetch(T0), None, "over the byte budget");
    }

    #[test]
    fn an_empty_journal_stops_fetching_until_news() {
        let (mut f, _) = connected(1000, 4);
        assert!(f.poll_fetch(T0).is_some());
        assert!(f.handle_fetched(Vec::new()).is_empty());
        assert_eq!(f.poll_fetch(T0), None, "drained");
        f.handle_news();
        assert!(f.poll_fetch(T0).is_some(), "a batch was sealed");
    }

    #[test]
    fn answers_become_acks_drops_or_retries_and_a_retry_pauses_fetching() {
        let (mut f, metrics) = connected(10_000, 8);
        f.handle_fetched((1..=5).map(|s| batch(s, 10)).collect());
        f.handle_answer(
            T0,
            1,
            FrameType::Ack,
            &ack(1, status::STORED, 0),
            1,
            Duration::ZERO,
        )
        .unwrap();
        f.handle_answer(
            T0,
            2,
            FrameType::Ack,
            &ack(2, status::DUPLICATE, 0),
            1,
            Duration::ZERO,
        )
        .unwrap();
        let permanent = ack(3, status::REJECTED, reason::MALFORMED);
        f.handle_answer(T0, 3, FrameType::Ack, &permanent, 1, Duration::ZERO)
            .unwrap();
        assert!(matches!(
            f.poll_control(),
            Some(Control::Acks(a)) if a == [(1, true), (2, true), (3, false)]
        ));
        assert!(f.poll_control().is_none());
        assert_eq!(f.poll_timeout(), None);
        // A transient refusal (as an Error frame) hands the batch back and
        // pauses new fetches, not answers.
        let busy = codec::to_vec(&ErrorMsg {
            code: reason::RATE_LIMITED,
            message: "busy".into(),
        })
        .unwrap();
        f.handle_answer(T0, 4, FrameType::Error, &busy, 1, Duration::ZERO)
            .unwrap();
        assert!(matches!(f.poll_control(), Some(Control::Release(s)) if s == [4]));
        assert_eq!(f.poll_timeout(), Some(T0 + 100 * MS));
        assert_eq!(f.poll_fetch(T0 + 99 * MS), None, "pausing");
        f.handle_answer(
            T0 + 50 * MS,
            5,
            FrameType::Ack,
            &ack(5, status::STORED, 0),
            1,
            Duration::ZERO,
        )
        .unwrap();
        assert!(matches!(f.poll_control(), Some(Control::Acks(a)) if a == [(5, true)]));
        f.handle_timeout(T0 + 100 * MS);
        assert_eq!(f.poll_timeout(), None);
        assert!(f.poll_fetch(T0 + 100 * MS).is_some());
        assert_eq!(
            (
                metrics.batches_stored.get(),
                metrics.batches_duplicate.get(),
                metrics.batches_rejected.get(),
                metrics.batches_retried.get()
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(metrics.wire_bytes.get(), 5);
    }

    #[test]
    fn an_ack_for_another_batch_or_a_wrong_frame_is_a_protocol_error() {
        let (mut f, _) = connected(1000, 4);
        f.handle_fetched(vec![batch(1, 10)]);
        assert_eq!(
            f.handle_answer(
                T0,
                1,
                FrameType::Ack,
                &ack(9, status::STORED, 0),
                1,
                Duration::ZERO
            ),
            Err(ProtocolError::WrongAck {
                got: 9,
                expected: 1
            })
        );
        assert!(matches!(
            f.handle_answer(T0, 1, FrameType::Batch, &[], 1, Duration::ZERO),
            Err(ProtocolError::Unexpected { .. })
        ));
    }

    #[test]
    fn reconnects_back_off_and_a_welcome_resets_the_backoff() {
        let (mut f, metrics) = connected(1000, 4);
        f.handle_fetched(vec![batch(1, 10)]);
        let first = f.handle_disconnect(T0);
        assert_eq!(first, T0 + 100 * MS, "the first delay is the minimum");
        assert_eq!(f.terms(), None);
        assert_eq!(f.in_flight_bytes(), 0, "in flight is handed back");
        assert_eq!(metrics.connected.get(), 0);
        let delays: Vec<i64> = (0..6).map(|_| f.handle_disconnect(T0) - T0).collect();
        assert!(
            delays.iter().all(|d| (100 * MS..=2000 * MS).contains(d)),
            "{delays:?}"
        );
        assert!(delays.iter().any(|d| *d > 100 * MS), "it grows: {delays:?}");
        assert_eq!(metrics.disconnects.get(), 7);
        f.handle_welcome(T0, FrameType::Welcome, &welcome(4, compression::ZSTD))
            .unwrap();
        assert_eq!(
            f.handle_disconnect(T0),
            T0 + 100 * MS,
            "reset by the welcome"
        );
    }

    #[test]
    fn the_hello_names_the_journal_and_promises_nothing() {
        let f = Flight::new(&config(1000), Arc::new(AgentMetrics::default()), 1);
        let hello = f.hello();
        assert_eq!(hello.protocol, PROTOCOL_VERSION);
        assert_eq!((hello.epoch, hello.resolved_below), (EPOCH, 0));
        let frame = f.hello_frame().unwrap();
        let sent: Hello = codec::from_bytes("Hello", &frame[HEADER_LEN..]).unwrap();
        assert_eq!((sent.epoch, sent.resolved_below), (EPOCH, 0));
    }

    #[test]
    fn the_welcome_announces_the_collectors_window_on_the_agents_clock() {
        let mut f = Flight::new(&config(1000), Arc::new(AgentMetrics::default()), 1);
        assert_eq!(f.collector_terms(), None, "no Welcome yet");
        // The collector's clock runs 2 s ahead of the agent's; it accepts
        // readings from an hour back to ten minutes ahead.
        let mut w = welcome_msg(4, compression::ZSTD);
        w.now_ns = T0 + 2 * SEC;
        w.max_past_ns = 3_600 * SEC as u64;
        w.max_future_ns = 600 * SEC as u64;
        w.idle_timeout_ms = 6_000;
        f.handle_welcome(T0, FrameType::Welcome, &codec::to_vec(&w).unwrap())
            .unwrap();
        let terms = f.collector_terms().cloned().unwrap();
        assert_eq!(terms.welcome, w);
        assert_eq!(terms.clock_offset_ns, 2 * SEC);
        // Ten seconds later on the agent's clock the collector's reads
        // T0 + 12 s.
        let collector_now = T0 + 12 * SEC;
        assert_eq!(
            terms.timestamp_window(T0 + 10 * SEC),
            Some((collector_now - 3_600 * SEC, collector_now + 600 * SEC))
        );
        // The latest Welcome's terms outlive the connection.
        f.handle_disconnect(T0 + 20 * SEC);
        assert_eq!(f.collector_terms(), Some(&terms));
        // An older collector announces no window and no clock.
        f.handle_welcome(
            T0 + 30 * SEC,
            FrameType::Welcome,
            &welcome(4, compression::ZSTD),
        )
        .unwrap();
        let old = f.collector_terms().unwrap();
        assert_eq!(old.clock_offset_ns, 0);
        assert_eq!(old.timestamp_window(T0 + 30 * SEC), None);
        // A refused session leaves the last terms as they were.
        let refusal = codec::to_vec(&ErrorMsg {
            code: reason::UNSUPPORTED,
            message: "revoked".into(),
        })
        .unwrap();
        assert!(
            f.handle_welcome(T0 + 40 * SEC, FrameType::Error, &refusal)
                .is_err()
        );
        assert_eq!(f.collector_terms().map(|t| t.clock_offset_ns), Some(0));
    }

    #[test]
    fn readings_refused_in_a_stored_batch_are_counted_by_reason_and_the_batch_is_acked() {
        let (mut f, metrics) = connected(10_000, 8);
        f.handle_fetched(vec![batch(1, 10), batch(2, 10)]);
        let refused = codec::to_vec(&Ack {
            seq: 1,
            status: status::STORED,
            code: 0,
            reason: String::new(),
            refused: vec![
                Refused {
                    code: reason::BAD_TIMESTAMP,
                    readings: 3,
                },
                Refused {
                    code: reason::SERIES_LIMIT,
                    readings: 2,
                },
                Refused {
                    code: 999,
                    readings: 1,
                },
            ],
        })
        .unwrap();
        f.handle_answer(T0, 1, FrameType::Ack, &refused, 1, Duration::ZERO)
            .unwrap();
        f.handle_answer(
            T0,
            2,
            FrameType::Ack,
            &ack(2, status::STORED, 0),
            1,
            Duration::ZERO,
        )
        .unwrap();
        assert!(matches!(
            f.poll_control(),
            Some(Control::Acks(a)) if a == [(1, true), (2, true)]
        ));
        assert_eq!(
            (
                metrics.readings_refused.get(reason::BAD_TIMESTAMP),
                metrics.readings_refused.get(reason::SERIES_LIMIT),
                metrics.readings_refused.get(999),
            ),
            (3, 2, 1)
        );
        assert_eq!(metrics.batches_stored.get(), 2);
        let text = metrics.render();
        for line in [
            "ferry_agent_readings_refused_total{reason=\"bad_timestamp\"} 3\n",
            "ferry_agent_readings_refused_total{reason=\"series_limit\"} 2\n",
            "ferry_agent_readings_refused_total{reason=\"other\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn a_full_dedupe_state_turns_a_newest_first_session_oldest_first() {
        let mut c = config(10_000);
        c.newest_first = true;
        let mut f = Flight::new(&c, Arc::new(AgentMetrics::default()), 1);
        f.handle_welcome(T0, FrameType::Welcome, &welcome(8, compression::ZSTD))
            .unwrap();
        assert_eq!(f.poll_fetch(T0).map(|x| x.newest_first), Some(true));
        // Another transient refusal changes nothing.
        f.handle_fetched(vec![batch(9, 10), batch(8, 10)]);
        let busy = ack(9, status::REJECTED, reason::RATE_LIMITED);
        f.handle_answer(T0, 9, FrameType::Ack, &busy, 1, Duration::ZERO)
            .unwrap();
        f.handle_timeout(T0 + 100 * MS);
        assert_eq!(
            f.poll_fetch(T0 + 100 * MS).map(|x| x.newest_first),
            Some(true)
        );
        // DEDUPE_FULL: the batch comes back, and from now on oldest first
        // (the batches below fill the collector's gaps).
        let full = ack(8, status::REJECTED, reason::DEDUPE_FULL);
        f.handle_answer(T0 + 100 * MS, 8, FrameType::Ack, &full, 1, Duration::ZERO)
            .unwrap();
        assert!(matches!(f.poll_control(), Some(Control::Release(s)) if s == [9, 8]));
        f.handle_timeout(T0 + 200 * MS);
        assert_eq!(
            f.poll_fetch(T0 + 200 * MS).map(|x| x.newest_first),
            Some(false)
        );
        // For this session only: the next starts as configured.
        f.handle_disconnect(T0 + 300 * MS);
        f.handle_welcome(
            T0 + 400 * MS,
            FrameType::Welcome,
            &welcome(8, compression::ZSTD),
        )
        .unwrap();
        assert_eq!(
            f.poll_fetch(T0 + 400 * MS).map(|x| x.newest_first),
            Some(true)
        );
        // Oldest first as configured stays oldest first.
        let (mut f, _) = connected(10_000, 8);
        f.handle_fetched(vec![batch(1, 10)]);
        let full = ack(1, status::REJECTED, reason::DEDUPE_FULL);
        f.handle_answer(T0, 1, FrameType::Ack, &full, 1, Duration::ZERO)
            .unwrap();
        f.handle_timeout(T0 + 100 * MS);
        assert_eq!(
            f.poll_fetch(T0 + 100 * MS).map(|x| x.newest_first),
            Some(false)
        );
    }

    #[test]
    fn batches_go_as_stored_or_re_encoded_for_the_session() {
        let body: Vec<u8> = b"temperature,device=a1 value=1 ".repeat(40);
        let zstd = zstd::bulk::compress(&body, 1).unwrap();
        let stored = StoredBatch {
            seq: 1,
            wire_seq: 1,
            codec: compression::ZSTD,
            body: zstd.clone(),
        };
        let frame = batch_frame(stored.clone(), true).unwrap();
        assert_eq!(&frame[HEADER_LEN..], zstd, "as stored");
        let frame = batch_frame(stored, false).unwrap();
        assert_eq!(
            &frame[HEADER_LEN..],
            body,
            "decompressed for a plain session"
        );
        let plain = StoredBatch {
            seq: 2,
            wire_seq: 2,
            codec: compression::NONE,
            body: body.clone(),
        };
        assert_eq!(&batch_frame(plain, true).unwrap()[HEADER_LEN..], zstd);
        let odd = StoredBatch {
            seq: 3,
            wire_seq: 3,
            codec: 9,
            body: Vec::new(),
        };
        assert!(matches!(
            batch_frame(odd, true),
            Err(ProtocolError::Stored { seq: 3, .. })
        ));
    }
}
