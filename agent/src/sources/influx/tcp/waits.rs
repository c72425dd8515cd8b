//! The listener's and a connection's waits, sans-IO: after a failed
//! accept ([`AcceptFailures`]) and for room in the memory budget
//! ([`RoomWait`]). The tokio code in `tcp.rs` accepts, evicts, logs and
//! sleeps as these say.

use std::time::Duration;

use ferry_clock::LogLimit;

/// How long the listener pauses after a failed accept (out of file
/// descriptors and the like), so it does not spin.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What the listener does after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterFailure {
    /// Log it, with the failures held back since the last line.
    pub log: Option<u64>,
    /// Accept again at this time (ns).
    pub retry_at: i64,
}

/// Failed accepts: every one closes the idlest connection (its descriptor
/// serves the next accept) and pauses the listener [`ACCEPT_PAUSE`]; they
/// are logged at most once per interval with the count held back.
#[derive(Debug)]
pub struct AcceptFailures {
    log: LogLimit,
}

impl AcceptFailures {
    /// Logging at most once per `log_every`.
    pub fn new(log_every: Duration) -> Self {
        Self {
            log: LogLimit::new(log_every),
        }
    }

    /// An accept failed at `now` (the idlest connection is closed).
    pub fn handle_failure(&mut self, now: i64) -> AfterFailure {
        AfterFailure {
            log: self.log.event(now),
            retry_at: ferry_clock::after(now, ACCEPT_PAUSE),
        }
    }
}

/// What a connection does when its chunk's hold does not fit the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// Give its own series-key cache back first, then try again.
    EvictOwnCache,
    /// Wait for room, the budget's pressure or the stop, then try again.
    Wait,
}

/// One chunk's wait for room in the memory budget: counted once
/// (`budget.record_wait`) however often it tries; the connection's own
/// cache makes room before it waits on others.
#[derive(Debug, Default)]
pub struct RoomWait {
    counted: bool,
}

impl RoomWait {
    /// No room for the hold, the connection's cache holding
    /// `cache_charged` bytes: whether to count a wait (the first time),
    /// and what to do.
    pub fn handle_no_room(&mut self, cache_charged: u64) -> (bool, NoRoom) {
        let count = !std::mem::replace(&mut self.counted, true);
        let next = if cache_charged > 0 {
            NoRoom::EvictOwnCache
        } else {
            NoRoom::Wait
        };
        (count, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_clock::{Clock, ManualClock, SEC};

    const MS: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000 * SEC;

    #[test]
    fn a_failed_accept_pauses_100_ms_and_is_logged_once_per_interval() {
        let clock = ManualClock::new(T0);
        let mut f = AcceptFailures::new(Duration::from_secs(10));
        let mut logged = Vec::new();
        for _ in 0..5 {
            let now = clock.now_ns();
            let after = f.handle_failure(now);
            assert_eq!(after.retry_at, now + 100 * MS, "a fixed pause, no spin");
            logged.push(after.log);
            clock.set(after.retry_at);
        }
        assert_eq!(logged, [Some(0), None, None, None, None]);
        clock.set(T0 + 10 * SEC);
        assert_eq!(
            f.handle_failure(clock.now_ns()),
            AfterFailure {
                log: Some(4),
                retry_at: T0 + 10 * SEC + 100 * MS
            },
            "the next line counts the four held back"
        );
    }

    #[test]
    fn a_wait_for_room_is_counted_once_and_the_own_cache_goes_first() {
        let mut w = RoomWait::default();
        assert_eq!(w.handle_no_room(4096), (true, NoRoom::EvictOwnCache));
        assert_eq!(w.handle_no_room(0), (false, NoRoom::Wait));
        assert_eq!(w.handle_no_room(0), (false, NoRoom::Wait));
        assert_eq!(w.handle_no_room(10), (false, NoRoom::EvictOwnCache));
        let mut fresh = RoomWait::default();
        assert_eq!(fresh.handle_no_room(0), (true, NoRoom::Wait));
    }
}
