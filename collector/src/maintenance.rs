//! The maintenance task: every `storage.maintenance_interval`, passes of
//! [`RetentionPlan`] (compaction, downsampling, retention) back to back
//! while a backlog of settled buckets remains, ingest commits running
//! between them; then the period again. The decisions are [`Schedule`]'s
//! (sans-IO, fake-clock tests below); [`run`] only sleeps until the
//! deadline it gives and runs the passes.

use std::sync::Arc;
use std::time::Duration;

use ferry_clock::{Clock, SystemClock, until};
use tokio::sync::watch;

use crate::RetentionPlan;
use crate::server::Shared;

/// Runs maintenance on `shared`'s store every `every` until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    let clock = SystemClock;
    let mut schedule = Schedule::new(every, clock.now_ns());
    loop {
        let now = clock.now_ns();
        match schedule.poll_pass(now) {
            Due::At(deadline) => tokio::select! {
                _ = crate::stopped(&mut stop) => return,
                _ = tokio::time::sleep(until(now, deadline)) => {}
            },
            Due::Now => {
                if *stop.borrow() {
                    return;
                }
                let plan = RetentionPlan::at(now, &shared.config.storage);
                let pass = match shared.maintain(plan).await {
                    Ok((_, true)) => Pass::More,
                    Ok((_, false)) => Pass::Done,
                    Err(e) => {
                        tracing::error!("maintenance failed: {e}");
                        Pass::Failed
                    }
                };
                schedule.handle_pass(pass);
            }
        }
    }
}

/// When the next maintenance pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Run one now.
    Now,
    /// Not before this deadline (ns).
    At(i64),
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Done, with a backlog left: the next pass follows at once.
    More,
    /// Done, nothing left: the round is over.
    Done,
    /// Failed (logged): the round is over, the next one a period later.
    Failed,
}

/// The maintenance schedule, sans-IO: rounds every `every` from the start
/// (the first one a period after it), a round being passes back to back
/// until one leaves no backlog or fails. A round that starts late (or one
/// that ran past the next round's time) is followed by one round, not a
/// burst of catch-up rounds: the next is then a period after the late start
/// (tokio's `MissedTickBehavior::Delay`, which the loop used before).
#[derive(Debug)]
pub(crate) struct Schedule {
    every: Duration,
    next_round: i64,
    backlog: bool,
}

impl Schedule {
    /// Started at `now`: the first round a period later.
    pub(crate) fn new(every: Duration, now: i64) -> Self {
        Self {
            every,
            next_round: ferry_clock::after(now, every),
            backlog: false,
        }
    }

    /// At `now`: run a pass now (a round that is due starts here), or sleep
    /// until the deadline.
    pub(crate) fn poll_pass(&mut self, now: i64) -> Due {
        if self.backlog {
            return Due::Now;
        }
        if now < self.next_round {
            return Due::At(self.next_round);
        }
        let on_time = ferry_clock::after(self.next_round, self.every);
        self.next_round = if on_time > now {
            on_time
        } else {
            ferry_clock::after(now, self.every)
        };
        Due::Now
    }

    /// The pass [`Schedule::poll_pass`] asked for ended.
    pub(crate) fn handle_pass(&mut self, pass: Pass) {
        self.backlog = pass == Pass::More;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = ferry_clock::SEC;
    const T0: i64 = 1_700_000_000 * S;
    const EVERY: Duration = Duration::from_secs(60);

    #[test]
    fn rounds_come_a_period_apart_from_the_start() {
        let mut s = Schedule::new(EVERY, T0);
        assert_eq!(s.poll_pass(T0), Due::At(T0 + 60 * S), "not at start");
        assert_eq!(s.poll_pass(T0 + 59 * S), Due::At(T0 + 60 * S));
        assert_eq!(s.poll_pass(T0 + 60 * S), Due::Now);
        s.handle_pass(Pass::Done);
        // The pass took 2 s: the next round keeps the start's rhythm.
        assert_eq!(s.poll_pass(T0 + 62 * S), Due::At(T0 + 120 * S));
        // A timer that fires a little late does not shift the rhythm.
        assert_eq!(s.poll_pass(T0 + 120 * S + 3), Due::Now);
        s.handle_pass(Pass::Done);
        assert_eq!(s.poll_pass(T0 + 121 * S), Due::At(T0 + 180 * S));
    }

    #[test]
    fn passes_run_back_to_back_while_a_backlog_remains() {
        let mut s = Schedule::new(EVERY, T0);
        let mut now = T0 + 60 * S;
        let mut passes = 0;
        for pass in [Pass::More, Pass::More, Pass::More, Pass::Done] {
            assert_eq!(s.poll_pass(now), Due::Now);
            passes += 1;
            s.handle_pass(pass);
            now += S;
        }
        assert_eq!(passes, 4);
        assert_eq!(s.poll_pass(now), Due::At(T0 + 120 * S));
    }

    #[test]
    fn a_failed_pass_ends_the_round_until_the_next_period() {
        let mut s = Schedule::new(EVERY, T0);
        assert_eq!(s.poll_pass(T0 + 60 * S), Due::Now);
        s.handle_pass(Pass::More);
        assert_eq!(s.poll_pass(T0 + 61 * S), Due::Now);
        s.handle_pass(Pass::Failed);
        assert_eq!(s.poll_pass(T0 + 61 * S), Due::At(T0 + 120 * S));
    }

    #[test]
    fn a_round_past_the_next_ones_time_is_followed_by_one_round_not_a_burst() {
        let mut s = Schedule::new(EVERY, T0);
        assert_eq!(s.poll_pass(T0 + 60 * S), Due::Now);
        s.handle_pass(Pass::More);
        // The backlog takes 150 s, past two rounds' times.
        assert_eq!(s.poll_pass(T0 + 210 * S), Due::Now);
        s.handle_pass(Pass::Done);
        assert_eq!(s.poll_pass(T0 + 210 * S), Due::Now, "one round at once");
        s.handle_pass(Pass::Done);
        assert_eq!(
            s.poll_pass(T0 + 211 * S),
            Due::At(T0 + 270 * S),
            "then a period after it started"
        );
    }

    #[test]
    fn a_late_wake_runs_one_round_and_restarts_the_rhythm_from_it() {
        let mut s = Schedule::new(EVERY, T0);
        // Suspended for ten minutes.
        assert_eq!(s.poll_pass(T0 + 600 * S), Due::Now);
        s.handle_pass(Pass::Done);
        assert_eq!(s.poll_pass(T0 + 601 * S), Due::At(T0 + 660 * S));
    }
}
