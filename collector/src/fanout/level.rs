//! The firing/resolved state machine shared by threshold and rate rules:
//! a value must breach its bounds for `for` (event time) to fire, and come
//! back inside them by `hysteresis` to resolve.
//!
//! Time here is the readings' own timestamps. A reading older than the
//! newest one already seen for the series (late data, or a device clock
//! going backwards) is ignored: it neither starts, extends nor resets a
//! `for` timer. That keeps every transition monotonic in event time.

use serde::{Deserialize, Serialize};

use super::rules::Bounds;

/// Where one series stands.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum Level {
    /// Inside the bounds (or never seen).
    #[default]
    Ok,
    /// Breaching since `since_ns`, for less than `for`.
    Pending {
        /// First breaching reading.
        since_ns: i64,
    },
    /// Fired; the breach started at `since_ns`.
    Firing {
        /// First breaching reading.
        since_ns: i64,
    },
}

/// A transition worth an event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// The breach lasted `for`: fire.
    Fired {
        /// When the breach started.
        since_ns: i64,
    },
    /// Back inside by the hysteresis margin: resolve.
    Resolved {
        /// When the breach started.
        since_ns: i64,
    },
}

/// One series' level and the newest timestamp seen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LevelState {
    /// Where it stands.
    pub level: Level,
    /// Newest reading timestamp taken into account.
    pub last_ts: i64,
}

impl Default for LevelState {
    fn default() -> Self {
        Self {
            level: Level::Ok,
            last_ts: i64::MIN,
        }
    }
}

impl Bounds {
    /// True if `v` breaches the bounds.
    pub fn breached(&self, v: f64) -> bool {
        self.above.is_some_and(|a| v > a) || self.below.is_some_and(|b| v < b)
    }

    /// True if `v` is inside the bounds by the hysteresis margin.
    pub fn cleared(&self, v: f64) -> bool {
        self.above.is_none_or(|a| v <= a - self.hysteresis)
            && self.below.is_none_or(|b| v >= b + self.hysteresis)
    }
}

impl LevelState {
    /// Takes reading `(ts, v)` into account; see the module docs.
    pub fn observe(&mut self, b: &Bounds, ts: i64, v: f64) -> Option<Transition> {
        if ts < self.last_ts || !v.is_finite() {
            return None;
        }
        self.last_ts = ts;
        match self.level {
            Level::Ok => {
                if b.breached(v) {
                    if b.for_ns <= 0 {
                        self.level = Level::Firing { since_ns: ts };
                        return Some(Transition::Fired { since_ns: ts });
                    }
                    self.level = Level::Pending { since_ns: ts };
                }
                None
            }
            Level::Pending { since_ns } => {
                if !b.breached(v) {
                    // The `for` timer resets on any reading inside the bounds.
                    self.level = Level::Ok;
                } else if ts.saturating_sub(since_ns) >= b.for_ns {
                    self.level = Level::Firing { since_ns };
                    return Some(Transition::Fired { since_ns });
                }
                None
            }
            Level::Firing { since_ns } => {
                if b.cleared(v) {
                    self.level = Level::Ok;
                    return Some(Transition::Resolved { since_ns });
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn bounds(for_s: i64) -> Bounds {
        Bounds {
            above: Some(120.0),
            below: Some(40.0),
            hysteresis: 5.0,
            for_ns: for_s * S,
        }
    }

    /// Feeds `(second, value)` pairs; returns the transitions with the
    /// second they happened at.
    fn run(b: &Bounds, st: &mut LevelState, input: &[(i64, f64)]) -> Vec<(i64, Transition)> {
        input
            .iter()
            .filter_map(|&(t, v)| st.observe(b, t * S, v).map(|x| (t, x)))
            .collect()
    }

    #[test]
    fn fires_after_for_and_resolves_below_hysteresis() {
        let b = bounds(30);
        let mut st = LevelState::default();
        let mut input: Vec<(i64, f64)> = (0..10).map(|t| (t, 80.0)).collect();
        input.extend((10..45).map(|t| (t, 130.0)));
        input.extend((45..50).map(|t| (t, 80.0)));
        let got = run(&b, &mut st, &input);
        assert_eq!(
            got,
            vec![
                (40, Transition::Fired { since_ns: 10 * S }),
                (45, Transition::Resolved { since_ns: 10 * S }),
            ]
        );
        assert_eq!(st.level, Level::Ok);
    }

    #[test]
    fn low_bound_fires_too() {
        let b = bounds(0);
        let mut st = LevelState::default();
        assert_eq!(
            run(&b, &mut st, &[(0, 60.0), (1, 39.0), (2, 44.0), (3, 45.0)]),
            vec![
                (1, Transition::Fired { since_ns: S }),
                (3, Transition::Resolved { since_ns: S }),
            ]
        );
    }

    #[test]
    fn for_resets_when_the_value_comes_back() {
        let b = bounds(30);
        let mut st = LevelState::default();
        // 29 s above, one reading inside, 29 s above again: never fires.
        let mut input: Vec<(i64, f64)> = (0..30).map(|t| (t, 130.0)).collect();
        input.push((30, 119.0));
        input.extend((31..61).map(|t| (t, 130.0)));
        assert_eq!(run(&b, &mut st, &input), vec![]);
        assert_eq!(st.level, Level::Pending { since_ns: 31 * S });
        // The 30th second of the new breach fires.
        assert_eq!(
            run(&b, &mut st, &[(61, 130.0)]),
            vec![(61, Transition::Fired { since_ns: 31 * S })]
        );
    }

    #[test]
    fn hysteresis_stops_flapping() {
        let b = bounds(0);
        let mut st = LevelState::default();
        // Oscillating around the bound, within the margin: one firing,
        // no resolve until the value drops to 115 or below.
        let input = [
            (0, 121.0),
            (1, 119.0),
            (2, 121.0),
            (3, 116.0),
            (4, 121.0),
            (5, 115.0),
            (6, 119.0),
        ];
        assert_eq!(
            run(&b, &mut st, &input),
            vec![
                (0, Transition::Fired { since_ns: 0 }),
                (5, Transition::Resolved { since_ns: 0 }),
            ]
        );
        // Without hysteresis the same input flaps on every crossing.
        let flappy = Bounds {
            hysteresis: 0.0,
            ..b
        };
        let mut st = LevelState::default();
        assert_eq!(run(&flappy, &mut st, &input).len(), 6);
    }

    #[test]
    fn clock_going_backwards_is_ignored() {
        let b = bounds(30);
        let mut st = LevelState::default();
        assert_eq!(run(&b, &mut st, &[(100, 130.0), (120, 130.0)]), vec![]);
        // A reading from the past inside the bounds does not reset the timer,
        // and one from the past above it does not fire it early.
        assert_eq!(run(&b, &mut st, &[(50, 80.0), (10, 130.0)]), vec![]);
        assert_eq!(st.level, Level::Pending { since_ns: 100 * S });
        assert_eq!(
            run(&b, &mut st, &[(130, 130.0)]),
            vec![(130, Transition::Fired { since_ns: 100 * S })]
        );
        // Equal timestamps count; NaN is ignored.
        assert_eq!(run(&b, &mut st, &[(130, f64::NAN), (130, 80.0)]).len(), 1);
    }
}
