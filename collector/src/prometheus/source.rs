//! Where the engine gets series: a trait, so that the engine is tested over
//! series in memory and runs over the store unchanged.

use promql_parser::label::Matcher;

use super::value::{Labels, Series, get};

/// Bounds on what one query may load or produce: checked before the data
/// is allocated, answered as a 422 naming the bound. The collector takes
/// them from `[query]` in `collector.toml` (the same budget as Ferry's own
/// query API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most series one selector may match.
    pub max_series: usize,
    /// Most samples one query may load, and most points it may return.
    pub max_samples: usize,
    /// Most bytes the samples and windows read may take (16 per sample).
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        crate::config::QueryLimits::default().into()
    }
}

impl From<crate::config::QueryLimits> for Limits {
    fn from(q: crate::config::QueryLimits) -> Self {
        Self {
            max_series: q.max_series,
            max_samples: q.max_points,
            max_bytes: q.max_bytes,
        }
    }
}

/// Why a query could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The request is wrong (a parse error, a bad parameter): `bad_data`,
    /// 400.
    #[error("{0}")]
    BadData(String),
    /// The query is valid PromQL but cannot be evaluated (an unsupported
    /// construct, a bound reached, a label set twice): `execution`, 422.
    #[error("{0}")]
    Execution(String),
    /// The store failed: `internal`, 500.
    #[error("{0}")]
    Internal(String),
    /// The query goes past its budget (`[query]`): `execution`, 422.
    #[error("{message}")]
    Budget {
        /// Which bound: `series`, `points` or `bytes`.
        bound: &'static str,
        /// What to do about it.
        message: String,
    },
}

impl QueryError {
    /// A construct this engine does not evaluate.
    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        QueryError::Execution(format!(
            "unsupported PromQL: {what} is not supported by Ferry"
        ))
    }
}

/// A running count of the samples a query has loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    limits: Limits,
    samples: usize,
}

impl Budget {
    /// A fresh budget.
    pub fn new(limits: Limits) -> Self {
        Self { limits, samples: 0 }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks a count of matched series, before their data is read.
    pub fn check_series(&self, n: usize) -> Result<(), QueryError> {
        if n > self.limits.max_series {
            return Err(QueryError::Budget {
                bound: "series",
                message: format!(
                    "query matches {n} series, more than the limit of {} (query.max_series): narrow the selector",
                    self.limits.max_series
                ),
            });
        }
        Ok(())
    }

    /// Takes `n` samples; fails once the total is over the limit (in
    /// samples, or in bytes at 16 per sample).
    pub fn take(&mut self, n: usize) -> Result<(), QueryError> {
        self.samples = self.samples.saturating_add(n);
        if self.samples > self.limits.max_samples {
            return Err(QueryError::Budget {
                bound: "points",
                message: format!(
                    "query processing would load too many samples into memory (more than {}, query.max_points): narrow the selector or the time range",
                    self.limits.max_samples
                ),
            });
        }
        if self.samples as u64 * crate::query::READING_BYTES > self.limits.max_bytes {
            return Err(QueryError::Budget {
                bound: "bytes",
                message: format!(
                    "query processing would load too many samples into memory (more than {} bytes, query.max_bytes): narrow the selector or the time range",
                    self.limits.max_bytes
                ),
            });
        }
        Ok(())
    }
}

/// A set of series the engine reads.
pub trait SeriesSource {
    /// Series whose labels satisfy every matcher, with their samples in
    /// `[start_ms, end_ms]` (both inclusive); series without a sample there
    /// are left out. Samples taken count against `budget`, checked as they
    /// are read.
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        budget: &mut Budget,
    ) -> Result<Vec<Series>, QueryError>;

    /// Label sets of the series `select` would return, without reading
    /// samples where the source can avoid it (it may include series whose
    /// only samples are near, not in, the range).
    fn labels(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        budget: &mut Budget,
    ) -> Result<Vec<Labels>, QueryError> {
        Ok(self
            .select(matchers, start_ms, end_ms, budget)?
            .into_iter()
            .map(|s| s.labels)
            .collect())
    }
}

/// True if `labels` satisfies every matcher (a missing label matches as the
/// empty string, as in Prometheus).
pub fn matches(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers
        .iter()
        .all(|m| m.is_match(get(labels, &m.name).unwrap_or("")))
}

/// Series held in memory: the engine's tests, and small embedded uses.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    /// The series.
    pub series: Vec<Series>,
}

impl SeriesSource for MemorySource {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        budget: &mut Budget,
    ) -> Result<Vec<Series>, QueryError> {
        let matched: Vec<&Series> = self
            .series
            .iter()
            .filter(|s| matches(matchers, &s.labels))
            .collect();
        budget.check_series(matched.len())?;
        let mut out = Vec::new();
        for s in matched {
            let lo = s.samples.partition_point(|(t, _)| *t < start_ms);
            let hi = s.samples.partition_point(|(t, _)| *t <= end_ms);
            if lo < hi {
                budget.take(hi - lo)?;
                out.push(Series {
                    labels: s.labels.clone(),
                    samples: s.samples[lo..hi].to_vec(),
                });
            }
        }
        Ok(out)
    }
}
