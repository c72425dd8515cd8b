//! The protocol test vectors (docs/protocol-vectors.json) against both
//! encoders and both decoders, and against docs/protocol.md.
//!
//! For every vector: `rmp-serde` and `messagepack-serde` each encode the Rust
//! value to exactly the vector's bytes; each decodes the bytes back to the
//! value; and the bytes, read as generic MessagePack, equal the vector's
//! `msgpack` field (the structure a third-party implementer reads). Set
//! `FERRY_WRITE_VECTORS=1` to rewrite the file from the values below after a
//! deliberate protocol change.

use ferry_proto::batch::{
    Batch, DecimalValues, HealthRecord, Reading, ReadingBlock, Values, WindowAggregate,
};
use ferry_proto::codec;
use ferry_proto::compact::{Columns, CompactBatch, Definitions};
use ferry_proto::link::{
    Channel, DeviceHello, DeviceId, Downlink, Heartbeat, LINK_VERSION, LinkAck, LinkConfig, Report,
    ReportTime, TimeSync, Uplink, WindowReport, time_quality,
};
use ferry_proto::series::SeriesKey;
use ferry_proto::session::{
    Ack, AgentStatus, DeviceStatus, ErrorMsg, Hello, PROTOCOL_VERSION, Refused, Welcome,
    compression, reason,
};
use ferry_proto::sketch::DdSketch;
use ferry_proto::stream::{self, FrameType};
use ferry_proto::{health, serial};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};
use std::fmt::Debug;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol-vectors.json");
const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");

fn key(metric: &str, tags: &[(&str, &str)]) -> SeriesKey {
    SeriesKey::new(metric, tags.iter().copied()).unwrap()
}

fn hs<const N: usize>(s: &str) -> heapless::String<N> {
    heapless::String::try_from(s).unwrap()
}

fn sample_aggregate() -> WindowAggregate {
    let mut sketch = DdSketch::new();
    for v in [20.5, 21.0, 21.0, 22.5] {
        sketch.add(v);
    }
    WindowAggregate {
        series: 0,
        start_ns: 1_700_000_000_000_000_000,
        len_ns: 60_000_000_000,
        count: 4,
        sum: 85.0,
        min: 20.5,
        max: 22.5,
        first: 20.5,
        last: 22.5,
        sketch: Some(sketch),
    }
}

fn sample_block() -> ReadingBlock {
    let readings: Vec<Reading> = [21.5, 21.52, 21.52, 21.49]
        .iter()
        .enumerate()
        .map(|(i, &value)| Reading {
            ts_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000_000_000,
            value,
        })
        .collect();
    ReadingBlock::encode(0, &readings)
}

/// The journal epoch of the sample agent.
const EPOCH: u64 = 0x9f3c_51e2_07a4_d6b8;

fn sample_batch() -> Batch {
    Batch {
        seq: 42,
        created_ns: 1_700_000_004_000_000_000,
        series: vec![key("temperature", &[("device", "a1b2"), ("unit", "Cel")])],
        blocks: vec![sample_block()],
        aggregates: vec![],
        health: vec![HealthRecord {
            source: "a1b2".into(),
            kind: health::DROPPED_DEVICE_RING,
            count: 3,
            batch: 0,
        }],
        epoch: EPOCH,
        resolved_below: 0,
    }
}

/// A batch of window aggregates, with a drop count naming batch 40 and the
/// agent's promise about sequences below 41.
fn aggregates_batch() -> Batch {
    Batch {
        seq: 43,
        created_ns: 1_700_000_064_000_000_000,
        series: vec![key("temperature", &[("device", "a1b2"), ("unit", "Cel")])],
        blocks: vec![],
        aggregates: vec![sample_aggregate()],
        health: vec![HealthRecord {
            source: "a1b2".into(),
            kind: health::DROPPED_JOURNAL_FULL,
            count: 120,
            batch: 40,
        }],
        epoch: EPOCH,
        resolved_below: 41,
    }
}

/// Batch 42 as a sender of the first revision wrote it: six fields.
fn batch_first_revision() -> Vec<u8> {
    let b = sample_batch();
    codec::to_vec(&(
        b.seq,
        b.created_ns,
        b.series,
        b.blocks,
        b.aggregates,
        b.health,
    ))
    .unwrap()
}

fn welcome() -> Welcome {
    Welcome {
        protocol: PROTOCOL_VERSION,
        collector_version: "ferry-collector 0.1.0".into(),
        compression: compression::ZSTD,
        max_frame: 4 << 20,
        max_streams: 64,
        max_past_ns: 30 * 86_400 * 1_000_000_000,
        max_future_ns: 600 * 1_000_000_000,
        now_ns: 1_700_000_000_000_000_000,
        max_batch_readings: 1 << 20,
        rate_per_sec: 0,
        rate_burst: 0,
        idle_timeout_ms: 6_000,
        hello_timeout_ms: 10_000,
        status_interval_ms: 10_000,
        max_series_ids: 65_536,
        reference_generations: 2,
    }
}

/// The Welcome as a revision-4 collector writes it: fifteen fields.
fn welcome_fourth_revision() -> Vec<u8> {
    let w = welcome();
    codec::to_vec(&(
        w.protocol,
        w.collector_version,
        w.compression,
        w.max_frame,
        w.max_streams,
        w.max_past_ns,
        w.max_future_ns,
        w.now_ns,
        w.max_batch_readings,
        w.rate_per_sec,
        w.rate_burst,
        w.idle_timeout_ms,
        w.hello_timeout_ms,
        w.status_interval_ms,
        w.max_series_ids,
    ))
    .unwrap()
}

/// The Welcome as a revision-3 collector writes it: fourteen fields.
fn welcome_third_revision() -> Vec<u8> {
    let w = welcome();
    codec::to_vec(&(
        w.protocol,
        w.collector_version,
        w.compression,
        w.max_frame,
        w.max_streams,
        w.max_past_ns,
        w.max_future_ns,
        w.now_ns,
        w.max_batch_readings,
        w.rate_per_sec,
        w.rate_burst,
        w.idle_timeout_ms,
        w.hello_timeout_ms,
        w.status_interval_ms,
    ))
    .unwrap()
}

/// Definitions of series ids 0 and 1 of the sample agent's journal.
fn definitions() -> Definitions {
    Definitions {
        ids: vec![0, 1],
        keys: vec![
            key("temperature", &[("device", "a1b2"), ("unit", "Cel")]),
            key("humidity", &[("device", "a1b2"), ("unit", "%")]),
        ],
    }
}

/// Batch 44 in compact form: series ids 0 (four readings 1 s apart) and 1
/// (two readings 2 s apart, starting with the other's first). Revision 5:
/// coded against no reference, it sets reference generation 1.
fn compact_batch() -> CompactBatch {
    let t = 1_700_000_000_000_000_000;
    let run = |values: &[f64], step: i64| -> Vec<Reading> {
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| Reading {
                ts_ns: t + i as i64 * step,
                value,
            })
            .collect()
    };
    let a = run(&[21.5, 21.52, 21.52, 21.49], 1_000_000_000);
    let b = run(&[40.5, 40.25], 2_000_000_000);
    CompactBatch {
        seq: 44,
        created_ns: 1_700_000_004_000_000_000,
        epoch: EPOCH,
        resolved_below: 0,
        readings: Columns::encode([(0, a.as_slice()), (1, b.as_slice())]),
        aggregates: vec![],
        health: vec![],
        ref_base: 0,
        ref_sets: 1,
    }
}

/// Batch 44 as a revision-4 agent writes it: seven fields.
fn compact_batch_fourth_revision() -> Vec<u8> {
    let c = compact_batch();
    codec::to_vec(&(
        c.seq,
        c.created_ns,
        c.epoch,
        c.resolved_below,
        c.readings,
        c.aggregates,
        c.health,
    ))
    .unwrap()
}

/// Batch 45, coded against reference generation 1 (batch 44's last
/// values: 21.49 for id 0, 40.25 for id 1): id 0 with 21.5, 21.47 at
/// 1 s steps from 4 s after batch 44's first reading, id 1 with 40.0 then.
fn compact_batch_referenced() -> CompactBatch {
    let t = 1_700_000_004_000_000_000;
    let a = [
        Reading {
            ts_ns: t,
            value: 21.5,
        },
        Reading {
            ts_ns: t + 1_000_000_000,
            value: 21.47,
        },
    ];
    let b = [Reading {
        ts_ns: t,
        value: 40.0,
    }];
    let mut refs = ferry_proto::compact::References::default();
    refs.set(0, 1, &[(0, 21.49), (1, 40.25)]).unwrap();
    let readings = Columns::encode_with([(0, &a[..]), (1, &b[..])], |id| refs.reference(id, 1));
    CompactBatch {
        seq: 45,
        created_ns: 1_700_000_006_000_000_000,
        epoch: EPOCH,
        resolved_below: 0,
        readings,
        aggregates: vec![],
        health: vec![],
        ref_base: 1,
        ref_sets: 0,
    }
}

/// A batch stream of revision 4: the Definitions frame, then the
/// CompactBatch frame using them.
fn compact_stream() -> Vec<u8> {
    let mut out = Vec::new();
    stream::write_frame(
        &mut out,
        FrameType::Definitions,
        compression::NONE,
        &codec::to_vec(&definitions()).unwrap(),
    );
    stream::write_frame(
        &mut out,
        FrameType::CompactBatch,
        compression::NONE,
        &codec::to_vec(&compact_batch()).unwrap(),
    );
    out
}

fn agent_status() -> AgentStatus {
    AgentStatus {
        sent_ns: 1_700_000_000_000_000_000,
        backlog_readings: 12_345,
        backlog_batches: 3,
        journal_bytes: 1 << 20,
        journal_budget_bytes: 1 << 30,
        oldest_unacked_ns: 1_699_999_990_000_000_000,
        devices: vec![DeviceStatus {
            device: "00000000000000a1".into(),
            firmware: "ferry-fw 0.1.0".into(),
            link_version: 1,
            connected: true,
            last_seen_ns: 1_699_999_999_000_000_000,
        }],
    }
}

fn agent_status_frame() -> Vec<u8> {
    let body = codec::to_vec(&agent_status()).unwrap();
    let mut frame = Vec::new();
    stream::write_frame(&mut frame, FrameType::Status, compression::NONE, &body);
    frame
}

fn device_hello() -> DeviceHello {
    let mut channels = heapless::Vec::new();
    channels
        .push(Channel {
            id: 0,
            sensor: hs("sht4x"),
            quantity: hs("temperature"),
            unit: hs("Cel"),
        })
        .unwrap();
    DeviceHello {
        link_version: LINK_VERSION,
        device_id: DeviceId::from_bytes(&[0xf0, 0x0d, 0xca, 0xfe]).unwrap(),
        boot: 7,
        firmware: hs("ferry-fw 0.1.0"),
        uptime_ms: 1500,
        channels,
        power_up: 7,
    }
}

fn report() -> Report {
    let mut windows = heapless::Vec::new();
    windows
        .push(WindowReport {
            channel: 0,
            start_ms: 10_000,
            len_ms: 10_000,
            count: 10,
            sum: 215.0,
            min: 21.0,
            max: 22.0,
            first: 21.0,
            last: 22.0,
        })
        .unwrap();
    Report {
        seq: 1,
        windows,
        time: ReportTime {
            power_up: 7,
            wall_at_zero_ms: 1_700_000_000_000,
            quality: time_quality::SYNCED,
        },
    }
}

/// Checks a vector's expected bytes (empty when writing) and returns the encoding.
type Check = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// One checked vector: its name, the message type, and what to do with it.
struct Case {
    name: &'static str,
    message: &'static str,
    about: &'static str,
    /// Encodes with rmp-serde, with messagepack-serde, and checks decoding.
    check: Check,
}

/// A message vector: both encoders must produce `bytes`; both decoders must
/// give back `value`. Returns the rmp-serde encoding.
fn message<T>(name: &'static str, message: &'static str, about: &'static str, value: T) -> Case
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
    // (PartialEq is used where values have no NaN)
{
    Case {
        name,
        message,
        about,
        check: Box::new(move |expected: &[u8]| {
            let rmp = codec::to_vec(&value).unwrap();
            assert_eq!(
                codec::encode_alloc(&value).unwrap(),
                rmp,
                "{name}: encode_alloc"
            );
            let mut buf = vec![0u8; 4096];
            let n = codec::to_slice(&value, &mut buf).unwrap();
            assert_eq!(
                hex::encode(&buf[..n]),
                hex::encode(&rmp),
                "{name}: messagepack-serde and rmp-serde differ"
            );
            if !expected.is_empty() {
                assert_eq!(
                    hex::encode(&rmp),
                    hex::encode(expected),
                    "{name}: encoding differs from the vector"
                );
                // Compared through their encoding: NaN != NaN, but its bits are kept.
                let a: T = codec::from_bytes(message, expected).unwrap();
                assert_eq!(
                    codec::to_vec(&a).unwrap(),
                    expected,
                    "{name}: rmp-serde decode"
                );
                let b: T = codec::from_slice(message, expected).unwrap();
                assert_eq!(
                    codec::to_vec(&b).unwrap(),
                    expected,
                    "{name}: messagepack-serde decode"
                );
                if !format!("{a:?}").contains("NaN") {
                    assert_eq!(a, value, "{name}: decoded value");
                }
            }
            rmp
        }),
    }
}

/// A raw-bytes vector (frames): produced by a function, checked for equality.
fn raw(
    name: &'static str,
    message: &'static str,
    about: &'static str,
    make: fn() -> Vec<u8>,
) -> Case {
    Case {
        name,
        message,
        about,
        check: Box::new(move |expected: &[u8]| {
            let bytes = make();
            if !expected.is_empty() {
                assert_eq!(hex::encode(&bytes), hex::encode(expected), "{name}");
            }
            bytes
        }),
    }
}

fn error_frame() -> Vec<u8> {
    let mut out = Vec::new();
    stream::write_frame(
        &mut out,
        FrameType::Error,
        compression::NONE,
        &codec::to_vec(&ErrorMsg {
            code: reason::TRAILING_BYTES,
            message: "invalid Batch: 1 trailing bytes after the message at offset 103".into(),
        })
        .unwrap(),
    );
    out
}

fn ack_frame() -> Vec<u8> {
    let mut out = Vec::new();
    stream::write_frame(
        &mut out,
        FrameType::Ack,
        compression::NONE,
        &codec::to_vec(&Ack::stored(42)).unwrap(),
    );
    out
}

fn serial_ack() -> Vec<u8> {
    let mut payload = [0u8; 64];
    let n = codec::to_slice(&Downlink::Ack(LinkAck { boot: 7, up_to: 1 }), &mut payload).unwrap();
    let mut out = [0u8; serial::MAX_SERIAL_FRAME];
    let m = serial::encode_frame(&payload[..n], &mut out).unwrap();
    out[..m].to_vec()
}

/// A zstd-compressed Batch frame: compressed afresh only when writing the
/// file (zstd's output is not pinned across versions); checked by reading:
/// the header, and the body decompressing to exactly the `batch` vector.
fn zstd_batch_frame(name: &'static str, about: &'static str) -> Case {
    Case {
        name,
        message: "stream frame",
        about,
        check: Box::new(move |expected: &[u8]| {
            let plain = codec::to_vec(&sample_batch()).unwrap();
            let bytes = if expected.is_empty() {
                let body = zstd::bulk::compress(&plain, 3).unwrap();
                let mut out = Vec::new();
                stream::write_frame(&mut out, FrameType::Batch, compression::ZSTD, &body);
                out
            } else {
                expected.to_vec()
            };
            match stream::parse(&bytes, stream::DEFAULT_MAX_FRAME).unwrap() {
                stream::Parsed::Frame {
                    header,
                    body,
                    consumed,
                } => {
                    assert_eq!(consumed, bytes.len(), "{name}");
                    assert_eq!(header.frame_type, FrameType::Batch, "{name}");
                    assert_eq!(header.compression, compression::ZSTD, "{name}");
                    assert_eq!(bytes[1], 0x01, "{name}: flags");
                    let inflated = zstd::stream::decode_all(body).unwrap();
                    assert_eq!(hex::encode(inflated), hex::encode(&plain), "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
            bytes
        }),
    }
}

/// A message in an older revision's form: both decoders read it, and give
/// back `value` (appended fields at their defaults).
fn older<T>(
    name: &'static str,
    message: &'static str,
    about: &'static str,
    make: fn() -> Vec<u8>,
    value: T,
) -> Case
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    Case {
        name,
        message,
        about,
        check: Box::new(move |expected: &[u8]| {
            let bytes = make();
            if !expected.is_empty() {
                assert_eq!(hex::encode(&bytes), hex::encode(expected), "{name}");
            }
            let a: T = codec::from_bytes(message, &bytes).unwrap();
            let b: T = codec::from_slice(message, &bytes).unwrap();
            assert_eq!(a, value, "{name}: rmp-serde decode");
            assert_eq!(b, value, "{name}: messagepack-serde decode");
            bytes
        }),
    }
}

fn cases() -> Vec<Case> {
    vec![
        message(
            "series_key",
            "SeriesKey",
            "temperature{device=\"a1b2\",unit=\"Cel\"}",
            key("temperature", &[("device", "a1b2"), ("unit", "Cel")]),
        ),
        message(
            "reading_block_decimal",
            "ReadingBlock",
            "4 readings 1 s apart from 2023-11-14T22:13:20Z: 21.5, 21.52, 21.52, 21.49 (decimal, scale 2)",
            sample_block(),
        ),
        message(
            "reading_block_float",
            "ReadingBlock",
            "2 readings 10 ms apart: 0.1+0.2 and NaN, which are not short decimals",
            ReadingBlock::encode(
                1,
                &[
                    Reading {
                        ts_ns: 5_000_000,
                        value: 0.1 + 0.2,
                    },
                    Reading {
                        ts_ns: 15_000_000,
                        value: f64::NAN.copysign(1.0),
                    },
                ],
            )
            .with_float_check(),
        ),
        message(
            "values_decimal",
            "Values",
            "scale 1, values 1.5 and 1.7",
            Values::Decimal(DecimalValues {
                scale: 1,
                deltas: vec![15, 2],
            }),
        ),
        message(
            "window_aggregate",
            "WindowAggregate",
            "one 60 s window of 20.5, 21.0, 21.0, 22.5 with its DDSketch",
            sample_aggregate(),
        ),
        message(
            "batch",
            "Batch",
            "batch 42 of journal epoch 9f3c51e207a4d6b8: one series, one block, one health record",
            sample_batch(),
        ),
        older(
            "batch_first_revision",
            "Batch",
            "batch 42 from a sender of the first revision (six fields): epoch and resolved_below read as 0",
            batch_first_revision,
            Batch {
                epoch: 0,
                ..sample_batch()
            },
        ),
        message(
            "batch_aggregates",
            "Batch",
            "batch 43: one window aggregate with its DDSketch, 120 readings of dropped batch 40, nothing below 41 will come again",
            aggregates_batch(),
        ),
        message(
            "hello",
            "Hello",
            "agent hello offering zstd then none, journal epoch 9f3c51e207a4d6b8, no promise",
            Hello {
                protocol: PROTOCOL_VERSION,
                agent_version: "ferry-agent 0.1.0".into(),
                compression: vec![compression::ZSTD, compression::NONE],
                epoch: EPOCH,
                resolved_below: 0,
            },
        ),
        message(
            "welcome",
            "Welcome",
            "collector accepts zstd, 4 MiB frames, 64 streams; timestamps from 30 days back to 10 min ahead of its clock (2023-11-14T22:13:20Z); 1048576 readings per batch; no rate limit; 6 s idle timeout, 10 s for the hello; a status report every 10 s; compact batches with up to 65536 series ids; value references, 2 generations",
            welcome(),
        ),
        older(
            "welcome_third_revision",
            "Welcome",
            "the same Welcome from a revision-3 collector (fourteen fields): max_series_ids reads as 0, so the agent sends no compact batches",
            welcome_third_revision,
            Welcome {
                max_series_ids: 0,
                reference_generations: 0,
                ..welcome()
            },
        ),
        older(
            "welcome_fourth_revision",
            "Welcome",
            "the same Welcome from a revision-4 collector (fifteen fields): reference_generations reads as 0, so the agent codes no values against references",
            welcome_fourth_revision,
            Welcome {
                reference_generations: 0,
                ..welcome()
            },
        ),
        message(
            "definitions",
            "Definitions",
            "series id 0 is temperature{device=\"a1b2\",unit=\"Cel\"}, id 1 humidity{device=\"a1b2\",unit=\"%\"}",
            definitions(),
        ),
        message(
            "compact_batch",
            "CompactBatch",
            "batch 44 of journal epoch 9f3c51e207a4d6b8: series id 0 with 21.5, 21.52, 21.52, 21.49 at 1 s steps from 2023-11-14T22:13:20Z; series id 1 with 40.5, 40.25 at 2 s steps from the same instant; coded against no reference, it sets reference generation 1 (id 0: 21.49, id 1: 40.25)",
            compact_batch(),
        ),
        older(
            "compact_batch_fourth_revision",
            "CompactBatch",
            "batch 44 as a revision-4 agent writes it (seven fields): ref_base and ref_sets read as 0",
            compact_batch_fourth_revision,
            CompactBatch {
                ref_sets: 0,
                ..compact_batch()
            },
        ),
        message(
            "compact_batch_referenced",
            "CompactBatch",
            "batch 45, coded against reference generation 1: series id 0 with 21.5, 21.47 at 1 s steps from 2023-11-14T22:13:24Z (deltas from its reference 21.49: +1, −3); series id 1 with 40.0 at the same instant (from 40.25: −25)",
            compact_batch_referenced(),
        ),
        raw(
            "stream_compact",
            "stream frame",
            "what an agent writes on a batch stream of revision 4 (here of revision 5: batch 44 sets reference generation 1) when ids 0 and 1 are new to the session: the definitions frame (type 7), then the compact batch frame (type 8)",
            compact_stream,
        ),
        message(
            "agent_status",
            "AgentStatus",
            "12345 readings (3 batches) waiting, the oldest sealed 10 s before the report; 1 MiB of a 1 GiB journal; device 00000000000000a1 (ferry-fw 0.1.0, link 1) connected, heard 1 s before",
            agent_status(),
        ),
        message("ack_stored", "Ack", "batch 42 stored", Ack::stored(42)),
        message(
            "ack_refused",
            "Ack",
            "batch 44 stored except 2 readings outside the accepted time window",
            Ack::stored_refusing(
                44,
                vec![Refused {
                    code: reason::BAD_TIMESTAMP,
                    readings: 2,
                }],
            ),
        ),
        message(
            "ack_duplicate",
            "Ack",
            "batch 42 was stored before",
            Ack::duplicate(42),
        ),
        message(
            "ack_rejected",
            "Ack",
            "batch 43 rejected: invalid series name",
            Ack::rejected(
                43,
                reason::INVALID,
                "series 0: metric name \"9x\": must start with a letter or '_'",
            ),
        ),
        message(
            "error",
            "ErrorMsg",
            "unsupported protocol version",
            ErrorMsg {
                code: reason::UNSUPPORTED,
                message: "protocol version 9 is not supported; this collector speaks 1".into(),
            },
        ),
        raw(
            "frame_ack",
            "stream frame",
            "an Ack frame: type 4, no flags, length 6, the 6-byte body of ack_stored",
            ack_frame,
        ),
        zstd_batch_frame(
            "frame_batch_zstd",
            "a Batch frame with flag 0x01: its 110-byte body is a Zstandard frame holding the 101 bytes of the batch vector (a body this small grows when compressed; agents send it plain, this vector is for decoders)",
        ),
        raw(
            "frame_agent_status",
            "stream frame",
            "an AgentStatus frame: type 6, no flags, the body of the agent_status vector",
            agent_status_frame,
        ),
        raw(
            "frame_error",
            "stream frame",
            "an ErrorMsg frame answering a batch stream whose body had a byte after the batch",
            error_frame,
        ),
        message(
            "uplink_hello",
            "Uplink",
            "device f00dcafe, boot 7 (power-up 7), one SHT4x temperature channel",
            Uplink::Hello(device_hello()),
        ),
        message(
            "uplink_report",
            "Uplink",
            "report 1: one 10 s window of 10 samples, on power-up 7's clock (zero at 1 700 000 000 000 ms, synced)",
            Uplink::Report(report()),
        ),
        message(
            "uplink_heartbeat",
            "Uplink",
            "uptime 60 s of power-up 7, 2 dropped, 1 queued, next seq 5",
            Uplink::Heartbeat(Heartbeat {
                uptime_ms: 60_000,
                dropped: 2,
                queued: 1,
                next_seq: 5,
                power_up: 7,
            }),
        ),
        message(
            "downlink_ack",
            "Downlink",
            "ack boot 7 up to seq 1",
            Downlink::Ack(LinkAck { boot: 7, up_to: 1 }),
        ),
        message(
            "downlink_config",
            "Downlink",
            "sample every 1 s, 10 s windows",
            Downlink::Config(LinkConfig {
                sample_period_ms: 1000,
                window_ms: 10_000,
            }),
        ),
        message(
            "downlink_hello_request",
            "Downlink",
            "ask the device for its hello",
            Downlink::HelloRequest(()),
        ),
        message(
            "downlink_time_sync",
            "Downlink",
            "at uptime 1.5 s of power-up 7 the gateway's clock read 1 700 000 001 500 ms",
            Downlink::TimeSync(TimeSync {
                power_up: 7,
                uptime_ms: 1_500,
                wall_ms: 1_700_000_001_500,
            }),
        ),
        raw(
            "serial_downlink_ack",
            "serial frame",
            "downlink_ack framed: COBS(payload ‖ CRC-32C LE) ‖ 00",
            serial_ack,
        ),
    ]
}

trait FloatCheck {
    fn with_float_check(self) -> Self;
}
impl FloatCheck for ReadingBlock {
    fn with_float_check(self) -> Self {
        assert!(matches!(self.values, Values::Float(_)));
        self
    }
}

fn json_of(bytes: &[u8]) -> Json {
    rmp_serde::from_slice::<Json>(bytes).unwrap_or(Json::Null)
}

#[test]
fn vectors_match_both_encoders_and_the_spec() {
    let write = std::env::var_os("FERRY_WRITE_VECTORS").is_some();
    let file: Json = if write {
        json!({"vectors": []})
    } else {
        serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap()
    };
    let spec = std::fs::read_to_string(SPEC).unwrap();
    let mut out = Vec::new();
    let cases = cases();
    for case in &cases {
        let expected = if write {
            Vec::new()
        } else {
            let v = file["vectors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == case.name)
                .unwrap_or_else(|| panic!("vector {} missing from the file", case.name));
            let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
            if v["message"].as_str().unwrap().ends_with("frame") {
                assert_eq!(v["msgpack"], Json::Null);
            } else if case.name != "reading_block_float" {
                assert_eq!(
                    v["msgpack"],
                    json_of(&bytes),
                    "{}: msgpack structure",
                    case.name
                );
            }
            assert!(
                spec.contains(v["hex"].as_str().unwrap()),
                "docs/protocol.md does not show vector {}",
                case.name
            );
            bytes
        };
        let bytes = (case.check)(&expected);
        let structure = if case.message.ends_with("frame") {
            Json::Null
        } else {
            json_of(&bytes)
        };
        out.push(json!({
            "name": case.name,
            "message": case.message,
            "about": case.about,
            "msgpack": structure,
            "hex": hex::encode(&bytes),
        }));
    }
    if write {
        let text = serde_json::to_string_pretty(&json!({
            "about": "Ferry protocol test vectors; see docs/protocol.md. `msgpack` is the \
                      MessagePack structure as JSON (bin as arrays of bytes, NaN as null).",
            "vectors": out,
        }))
        .unwrap();
        std::fs::write(VECTORS, text + "\n").unwrap();
    } else {
        assert_eq!(
            file["vectors"].as_array().unwrap().len(),
            cases.len(),
            "vectors without a case"
        );
    }
}

#[test]
fn float_block_vector_decodes_bit_exact() {
    let file: Json = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let v = file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "reading_block_float")
        .unwrap();
    let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
    for block in [
        codec::from_bytes::<ReadingBlock>("ReadingBlock", &bytes).unwrap(),
        codec::from_slice::<ReadingBlock>("ReadingBlock", &bytes).unwrap(),
    ] {
        let r = block.readings().unwrap();
        assert_eq!(r[0].value.to_bits(), (0.1f64 + 0.2).to_bits());
        assert!(r[1].value.is_nan());
        assert_eq!(r[1].ts_ns, 15_000_000);
    }
}
