//! Tests of the PostgreSQL sink's config and row encoding.

use super::*;

#[test]
fn dsn_schema_and_tls_are_checked() {
    let raw = |dsn: &str, schema: &str| PostgresRaw {
        dsn: dsn.into(),
        schema: schema.into(),
        ca_file: None,
        max_rows: max_rows(),
        batch_linger: linger(),
        connect_timeout: ten_seconds(),
        backoff_min: backoff_min(),
        backoff_max: backoff_max(),
        lag_budget: LagBudget::default(),
    };
    let ok =
        PostgresSink::try_from(raw("host=127.0.0.1 port=5432 user=u dbname=d", "ferry")).unwrap();
    assert!(!ok.tls);
    let tls = PostgresSink::try_from(raw(
        "postgresql://u@db.example.org/d?sslmode=require",
        "x_1",
    ))
    .unwrap();
    assert!(tls.tls);
    let e = PostgresSink::try_from(raw("host=h", "Bad-Name"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("schema \"Bad-Name\""), "{e}");
    let e = PostgresSink::try_from(raw("user=u", "ferry"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no host"), "{e}");
}

#[test]
fn tags_are_a_json_object() {
    let key =
        ferry_proto::series::SeriesKey::new("t", [("device", "a\"1"), ("site", "x")]).unwrap();
    assert_eq!(tags_json(&key), r#"{"device":"a\"1","site":"x"}"#);
}
