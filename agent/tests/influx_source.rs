//! The Influx sources over real sockets on 127.0.0.1, feeding a fake journal
//! writer: the test holds the writer's end of the intake channel and answers
//! each submission itself. Synchronisation is through that channel and
//! [`SourceStats::subscribe`]; no sleeps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_agent::intake::{Intake, Refused, Submission, SubmitError};
use ferry_agent::journal::{CommitReport, Work};
use ferry_agent::limits::{Charge, MemoryBudget};
use ferry_agent::sources::influx::{InfluxConfig, SourceStats, run_tcp, run_udp};
use ferry_agent::sources::line::Precision;
use ferry_proto::health;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Fails a hung test instead of blocking the suite; not a timing assertion.
const FAILSAFE: Duration = Duration::from_secs(60);

fn config() -> InfluxConfig {
    InfluxConfig {
        name: "lp".into(),
        // Connection closes are journaled when the source stops only.
        closes_period: Duration::from_secs(3600),
        ..InfluxConfig::default()
    }
}

/// `(series, origin, [(ts, value)])`.
type Group = (String, String, Vec<(i64, f64)>);

/// Every group of `work`.
fn readings(work: &Work) -> Vec<Group> {
    work.readings
        .iter()
        .map(|g| {
            let r = g.readings.iter().map(|r| (r.ts_ns, r.value)).collect();
            (g.series.to_string(), g.origin.clone(), r)
        })
        .collect()
}

/// Flattened `(series, ts, value)` of several submissions.
fn flat(works: &[Work]) -> Vec<(String, i64, f64)> {
    works
        .iter()
        .flat_map(|w| &w.readings)
        .flat_map(|g| {
            g.readings
                .iter()
                .map(|r| (g.series.to_string(), r.ts_ns, r.value))
        })
        .collect()
}

fn health_sum(works: &[Work], origin: &str, kind: u16) -> u64 {
    works
        .iter()
        .flat_map(|w| &w.health)
        .filter(|(o, k, _)| o == origin && *k == kind)
        .map(|(_, _, n)| n)
        .sum()
}

async fn next(rx: &mut mpsc::Receiver<Submission>) -> Submission {
    rx.recv().await.expect("the source is running")
}

/// Accepts submissions until `done` holds for what was accepted.
async fn accept_until(
    rx: &mut mpsc::Receiver<Submission>,
    done: impl Fn(&[Work]) -> bool,
) -> Vec<Work> {
    let mut works = Vec::new();
    while !done(&works) {
        let s = next(rx).await;
        works.push(s.work);
        let _ = s.done.send(Ok(CommitReport::default()));
    }
    works
}

/// Waits, without polling, until `cond` holds for `stats`.
async fn wait_for(stats: &SourceStats, cond: impl Fn(&SourceStats) -> bool) {
    let mut changed = stats.subscribe();
    while !cond(stats) {
        changed.changed().await.expect("stats alive");
    }
}

/// Answers as the writer does when the journal is full: the work goes back.
fn refuse_full(s: Submission) {
    let _ = s.done.send(Err(Refused::full(100, 100, s.work)));
}

struct Source {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    stats: Arc<SourceStats>,
}

impl Source {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("the source task does not panic");
    }

    /// Stops the source, committing (answering) what it submits as it
    /// stops; returns that work.
    async fn stop_answering(self, rx: &mut mpsc::Receiver<Submission>) -> Vec<Work> {
        let _ = self.stop.send(());
        let mut task = self.task;
        let mut works = Vec::new();
        loop {
            tokio::select! {
                done = &mut task => {
                    done.expect("the source task does not panic");
                    return works;
                }
                Some(s) = rx.recv() => {
                    works.push(s.work);
                    let _ = s.done.send(Ok(CommitReport::default()));
                }
            }
        }
    }
}

fn shutdown_signal() -> (oneshot::Sender<()>, impl Future<Output = ()>) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

async fn tcp_source(
    cfg: InfluxConfig,
    bound: usize,
) -> (Source, mpsc::Receiver<Submission>, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (intake, rx) = Intake::channel(bound);
    let stats = Arc::new(SourceStats::default());
    let (stop, signal) = shutdown_signal();
    let task = tokio::spawn(run_tcp(listener, cfg, intake, stats.clone(), signal));
    (Source { stop, task, stats }, rx, addr)
}

async fn udp_source(
    cfg: InfluxConfig,
    bound: usize,
) -> (Source, mpsc::Receiver<Submission>, UdpSocket) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(socket.local_addr().unwrap()).await.unwrap();
    let (intake, rx) = Intake::channel(bound);
    let stats = Arc::new(SourceStats::default());
    let (stop, signal) = shutdown_signal();
    let task = tokio::spawn(run_udp(socket, cfg, intake, stats.clone(), signal));
    (Source { stop, task, stats }, rx, client)
}

async fn within<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(FAILSAFE, test)
        .await
        .expect("test hung")
}

#[tokio::test]
async fn tcp_lines_arrive_as_exact_readings() {
    within(async {
        let cfg = InfluxConfig {
            precision: Precision::Milliseconds,
            ..config()
        };
        let (source, mut rx, addr) = tcp_source(cfg, 4).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let input = "cpu,device=d1,core=0 usage=1.5,n=3i,ok=T 1000\n\
                     # a comment\n\
                     cpu,core=1 usage=-2e3,big=18446744073709551615u 2000\n\
                     cpu,core=0,device=d1 usage=0.25 3000";
        client.write_all(input.as_bytes()).await.unwrap();
        client.shutdown().await.unwrap();
        let works = accept_until(&mut rx, |w| flat(w).len() == 6).await;
        let mut got: Vec<_> = works.iter().flat_map(readings).collect();
        // Chunking depends on how reads fall; merge groups of one series.
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<Group> = Vec::new();
        for (s, o, r) in got {
            match merged.last_mut() {
                Some(last) if last.0 == s => last.2.extend(r),
                _ => merged.push((s, o, r)),
            }
        }
        let g = |s: &str, o: &str, r: &[(i64, f64)]| (s.to_owned(), o.to_owned(), r.to_vec());
        assert_eq!(
            merged,
            [
                g(
                    r#"cpu_big{core="1"}"#,
                    "lp",
                    &[(2_000_000_000, 18_446_744_073_709_551_615_u64 as f64)]
                ),
                g(
                    r#"cpu_n{core="0",device="d1"}"#,
                    "d1",
                    &[(1_000_000_000, 3.0)]
                ),
                g(
                    r#"cpu_ok{core="0",device="d1"}"#,
                    "d1",
                    &[(1_000_000_000, 1.0)]
                ),
                g(
                    r#"cpu_usage{core="0",device="d1"}"#,
                    "d1",
                    &[(1_000_000_000, 1.5), (3_000_000_000, 0.25)]
                ),
                g(r#"cpu_usage{core="1"}"#, "lp", &[(2_000_000_000, -2000.0)]),
            ]
        );
        let stats = source.stats.clone();
        wait_for(&stats, |s| s.lines_accepted() == 3).await;
        assert_eq!(stats.readings_accepted(), 6);
        assert_eq!(stats.lines_rejected(), 0);
        assert_eq!(stats.bytes(), input.len() as u64);
        wait_for(&stats, |s| s.connections_open() == 0).await;
        assert_eq!(stats.connections(), 1);
        source.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tcp_malformed_lines_are_counted_and_the_rest_carries_on() {
    within(async {
        let cfg = InfluxConfig {
            chunk_lines: 2,
            max_line_bytes: 40,
            ..config()
        };
        let (source, mut rx, addr) = tcp_source(cfg, 4).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let long = format!("m f={} 9\n", "1".repeat(60));
        let input = format!(
            "m f=1 1\nnot a line\nm s=\"text,\nwith a newline\" 2\nm,device=d f=2 3\n{long}m f=zz 4\nm f=4 5\n"
        );
        client.write_all(input.as_bytes()).await.unwrap();
        client.shutdown().await.unwrap();
        // The string-only line is accepted with its string field skipped
        // (counted), not rejected.
        let works = accept_until(&mut rx, |w| {
            flat(w).len() == 3
                && health_sum(w, "lp", health::REJECTED_INPUT) == 3
                && health_sum(w, "lp", health::SKIPPED_STRING_FIELDS) == 1
        })
        .await;
        assert_eq!(
            flat(&works),
            [
                ("m_f".to_owned(), 1, 1.0),
                (r#"m_f{device="d"}"#.to_owned(), 3, 2.0),
                ("m_f".to_owned(), 5, 4.0),
            ]
        );
        let stats = source.stats.clone();
        wait_for(&stats, |s| s.lines_accepted() == 4).await;
        assert_eq!(stats.lines_rejected(), 3);
        assert_eq!(stats.readings_accepted(), 3);
        assert_eq!(stats.string_fields_skipped(), 1);
        source.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tcp_overlong_line_arriving_in_pieces_is_skipped() {
    within(async {
        let cfg = InfluxConfig {
            max_line_bytes: 16,
            ..config()
        };
        let (source, mut rx, addr) = tcp_source(cfg, 4).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(format!("m f=1 1\nm f={}", "2".repeat(40)).as_bytes())
            .await
            .unwrap();
        // The source rejects the line before its end has arrived...
        let mut works = accept_until(&mut rx, |w| {
            health_sum(w, "lp", health::REJECTED_INPUT) == 1
        })
        .await;
        // ...and skips the rest of it when it comes.
        client.write_all(b"222 2\nm f=3 3\n").await.unwrap();
        client.shutdown().await.unwrap();
        works.extend(accept_until(&mut rx, |w| flat(w).len() == 1).await);
        assert_eq!(
            flat(&works),
            [("m_f".to_owned(), 1, 1.0), ("m_f".to_owned(), 3, 3.0)]
        );
        assert_eq!(health_sum(&works, "lp", health::REJECTED_INPUT), 1);
        source.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tcp_journal_full_stops_reading_until_the_writer_accepts() {
    within(async {
        let (source, mut rx, addr) = tcp_source(config(), 1).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let first = b"m f=1 1\n";
        client.write_all(first).await.unwrap();
        let s = next(&mut rx).await;
        let refused = s.work.clone();
        assert_eq!(
            flat(std::slice::from_ref(&refused)),
            [("m_f".to_owned(), 1, 1.0)]
        );
        // The journal is full; meanwhile the sender has more to say.
        client.write_all(b"m f=2 2\n").await.unwrap();
        refuse_full(s);
        for _ in 0..3 {
            let s = next(&mut rx).await;
            assert_eq!(s.work, refused, "the same chunk again, nothing new read");
            assert_eq!(
                source.stats.bytes(),
                first.len() as u64,
                "the connection was not read"
            );
            refuse_full(s);
        }
        let s = next(&mut rx).await;
        assert_eq!(s.work, refused);
        let _ = s.done.send(Ok(CommitReport::default()));
        // Accepted: only now is the rest read.
        let s = next(&mut rx).await;
        assert_eq!(flat(&[s.work]), [("m_f".to_owned(), 2, 2.0)]);
        let _ = s.done.send(Ok(CommitReport::default()));
        wait_for(&source.stats, |s| s.lines_accepted() == 2).await;
        assert_eq!(source.stats.dropped_readings(), 0);
        client.shutdown().await.unwrap();
        source.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tcp_chunk_lost_in_a_failed_commit_is_counted_and_the_connection_closed() {
    within(async {
        let (source, mut rx, addr) = tcp_source(config(), 1).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"m f=1,g=2 1\nm f=3 2\n").await.unwrap();
        let s = next(&mut rx).await;
        assert_eq!(flat(std::slice::from_ref(&s.work)).len(), 3);
        // The commit failed in storage: the writer has no work to hand back.
        let _ = s
            .done
            .send(Err(SubmitError::Storage("disk I/O error".into()).into()));
        let mut rest = Vec::new();
        let n = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut rest)
            .await
            .unwrap();
        assert_eq!(n, 0, "the agent closed the connection");
        wait_for(&source.stats, |s| s.connections_open() == 0).await;
        assert_eq!(source.stats.dropped_readings(), 3);
        assert_eq!(source.stats.lines_accepted(), 0);
        source.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_connection_beyond_the_limit_closes_the_idlest_and_is_served() {
    within(async {
        let cfg = InfluxConfig {
            max_connections: 2,
            ..config()
        };
        let (source, mut rx, addr) = tcp_source(cfg, 4).await;
        let ok = || Ok(CommitReport::default());
        // `idle` never sends; `a` sends a line: `idle` is the idlest.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut a = TcpStream::connect(addr).await.unwrap();
        a.write_all(b"a f=1 1\n").await.unwrap();
        let s = next(&mut rx).await;
        assert_eq!(flat(&[s.work]), [("a_f".to_owned(), 1, 1.0)]);
        let _ = s.done.send(ok());
        // `b` comes at the limit: it is accepted, and `idle` is closed.
        let mut b = TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut rest)
            .await
            .unwrap();
        assert_eq!(n, 0, "the idlest connection was closed");
        b.write_all(b"b f=1 1\n").await.unwrap();
        b.shutdown().await.unwrap();
        let s = next(&mut rx).await;
        assert_eq!(flat(&[s.work]), [("b_f".to_owned(), 1, 1.0)]);
        let _ = s.done.send(ok());
        // `a` is still served.
        a.write_all(b"a f=2 2\n").await.unwrap();
        let s = next(&mut rx).await;
        assert_eq!(flat(&[s.work]), [("a_f".to_owned(), 2, 2.0)]);
        let _ = s.done.send(ok());
        a.shutdown().await.unwrap();
        wait_for(&source.stats, |s| {
            s.connections() == 3 && s.connections_open() == 0
        })
        .await;
        assert_eq!(source.stats.connections_evicted(), 1);
        assert_eq!(source.stats.idle_timeouts(), 0);
        // The close is journaled for the collector (kind 13).
        let works = source.stop_answering(&mut rx).await;
        assert_eq!(health_sum(&works, "lp", health::CONNECTIONS_EVICTED), 1);
        assert_eq!(health_sum(&works, "lp", health::CONNECTIONS_TIMED_OUT), 0);
    })
    .await;
}

/// The timeouts run on the real clock here (their logic is tested with a
/// fake clock in `sources::conn`): the test waits for the close, it does
/// not time it.
#[tokio::test]
async fn a_stalled_line_and_an_idle_connection_are_closed_and_counted() {
    within(async {
        let cfg = InfluxConfig {
            line_timeout: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(50),
            ..config()
        };
        let (source, mut rx, addr) = tcp_source(cfg, 4).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"a f=1 1\na f=").await.unwrap();
        let s = next(&mut rx).await;
        assert_eq!(flat(&[s.work]), [("a_f".to_owned(), 1, 1.0)]);
        let _ = s.done.send(Ok(CommitReport::default()));
        let mut rest = Vec::new();
        let n = tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut rest)
            .await
            .unwrap();
        assert_eq!(n, 0, "closed with its line unfinished");
        wait_for(&source.stats, |s| s.line_timeouts() == 1).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let n = tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut rest)
            .await
            .unwrap();
        assert_eq!(n, 0, "closed without a byte");
        wait_for(&source.stats, |s| {
            s.idle_timeouts() == 1 && s.connections_open() == 0
        })
        .await;
        assert_eq!(source.stats.line_timeouts(), 1);
        assert_eq!(source.stats.lines_accepted(), 1);
        // Both closes are journaled for the collector (kind 14).
        let works = source.stop_answering(&mut rx).await;
        assert_eq!(health_sum(&works, "lp", health::CONNECTIONS_TIMED_OUT), 2);
    })
    .await;
}

/// With a memory budget on the intake, a line whose new series does not
/// fit is parsed without caching it: its readings are in the chunk's work
/// all the same (nothing is refused); cached series go on.
#[tokio::test]
async fn a_new_series_beyond_the_memory_budget_is_kept_uncached() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let budget = MemoryBudget::new(1 << 20);
        let (intake, mut rx) = Intake::channel(4);
        let intake = intake.with_budget(budget.clone());
        let stats = Arc::new(SourceStats::default());
        let (stop, signal) = shutdown_signal();
        let task = tokio::spawn(run_tcp(listener, config(), intake, stats.clone(), signal));
        let source = Source { stop, task, stats };
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"m,device=d1 f=1 1\n").await.unwrap();
        let s = next(&mut rx).await;
        assert_eq!(
            flat(std::slice::from_ref(&s.work)),
            [("m_f{device=\"d1\"}".to_owned(), 1, 1.0)]
        );
        // Now something else holds the whole budget: d1 is cached, d2 is
        // new and does not fit.
        let mut hog = Charge::new(budget.clone());
        hog.set(budget.limit());
        let _ = s.done.send(Ok(CommitReport::default()));
        client
            .write_all(b"m,device=d2 f=2,g=3 2\nm,device=d1 f=4 3\n")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        let works = accept_until(&mut rx, |w| flat(w).len() >= 3).await;
        let mut got = flat(&works);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("m_f{device=\"d1\"}".to_owned(), 3, 4.0),
                ("m_f{device=\"d2\"}".to_owned(), 2, 2.0),
                ("m_g{device=\"d2\"}".to_owned(), 2, 3.0),
            ]
        );
        assert_eq!(health_sum(&works, "d2", health::DROPPED_MEMORY_BUDGET), 0);
        wait_for(&source.stats, |s| s.connections_open() == 0).await;
        assert_eq!(source.stats.lines_uncached(), 1);
        assert_eq!(budget.uncached_lines(), 1);
        assert_eq!(budget.refused_readings(), 0);
        drop(hog);
        assert_eq!(
            budget.used(),
            0,
            "a closed connection hands everything back"
        );
        source.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tcp_shutdown_while_refused_counts_the_chunk_as_dropped() {
    within(async {
        let (source, mut rx, addr) = tcp_source(config(), 1).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"m f=1,g=2 1\n").await.unwrap();
        let s = next(&mut rx).await;
        refuse_full(s);
        // The writer goes away too: a resubmission, if one raced the stop,
        // is answered `Shutdown`.
        drop(rx);
        let stats = source.stats.clone();
        source.stop().await;
        assert_eq!(stats.dropped_readings(), 2);
        assert_eq!(stats.lines_accepted(), 0);
        assert_eq!(stats.connections_open(), 0);
    })
    .await;
}

#[tokio::test]
async fn udp_datagrams_are_parsed() {
    within(async {
        let (source, mut rx, client) = udp_source(config(), 4).await;
        client
            .send(b"env,device=d1 t=21.5,h=40i 1\nenv t=3 2\nbad\n")
            .await
            .unwrap();
        let s = next(&mut rx).await;
        assert_eq!(
            readings(&s.work),
            [
                (
                    r#"env_t{device="d1"}"#.to_owned(),
                    "d1".to_owned(),
                    vec![(1, 21.5)]
                ),
                (
                    r#"env_h{device="d1"}"#.to_owned(),
                    "d1".to_owned(),
                    vec![(1, 40.0)]
                ),
                ("env_t".to_owned(), "lp".to_owned(), vec![(2, 3.0)]),
            ]
        );
        assert_eq!(
            s.work.health,
            [("lp".to_owned(), health::REJECTED_INPUT, 1)]
        );
        let _ = s.done.send(Ok(CommitReport::default()));
        wait_for(&source.stats, |s| s.readings_accepted() == 3).await;
        assert_eq!(source.stats.lines_accepted(), 2);
        assert_eq!(source.stats.lines_rejected(), 1);
        source.stop().await;
    })
    .await;
}

/// A UDP socket's receive buffer is charged to the memory budget for the
/// socket's life, and a datagram's parsed readings until the journal
/// answers; everything is handed back when the source stops.
#[tokio::test]
async fn udp_buffers_are_charged_to_the_memory_budget() {
    within(async {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(socket.local_addr().unwrap()).await.unwrap();
        let budget = MemoryBudget::new(1 << 20);
        let (intake, mut rx) = Intake::channel(4);
        let intake = intake.with_budget(budget.clone());
        let stats = Arc::new(SourceStats::default());
        let (stop, signal) = shutdown_signal();
        let task = tokio::spawn(run_udp(socket, config(), intake, stats.clone(), signal));
        let source = Source { stop, task, stats };
        client.send(b"env,device=d1 t=21.5 1\n").await.unwrap();
        let s = next(&mut rx).await;
        // Waiting for its commit: the buffer, the series cached and the
        // datagram's readings.
        let waiting = budget.used();
        assert!(waiting > 64 * 1024, "{waiting}");
        let _ = s.done.send(Ok(CommitReport::default()));
        wait_for(&source.stats, |s| s.readings_accepted() == 1).await;
        // Answered: the readings are handed back, the buffer is not.
        let idle = budget.used();
        assert!(idle >= 64 * 1024 && idle < waiting, "{idle} {waiting}");
        source.stop().await;
        assert_eq!(budget.used(), 0, "a stopped source hands everything back");
    })
    .await;
}

#[tokio::test]
async fn udp_drops_when_the_queue_is_full_and_reports_the_loss_later() {
    within(async {
        let (source, mut rx, client) = udp_source(config(), 1).await;
        let stats = source.stats.clone();
        let d1 = b"m f=1 1";
        client.send(d1).await.unwrap();
        let s1 = next(&mut rx).await; // held: the queue is empty again
        let d2 = b"m f=2 2";
        client.send(d2).await.unwrap();
        wait_for(&stats, |s| s.bytes() == (d1.len() + d2.len()) as u64).await;
        // d2 fills the queue: d3 is dropped.
        client
            .send(b"m,device=dev3 f=3 3\nm,device=dev3 g=3 3\nm f=3 3\nbad")
            .await
            .unwrap();
        wait_for(&stats, |s| s.dropped_readings() == 3).await;
        let s2 = next(&mut rx).await;
        let _ = s1.done.send(Ok(CommitReport::default()));
        let _ = s2.done.send(Ok(CommitReport::default()));
        client.send(b"m f=4 4").await.unwrap();
        let mut works = vec![s1.work, s2.work];
        works.extend(
            accept_until(&mut rx, |w| {
                flat(w).len() == 1
                    && health_sum(w, "dev3", health::DROPPED_QUEUE_FULL) == 2
                    && health_sum(w, "lp", health::DROPPED_QUEUE_FULL) == 1
                    && health_sum(w, "lp", health::REJECTED_INPUT) == 1
            })
            .await,
        );
        assert_eq!(
            flat(&works),
            [
                ("m_f".to_owned(), 1, 1.0),
                ("m_f".to_owned(), 2, 2.0),
                ("m_f".to_owned(), 4, 4.0)
            ],
            "the dropped datagram's readings never arrive"
        );
        wait_for(&stats, |s| s.readings_accepted() == 3).await;
        assert_eq!(stats.dropped_readings(), 3);
        assert_eq!(stats.lines_rejected(), 1);
        source.stop().await;
    })
    .await;
}

#[tokio::test]
async fn udp_refused_by_the_journal_is_counted_as_dropped() {
    within(async {
        let (source, mut rx, client) = udp_source(config(), 4).await;
        client.send(b"m,device=a f=1 1").await.unwrap();
        let s = next(&mut rx).await;
        refuse_full(s);
        wait_for(&source.stats, |s| s.dropped_readings() == 1).await;
        client.send(b"m f=2 2").await.unwrap();
        let works = accept_until(&mut rx, |w| {
            health_sum(w, "a", health::DROPPED_QUEUE_FULL) == 1 && flat(w).len() == 1
        })
        .await;
        assert_eq!(flat(&works), [("m_f".to_owned(), 2, 2.0)]);
        source.stop().await;
    })
    .await;
}

#[test]
fn config_reads_from_toml_with_defaults() {
    let cfg: InfluxConfig = toml::from_str(
        r#"
        name = "telegraf"
        precision = "s"
        max_connections = 8
        "#,
    )
    .unwrap();
    assert_eq!(
        cfg,
        InfluxConfig {
            name: "telegraf".into(),
            precision: Precision::Seconds,
            max_connections: 8,
            ..InfluxConfig::default()
        }
    );
    assert_eq!(InfluxConfig::default().max_line_bytes, 65_536);
    assert_eq!(InfluxConfig::default().device_tag, "device");
    let err = toml::from_str::<InfluxConfig>("precision = \"minutes\"").unwrap_err();
    assert!(
        err.to_string().contains("unknown variant `minutes`"),
        "{err}"
    );
}

#[test]
fn stats_render_as_prometheus_samples() {
    let stats = SourceStats::default();
    let mut out = String::new();
    stats.render_prometheus("lp", &mut out);
    assert_eq!(
        out,
        "ferry_agent_influx_lines_accepted_total{source=\"lp\"} 0\n\
         ferry_agent_influx_readings_accepted_total{source=\"lp\"} 0\n\
         ferry_agent_influx_lines_rejected_total{source=\"lp\"} 0\n\
         ferry_agent_influx_string_fields_skipped_total{source=\"lp\"} 0\n\
         ferry_agent_influx_bytes_total{source=\"lp\"} 0\n\
         ferry_agent_influx_connections_total{source=\"lp\"} 0\n\
         ferry_agent_influx_connections_open{source=\"lp\"} 0\n\
         ferry_agent_influx_dropped_readings_total{source=\"lp\"} 0\n\
         ferry_agent_influx_lines_uncached_total{source=\"lp\"} 0\n\
         ferry_agent_influx_connections_evicted_total{source=\"lp\"} 0\n\
         ferry_agent_influx_idle_timeouts_total{source=\"lp\"} 0\n\
         ferry_agent_influx_line_timeouts_total{source=\"lp\"} 0\n"
    );
}
