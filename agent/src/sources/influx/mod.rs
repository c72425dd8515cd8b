//! Influx line protocol over TCP and UDP: the I/O around [`line`](super::line).
//!
//! **TCP** ([`run_tcp`]): each connection is read in chunks of at most
//! [`InfluxConfig::chunk_lines`] complete lines: a chunk takes whatever the
//! socket has ready (up to about 256 KiB) without waiting for more, so a
//! fast sender's lines share few journal commits; a chunk is parsed, handed to
//! the journal with [`Intake::submit_or_return`], and only once it is
//! committed is the connection read again. A journal refusing work
//! ([`SubmitError::Full`] under the `backpressure` policy) hands it back and
//! it is retried with a growing pause, so the connection stops being read and
//! TCP flow control slows the sender. A chunk whose commit failed in storage
//! is counted in `dropped_readings`, logged, and its connection closed: the
//! sender sees the failure. Near a full disk the writer keeps a copy and
//! hands the chunk back instead (`crate::disk`): the connection waits.
//! Connections are bounded by [`InfluxConfig::max_connections`]; further
//! ones wait in the listen backlog.
//!
//! **UDP** ([`run_udp`]): each datagram is a chunk, handed over with
//! [`Intake::try_submit`]: a sender cannot be slowed, so when the queue is
//! full (or the journal refuses the work) its readings are dropped and
//! counted per origin as [`health::DROPPED_QUEUE_FULL`]; those counts ride
//! along with a later submission, so the loss reaches the collector.
//!
//! **Bad input** (both): a rejected line is counted in [`SourceStats`],
//! reported to the collector as a [`health::REJECTED_INPUT`] increment for
//! the source's name in the same [`Work`] as the chunk's readings, and
//! logged with `tracing::warn!` at most once a second per connection (per
//! socket for UDP), with the number of rejections not logged since.
//! A line longer than [`InfluxConfig::max_line_bytes`] is rejected and
//! skipped up to its end.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_clock::{Backoff, Clock, SystemClock};

use ferry_proto::health;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub mod http;
mod udp;

pub use self::http::{InfluxHttpConfig, run_http};
pub use self::udp::run_udp;
use super::line::{
    Chunk, ChunkParser, Chunker, KeyCache, LineError, Parsed, Piece, Precision, StringFields,
    split_datagram,
};
use crate::intake::{Intake, Refused, SubmitError};
use crate::journal::Work;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 64 * 1024;
/// A chunk stops taking more of what is waiting in the socket once its
/// buffer holds this much (with [`InfluxConfig::chunk_lines`], this bounds a
/// connection's buffer to about `CHUNK_BYTES + READ_SIZE`, plus one line).
const CHUNK_BYTES: usize = 256 * 1024;
/// First pause before resubmitting work the journal refused; doubles up to
/// [`MAX_RETRY_PAUSE`] ([`Backoff`]).
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(10);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Most log lines per connection per this period.
const WARN_PERIOD: Duration = Duration::from_secs(1);
/// How often UDP retries handing over pending drop counts when no datagram
/// comes to carry them.
const UDP_HEALTH_RETRY: Duration = Duration::from_millis(100);
/// Most distinct origins with pending UDP drop counts; further origins'
/// counts go to the source's name, so the map stays bounded.
const MAX_PENDING_ORIGINS: usize = 1024;

/// One Influx line protocol source (a `[[influx]]` section).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfluxConfig {
    /// The source's name: the origin of readings without the device tag and
    /// of rejected-input counts; a label on its metrics.
    pub name: String,
    /// Unit of line timestamps.
    pub precision: Precision,
    /// Tag whose value is a reading's origin (what loss is counted per).
    pub device_tag: String,
    /// Longest accepted line, bytes; longer ones are rejected and skipped.
    pub max_line_bytes: usize,
    /// Most TCP connections served at once.
    pub max_connections: usize,
    /// Most lines per journal submission.
    pub chunk_lines: usize,
    /// String fields: `"skip"` (counted, the line's numbers kept) or
    /// `"reject"` (the whole line).
    pub string_fields: StringFields,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        Self {
            name: "influx".to_owned(),
            precision: Precision::Nanoseconds,
            device_tag: "device".to_owned(),
            max_line_bytes: 64 * 1024,
            max_connections: 64,
            chunk_lines: 4096,
            string_fields: StringFields::Skip,
        }
    }
}

/// A source's counters. Lines and readings are counted as accepted once
/// the journal has committed them; `dropped_readings` counts readings lost
/// after parsing (UDP queue full, journal refusal under UDP, shutdown with
/// work uncommitted).
#[derive(Debug)]
pub struct SourceStats {
    lines_accepted: AtomicU64,
    readings_accepted: AtomicU64,
    lines_rejected: AtomicU64,
    string_fields_skipped: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
    connections_open: AtomicU64,
    dropped_readings: AtomicU64,
    changed: watch::Sender<()>,
}

impl Default for SourceStats {
    fn default() -> Self {
        Self {
            lines_accepted: AtomicU64::new(0),
            readings_accepted: AtomicU64::new(0),
            lines_rejected: AtomicU64::new(0),
            string_fields_skipped: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            dropped_readings: AtomicU64::new(0),
            changed: watch::channel(()).0,
        }
    }
}

impl SourceStats {
    /// Lines committed to the journal.
    pub fn lines_accepted(&self) -> u64 {
        self.lines_accepted.load(Ordering::Relaxed)
    }
    /// Readings committed to the journal.
    pub fn readings_accepted(&self) -> u64 {
        self.readings_accepted.load(Ordering::Relaxed)
    }
    /// Lines rejected (malformed, string fields, bad names, too long).
    pub fn lines_rejected(&self) -> u64 {
        self.lines_rejected.load(Ordering::Relaxed)
    }
    /// String fields skipped in accepted lines (`string_fields = "skip"`).
    pub fn string_fields_skipped(&self) -> u64 {
        self.string_fields_skipped.load(Ordering::Relaxed)
    }
    /// Bytes received (TCP reads, UDP datagrams).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// TCP connections open now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }
    /// Readings parsed but not committed (see the type's docs).
    pub fn dropped_readings(&self) -> u64 {
        self.dropped_readings.load(Ordering::Relaxed)
    }

    /// A receiver marked changed after each update of the counters (for
    /// tests and live displays: no polling).
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Appends Prometheus samples (no `# HELP`/`# TYPE` lines, so several
    /// sources can share a family): `ferry_agent_influx_<counter>{source="name"}`
    /// for `lines_accepted_total`, `readings_accepted_total`,
    /// `lines_rejected_total`, `string_fields_skipped_total`, `bytes_total`, `connections_total`,
    /// `connections_open` and `dropped_readings_total`.
    pub fn render_prometheus(&self, source: &str, out: &mut String) {
        let source = source.replace('\\', r"\\").replace('"', "\\\"");
        for (name, value) in [
            ("lines_accepted_total", self.lines_accepted()),
            ("readings_accepted_total", self.readings_accepted()),
            ("lines_rejected_total", self.lines_rejected()),
            ("string_fields_skipped_total", self.string_fields_skipped()),
            ("bytes_total", self.bytes()),
            ("connections_total", self.connections()),
            ("connections_open", self.connections_open()),
            ("dropped_readings_total", self.dropped_readings()),
        ] {
            let _ = writeln!(
                out,
                "ferry_agent_influx_{name}{{source=\"{source}\"}} {value}"
            );
        }
    }

    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        self.changed.send_modify(|_| {});
    }
}

/// Serves line protocol on `listener` until `shutdown` completes, then
/// stops reading, lets in-flight submissions finish and returns when every
/// connection has closed.
pub async fn run_tcp(
    listener: TcpListener,
    cfg: InfluxConfig,
    intake: Intake,
    stats: Arc<SourceStats>,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = Arc::new(cfg);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause, don't spin.
                tracing::warn!(source = %cfg.name, error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(FIRST_RETRY_PAUSE * 10) => continue,
                }
            }
        };
        let connection = Connection {
            cfg: cfg.clone(),
            clock: clock.clone(),
            intake: intake.clone(),
            stats: stats.clone(),
            stop: stop_rx.clone(),
            peer,
            warn: WarnLimit::default(),
            keys: KeyCache::default(),
        };
        connections.spawn(async move {
            connection.serve(stream).await;
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
}

fn parse_pieces(
    buf: &[u8],
    pieces: &[Piece],
    cfg: &InfluxConfig,
    keys: &mut KeyCache,
    now_ns: i64,
) -> Parsed {
    let mut parser = ChunkParser::new(cfg.precision, now_ns, &cfg.name, &cfg.device_tag, keys)
        .string_fields(cfg.string_fields);
    for piece in pieces {
        match *piece {
            Piece::Line { no, start, end } => parser.push_line(no, &buf[start..end]),
            Piece::TooLong { no } => parser.reject(
                no,
                LineError::LineTooLong {
                    max: cfg.max_line_bytes,
                },
            ),
        }
    }
    parser.finish()
}

/// The work for a chunk: its readings and its rejected-line count.
fn chunk_work(parsed: Parsed, cfg: &InfluxConfig) -> Work {
    let mut work = Work {
        readings: parsed.readings,
        ..Work::default()
    };
    if !parsed.errors.is_empty() {
        work.health.push((
            cfg.name.clone(),
            health::REJECTED_INPUT,
            parsed.errors.len() as u64,
        ));
    }
    if parsed.string_fields_skipped > 0 {
        work.health.push((
            cfg.name.clone(),
            health::SKIPPED_STRING_FIELDS,
            parsed.string_fields_skipped,
        ));
    }
    work
}

/// At most one warning per [`WARN_PERIOD`]; counts the rest.
#[derive(Debug, Default)]
struct WarnLimit {
    last: Option<i64>,
    suppressed: u64,
}

impl WarnLimit {
    /// Rejections at `now`: true when they were logged, false when counted
    /// as suppressed.
    fn rejected(
        &mut self,
        now: i64,
        source: &str,
        peer: SocketAddr,
        errors: &[(usize, LineError)],
    ) -> bool {
        let Some((first, rest)) = errors.split_first() else {
            return false;
        };
        let period = ferry_clock::nanos(WARN_PERIOD);
        if self.last.is_some_and(|t| now.saturating_sub(t) < period) {
            self.suppressed += errors.len() as u64;
            return false;
        }
        let (line, reason) = first;
        tracing::warn!(
            source, %peer, line, %reason,
            suppressed = self.suppressed,
            "rejected a line ({} more suppressed)", self.suppressed
        );
        self.last = Some(now);
        self.suppressed = rest.len() as u64;
        true
    }

    fn finish(&mut self, source: &str, peer: SocketAddr) {
        if self.suppressed > 0 {
            tracing::warn!(source, %peer, suppressed = self.suppressed,
                "{} more rejected lines not logged", self.suppressed);
            self.suppressed = 0;
        }
    }
}

struct Connection {
    cfg: Arc<InfluxConfig>,
    clock: Arc<dyn Clock>,
    intake: Intake,
    stats: Arc<SourceStats>,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
    warn: WarnLimit,
    /// Series keys parsed on this connection.
    keys: KeyCache,
}

impl Connection {
    async fn serve(mut self, mut stream: TcpStream) {
        self.stats.add(&self.stats.connections, 1);
        self.stats.add(&self.stats.connections_open, 1);
        self.read_loop(&mut stream).await;
        self.warn.finish(&self.cfg.name, self.peer);
        self.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        self.stats.changed.send_modify(|_| {});
    }

    async fn read_loop(&mut self, stream: &mut TcpStream) {
        let mut chunker = Chunker::new(self.cfg.max_line_bytes, self.cfg.chunk_lines, CHUNK_BYTES);
        loop {
            match chunker.poll() {
                Chunk::Ready => {}
                Chunk::TopUp => {
                    // What is already waiting in the socket joins this chunk
                    // (without waiting for more): one journal commit per
                    // chunk, so a fast sender gets large commits, a slow one
                    // small ones. Nothing waiting, the end of the stream or
                    // an error: the blocking read meets it again.
                    if let Ok(n @ 1..) = stream.try_read_buf(chunker.read_buf(READ_SIZE)) {
                        self.stats.add(&self.stats.bytes, n as u64);
                        continue;
                    }
                }
                Chunk::Read => {
                    let read = tokio::select! {
                        read = stream.read_buf(chunker.read_buf(READ_SIZE)) => read,
                        _ = stopped(&mut self.stop) => return,
                    };
                    match read {
                        Ok(0) => {
                            chunker.handle_eof();
                            if chunker.lines() > 0 {
                                let parsed = self.parse(&mut chunker);
                                self.submit(parsed).await;
                            }
                            return;
                        }
                        Ok(n) => {
                            self.stats.add(&self.stats.bytes, n as u64);
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(source = %self.cfg.name, peer = %self.peer, error = %e, "connection read failed");
                            return;
                        }
                    }
                }
            }
            let parsed = self.parse(&mut chunker);
            if !self.submit(parsed).await {
                return;
            }
        }
    }

    fn parse(&mut self, chunker: &mut Chunker) -> Parsed {
        let now = self.clock.now_ns();
        chunker.take(|buf, pieces| parse_pieces(buf, pieces, &self.cfg, &mut self.keys, now))
    }

    /// Hands a chunk to the journal, retrying while it is refused; false
    /// when the agent is stopping.
    async fn submit(&mut self, parsed: Parsed) -> bool {
        let rejected = parsed.errors.len() as u64;
        if rejected > 0 {
            self.stats.add(&self.stats.lines_rejected, rejected);
            let now = self.clock.now_ns();
            self.warn
                .rejected(now, &self.cfg.name, self.peer, &parsed.errors);
        }
        if parsed.string_fields_skipped > 0 {
            let n = parsed.string_fields_skipped;
            self.stats.add(&self.stats.string_fields_skipped, n);
        }
        let (lines, readings) = (parsed.lines_accepted, parsed.readings_accepted);
        let work = chunk_work(parsed, &self.cfg);
        if work.is_empty() {
            return true;
        }
        let mut pause = Backoff::new(FIRST_RETRY_PAUSE, MAX_RETRY_PAUSE);
        let mut work = work;
        loop {
            match self.intake.submit_or_return(work).await {
                Ok(_) => {
                    self.stats.add(&self.stats.lines_accepted, lines);
                    self.stats.add(&self.stats.readings_accepted, readings);
                    return true;
                }
                Err(Refused {
                    error: SubmitError::Shutdown,
                    ..
                }) => {
                    self.stats.add(&self.stats.dropped_readings, readings);
                    return false;
                }
                Err(Refused { error, work: None }) => {
                    // The commit holding the chunk failed in storage: the
                    // journal cannot take it now, and the sender has no
                    // acknowledgement to wait for. Closing the connection
                    // tells it something went wrong.
                    tracing::error!(source = %self.cfg.name, peer = %self.peer, %error, readings,
                        "journal commit failed; chunk dropped and connection closed");
                    self.stats.add(&self.stats.dropped_readings, readings);
                    return false;
                }
                Err(Refused {
                    error,
                    work: Some(back),
                }) => {
                    work = *back;
                    tracing::debug!(source = %self.cfg.name, peer = %self.peer, %error,
                        "journal refused a chunk; pausing this connection");
                    tokio::select! {
                        _ = tokio::time::sleep(pause.next_delay()) => {}
                        _ = stopped(&mut self.stop) => {
                            self.stats.add(&self.stats.dropped_readings, readings);
                            return false;
                        }
                    }
                }
            }
        }
    }
}

/// Resolves once `stop` is true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_logged_at_most_once_a_period_and_the_rest_counted() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        let errs = |n: usize| -> Vec<(usize, LineError)> {
            (1..=n)
                .map(|no| (no, LineError::LineTooLong { max: 8 }))
                .collect()
        };
        let s = ferry_clock::SEC;
        let mut w = WarnLimit::default();
        assert!(!w.rejected(0, "src", peer, &[]), "nothing to log");
        assert!(w.rejected(10 * s, "src", peer, &errs(3)));
        assert_eq!(w.suppressed, 2, "the first is logged, the rest counted");
        assert!(!w.rejected(11 * s - 1, "src", peer, &errs(4)));
        assert_eq!(w.suppressed, 6);
        assert!(w.rejected(11 * s, "src", peer, &errs(1)), "a period later");
        assert_eq!(w.suppressed, 0);
        w.rejected(11 * s + 1, "src", peer, &errs(2));
        w.finish("src", peer);
        assert_eq!(w.suppressed, 0, "reported when the connection ends");
    }
}
