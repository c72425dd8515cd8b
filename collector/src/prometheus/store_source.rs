//! The store as a [`SeriesSource`]: every stored series becomes the
//! Prometheus series [`naming`](super::naming) gives it — its raw readings
//! under its name, its windows as `_count`, `_sum`, `_min`, `_max` and
//! sketch quantiles at each window's end.
//!
//! Matchers are applied to the label sets first, from the series
//! dictionary alone; only the matching series are read, and only the parts
//! (raw, windows) that matched. Times: the store keeps nanoseconds,
//! Prometheus milliseconds; a reading at `ts_ns` is a sample at
//! `floor(ts_ns / 1e6)`, and of several readings in one millisecond the
//! last is kept.

use std::collections::{BTreeMap, HashMap};

use ferry_proto::batch::WindowAggregate;
use ferry_proto::series::SeriesKey;
use promql_parser::label::Matcher;

use super::naming::{self, AggregatePart, DEFAULT_QUANTILES};
use super::source::{Budget, QueryError, SeriesSource, matches};
use super::value::{Labels, Series, labels_of};
use crate::store::{Store, StoreError, Want};

const NS_PER_MS: i64 = 1_000_000;

/// The store, read for the Prometheus API.
#[derive(Debug)]
pub struct StoreSource<'a> {
    store: &'a Store,
    /// How long before a range's start a window may start and still end in
    /// it: the longest window length exported in full.
    pub window_margin_ns: i64,
}

impl<'a> StoreSource<'a> {
    /// Reads `store`; windows up to `window_margin_ns` long are exported
    /// wherever they end.
    pub fn new(store: &'a Store, window_margin_ns: i64) -> Self {
        Self {
            store,
            window_margin_ns,
        }
    }
}

/// One Prometheus series of a stored series.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Raw,
    Window(AggregatePart),
}

fn sorted(labels: naming::Labels) -> Labels {
    labels_of(labels)
}

/// Every Prometheus series a stored series may appear as.
fn candidates(key: &SeriesKey) -> Vec<(Part, Labels)> {
    let mut out = vec![(Part::Raw, sorted(naming::raw_labels(key)))];
    for p in AggregatePart::PLAIN {
        out.push((Part::Window(p), sorted(naming::aggregate_labels(key, p))));
    }
    for q in DEFAULT_QUANTILES {
        let p = AggregatePart::Quantile(q);
        out.push((Part::Window(p), sorted(naming::aggregate_labels(key, p))));
    }
    out
}

fn window_value(w: &WindowAggregate, part: AggregatePart) -> Option<f64> {
    Some(match part {
        AggregatePart::Count => w.count as f64,
        AggregatePart::Sum => w.sum,
        AggregatePart::Min => w.min,
        AggregatePart::Max => w.max,
        AggregatePart::Quantile(q) => w.sketch.as_ref()?.quantile(q)?,
    })
}

fn store_error(e: StoreError) -> QueryError {
    match e {
        StoreError::OverBudget(b) => QueryError::Budget {
            bound: b.label(),
            message: format!("query processing would load too many samples into memory ({b})"),
        },
        other => QueryError::Internal(other.to_string()),
    }
}

impl StoreSource<'_> {
    /// Matching `(store id, part, labels)`, and the number of stored
    /// series they come from.
    fn matching(&self, matchers: &[Matcher]) -> Result<Vec<(u64, Part, Labels)>, QueryError> {
        let keys = self.store.series_keys().map_err(store_error)?;
        let mut out = Vec::new();
        for (id, key) in keys {
            for (part, labels) in candidates(&key) {
                if matches(matchers, &labels) {
                    out.push((id, part, labels));
                }
            }
        }
        Ok(out)
    }
}

fn to_ns(ms: i64, end: bool) -> i64 {
    let ns = ms.saturating_mul(NS_PER_MS);
    if end {
        ns.saturating_add(NS_PER_MS - 1)
    } else {
        ns
    }
}

fn push(samples: &mut Vec<(i64, f64)>, ms: i64, v: f64) {
    match samples.last_mut() {
        Some(last) if last.0 == ms => last.1 = v,
        _ => samples.push((ms, v)),
    }
}

impl SeriesSource for StoreSource<'_> {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        budget: &mut Budget,
    ) -> Result<Vec<Series>, QueryError> {
        let matched = self.matching(matchers)?;
        budget.check_series(matched.len())?;
        let mut wants: BTreeMap<u64, Want> = BTreeMap::new();
        for (id, part, _) in &matched {
            let w = wants.entry(*id).or_insert(Want {
                id: *id,
                raw: false,
                windows: false,
            });
            match part {
                Part::Raw => w.raw = true,
                Part::Window(_) => w.windows = true,
            }
        }
        let wants: Vec<Want> = wants.into_values().collect();
        let limits = budget.limits();
        let data = self
            .store
            .read_series(
                &wants,
                to_ns(start_ms, false),
                to_ns(end_ms, true),
                self.window_margin_ns,
                &crate::query::QueryLimits {
                    max_series: limits.max_series,
                    max_points: limits.max_samples,
                    max_bytes: limits.max_bytes,
                },
            )
            .map_err(store_error)?;
        let mut out = Vec::new();
        for (id, part, labels) in matched {
            let Some(d) = data.get(&id) else { continue };
            let mut samples = Vec::new();
            match part {
                Part::Raw => {
                    for r in &d.readings {
                        push(&mut samples, r.ts_ns.div_euclid(NS_PER_MS), r.value);
                    }
                }
                Part::Window(p) => {
                    for w in &d.windows {
                        if let Some(v) = window_value(w, p) {
                            let end = w.start_ns.saturating_add_unsigned(w.len_ns);
                            push(&mut samples, end.div_euclid(NS_PER_MS), v);
                        }
                    }
                    // Windows are in start order; ends of different
                    // lengths may interleave.
                    samples.sort_by_key(|s| s.0);
                }
            }
            if samples.is_empty() {
                continue;
            }
            budget.take(samples.len())?;
            out.push(Series { labels, samples });
        }
        Ok(out)
    }

    fn labels(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        budget: &mut Budget,
    ) -> Result<Vec<Labels>, QueryError> {
        let matched = self.matching(matchers)?;
        budget.check_series(matched.len())?;
        let mut ids: Vec<u64> = matched.iter().map(|m| m.0).collect();
        ids.dedup();
        let presence: HashMap<u64, crate::store::Presence> = self
            .store
            .presence(
                &ids,
                to_ns(start_ms, false),
                to_ns(end_ms, true),
                self.window_margin_ns,
            )
            .map_err(store_error)?;
        Ok(matched
            .into_iter()
            .filter(|(id, part, _)| {
                let p = presence.get(id).copied().unwrap_or_default();
                match part {
                    Part::Raw => p.raw,
                    Part::Window(AggregatePart::Quantile(_)) => p.sketch,
                    Part::Window(_) => p.windows,
                }
            })
            .map(|(_, _, labels)| labels)
            .collect())
    }
}
