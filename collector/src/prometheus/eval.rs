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
use promql_parser::parser::{
    AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    VectorMatchCardinality, VectorSelector,
};

use super::functions::{RangeFn, ValueFn, expect_args, quantile};
use super::source::{Budget, Limits, QueryError, SeriesSource};
use super::value::{Labels, Sample, Series, Value, get, without};

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

    fn call<'a>(&'a self, c: &'a Call, t: i64) -> Result<Val<'a>, QueryError> {
        let name = c.func.name;
        let args = &c.args.args;
        if let Some(f) = RangeFn::of(name) {
            let (param, arg) = if f == RangeFn::Quantile {
                expect_args(name, args.len(), 2, 2)?;
                (self.scalar_arg(&args[0], t, "the quantile")?, &args[1])
            } else {
                expect_args(name, args.len(), 1, 1)?;
                (0.0, &args[0])
            };
            let Expr::MatrixSelector(ms) = &**arg else {
                return Err(QueryError::BadData(format!(
                    "expected type range vector in call to function {name:?}"
                )));
            };
            let end = t - offset_ms(&ms.vs.offset);
            let start = end - range_ms(ms);
            let mut out = Vec::new();
            for (labels, samples) in self.range_selector(ms, t) {
                if let Some(v) = f.apply(samples, start, end, param) {
                    out.push(Sample {
                        labels: if f.keeps_name() {
                            labels.clone()
                        } else {
                            without(labels, NAME)
                        },
                        value: v,
                    });
                }
            }
            unique(&out)?;
            return Ok(Val::Vector(out));
        }
        if let Some(f) = ValueFn::of(name) {
            let (min, max) = match f {
                ValueFn::Round => (1, 2),
                ValueFn::Clamp => (3, 3),
                ValueFn::ClampMin | ValueFn::ClampMax => (2, 2),
                _ => (1, 1),
            };
            expect_args(name, args.len(), min, max)?;
            let v = self.vector_arg(&args[0], t, name)?;
            let a = args
                .get(1)
                .map(|e| self.scalar_arg(e, t, "an argument"))
                .transpose()?;
            let b = args
                .get(2)
                .map(|e| self.scalar_arg(e, t, "an argument"))
                .transpose()?;
            if f == ValueFn::Clamp && a.zip(b).is_some_and(|(lo, hi)| hi < lo) {
                return Ok(Val::Vector(Vec::new()));
            }
            let out: Vec<Sample> = v
                .into_iter()
                .map(|s| Sample {
                    labels: without(&s.labels, NAME),
                    value: f.apply(s.value, a, b),
                })
                .collect();
            unique(&out)?;
            return Ok(Val::Vector(out));
        }
        match name {
            "time" => {
                expect_args(name, args.len(), 0, 0)?;
                Ok(Val::Scalar(t as f64 / 1000.0))
            }
            "vector" => {
                expect_args(name, args.len(), 1, 1)?;
                let v = self.scalar_arg(&args[0], t, "the argument of vector()")?;
                Ok(Val::Vector(vec![Sample {
                    labels: Arc::new(Vec::new()),
                    value: v,
                }]))
            }
            "scalar" => {
                expect_args(name, args.len(), 1, 1)?;
                let v = self.vector_arg(&args[0], t, name)?;
                Ok(Val::Scalar(if v.len() == 1 {
                    v[0].value
                } else {
                    f64::NAN
                }))
            }
            "sort" | "sort_desc" => {
                expect_args(name, args.len(), 1, 1)?;
                let mut v = self.vector_arg(&args[0], t, name)?;
                let desc = name == "sort_desc";
                v.sort_by(|a, b| match (a.value.is_nan(), b.value.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if desc => b.value.total_cmp(&a.value),
                    _ => a.value.total_cmp(&b.value),
                });
                Ok(Val::Vector(v))
            }
            other => Err(QueryError::unsupported(format!("the function {other}()"))),
        }
    }

    fn aggregate<'a>(&'a self, a: &'a AggregateExpr, t: i64) -> Result<Val<'a>, QueryError> {
        let op = a.op.to_string();
        let input = match self.eval(&a.expr, t)? {
            Val::Vector(v) => v,
            other => {
                return Err(QueryError::BadData(format!(
                    "expected an instant vector in aggregation {op}, got {}",
                    other.kind()
                )));
            }
        };
        let param = match &a.param {
            Some(p) if op != "count_values" => {
                Some(self.scalar_arg(p, t, "the aggregation parameter")?)
            }
            _ => None,
        };
        let group_of = |labels: &Labels| -> Labels {
            match &a.modifier {
                None => Arc::new(Vec::new()),
                Some(LabelModifier::Include(by)) => Arc::new(
                    labels
                        .iter()
                        .filter(|(n, _)| by.labels.iter().any(|b| b == n))
                        .cloned()
                        .collect(),
                ),
                Some(LabelModifier::Exclude(wo)) => Arc::new(
                    labels
                        .iter()
                        .filter(|(n, _)| n != NAME && !wo.labels.iter().any(|b| b == n))
                        .cloned()
                        .collect(),
                ),
            }
        };
        // Groups in order of first appearance, as Prometheus emits them.
        let mut order: Vec<Labels> = Vec::new();
        let mut groups: HashMap<Labels, Vec<Sample>> = HashMap::new();
        for s in input {
            let g = group_of(&s.labels);
            groups
                .entry(g.clone())
                .or_insert_with(|| {
                    order.push(g);
                    Vec::new()
                })
                .push(s);
        }
        let mut out = Vec::new();
        for g in order {
            let members = groups.remove(&g).unwrap_or_default();
            match op.as_str() {
                "topk" | "bottomk" => {
                    let k = param.unwrap_or(f64::NAN);
                    if k.is_nan() || k < 1.0 {
                        continue;
                    }
                    let k = if k >= members.len() as f64 {
                        members.len()
                    } else {
                        k as usize
                    };
                    let mut m = members;
                    let top = op == "topk";
                    // NaN ranks last either way.
                    m.sort_by(|x, y| match (x.value.is_nan(), y.value.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if top => y.value.total_cmp(&x.value),
                        _ => x.value.total_cmp(&y.value),
                    });
                    m.truncate(k);
                    out.extend(m);
                }
                _ => {
                    let v = aggregate_value(&op, &members, param)?;
                    out.push(Sample {
                        labels: g,
                        value: v,
                    });
                }
            }
        }
        Ok(Val::Vector(out))
    }

    fn binary<'a>(&'a self, b: &'a BinaryExpr, t: i64) -> Result<Val<'a>, QueryError> {
        let op = b.op.to_string();
        let bool_mode = b.return_bool();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        let result = match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let (v, keep) = apply_op(&op, l, r)?;
                if is_comparison(&op) {
                    Val::Scalar(if keep { 1.0 } else { 0.0 })
                } else {
                    Val::Scalar(v)
                }
            }
            (Val::Vector(v), Val::Scalar(s)) => {
                Val::Vector(vector_scalar(&op, v, s, false, bool_mode)?)
            }
            (Val::Scalar(s), Val::Vector(v)) => {
                Val::Vector(vector_scalar(&op, v, s, true, bool_mode)?)
            }
            (Val::Vector(l), Val::Vector(r)) => {
                let card = b
                    .modifier
                    .as_ref()
                    .map_or(VectorMatchCardinality::OneToOne, |m| m.card.clone());
                let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
                match op.as_str() {
                    "and" | "or" | "unless" => Val::Vector(set_op(&op, l, r, matching.as_ref())),
                    _ => Val::Vector(vector_vector(
                        &op,
                        l,
                        r,
                        &card,
                        matching.as_ref(),
                        bool_mode,
                    )?),
                }
            }
            (l, r) => {
                return Err(QueryError::BadData(format!(
                    "binary expression must contain only scalar and instant vector types, got {} {op} {}",
                    l.kind(),
                    r.kind()
                )));
            }
        };
        if let Val::Vector(v) = &result {
            unique(v)?;
        }
        Ok(result)
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

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

fn drops_name(op: &str) -> bool {
    matches!(op, "+" | "-" | "*" | "/" | "%" | "^")
}

/// `(value, keep)`: comparisons give the left value and whether it holds.
fn apply_op(op: &str, l: f64, r: f64) -> Result<(f64, bool), QueryError> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => return Err(QueryError::unsupported(format!("the operator {other}"))),
    })
}

fn vector_scalar(
    op: &str,
    v: Vec<Sample>,
    s: f64,
    scalar_left: bool,
    bool_mode: bool,
) -> Result<Vec<Sample>, QueryError> {
    let mut out = Vec::with_capacity(v.len());
    for sample in v {
        let (l, r) = if scalar_left {
            (s, sample.value)
        } else {
            (sample.value, s)
        };
        let (mut value, mut keep) = apply_op(op, l, r)?;
        if is_comparison(op) && scalar_left {
            // The vector's value is kept, even on the right.
            value = r;
        }
        if bool_mode {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            out.push(Sample {
                labels: if drops_name(op) || bool_mode {
                    without(&sample.labels, NAME)
                } else {
                    sample.labels
                },
                value,
            });
        }
    }
    Ok(out)
}

/// The labels vector matching compares: `on(…)` keeps those, otherwise
/// every label but `__name__` and the `ignoring(…)` ones.
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Vec<(String, String)> {
    match matching {
        Some(LabelModifier::Include(on)) => labels
            .iter()
            .filter(|(n, _)| on.labels.iter().any(|o| o == n))
            .cloned()
            .collect(),
        Some(LabelModifier::Exclude(ign)) => labels
            .iter()
            .filter(|(n, _)| n != NAME && !ign.labels.iter().any(|o| o == n))
            .cloned()
            .collect(),
        None => labels.iter().filter(|(n, _)| n != NAME).cloned().collect(),
    }
}

fn set_op(
    op: &str,
    l: Vec<Sample>,
    r: Vec<Sample>,
    matching: Option<&LabelModifier>,
) -> Vec<Sample> {
    let right: HashSet<Vec<(String, String)>> =
        r.iter().map(|s| signature(&s.labels, matching)).collect();
    match op {
        "and" => l
            .into_iter()
            .filter(|s| right.contains(&signature(&s.labels, matching)))
            .collect(),
        "unless" => l
            .into_iter()
            .filter(|s| !right.contains(&signature(&s.labels, matching)))
            .collect(),
        _ => {
            let left: HashSet<Vec<(String, String)>> =
                l.iter().map(|s| signature(&s.labels, matching)).collect();
            let mut out = l;
            out.extend(
                r.into_iter()
                    .filter(|s| !left.contains(&signature(&s.labels, matching))),
            );
            out
        }
    }
}

fn show(sig: &[(String, String)]) -> String {
    let inner: Vec<String> = sig.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn vector_vector(
    op: &str,
    l: Vec<Sample>,
    r: Vec<Sample>,
    card: &VectorMatchCardinality,
    matching: Option<&LabelModifier>,
    bool_mode: bool,
) -> Result<Vec<Sample>, QueryError> {
    // group_right: the right side is the "many" side; evaluate swapped and
    // swap the operands back for the operation.
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if one_to_many { (r, l) } else { (l, r) };
    let include: Vec<String> = match card {
        VectorMatchCardinality::ManyToOne(ls) | VectorMatchCardinality::OneToMany(ls) => {
            ls.labels.clone()
        }
        _ => Vec::new(),
    };
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    let mut right: HashMap<Vec<(String, String)>, &Sample> = HashMap::new();
    for s in &one {
        let sig = signature(&s.labels, matching);
        if let Some(prev) = right.insert(sig.clone(), s) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(QueryError::Execution(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                show(&sig),
                show(&prev.labels),
                show(&s.labels)
            )));
        }
    }
    let mut out = Vec::new();
    let mut inserted: HashMap<Vec<(String, String)>, ()> = HashMap::new();
    let mut results: HashSet<Labels> = HashSet::new();
    for ls in many {
        let sig = signature(&ls.labels, matching);
        let Some(rs) = right.get(&sig) else { continue };
        let (vl, vr) = if one_to_many {
            (rs.value, ls.value)
        } else {
            (ls.value, rs.value)
        };
        let (mut value, mut keep) = apply_op(op, vl, vr)?;
        if is_comparison(op) && one_to_many {
            // Comparisons keep the "many" side's value.
            value = ls.value;
        }
        if bool_mode {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if !keep {
            continue;
        }
        // The result's labels.
        let mut labels: Vec<(String, String)> = ls.labels.as_ref().clone();
        if drops_name(op) || bool_mode {
            labels.retain(|(n, _)| n != NAME);
        }
        if one_to_one {
            match matching {
                Some(LabelModifier::Include(on)) => {
                    labels.retain(|(n, _)| on.labels.iter().any(|o| o == n))
                }
                Some(LabelModifier::Exclude(ign)) => {
                    labels.retain(|(n, _)| !ign.labels.iter().any(|o| o == n))
                }
                None => {}
            }
        }
        for name in &include {
            labels.retain(|(n, _)| n != name);
            if let Some(v) = get(&rs.labels, name) {
                labels.push((name.clone(), v.to_owned()));
            }
        }
        labels.sort();
        let labels = Arc::new(labels);
        if one_to_one {
            if inserted.insert(sig, ()).is_some() {
                return Err(QueryError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                ));
            }
        } else if !results.insert(labels.clone()) {
            return Err(QueryError::Execution(
                "multiple matches for labels: grouping labels must ensure unique matches".into(),
            ));
        }
        out.push(Sample { labels, value });
    }
    Ok(out)
}

/// The value of a (non-`topk`) aggregation over one group, as Prometheus
/// 2.42 computes it.
fn aggregate_value(op: &str, members: &[Sample], param: Option<f64>) -> Result<f64, QueryError> {
    let values = members.iter().map(|s| s.value);
    Ok(match op {
        "sum" => values.sum(),
        "avg" => {
            let (mut mean, mut n) = (0.0f64, 0.0f64);
            for (i, v) in values.enumerate() {
                if i == 0 {
                    mean = v;
                    n = 1.0;
                    continue;
                }
                n += 1.0;
                if mean.is_infinite() {
                    if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                mean += v / n - mean / n;
            }
            mean
        }
        "count" => members.len() as f64,
        "group" => 1.0,
        "min" => values.fold(f64::NAN, |m, v| if m > v || m.is_nan() { v } else { m }),
        "max" => values.fold(f64::NAN, |m, v| if m < v || m.is_nan() { v } else { m }),
        "stddev" | "stdvar" => {
            let (mut n, mut mean, mut acc) = (0.0, 0.0, 0.0);
            for v in values {
                n += 1.0;
                let delta = v - mean;
                mean += delta / n;
                acc += delta * (v - mean);
            }
            if op == "stddev" {
                (acc / n).sqrt()
            } else {
                acc / n
            }
        }
        "quantile" => quantile(param.unwrap_or(f64::NAN), values.collect()),
        other => {
            return Err(QueryError::unsupported(format!("the aggregation {other}")));
        }
    })
}

#[cfg(test)]
mod tests;
