//! Agent ↔ collector session messages, carried in [`crate::stream`] frames.
//!
//! A connection starts with [`Hello`] from the agent and [`Welcome`] (or
//! [`ErrorMsg`]) from the collector on the first bidirectional stream; then
//! every [`Batch`](crate::batch::Batch) travels on its own bidirectional stream
//! and is answered by one [`Ack`] on that stream. See docs/protocol.md.

use alloc::string::String;
use alloc::vec::Vec;

use crate::wire_struct;

/// The protocol version this crate speaks, sent in [`Hello`] and [`Welcome`].
pub const PROTOCOL_VERSION: u16 = 1;
/// The QUIC ALPN token of protocol version 1.
pub const ALPN: &[u8] = b"ferry/1";

pub use crate::stream::compression;

wire_struct! {
    /// First message of a connection, agent to collector.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Hello {
        /// [`PROTOCOL_VERSION`] of the agent.
        pub protocol: u16,
        /// Agent software version, for operators (`ferry-agent 0.1.0`).
        pub agent_version: String,
        /// Compression codes the agent can send, in order of preference.
        pub compression: Vec<u8>,
    }
    appended {
        /// The identity of the agent's journal: a random nonzero number
        /// chosen when the journal was created. Sequence numbers count
        /// within it; a new epoch (a replaced journal) starts again at 1.
        /// 0: the agent has no journal identity (an older agent).
        pub epoch: u64,
        /// The agent will never again send a batch of `epoch` with a
        /// sequence below this, nor a health record naming such a batch:
        /// the collector may forget those sequences. 0: no promise.
        pub resolved_below: u64,
    }
}

wire_struct! {
    /// The collector's answer to [`Hello`]: the session's terms.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Welcome {
        /// [`PROTOCOL_VERSION`] of the collector.
        pub protocol: u16,
        /// Collector software version.
        pub collector_version: String,
        /// The compression code the agent should use for batch bodies.
        pub compression: u8,
        /// Largest frame body the collector accepts, in bytes (after
        /// decompression too).
        pub max_frame: u32,
        /// Most batch streams the agent may have open at once.
        pub max_streams: u32,
    }
    appended {
        /// Readings older than `now − max_past_ns` (by the collector's
        /// clock) are refused as [`reason::BAD_TIMESTAMP`]. 0: not announced.
        pub max_past_ns: u64,
        /// Readings later than `now + max_future_ns` are refused as
        /// [`reason::BAD_TIMESTAMP`]. 0: not announced.
        pub max_future_ns: u64,
        /// The collector's clock when it wrote this Welcome, ns since the
        /// Unix epoch: an agent compares it with its own clock to apply the
        /// window above as the collector will. 0: not announced.
        pub now_ns: i64,
        /// Most raw readings in one batch. 0: not announced (the protocol
        /// limit, 1048576).
        pub max_batch_readings: u32,
        /// Readings per second this agent may send (a token bucket holding
        /// at most `rate_burst`); over it, batches are refused with the
        /// transient [`reason::RATE_LIMITED`]. 0: unlimited.
        pub rate_per_sec: u64,
        /// Size of the rate's token bucket, readings. 0 when unlimited.
        pub rate_burst: u64,
        /// The collector closes a connection silent for this long (QUIC
        /// idle timeout), ms. 0: not announced.
        pub idle_timeout_ms: u32,
        /// How long the collector waited for this session's Hello, ms.
        pub hello_timeout_ms: u32,
        /// How often the collector would like an [`AgentStatus`] on the
        /// control stream, ms. 0: this collector takes none (an older
        /// collector): the agent must not send any.
        pub status_interval_ms: u32,
        /// Revision 4: most series ids (`compact::Definitions`) the
        /// collector keeps for this session; the agent may send
        /// `CompactBatch` and `Definitions` frames only when this is not 0.
        /// 0: this collector takes none (an older collector).
        pub max_series_ids: u32,
        /// Revision 5: reference generations the collector keeps per
        /// session (`compact::References`: 2); the agent may code compact
        /// batches against value references only when this is at least 2.
        /// 0: this collector takes none (an older collector).
        pub reference_generations: u32,
    }
}

/// Most devices one [`AgentStatus`] lists; an agent with more lists those
/// seen most recently.
pub const MAX_STATUS_DEVICES: usize = 1024;
/// Longest device id and firmware string in an [`AgentStatus`], bytes.
pub const MAX_STATUS_TEXT: usize = 64;

wire_struct! {
    /// What an agent reports about itself, on the control stream, when the
    /// Welcome asked for it (`status_interval_ms`): its backlog and its
    /// devices. Informational: nothing is acknowledged, and a collector
    /// keeps only the newest per agent.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct AgentStatus {
        /// The agent's clock when it wrote this, ns since the Unix epoch.
        pub sent_ns: i64,
        /// Readings committed to the journal and not yet acknowledged:
        /// sealed batches waiting or in flight, plus the batch being filled.
        pub backlog_readings: u64,
        /// Sealed batches waiting for an ack.
        pub backlog_batches: u64,
        /// Bytes the journal holds (its budget's measure).
        pub journal_bytes: u64,
        /// The journal's disk budget, bytes.
        pub journal_budget_bytes: u64,
        /// `created_ns` of the oldest unacknowledged batch; 0: none.
        pub oldest_unacked_ns: i64,
        /// The devices on the agent's device links.
        pub devices: Vec<DeviceStatus>,
    }
}

wire_struct! {
    /// One device in an [`AgentStatus`].
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct DeviceStatus {
        /// The device id, hex (the `device` tag of its series).
        pub device: String,
        /// Firmware name and version from its `DeviceHello`.
        pub firmware: String,
        /// Its device-link protocol version.
        pub link_version: u8,
        /// Whether its link is up now.
        pub connected: bool,
        /// When the agent last heard from it, ns since the Unix epoch.
        pub last_seen_ns: i64,
    }
}

/// What is wrong with an [`AgentStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// More devices than [`MAX_STATUS_DEVICES`].
    #[error("{count} devices exceed the limit of {MAX_STATUS_DEVICES}")]
    TooManyDevices {
        /// How many were listed.
        count: usize,
    },
    /// A device id or firmware string longer than [`MAX_STATUS_TEXT`].
    #[error("device {index}: {what} is {len} bytes, over the limit of {MAX_STATUS_TEXT}")]
    TooLong {
        /// Which device.
        index: usize,
        /// `device` or `firmware`.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

impl AgentStatus {
    /// Checks the limits above.
    pub fn validate(&self) -> Result<(), StatusError> {
        if self.devices.len() > MAX_STATUS_DEVICES {
            return Err(StatusError::TooManyDevices {
                count: self.devices.len(),
            });
        }
        for (index, d) in self.devices.iter().enumerate() {
            for (what, text) in [("device", &d.device), ("firmware", &d.firmware)] {
                if text.len() > MAX_STATUS_TEXT {
                    return Err(StatusError::TooLong {
                        index,
                        what,
                        len: text.len(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The range `[lo, hi]` of timestamps a collector accepts at `now_ns`, with
/// its `max_past_ns` and `max_future_ns`: one rule for the collector that
/// refuses readings and an agent that checks them before sending
/// (saturating at the ends of `i64`).
pub fn timestamp_window(now_ns: i64, max_past_ns: u64, max_future_ns: u64) -> (i64, i64) {
    let past = i64::try_from(max_past_ns).unwrap_or(i64::MAX);
    let future = i64::try_from(max_future_ns).unwrap_or(i64::MAX);
    (now_ns.saturating_sub(past), now_ns.saturating_add(future))
}

impl Welcome {
    /// The accepted timestamp range at the collector's time `collector_now_ns`
    /// ([`timestamp_window`]), or `None` when this Welcome announces no
    /// window (an older collector).
    pub fn timestamp_window(&self, collector_now_ns: i64) -> Option<(i64, i64)> {
        (self.max_past_ns > 0 && self.max_future_ns > 0)
            .then(|| timestamp_window(collector_now_ns, self.max_past_ns, self.max_future_ns))
    }
}

/// [`Ack::status`] values.
pub mod status {
    /// The batch is durably stored.
    pub const STORED: u8 = 0;
    /// The batch had been stored before; nothing was stored again.
    pub const DUPLICATE: u8 = 1;
    /// The batch was refused; see [`Ack::code`](super::Ack::code).
    pub const REJECTED: u8 = 2;
}

/// Reason codes of rejected batches and of [`ErrorMsg`].
///
/// Codes below 100 are permanent: resending the same bytes will be refused
/// again, so the agent drops the batch and counts it. Codes from 100 are
/// transient: the agent keeps the batch and resends it later.
pub mod reason {
    /// The frame or message could not be decoded.
    pub const MALFORMED: u16 = 1;
    /// The frame or decompressed body exceeds the collector's limit.
    pub const TOO_LARGE: u16 = 2;
    /// The batch decoded but breaks a rule (series names, limits, references).
    pub const INVALID: u16 = 3;
    /// A timestamp is outside the collector's sanity window.
    pub const BAD_TIMESTAMP: u16 = 4;
    /// The protocol version or compression is not supported.
    pub const UNSUPPORTED: u16 = 5;
    /// A frame of a type not expected where it came (a Batch on the control
    /// stream, a Hello on a batch stream), or of a type this receiver does
    /// not know.
    pub const UNEXPECTED: u16 = 6;
    /// Bytes follow the message in a frame body.
    pub const TRAILING_BYTES: u16 = 7;
    /// Per reading: the store holds its limit of series, and the reading's
    /// series is not among them.
    pub const SERIES_LIMIT: u16 = 8;
    /// The agent sends faster than its configured rate.
    pub const RATE_LIMITED: u16 = 100;
    /// The collector could not commit; try again.
    pub const STORAGE: u16 = 101;
    /// The collector is shutting down; try again after reconnecting.
    pub const SHUTTING_DOWN: u16 = 102;
    /// The collector's dedupe state for this agent is at its bound
    /// (`limits.max_dedupe_ranges`, `limits.max_epochs_per_agent`); try again
    /// later, when batches before this one have arrived.
    pub const DEDUPE_FULL: u16 = 103;
    /// Revision 4: a compact batch references a series id this session has
    /// no definition for; resend it with the definitions of its ids.
    pub const UNKNOWN_SERIES_ID: u16 = 104;
    /// Revision 4: the session holds `Welcome.max_series_ids` definitions
    /// and the batch's definitions would go past it; resend the batch
    /// self-contained (a `Batch` frame).
    pub const SERIES_IDS_FULL: u16 = 105;
    /// Revision 5: a compact batch is coded against (or sets a generation
    /// on top of) a reference generation the session does not hold; the
    /// agent starts its references afresh and resends the batch.
    pub const UNKNOWN_REFERENCE: u16 = 106;

    /// The code's name, as metrics and the CLI show it (`other` for codes
    /// this version does not know).
    pub fn name(code: u16) -> &'static str {
        match code {
            MALFORMED => "malformed",
            TOO_LARGE => "too_large",
            INVALID => "invalid",
            BAD_TIMESTAMP => "bad_timestamp",
            UNSUPPORTED => "unsupported",
            UNEXPECTED => "unexpected",
            TRAILING_BYTES => "trailing_bytes",
            SERIES_LIMIT => "series_limit",
            RATE_LIMITED => "rate_limited",
            STORAGE => "storage",
            SHUTTING_DOWN => "shutting_down",
            DEDUPE_FULL => "dedupe_full",
            UNKNOWN_SERIES_ID => "unknown_series_id",
            SERIES_IDS_FULL => "series_ids_full",
            UNKNOWN_REFERENCE => "unknown_reference",
            _ => "other",
        }
    }

    /// True for codes the agent should retry.
    pub fn is_transient(code: u16) -> bool {
        code >= 100
    }
}

/// QUIC application close codes used by the collector.
pub mod close {
    /// Normal close.
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol (bad hello, frame on the wrong stream).
    pub const PROTOCOL: u32 = 1;
    /// The agent's certificate was revoked.
    pub const REVOKED: u32 = 2;
    /// The collector is shutting down.
    pub const SHUTDOWN: u32 = 3;
    /// Unsupported protocol version.
    pub const VERSION: u32 = 4;
    /// Too many connections.
    pub const BUSY: u32 = 5;
    /// The session was refused after its Hello, for the reason given in the
    /// ErrorMsg sent before the close (a transient one: try again later).
    pub const REFUSED: u32 = 6;
}

wire_struct! {
    /// The collector's answer to one batch.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Ack {
        /// The batch's sequence number.
        pub seq: u64,
        /// One of [`status`].
        pub status: u8,
        /// A [`reason`] code when rejected, else 0.
        pub code: u16,
        /// Human-readable reason when rejected, else empty.
        pub reason: String,
    }
    appended {
        /// With status stored: readings of the batch the collector did not
        /// store, by reason (each reason once, codes ascending). The rest of
        /// the batch is stored. Empty otherwise.
        pub refused: Vec<Refused>,
    }
}

wire_struct! {
    /// Readings of a stored batch that the collector refused, for one reason.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Refused {
        /// A [`reason`] code ([`reason::BAD_TIMESTAMP`],
        /// [`reason::SERIES_LIMIT`]).
        pub code: u16,
        /// Readings refused (raw readings, plus the `count` of refused
        /// window aggregates).
        pub readings: u64,
    }
}

/// What an [`Ack`] says happened, as a Rust enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Stored now.
    Stored,
    /// Stored before.
    Duplicate,
    /// Refused.
    Rejected {
        /// A [`reason`] code.
        code: u16,
        /// Explanation.
        reason: &'a str,
    },
    /// A status this version does not know (a newer collector): treated as
    /// transient by agents.
    Unknown(u8),
}

impl Ack {
    /// Stored now.
    pub fn stored(seq: u64) -> Self {
        Self {
            seq,
            status: status::STORED,
            code: 0,
            reason: String::new(),
            refused: Vec::new(),
        }
    }

    /// Stored, except `refused` readings.
    pub fn stored_refusing(seq: u64, refused: Vec<Refused>) -> Self {
        Self {
            refused,
            ..Self::stored(seq)
        }
    }

    /// Readings the collector refused, summed over reasons.
    pub fn refused_readings(&self) -> u64 {
        self.refused
            .iter()
            .fold(0u64, |a, r| a.saturating_add(r.readings))
    }

    /// Stored before.
    pub fn duplicate(seq: u64) -> Self {
        Self {
            seq,
            status: status::DUPLICATE,
            code: 0,
            reason: String::new(),
            refused: Vec::new(),
        }
    }

    /// Refused with a reason.
    pub fn rejected(seq: u64, code: u16, reason: impl Into<String>) -> Self {
        Self {
            seq,
            status: status::REJECTED,
            code,
            reason: reason.into(),
            refused: Vec::new(),
        }
    }

    /// The outcome as an enum.
    pub fn outcome(&self) -> Outcome<'_> {
        match self.status {
            status::STORED => Outcome::Stored,
            status::DUPLICATE => Outcome::Duplicate,
            status::REJECTED => Outcome::Rejected {
                code: self.code,
                reason: &self.reason,
            },
            other => Outcome::Unknown(other),
        }
    }
}

wire_struct! {
    /// A refusal that is not about one batch (bad hello, unexpected frame).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ErrorMsg {
        /// A [`reason`] code.
        pub code: u16,
        /// Explanation.
        pub message: String,
    }
}
