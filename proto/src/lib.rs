//! Ferry's shared vocabulary: the data model, its MessagePack encoding and the
//! framing of the two links, for firmware, agent and collector alike.
//!
//! `#![no_std]` and sans-IO: no sockets, no clocks, no async. Features:
//! `alloc` for the owned batch types, `std` (default) for the `rmp-serde`
//! encoder. Without features the crate builds for microcontrollers and keeps
//! the device link ([`link`], [`serial`]) and the stream framing ([`stream`]).
//!
//! # Layout
//! - [`wire`]: the pinned MessagePack representation (arrays and tags) and the
//!   macros that declare wire types;
//! - [`codec`]: encode and decode single messages with either encoder;
//! - [`series`], [`batch`], [`compact`], [`sketch`], [`session`], [`health`] (`alloc`):
//!   what agents send collectors; [`query`] (`alloc`): the collector's JSON
//!   query answer, for its clients, with [`json`]'s string times and values;
//! - [`link`]: what devices and gateways say to each other (no allocation);
//! - [`stream`]: length-prefixed frames on QUIC streams;
//! - [`serial`]: COBS + CRC-32C frames on serial links.
//!
//! The byte-level specification is docs/protocol.md; its test vectors in
//! docs/protocol-vectors.json are checked against this crate through both
//! encoders.
#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod codec;
pub mod link;
pub mod serial;
pub mod stream;
pub mod wire;

#[cfg(feature = "alloc")]
pub mod batch;
#[cfg(feature = "alloc")]
pub mod compact;
#[cfg(feature = "alloc")]
pub mod json;
#[cfg(feature = "alloc")]
pub mod query;
#[cfg(feature = "alloc")]
pub mod series;
#[cfg(feature = "alloc")]
pub mod session;
#[cfg(feature = "alloc")]
pub mod sketch;

/// [`HealthRecord::kind`](batch::HealthRecord::kind) codes.
pub mod health {
    /// Readings dropped by the agent because its journal reached its disk
    /// budget under the `drop_oldest` policy.
    pub const DROPPED_JOURNAL_FULL: u16 = 1;
    /// Reports a device dropped because its retry buffer was full.
    pub const DROPPED_DEVICE_RING: u16 = 2;
    /// Readings too late for their window and configured to be dropped.
    pub const DROPPED_LATE: u16 = 3;
    /// Input refused by a source (malformed line, bad frame).
    pub const REJECTED_INPUT: u16 = 4;
    /// Readings refused because a source's queue was full (backpressure
    /// could not be applied, e.g. UDP).
    pub const DROPPED_QUEUE_FULL: u16 = 5;
    /// Readings in batches the collector rejected permanently (a reason code
    /// below 100): counted so that the loss still reaches the collector.
    pub const DROPPED_REJECTED: u16 = 6;
    /// Readings a source handed to the agent's journal (journaled, or
    /// dropped as late), sent periodically: they equal what the collector
    /// stored plus kinds 1, 3, 6 and 10, so every reading is accounted for.
    pub const RECEIVED: u16 = 7;
    /// Readings the agent refused at ingest because their timestamp was
    /// outside the collector's accepted window (announced in Welcome, or
    /// the agent's configured default before the first Welcome): counted
    /// per origin, one producer's bad clock costing none of the others'
    /// readings.
    pub const REJECTED_TIMESTAMP: u16 = 8;
    /// Datagrams the kernel dropped on an agent's UDP socket because its
    /// receive buffer was full (`/proc/net/udp`'s `drops`), counted for the
    /// source's name: datagrams, not readings (each may hold many lines).
    pub const DROPPED_KERNEL: u16 = 9;
    /// Readings in a corrupt journal the agent moved aside that could not
    /// be read back: the journal's ledger file (kept beside it) says how
    /// many readings it held; the batches still readable in its bytes are
    /// shipped with their own epoch and seq, and the rest is counted here,
    /// under the origin `journal` (which source or device they came from
    /// was in the unreadable part).
    pub const DROPPED_CORRUPT_JOURNAL: u16 = 10;
    /// Readings of a new aggregated series the agent refused because its
    /// memory budget (agent `[agent] memory_budget`) had no room for the
    /// series' window state. Not handed to the journal, so not in kind 7.
    /// (Line-protocol series that do not fit in the series-key caches are
    /// parsed uncached, never refused.)
    pub const DROPPED_MEMORY_BUDGET: u16 = 11;
    /// String fields of accepted line protocol lines that a source skipped
    /// (Ferry stores numbers; the line's numeric fields were kept). Not a
    /// loss: a string was never a reading, so it is in no `RECEIVED` count
    /// and [`is_dropped`] is false for it.
    pub const SKIPPED_STRING_FIELDS: u16 = 12;
    /// Producer connections an agent's line-protocol TCP listener closed at
    /// its `max_connections` (the idlest, to serve a new one), counted for
    /// the source's name. Connections, not readings, and not a loss: a
    /// closed connection's complete lines were journaled, so
    /// [`is_dropped`] is false for it.
    pub const CONNECTIONS_EVICTED: u16 = 13;
    /// Producer connections an agent's line-protocol TCP listener closed
    /// because they sent nothing for `idle_timeout` or held an unfinished
    /// line for `line_timeout`, counted for the source's name. Connections,
    /// not readings; not a loss (the unfinished line was never a reading).
    pub const CONNECTIONS_TIMED_OUT: u16 = 14;

    /// True for kinds that count readings lost on the agent's side (1, 2,
    /// 3, 5, 6, 8, 9, 10, 11): what the collector adds to an agent's
    /// `dropped` figure. Kind 2 counts device reports and kind 9 datagrams,
    /// not readings.
    pub fn is_dropped(kind: u16) -> bool {
        matches!(
            kind,
            DROPPED_JOURNAL_FULL
                | DROPPED_DEVICE_RING
                | DROPPED_LATE
                | DROPPED_QUEUE_FULL
                | DROPPED_REJECTED
                | REJECTED_TIMESTAMP
                | DROPPED_KERNEL
                | DROPPED_CORRUPT_JOURNAL
                | DROPPED_MEMORY_BUDGET
        )
    }

    /// The kind's name, as the collector's CLI, API and metrics show it;
    /// `None` for kinds this version does not know (shown as `kind_<n>`).
    pub fn name(kind: u16) -> Option<&'static str> {
        Some(match kind {
            DROPPED_JOURNAL_FULL => "journal_full",
            DROPPED_DEVICE_RING => "device_ring",
            DROPPED_LATE => "late",
            REJECTED_INPUT => "rejected_input",
            DROPPED_QUEUE_FULL => "queue_full",
            DROPPED_REJECTED => "rejected_batch",
            RECEIVED => "received",
            REJECTED_TIMESTAMP => "rejected_timestamp",
            DROPPED_KERNEL => "dropped_kernel",
            DROPPED_CORRUPT_JOURNAL => "corrupt_journal",
            DROPPED_MEMORY_BUDGET => "memory_budget",
            SKIPPED_STRING_FIELDS => "skipped_string_fields",
            CONNECTIONS_EVICTED => "connections_evicted",
            CONNECTIONS_TIMED_OUT => "connections_timed_out",
            _ => return None,
        })
    }
}
