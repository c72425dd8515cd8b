//! The PromQL engine: a parsed expression evaluated over a
//! [`SeriesSource`] at one instant or at every step of a range, with
//! Prometheus 2.42's semantics.
//!
//! Sans-IO: the engine asks its source for the series of every selector
//! once, over the whole time span the query needs, then evaluates each step
//! in memory.
//!
//! Semantics kept from Prometheus (its engine, v2.42):
//! - an instant selector takes, per series, the newest sample in
//!   `[t - offset - 5m, t - offset]` (the lookback delta);
//! - a range selector `x[r]` takes the samples in `[t - offset - r, t - offset]`;
//! - arithmetic (`+ - * / % ^`), `bool` comparisons, every function but
//!   `last_over_time`, and aggregations other than `topk`/`bottomk` drop
//!   `__name__`; filtering comparisons, `topk`, set operators keep it;
//! - a vector holding one label set twice is an error (`vector cannot
//!   contain metrics with the same labelset`), as are ambiguous matches in
//!   vector operations;
//! - a range query evaluates at `start, start + step, …, ≤ end`, at most
//!   11,000 steps.
//!
//! What it does not evaluate is refused before any data is read, with a
//! 422 naming the construct: subqueries, `@`, functions and aggregations
//! outside the supported list ([`SUPPORTED`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Expr, MatrixSelector, Offset, VectorSelector};

use super::functions::{RangeFn, ValueFn};
use super::source::{Budget, Limits, QueryError, SeriesSource};
use super::value::{Labels, Sample, Series, Value, without};

mod binary;
mod calls;

/// Prometheus's default lookback delta: how far back an instant selector
/// looks for a sample.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// Most steps of a range query, as in Prometheus.
pub const MAX_STEPS: i64 = 11_000;
/// The metric name label.
pub const NAME: &str = "__name__";

/// What the engine evaluates, for the docs and error messages.
pub const SUPPORTED: &str = "instant and range selectors with =, !=, =~, !~ and offset; \
rate, irate, increase, delta, idelta, changes, resets, avg/sum/count/min/max/last/stddev/stdvar/quantile/present_over_time, \
abs, ceil, floor, exp, sqrt, ln, log2, log10, sgn, round, clamp, clamp_min, clamp_max, \
time, vector, scalar, sort, sort_desc; sum, avg, min, max, count, group, stddev, stdvar, quantile, topk, bottomk \
with by/without; + - * / % ^ == != > < >= <= (bool), and, or, unless, with on/ignoring and group_left/group_right";

/// Parses a query; a syntax error is `bad_data`.
pub fn parse(query: &str) -> Result<Expr, QueryError> {
    promql_parser::parser::parse(query)
        .map_err(|e| QueryError::BadData(format!("invalid parameter \"query\": {}", e.trim())))
}

/// The engine's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engine {
    /// Lookback delta, ms.
    pub lookback_ms: i64,
    /// Bounds on loaded samples and matched series.
    pub limits: Limits,
}

impl Default for Engine {
    fn default() -> Self {
        Self {
            lookback_ms: LOOKBACK_MS,
            limits: Limits::default(),
        }
    }
}

impl Engine {
    /// Evaluates `expr` at `t_ms` (an instant query).
    pub fn instant(
        &self,
        source: &dyn SeriesSource,
        expr: &Expr,
        t_ms: i64,
    ) -> Result<Value, QueryError> {
        check(expr)?;
        let ev = Evaluator::load(self, source, expr, t_ms, t_ms)?;
        Ok(match ev.eval(expr, t_ms)? {
            Val::Scalar(v) => Value::Scalar(v),
            Val::Str(s) => Value::String(s),
            Val::Vector(v) => {
                unique(&v)?;
                Value::Vector(v)
            }
            Val::Range(r) => Value::Matrix(
                r.into_iter()
                    .filter(|(_, s)| !s.is_empty())
                    .map(|(labels, samples)| Series {
                        labels: labels.clone(),
                        samples: samples.to_vec(),
                    })
                    .collect(),
            ),
        })
    }

    /// Evaluates `expr` at `start_ms, start_ms + step_ms, …` up to `end_ms`
    /// (a range query); the result is a matrix sorted by labels.
    pub fn range(
        &self,
        source: &dyn SeriesSource,
        expr: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Value, QueryError> {
        if end_ms < start_ms {
            return Err(QueryError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        if step_ms <= 0 {
            return Err(QueryError::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if (end_ms - start_ms) / step_ms >= MAX_STEPS {
            return Err(QueryError::BadData(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
            ));
        }
        match expr.value_type() {
            ValueType::Vector | ValueType::Scalar => {}
            other => {
                return Err(QueryError::BadData(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    match other {
                        ValueType::Matrix => "range vector",
                        _ => "string",
                    }
                )));
            }
        }
        check(expr)?;
        let ev = Evaluator::load(self, source, expr, start_ms, end_ms)?;
        let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        let mut points = 0usize;
        let mut t = start_ms;
        while t <= end_ms {
            let samples = match ev.eval(expr, t)? {
                Val::Scalar(v) => vec![Sample {
                    labels: Arc::new(Vec::new()),
                    value: v,
                }],
                Val::Vector(v) => v,
                _ => return Err(QueryError::Internal("range step is not a vector".into())),
            };
            points += samples.len();
            if points > self.limits.max_samples {
                return Err(QueryError::Budget {
                    bound: "points",
                    message: format!(
                        "query would return more than {} points (query.max_points): narrow the selector, the range or raise the step",
                        self.limits.max_samples
                    ),
                });
            }
            for s in samples {
                let series = out.entry(s.labels).or_default();
                if series.last().is_some_and(|(last, _)| *last == t) {
                    return Err(duplicate_labelset());
                }
                series.push((t, s.value));
            }
            t += step_ms;
        }
        Ok(Value::Matrix(
            out.into_iter()
                .map(|(labels, samples)| Series { labels, samples })
                .collect(),
        ))
    }
}

fn duplicate_labelset() -> QueryError {
    QueryError::Execution("vector cannot contain metrics with the same labelset".into())
}

fn unique(v: &[Sample]) -> Result<(), QueryError> {
    let mut seen = HashSet::with_capacity(v.len());
    for s in v {
        if !seen.insert(&s.labels) {
            return Err(duplicate_labelset());
        }
    }
    Ok(())
}

/// Refuses what the engine does not evaluate, before anything is read.
fn check(expr: &Expr) -> Result<(), QueryError> {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Paren(p) => check(&p.expr),
        Expr::Unary(u) => check(&u.expr),
        Expr::VectorSelector(vs) => check_selector(vs),
        Expr::MatrixSelector(ms) => check_selector(&ms.vs),
        Expr::Subquery(_) => Err(QueryError::unsupported("a subquery (`expr[range:step]`)")),
        Expr::Extension(_) => Err(QueryError::unsupported("an extension expression")),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier
                && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
            {
                return Err(QueryError::unsupported("`fill` in a vector match"));
            }
            if b.op.to_string() == "atan2" {
                return Err(QueryError::unsupported("the operator atan2"));
            }
            check(&b.lhs)?;
            check(&b.rhs)
        }
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if !matches!(
                op.as_str(),
                "sum"
                    | "avg"
                    | "min"
                    | "max"
                    | "count"
                    | "group"
                    | "stddev"
                    | "stdvar"
                    | "quantile"
                    | "topk"
                    | "bottomk"
            ) {
                return Err(QueryError::unsupported(format!("the aggregation {op}")));
            }
            if let Some(p) = &a.param {
                check(p)?;
            }
            check(&a.expr)
        }
        Expr::Call(c) => {
            let name = c.func.name;
            let known = RangeFn::of(name).is_some()
                || ValueFn::of(name).is_some()
                || matches!(name, "time" | "vector" | "scalar" | "sort" | "sort_desc");
            if !known {
                return Err(QueryError::unsupported(format!("the function {name}()")));
            }
            for a in &c.args.args {
                if RangeFn::of(name).is_some() && matches!(**a, Expr::Subquery(_)) {
                    return Err(QueryError::unsupported(format!(
                        "a subquery as the argument of {name}()"
                    )));
                }
                check(a)?;
            }
            Ok(())
        }
    }
}

fn check_selector(vs: &VectorSelector) -> Result<(), QueryError> {
    if vs.at.is_some() {
        return Err(QueryError::unsupported("the @ modifier"));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::unsupported("`or` inside a selector"));
    }
    Ok(())
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Some(Offset::Neg(d)) => -i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
    }
}

fn range_ms(ms: &MatrixSelector) -> i64 {
    i64::try_from(ms.range.as_millis()).unwrap_or(i64::MAX)
}

/// The matchers of a selector, its metric name as a `__name__` matcher.
fn matchers_of(vs: &VectorSelector) -> Vec<Matcher> {
    let mut m = vs.matchers.matchers.clone();
    if let Some(name) = &vs.name
        && !m.iter().any(|x| x.name == NAME && x.op == MatchOp::Equal)
    {
        m.push(Matcher::new(MatchOp::Equal, NAME, name));
    }
    m
}

/// An intermediate value: range vectors borrow the loaded samples.
enum Val<'a> {
    Scalar(f64),
    Str(String),
    Vector(Vec<Sample>),
    Range(Vec<(&'a Labels, &'a [(i64, f64)])>),
}

impl Val<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::Str(_) => "string",
            Val::Vector(_) => "instant vector",
            Val::Range(_) => "range vector",
        }
    }
}

struct Evaluator<'e> {
    engine: &'e Engine,
    /// Loaded series per selector, keyed by the selector node's address,
    /// sorted by labels.
    data: HashMap<usize, Vec<Series>>,
}

fn key(vs: &VectorSelector) -> usize {
    std::ptr::from_ref(vs) as usize
}

impl<'e> Evaluator<'e> {
    fn load(
        engine: &'e Engine,
        source: &dyn SeriesSource,
        expr: &Expr,
        start: i64,
        end: i64,
    ) -> Result<Self, QueryError> {
        let mut selectors: Vec<(&VectorSelector, i64)> = Vec::new();
        collect(expr, &mut selectors, engine.lookback_ms);
        let mut budget = Budget::new(engine.limits);
        let mut data = HashMap::new();
        for (vs, before) in selectors {
            let off = offset_ms(&vs.offset);
            let from = start.saturating_sub(off).saturating_sub(before);
            let to = end.saturating_sub(off);
            let mut series = source.select(&matchers_of(vs), from, to, &mut budget)?;
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            data.insert(key(vs), series);
        }
        Ok(Self { engine, data })
    }

    fn series(&self, vs: &VectorSelector) -> &[Series] {
        self.data.get(&key(vs)).map_or(&[], Vec::as_slice)
    }

    fn eval<'a>(&'a self, expr: &'a Expr, t: i64) -> Result<Val<'a>, QueryError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Val::Scalar(v) => Ok(Val::Scalar(-v)),
                Val::Vector(v) => Ok(Val::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: without(&s.labels, NAME),
                            value: -s.value,
                        })
                        .collect(),
                )),
                other => Err(QueryError::BadData(format!(
                    "unary expression only allowed on expressions of type scalar or instant vector, got {}",
                    other.kind()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.instant_selector(vs, t))),
            Expr::MatrixSelector(ms) => Ok(Val::Range(self.range_selector(ms, t))),
            Expr::Call(c) => self.call(c, t),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Subquery(_) | Expr::Extension(_) => Err(QueryError::unsupported("a subquery")),
        }
    }

    fn instant_selector(&self, vs: &VectorSelector, t: i64) -> Vec<Sample> {
        let at = t - offset_ms(&vs.offset);
        let from = at - self.engine.lookback_ms;
        self.series(vs)
            .iter()
            .filter_map(|s| {
                let i = s.samples.partition_point(|(ts, _)| *ts <= at);
                let (ts, v) = *s.samples.get(i.checked_sub(1)?)?;
                (ts >= from).then(|| Sample {
                    labels: s.labels.clone(),
                    value: v,
                })
            })
            .collect()
    }

    fn range_selector<'a>(
        &'a self,
        ms: &'a MatrixSelector,
        t: i64,
    ) -> Vec<(&'a Labels, &'a [(i64, f64)])> {
        let end = t - offset_ms(&ms.vs.offset);
        let start = end - range_ms(ms);
        self.series(&ms.vs)
            .iter()
            .map(|s| {
                let lo = s.samples.partition_point(|(ts, _)| *ts < start);
                let hi = s.samples.partition_point(|(ts, _)| *ts <= end);
                (&s.labels, &s.samples[lo..hi])
            })
            .collect()
    }

    fn scalar_arg(&self, e: &Expr, t: i64, what: &str) -> Result<f64, QueryError> {
        match self.eval(e, t)? {
            Val::Scalar(v) => Ok(v),
            other => Err(QueryError::BadData(format!(
                "expected a scalar as {what}, got {}",
                other.kind()
            ))),
        }
    }

    fn vector_arg<'a>(
        &'a self,
        e: &'a Expr,
        t: i64,
        name: &str,
    ) -> Result<Vec<Sample>, QueryError> {
        match self.eval(e, t)? {
            Val::Vector(v) => Ok(v),
            other => Err(QueryError::BadData(format!(
                "expected an instant vector in call to {name}(), got {}",
                other.kind()
            ))),
        }
    }
}

/// Collects every selector with how far before the evaluation time its
/// data reaches (lookback, or the range of a range selector).
fn collect<'a>(expr: &'a Expr, out: &mut Vec<(&'a VectorSelector, i64)>, lookback: i64) {
    match expr {
        Expr::VectorSelector(vs) => out.push((vs, lookback)),
        Expr::MatrixSelector(ms) => out.push((&ms.vs, range_ms(ms))),
        Expr::Paren(p) => collect(&p.expr, out, lookback),
        Expr::Unary(u) => collect(&u.expr, out, lookback),
        Expr::Binary(b) => {
            collect(&b.lhs, out, lookback);
            collect(&b.rhs, out, lookback);
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                collect(p, out, lookback);
            }
            collect(&a.expr, out, lookback);
        }
        Expr::Call(c) => {
            for a in &c.args.args {
                collect(a, out, lookback);
            }
        }
        Expr::Subquery(s) => collect(&s.expr, out, lookback),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

#[cfg(test)]
mod tests;
