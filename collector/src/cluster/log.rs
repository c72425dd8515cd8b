//! The narrow interface between front ends, workers and the durable log.
//!
//! Everything cluster mode needs from a log is here: publish one record
//! under a message id and learn once it is durable (and whether the log saw
//! the id before); pull records through a named durable consumer and ack
//! each one explicitly once applied; report the consumers' lag. NATS
//! JetStream implements it in [`super::nats`]; docs/cluster.md says what a
//! Kafka backend would take.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, so that the traits stay object-safe (one `Arc<dyn Log>`
/// whatever the backend).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A log operation that failed; the caller retries (front ends answer the
/// agent with a transient error, workers leave the record unacked).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct LogError {
    /// What was being done.
    pub what: &'static str,
    /// What the log or its client said.
    pub message: String,
}

impl LogError {
    /// A `LogError` for `what`, from any error.
    pub fn new(what: &'static str, e: impl std::fmt::Display) -> Self {
        Self {
            what,
            message: e.to_string(),
        }
    }
}

/// What the log answered to a publish, once the record is durable on its
/// replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The record's position in the log.
    pub position: u64,
    /// The log had a record with the same message id (inside its duplicate
    /// window) and stored nothing new.
    pub duplicate: bool,
}

/// One consumer's state, as the log reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLag {
    /// The consumer's name.
    pub name: String,
    /// Records not yet delivered to it.
    pub pending: u64,
    /// Records delivered but not yet acked.
    pub ack_pending: u64,
    /// Records redelivered to it so far.
    pub redelivered: u64,
    /// Position of the last record it acked (all below are acked).
    pub ack_floor: u64,
}

/// The log's state for `cluster status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatus {
    /// The stream's name.
    pub stream: String,
    /// Records in the stream.
    pub records: u64,
    /// Bytes in the stream.
    pub bytes: u64,
    /// Position of the last record.
    pub last_position: u64,
    /// Replicas configured.
    pub replicas: usize,
    /// The replicas' servers as the log names them: the leader first, then
    /// each replica with whether it is current.
    pub nodes: Vec<String>,
    /// Every durable consumer.
    pub consumers: Vec<ConsumerLag>,
}

/// The producing side, and the operator's view.
pub trait Log: Send + Sync + std::fmt::Debug {
    /// Appends `payload` under `key` (the agent: records of one agent share
    /// a subject) with message id `id`; resolves once the log has it
    /// durably.
    fn publish<'a>(
        &'a self,
        key: &'a str,
        id: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<Published, LogError>>;

    /// Opens (creating if missing) the durable consumer `name`, which
    /// starts at the log's first record.
    fn consumer<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Box<dyn Consumer>, LogError>>;

    /// The stream and every consumer's lag.
    fn status(&self) -> BoxFuture<'_, Result<LogStatus, LogError>>;

    /// True while the client is connected to the log.
    fn connected(&self) -> bool;
}

/// A durable consumer: records come in log order, each until it is acked
/// (a record not acked in time comes again).
pub trait Consumer: Send {
    /// The next record (waits for one).
    fn next(&mut self) -> BoxFuture<'_, Result<Box<dyn Delivery>, LogError>>;
}

/// One delivered record.
pub trait Delivery: Send + Sync {
    /// The record's bytes.
    fn payload(&self) -> &[u8];

    /// How many times it was delivered (1 the first time).
    fn delivered(&self) -> u64;

    /// Acks it; resolves once the log has recorded the ack.
    fn ack(&self) -> BoxFuture<'_, Result<(), LogError>>;

    /// Asks for it again after `delay` (the destination failed).
    fn retry_later(&self, delay: Duration) -> BoxFuture<'_, Result<(), LogError>>;
}
