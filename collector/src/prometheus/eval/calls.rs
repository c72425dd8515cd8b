//! Function calls and aggregations: each supported function applied to its
//! evaluated arguments (range functions over a range selector's samples,
//! value functions per sample), and `sum`, `avg`, `topk`, `quantile` and
//! the other supported aggregations grouped `by`/`without` labels, with
//! Prometheus 2.42's rules for which keep `__name__`.

use std::collections::HashMap;
use std::sync::Arc;

use promql_parser::parser::{AggregateExpr, Call, Expr, LabelModifier};

use super::*;
use crate::prometheus::functions::{RangeFn, ValueFn, expect_args, quantile};
use crate::prometheus::source::QueryError;
use crate::prometheus::value::{Labels, Sample, without};

impl<'e> Evaluator<'e> {
    pub(super) fn call<'a>(&'a self, c: &'a Call, t: i64) -> Result<Val<'a>, QueryError> {
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

    pub(super) fn aggregate<'a>(
        &'a self,
        a: &'a AggregateExpr,
        t: i64,
    ) -> Result<Val<'a>, QueryError> {
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
}

/// The value of a (non-`topk`) aggregation over one group, as Prometheus
/// 2.42 computes it.
pub(super) fn aggregate_value(
    op: &str,
    members: &[Sample],
    param: Option<f64>,
) -> Result<f64, QueryError> {
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
