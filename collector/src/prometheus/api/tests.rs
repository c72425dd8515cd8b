//! Requests answered over series in memory.

use super::*;
use crate::prometheus::source::MemorySource;
use crate::prometheus::value::{Series, labels_of};

fn source() -> MemorySource {
    MemorySource {
        series: vec![
            Series {
                labels: labels_of([("__name__", "temp"), ("device", "d2"), ("agent", "gw")]),
                samples: vec![(1_000, 20.5), (2_000, f64::INFINITY)],
            },
            Series {
                labels: labels_of([("__name__", "temp"), ("device", "d1"), ("agent", "gw")]),
                samples: vec![(1_000, 19.0)],
            },
            Series {
                labels: labels_of([
                    ("__name__", "humidity_max"),
                    ("device", "d1"),
                    ("agent", "gw"),
                ]),
                samples: vec![(1_000, 50.0)],
            },
        ],
    }
}

fn ask(endpoint: Endpoint, params: &[(&str, &str)]) -> Answer {
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    answer(&endpoint, &params, &source(), &Engine::default(), 10_000)
}

#[test]
fn grafana_s_health_check() {
    let a = ask(
        Endpoint::Query,
        &[("query", "1+1"), ("time", "1700000000.5")],
    );
    assert_eq!(
        a,
        Answer {
            status: 200,
            body: r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.500,"2"]}}"#.into()
        }
    );
    let a = ask(Endpoint::BuildInfo, &[]);
    assert!(
        a.body
            .starts_with(r#"{"status":"success","data":{"version":"2.42.0","#),
        "{}",
        a.body
    );
}

#[test]
fn instant_vectors_carry_the_evaluation_time_and_string_values() {
    let a = ask(
        Endpoint::Query,
        &[("query", r#"temp{device="d2"}"#), ("time", "2.25")],
    );
    assert_eq!(
        a.body,
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"temp","agent":"gw","device":"d2"},"value":[2.250,"+Inf"]}]}}"#
    );
    let a = ask(Endpoint::Query, &[("query", "nothing_here")]);
    assert_eq!(
        a.body,
        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#
    );
}

#[test]
fn range_queries() {
    let a = ask(
        Endpoint::QueryRange,
        &[
            ("query", r#"temp{device="d1"} * 2"#),
            ("start", "1"),
            ("end", "3"),
            ("step", "1s"),
        ],
    );
    assert_eq!(
        a.body,
        r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"agent":"gw","device":"d1"},"values":[[1,"38"],[2,"38"],[3,"38"]]}]}}"#
    );
    let a = ask(
        Endpoint::QueryRange,
        &[("query", "temp"), ("start", "1"), ("end", "3")],
    );
    assert_eq!(
        a,
        Answer {
            status: 400,
            body: r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"step\": cannot parse \"\" to a valid duration"}"#.into()
        }
    );
}

#[test]
fn errors_have_prometheus_types_and_statuses() {
    let a = ask(Endpoint::Query, &[("query", "sum(")]);
    assert_eq!(a.status, 400);
    assert!(
        a.body.starts_with(
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": "#
        ),
        "{}",
        a.body
    );
    let a = ask(Endpoint::Query, &[("query", "temp[5m:1m]")]);
    assert_eq!(
        a,
        Answer {
            status: 422,
            body: r#"{"status":"error","errorType":"execution","error":"unsupported PromQL: a subquery (`expr[range:step]`) is not supported by Ferry"}"#.into()
        }
    );
    let a = ask(Endpoint::Query, &[("query", "temp"), ("time", "yesterday")]);
    assert_eq!(
        a.body,
        r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"time\": cannot parse \"yesterday\" to a valid timestamp"}"#
    );
}

#[test]
fn labels_values_and_series_are_sorted() {
    assert_eq!(
        ask(Endpoint::Labels, &[]).body,
        r#"{"status":"success","data":["__name__","agent","device"]}"#
    );
    assert_eq!(
        ask(
            Endpoint::LabelValues("device".into()),
            &[("match[]", "temp")]
        )
        .body,
        r#"{"status":"success","data":["d1","d2"]}"#
    );
    assert_eq!(
        ask(Endpoint::LabelValues("__name__".into()), &[]).body,
        r#"{"status":"success","data":["humidity_max","temp"]}"#
    );
    assert_eq!(
        ask(Endpoint::LabelValues("nope".into()), &[]).body,
        r#"{"status":"success","data":[]}"#
    );
    assert_eq!(
        ask(Endpoint::Series, &[("match[]", r#"{device="d1"}"#)]).body,
        r#"{"status":"success","data":[{"__name__":"humidity_max","agent":"gw","device":"d1"},{"__name__":"temp","agent":"gw","device":"d1"}]}"#
    );
    assert_eq!(
        ask(Endpoint::Series, &[]).body,
        r#"{"status":"error","errorType":"bad_data","error":"no match[] parameter provided"}"#
    );
    let a = ask(Endpoint::Metadata, &[("metric", "temp")]);
    assert!(
        a.body
            .starts_with(r#"{"status":"success","data":{"temp":[{"type":"gauge","help":"#),
        "{}",
        a.body
    );
}

#[test]
fn times_and_steps_parse_as_prometheus_does() {
    assert_eq!(parse_time("1700000000.781"), Some(1_700_000_000_781));
    assert_eq!(parse_time("1700000000"), Some(1_700_000_000_000));
    assert_eq!(
        parse_time("2015-07-01T20:10:51.781Z"),
        Some(1_435_781_451_781)
    );
    assert_eq!(parse_time("now"), None);
    assert_eq!(parse_step("15"), Some(15_000));
    assert_eq!(parse_step("0.5"), Some(500));
    assert_eq!(parse_step("1m30s"), Some(90_000));
    assert_eq!(parse_step("x"), None);
}
