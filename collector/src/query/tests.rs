//! Tests of selectors, time ranges and the per-query plan: parse errors name
//! the position, relative times resolve against now, and plans over budget are
//! refused naming the limit.

use super::*;

#[test]
fn selectors_parse_and_match() {
    let sel = Selector::parse(r#"temp{device="a\"1", unit="Cel"}"#).unwrap();
    assert_eq!(sel.metric.as_deref(), Some("temp"));
    assert_eq!(
        sel.tags,
        vec![
            ("device".into(), "a\"1".into()),
            ("unit".into(), "Cel".into())
        ]
    );
    let key = SeriesKey::new("temp", [("device", "a\"1"), ("unit", "Cel"), ("x", "y")]).unwrap();
    assert!(sel.matches(&key));
    assert!(!Selector::parse(r#"temp{unit="F"}"#).unwrap().matches(&key));
    assert!(Selector::parse(r#"{x="y"}"#).unwrap().matches(&key));
    assert!(Selector::parse("*").unwrap().matches(&key));
    assert_eq!(
        Selector::parse(r#"temp{unit=Cel}"#)
            .unwrap_err()
            .to_string(),
        r#"selector "temp{unit=Cel}" at byte 10: expected `"` to open the tag value"#
    );
    assert!(Selector::parse(r#"temp{unit="Cel""#).is_err());
}

#[test]
fn a_fine_step_over_a_long_range_is_refused_before_reading() {
    let limits = QueryLimits::default();
    let year = 365 * 86_400 * 1_000_000_000i64;
    let q = QueryParams {
        from: Some("-365days".into()),
        to: Some("now".into()),
        step: Some("1ns".into()),
        ..QueryParams::default()
    }
    .resolve(year * 55)
    .unwrap();
    let e = q.plan(&limits).unwrap_err();
    assert_eq!(e.label(), "step");
    assert_eq!(
        e.to_string(),
        "a step of 1ns over 365d makes 31536000000000000 windows per series, more than query.max_points = 5000000: use a step of at least 6s 308ms or a shorter range"
    );
    // The step it names passes; the whole range in one window too.
    for step in ["6308ms", "1h", "365days"] {
        let q = QueryParams {
            from: Some("-365days".into()),
            to: Some("now".into()),
            step: Some(step.into()),
            ..QueryParams::default()
        }
        .resolve(year * 55)
        .unwrap();
        q.plan(&limits).unwrap();
    }
    assert_eq!(buckets(0, 10, 5), 2);
    assert_eq!(buckets(1, 10, 5), 2);
    assert_eq!(buckets(-1, 1, 5), 2);
    assert_eq!(buckets(0, 1, 5), 1);
}

#[test]
fn held_points_and_bytes_are_bounded() {
    let mut held = Held::new(QueryLimits {
        max_series: 2,
        max_points: 10,
        max_bytes: 100,
    });
    held.series(2).unwrap();
    assert_eq!(held.series(3).unwrap_err().label(), "series");
    held.take(5, 80).unwrap();
    assert_eq!(held.take(1, 40).unwrap_err().label(), "bytes");
    held.give_back(6, 120);
    held.take(10, 0).unwrap();
    assert_eq!(held.take(1, 0).unwrap_err().label(), "points");
}

#[test]
fn times_resolve_against_now() {
    let now = 10_000_000_000_000;
    assert_eq!(parse_time("from", "now", now), Ok(now));
    assert_eq!(parse_time("from", "-1s", now), Ok(now - 1_000_000_000));
    assert_eq!(parse_time("from", "42", now), Ok(42));
    assert_eq!(
        parse_time("from", "1970-01-01T00:00:01Z", now),
        Ok(1_000_000_000)
    );
    assert!(parse_time("from", "yesterday", now).is_err());
    let q = QueryParams {
        from: Some("5".into()),
        to: Some("5".into()),
        ..QueryParams::default()
    };
    assert_eq!(
        q.resolve(now),
        Err(QueryError::EmptyRange { from: 5, to: 5 })
    );
    let q = QueryParams {
        step: Some("1m".into()),
        kind: Some("raw".into()),
        ..QueryParams::default()
    }
    .resolve(now)
    .unwrap();
    assert_eq!(
        (q.step_ns, q.raw, q.aggregates),
        (Some(60_000_000_000), true, false)
    );
}
