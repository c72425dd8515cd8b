//! At most one log line per interval, counting what was held back: the
//! agent's connection limits, MQTT reconnects and the collector's cluster
//! worker log through it (sans-IO: the caller passes `now`).

use core::time::Duration;

/// Logs at most once per `every`, counting what it held back.
#[derive(Debug, Clone)]
pub struct LogLimit {
    every_ns: i64,
    last: Option<i64>,
    held_back: u64,
}

impl LogLimit {
    /// At most one log line per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every_ns: crate::nanos(every),
            last: None,
            held_back: 0,
        }
    }

    /// An event at `now`: `Some(events held back before it)` when it should
    /// be logged, `None` when it is held back (and counted).
    pub fn event(&mut self, now: i64) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_sub(t) < self.every_ns)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(core::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = crate::SEC;

    #[test]
    fn a_limit_is_logged_once_per_interval_with_the_count_held_back() {
        let mut l = LogLimit::new(Duration::from_secs(10));
        assert_eq!(l.event(0), Some(0));
        assert_eq!(l.event(S), None);
        assert_eq!(l.event(10 * S - 1), None);
        assert_eq!(l.event(10 * S), Some(2));
        assert_eq!(l.event(25 * S), Some(0));
    }
}
