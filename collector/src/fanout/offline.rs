//! Offline detection: a device (a series tag, `device` by default) or an
//! agent that sent nothing for `after` is offline; its next data makes it
//! online again.
//!
//! Time here is the collector's clock (when batches were stored, and when
//! the check runs), injected as `now` so tests drive it by hand. A clock
//! going backwards never makes anything offline: silence is
//! `now - last_seen` saturated at zero, and `last_seen` only moves forward.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one watched subject did last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Newest data, collector clock.
    pub last_seen_ns: i64,
    /// Set while offline: when it was declared offline.
    pub offline_since_ns: Option<i64>,
}

/// A change of presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `subject` went silent; last heard of at `last_seen_ns`.
    Offline {
        /// `device=…` or `agent=…`.
        subject: String,
        /// Its last data.
        last_seen_ns: i64,
    },
    /// `subject` sent data again after being offline since `since_ns`.
    Online {
        /// `device=…` or `agent=…`.
        subject: String,
        /// When it was declared offline.
        since_ns: i64,
    },
}

/// Every watched subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineState {
    /// By subject.
    pub subjects: BTreeMap<String, Presence>,
}

impl OfflineState {
    /// `subject` sent data at `now_ns`.
    pub fn seen(&mut self, subject: &str, now_ns: i64) -> Option<Change> {
        let p = self.subjects.entry(subject.to_owned()).or_insert(Presence {
            last_seen_ns: now_ns,
            offline_since_ns: None,
        });
        p.last_seen_ns = p.last_seen_ns.max(now_ns);
        p.offline_since_ns.take().map(|since_ns| Change::Online {
            subject: subject.to_owned(),
            since_ns,
        })
    }

    /// Declares offline every subject silent for `after_ns` at `now_ns`.
    pub fn check(&mut self, after_ns: i64, now_ns: i64) -> Vec<Change> {
        let mut out = Vec::new();
        for (subject, p) in &mut self.subjects {
            if p.offline_since_ns.is_none() && now_ns.saturating_sub(p.last_seen_ns) >= after_ns {
                p.offline_since_ns = Some(now_ns);
                out.push(Change::Offline {
                    subject: subject.clone(),
                    last_seen_ns: p.last_seen_ns,
                });
            }
        }
        out
    }

    /// After a collector restart: silence is counted from `now_ns` for
    /// subjects still online, so the collector's own downtime does not make
    /// every device offline at once. Subjects already offline stay so.
    pub fn restart_timers(&mut self, now_ns: i64) {
        for p in self.subjects.values_mut() {
            if p.offline_since_ns.is_none() {
                p.last_seen_ns = p.last_seen_ns.max(now_ns);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn silence_makes_offline_once_and_data_online_once() {
        let mut st = OfflineState::default();
        assert_eq!(st.seen("device=d1", 0), None);
        assert_eq!(st.seen("agent=gw", 0), None);
        assert_eq!(st.check(60 * S, 59 * S), vec![]);
        st.seen("agent=gw", 30 * S);
        assert_eq!(
            st.check(60 * S, 60 * S),
            vec![Change::Offline {
                subject: "device=d1".into(),
                last_seen_ns: 0
            }]
        );
        // Checked again: already offline, nothing new.
        assert_eq!(st.check(60 * S, 70 * S), vec![]);
        assert_eq!(
            st.seen("device=d1", 75 * S),
            Some(Change::Online {
                subject: "device=d1".into(),
                since_ns: 60 * S
            })
        );
        assert_eq!(st.seen("device=d1", 76 * S), None);
        assert_eq!(
            st.check(60 * S, 90 * S),
            vec![Change::Offline {
                subject: "agent=gw".into(),
                last_seen_ns: 30 * S
            }]
        );
    }

    #[test]
    fn clock_going_backwards_makes_nothing_offline() {
        let mut st = OfflineState::default();
        st.seen("device=d1", 100 * S);
        // The clock jumps back an hour: silence is not negative, and a
        // reading stamped earlier does not move last_seen back.
        assert_eq!(st.check(60 * S, 100 * S - 3600 * S), vec![]);
        st.seen("device=d1", 50 * S);
        assert_eq!(st.subjects["device=d1"].last_seen_ns, 100 * S);
        assert_eq!(st.check(60 * S, 159 * S), vec![]);
        assert_eq!(st.check(60 * S, 160 * S).len(), 1);
    }

    #[test]
    fn restart_restarts_timers_of_online_subjects_only() {
        let mut st = OfflineState::default();
        st.seen("device=a", 0);
        st.seen("device=b", 0);
        st.check(10 * S, 10 * S);
        st.seen("device=a", 11 * S);
        st.restart_timers(1000 * S);
        assert_eq!(st.check(10 * S, 1005 * S), vec![]);
        assert_eq!(st.subjects["device=b"].offline_since_ns, Some(10 * S));
        assert_eq!(st.check(10 * S, 1010 * S).len(), 1);
    }
}
