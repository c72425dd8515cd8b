//! Which collector to connect to: the first address of `[collector]`
//! (`address`), else its `fallback` addresses in order.
//!
//! A failed connect or a lost session moves on to the next address at once,
//! until every address has failed since the last Welcome (then the shipper
//! backs off, as with one address). A session held with a fallback address
//! for `fail_back_after` is ended (its in-flight batches finished first)
//! and the first address tried again. A plain struct: callers pass the time.

use std::time::Duration;

/// The failover state. Address 0 is the primary.
#[derive(Debug, Clone)]
pub struct Failover {
    addresses: usize,
    current: usize,
    /// Addresses that failed since the last Welcome.
    failed_in_row: usize,
    fail_back_after_ns: i64,
    /// When the shipper left the primary (ns), while it is elsewhere.
    left_primary_at: Option<i64>,
}

impl Failover {
    /// `addresses` collectors (at least 1); back to the first after
    /// `fail_back_after` elsewhere.
    pub fn new(addresses: usize, fail_back_after: Duration) -> Self {
        Self {
            addresses: addresses.max(1),
            current: 0,
            failed_in_row: 0,
            fail_back_after_ns: i64::try_from(fail_back_after.as_nanos()).unwrap_or(i64::MAX),
            left_primary_at: None,
        }
    }

    /// The address to connect to (an index into the configured list).
    pub fn current(&self) -> usize {
        self.current
    }

    /// The collector at [`Failover::current`] sent its Welcome.
    pub fn handle_welcomed(&mut self) {
        self.failed_in_row = 0;
    }

    /// Connecting to [`Failover::current`], or its session, failed at
    /// `now`. True: connect to the new [`Failover::current`] at once; false:
    /// every address has failed in a row, back off first.
    pub fn handle_failed(&mut self, now: i64) -> bool {
        self.failed_in_row += 1;
        if self.addresses > 1 && self.current == 0 {
            self.left_primary_at = Some(now);
        }
        self.current = (self.current + 1) % self.addresses;
        if self.current == 0 {
            self.left_primary_at = None;
        }
        if self.failed_in_row >= self.addresses {
            self.failed_in_row = 0;
            false
        } else {
            true
        }
    }

    /// When to leave a fallback for the primary (ns); `None` on the primary.
    pub fn poll_fail_back(&self) -> Option<i64> {
        self.left_primary_at
            .filter(|_| self.current != 0)
            .map(|at| at.saturating_add(self.fail_back_after_ns))
    }

    /// The session with a fallback ended for [`Failover::poll_fail_back`]:
    /// the primary is next.
    pub fn handle_fail_back(&mut self) {
        self.current = 0;
        self.failed_in_row = 0;
        self.left_primary_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn one_address_backs_off_after_each_failure() {
        let mut f = Failover::new(1, Duration::from_secs(60));
        assert_eq!(f.current(), 0);
        assert!(!f.handle_failed(0));
        assert_eq!(f.current(), 0);
        assert_eq!(f.poll_fail_back(), None);
        assert!(!f.handle_failed(S));
    }

    #[test]
    fn fails_over_in_order_then_backs_off_when_all_failed() {
        let mut f = Failover::new(3, Duration::from_secs(60));
        assert!(f.handle_failed(0));
        assert_eq!(f.current(), 1);
        assert!(f.handle_failed(S));
        assert_eq!(f.current(), 2);
        // The third failure in a row: every address failed, back off.
        assert!(!f.handle_failed(2 * S));
        assert_eq!(f.current(), 0);
        assert_eq!(f.poll_fail_back(), None);
        // A new round: the primary fails again, the next is tried at once.
        assert!(f.handle_failed(3 * S));
        assert_eq!(f.current(), 1);
    }

    #[test]
    fn goes_back_to_the_primary_after_fail_back_after() {
        let mut f = Failover::new(2, Duration::from_secs(60));
        // The primary's session is lost at t=10 s; the fallback welcomes.
        assert!(f.handle_failed(10 * S));
        assert_eq!(f.current(), 1);
        f.handle_welcomed();
        assert_eq!(f.poll_fail_back(), Some(70 * S));
        f.handle_fail_back();
        assert_eq!(f.current(), 0);
        assert_eq!(f.poll_fail_back(), None);
        // The primary is still down at t=70 s: over to the fallback at
        // once, and back again 60 s later.
        assert!(f.handle_failed(70 * S));
        assert_eq!(f.current(), 1);
        f.handle_welcomed();
        assert_eq!(f.poll_fail_back(), Some(130 * S));
    }

    #[test]
    fn losing_a_fallback_session_tries_the_primary_next() {
        let mut f = Failover::new(2, Duration::from_secs(60));
        assert!(f.handle_failed(0));
        f.handle_welcomed();
        // The fallback's session is lost: the primary at once.
        assert!(f.handle_failed(5 * S));
        assert_eq!(f.current(), 0);
        assert_eq!(f.poll_fail_back(), None);
        // The primary refuses too: both failed in a row, back off.
        assert!(!f.handle_failed(6 * S));
        assert_eq!(f.current(), 1);
    }
}
