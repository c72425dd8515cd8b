//! Tests of the remote_write sink without a server: requests of at most
//! `max_samples_per_send` samples, halving a refused request down to one
//! sample, and a body that decodes back (snappy, protobuf); what answers
//! do to a request being sent ([`Sending`]).

use super::sending::{Done, LOG_EACH, Refusal};
use super::*;

fn ts(name: &str, samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: vec![Label {
            name: "__name__".into(),
            value: name.into(),
        }],
        samples: samples
            .iter()
            .map(|&(timestamp, value)| Sample { value, timestamp })
            .collect(),
    }
}

#[test]
fn requests_hold_at_most_max_samples_in_order() {
    let reqs = requests(
        vec![
            ts("a", &[(1, 1.0), (2, 2.0), (3, 3.0)]),
            ts("b", &[(1, 9.0)]),
        ],
        2,
    );
    let shape: Vec<Vec<(String, Vec<i64>)>> = reqs
        .iter()
        .map(|r| {
            r.iter()
                .map(|t| {
                    (
                        t.labels[0].value.clone(),
                        t.samples.iter().map(|s| s.timestamp).collect(),
                    )
                })
                .collect()
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            vec![("a".to_owned(), vec![1, 2])],
            vec![("a".to_owned(), vec![3]), ("b".to_owned(), vec![1])],
        ]
    );
}

#[test]
fn refused_requests_halve_down_to_one_sample() {
    let (a, b) = halves(vec![
        ts("a", &[(1, 1.0)]),
        ts("b", &[(1, 1.0)]),
        ts("c", &[(1, 1.0)]),
    ])
    .unwrap();
    assert_eq!((a.len(), b.len()), (1, 2));
    let (a, b) = halves(vec![ts("a", &[(1, 1.0), (2, 2.0), (3, 3.0)])]).unwrap();
    assert_eq!((count(&a), count(&b)), (1, 2));
    assert!(halves(vec![ts("a", &[(1, 1.0)])]).is_none());
}

#[test]
fn the_body_is_snappy_protobuf_that_decodes_back() {
    let req = vec![ts("temperature", &[(1_700_000_000_000, 21.5)])];
    let body = encode(&req);
    let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
    let back = WriteRequest::decode(raw.as_slice()).unwrap();
    assert_eq!(back.timeseries, req);
    // Field 1 (timeseries), length-delimited; the bytes of the spec.
    assert_eq!(raw[0], 0x0a);
    assert_eq!(describe(&req[0]), "temperature{}");
}

fn names(piece: Option<&[TimeSeries]>) -> Vec<String> {
    piece
        .unwrap_or_default()
        .iter()
        .map(|t| t.labels[0].value.clone())
        .collect()
}

#[test]
fn a_refused_request_is_bisected_to_the_refused_sample_and_the_rest_delivered() {
    let mut s = Sending::new(vec![
        ts("a", &[(1, 1.0)]),
        ts("b", &[(2, 2.0)]),
        ts("c", &[(3, 3.0)]),
    ]);
    assert_eq!(names(s.poll_piece()), ["a", "b", "c"]);
    assert_eq!(s.handle_answer(400, "out of order sample\n"), Answer::Split);
    assert_eq!(names(s.poll_piece()), ["a"]);
    assert_eq!(s.handle_answer(204, ""), Answer::Delivered);
    assert_eq!(names(s.poll_piece()), ["b", "c"]);
    assert_eq!(s.handle_answer(400, "out of order sample"), Answer::Split);
    assert_eq!(names(s.poll_piece()), ["b"]);
    assert_eq!(
        s.handle_answer(400, " out of order sample\n"),
        Answer::Refused {
            log: Some(Refusal {
                series: "b{}".into(),
                timestamp_ms: 2,
                value: 2.0,
            })
        }
    );
    assert_eq!(names(s.poll_piece()), ["c"]);
    // Transient answers leave the piece to be sent again.
    for status in [500, 503, 429, 408] {
        assert_eq!(s.handle_answer(status, "busy"), Answer::Retry);
        assert_eq!(names(s.poll_piece()), ["c"]);
    }
    assert_eq!(s.handle_answer(200, ""), Answer::Delivered);
    assert_eq!(s.poll_piece(), None);
    assert_eq!(
        s.finish(),
        Done {
            delivered: 2,
            refused: 1,
            unlogged: None,
        }
    );
}

#[test]
fn refused_samples_past_five_per_request_are_counted_in_one_closing_line() {
    // Seven samples of one series, each refused: halved down to each alone.
    let samples: Vec<(i64, f64)> = (1..=7).map(|t| (t, t as f64)).collect();
    let mut s = Sending::new(vec![ts("t", &samples)]);
    let (mut splits, mut logged, mut silent) = (0, Vec::new(), 0);
    while s.poll_piece().is_some() {
        match s.handle_answer(400, &format!("reason {}", logged.len() + silent)) {
            Answer::Split => splits += 1,
            Answer::Refused { log: Some(r) } => logged.push(r.timestamp_ms),
            Answer::Refused { log: None } => silent += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(splits, 6, "seven samples take six splits");
    assert_eq!(logged, [1, 2, 3, 4, 5], "in order, the first LOG_EACH");
    assert_eq!(LOG_EACH, 5);
    assert_eq!(silent, 2);
    assert_eq!(
        s.finish(),
        Done {
            delivered: 0,
            refused: 7,
            unlogged: Some((2, "reason 6".into())),
        }
    );
}
