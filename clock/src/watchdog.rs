//! The service watchdog's schedule (systemd's `WatchdogSec=`), sans-IO and
//! shared by `ferry-agent` (around its journal writer) and
//! `ferry-collector` (around its store writer): a probe of the writer twice
//! per period, as sd_watchdog_enabled(3) advises, each given half a period
//! to be answered, the next half a period after the last ended; `WATCHDOG=1`
//! only for an answer, so a stalled writer stops the pings and the service
//! manager restarts the process. [`run`] (feature `tokio`) is the one
//! tokio loop around it; each daemon passes how it probes its writer and
//! what it tells systemd.

use core::time::Duration;

use crate::{after, until};

/// How a probe of the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The writer answered.
    Answered,
    /// The writer is gone.
    WriterGone,
    /// No answer by the probe's deadline.
    TimedOut,
}

/// What to tell systemd after a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// `WATCHDOG=1`.
    Watchdog,
    /// Nothing, and log that the writer stalls (it waited this long).
    Withhold {
        /// How long the probe waited.
        waited: Duration,
    },
    /// Nothing more: the writer has stopped.
    Stop,
}

/// The watchdog's schedule (module docs).
#[derive(Debug)]
pub struct Watchdog {
    every: Duration,
    next_probe: i64,
    sent: Option<i64>,
}

impl Watchdog {
    /// For `WatchdogSec = timeout`, started at `now`: the first probe at once.
    pub fn new(timeout: Duration, now: i64) -> Self {
        Self {
            every: timeout / 2,
            next_probe: now,
            sent: None,
        }
    }

    /// When to send the next probe.
    pub fn poll_probe(&self) -> i64 {
        self.next_probe
    }

    /// A probe went out at `now`: its answer's deadline.
    pub fn handle_probe_sent(&mut self, now: i64) -> i64 {
        self.sent = Some(now);
        after(now, self.every)
    }

    /// The probe ended at `now`: what to tell systemd; the next probe goes
    /// out half a period later.
    pub fn handle_probe(&mut self, now: i64, probe: Probe) -> Notify {
        let sent = self.sent.take().unwrap_or(now);
        self.next_probe = after(now, self.every);
        match probe {
            Probe::Answered => Notify::Watchdog,
            Probe::WriterGone => Notify::Stop,
            Probe::TimedOut => Notify::Withhold {
                waited: until(sent, now),
            },
        }
    }
}

/// Drives a [`Watchdog`] for `WatchdogSec = timeout` with `clock` until the
/// writer is gone: sleeps until each probe, runs `probe` (true: the writer
/// answered, false: it is gone) for at most its deadline, and hands every
/// notification but [`Notify::Stop`] to `notify`; returns at the stop.
#[cfg(feature = "tokio")]
pub async fn run<F, P>(
    timeout: Duration,
    clock: &dyn crate::Clock,
    mut probe: F,
    mut notify: impl FnMut(Notify),
) where
    F: FnMut() -> P,
    P: core::future::Future<Output = bool>,
{
    let mut dog = Watchdog::new(timeout, clock.now_ns());
    loop {
        tokio::time::sleep(until(clock.now_ns(), dog.poll_probe())).await;
        let deadline = dog.handle_probe_sent(clock.now_ns());
        let ended = tokio::select! {
            alive = probe() => if alive { Probe::Answered } else { Probe::WriterGone },
            _ = tokio::time::sleep(until(clock.now_ns(), deadline)) => Probe::TimedOut,
        };
        match dog.handle_probe(clock.now_ns(), ended) {
            Notify::Stop => return,
            n => notify(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = crate::SEC;
    const T0: i64 = 1_700_000_000 * S;

    #[test]
    fn the_writer_is_probed_twice_per_period_and_each_answer_notified() {
        let mut w = Watchdog::new(Duration::from_secs(10), T0);
        assert_eq!(w.poll_probe(), T0, "the first probe at once");
        assert_eq!(
            w.handle_probe_sent(T0),
            T0 + 5 * S,
            "half a period to answer"
        );
        assert_eq!(w.handle_probe(T0 + 1, Probe::Answered), Notify::Watchdog);
        assert_eq!(w.poll_probe(), T0 + 5 * S + 1);
        let sent = w.poll_probe();
        w.handle_probe_sent(sent);
        assert_eq!(w.handle_probe(sent + 2, Probe::Answered), Notify::Watchdog);
        assert_eq!(w.poll_probe(), sent + 2 + 5 * S);
    }

    #[test]
    fn a_stalled_writer_gets_no_ping_until_it_answers_again() {
        let mut w = Watchdog::new(Duration::from_secs(10), T0);
        let mut notified = Vec::new();
        let mut now = T0;
        // Stalled for three probes (15 s: past WatchdogSec, systemd
        // restarts the process), then answering.
        for probe in [
            Probe::TimedOut,
            Probe::TimedOut,
            Probe::TimedOut,
            Probe::Answered,
        ] {
            now = w.poll_probe();
            let deadline = w.handle_probe_sent(now);
            let ended = if probe == Probe::TimedOut {
                deadline
            } else {
                now
            };
            notified.push(w.handle_probe(ended, probe));
            now = ended;
        }
        let withheld = Notify::Withhold {
            waited: Duration::from_secs(5),
        };
        assert_eq!(notified, [withheld, withheld, withheld, Notify::Watchdog]);
        assert_eq!(
            now,
            T0 + 30 * S,
            "each timeout is followed by half a period"
        );
    }

    #[test]
    fn a_gone_writer_stops_the_watchdog() {
        let mut w = Watchdog::new(Duration::from_secs(2), T0);
        w.handle_probe_sent(T0);
        assert_eq!(w.handle_probe(T0, Probe::WriterGone), Notify::Stop);
    }

    /// tokio's paused time as the wall clock, so `run` is driven by a fake
    /// clock that moves only while every task waits.
    #[cfg(feature = "tokio")]
    struct PausedClock(tokio::time::Instant);

    #[cfg(feature = "tokio")]
    impl crate::Clock for PausedClock {
        fn now_ns(&self) -> i64 {
            T0 + crate::nanos(self.0.elapsed())
        }
    }

    #[cfg(feature = "tokio")]
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_loop_pings_for_answers_withholds_for_a_stall_and_stops_when_the_writer_goes() {
        let clock = PausedClock(tokio::time::Instant::now());
        // The writer answers at once twice, stalls one probe, answers after
        // a second, then is gone.
        let answers = core::cell::RefCell::new(vec![
            (Duration::ZERO, true),
            (Duration::ZERO, true),
            (Duration::from_secs(3600), true),
            (Duration::from_secs(1), true),
            (Duration::ZERO, false),
        ]);
        let probed = core::cell::RefCell::new(Vec::new());
        let mut notified = Vec::new();
        run(
            Duration::from_secs(10),
            &clock,
            || {
                probed
                    .borrow_mut()
                    .push((crate::Clock::now_ns(&clock) - T0) / S);
                let (after, alive) = answers.borrow_mut().remove(0);
                async move {
                    tokio::time::sleep(after).await;
                    alive
                }
            },
            |n| notified.push((n, (crate::Clock::now_ns(&clock) - T0) / S)),
        )
        .await;
        assert_eq!(*probed.borrow(), [0, 5, 10, 20, 26]);
        assert_eq!(
            notified,
            [
                (Notify::Watchdog, 0),
                (Notify::Watchdog, 5),
                (
                    Notify::Withhold {
                        waited: Duration::from_secs(5)
                    },
                    15
                ),
                (Notify::Watchdog, 21),
            ]
        );
        assert!(answers.borrow().is_empty(), "returned at the stop");
    }
}
