//! Tests of the remote_write sink without a server: requests of at most
//! `max_samples_per_send` samples, halving a refused request down to one
//! sample, and a body that decodes back (snappy, protobuf).

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
