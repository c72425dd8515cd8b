//! One clock and one backoff for Ferry's state machines.
//!
//! Ferry's logic lives in sans-IO state machines (`handle_*(now, …)`,
//! `poll_*`) that never read a clock: the thin tokio loop around each one
//! reads [`Clock::now_ns`], passes it in, and sleeps until the deadline the
//! machine asks for ([`until`]). Tests drive the same machines with a
//! [`ManualClock`] or plain numbers, and no sockets.
//!
//! **One time base:** every `now` and every deadline is wall-clock
//! nanoseconds since the Unix epoch (`i64`), the unit readings, windows and
//! the journal already use. A deadline in the past means "due now".
//!
//! [`Backoff`] is the one retry schedule: doubling from `min` to `max`,
//! optionally with full jitter from a caller-supplied seed (the state
//! machine draws no randomness of its own).
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

use core::time::Duration;

mod log_limit;
pub mod watchdog;

pub use log_limit::LogLimit;

/// Nanoseconds in a second.
pub const SEC: i64 = 1_000_000_000;

/// A source of "now", as wall-clock nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Now.
    fn now_ns(&self) -> i64;
}

/// The operating system's wall clock.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[cfg(feature = "std")]
impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        now_ns()
    }
}

/// The system clock's now, in ns since the Unix epoch (0 before 1970,
/// `i64::MAX` after 2262).
#[cfg(feature = "std")]
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A clock that moves only when told to: tests share one (it is a cheap
/// clone) between the code under test and the test itself.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Default)]
pub struct ManualClock(std::sync::Arc<core::sync::atomic::AtomicI64>);

#[cfg(feature = "std")]
impl ManualClock {
    /// A clock reading `now_ns`.
    pub fn new(now_ns: i64) -> Self {
        Self(std::sync::Arc::new(core::sync::atomic::AtomicI64::new(
            now_ns,
        )))
    }

    /// Sets the time (it may go backwards, as a wall clock can).
    pub fn set(&self, now_ns: i64) {
        self.0.store(now_ns, core::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the time forward by `d`; returns the new now.
    pub fn advance(&self, d: Duration) -> i64 {
        let d = nanos(d);
        self.0.fetch_add(d, core::sync::atomic::Ordering::SeqCst) + d
    }
}

#[cfg(feature = "std")]
impl Clock for ManualClock {
    fn now_ns(&self) -> i64 {
        self.0.load(core::sync::atomic::Ordering::SeqCst)
    }
}

/// How long from `now` until `deadline` (zero when it has passed).
pub fn until(now: i64, deadline: i64) -> Duration {
    Duration::from_nanos(u64::try_from(deadline.saturating_sub(now)).unwrap_or(0))
}

/// `d` in nanoseconds, saturating.
pub fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// `now + d`, saturating.
pub fn after(now: i64, d: Duration) -> i64 {
    now.saturating_add(nanos(d))
}

/// Exponential backoff: the `n`-th delay since the last [`reset`] has the
/// ceiling `min(max, min·2ⁿ)`; without jitter the delay is the ceiling, with
/// jitter it is uniform in `[min, ceiling]` (xorshift64 from the seed, so a
/// seed reproduces a schedule).
///
/// [`reset`]: Backoff::reset
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    /// `None`: no jitter.
    rng: Option<u64>,
}

impl Backoff {
    /// Doubling delays from `min` up to `max` (at least `min`), no jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
            rng: None,
        }
    }

    /// The same bounds with full jitter; `seed` makes it reproducible.
    #[must_use]
    pub fn with_jitter(mut self, seed: u64) -> Self {
        self.rng = Some(seed | 1);
        self
    }

    /// The next delay (and counts the attempt).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let Some(rng) = &mut self.rng else {
            return ceiling;
        };
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let span = u64::try_from(ceiling.saturating_sub(self.min).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if span == 0 {
            0
        } else {
            *rng % span.saturating_add(1)
        };
        self.min + Duration::from_nanos(jitter)
    }

    /// The deadline of the next attempt after a failure at `now`.
    pub fn next_at(&mut self, now: i64) -> i64 {
        after(now, self.next_delay())
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_jitter_delays_double_up_to_max_and_reset() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let got: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(
            got,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.next_delay(), 100 * MS);
    }

    #[test]
    fn with_jitter_delays_stay_between_min_and_the_ceiling_and_repeat_per_seed() {
        let mut b = Backoff::new(100 * MS, 2000 * MS).with_jitter(42);
        let mut delays = Vec::new();
        for i in 0..8 {
            let d = b.next_delay();
            let ceiling = (100 * MS * (1 << i)).min(2000 * MS);
            assert!(d >= 100 * MS && d <= ceiling, "{i}: {d:?}");
            delays.push(d);
        }
        assert!(delays.iter().any(|d| *d != 100 * MS), "jittered");
        b.reset();
        assert_eq!(b.next_delay(), 100 * MS, "the first ceiling is min");
        let mut x = Backoff::new(MS, 1000 * MS).with_jitter(7);
        let mut y = Backoff::new(MS, 1000 * MS).with_jitter(7);
        for _ in 0..5 {
            assert_eq!(x.next_delay(), y.next_delay());
        }
    }

    #[test]
    fn max_below_min_is_min_and_huge_attempts_saturate() {
        let mut b = Backoff::new(50 * MS, MS);
        assert_eq!(b.next_delay(), 50 * MS);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(30));
    }

    #[test]
    fn deadlines_are_wall_clock_nanoseconds() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        assert_eq!(b.next_at(5 * SEC), 5 * SEC + 100_000_000);
        assert_eq!(until(5 * SEC, 4 * SEC), Duration::ZERO, "passed: due now");
        assert_eq!(until(4 * SEC, 5 * SEC), Duration::from_secs(1));
        assert_eq!(after(i64::MAX - 1, Duration::from_secs(1)), i64::MAX);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_is_shared_by_its_clones() {
        let c = ManualClock::new(10);
        let seen_by_code = c.clone();
        assert_eq!(seen_by_code.now_ns(), 10);
        assert_eq!(c.advance(Duration::from_nanos(5)), 15);
        assert_eq!(seen_by_code.now_ns(), 15);
        c.set(3);
        assert_eq!(seen_by_code.now_ns(), 3, "a wall clock may step back");
    }
}
