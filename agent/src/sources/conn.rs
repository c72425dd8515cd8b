//! Connection limits, sans-IO: which connection to evict at the limit
//! ([`ConnectionTable`]), when a connection has been idle or stalled in a
//! partial line for too long ([`Deadlines`]), and logging a limit at most
//! once per interval ([`LogLimit`], `ferry_clock`'s, re-exported here).
//! Time is a `now` in ns; the tokio drivers (line protocol over TCP, the
//! device link) only feed bytes and instants in and act on the answers.
//!
//! **Fair service**: a listener always accepts. At its connection limit it
//! closes the *idlest* connection — the one whose last complete line (or
//! frame) is oldest; a connection that never completed one counts from when
//! it was accepted — so idle and slow connections make room for a new
//! producer instead of keeping it in the listen backlog. Idle connections
//! are closed after `idle_timeout`, and a connection holding a partial line
//! for `line_timeout` (a slow or stuck sender) is closed too.

use std::collections::HashMap;
use std::time::Duration;

pub use ferry_clock::LogLimit;

/// Why a connection was closed by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No byte for `idle_timeout`.
    Idle,
    /// A partial line (or frame) waited `line_timeout` for its end.
    LineStalled,
    /// The idlest connection when a new one came at the limit.
    Evicted,
}

impl Closed {
    /// The name in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle_timeout",
            Self::LineStalled => "line_timeout",
            Self::Evicted => "evicted",
        }
    }
}

/// One connection's timeouts: idle (no byte) and stalled (a partial line
/// that does not end). `None` disables one.
#[derive(Debug, Clone)]
pub struct Deadlines {
    idle_ns: Option<i64>,
    line_ns: Option<i64>,
    last_byte: i64,
    /// Since when the buffer has held a partial line without any line
    /// ending after it.
    partial_since: Option<i64>,
}

fn nanos(d: Option<Duration>) -> Option<i64> {
    d.filter(|d| !d.is_zero()).map(ferry_clock::nanos)
}

impl Deadlines {
    /// A connection opened at `now`.
    pub fn new(now: i64, idle: Option<Duration>, line: Option<Duration>) -> Self {
        Self {
            idle_ns: nanos(idle),
            line_ns: nanos(line),
            last_byte: now,
            partial_since: None,
        }
    }

    /// Bytes arrived at `now`; afterwards the buffer holds a partial line
    /// (`partial`) or not, and `completed` lines ended in them.
    pub fn handle_bytes(&mut self, now: i64, completed: bool, partial: bool) {
        self.last_byte = now;
        self.partial_since = match (partial, completed, self.partial_since) {
            (false, _, _) => None,
            // A line ended: the partial one after it starts its clock now.
            (true, true, _) | (true, false, None) => Some(now),
            (true, false, Some(since)) => Some(since),
        };
    }

    /// When the connection times out with nothing more arriving.
    pub fn due(&self) -> Option<i64> {
        let idle = self.idle_ns.map(|i| self.last_byte.saturating_add(i));
        let line = self
            .partial_since
            .zip(self.line_ns)
            .map(|(since, l)| since.saturating_add(l));
        idle.into_iter().chain(line).min()
    }

    /// Whether the connection has timed out at `now`, and why.
    pub fn expired(&self, now: i64) -> Option<Closed> {
        if let (Some(since), Some(l)) = (self.partial_since, self.line_ns)
            && now >= since.saturating_add(l)
        {
            return Some(Closed::LineStalled);
        }
        if let Some(i) = self.idle_ns
            && now >= self.last_byte.saturating_add(i)
        {
            return Some(Closed::Idle);
        }
        None
    }
}

/// The open connections of one listener and when each last made progress.
#[derive(Debug, Default)]
pub struct ConnectionTable {
    next_id: u64,
    /// id → last progress (accept, or a complete line).
    last_progress: HashMap<u64, i64>,
}

impl ConnectionTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections open.
    pub fn len(&self) -> usize {
        self.last_progress.len()
    }

    /// True with none open.
    pub fn is_empty(&self) -> bool {
        self.last_progress.is_empty()
    }

    /// A connection accepted at `now`, with room for `max` connections:
    /// its id, and the idlest connection to close when the table was full
    /// (ties: the oldest id). The evicted connection is out of the table.
    pub fn admit(&mut self, now: i64, max: usize) -> (u64, Option<u64>) {
        let evict = if self.last_progress.len() >= max.max(1) {
            self.evict_idlest()
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.last_progress.insert(id, now);
        (id, evict)
    }

    /// Takes the idlest connection out of the table (ties: the oldest id),
    /// to be closed: at the limit, or when the process is out of file
    /// descriptors and cannot accept.
    pub fn evict_idlest(&mut self) -> Option<u64> {
        let idlest = self
            .last_progress
            .iter()
            .min_by_key(|&(&id, &t)| (t, id))
            .map(|(&id, _)| id)?;
        self.last_progress.remove(&idlest);
        Some(idlest)
    }

    /// Connection `id` completed a line at `now`.
    pub fn progress(&mut self, id: u64, now: i64) {
        if let Some(t) = self.last_progress.get_mut(&id) {
            *t = now;
        }
    }

    /// Connection `id` closed.
    pub fn remove(&mut self, id: u64) {
        self.last_progress.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = ferry_clock::SEC;

    fn secs(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn an_idle_connection_times_out_after_idle_timeout_from_its_last_byte() {
        let mut d = Deadlines::new(0, secs(300), secs(10));
        assert_eq!(d.due(), Some(300 * S));
        assert_eq!(d.expired(300 * S - 1), None);
        assert_eq!(d.expired(300 * S), Some(Closed::Idle));
        d.handle_bytes(100 * S, true, false);
        assert_eq!(d.due(), Some(400 * S));
        assert_eq!(d.expired(300 * S), None);
        assert_eq!(d.expired(400 * S), Some(Closed::Idle));
    }

    #[test]
    fn a_partial_line_that_does_not_end_times_out_however_slowly_it_trickles() {
        let mut d = Deadlines::new(0, secs(300), secs(10));
        d.handle_bytes(S, false, true);
        // One byte a second: bytes arrive, no line ends.
        for t in 2..11 {
            d.handle_bytes(t * S, false, true);
            assert_eq!(d.expired(t * S), None);
        }
        assert_eq!(d.due(), Some(11 * S));
        assert_eq!(d.expired(11 * S), Some(Closed::LineStalled));
    }

    #[test]
    fn a_line_ending_restarts_the_partial_clock_and_a_full_buffer_stops_it() {
        let mut d = Deadlines::new(0, None, secs(10));
        d.handle_bytes(S, false, true);
        d.handle_bytes(9 * S, true, true);
        assert_eq!(d.due(), Some(19 * S));
        d.handle_bytes(12 * S, true, false);
        assert_eq!(d.due(), None, "no partial line, no idle timeout");
        assert_eq!(d.expired(i64::MAX), None);
    }

    #[test]
    fn zero_disables_a_timeout() {
        let d = Deadlines::new(0, Some(Duration::ZERO), None);
        assert_eq!(d.due(), None);
    }

    #[test]
    fn at_the_limit_the_idlest_connection_is_evicted() {
        let mut t = ConnectionTable::new();
        let (a, none) = t.admit(0, 3);
        assert_eq!(none, None);
        let (b, _) = t.admit(S, 3);
        let (c, _) = t.admit(2 * S, 3);
        // `a` makes progress: `b` is now the idlest.
        t.progress(a, 3 * S);
        let (d, evicted) = t.admit(4 * S, 3);
        assert_eq!(evicted, Some(b));
        assert_eq!(t.len(), 3);
        // Ties go to the oldest connection.
        t.progress(c, 5 * S);
        t.progress(d, 5 * S);
        t.progress(a, 5 * S);
        let (_, evicted) = t.admit(6 * S, 3);
        assert_eq!(evicted, Some(a));
        t.remove(c);
        let (_, evicted) = t.admit(7 * S, 3);
        assert_eq!(evicted, None, "a closed connection freed its place");
    }
}
