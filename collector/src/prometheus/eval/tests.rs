//! The engine over series in memory.

use super::*;
use crate::prometheus::source::MemorySource;
use crate::prometheus::value::labels_of;

const S: i64 = 1000;
const M: i64 = 60 * S;

fn series(name: &str, tags: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
    let mut l: Vec<(&str, &str)> = tags.to_vec();
    l.push((NAME, name));
    Series {
        labels: labels_of(l),
        samples: samples.to_vec(),
    }
}

/// `http_requests{job, instance}` counters every 15 s for 10 minutes, a
/// gauge with a gap, and a counter with a reset.
fn source() -> MemorySource {
    let every = |f: &dyn Fn(i64) -> f64| -> Vec<(i64, f64)> {
        (0..=40).map(|i| (i * 15 * S, f(i))).collect()
    };
    MemorySource {
        series: vec![
            series(
                "http_requests",
                &[("job", "api"), ("instance", "a")],
                &every(&|i| i as f64 * 10.0),
            ),
            series(
                "http_requests",
                &[("job", "api"), ("instance", "b")],
                &every(&|i| i as f64 * 20.0),
            ),
            series(
                "http_requests",
                &[("job", "db"), ("instance", "a")],
                &every(&|i| i as f64 * 1.0),
            ),
            series(
                "temp",
                &[("device", "d1")],
                &[(0, 20.0), (60 * S, 21.0), (9 * M, 22.0)],
            ),
            series(
                "resets",
                &[("job", "x")],
                &every(&|i| ((i % 10) * 5) as f64),
            ),
        ],
    }
}

fn instant(q: &str, t: i64) -> Result<Value, QueryError> {
    Engine::default().instant(&source(), &parse(q)?, t)
}

/// The vector as `(labels text, value)`, sorted.
fn vector(q: &str, t: i64) -> Vec<(String, f64)> {
    match instant(q, t).unwrap() {
        Value::Vector(v) => {
            let mut out: Vec<(String, f64)> = v
                .iter()
                .map(|s| {
                    let l: Vec<String> = s.labels.iter().map(|(n, v)| format!("{n}={v}")).collect();
                    (l.join(","), s.value)
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
        other => panic!("{q}: not a vector: {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

#[test]
fn instant_selectors_look_back_five_minutes_inclusive() {
    // temp: samples at 0, 1m, 9m. At 6m the 1m sample is exactly 5 minutes old.
    assert_eq!(
        vector("temp", 6 * M),
        [("__name__=temp,device=d1".into(), 21.0)]
    );
    assert!(vector("temp", 6 * M + 1).is_empty());
    assert_eq!(
        vector("temp", 9 * M),
        [("__name__=temp,device=d1".into(), 22.0)]
    );
    // offset moves the window back.
    assert_eq!(
        vector("temp offset 8m", 9 * M),
        [("__name__=temp,device=d1".into(), 21.0)]
    );
    assert_eq!(
        vector("temp offset -1m", 8 * M),
        [("__name__=temp,device=d1".into(), 22.0)]
    );
}

#[test]
fn all_four_matchers() {
    let names = |q: &str| {
        vector(q, 10 * M)
            .into_iter()
            .map(|x| x.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(r#"http_requests{job="db"}"#),
        ["__name__=http_requests,instance=a,job=db"]
    );
    assert_eq!(names(r#"http_requests{job!="api"}"#).len(), 1);
    assert_eq!(
        names(r#"http_requests{instance=~"a|b", job=~"ap.*"}"#).len(),
        2
    );
    assert_eq!(
        names(r#"http_requests{instance!~"a"}"#),
        ["__name__=http_requests,instance=b,job=api"]
    );
    assert_eq!(names(r#"{__name__=~"http_.*", job="db"}"#).len(), 1);
    // A missing label matches "".
    assert_eq!(names(r#"temp{job=""}"#).len(), 1);
}

#[test]
fn range_functions_drop_the_name_except_last_over_time() {
    let r = vector("rate(http_requests[5m])", 10 * M);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].0, "instance=a,job=api");
    // 10 per 15 s, samples exactly on the window's edges.
    assert!(close(r[0].1, 10.0 / 15.0), "{r:?}");
    let inc = vector(r#"increase(http_requests{job="db"}[5m])"#, 10 * M);
    assert!(close(inc[0].1, 20.0), "{inc:?}");
    let last = vector(r#"last_over_time(http_requests{job="db"}[1m])"#, 10 * M);
    assert_eq!(
        last,
        [("__name__=http_requests,instance=a,job=db".into(), 40.0)]
    );
    let cnt = vector(r#"count_over_time(http_requests{job="db"}[1m])"#, 10 * M);
    // [9m, 10m] inclusive at 15 s: 9:00, 9:15, 9:30, 9:45, 10:00.
    assert_eq!(cnt, [("instance=a,job=db".into(), 5.0)]);
}

#[test]
fn counter_resets_are_added_back() {
    // 0 5 … 45 0 5 …: at 10 m (i = 40, value 0) over 5 m (i = 20..40):
    // 0..45 then 0..45 then 0 — increases 45 + 45 + (reset to 0).
    let r = vector("increase(resets[5m])", 10 * M);
    // Samples i=20..=40: raw delta 0 - 0 = 0, resets at i=30 (+45) and
    // i=40 (+45): 90, exactly on the edges (no extrapolation).
    assert!(close(r[0].1, 90.0), "{r:?}");
    let d = vector("delta(resets[5m])", 10 * M);
    assert!(close(d[0].1, 0.0), "{d:?}");
    assert_eq!(vector("resets(resets[5m])", 10 * M)[0].1, 2.0);
}

#[test]
fn aggregations_by_and_without() {
    assert_eq!(
        vector("sum by (job) (http_requests)", 10 * M),
        [("job=api".into(), 1200.0), ("job=db".into(), 40.0)]
    );
    assert_eq!(
        vector("sum without (instance) (http_requests)", 10 * M),
        [("job=api".into(), 1200.0), ("job=db".into(), 40.0)]
    );
    assert_eq!(
        vector("count(http_requests)", 10 * M),
        [(String::new(), 3.0)]
    );
    assert_eq!(
        vector("max(http_requests)", 10 * M),
        [(String::new(), 800.0)]
    );
    assert_eq!(
        vector("min by (instance) (http_requests)", 10 * M)[0],
        ("instance=a".into(), 40.0)
    );
    assert_eq!(
        vector("avg by (job) (http_requests)", 10 * M)[0],
        ("job=api".into(), 600.0)
    );
    assert_eq!(
        vector("sum by (__name__) (http_requests)", 10 * M)[0].0,
        "__name__=http_requests"
    );
    // topk keeps every label, the name too.
    let top = vector("topk(1, http_requests)", 10 * M);
    assert_eq!(
        top,
        [("__name__=http_requests,instance=b,job=api".into(), 800.0)]
    );
    assert_eq!(vector("topk by (job) (1, http_requests)", 10 * M).len(), 2);
    assert!(vector("topk(0, http_requests)", 10 * M).is_empty());
}

#[test]
fn binary_operators() {
    // Arithmetic with a scalar drops the name; a filter keeps it.
    assert_eq!(
        vector(r#"http_requests{job="db"} * 2"#, 10 * M),
        [("instance=a,job=db".into(), 80.0)]
    );
    assert_eq!(
        vector("http_requests > 500", 10 * M),
        [("__name__=http_requests,instance=b,job=api".into(), 800.0)]
    );
    assert_eq!(vector("500 < http_requests", 10 * M)[0].1, 800.0);
    assert_eq!(vector("http_requests > bool 500", 10 * M).len(), 3);
    assert_eq!(
        vector(r#"http_requests{job="db"} == bool 40"#, 10 * M),
        [("instance=a,job=db".into(), 1.0)]
    );
    // Vector to vector by all labels but the name.
    let v = vector("http_requests / http_requests", 10 * M);
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|(_, x)| *x == 1.0));
    // on(): one-to-one keeps only the matching labels.
    let v = vector(
        r#"http_requests{job="db"} - on(instance) http_requests{job="api",instance="a"}"#,
        10 * M,
    );
    assert_eq!(v, [("instance=a".into(), -360.0)]);
    // group_left brings the "one" side's labels.
    let v = vector(
        r#"http_requests{job="api"} / on(instance) group_left(job) http_requests{job="db"}"#,
        10 * M,
    );
    assert_eq!(v, [("instance=a,job=db".into(), 10.0)]);
    // Without group_left the "many" side is an error.
    let e = instant(
        r#"sum by (instance) (http_requests) + on() group_left vector(1)"#,
        10 * M,
    );
    assert!(e.is_ok(), "{e:?}");
    let e = instant(
        r#"http_requests / on(job) http_requests{instance="a"}"#,
        10 * M,
    )
    .unwrap_err();
    assert!(
        matches!(e, QueryError::Execution(ref m) if m.starts_with("multiple matches for labels")),
        "{e:?}"
    );
    let e = instant(
        r#"http_requests{instance="a"} / on(job) http_requests"#,
        10 * M,
    )
    .unwrap_err();
    assert!(
        matches!(e, QueryError::Execution(ref m) if m.starts_with("found duplicate series")),
        "{e:?}"
    );
    // Set operators.
    assert_eq!(
        vector(r#"http_requests and http_requests{instance="b"}"#, 10 * M).len(),
        1
    );
    assert_eq!(
        vector(
            r#"http_requests unless http_requests{instance="b"}"#,
            10 * M
        )
        .len(),
        2
    );
    assert_eq!(
        vector(r#"http_requests{job="db"} or temp"#, 10 * M).len(),
        2
    );
    assert_eq!(instant("1 + 1", 0).unwrap(), Value::Scalar(2.0));
    assert_eq!(instant("2 > bool 1", 0).unwrap(), Value::Scalar(1.0));
    assert_eq!(vector("-temp", 9 * M), [("device=d1".into(), -22.0)]);
}

#[test]
fn a_label_set_twice_is_an_error() {
    let e = instant(
        r#"rate({__name__=~"http_requests|resets", job=~"db|x"}[5m]) * 0 + 1 or vector(1)"#,
        10 * M,
    );
    assert!(
        e.is_ok(),
        "different labels after the name is dropped: {e:?}"
    );
    let src = MemorySource {
        series: vec![
            series("a", &[("x", "1")], &[(0, 1.0)]),
            series("b", &[("x", "1")], &[(0, 2.0)]),
        ],
    };
    let e = Engine::default()
        .instant(&src, &parse(r#"abs({x="1"})"#).unwrap(), 0)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
}

#[test]
fn range_queries_step_and_sort() {
    let v = Engine::default()
        .range(
            &source(),
            &parse("sum by (job) (http_requests)").unwrap(),
            0,
            60 * S,
            15 * S,
        )
        .unwrap();
    let Value::Matrix(m) = v else { panic!() };
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].labels, labels_of([("job", "api")]));
    assert_eq!(
        m[0].samples,
        [
            (0, 0.0),
            (15_000, 30.0),
            (30_000, 60.0),
            (45_000, 90.0),
            (60_000, 120.0)
        ]
    );
    let v = Engine::default()
        .range(&source(), &parse("1+1").unwrap(), 0, 30 * S, 15 * S)
        .unwrap();
    let Value::Matrix(m) = v else { panic!() };
    assert_eq!(m[0].labels.len(), 0);
    assert_eq!(m[0].samples.len(), 3);
}

#[test]
fn errors_name_what_is_wrong() {
    let bad = |q: &str| match parse(q).and_then(|e| Engine::default().instant(&source(), &e, 0)) {
        Err(e) => e,
        Ok(v) => panic!("{q}: {v:?}"),
    };
    assert!(matches!(bad("sum("), QueryError::BadData(_)));
    assert_eq!(
        bad("rate(temp[5m:1m])").to_string(),
        "unsupported PromQL: a subquery as the argument of rate() is not supported by Ferry"
    );
    assert_eq!(
        bad("histogram_quantile(0.9, temp)").to_string(),
        "unsupported PromQL: the function histogram_quantile() is not supported by Ferry"
    );
    assert_eq!(
        bad("temp @ 100").to_string(),
        "unsupported PromQL: the @ modifier is not supported by Ferry"
    );
    assert_eq!(
        bad("count_values(\"v\", temp)").to_string(),
        "unsupported PromQL: the aggregation count_values is not supported by Ferry"
    );
    let e = Engine::default()
        .range(&source(), &parse("temp[5m]").unwrap(), 0, 10, 1)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector"
    );
    let e = Engine::default()
        .range(&source(), &parse("temp").unwrap(), 0, 11_000_000, 1)
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("exceeded maximum resolution of 11,000 points")
    );
}

#[test]
fn bounds_are_checked_before_loading_everything() {
    let engine = Engine {
        limits: Limits {
            max_series: 2,
            max_samples: 1_000,
            ..Limits::default()
        },
        ..Engine::default()
    };
    let e = engine
        .instant(&source(), &parse("http_requests").unwrap(), 10 * M)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "query matches 3 series, more than the limit of 2 (query.max_series): narrow the selector"
    );
    let engine = Engine {
        limits: Limits {
            max_series: 10,
            max_samples: 20,
            ..Limits::default()
        },
        ..Engine::default()
    };
    let e = engine
        .instant(&source(), &parse("resets[10m]").unwrap(), 10 * M)
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("query processing would load too many samples"),
        "{e}"
    );
}

#[test]
fn instant_range_selectors_return_their_samples() {
    let Value::Matrix(m) = instant("temp[2m]", 2 * M).unwrap() else {
        panic!()
    };
    assert_eq!(m[0].samples, [(0, 20.0), (60_000, 21.0)]);
}
