//! Rate-of-change rules: per series, the change between the oldest and the
//! newest reading within `window` (event time), scaled to units per `per`,
//! judged by the same firing/resolved machine as thresholds.
//!
//! Memory per series is bounded by `max_points`: past it the oldest
//! readings go first, so the measured span can be shorter than `window`.
//! A reading older than the newest seen is ignored (see `level`).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::level::{LevelState, Transition};
use super::rules::RateRule;

/// One series' recent readings and level.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateState {
    /// `(ts, value)` within the window, oldest first.
    pub points: VecDeque<(i64, f64)>,
    /// The level of the rate.
    pub level: LevelState,
}

impl RateState {
    /// Takes reading `(ts, v)` into account; the transition and the rate
    /// that caused it.
    pub fn observe(&mut self, rule: &RateRule, ts: i64, v: f64) -> Option<(Transition, f64)> {
        if !v.is_finite() || self.points.back().is_some_and(|&(t, _)| ts < t) {
            return None;
        }
        self.points.push_back((ts, v));
        let horizon = ts.saturating_sub(rule.window_ns);
        while self.points.len() > 2 && self.points.front().is_some_and(|&(t, _)| t < horizon) {
            self.points.pop_front();
        }
        while self.points.len() > rule.max_points {
            self.points.pop_front();
        }
        let &(t0, v0) = self.points.front()?;
        let span = ts - t0;
        if span <= 0 {
            return None;
        }
        let rate = (v - v0) / span as f64 * rule.per_ns as f64;
        self.level
            .observe(&rule.bounds, ts, rate)
            .map(|t| (t, rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::rules::RateRaw;

    const MIN: i64 = 60_000_000_000;

    fn storm() -> RateRule {
        RateRule::try_from(RateRaw {
            name: "storm".into(),
            selector: "pressure_hpa".into(),
            window: "3h".into(),
            per: "1h".into(),
            above: None,
            below: Some(-1.0),
            for_: "0s".into(),
            hysteresis: 0.5,
            max_points: 1024,
        })
        .unwrap()
    }

    #[test]
    fn a_fast_drop_fires_and_a_steady_reading_resolves() {
        let rule = storm();
        let mut st = RateState::default();
        let mut got = Vec::new();
        // Steady at 1013 hPa for 3 h, one reading per 10 min.
        for i in 0..18 {
            assert_eq!(st.observe(&rule, i * 10 * MIN, 1013.0), None);
        }
        // Then falling 0.5 hPa per 10 min = 3 hPa/h.
        for i in 18..30 {
            let v = 1013.0 - (i - 17) as f64 * 0.5;
            if let Some(x) = st.observe(&rule, i * 10 * MIN, v) {
                got.push((i, x));
            }
        }
        // The window spans 3 h back to a 1013 hPa reading: the rate at
        // reading i is -(i - 17) * 0.5 / 3 hPa/h, past -1 at i = 24.
        assert_eq!(got.len(), 1, "{got:?}");
        let (i, (t, rate)) = got[0];
        assert!(matches!(t, Transition::Fired { .. }));
        assert_eq!(i, 24);
        assert!((rate - (-3.5 / 3.0)).abs() < 1e-9, "{rate}");
        // Pressure holds at its low (1007): the rate over the window eases
        // off and resolves once at or above -0.5/h (bound + hysteresis):
        // when the reading 3 h back is 1008.5 or lower, at i = 44.
        let low = 1013.0 - 12.0 * 0.5;
        let mut resolved = None;
        for i in 30..60 {
            if let Some((t, _)) = st.observe(&rule, i * 10 * MIN, low) {
                resolved = Some((i, t));
                break;
            }
        }
        let (i, t) = resolved.expect("resolves");
        assert!(matches!(t, Transition::Resolved { .. }));
        assert_eq!(i, 44);
    }

    #[test]
    fn points_are_bounded_and_old_readings_ignored() {
        let mut rule = storm();
        rule.max_points = 4;
        let mut st = RateState::default();
        for i in 0..10 {
            st.observe(&rule, i * MIN, 1000.0);
        }
        assert_eq!(st.points.len(), 4);
        assert_eq!(st.observe(&rule, 3 * MIN, 0.0), None);
        assert_eq!(st.points.len(), 4);
        assert_eq!(st.points.back(), Some(&(9 * MIN, 1000.0)));
    }
}
