//! Fake-clock tests of [`Flight`](super::Flight): hello and welcome, the
//! in-flight window, answer classification, pauses and reconnects, with
//! no sockets.

use std::net::SocketAddr;

use ferry_clock::SEC;
use ferry_proto::session::{Refused, status};

use super::*;
use crate::shipper::ShipperConfig;

const T0: i64 = 1_700_000_000 * SEC;
const MS: i64 = 1_000_000;
const EPOCH: u64 = 0x5eed_fa11_0000_0001;

fn config(max_in_flight_bytes: u64) -> ShipperConfig {
    let roots = rustls::RootCertStore::empty();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(crate::shipper::tls_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ShipperConfig {
        address: SocketAddr::from(([127, 0, 0, 1], 1)),
        fallbacks: Vec::new(),
        fail_back_after: Duration::from_secs(300),
        server_name: "collector".into(),
        tls: Arc::new(tls),
        max_in_flight_bytes,
        newest_first: false,
        zstd: true,
        compact: true,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(6),
        keep_alive: Duration::from_secs(2),
        epoch: EPOCH,
        terms: tokio::sync::watch::channel(None).0,
        devices: crate::sources::device::DeviceRegistry::new(),
    }
}

fn welcome(max_streams: u32, compression: u8) -> Vec<u8> {
    codec::to_vec(&welcome_msg(max_streams, compression)).unwrap()
}

/// A Welcome announcing no time window and no clock (an older
/// collector's, as far as the window goes).
fn welcome_msg(max_streams: u32, compression: u8) -> Welcome {
    Welcome {
        protocol: PROTOCOL_VERSION,
        collector_version: "test".into(),
        compression,
        max_frame: 1 << 20,
        max_streams,
        max_past_ns: 0,
        max_future_ns: 0,
        now_ns: 0,
        max_batch_readings: 0,
        rate_per_sec: 0,
        rate_burst: 0,
        idle_timeout_ms: 0,
        hello_timeout_ms: 0,
        status_interval_ms: 0,
        max_series_ids: 0,
        reference_generations: 0,
    }
}

fn connected(max_in_flight_bytes: u64, max_streams: u32) -> (Flight, Arc<AgentMetrics>) {
    let metrics = Arc::new(AgentMetrics::default());
    let mut f = Flight::new(&config(max_in_flight_bytes), metrics.clone(), 1);
    f.handle_connecting();
    f.handle_welcome(
        T0,
        FrameType::Welcome,
        &welcome(max_streams, compression::ZSTD),
    )
    .unwrap();
    (f, metrics)
}

fn batch(seq: u64, bytes: usize) -> StoredBatch {
    StoredBatch {
        seq,
        wire_seq: seq,
        codec: compression::NONE,
        body: vec![7; bytes],
    }
}

fn ack(seq: u64, status: u8, code: u16) -> Vec<u8> {
    codec::to_vec(&Ack {
        seq,
        status,
        code,
        reason: String::new(),
        refused: Vec::new(),
    })
    .unwrap()
}

#[test]
fn the_hello_offers_what_is_configured_and_the_welcome_sets_the_terms() {
    let metrics = Arc::new(AgentMetrics::default());
    let mut f = Flight::new(&config(1000), metrics.clone(), 1);
    assert_eq!(
        f.hello().compression,
        [compression::ZSTD, compression::NONE]
    );
    assert_eq!(f.poll_fetch(T0), None, "not connected: nothing to fetch");
    let w = f
        .handle_welcome(T0, FrameType::Welcome, &welcome(0, compression::NONE))
        .unwrap();
    assert_eq!(w.collector_version, "test");
    assert_eq!(
        f.terms(),
        Some(Terms {
            zstd: false,
            max_streams: 1,
            max_frame: 1 << 20
        }),
        "the collector's choice of codec wins; at least one stream"
    );
    assert_eq!(metrics.connected.get(), 1);
    // The frame decodes as the hello.
    let frame = f.hello_frame().unwrap();
    let hello: Hello = codec::from_bytes("Hello", &frame[HEADER_LEN..]).unwrap();
    assert_eq!(hello, f.hello());
}

#[test]
fn a_refusal_or_a_wrong_frame_ends_the_handshake_with_its_reason() {
    let metrics = Arc::new(AgentMetrics::default());
    let mut f = Flight::new(&config(1000), metrics, 1);
    let refusal = codec::to_vec(&ErrorMsg {
        code: reason::UNSUPPORTED,
        message: "revoked".into(),
    })
    .unwrap();
    assert_eq!(
        f.handle_welcome(T0, FrameType::Error, &refusal),
        Err(ProtocolError::Refused {
            message: "revoked".into(),
            code: reason::UNSUPPORTED
        })
    );
    assert_eq!(
        f.handle_welcome(T0, FrameType::Ack, &[]),
        Err(ProtocolError::Unexpected {
            got: FrameType::Ack,
            expected: "a welcome"
        })
    );
    assert!(matches!(
        f.handle_welcome(T0, FrameType::Welcome, &[0xc1]),
        Err(ProtocolError::Undecodable {
            what: "Welcome",
            ..
        })
    ));
    assert_eq!(f.terms(), None);
}

#[test]
fn the_window_holds_at_most_its_bytes_and_streams_and_hands_the_rest_back() {
    let (mut f, _) = connected(1000, 2);
    let fetch = f.poll_fetch(T0).unwrap();
    assert_eq!(fetch.max_bytes, 1000);
    assert!(!fetch.newest_first);
    let sent = f.handle_fetched(vec![batch(1, 300), batch(2, 300), batch(3, 300)]);
    assert_eq!(sent.iter().map(|b| b.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(matches!(f.poll_control(), Some(Control::Release(s)) if s == [3]));
    assert_eq!(f.in_flight_bytes(), 600);
    assert_eq!(f.poll_fetch(T0), None, "two streams open: full");
    // One answer frees a stream and 300 bytes.
    f.handle_answer(
        T0,
        1,
        FrameType::Ack,
        &ack(1, status::STORED, 0),
        310,
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(f.poll_fetch(T0).map(|f| f.max_bytes), Some(700));
    // Bytes bound the window too.
    let sent = f.handle_fetched(vec![batch(4, 800)]);
    assert_eq!(sent.len(), 1, "a batch is sent if any room is left");
    assert_eq!(f.poll_fetch(T0), None, "over the byte budget");
}

#[test]
fn an_empty_journal_stops_fetching_until_news() {
    let (mut f, _) = connected(1000, 4);
    assert!(f.poll_fetch(T0).is_some());
    assert!(f.handle_fetched(Vec::new()).is_empty());
    assert_eq!(f.poll_fetch(T0), None, "drained");
    f.handle_news();
    assert!(f.poll_fetch(T0).is_some(), "a batch was sealed");
}

#[test]
fn answers_become_acks_drops_or_retries_and_a_retry_pauses_fetching() {
    let (mut f, metrics) = connected(10_000, 8);
    f.handle_fetched((1..=5).map(|s| batch(s, 10)).collect());
    f.handle_answer(
        T0,
        1,
        FrameType::Ack,
        &ack(1, status::STORED, 0),
        1,
        Duration::ZERO,
    )
    .unwrap();
    f.handle_answer(
        T0,
        2,
        FrameType::Ack,
        &ack(2, status::DUPLICATE, 0),
        1,
        Duration::ZERO,
    )
    .unwrap();
    let permanent = ack(3, status::REJECTED, reason::MALFORMED);
    f.handle_answer(T0, 3, FrameType::Ack, &permanent, 1, Duration::ZERO)
        .unwrap();
    assert!(matches!(
        f.poll_control(),
        Some(Control::Acks(a)) if a == [(1, true), (2, true), (3, false)]
    ));
    assert!(f.poll_control().is_none());
    assert_eq!(f.poll_timeout(), None);
    // A transient refusal (as an Error frame) hands the batch back and
    // pauses new fetches, not answers.
    let busy = codec::to_vec(&ErrorMsg {
        code: reason::RATE_LIMITED,
        message: "busy".into(),
    })
    .unwrap();
    f.handle_answer(T0, 4, FrameType::Error, &busy, 1, Duration::ZERO)
        .unwrap();
    assert!(matches!(f.poll_control(), Some(Control::Release(s)) if s == [4]));
    assert_eq!(f.poll_timeout(), Some(T0 + 100 * MS));
    assert_eq!(f.poll_fetch(T0 + 99 * MS), None, "pausing");
    f.handle_answer(
        T0 + 50 * MS,
        5,
        FrameType::Ack,
        &ack(5, status::STORED, 0),
        1,
        Duration::ZERO,
    )
    .unwrap();
    assert!(matches!(f.poll_control(), Some(Control::Acks(a)) if a == [(5, true)]));
    f.handle_timeout(T0 + 100 * MS);
    assert_eq!(f.poll_timeout(), None);
    assert!(f.poll_fetch(T0 + 100 * MS).is_some());
    assert_eq!(
        (
            metrics.batches_stored.get(),
            metrics.batches_duplicate.get(),
            metrics.batches_rejected.get(),
            metrics.batches_retried.get()
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(metrics.wire_bytes.get(), 5);
}

#[test]
fn an_ack_for_another_batch_or_a_wrong_frame_is_a_protocol_error() {
    let (mut f, _) = connected(1000, 4);
    f.handle_fetched(vec![batch(1, 10)]);
    assert_eq!(
        f.handle_answer(
            T0,
            1,
            FrameType::Ack,
            &ack(9, status::STORED, 0),
            1,
            Duration::ZERO
        ),
        Err(ProtocolError::WrongAck {
            got: 9,
            expected: 1
        })
    );
    assert!(matches!(
        f.handle_answer(T0, 1, FrameType::Batch, &[], 1, Duration::ZERO),
        Err(ProtocolError::Unexpected { .. })
    ));
}

#[test]
fn reconnects_back_off_and_a_welcome_resets_the_backoff() {
    let (mut f, metrics) = connected(1000, 4);
    f.handle_fetched(vec![batch(1, 10)]);
    let first = f.handle_disconnect(T0);
    assert_eq!(first, T0 + 100 * MS, "the first delay is the minimum");
    assert_eq!(f.terms(), None);
    assert_eq!(f.in_flight_bytes(), 0, "in flight is handed back");
    assert_eq!(metrics.connected.get(), 0);
    let delays: Vec<i64> = (0..6).map(|_| f.handle_disconnect(T0) - T0).collect();
    assert!(
        delays.iter().all(|d| (100 * MS..=2000 * MS).contains(d)),
        "{delays:?}"
    );
    assert!(delays.iter().any(|d| *d > 100 * MS), "it grows: {delays:?}");
    assert_eq!(metrics.disconnects.get(), 7);
    f.handle_welcome(T0, FrameType::Welcome, &welcome(4, compression::ZSTD))
        .unwrap();
    assert_eq!(
        f.handle_disconnect(T0),
        T0 + 100 * MS,
        "reset by the welcome"
    );
}

#[test]
fn the_hello_names_the_journal_and_promises_nothing() {
    let f = Flight::new(&config(1000), Arc::new(AgentMetrics::default()), 1);
    let hello = f.hello();
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert_eq!((hello.epoch, hello.resolved_below), (EPOCH, 0));
    let frame = f.hello_frame().unwrap();
    let sent: Hello = codec::from_bytes("Hello", &frame[HEADER_LEN..]).unwrap();
    assert_eq!((sent.epoch, sent.resolved_below), (EPOCH, 0));
}

#[test]
fn the_welcome_announces_the_collectors_window_on_the_agents_clock() {
    let mut f = Flight::new(&config(1000), Arc::new(AgentMetrics::default()), 1);
    assert_eq!(f.collector_terms(), None, "no Welcome yet");
    // The collector's clock runs 2 s ahead of the agent's; it accepts
    // readings from an hour back to ten minutes ahead.
    let mut w = welcome_msg(4, compression::ZSTD);
    w.now_ns = T0 + 2 * SEC;
    w.max_past_ns = 3_600 * SEC as u64;
    w.max_future_ns = 600 * SEC as u64;
    w.idle_timeout_ms = 6_000;
    f.handle_welcome(T0, FrameType::Welcome, &codec::to_vec(&w).unwrap())
        .unwrap();
    let terms = f.collector_terms().cloned().unwrap();
    assert_eq!(terms.welcome, w);
    assert_eq!(terms.clock_offset_ns, 2 * SEC);
    // Ten seconds later on the agent's clock the collector's reads
    // T0 + 12 s.
    let collector_now = T0 + 12 * SEC;
    assert_eq!(
        terms.timestamp_window(T0 + 10 * SEC),
        Some((collector_now - 3_600 * SEC, collector_now + 600 * SEC))
    );
    // The latest Welcome's terms outlive the connection.
    f.handle_disconnect(T0 + 20 * SEC);
    assert_eq!(f.collector_terms(), Some(&terms));
    // An older collector announces no window and no clock.
    f.handle_welcome(
        T0 + 30 * SEC,
        FrameType::Welcome,
        &welcome(4, compression::ZSTD),
    )
    .unwrap();
    let old = f.collector_terms().unwrap();
    assert_eq!(old.clock_offset_ns, 0);
    assert_eq!(old.timestamp_window(T0 + 30 * SEC), None);
    // A refused session leaves the last terms as they were.
    let refusal = codec::to_vec(&ErrorMsg {
        code: reason::UNSUPPORTED,
        message: "revoked".into(),
    })
    .unwrap();
    assert!(
        f.handle_welcome(T0 + 40 * SEC, FrameType::Error, &refusal)
            .is_err()
    );
    assert_eq!(f.collector_terms().map(|t| t.clock_offset_ns), Some(0));
}

#[test]
fn readings_refused_in_a_stored_batch_are_counted_by_reason_and_the_batch_is_acked() {
    let (mut f, metrics) = connected(10_000, 8);
    f.handle_fetched(vec![batch(1, 10), batch(2, 10)]);
    let refused = codec::to_vec(&Ack {
        seq: 1,
        status: status::STORED,
        code: 0,
        reason: String::new(),
        refused: vec![
            Refused {
                code: reason::BAD_TIMESTAMP,
                readings: 3,
            },
            Refused {
                code: reason::SERIES_LIMIT,
                readings: 2,
            },
            Refused {
                code: 999,
                readings: 1,
            },
        ],
    })
    .unwrap();
    f.handle_answer(T0, 1, FrameType::Ack, &refused, 1, Duration::ZERO)
        .unwrap();
    f.handle_answer(
        T0,
        2,
        FrameType::Ack,
        &ack(2, status::STORED, 0),
        1,
        Duration::ZERO,
    )
    .unwrap();
    assert!(matches!(
        f.poll_control(),
        Some(Control::Acks(a)) if a == [(1, true), (2, true)]
    ));
    assert_eq!(
        (
            metrics.readings_refused.get(reason::BAD_TIMESTAMP),
            metrics.readings_refused.get(reason::SERIES_LIMIT),
            metrics.readings_refused.get(999),
        ),
        (3, 2, 1)
    );
    assert_eq!(metrics.batches_stored.get(), 2);
    let text = metrics.render();
    for line in [
        "ferry_agent_readings_refused_total{reason=\"bad_timestamp\"} 3\n",
        "ferry_agent_readings_refused_total{reason=\"series_limit\"} 2\n",
        "ferry_agent_readings_refused_total{reason=\"other\"} 1\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn a_full_dedupe_state_turns_a_newest_first_session_oldest_first() {
    let mut c = config(10_000);
    c.newest_first = true;
    let mut f = Flight::new(&c, Arc::new(AgentMetrics::default()), 1);
    f.handle_welcome(T0, FrameType::Welcome, &welcome(8, compression::ZSTD))
        .unwrap();
    assert_eq!(f.poll_fetch(T0).map(|x| x.newest_first), Some(true));
    // Another transient refusal changes nothing.
    f.handle_fetched(vec![batch(9, 10), batch(8, 10)]);
    let busy = ack(9, status::REJECTED, reason::RATE_LIMITED);
    f.handle_answer(T0, 9, FrameType::Ack, &busy, 1, Duration::ZERO)
        .unwrap();
    f.handle_timeout(T0 + 100 * MS);
    assert_eq!(
        f.poll_fetch(T0 + 100 * MS).map(|x| x.newest_first),
        Some(true)
    );
    // DEDUPE_FULL: the batch comes back, and from now on oldest first
    // (the batches below fill the collector's gaps).
    let full = ack(8, status::REJECTED, reason::DEDUPE_FULL);
    f.handle_answer(T0 + 100 * MS, 8, FrameType::Ack, &full, 1, Duration::ZERO)
        .unwrap();
    assert!(matches!(f.poll_control(), Some(Control::Release(s)) if s == [9, 8]));
    f.handle_timeout(T0 + 200 * MS);
    assert_eq!(
        f.poll_fetch(T0 + 200 * MS).map(|x| x.newest_first),
        Some(false)
    );
    // For this session only: the next starts as configured.
    f.handle_disconnect(T0 + 300 * MS);
    f.handle_welcome(
        T0 + 400 * MS,
        FrameType::Welcome,
        &welcome(8, compression::ZSTD),
    )
    .unwrap();
    assert_eq!(
        f.poll_fetch(T0 + 400 * MS).map(|x| x.newest_first),
        Some(true)
    );
    // Oldest first as configured stays oldest first.
    let (mut f, _) = connected(10_000, 8);
    f.handle_fetched(vec![batch(1, 10)]);
    let full = ack(1, status::REJECTED, reason::DEDUPE_FULL);
    f.handle_answer(T0, 1, FrameType::Ack, &full, 1, Duration::ZERO)
        .unwrap();
    f.handle_timeout(T0 + 100 * MS);
    assert_eq!(
        f.poll_fetch(T0 + 100 * MS).map(|x| x.newest_first),
        Some(false)
    );
}

#[test]
fn batches_go_as_stored_or_re_encoded_for_the_session() {
    let body: Vec<u8> = b"temperature,device=a1 value=1 ".repeat(40);
    let zstd = zstd::bulk::compress(&body, 1).unwrap();
    let stored = StoredBatch {
        seq: 1,
        wire_seq: 1,
        codec: compression::ZSTD,
        body: zstd.clone(),
    };
    let frame = batch_frame(stored.clone(), true).unwrap();
    assert_eq!(&frame[HEADER_LEN..], zstd, "as stored");
    let frame = batch_frame(stored, false).unwrap();
    assert_eq!(
        &frame[HEADER_LEN..],
        body,
        "decompressed for a plain session"
    );
    let plain = StoredBatch {
        seq: 2,
        wire_seq: 2,
        codec: compression::NONE,
        body: body.clone(),
    };
    assert_eq!(&batch_frame(plain, true).unwrap()[HEADER_LEN..], zstd);
    let odd = StoredBatch {
        seq: 3,
        wire_seq: 3,
        codec: 9,
        body: Vec::new(),
    };
    assert!(matches!(
        batch_frame(odd, true),
        Err(ProtocolError::Stored { seq: 3, .. })
    ));
}
