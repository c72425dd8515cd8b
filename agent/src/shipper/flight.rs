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
mod tests;
