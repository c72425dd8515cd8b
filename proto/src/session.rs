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
    /// The first frame on a stream was not the expected message.
    pub const UNEXPECTED: u16 = 6;
    /// The agent sends faster than its configured rate.
    pub const RATE_LIMITED: u16 = 100;
    /// The collector could not commit; try again.
    pub const STORAGE: u16 = 101;
    /// The collector is shutting down; try again after reconnecting.
    pub const SHUTTING_DOWN: u16 = 102;

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
        }
    }

    /// Stored before.
    pub fn duplicate(seq: u64) -> Self {
        Self {
            seq,
            status: status::DUPLICATE,
            code: 0,
            reason: String::new(),
        }
    }

    /// Refused with a reason.
    pub fn rejected(seq: u64, code: u16, reason: impl Into<String>) -> Self {
        Self {
            seq,
            status: status::REJECTED,
            code,
            reason: reason.into(),
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
