//! The journal's row formats (MessagePack, [`ferry_proto::wire`] rules).

use alloc::string::String;
use alloc::vec::Vec;

use ferry_proto::batch::Batch;
use ferry_proto::wire_struct;

wire_struct! {
    /// Readings attributed to one origin (device id or source name).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct OriginCount {
        /// Device id or source name.
        pub origin: String,
        /// Readings (raw, or counted inside window aggregates).
        pub readings: u64,
    }
}

wire_struct! {
    /// One commit's contribution to the batch being filled: what the commit
    /// added, as a batch with its own dictionary (its `seq` is unused).
    #[derive(Debug, Clone, PartialEq)]
    pub struct PendingRow {
        /// Readings and closed windows.
        pub batch: Batch,
        /// Readings per origin.
        pub origins: Vec<OriginCount>,
        /// When the row was written, ns.
        pub written_ns: i64,
    }
}

wire_struct! {
    /// Bookkeeping of a sealed batch waiting in the outbox.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct OutboxMeta {
        /// Encoded batch length.
        pub bytes: u64,
        /// Readings in the batch (raw plus counted in aggregates).
        pub readings: u64,
        /// The batch's `created_ns`.
        pub created_ns: i64,
        /// Readings per origin: what is counted as dropped if the batch is.
        pub origins: Vec<OriginCount>,
    }
    appended {
        /// The batch's health records summed per kind (what the journal's
        /// [`Ledger`](super::Ledger) counts as held until the batch is
        /// delivered). Empty in a journal written before it existed.
        pub health: Vec<KindCount>,
    }
}

wire_struct! {
    /// A health count of one kind.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct KindCount {
        /// Health kind.
        pub kind: u16,
        /// Its count.
        pub count: u64,
    }
}
