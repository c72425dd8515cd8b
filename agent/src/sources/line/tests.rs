//! The line protocol parser's tests: examples, errors and properties.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use ferry_proto::series::SeriesKey;

const NOW: i64 = 1_700_000_000_000_000_000;

fn parse(input: &str) -> Parsed {
    parse_lines(
        input.as_bytes(),
        Precision::Nanoseconds,
        NOW,
        "src",
        "device",
    )
}

/// A key cache carried across chunks gives each chunk exactly the groups
/// a fresh parse gives, including tag orders first seen in an earlier
/// chunk and errors for new bad keys.
#[test]
fn key_cache_across_chunks_changes_nothing_but_the_work() {
    let chunks: [&[u8]; 3] = [
        b"m,a=1,b=2 f=1,g=2 10\nn,device=d7 f=3 11",
        b"m,b=2,a=1 g=4,f=5 12\nm,a=1,b=2 f=6 13\nbad,=x f=1 14",
        b"n,device=d7 f=7 15\nm,a=1,b=2 h=8 16",
    ];
    let mut cache = KeyCache::default();
    for (i, chunk) in chunks.iter().enumerate() {
        let fresh = parse_lines(chunk, Precision::Nanoseconds, NOW, "src", "device");
        let mut parser = ChunkParser::new(Precision::Nanoseconds, NOW, "src", "device", &mut cache);
        for (no, line) in chunk.split(|&b| b == b'\n').enumerate() {
            parser.push_line(no + 1, line);
        }
        let cached = parser.finish();
        assert_eq!(cached.readings, fresh.readings, "chunk {i}");
        assert_eq!(cached.errors, fresh.errors, "chunk {i}");
        assert_eq!(cached.lines_accepted, fresh.lines_accepted, "chunk {i}");
    }
    // m (one entry for both tag orders) and n; the bad key is not kept.
    assert_eq!(cache.entries.len(), 2);
    assert_eq!(cache.raw_keys.len(), 3);
}

/// `(series, origin, [(ts, value)])`.
type Group = (String, String, Vec<(i64, f64)>);
/// `(series, origin, [(ts, value bits)])`.
type ExactGroup = (SeriesKey, String, Vec<(i64, u64)>);

fn groups(p: &Parsed) -> Vec<Group> {
    p.readings
        .iter()
        .map(|g| {
            let r = g.readings.iter().map(|r| (r.ts_ns, r.value)).collect();
            (g.series.to_string(), g.origin.clone(), r)
        })
        .collect()
}

fn error_of(input: &str) -> LineError {
    let p = parse(input);
    assert!(
        p.readings.is_empty(),
        "{input:?} parsed into {:?}",
        p.readings
    );
    assert_eq!(p.errors.len(), 1, "{input:?}: {:?}", p.errors);
    p.errors[0].1.clone()
}

fn message(input: &str) -> String {
    error_of(input).to_string()
}

#[test]
fn every_field_type_parses_to_its_exact_value() {
    let p = parse(
        "m f=1.5,neg=-2.25,exp=1e-3,lead=.5,plus=+4,int=-12i,big=9223372036854775807i,\
         u=18446744073709551615u,zero=0u 1000",
    );
    assert_eq!(
        groups(&p),
        [
            ("m_f", 1.5),
            ("m_neg", -2.25),
            ("m_exp", 0.001),
            ("m_lead", 0.5),
            ("m_plus", 4.0),
            ("m_int", -12.0),
            ("m_big", 9_223_372_036_854_775_807_i64 as f64),
            ("m_u", 18_446_744_073_709_551_615_u64 as f64),
            ("m_zero", 0.0),
        ]
        .map(|(s, v)| (s.to_owned(), "src".to_owned(), vec![(1000, v)]))
    );
    assert_eq!((p.lines_accepted, p.readings_accepted), (1, 9));
}

#[test]
fn every_boolean_spelling() {
    for (word, value) in [
        ("t", 1.0),
        ("T", 1.0),
        ("true", 1.0),
        ("True", 1.0),
        ("TRUE", 1.0),
        ("f", 0.0),
        ("F", 0.0),
        ("false", 0.0),
        ("False", 0.0),
        ("FALSE", 0.0),
    ] {
        let p = parse(&format!("m b={word} 5"));
        assert_eq!(
            groups(&p),
            [("m_b".into(), "src".into(), vec![(5, value)])],
            "{word}"
        );
    }
    assert!(matches!(
        error_of("m b=tRUE"),
        LineError::InvalidFieldValue { .. }
    ));
    assert!(matches!(
        error_of("m b=yes"),
        LineError::InvalidFieldValue { .. }
    ));
}

#[test]
fn tags_are_unescaped_sorted_and_values_keep_other_backslashes() {
    let p = parse(
        r#"m,z=last,path=C:\dir\ with\ spaces\,and\=eq,q="quoted",b=back\\slash,a=x=y f=1 7"#,
    );
    let g = &p.readings[0];
    assert_eq!(g.series.metric, "m_f");
    let tags: Vec<(&str, &str)> = g
        .series
        .tags
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect();
    assert_eq!(
        tags,
        [
            ("a", "x=y"),
            ("b", r"back\slash"),
            ("path", r"C:\dir with spaces,and=eq"),
            ("q", r#""quoted""#),
            ("z", "last"),
        ]
    );
}

#[test]
fn escaped_bytes_in_names_become_underscores() {
    let metrics = |input: &str| -> Vec<String> {
        let p = parse(input);
        assert_eq!(p.errors, [], "{input:?}");
        p.readings.iter().map(|g| g.series.to_string()).collect()
    };
    assert_eq!(
        metrics(r"cpu\ load,host=a f=1"),
        [r#"cpu_load_f{host="a"}"#]
    );
    assert_eq!(metrics(r"cpu\,x f=1"), ["cpu_x_f"]);
    assert_eq!(metrics(r"m,k\ e\=y\,z=v f=1"), [r#"m_f{k_e_y_z="v"}"#]);
    assert_eq!(metrics(r"m a\=b\ c\,d=1"), ["m_a_b_c_d"]);
    assert_eq!(metrics(r"m a\\b=1"), ["m_a_b"]);
    // Written escaped or not, one name is one series.
    let p = parse("disk\\ io f=1 1\ndisk_io f=2 2");
    assert_eq!(
        groups(&p),
        [("disk_io_f".into(), "src".into(), vec![(1, 1.0), (2, 2.0)])]
    );
    // Tag values keep the escaped byte itself.
    assert_eq!(metrics(r"m,host=rack\ 1 f=1"), [r#"m_f{host="rack 1"}"#]);
    let only = "only A-Z a-z 0-9 _ . : - / are allowed";
    // `=` needs no escape in a measurement (unescaped, it stays `=`, which
    // is outside Ferry's names); other bytes outside the rules reject too.
    assert_eq!(
        error_of("a=b f=1"),
        LineError::BadName {
            element: NameElement::Measurement,
            name: "a=b".into(),
            why: only,
            column: 1
        }
    );
    assert_eq!(
        error_of("m t\u{e9}mp=1"),
        LineError::BadName {
            element: NameElement::Field,
            name: "t\u{e9}mp".into(),
            why: only,
            column: 3
        }
    );
}

#[test]
fn precision_scales_timestamps() {
    for (precision, want) in [
        (Precision::Nanoseconds, 1_500),
        (Precision::Microseconds, 1_500_000),
        (Precision::Milliseconds, 1_500_000_000),
        (Precision::Seconds, 1_500_000_000_000),
    ] {
        let p = parse_lines(b"m f=1 1500\nm f=2 -3", precision, NOW, "src", "device");
        let got: Vec<i64> = p.readings[0].readings.iter().map(|r| r.ts_ns).collect();
        assert_eq!(got, [want, -3 * precision.nanos()], "{precision}");
    }
    let p = parse_lines(b"m f=1", Precision::Seconds, NOW, "src", "device");
    assert_eq!(
        p.readings[0].readings[0].ts_ns, NOW,
        "no timestamp: now, unscaled"
    );
}

#[test]
fn precision_reads_from_config_names() {
    #[derive(serde::Deserialize)]
    struct C {
        p: Vec<Precision>,
    }
    let c: C = toml::from_str(r#"p = ["ns", "us", "ms", "s"]"#).unwrap();
    assert_eq!(
        c.p,
        [
            Precision::Nanoseconds,
            Precision::Microseconds,
            Precision::Milliseconds,
            Precision::Seconds
        ]
    );
}

#[test]
fn blank_lines_comments_crlf_and_whitespace_are_tolerated() {
    let p = parse(
        "# a comment\n\n   \n  # indented comment, f=\"x\n\tm,t=a  f=1   2  \r\nm,t=a f=2\r\n",
    );
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(
        groups(&p),
        [(
            r#"m_f{t="a"}"#.into(),
            "src".into(),
            vec![(2, 1.0), (NOW, 2.0)]
        )]
    );
    assert_eq!(p.lines_accepted, 2);
}

#[test]
fn readings_group_by_series_in_input_order_with_origin() {
    let p = parse(
        "env,device=d1,room=a temp=20,hum=40i 1\n\
         env,room=a,device=d1 temp=21 2\n\
         env,room=b temp=5 3\n\
         env,device=d1,room=a temp=22 4\n",
    );
    assert_eq!(
        groups(&p),
        [
            (
                r#"env_temp{device="d1",room="a"}"#.into(),
                "d1".into(),
                vec![(1, 20.0), (2, 21.0), (4, 22.0)]
            ),
            (
                r#"env_hum{device="d1",room="a"}"#.into(),
                "d1".into(),
                vec![(1, 40.0)]
            ),
            (r#"env_temp{room="b"}"#.into(), "src".into(), vec![(3, 5.0)]),
        ]
    );
    let p = parse_lines(
        b"env,host=gw1 t=1 1",
        Precision::Nanoseconds,
        0,
        "influx",
        "host",
    );
    assert_eq!(p.readings[0].origin, "gw1", "configured device tag");
}

#[test]
fn bad_lines_are_rejected_whole_and_the_rest_carries_on() {
    let p = parse("m a=1 1\nm a=2,b=oops 2\nm,9bad=x a=3 3\n\nm a=4 4\nm a=5,b\u{e9}=6 5");
    assert_eq!(
        groups(&p),
        [("m_a".into(), "src".into(), vec![(1, 1.0), (4, 4.0)])]
    );
    let lines: Vec<usize> = p.errors.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [2, 3, 6]);
    assert_eq!(p.lines_accepted, 2);
}

fn parse_rejecting_strings(input: &str) -> Parsed {
    let mut cache = KeyCache::default();
    let mut parser = ChunkParser::new(Precision::Nanoseconds, NOW, "src", "device", &mut cache)
        .string_fields(StringFields::Reject);
    let mut splitter = LineSplitter::default();
    let (mut pos, mut no) = (0, 1);
    let bytes = input.as_bytes();
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let (line, next, newlines) = match splitter.next_end(rest) {
            Some(end) => (&rest[..end], pos + end + 1, splitter.newlines()),
            None => (rest, bytes.len(), count_newlines(rest)),
        };
        parser.push_line(no, line);
        no += 1 + newlines;
        pos = next;
    }
    parser.finish()
}

#[test]
fn string_fields_are_skipped_and_counted_and_the_numbers_kept() {
    let p = parse("env,room=lab temp=20.5,status=\"ok\",hum=40i 7\n");
    assert_eq!(p.errors, []);
    assert_eq!(
        groups(&p),
        [
            (
                "env_temp{room=\"lab\"}".into(),
                "src".into(),
                vec![(7, 20.5)]
            ),
            (
                "env_hum{room=\"lab\"}".into(),
                "src".into(),
                vec![(7, 40.0)]
            ),
        ]
    );
    assert_eq!((p.lines_accepted, p.string_fields_skipped), (1, 1));
    // Strings with separators, escaped quotes and newlines; a line of
    // strings only is accepted with no readings.
    let p = parse("m s=\"a,b \\\"c\nm2 v=1 2\n\",f=1 9\nm only=\"x y\"\nm f=2 3\n");
    assert_eq!(p.errors, []);
    assert_eq!(
        groups(&p),
        [("m_f".into(), "src".into(), vec![(9, 1.0), (3, 2.0)])]
    );
    assert_eq!((p.lines_accepted, p.string_fields_skipped), (3, 2));
    // A rejected line's strings are not counted.
    let p = parse("m s=\"x\",f=abc 1\n");
    assert_eq!(p.errors.len(), 1);
    assert_eq!(p.string_fields_skipped, 0);
}

#[test]
fn bad_strings_reject_their_line() {
    assert_eq!(
        error_of("m f=1,s=\"open"),
        LineError::UnterminatedString {
            key: "s".into(),
            column: 9
        }
    );
    assert_eq!(
        error_of("m s=\"x\"y,f=1"),
        LineError::InvalidFieldValue {
            key: "s".into(),
            value: "\"x\"y,f=1".into(),
            column: 5
        }
    );
}

#[test]
fn string_fields_reject_the_line_when_configured() {
    let p = parse_rejecting_strings("m s=\"a,b \\\"c\nm2 v=1 2\n\" 9\nm f=1 3\n");
    assert_eq!(
        p.errors,
        [(
            1,
            LineError::StringField {
                key: "s".into(),
                column: 5
            }
        )]
    );
    assert_eq!(groups(&p), [("m_f".into(), "src".into(), vec![(3, 1.0)])]);
    assert_eq!(p.string_fields_skipped, 0);
    let p = parse_rejecting_strings("m f=1\nm s=\"x\" 5\nbad\nm f=2");
    let lines: Vec<usize> = p.errors.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [2, 3], "line numbers count newlines in strings");
    assert_eq!(
        p.errors[0].1.to_string(),
        r#"column 5: field "s" is a string; Ferry stores numbers only"#
    );
}

#[test]
fn string_field_policy_reads_from_config_names() {
    #[derive(serde::Deserialize)]
    struct C {
        s: StringFields,
    }
    let read = |v: &str| toml::from_str::<C>(&format!("s = {v:?}")).map(|c| c.s);
    assert_eq!(read("skip").unwrap(), StringFields::Skip);
    assert_eq!(read("reject").unwrap(), StringFields::Reject);
    assert!(read("keep").is_err());
}

#[test]
fn every_error_names_what_and_where() {
    let cases: &[(&str, &str)] = &[
        (",t=1 f=1", "column 1: missing measurement"),
        ("m,=v f=1", "column 3: empty tag key"),
        ("m,t f=1", r#"column 4: tag "t" has no '='"#),
        ("m,t,u=1 f=1", r#"column 4: tag "t" has no '='"#),
        ("m,t= f=1", r#"column 5: tag "t" has an empty value"#),
        ("m,a=1,a=2 f=1", r#"column 7: tag "a" appears twice"#),
        (
            "m,t=1",
            "column 6: no fields (expected field=value after the measurement and tags)",
        ),
        (
            "m,t=1   ",
            "column 9: no fields (expected field=value after the measurement and tags)",
        ),
        ("m =1", "column 3: empty field key"),
        ("m f=1,", "column 7: empty field key"),
        ("m f", r#"column 4: field "f" has no '='"#),
        ("m f=", r#"column 5: field "f" has no value"#),
        ("m f=,g=1", r#"column 5: field "f" has no value"#),
        (
            "m f=1,s=\"x",
            r#"column 9: field "s" has a string value without a closing quote"#,
        ),
        (
            "m f=abc",
            r#"column 5: field "f" has invalid value "abc" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
        ),
        (
            "m f=1.5i",
            r#"column 5: field "f" has invalid value "1.5i" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
        ),
        (
            "m f=-1u",
            r#"column 5: field "f" has invalid value "-1u" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
        ),
        (
            "m f=NaN",
            r#"column 5: field "f" has invalid value "NaN" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
        ),
        (
            "m f=1..2",
            r#"column 5: field "f" has invalid value "1..2" (expected a float, an integer like 12i, an unsigned like 12u, or a boolean)"#,
        ),
        (
            "m f=9223372036854775808i",
            r#"column 5: field "f" value "9223372036854775808i" is out of range"#,
        ),
        (
            "m f=18446744073709551616u",
            r#"column 5: field "f" value "18446744073709551616u" is out of range"#,
        ),
        (
            "m f=1e999",
            r#"column 5: field "f" value "1e999" is out of range"#,
        ),
        ("m f=1,f=2", r#"column 7: field "f" appears twice"#),
        (
            "9m f=1",
            r#"column 1: measurement "9m": must start with a letter or '_'"#,
        ),
        (
            "m,9k=v f=1",
            r#"column 3: tag key "9k": must start with a letter or '_'"#,
        ),
        (
            "m,k=a\u{1}b f=1",
            r#"column 5: value of tag "k" "a\u{1}b": control characters are not allowed"#,
        ),
        (
            "m a!=1",
            r#"column 3: field key "a!": only A-Z a-z 0-9 _ . : - / are allowed"#,
        ),
        (
            "m f=1 12a",
            r#"column 7: invalid timestamp "12a" (expected an integer)"#,
        ),
        (
            "m f=1 -",
            r#"column 7: invalid timestamp "-" (expected an integer)"#,
        ),
        (
            "m f=1 99999999999999999999",
            r#"column 7: timestamp 99999999999999999999 (ns) is out of range"#,
        ),
        (
            "m f=1 123 456",
            "column 11: unexpected text after the timestamp",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(message(input), *want, "{input:?}");
    }
    assert_eq!(
        parse_lines(
            b"m f=1 9300000000",
            Precision::Seconds,
            NOW,
            "src",
            "device"
        )
        .errors[0]
            .1
            .to_string(),
        "column 7: timestamp 9300000000 (s) is out of range"
    );
    let tags: String = (0..17).map(|i| format!(",k{i:02}=v")).collect();
    assert_eq!(
        message(&format!("m{tags} f=1")),
        "column 99: 17 tags, at most 16 allowed"
    );
    let long_field = "f".repeat(130);
    let err = error_of(&format!("m {long_field}=1"));
    assert_eq!(err.column(), 3);
    assert_eq!(
        err.to_string(),
        format!(
            r#"column 3: metric name "m_{}…" (measurement_field) is longer than 128 bytes"#,
            "f".repeat(62)
        )
    );
    assert_eq!(
        error_of(&format!("{} f=1", "m".repeat(129))).to_string(),
        format!(r#"column 1: measurement "{}…": too long"#, "m".repeat(64))
    );
    assert_eq!(
        parse_lines(b"m,k=a\xffb f=1", Precision::Nanoseconds, 0, "s", "d").errors,
        [(1, LineError::InvalidUtf8 { column: 6 })]
    );
    assert_eq!(
        message("m,k=a\u{ff}\u{1} f=1"),
        r#"column 5: value of tag "k" "aÿ\u{1}": control characters are not allowed"#
    );
    assert_eq!(
        LineError::LineTooLong { max: 10 }.to_string(),
        "line longer than 10 bytes"
    );
}

#[test]
fn a_line_with_one_bad_field_leaves_no_reading() {
    let p = parse("m a=1,b!=2 5\nm c=1 6");
    assert_eq!(groups(&p), [("m_c".into(), "src".into(), vec![(6, 1.0)])]);
}

#[test]
fn parse_chunk_returns_groups_and_errors() {
    let (groups, errors) = parse_chunk(b"m f=1 1\nbad", Precision::Nanoseconds, 0, "s", "d");
    assert_eq!(groups.len(), 1);
    assert_eq!(errors, [(2, LineError::MissingFields { column: 4 })]);
}

/// Line ends found by feeding `bytes` in pieces of the given sizes.
fn ends_incremental(bytes: &[u8], pieces: &[usize]) -> Vec<usize> {
    let mut splitter = LineSplitter::default();
    let (mut ends, mut start, mut avail) = (Vec::new(), 0, 0);
    let mut pieces = pieces.iter().copied().cycle();
    while avail < bytes.len() {
        avail = (avail + pieces.next().unwrap_or(1).max(1)).min(bytes.len());
        while let Some(e) = splitter.next_end(&bytes[start..avail]) {
            // What the line adds to the line number, without a rescan.
            assert_eq!(
                splitter.newlines(),
                count_newlines(&bytes[start..start + e]),
                "newlines inside the line ending at {}",
                start + e
            );
            ends.push(start + e);
            start += e + 1;
        }
    }
    ends
}

#[derive(Debug, Clone)]
enum Value {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool, usize),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Float(x) => format!("{x:?}"),
            Value::Int(n) => format!("{n}i"),
            Value::UInt(n) => format!("{n}u"),
            Value::Bool(b, spelling) => {
                let words = if *b {
                    ["t", "T", "true", "True", "TRUE"]
                } else {
                    ["f", "F", "false", "False", "FALSE"]
                };
                words[spelling % 5].to_owned()
            }
        }
    }

    fn f64(&self) -> f64 {
        match self {
            Value::Float(x) => *x,
            Value::Int(n) => *n as f64,
            Value::UInt(n) => *n as f64,
            Value::Bool(b, _) => f64::from(u8::from(*b)),
        }
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::Float),
        any::<i64>().prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        (any::<bool>(), 0..5usize).prop_map(|(b, s)| Value::Bool(b, s)),
    ]
}

#[derive(Debug, Clone)]
struct GenLine {
    measurement: String,
    tags: BTreeMap<String, String>,
    fields: BTreeMap<String, Value>,
    ts: Option<i64>,
}

fn gen_line() -> impl Strategy<Value = GenLine> {
    (
        "[a-zA-Z_][a-zA-Z0-9_.:/-]{0,20}",
        prop::collection::btree_map("[a-z_][a-z0-9_.]{0,8}", "[^\\p{Cc}]{1,20}", 0..5),
        prop::collection::btree_map("[a-zA-Z0-9_.:/-]{1,10}", value(), 1..4),
        any::<Option<i64>>(),
    )
        .prop_map(|(measurement, tags, fields, ts)| GenLine {
            measurement,
            tags,
            fields,
            ts,
        })
}

fn escape(s: &str, special: &[char]) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c == '\\' || special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn format_line(l: &GenLine) -> String {
    let mut out = escape(&l.measurement, &[',', ' ']);
    for (k, v) in &l.tags {
        out += &format!(
            ",{}={}",
            escape(k, &[',', '=', ' ']),
            escape(v, &[',', '=', ' '])
        );
    }
    let fields: Vec<String> = l
        .fields
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k, &[',', '=', ' ']), v.text()))
        .collect();
    out += " ";
    out += &fields.join(",");
    if let Some(ts) = l.ts {
        out += &format!(" {ts}");
    }
    out
}

#[test]
fn the_splitter_counts_newlines_inside_quoted_strings() {
    let text = b"m s=\"a\nb\\\"\nc\" 1\nm f=1 2\n";
    let mut splitter = LineSplitter::default();
    let first = splitter.next_end(text).unwrap();
    assert_eq!(&text[..first], b"m s=\"a\nb\\\"\nc\" 1");
    assert_eq!(splitter.newlines(), 2);
    let rest = &text[first + 1..];
    assert_eq!(splitter.next_end(rest), Some(7));
    assert_eq!(splitter.newlines(), 0);
}

#[test]
fn timestamps_at_the_ends_of_i64() {
    let ns = Precision::Nanoseconds;
    assert_eq!(
        parse_timestamp(b"-9223372036854775808", 1, ns),
        Ok(i64::MIN)
    );
    assert_eq!(parse_timestamp(b"9223372036854775807", 1, ns), Ok(i64::MAX));
    assert_eq!(parse_timestamp(b"-0", 1, ns), Ok(0));
    for bad in [
        "9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999",
    ] {
        assert_eq!(
            parse_timestamp(bad.as_bytes(), 7, ns),
            Err(LineError::TimestampOutOfRange {
                value: bad.into(),
                precision: ns,
                column: 7
            })
        );
    }
    assert_eq!(
        parse_timestamp(b"9223372036854775", 1, Precision::Seconds),
        Err(LineError::TimestampOutOfRange {
            value: "9223372036854775".into(),
            precision: Precision::Seconds,
            column: 1
        })
    );
}

/// The fast path (up to 19 digits, eight at a time) and the long one
/// agree with the standard parser on every length, sign and bad byte.
#[test]
fn timestamps_of_every_length_are_what_str_parse_gives() {
    let ns = Precision::Nanoseconds;
    for len in 1..=21 {
        for digits in [
            "1234567890123456789012",
            "9999999999999999999999",
            "0000000000000000000009",
        ] {
            for sign in ["", "-"] {
                let text = format!("{sign}{}", &digits[..len]);
                let want = text.parse::<i64>();
                let got = parse_timestamp(text.as_bytes(), 1, ns);
                match want {
                    Ok(n) => assert_eq!(got, Ok(n), "{text}"),
                    Err(_) => assert_eq!(
                        got,
                        Err(LineError::TimestampOutOfRange {
                            value: text.clone(),
                            precision: ns,
                            column: 1
                        }),
                        "{text}"
                    ),
                }
                // A bad byte anywhere is invalid, never out of range.
                for at in 0..len {
                    for bad in [b'/', b':', b'a', b' ', 0x80, b'0' + 0x80] {
                        let mut bytes = text.clone().into_bytes();
                        bytes[sign.len() + at] = bad;
                        assert_eq!(
                            parse_timestamp(&bytes, 1, ns),
                            Err(LineError::InvalidTimestamp {
                                value: quote(&bytes),
                                column: 1
                            }),
                            "{}",
                            String::from_utf8_lossy(&bytes)
                        );
                    }
                }
            }
        }
    }
    for bad in ["", "-", "--1", "+1"] {
        assert_eq!(
            parse_timestamp(bad.as_bytes(), 1, ns),
            Err(LineError::InvalidTimestamp {
                value: bad.into(),
                column: 1
            }),
            "{bad}"
        );
    }
    assert_eq!(
        parse_timestamp(b"-9223372036854775", 1, Precision::Microseconds),
        Ok(-9_223_372_036_854_775_000)
    );
}

#[test]
fn short_decimals_are_the_values_str_parse_gives() {
    for text in [
        "0",
        "-0",
        "+0.0",
        "1.",
        ".5",
        "-.5",
        "20.37",
        "0.1",
        "0.3",
        "123456789012345",
        "1.23456789012345",
        "-999999999999999",
        "0.00000000000001",
    ] {
        let x = short_decimal(text.as_bytes()).expect(text);
        assert_eq!(
            x.to_bits(),
            text.parse::<f64>().unwrap().to_bits(),
            "{text}"
        );
    }
    for other in ["1234567890123456", "1e3", ".", "-", "1.2.3", "1,2", ""] {
        assert_eq!(short_decimal(other.as_bytes()), None, "{other}");
    }
}

proptest! {
    #[test]
    fn short_decimal_matches_str_parse(
        negative in any::<bool>(),
        int in "[0-9]{0,15}",
        frac in proptest::option::of("[0-9]{0,15}"),
    ) {
        let text = format!("{}{int}{}", if negative { "-" } else { "" },
            frac.as_ref().map_or(String::new(), |f| format!(".{f}")));
        if let Some(x) = short_decimal(text.as_bytes()) {
            prop_assert_eq!(x.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{}", text);
        } else {
            let digits = int.len() + frac.as_ref().map_or(0, String::len);
            prop_assert!(digits == 0 || digits > 15, "{} fell back", text);
        }
    }

    #[test]
    fn timestamps_match_str_parse(text in "-?[0-9]{1,21}", precision in prop::sample::select(vec![
        Precision::Nanoseconds, Precision::Microseconds, Precision::Milliseconds, Precision::Seconds,
    ])) {
        let want = text.parse::<i64>().ok().and_then(|n| n.checked_mul(precision.nanos()));
        let got = parse_timestamp(text.as_bytes(), 1, precision);
        match want {
            Some(n) => prop_assert_eq!(got, Ok(n)),
            None => {
                let out_of_range = matches!(got, Err(LineError::TimestampOutOfRange { .. }));
                prop_assert!(out_of_range, "{}: {:?}", text, got);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let p = parse_lines(&bytes, Precision::Seconds, NOW, "src", "device");
        prop_assert!(p.readings.iter().all(|g| !g.readings.is_empty()));
    }

    #[test]
    fn syntax_soup_never_panics_and_splits_the_same_in_pieces(
        bytes in prop::collection::vec(
            prop::sample::select(b"m,= \\\"#\n\r\tif1.-eu9tT\xff".to_vec()),
            0..300,
        ),
        pieces in prop::collection::vec(1..40usize, 1..8),
    ) {
        let p = parse_lines(&bytes, Precision::Milliseconds, NOW, "src", "device");
        prop_assert!(p.lines_accepted as usize + p.errors.len() <= bytes.len() + 1);
        prop_assert_eq!(ends_incremental(&bytes, &pieces), ends_incremental(&bytes, &[bytes.len()]));
    }

    #[test]
    fn formatted_lines_parse_back(lines in prop::collection::vec(gen_line(), 1..6)) {
        let text: Vec<String> = lines.iter().map(format_line).collect();
        let p = parse(&text.join("\n"));
        prop_assert!(p.errors.is_empty(), "{:?} from {:?}", p.errors, text);

        let mut want: Vec<ExactGroup> = Vec::new();
        for l in &lines {
            for (field, value) in &l.fields {
                let key = SeriesKey::new(format!("{}_{field}", l.measurement), l.tags.clone())
                    .expect("generated names are valid");
                let origin = l.tags.get("device").cloned().unwrap_or_else(|| "src".into());
                let reading = (l.ts.unwrap_or(NOW), value.f64().to_bits());
                match want.iter_mut().find(|(k, _, _)| *k == key) {
                    Some(group) => group.2.push(reading),
                    None => want.push((key, origin, vec![reading])),
                }
            }
        }
        let got: Vec<ExactGroup> = p
            .readings
            .iter()
            .map(|g| {
                let r = g.readings.iter().map(|r| (r.ts_ns, r.value.to_bits())).collect();
                (g.series.clone(), g.origin.clone(), r)
            })
            .collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(p.lines_accepted, lines.len() as u64);
    }
}

fn parse_with(cache: &mut KeyCache, chunk: &str) -> Parsed {
    let mut parser = ChunkParser::new(Precision::Nanoseconds, NOW, "src", "device", cache);
    for (no, line) in chunk.lines().enumerate() {
        parser.push_line(no + 1, line.as_bytes());
    }
    parser.finish()
}

/// With a budget, a line whose new series does not fit is parsed without
/// caching it: its readings are kept (groups of their own), counted as an
/// uncached line; series already cached go on; the miss makes every cache
/// under the budget evict itself at its next chunk, and the bytes come
/// back.
#[test]
fn a_new_series_past_the_budget_is_parsed_uncached_and_caches_evict() {
    use crate::limits::MemoryBudget;
    // Room for about two key sections with their fields.
    let budget = MemoryBudget::new(3_400);
    let mut a = KeyCache::with_budget(budget.clone());
    let mut b = KeyCache::with_budget(budget.clone());
    let first = parse_with(&mut a, "m,device=d1 v=1\nm,device=d2 v=2\n");
    assert_eq!((first.lines_accepted, first.lines_uncached), (2, 0));
    let held = budget.used();
    assert!(held > 0 && held == a.charged());

    // `b`'s new series do not fit: parsed uncached, every reading kept
    // with its origin; a malformed line is still an error.
    let second = parse_with(
        &mut b,
        "n,device=d3 v=1,w=2\nn,device=d4 v=3\nn,device=d3 v=\n",
    );
    assert_eq!((second.lines_accepted, second.lines_uncached), (2, 2));
    assert_eq!(second.readings_accepted, 3);
    let got: Vec<(String, String, Vec<f64>)> = second
        .readings
        .iter()
        .map(|g| {
            (
                g.series.metric.clone(),
                g.origin.clone(),
                g.readings.iter().map(|r| r.value).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("n_v".to_owned(), "d3".to_owned(), vec![1.0]),
            ("n_w".to_owned(), "d3".to_owned(), vec![2.0]),
            ("n_v".to_owned(), "d4".to_owned(), vec![3.0]),
        ]
    );
    assert_eq!(second.errors.len(), 1);
    assert_eq!(b.charged(), 0, "nothing of them was cached");
    assert_eq!(budget.uncached_lines(), 2);
    assert_eq!((budget.refused_series(), budget.refused_readings()), (0, 0));
    // `a`'s cached series go on in a chunk of its own.
    assert!(a.pressed(), "the miss asked every cache for room");
    let again = parse_with(&mut a, "m,device=d1 v=3\n");
    assert_eq!((again.lines_accepted, again.lines_uncached), (1, 0));
    assert_eq!(
        budget.evictions(),
        1,
        "`a` evicted itself at its next chunk"
    );
    assert!(!a.pressed());
    // `b` makes room for itself the same way, then its series are cached.
    let third = parse_with(&mut b, "n,device=d3 v=1,w=2\n");
    assert_eq!((third.lines_accepted, third.lines_uncached), (1, 0));
    assert!(b.charged() > 0);
    assert_eq!(budget.used(), a.charged() + b.charged());
    drop((a, b));
    assert_eq!(budget.used(), 0, "dropped caches hand everything back");
}
