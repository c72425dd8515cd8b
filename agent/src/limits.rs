//! One memory budget for everything the agent holds per series or per
//! connection ([`MemoryBudget`], `[agent] memory_budget`).
//!
//! What is charged to it, and what happens at the bound:
//! - **Series-key caches** (one per line-protocol connection or socket,
//!   [`KeyCache`](crate::sources::line::KeyCache)): every cached key is
//!   charged an estimate of its heap bytes. When a key cannot be charged,
//!   the line is **parsed without caching** its series (its readings are
//!   kept, in groups of their own: a full cache costs parsing time, never
//!   readings; [`MemoryBudget::uncached_lines`]), and the budget asks every
//!   cache to evict itself ([`MemoryBudget::pressure`]) so that series can
//!   be cached again.
//! - **Connection buffers**: a connection's read buffer is charged while it
//!   holds bytes ([`Charge::set`]), and handed back when it is empty (an idle
//!   connection holds no buffer). Buffers are bounded per connection by the
//!   source's settings, so they are charged even past the bound: they make
//!   caches evict and new series be refused, never a read fail.
//! - **Readings waiting for their commit** ([`Hold`]): a TCP connection
//!   parses a chunk only once [`CHUNK_HOLD`] more bytes fit under the
//!   limit (or nothing else is held: one chunk always proceeds), parses
//!   only as many lines as that covers, holds what the chunk holds (its
//!   keys and readings, and the journal's working copy of them,
//!   [`held_bytes`]) and hands it back when the commit returns. Without
//!   room the connection waits and stops reading, so a flood of new series
//!   fills its producer's socket instead of the agent's memory
//!   (**backpressure**, never a lost reading: [`MemoryBudget::waits`]).
//! - **The batch being built**: the journal writer holds the batch's
//!   series dictionary and readings ([`crate::journal::Journal::pending_heap_bytes`])
//!   after every commit, whatever the limit (it is bounded by
//!   `batch_max_readings` and sealed within `batch_linger`); while it holds
//!   the budget, connections wait. Holds are transient: they never make
//!   window state refuse a series ([`Charge::try_grow_beside_holds`]).
//! - **Window state**: every series with open windows is charged
//!   [`WINDOW_SERIES_BYTES`] by the writer; a reading of a new aggregated
//!   series past the bound is refused and counted the same way.
//!
//! Freed memory is handed back to the operating system when the budget goes
//! quiet ([`MemoryBudget::activity`] feeds the idle trim in
//! [`memory`](crate::memory)).
//!
//! The default budget is what a 32 MiB agent has left for these after its
//! journal's page cache and a fixed reserve for the rest (runtime, TLS and
//! QUIC, batches being sealed and sent): [`default_budget`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};

/// The resident size the default budget is sized for.
pub const AGENT_TARGET_BYTES: u64 = 32 << 20;
/// What the agent needs beyond its journal cache and the budget: binary,
/// runtime, TLS and QUIC, batches being sealed and sent (12.5–13.3 MiB
/// peak measured with 1,000 series, minus the 4 MiB page cache), and the
/// allocator's own overhead on what the budget charges: with the `edge`
/// build, 8 connections × 65,536 distinct series peaked at 34.2–35.3 MiB
/// with a 12 MiB budget (16 MiB reserved) and at 26.9 with 8 MiB
/// (tests/tests/bounded.rs, agent/README.md), so 20 MiB, for a default
/// budget of 8 MiB.
pub const RESERVE_BYTES: u64 = 20 << 20;
/// The smallest default budget, whatever the journal cache.
pub const MIN_DEFAULT_BYTES: u64 = 1 << 20;
/// What one series with open windows is charged: its key, its state in the
/// aggregator's map and its open windows' running aggregates (without
/// sketches; a sketch adds up to a few KiB and is bounded by the rule).
pub const WINDOW_SERIES_BYTES: u64 = 512;

/// The hold a TCP connection takes before it parses a chunk: the chunk
/// parses at most as many lines as this covers (a chunk of 4,096 lines of
/// cached series fits; about 1,300 lines of new series, [`held_bytes`]).
pub const CHUNK_HOLD: u64 = 1 << 20;

/// What a chunk whose parsed readings are estimated at `heap` bytes
/// (`Parsed::heap_bytes`) holds until its commit returns: the readings and
/// keys, and half as much again for the journal's working copy during the
/// commit (its series dictionary, blocks and encoded batch). Measured
/// (agent/tests/memory_accounting.rs): 4,096 lines of new series allocate
/// 1.84 MB parsed (estimated 2.23 MB) and their commit 0.58 MB more at its
/// peak.
pub fn held_bytes(heap: u64) -> u64 {
    heap.saturating_add(heap / 2)
}

/// The parsed heap a hold of `held` bytes covers: the inverse of
/// [`held_bytes`].
pub fn heap_within(held: u64) -> u64 {
    held / 3 * 2
}

/// The budget for a journal page cache of `journal_cache` bytes: the rest
/// of [`AGENT_TARGET_BYTES`] after it and [`RESERVE_BYTES`], at least
/// [`MIN_DEFAULT_BYTES`].
pub fn default_budget(journal_cache: u64) -> u64 {
    AGENT_TARGET_BYTES
        .saturating_sub(journal_cache)
        .saturating_sub(RESERVE_BYTES)
        .max(MIN_DEFAULT_BYTES)
}

/// The shared bound, its use and what happened at it. Cheap to share
/// (`Arc`); every method is lock-free.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    refused_series: AtomicU64,
    refused_readings: AtomicU64,
    uncached_lines: AtomicU64,
    /// Bytes held by chunks waiting for their commit and by the batch
    /// being filled ([`Hold`]).
    held: AtomicU64,
    /// Chunks admitted and not yet committed.
    holders: AtomicU64,
    /// Times a connection waited for room (backpressure).
    waits: AtomicU64,
    /// Notified when bytes are handed back: waiting holds try again.
    room: Notify,
    /// Every charge and release: the idle trim watches it.
    activity: AtomicU64,
    /// Bumped when a charge fails: every cache evicts itself when it sees
    /// it move.
    pressure: watch::Sender<u64>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            refused_series: AtomicU64::new(0),
            refused_readings: AtomicU64::new(0),
            uncached_lines: AtomicU64::new(0),
            held: AtomicU64::new(0),
            holders: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            room: Notify::new(),
            activity: AtomicU64::new(0),
            pressure: watch::channel(0).0,
        })
    }

    /// The bound, bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged now (may exceed the limit by connection buffers).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Caches evicted to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Bytes those evictions released.
    pub fn evicted_bytes(&self) -> u64 {
        self.evicted_bytes.load(Ordering::Relaxed)
    }

    /// New series refused because they did not fit.
    pub fn refused_series(&self) -> u64 {
        self.refused_series.load(Ordering::Relaxed)
    }

    /// Readings of refused series (each counted as health kind 11).
    pub fn refused_readings(&self) -> u64 {
        self.refused_readings.load(Ordering::Relaxed)
    }

    /// Line-protocol lines parsed without caching their series (it did not
    /// fit): their readings were kept.
    pub fn uncached_lines(&self) -> u64 {
        self.uncached_lines.load(Ordering::Relaxed)
    }

    /// Bytes held by chunks waiting for their commit.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Times a connection waited for room before parsing (its producer
    /// waited: backpressure, no reading lost).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Admits a chunk if `bytes` more would fit under the limit, or if no
    /// other chunk is admitted and nothing is held (one chunk always
    /// proceeds, so a budget full of buffers or caches never stalls every
    /// source): an empty hold, set to what the chunk parsed
    /// ([`Hold::set`]). Nothing is reserved meanwhile: the parse is
    /// synchronous, so chunks admitted at once (one per runtime worker at
    /// most) pass the limit by at most one chunk each.
    pub fn try_hold(self: &Arc<Self>, bytes: u64) -> Option<Hold> {
        let room = self.used().saturating_add(bytes) <= self.limit;
        let alone = self.holders.load(Ordering::Relaxed) == 0 && self.held() == 0;
        (room || alone).then(|| {
            self.holders.fetch_add(1, Ordering::Relaxed);
            Hold {
                budget: self.clone(),
                bytes: 0,
                chunk: true,
            }
        })
    }

    /// An empty hold, set later whatever the limit ([`Hold::set`]): what
    /// the journal writer holds of the batch being filled.
    pub fn empty_hold(self: &Arc<Self>) -> Hold {
        Hold {
            budget: self.clone(),
            bytes: 0,
            chunk: false,
        }
    }

    /// Charges `bytes` if they fit under the limit beside everything but
    /// the holds: for state whose charge refuses readings (window state),
    /// which readings passing through on their way to the journal must not
    /// crowd out.
    pub fn try_charge_beside_holds(&self, bytes: u64) -> bool {
        let held = self.held();
        let fitted = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let after = used.checked_add(bytes)?;
                (after.saturating_sub(held) <= self.limit).then_some(after)
            })
            .is_ok();
        if fitted {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        fitted
    }

    /// Records that a connection waits for room, and asks every cache to
    /// make some.
    pub fn record_wait(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.pressure.send_modify(|p| *p = p.wrapping_add(1));
    }

    /// Resolves after bytes are handed back (a hold may fit now). Create
    /// it before [`MemoryBudget::try_hold`] so no release is missed
    /// (`tokio::sync::Notify`).
    pub fn room(&self) -> tokio::sync::futures::Notified<'_> {
        self.room.notified()
    }

    /// Records a line parsed without caching its series, and asks every
    /// cache to make room.
    pub fn record_uncached(&self) {
        self.uncached_lines.fetch_add(1, Ordering::Relaxed);
        self.pressure.send_modify(|p| *p = p.wrapping_add(1));
    }

    /// A counter that moves with every charge and release.
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    /// Moves when some charge did not fit: caches evict themselves then.
    pub fn pressure(&self) -> watch::Receiver<u64> {
        self.pressure.subscribe()
    }

    /// Charges `bytes` if they fit under the limit.
    pub fn try_charge(&self, bytes: u64) -> bool {
        let fitted = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let after = used.checked_add(bytes)?;
                (after <= self.limit).then_some(after)
            })
            .is_ok();
        if fitted {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        fitted
    }

    /// Charges `bytes` whatever the limit (bounded elsewhere: buffers).
    pub fn force_charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands back `bytes` charged before.
    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
        self.activity.fetch_add(1, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// Records an eviction of `bytes` (already released).
    pub fn record_eviction(&self, bytes: u64) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
        self.evicted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records a refused series with `readings` readings, and asks every
    /// cache to make room.
    pub fn record_refusal(&self, readings: u64) {
        self.refused_series.fetch_add(1, Ordering::Relaxed);
        self.refused_readings.fetch_add(readings, Ordering::Relaxed);
        self.pressure.send_modify(|p| *p = p.wrapping_add(1));
    }

    /// Prometheus text: `ferry_agent_memory_budget_bytes`,
    /// `ferry_agent_memory_used_bytes`, `ferry_agent_memory_evictions_total`,
    /// `ferry_agent_memory_evicted_bytes_total`,
    /// `ferry_agent_memory_refused_series_total`,
    /// `ferry_agent_memory_refused_readings_total`,
    /// `ferry_agent_memory_uncached_lines_total`,
    /// `ferry_agent_memory_held_bytes` and
    /// `ferry_agent_memory_waits_total`.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, kind, help, value) in [
            (
                "memory_budget_bytes",
                "gauge",
                "The budget of series caches, connection buffers and window state.",
                self.limit,
            ),
            (
                "memory_used_bytes",
                "gauge",
                "Bytes charged to the memory budget now.",
                self.used(),
            ),
            (
                "memory_evictions_total",
                "counter",
                "Series-key caches evicted to stay within the memory budget.",
                self.evictions(),
            ),
            (
                "memory_evicted_bytes_total",
                "counter",
                "Bytes those evictions released.",
                self.evicted_bytes(),
            ),
            (
                "memory_refused_series_total",
                "counter",
                "New series refused because they did not fit in the memory budget.",
                self.refused_series(),
            ),
            (
                "memory_refused_readings_total",
                "counter",
                "Readings of refused series (health kind 11, memory_budget).",
                self.refused_readings(),
            ),
            (
                "memory_uncached_lines_total",
                "counter",
                "Line-protocol lines parsed without caching their series (it did not fit; their readings were kept).",
                self.uncached_lines(),
            ),
            (
                "memory_held_bytes",
                "gauge",
                "Bytes held by chunks waiting for their journal commit (part of the used bytes).",
                self.held(),
            ),
            (
                "memory_waits_total",
                "counter",
                "Times a connection waited for room in the memory budget before reading on (backpressure: no reading lost).",
                self.waits(),
            ),
        ] {
            let _ = writeln!(out, "# HELP ferry_agent_{name} {help}");
            let _ = writeln!(out, "# TYPE ferry_agent_{name} {kind}");
            let _ = writeln!(out, "ferry_agent_{name} {value}");
        }
    }
}

/// Bytes one holder charged to a [`MemoryBudget`]; handed back when
/// dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Charge {
    /// Nothing charged yet.
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self { budget, bytes: 0 }
    }

    /// The budget.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Charges `more` bytes if they fit.
    pub fn try_grow(&mut self, more: u64) -> bool {
        let fitted = self.budget.try_charge(more);
        if fitted {
            self.bytes += more;
        }
        fitted
    }

    /// Charges `more` bytes if they fit beside everything but the holds
    /// ([`MemoryBudget::try_charge_beside_holds`]).
    pub fn try_grow_beside_holds(&mut self, more: u64) -> bool {
        let fitted = self.budget.try_charge_beside_holds(more);
        if fitted {
            self.bytes += more;
        }
        fitted
    }

    /// Holds exactly `bytes`, charged whatever the limit (a bounded buffer).
    pub fn set(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.budget.force_charge(bytes - self.bytes);
        } else {
            self.budget.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }

    /// Hands everything back; returns what was held.
    pub fn clear(&mut self) -> u64 {
        let bytes = self.bytes;
        self.set(0);
        bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Bytes a chunk holds of a [`MemoryBudget`] until its commit returns
/// ([`MemoryBudget::try_hold`]); handed back when dropped.
#[derive(Debug)]
pub struct Hold {
    budget: Arc<MemoryBudget>,
    bytes: u64,
    /// A chunk's (counted among the admitted), not the batch being filled.
    chunk: bool,
}

impl Hold {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds exactly `bytes` (what the parsed chunk turned out to hold:
    /// less hands the rest back; more, by at most one line, is charged
    /// whatever the limit).
    pub fn set(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.budget.force_charge(bytes - self.bytes);
            self.budget
                .held
                .fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else {
            let less = self.bytes - bytes;
            self.budget.held.fetch_sub(less, Ordering::Relaxed);
            self.budget.release(less);
        }
        self.bytes = bytes;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.chunk {
            self.budget.holders.fetch_sub(1, Ordering::Relaxed);
        }
        self.set(0);
    }
}

#[cfg(test)]
mod tests;
