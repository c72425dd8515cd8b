//! Cluster mode (docs/cluster.md): front ends publish what agents send to a
//! durable, replicated log; workers apply it to their stores.
//!
//! ```text
//! agent ─QUIC─▶ front end ─publish, await ack─▶ JetStream (R=3) ─durable pull─▶ worker ─▶ store
//!        ◀─ack─ (after the log's ack)                               ◀─ack─ (after the commit)
//! ```
//!
//! - [`log`]: the narrow interface to the log ([`log::Log`]);
//! - [`nats`]: its NATS JetStream implementation;
//! - [`Record`]: what a front end publishes — an agent's Hello or one
//!   validated batch, with the front end's clock reading, so that a worker
//!   prepares the batch exactly as the front end validated it;
//! - [`worker`]: the consume loop.
//!
//! **Invariant:** a front end acks an agent's batch only after the log's
//! publish ack; a worker acks a record only after the store commit holding
//! the batch and its dedupe entry (agent, epoch, seq). A record delivered
//! again (a worker died before its ack, or the log's duplicate window had
//! passed when the agent resent) finds its dedupe entry and stores nothing.

pub mod log;
pub mod nats;
mod settle;
pub mod status;
pub mod worker;

use std::sync::Arc;

use ferry_proto::batch::Batch;
use ferry_proto::codec;
use serde::{Deserialize, Serialize};

pub use log::{Log, LogError};

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The agent, from its certificate (checked by the front end).
    pub agent: String,
    /// The agent's address, for the agents table.
    pub remote: String,
    /// The front end's clock when it validated the record (ns since the
    /// Unix epoch): a worker validates timestamps against it, not its own.
    pub now_ns: i64,
    /// What the agent sent.
    pub body: RecordBody,
}

/// What a [`Record`] carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    /// A session's Hello: the agent's journal epoch and its promise.
    Session {
        /// `Hello.epoch`.
        epoch: u64,
        /// `Hello.resolved_below`.
        resolved_below: u64,
    },
    /// A batch that passed the front end's validation, its `epoch` set
    /// (the session's when the batch named none).
    Batch(Batch),
}

impl Record {
    /// The log's message id: `agent/epoch/seq` for a batch (what the store
    /// dedupes on), `agent/epoch/hello/resolved_below` for a Hello.
    pub fn id(&self) -> String {
        match &self.body {
            RecordBody::Session {
                epoch,
                resolved_below,
            } => format!("{}/{epoch:016x}/hello/{resolved_below}", self.agent),
            RecordBody::Batch(b) => format!("{}/{:016x}/{}", self.agent, b.epoch, b.seq),
        }
    }

    /// The record's bytes (MessagePack).
    pub fn encode(&self) -> Vec<u8> {
        codec::to_vec(self).unwrap_or_default()
    }

    /// A record from its bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::DecodeError> {
        codec::from_bytes::<Self>("cluster record", bytes)
    }

    /// The label of its kind in metrics.
    pub fn kind(&self) -> &'static str {
        match self.body {
            RecordBody::Session { .. } => "session",
            RecordBody::Batch(_) => "batch",
        }
    }
}

/// Publishes `record`; counts the outcome under the front end's role.
pub(crate) async fn publish(
    log: &Arc<dyn Log>,
    metrics: &crate::metrics::Metrics,
    record: &Record,
) -> Result<log::Published, LogError> {
    let outcome = log
        .publish(&record.agent, record.id(), record.encode())
        .await;
    let label = match &outcome {
        Ok(p) if p.duplicate => "duplicate",
        Ok(_) => "published",
        Err(_) => "failed",
    };
    metrics
        .cluster_records
        .get_or_create(&vec![
            ("role", "front_end".to_owned()),
            ("kind", record.kind().to_owned()),
            ("outcome", label.to_owned()),
        ])
        .inc();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_name_their_dedupe_key() {
        let batch = Batch {
            seq: 42,
            epoch: 0xabc,
            ..Batch::default()
        };
        let r = Record {
            agent: "gw-1".into(),
            remote: "127.0.0.1:5000".into(),
            now_ns: 7,
            body: RecordBody::Batch(batch),
        };
        assert_eq!(r.id(), "gw-1/0000000000000abc/42");
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let s = Record {
            body: RecordBody::Session {
                epoch: 1,
                resolved_below: 9,
            },
            ..r
        };
        assert_eq!(s.id(), "gw-1/0000000000000001/hello/9");
        assert_eq!(Record::decode(&s.encode()).unwrap(), s);
        assert!(Record::decode(b"\x01\x02").is_err());
    }

    #[test]
    fn subjects_keep_only_safe_characters() {
        assert_eq!(nats::subject_token("gw-1"), "gw-1");
        assert_eq!(nats::subject_token("a.b *>c"), "a_b___c");
        assert_eq!(nats::subject_token(""), "_");
    }
}
