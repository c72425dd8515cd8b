//! Journal settings: the disk budget and its policy, batching, window rules.

use alloc::string::String;
use alloc::vec::Vec;

use crate::window::WindowRule;

/// What the journal does when its disk budget is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Drop the oldest batches not in flight, counting their readings per
    /// origin (the default: fresh data matters most after a long outage).
    #[default]
    DropOldest,
    /// Refuse new readings until shipping frees space; sources slow down.
    Backpressure,
}

/// A window rule and the metrics it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateRule {
    /// Metric name pattern: `*` matches any run of characters.
    pub metric: String,
    /// The window.
    pub window: WindowRule,
}

/// Journal settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Most bytes of rows kept (see invariant 5).
    pub budget_bytes: u64,
    /// Behaviour at the budget.
    pub policy: FullPolicy,
    /// Seal a batch once this many readings and aggregates are pending.
    pub batch_max_readings: usize,
    /// Seal a batch once its oldest content is this old, ns.
    pub batch_linger_ns: i64,
    /// Window rules, first match wins; unmatched series pass raw.
    pub rules: Vec<AggregateRule>,
    /// Seal at every commit while every sealed batch is already in flight
    /// (the shipper keeps up): latency is then one journal commit, not the
    /// linger. Batches grow again as soon as the shipper falls behind.
    pub eager_seal: bool,
    /// With `eager_seal`: how many sealed batches may await their ack for a
    /// commit still to seal eagerly. 0: a commit seals once every sealed
    /// batch is answered (Nagle's rule): batches then hold what arrives in
    /// one round trip to the collector, so a steady stream goes out in
    /// fewer, larger batches at the cost of at most one round trip of
    /// latency; the commit that applies the ack seals what waited.
    /// `usize::MAX`: seal whenever everything sealed is in flight.
    pub eager_seal_unacked: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            budget_bytes: 1 << 30,
            policy: FullPolicy::DropOldest,
            batch_max_readings: 16_384,
            batch_linger_ns: 10_000_000,
            rules: Vec::new(),
            eager_seal: false,
            eager_seal_unacked: 0,
        }
    }
}

/// `*`-glob match of `name` against `pattern`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}
