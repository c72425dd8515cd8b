//! Binary operators: arithmetic, comparisons (filtering or `bool`) and set
//! operators between scalars and vectors, with vector matching
//! (`on`/`ignoring`, `group_left`/`group_right`) and the errors Prometheus
//! 2.42 gives for ambiguous matches and duplicate label sets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::*;
use crate::prometheus::source::QueryError;
use crate::prometheus::value::{Labels, Sample, get, without};

impl<'e> Evaluator<'e> {
    pub(super) fn binary<'a>(&'a self, b: &'a BinaryExpr, t: i64) -> Result<Val<'a>, QueryError> {
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

pub(super) fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

pub(super) fn drops_name(op: &str) -> bool {
    matches!(op, "+" | "-" | "*" | "/" | "%" | "^")
}

/// `(value, keep)`: comparisons give the left value and whether it holds.
pub(super) fn apply_op(op: &str, l: f64, r: f64) -> Result<(f64, bool), QueryError> {
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

pub(super) fn vector_scalar(
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
pub(super) fn signature(
    labels: &Labels,
    matching: Option<&LabelModifier>,
) -> Vec<(String, String)> {
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

pub(super) fn set_op(
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

pub(super) fn show(sig: &[(String, String)]) -> String {
    let inner: Vec<String> = sig.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

pub(super) fn vector_vector(
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
