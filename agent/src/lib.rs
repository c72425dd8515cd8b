//! Ferry's gateway agent.
//!
//! Sources hand readings to the journal; the journal commits them to redb
//! (group commit) before anything is acknowledged to a source, pre-aggregates
//! windows, and seals batches into its outbox; the shipper sends batches to
//! the collector over QUIC and deletes them only when they are acknowledged.
//!
//! # Layout
//! - [`window`] and [`journal`]: the core — plain state machines with a `now`
//!   parameter over redb. `alloc` only: firmware links the same code
//!   (`default-features = false`).
//! - With the `std` feature (the daemon): `config` (agent.toml), `sources`
//!   (Influx line protocol over TCP/UDP, the device link over serial and TCP,
//!   the simulator), `writer` (the task that owns the journal; its group
//!   commit is the state machine `GroupCommit`), `shipper` (QUIC with mTLS;
//!   its window, acks and backoff are the state machine `Flight`), `admin`
//!   (status and Prometheus metrics over HTTP), `systemd` (readiness and the
//!   watchdog under a `Type=notify` unit), `memory` (a small heap),
//!   `limits` (one memory budget for series caches, connection buffers and
//!   window state),
//!   `cli` and `watch` (what the CLI's commands do), and
//!   [`run`](crate::run). Every state machine takes `now` from one clock
//!   (`ferry_clock`); docs/ARCHITECTURE.md lists them with their tests.
//!
//! **Architecture invariant:** only this crate knows the journal layout; only
//! `ferry-proto` types cross a process boundary.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod journal;
pub mod window;

#[cfg(feature = "std")]
pub mod admin;
#[cfg(feature = "std")]
pub mod cli;
#[cfg(feature = "std")]
pub mod config;
#[cfg(feature = "std")]
pub mod disk;
#[cfg(feature = "std")]
pub mod intake;
#[cfg(feature = "std")]
pub mod limits;
#[cfg(feature = "std")]
pub mod memory;
#[cfg(feature = "std")]
pub mod metrics;
#[cfg(feature = "std")]
pub mod run;
#[cfg(feature = "std")]
pub mod salvage;
#[cfg(feature = "std")]
pub mod shipper;
#[cfg(feature = "std")]
pub mod sources;
#[cfg(feature = "std")]
pub mod systemd;
#[cfg(feature = "std")]
pub mod udp_drops;
#[cfg(feature = "std")]
pub mod watch;
#[cfg(feature = "std")]
pub mod writer;
