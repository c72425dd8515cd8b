//! Tumbling-window pre-aggregation: a plain state machine with a `now`
//! parameter, no clock and no I/O.
//!
//! Each series that matches a window rule has open windows keyed by start
//! (`start = ts − ts mod period`). A window `[start, start + period)` closes
//! when the series' watermark — the later of the newest timestamp seen on the
//! series and the caller's `now` — reaches `start + period + lateness`. A
//! reading for a window that has already closed is **late**: the caller
//! applies the rule's [`LatePolicy`] (ship it raw, or drop and count it).
//!
//! Invariant: every reading given to [`Aggregator::add`] that returns
//! [`Added::Window`] is counted in exactly one window that is either open
//! (in [`Aggregator::open_windows`]) or has been returned by
//! [`Aggregator::close_due`] exactly once.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use ferry_proto::batch::WindowAggregate;
use ferry_proto::series::SeriesKey;
use ferry_proto::sketch::DdSketch;
use ferry_proto::wire_struct;

/// What to do with a reading that arrives after its window closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    /// Ship it as a raw reading (default): nothing is lost.
    Raw,
    /// Drop it and count it (health kind `DROPPED_LATE`).
    Drop,
}

/// A window rule, resolved for one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRule {
    /// Window length in ns (> 0).
    pub period_ns: u64,
    /// How long after its end a window still accepts readings, ns.
    pub lateness_ns: u64,
    /// Keep a DDSketch per window.
    pub sketch: bool,
    /// Late readings.
    pub late: LatePolicy,
}

wire_struct! {
    /// One open window's running aggregate (persisted in the journal).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Partial {
        /// Window start, ns.
        pub start_ns: i64,
        /// Window length, ns.
        pub len_ns: u64,
        /// Readings so far.
        pub count: u64,
        /// Sum.
        pub sum: f64,
        /// Minimum.
        pub min: f64,
        /// Maximum.
        pub max: f64,
        /// Earliest reading's timestamp and value.
        pub first_ts: i64,
        /// Earliest value.
        pub first: f64,
        /// Latest reading's timestamp.
        pub last_ts: i64,
        /// Latest value.
        pub last: f64,
        /// Sketch, if the rule keeps one.
        pub sketch: Option<DdSketch>,
    }
}

impl Partial {
    fn new(start_ns: i64, rule: &WindowRule, ts: i64, v: f64) -> Self {
        let mut sketch = rule.sketch.then(DdSketch::new);
        if let Some(s) = &mut sketch {
            s.add(v);
        }
        Self {
            start_ns,
            len_ns: rule.period_ns,
            count: 1,
            sum: v,
            min: v,
            max: v,
            first_ts: ts,
            first: v,
            last_ts: ts,
            last: v,
            sketch,
        }
    }

    fn add(&mut self, ts: i64, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if ts < self.first_ts {
            self.first_ts = ts;
            self.first = v;
        }
        if ts >= self.last_ts {
            self.last_ts = ts;
            self.last = v;
        }
        if let Some(s) = &mut self.sketch {
            s.add(v);
        }
    }

    fn end(&self) -> i64 {
        self.start_ns.saturating_add_unsigned(self.len_ns)
    }

    /// The wire aggregate, for dictionary index `series`.
    pub fn to_aggregate(&self, series: u32) -> WindowAggregate {
        WindowAggregate {
            series,
            start_ns: self.start_ns,
            len_ns: self.len_ns,
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            first: self.first,
            last: self.last,
            sketch: self.sketch.clone(),
        }
    }
}

wire_struct! {
    /// A series' aggregation state: its open windows and watermark.
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct SeriesWindows {
        /// Who delivered the series (device id or source name): closed
        /// windows are attributed to it for loss accounting.
        pub origin: String,
        /// Newest timestamp seen on the series.
        pub watermark: i64,
        /// Open windows by start.
        pub open: Vec<Partial>,
    }
}

/// A window that closed.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// Its series.
    pub series: SeriesKey,
    /// Who delivered the series.
    pub origin: String,
    /// The aggregate.
    pub window: Partial,
}

/// The result of [`Aggregator::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Counted in an open window.
    Window,
    /// Its window has closed; apply the rule's late policy.
    Late(LatePolicy),
}

/// Open windows of every aggregated series.
#[derive(Debug, Default)]
pub struct Aggregator {
    series: BTreeMap<SeriesKey, (WindowRule, SeriesWindows)>,
    /// [`Aggregator::next_due`], kept as the state changes: `close_due`
    /// already visits every series, so the writer's question after each
    /// commit costs nothing.
    due: Option<i64>,
}

/// When a series' first open window closes with no further readings:
/// `i64::MIN` when its own watermark already passed it.
fn due_of(rule: &WindowRule, state: &SeriesWindows) -> Option<i64> {
    let first = state.open.first()?;
    let due = first.end().saturating_add_unsigned(rule.lateness_ns);
    Some(if due <= state.watermark {
        i64::MIN
    } else {
        due
    })
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    a.into_iter().chain(b).min()
}

fn window_start(ts: i64, period: u64) -> i64 {
    // period ≤ i64::MAX is enforced by config; rem_euclid floors negatives.
    let p = i64::try_from(period).unwrap_or(i64::MAX);
    ts - ts.rem_euclid(p)
}

impl Aggregator {
    /// An aggregator with no open windows.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores one series' state (journal replay at start).
    pub fn restore(&mut self, series: SeriesKey, rule: WindowRule, state: SeriesWindows) {
        self.due = earliest(self.due, due_of(&rule, &state));
        self.series.insert(series, (rule, state));
    }

    /// Adds a reading of `series`, delivered by `origin`, under `rule`.
    pub fn add(
        &mut self,
        series: &SeriesKey,
        origin: &str,
        rule: WindowRule,
        ts: i64,
        value: f64,
        now: i64,
    ) -> Added {
        let (r, state) = match self.series.get_mut(series) {
            Some(entry) => entry,
            None => self.series.entry(series.clone()).or_insert_with(|| {
                (
                    rule,
                    SeriesWindows {
                        origin: origin.into(),
                        watermark: i64::MIN,
                        open: Vec::new(),
                    },
                )
            }),
        };
        *r = rule;
        let start = window_start(ts, rule.period_ns);
        let end = start.saturating_add_unsigned(rule.period_ns);
        let horizon = state.watermark.max(now);
        if end.saturating_add_unsigned(rule.lateness_ns) <= horizon {
            // The rule may have changed its lateness.
            self.due = earliest(self.due, due_of(&rule, state));
            return Added::Late(rule.late);
        }
        state.watermark = state.watermark.max(ts);
        match state.open.binary_search_by_key(&start, |p| p.start_ns) {
            Ok(i) => state.open[i].add(ts, value),
            Err(i) => state.open.insert(i, Partial::new(start, &rule, ts, value)),
        }
        // Only this series changed. Its due time moved earlier or stayed
        // (a rule with more lateness makes the kept time early, once: the
        // next `close_due` recomputes it).
        self.due = earliest(self.due, due_of(&rule, state));
        Added::Window
    }

    /// The earliest `now` at which [`Aggregator::close_due`] closes a window
    /// with no further readings: the first open window's end plus lateness,
    /// over every series (`i64::MIN` when a series' watermark is already
    /// past it). None with no open window.
    pub fn next_due(&self) -> Option<i64> {
        self.due
    }

    /// Closes every window whose end plus lateness is at or before the
    /// series' watermark or `now`; returns them oldest first per series.
    /// `touched` receives the series whose state changed.
    pub fn close_due(&mut self, now: i64, mut touched: impl FnMut(&SeriesKey)) -> Vec<Closed> {
        let mut closed = Vec::new();
        let mut emptied = Vec::new();
        let mut next = None;
        for (key, (rule, state)) in &mut self.series {
            let horizon = state.watermark.max(now);
            let due = state
                .open
                .iter()
                .take_while(|p| p.end().saturating_add_unsigned(rule.lateness_ns) <= horizon)
                .count();
            if due > 0 {
                touched(key);
                closed.extend(state.open.drain(..due).map(|window| Closed {
                    series: key.clone(),
                    origin: state.origin.clone(),
                    window,
                }));
                if state.open.is_empty() {
                    emptied.push(key.clone());
                }
            }
            next = earliest(next, due_of(rule, state));
        }
        self.due = next;
        // A series with no open window keeps no state: its next reading is
        // judged against `now` alone.
        for key in emptied {
            self.series.remove(&key);
        }
        closed
    }

    /// The state of one series, if it has open windows.
    pub fn state(&self, series: &SeriesKey) -> Option<&SeriesWindows> {
        self.series.get(series).map(|(_, s)| s)
    }

    /// Series with open windows.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Number of open windows over all series.
    pub fn open_windows(&self) -> usize {
        self.series.values().map(|(_, s)| s.open.len()).sum()
    }

    /// Readings counted in open windows.
    pub fn open_readings(&self) -> u64 {
        self.series
            .values()
            .flat_map(|(_, s)| &s.open)
            .map(|p| p.count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn rule(late: LatePolicy) -> WindowRule {
        WindowRule {
            period_ns: 10 * S as u64,
            lateness_ns: 2 * S as u64,
            sketch: true,
            late,
        }
    }

    fn key() -> SeriesKey {
        SeriesKey::new("t", [("device", "d1")]).unwrap()
    }

    #[test]
    fn next_due_is_the_first_window_end_plus_lateness_over_all_series() {
        let mut a = Aggregator::new();
        assert_eq!(a.next_due(), None);
        let other = SeriesKey::new("t", [("device", "d2")]).unwrap();
        let r = rule(LatePolicy::Raw);
        // d1: windows [0, 10) and [10, 20), watermark 11 s; d2: [30, 40).
        a.add(&key(), "d1", r, 5 * S, 1.0, 0);
        a.add(&key(), "d1", r, 11 * S, 1.0, 0);
        a.add(&other, "d2", r, 31 * S, 1.0, 0);
        assert_eq!(a.next_due(), Some(12 * S));
        // Not due a nanosecond early; at it, exactly that window closes.
        assert!(a.close_due(12 * S - 1, |_| {}).is_empty());
        assert_eq!(a.close_due(12 * S, |_| {}).len(), 1);
        assert_eq!(a.next_due(), Some(22 * S));
        assert_eq!(a.close_due(22 * S, |_| {}).len(), 1);
        assert_eq!(a.next_due(), Some(42 * S));
        assert_eq!(a.close_due(42 * S, |_| {}).len(), 1);
        assert_eq!(a.next_due(), None);
        // A window the series' own data already closed is due at any time.
        a.add(&key(), "d1", r, 45 * S, 1.0, 0);
        a.add(&key(), "d1", r, 58 * S, 1.0, 0);
        assert_eq!(a.next_due(), Some(i64::MIN));
        assert_eq!(a.close_due(0, |_| {}).len(), 1);
        assert_eq!(a.next_due(), Some(62 * S));
    }

    #[test]
    fn window_closes_after_lateness_with_exact_fields() {
        let mut a = Aggregator::new();
        let k = key();
        for (ts, v) in [(1, 5.0), (3, 1.0), (9, 7.0), (2, 4.0)] {
            assert_eq!(
                a.add(&k, "d1", rule(LatePolicy::Raw), ts * S, v, 0),
                Added::Window
            );
        }
        // end = 10 s, lateness 2 s: not due at 11.999 s.
        assert!(a.close_due(12 * S - 1, |_| {}).is_empty());
        let closed = a.close_due(12 * S, |_| {});
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].origin, "d1");
        let agg = closed[0].window.to_aggregate(0);
        assert_eq!((agg.start_ns, agg.len_ns, agg.count), (0, 10 * S as u64, 4));
        assert_eq!(
            (agg.sum, agg.min, agg.max, agg.first, agg.last),
            (17.0, 1.0, 7.0, 5.0, 7.0)
        );
        assert_eq!(agg.sketch.unwrap().count(), 4);
        assert_eq!(a.open_windows(), 0);
    }

    #[test]
    fn late_readings_follow_the_policy() {
        let mut a = Aggregator::new();
        let k = key();
        a.add(&k, "d1", rule(LatePolicy::Drop), 25 * S, 1.0, 0);
        // Watermark 25 s: window [10, 20) + 2 s lateness has passed.
        assert_eq!(
            a.add(&k, "d1", rule(LatePolicy::Drop), 15 * S, 1.0, 0),
            Added::Late(LatePolicy::Drop)
        );
        // Window [0,10) judged by `now` too.
        let mut b = Aggregator::new();
        assert_eq!(
            b.add(&k, "d1", rule(LatePolicy::Raw), 5 * S, 1.0, 12 * S),
            Added::Late(LatePolicy::Raw)
        );
        assert_eq!(
            b.add(&k, "d1", rule(LatePolicy::Raw), 5 * S, 1.0, 12 * S - 1),
            Added::Window
        );
    }

    #[test]
    fn data_time_closes_windows_without_wall_clock() {
        let mut a = Aggregator::new();
        let k = key();
        a.add(&k, "d1", rule(LatePolicy::Raw), S, 1.0, 0);
        a.add(&k, "d1", rule(LatePolicy::Raw), 12 * S, 2.0, 0);
        let closed = a.close_due(0, |_| {});
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].window.start_ns, 0);
        assert_eq!(a.open_readings(), 1);
    }

    #[test]
    fn negative_timestamps_floor_to_their_window() {
        assert_eq!(window_start(-1, 10), -10);
        assert_eq!(window_start(-10, 10), -10);
        assert_eq!(window_start(9, 10), 0);
    }

    /// `next_due` kept up to date equals a scan of every series, whatever
    /// the order of readings, rules and closes.
    mod kept_due {
        use super::*;
        use proptest::prelude::*;

        fn scanned(a: &Aggregator) -> Option<i64> {
            a.series.values().filter_map(|(r, s)| due_of(r, s)).min()
        }

        #[derive(Debug, Clone)]
        enum Op {
            Add {
                series: u8,
                ts_s: i64,
                lateness_s: u64,
            },
            Close {
                now_s: i64,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0u8..4, 0i64..60, 0u64..4)
                    .prop_map(|(series, ts_s, lateness_s)| Op::Add { series, ts_s, lateness_s }),
                1 => (0i64..80).prop_map(|now_s| Op::Close { now_s }),
            ]
        }

        proptest! {
            #[test]
            fn equals_a_scan_after_every_change(ops in proptest::collection::vec(op(), 1..40)) {
                let mut a = Aggregator::new();
                for op in ops {
                    match op {
                        Op::Add { series, ts_s, lateness_s } => {
                            let key = SeriesKey::new("t", [("device", alloc::format!("d{series}").as_str())]).unwrap();
                            let r = WindowRule { lateness_ns: lateness_s * S as u64, ..rule(LatePolicy::Drop) };
                            a.add(&key, "o", r, ts_s * S, 1.0, 0);
                            // Adding can only bring the due time earlier, and
                            // is never later than the scan.
                            let kept = a.next_due();
                            prop_assert!(kept.is_some());
                            prop_assert!(kept <= scanned(&a));
                        }
                        Op::Close { now_s } => {
                            a.close_due(now_s * S, |_| {});
                            prop_assert_eq!(a.next_due(), scanned(&a));
                        }
                    }
                }
            }
        }
    }
}
