//! Tests of the InfluxDB HTTP write endpoint.

use super::*;
use std::io::Write as _;

fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn tokens_are_checked_as_each_api_sends_them() {
    let tokens = vec!["s3cret".to_owned(), "other".to_owned()];
    let none = q(&[]);
    assert_eq!(
        authorize(&tokens, Api::V2, &none, Some("Token s3cret")),
        Ok(())
    );
    assert_eq!(
        authorize(&tokens, Api::V2, &none, Some("Bearer other")),
        Ok(())
    );
    let denied = authorize(&tokens, Api::V2, &none, Some("Token nope")).unwrap_err();
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        denied.body(Api::V2),
        r#"{"code":"unauthorized","message":"unauthorized access"}"#
    );
    assert!(authorize(&tokens, Api::V2, &none, None).is_err());
    // v2 takes no password parameter.
    assert!(authorize(&tokens, Api::V2, &q(&[("p", "s3cret")]), None).is_err());
    assert_eq!(
        authorize(&tokens, Api::V1, &q(&[("u", "x"), ("p", "s3cret")]), None),
        Ok(())
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("telegraf:other")
    );
    assert_eq!(authorize(&tokens, Api::V1, &none, Some(&basic)), Ok(()));
    assert!(authorize(&tokens, Api::V2, &none, Some(&basic)).is_err());
    assert_eq!(
        authorize(&tokens, Api::V1, &q(&[("p", "bad")]), None)
            .unwrap_err()
            .body(Api::V1),
        r#"{"error":"authorization failed"}"#
    );
    assert_eq!(
        authorize(&[], Api::V2, &none, None),
        Ok(()),
        "open listener"
    );
}

#[test]
fn precision_and_target_follow_each_api() {
    let ns = Precision::Nanoseconds;
    assert_eq!(
        precision_of(Api::V2, &q(&[("bucket", "b"), ("precision", "ms")]), ns),
        Ok(Precision::Milliseconds)
    );
    assert_eq!(
        precision_of(Api::V2, &q(&[("bucket", "b")]), Precision::Seconds),
        Ok(Precision::Seconds)
    );
    assert_eq!(
        precision_of(Api::V1, &q(&[("db", "d"), ("precision", "u")]), ns),
        Ok(Precision::Microseconds)
    );
    assert_eq!(
        precision_of(Api::V1, &q(&[("db", "d"), ("precision", "n")]), ns),
        Ok(ns)
    );
    let e = precision_of(Api::V2, &q(&[("bucket", "b"), ("precision", "n")]), ns).unwrap_err();
    assert_eq!(
        e.message,
        r#"invalid precision "n": expected ns, us, ms or s"#
    );
    let e = precision_of(Api::V1, &q(&[("db", "d"), ("precision", "h")]), ns).unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        precision_of(Api::V2, &q(&[("org", "o")]), ns)
            .unwrap_err()
            .message,
        "missing bucket"
    );
    assert_eq!(
        precision_of(Api::V1, &q(&[("db", "")]), ns)
            .unwrap_err()
            .message,
        "missing db"
    );
}

#[test]
fn gzip_bodies_are_decompressed_within_the_limit() {
    let text = b"m f=1 1\nm f=2 2\n".repeat(10);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&text).unwrap();
    let gz = gz.finish().unwrap();
    assert_eq!(decode_body(Some("gzip"), &gz, text.len()).unwrap(), text);
    assert_eq!(
        decode_body(None, &text, 1).unwrap(),
        text,
        "identity is checked by the reader"
    );
    let e = decode_body(Some("gzip"), &gz, text.len() - 1).unwrap_err();
    assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    let e = decode_body(Some("gzip"), b"not gzip", 100).unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert!(e.message.starts_with("gzip body: "), "{}", e.message);
    let e = decode_body(Some("br"), b"", 100).unwrap_err();
    assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[test]
fn a_partial_write_keeps_the_good_lines_and_reports_the_bad_ones_as_influxdb_does() {
    let cfg = InfluxHttpConfig {
        max_line_bytes: 40,
        ..InfluxHttpConfig::default()
    };
    let body = format!(
        "m f=1 1\nm f=oops 2\nm,host=a g=2,s=\"str\" 3\nm f={} 4\n",
        "9".repeat(40)
    );
    let ParsedBody { parsed, reject } =
        parse_body(body.as_bytes(), Precision::Nanoseconds, 99, &cfg);
    assert_eq!((parsed.lines_accepted, parsed.readings_accepted), (2, 2));
    assert_eq!(parsed.string_fields_skipped, 1);
    let reject = reject.expect("bad lines");
    assert_eq!(reject.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reject.message,
        format!(
            "unable to parse 'm f=oops 2' (line 2): column 5: field \"f\" has invalid value \"oops\" \
             (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)\n\
             unable to parse 'm f={} 4' (line 4): line longer than 40 bytes",
            "9".repeat(40)
        )
    );
    let v: serde_json::Value = serde_json::from_str(&reject.body(Api::V2)).unwrap();
    assert_eq!(v["code"], "invalid");
    let work = body_work(parsed, &cfg);
    assert_eq!(work.reading_count(), 2);
    assert_eq!(
        work.health,
        [
            (
                "influx_http".to_owned(),
                ferry_proto::health::REJECTED_INPUT,
                2
            ),
            (
                "influx_http".to_owned(),
                ferry_proto::health::SKIPPED_STRING_FIELDS,
                1
            ),
        ]
    );
    let ParsedBody { reject, .. } = parse_body(b"m f=1\n\n# c\n", Precision::Seconds, 5, &cfg);
    assert_eq!(reject, None);
}

#[test]
fn open_listeners_must_be_loopback() {
    let mut cfg = InfluxHttpConfig::default();
    assert_eq!(cfg.check(), Ok(()));
    cfg.listen = "0.0.0.0:8086".parse().unwrap();
    assert!(cfg.check().unwrap_err().to_string().contains("tokens"));
    cfg.tokens = vec!["t".into()];
    assert_eq!(cfg.check(), Ok(()));
    cfg.tokens = vec![" ".into()];
    assert!(cfg.check().is_err());
}
