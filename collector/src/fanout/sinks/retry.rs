//! The storage sinks' retry decisions, sans-IO and shared by the three
//! kinds: after what failure to wait how long, which waits count as a retry
//! (`ferry_collector_sink_retries_total` and a warning with `retry_in_ms`),
//! and when the backoff starts again from its minimum. The sinks' tokio
//! loops only do the I/O and sleep until the deadline [`Retry`] gives.

use std::time::Duration;

use ferry_clock::Backoff;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Delivering to the server or the directory (a transient error):
    /// counted as a retry, after the backoff's delay.
    Delivery,
    /// A failure at the destination that the caller logs as an error
    /// itself (PostgreSQL's cursor moved, a manifest not saved): after the
    /// backoff's delay, not counted as a retry.
    Logged,
    /// Reading the event log or committing the cursor in the collector's
    /// own store: a fixed second, whatever the backoff.
    Local,
}

/// The wait after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pause {
    /// Until when (ns).
    pub until: i64,
    /// How long from the failure.
    pub delay: Duration,
    /// Counted as a retry (metric and warning).
    pub counted: bool,
}

/// A failure in the collector's own store waits this long.
pub(crate) const LOCAL_PAUSE: Duration = Duration::from_secs(1);

/// A sink's retry schedule: `ferry_clock::Backoff` from `min` doubling to
/// `max` for the destination's failures, reset by a delivery.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    backoff: Backoff,
}

impl Retry {
    /// Backoff delays from `min` doubling to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            backoff: Backoff::new(min, max),
        }
    }

    /// The destination answered (took the data, or refused it for good):
    /// the next failure waits `min` again.
    pub(crate) fn handle_answered(&mut self) {
        self.backoff.reset();
    }

    /// `failure` happened at `now`: how long to wait.
    pub(crate) fn handle_failure(&mut self, now: i64, failure: Failure) -> Pause {
        let delay = match failure {
            Failure::Delivery | Failure::Logged => self.backoff.next_delay(),
            Failure::Local => LOCAL_PAUSE,
        };
        Pause {
            until: ferry_clock::after(now, delay),
            delay,
            counted: failure == Failure::Delivery,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000 * ferry_clock::SEC;

    fn retry() -> Retry {
        Retry::new(Duration::from_millis(100), Duration::from_millis(350))
    }

    #[test]
    fn delivery_failures_back_off_to_the_max_are_counted_and_an_answer_resets() {
        let mut r = retry();
        let mut now = T0;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let p = r.handle_failure(now, Failure::Delivery);
            assert!(p.counted);
            waits.push((p.until - now) / MS);
            now = p.until;
        }
        assert_eq!(waits, [100, 200, 350, 350]);
        r.handle_answered();
        let p = r.handle_failure(now, Failure::Delivery);
        assert_eq!(p.until, now + 100 * MS);
        assert_eq!(p.delay, Duration::from_millis(100));
    }

    #[test]
    fn logged_failures_share_the_backoff_but_are_not_counted_as_retries() {
        let mut r = retry();
        let a = r.handle_failure(T0, Failure::Delivery);
        let b = r.handle_failure(a.until, Failure::Logged);
        assert_eq!((b.until - a.until) / MS, 200, "the same doubling");
        assert!(!b.counted);
    }

    #[test]
    fn the_collectors_own_failures_wait_a_second_and_leave_the_backoff_alone() {
        let mut r = retry();
        r.handle_failure(T0, Failure::Delivery);
        let p = r.handle_failure(T0, Failure::Local);
        assert_eq!(p.until, T0 + 1000 * MS);
        assert!(!p.counted);
        let next = r.handle_failure(T0, Failure::Delivery);
        assert_eq!(next.until, T0 + 200 * MS, "still the second delay");
    }
}
