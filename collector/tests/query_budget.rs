//! Query memory is bounded by `[query]`, and a refusal comes before the
//! memory is taken: a one-year `step=1ns` query is answered 400 having
//! allocated almost nothing, while the same range with a workable step is
//! answered from the chunks' summaries without holding the readings (the
//! allocation counter shows it); a query past `max_points` is refused on
//! both APIs; refusals are counted.
//!
//! Memory is measured by this test binary's global allocator: the peak of
//! live heap bytes during a request, over what was live before it (every
//! thread: the collector runs in-process), the heap's share of RSS growth.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use common::{Agent, Fixture, series_batch};
use ferry_collector::RetentionPlan;
use ferry_proto::series::SeriesKey;
use ferry_proto::session::Ack;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The system allocator, keeping the live heap bytes and their peak.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

fn grew(by: i64) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as i64);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as i64 - layout.size() as i64);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `(status, body, peak heap growth meanwhile)` of a GET with the admin
/// credential.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, u64) {
    let auth = common::authorization(addr);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
    // The answer's buffer is allocated before counting starts.
    let mut raw = Vec::with_capacity(64 << 20);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    s.write_all(req.as_bytes()).await.unwrap();
    s.read_to_end(&mut raw).await.unwrap();
    let allocated = (PEAK.load(Ordering::Relaxed) - before).max(0) as u64;
    println!("{path}: peak heap growth {allocated} bytes");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned(), allocated)
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

const READINGS: usize = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_refused_before_they_take_memory() {
    let fx = Fixture::new();
    let bundle = fx.enroll("gw-1");
    let mut config = fx.config();
    config.query.max_points = 150_000;
    let server = common::Running::start(config).await;
    let (agent, _) = Agent::session(server.quic, &bundle).await;
    // Two series of 100,000 readings a second apart, ending a day ago, in
    // 200 batches.
    let now = ferry_collector::now_ns();
    let t0 = now - 86_400_000_000_000 - READINGS as i64 / 2 * 1_000_000_000;
    for b in 0..200u64 {
        let dev = if b < 100 { "a" } else { "b" };
        let key = SeriesKey::new("temperature", [("dev", dev)]).unwrap();
        let values: Vec<f64> = (0..1000).map(|i| 20.0 + (i % 13) as f64 * 0.25).collect();
        let start = t0 + (b % 100) as i64 * 1_000_000_000_000;
        let batch = series_batch(b + 1, key, start, &values);
        assert_eq!(agent.send(&batch).await.unwrap(), Ack::stored(b + 1));
    }
    // Settled hours move into chunks, as a running server's maintenance does.
    let plan = RetentionPlan {
        raw_before: None,
        downsample_len: 300_000_000_000,
        aggregates_before: None,
        max_bytes: None,
        compact_before: now,
    };
    server.handle.maintain(plan).await.unwrap();

    // One year at 1 ns: refused from the query alone.
    let (status, body, allocated) = get(
        server.http,
        "/api/v1/query?match=temperature&from=-365days&step=1ns",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        error_of(&body),
        "a step of 1ns over 365d 1s makes 31536001000000000 windows per series, more than query.max_points = 150000: use a step of at least 3m 31s or a shorter range"
    );
    assert!(
        allocated < 256 << 10,
        "the refused query took {allocated} bytes"
    );

    // The same range with an hourly step is answered, 200,000 readings
    // past a budget of 150,000: every chunk lies in one hour, so its
    // stored summary answers for it and no reading is decoded (holding
    // them would take their 16 bytes each, 3.2 MB).
    let (status, body, allocated) = get(
        server.http,
        "/api/v1/query?match=temperature&from=-365days&step=1h",
    )
    .await;
    assert_eq!(status, 200, "{}", &body[..body.len().min(300)]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let counted: u64 = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["windows"].as_array().unwrap())
        .map(|w| w["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, READINGS as u64);
    assert!(
        allocated < 16 * READINGS as u64 / 8,
        "the answered query took {allocated} bytes"
    );

    // Raw readings past max_points: refused as the chunks are read, having
    // held at most the budget (150,000 readings, 2.4 MB, in a vector that
    // grows by doubling) and one chunk; all of them would take 3.2 MB held
    // and about 8 MB more as JSON.
    let (status, body, allocated) = get(
        server.http,
        "/api/v1/query?match=temperature&from=-365days&kind=raw",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        "the query would hold more than query.max_points = 150000 readings and windows: narrow the selector or the range, or give a larger step"
    );
    assert!(
        allocated < 6 << 20,
        "the refused query took {allocated} bytes"
    );

    // The Prometheus API under the same budget: 422, named.
    let (status, body, _) = get(
        server.http,
        "/prometheus/api/v1/query?query=count_over_time(temperature%5B365d%5D)",
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(error_of(&body).contains("query.max_points"), "{body}");

    let (_, metrics, _) = get(server.http, "/metrics").await;
    for line in [
        "ferry_collector_queries_refused_total{api=\"ferry\",bound=\"step\"} 1\n",
        "ferry_collector_queries_refused_total{api=\"ferry\",bound=\"points\"} 1\n",
        "ferry_collector_queries_refused_total{api=\"prometheus\",bound=\"points\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    agent.conn.close(0u32.into(), b"done");
    server.stop().await;
}
