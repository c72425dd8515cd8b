//! PromQL conformance against the real thing: Debian's `prometheus` (2.42,
//! its remote-write receiver on a free loopback port, data in a temporary
//! directory) and a collector get the same readings; every query of
//! `promql_conformance.txt` runs against both, and the answers must be
//! equal (result type, label sets, timestamps; values within 1e-9
//! relative; for error rows, the HTTP status and error type).
//!
//! The readings reach Prometheus through a small remote_write encoder
//! (protobuf and snappy written here), as the names of
//! docs/prometheus.md give them, and Ferry through its QUIC ingest, as an
//! agent sends them. scripts/test.sh installs `prometheus` when missing.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::{Agent, Fixture, until};
use ferry_collector::prometheus::naming::{self, AggregatePart, DEFAULT_QUANTILES};
use ferry_proto::batch::{Batch, Reading, ReadingBlock, WindowAggregate};
use ferry_proto::series::SeriesKey;
use ferry_proto::session::Ack;
use ferry_proto::sketch::DdSketch;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AGENT: &str = "gw-conf";
const S: i64 = 1000;
const M: i64 = 60 * S;

/// Prometheus series: sorted labels → samples `(ms, value)` in time order.
type PromSeries = BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>>;

/// A reading series as Ferry gets it, and its Prometheus samples.
struct Data {
    /// Batches for Ferry.
    batches: Vec<Batch>,
    /// Prometheus series: labels → samples (ms, value), in time order.
    prometheus: PromSeries,
}

/// A deterministic pseudo-random sequence (an LCG), no dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn labels(key: &SeriesKey, part: Option<AggregatePart>) -> Vec<(String, String)> {
    let stored = naming::with_agent(key, AGENT);
    let mut l = match part {
        None => naming::raw_labels(&stored),
        Some(p) => naming::aggregate_labels(&stored, p),
    };
    l.sort();
    l
}

fn data(t0: i64) -> Data {
    let mut rng = Lcg(7);
    let mut d = Data {
        batches: Vec::new(),
        prometheus: BTreeMap::new(),
    };
    let mut seq = 0;
    let mut raw = |d: &mut Data, key: SeriesKey, samples: Vec<(i64, f64)>| {
        seq += 1;
        d.prometheus.insert(labels(&key, None), samples.clone());
        let readings: Vec<Reading> = samples
            .iter()
            .map(|&(ms, value)| Reading {
                ts_ns: ms * 1_000_000,
                value,
            })
            .collect();
        d.batches.push(Batch {
            seq,
            created_ns: t0 * 1_000_000,
            series: vec![key],
            blocks: vec![ReadingBlock::encode(0, &readings)],
            ..Batch::default()
        });
    };
    // Counters, ~15 s apart with jitter.
    for (job, instance) in [("api", "a"), ("api", "b"), ("db", "c")] {
        let key = SeriesKey::new(
            "conf_requests_total",
            [("job", job), ("instance", instance)],
        )
        .unwrap();
        let (mut t, mut v) = (t0 + rng.next(5_000) as i64, 0.0);
        if instance == "c" {
            t += 25 * M;
        }
        let mut samples = Vec::new();
        while t < t0 + 40 * M {
            v += rng.next(20) as f64;
            if instance == "b" && samples.len() == 80 {
                v = 3.0;
            }
            samples.push((t, v));
            t += 15 * S + rng.next(2_000) as i64 - 1_000;
        }
        raw(&mut d, key, samples);
    }
    // Gauges every 10 s; d3 silent from 10 to 18 minutes.
    for (k, (device, site)) in [("d1", "north"), ("d2", "north"), ("d3", "south")]
        .into_iter()
        .enumerate()
    {
        let key = SeriesKey::new("conf_temperature", [("device", device), ("site", site)]).unwrap();
        let samples: Vec<(i64, f64)> = (0..240)
            .map(|i| (t0 + i * 10 * S + k as i64 * 137, i))
            .filter(|&(t, _)| device != "d3" || !(t0 + 10 * M..t0 + 18 * M).contains(&t))
            .map(|(t, i)| {
                let v = 20.0
                    + (i as f64 / 9.0).sin() * 2.0
                    + k as f64 * 0.37
                    + rng.next(100) as f64 / 1000.0;
                (t, (v * 1000.0).round() / 1000.0)
            })
            .collect();
        raw(&mut d, key, samples);
    }
    raw(
        &mut d,
        SeriesKey::new("conf.dotted-name", [("a.b", "x")]).unwrap(),
        (0..80).map(|i| (t0 + i * 30 * S, i as f64)).collect(),
    );
    raw(
        &mut d,
        SeriesKey::new("conf_tagged", [("agent", "fake")]).unwrap(),
        (0..80).map(|i| (t0 + i * 30 * S, 1.5)).collect(),
    );
    // Windows of 30 s with sketches.
    let key = SeriesKey::new("conf_window", [("device", "w1")]).unwrap();
    let mut windows = Vec::new();
    for w in 0..80i64 {
        let start = t0 + w * 30 * S;
        let values: Vec<f64> = (0..(5 + rng.next(20)))
            .map(|_| 10.0 + rng.next(5_000) as f64 / 100.0)
            .collect();
        let mut sketch = DdSketch::new();
        for v in &values {
            sketch.add(*v);
        }
        windows.push(WindowAggregate {
            series: 0,
            start_ns: start * 1_000_000,
            len_ns: 30_000_000_000,
            count: values.len() as u64,
            sum: values.iter().sum(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            first: values[0],
            last: values[values.len() - 1],
            sketch: Some(sketch),
        });
    }
    let mut parts: Vec<AggregatePart> = AggregatePart::PLAIN.to_vec();
    parts.extend(
        DEFAULT_QUANTILES
            .iter()
            .map(|&q| AggregatePart::Quantile(q)),
    );
    for part in parts {
        let samples = windows
            .iter()
            .map(|w| {
                let end = (w.start_ns + w.len_ns as i64) / 1_000_000;
                let v = match part {
                    AggregatePart::Count => w.count as f64,
                    AggregatePart::Sum => w.sum,
                    AggregatePart::Min => w.min,
                    AggregatePart::Max => w.max,
                    AggregatePart::Quantile(q) => w.sketch.as_ref().unwrap().quantile(q).unwrap(),
                };
                (end, v)
            })
            .collect();
        d.prometheus.insert(labels(&key, Some(part)), samples);
    }
    seq += 1;
    d.batches.push(Batch {
        seq,
        created_ns: t0 * 1_000_000,
        series: vec![key],
        aggregates: windows,
        ..Batch::default()
    });
    d
}

// ---- remote_write: protobuf and snappy, by hand ----

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `prometheus.WriteRequest` with one `TimeSeries` per series.
fn write_request(series: &PromSeries) -> Vec<u8> {
    let mut req = Vec::new();
    for (labels, samples) in series {
        let mut ts = Vec::new();
        for (n, v) in labels {
            let mut label = Vec::new();
            field_bytes(&mut label, 1, n.as_bytes());
            field_bytes(&mut label, 2, v.as_bytes());
            field_bytes(&mut ts, 1, &label);
        }
        for &(t, v) in samples {
            let mut sample = Vec::new();
            sample.push(1 << 3 | 1); // value: double
            sample.extend_from_slice(&v.to_le_bytes());
            sample.push(2 << 3); // timestamp: int64 varint
            varint(&mut sample, t as u64);
            field_bytes(&mut ts, 2, &sample);
        }
        field_bytes(&mut req, 1, &ts);
    }
    req
}

/// Snappy's block format with literals only: valid, uncompressed.
fn snappy_literal(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    varint(&mut out, data.len() as u64);
    for chunk in data.chunks(65_536) {
        let n = chunk.len() - 1;
        if n < 60 {
            out.push((n as u8) << 2);
        } else if n < 256 {
            out.push(60 << 2);
            out.push(n as u8);
        } else {
            out.push(61 << 2);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        out.extend_from_slice(chunk);
    }
    out
}

// ---- HTTP, by hand ----

/// The collector's address and a read token (`token create --role read`).
static READ_TOKEN: std::sync::OnceLock<(SocketAddr, String)> = std::sync::OnceLock::new();

/// One HTTP/1.1 request with `Connection: close`; `(status, body)`.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    // Grafana's way: basic auth with a read token as the password.
    if let Some(t) = READ_TOKEN.get().filter(|(a, _)| *a == addr) {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("grafana:{}", t.1));
        req.push_str(&format!("Authorization: Basic {basic}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Debian's prometheus on a free port, data in a temporary directory;
/// killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_prometheus() -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1h\n").unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--web.enable-remote-write-receiver")
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `prometheus` ({e}): apt-get install prometheus (scripts/test.sh installs it)"));
    let p = Prometheus {
        child,
        addr,
        _dir: dir,
    };
    until("prometheus is ready", || async {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => http(addr, "GET", "/-/ready", &[], b"").await.0 == 200,
            Err(_) => false,
        }
    })
    .await;
    p
}

// ---- comparison ----

#[derive(Debug, PartialEq)]
enum Kind {
    Both,
    Instant,
    Error,
}

fn table() -> Vec<(Kind, String)> {
    let text = include_str!("promql_conformance.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (kind, q) = l.split_once('|').expect("`kind | query`");
            let kind = match kind.trim() {
                "both" => Kind::Both,
                "instant" => Kind::Instant,
                "error" => Kind::Error,
                other => panic!("unknown kind {other:?}"),
            };
            (kind, q.trim().to_owned())
        })
        .collect()
}

fn close(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-3),
        _ => false,
    }
}

/// `metric → [(ts, value)]`, sorted, from a vector or matrix result.
fn points(result: &Value) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    for r in result.as_array().unwrap() {
        let metric = r["metric"].to_string();
        let pts: Vec<(String, String)> = match (r.get("value"), r.get("values")) {
            (Some(v), _) => vec![(v[0].to_string(), v[1].as_str().unwrap().to_owned())],
            (_, Some(vs)) => vs
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v[0].to_string(), v[1].as_str().unwrap().to_owned()))
                .collect(),
            _ => panic!("no value in {r}"),
        };
        assert!(
            out.insert(metric, pts).is_none(),
            "a label set twice in {result}"
        );
    }
    out
}

/// Why two answers differ, or None.
fn differ(ours: &(u16, String), theirs: &(u16, String), error_row: bool) -> Option<String> {
    let a: Value = serde_json::from_str(&ours.1)
        .map_err(|e| format!("ferry: {e}: {}", ours.1))
        .ok()?;
    let b: Value = serde_json::from_str(&theirs.1).unwrap();
    if ours.0 != theirs.0 {
        return Some(format!("status {} vs {}", ours.0, theirs.0));
    }
    if error_row {
        return (a["errorType"] != b["errorType"] || a["status"] != "error")
            .then(|| format!("errorType {} vs {}", a["errorType"], b["errorType"]));
    }
    if a["status"] != "success" {
        return Some(format!("ferry failed: {}", ours.1));
    }
    let (a, b) = (&a["data"], &b["data"]);
    if a["resultType"] != b["resultType"] {
        return Some(format!(
            "resultType {} vs {}",
            a["resultType"], b["resultType"]
        ));
    }
    match a["resultType"].as_str().unwrap() {
        "scalar" | "string" => {
            let (x, y) = (&a["result"], &b["result"]);
            (x[0] != y[0] || !close(x[1].as_str().unwrap(), y[1].as_str().unwrap()))
                .then(|| format!("{x} vs {y}"))
        }
        _ => {
            let (x, y) = (points(&a["result"]), points(&b["result"]));
            if x.keys().ne(y.keys()) {
                return Some(format!(
                    "series differ:\n  ferry:      {:?}\n  prometheus: {:?}",
                    x.keys().collect::<Vec<_>>(),
                    y.keys().collect::<Vec<_>>()
                ));
            }
            for (k, xs) in &x {
                let ys = &y[k];
                if xs.len() != ys.len()
                    || xs
                        .iter()
                        .zip(ys)
                        .any(|(p, q)| p.0 != q.0 || !close(&p.1, &q.1))
                {
                    return Some(format!("{k}:\n  ferry:      {xs:?}\n  prometheus: {ys:?}"));
                }
            }
            None
        }
    }
}

fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_answers_match_prometheus() {
    let prometheus = start_prometheus().await;
    let fx = Fixture::new();
    let bundle = fx.enroll(AGENT);
    let server = fx.start().await;
    let reader = server
        .admin()
        .create_token("grafana", ferry_collector::auth::Role::Read)
        .await
        .unwrap();
    READ_TOKEN.set((server.http, reader.token)).unwrap();

    let now_ms = ferry_collector::now_ns() / 1_000_000;
    let end = now_ms - now_ms % M - M;
    let t0 = end - 40 * M;
    let d = data(t0);

    let (agent, _) = Agent::session(server.quic, &bundle).await;
    for b in &d.batches {
        assert_eq!(agent.send(b).await.unwrap(), Ack::stored(b.seq));
    }
    let body = snappy_literal(&write_request(&d.prometheus));
    let (status, text) = http(
        prometheus.addr,
        "POST",
        "/api/v1/write",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 204, "remote write refused: {text}");

    let rows = table();
    assert!(rows.len() >= 30, "{} queries", rows.len());
    let times = [end, t0 + 14 * M, end + 4 * M, end + 6 * M];
    let mut failures = Vec::new();
    let mut compared = 0;
    // Answers with at least one series (or a scalar): an empty answer
    // proves little.
    let mut non_empty = 0;
    for (i, (kind, q)) in rows.iter().enumerate() {
        let mut requests: Vec<(&str, Vec<(&str, String)>)> = Vec::new();
        for t in times {
            requests.push(("query", vec![("query", q.clone()), ("time", seconds(t))]));
            if *kind == Kind::Error {
                break;
            }
        }
        if *kind == Kind::Both {
            requests.push((
                "query_range",
                vec![
                    ("query", q.clone()),
                    ("start", seconds(t0 + 7 * S)),
                    ("end", seconds(end + 2 * M)),
                    ("step", "45s".into()),
                ],
            ));
        }
        for (endpoint, params) in requests {
            let form = serde_urlencoded::to_string(&params).unwrap();
            let theirs = http(
                prometheus.addr,
                "GET",
                &format!("/api/v1/{endpoint}?{form}"),
                &[],
                b"",
            )
            .await;
            // Ferry gets every other query as a POSTed form.
            let ours = if i % 2 == 0 {
                http(
                    server.http,
                    "GET",
                    &format!("/prometheus/api/v1/{endpoint}?{form}"),
                    &[],
                    b"",
                )
                .await
            } else {
                http(
                    server.http,
                    "POST",
                    &format!("/prometheus/api/v1/{endpoint}"),
                    &[("Content-Type", "application/x-www-form-urlencoded")],
                    form.as_bytes(),
                )
                .await
            };
            compared += 1;
            let v: Value = serde_json::from_str(&theirs.1).unwrap();
            let result = &v["data"]["result"];
            if result.as_array().is_some_and(|r| !r.is_empty())
                || result.is_array() && result[0].is_number()
            {
                non_empty += 1;
            }
            if let Some(why) = differ(&ours, &theirs, *kind == Kind::Error) {
                failures.push(format!("{endpoint} {q}  ({params:?}): {why}"));
            }
        }
    }
    // The metadata endpoints list what both hold.
    for path in ["labels", "label/__name__/values", "label/device/values"] {
        let theirs = http(prometheus.addr, "GET", &format!("/api/v1/{path}"), &[], b"").await;
        let ours = http(
            server.http,
            "GET",
            &format!("/prometheus/api/v1/{path}"),
            &[],
            b"",
        )
        .await;
        compared += 1;
        if ours != theirs {
            failures.push(format!("{path}: ferry {ours:?}\n  prometheus {theirs:?}"));
        }
    }
    let form = serde_urlencoded::to_string([
        ("match[]", "conf_temperature"),
        ("match[]", "conf_window_count"),
    ])
    .unwrap();
    let theirs = http(
        prometheus.addr,
        "GET",
        &format!("/api/v1/series?{form}"),
        &[],
        b"",
    )
    .await;
    let ours = http(
        server.http,
        "GET",
        &format!("/prometheus/api/v1/series?{form}"),
        &[],
        b"",
    )
    .await;
    let sorted = |s: &str| {
        let v: Value = serde_json::from_str(s).unwrap();
        let mut items: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect();
        items.sort();
        items
    };
    compared += 1;
    if sorted(&ours.1) != sorted(&theirs.1) {
        failures.push(format!(
            "series: ferry {}\n  prometheus {}",
            ours.1, theirs.1
        ));
    }
    println!(
        "{compared} answers compared over {} queries ({non_empty} not empty), {} differ",
        rows.len(),
        failures.len()
    );
    assert!(non_empty >= 250, "only {non_empty} answers had data");
    assert!(
        failures.is_empty(),
        "{} of {compared} answers differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(agent);
    server.stop().await;
}
