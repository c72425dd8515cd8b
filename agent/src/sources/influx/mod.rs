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
//! **Connection limits** ([`conn`](super::conn)): the listener always
//! accepts; at [`InfluxConfig::max_connections`] it closes the idlest
//! connection (counted in `connections_evicted_total`, logged at most once
//! per [`LIMIT_LOG_PERIOD`]), and so it does when an accept fails (out of
//! file descriptors). A connection with no byte for
//! [`InfluxConfig::idle_timeout`], or holding a partial line for
//! [`InfluxConfig::line_timeout`], is closed (counted). An idle connection
//! holds no read buffer.
//!
//! **Memory** ([`limits`](crate::limits)): with a budget on the
//! [`Intake`], each connection's series-key cache and read buffer are
//! charged to it; a line of a new series that does not fit is parsed
//! without caching its series (its readings are kept;
//! `lines_uncached_total` counts such lines), so a full cache costs parsing
//! time, never readings. A waiting connection evicts its cache as soon as
//! the budget asks. A connection parses a chunk only once [`CHUNK_HOLD`]
//! more bytes fit in the budget, and only the lines that covers; what the
//! parsed chunk holds is charged ([`Hold`]) until the commit returns.
//! Without room it waits and reads nothing, so a flood of new series fills
//! its producer's socket, not the agent's memory.
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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_clock::{Backoff, Clock, SystemClock};

use ferry_proto::health;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

pub mod http;
mod udp;

pub use self::http::{InfluxHttpConfig, run_http};
pub use self::udp::run_udp;
use super::conn::{Closed, ConnectionTable, Deadlines, LogLimit};
use super::line::{
    Chunk, ChunkParser, Chunker, KeyCache, LineError, Parsed, Piece, Precision, StringFields,
    split_datagram,
};
use crate::intake::{Intake, Refused, SubmitError};
use crate::journal::Work;
use crate::limits::{CHUNK_HOLD, Charge, Hold, heap_within, held_bytes};

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
/// The connection limit is logged at most once per this period.
pub const LIMIT_LOG_PERIOD: Duration = Duration::from_secs(10);

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
    /// Most TCP connections served at once; a new one past it closes the
    /// idlest.
    pub max_connections: usize,
    /// Most lines per journal submission.
    pub chunk_lines: usize,
    /// A TCP connection with no byte for this long is closed; `"0s"`: never.
    #[serde(deserialize_with = "crate::config::duration")]
    pub idle_timeout: Duration,
    /// A TCP connection holding a line that has not ended for this long is
    /// closed (a stuck or slowloris sender); `"0s"`: never.
    #[serde(deserialize_with = "crate::config::duration")]
    pub line_timeout: Duration,
    /// String fields: `"skip"` (counted, the line's numbers kept) or
    /// `"reject"` (the whole line).
    pub string_fields: StringFields,
    /// How often a TCP listener journals the connections it closed (health
    /// kinds 13 and 14), besides once when it stops: 1 s. Not read from
    /// `agent.toml` (tests lengthen it to see only the report at the stop).
    #[serde(skip)]
    pub closes_period: Duration,
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
            idle_timeout: Duration::from_secs(300),
            line_timeout: Duration::from_secs(10),
            string_fields: StringFields::Skip,
            closes_period: CLOSES_PERIOD,
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
    lines_uncached: AtomicU64,
    connections_evicted: AtomicU64,
    idle_timeouts: AtomicU64,
    line_timeouts: AtomicU64,
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
            lines_uncached: AtomicU64::new(0),
            connections_evicted: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
            line_timeouts: AtomicU64::new(0),
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

    /// Lines parsed without caching their series: the memory budget had
    /// no room for it (their readings were kept).
    pub fn lines_uncached(&self) -> u64 {
        self.lines_uncached.load(Ordering::Relaxed)
    }
    /// TCP connections closed at the connection limit (the idlest).
    pub fn connections_evicted(&self) -> u64 {
        self.connections_evicted.load(Ordering::Relaxed)
    }
    /// TCP connections closed after `idle_timeout` without a byte.
    pub fn idle_timeouts(&self) -> u64 {
        self.idle_timeouts.load(Ordering::Relaxed)
    }
    /// TCP connections closed holding a partial line for `line_timeout`.
    pub fn line_timeouts(&self) -> u64 {
        self.line_timeouts.load(Ordering::Relaxed)
    }

    /// A receiver marked changed after each update of the counters (for
    /// tests and live displays: no polling).
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Appends Prometheus samples (no `# HELP`/`# TYPE` lines, so several
    /// sources can share a family): `ferry_agent_influx_<counter>{source="name"}`
    /// for `lines_accepted_total`, `readings_accepted_total`,
    /// `lines_rejected_total`, `string_fields_skipped_total`, `bytes_total`,
    /// `connections_total`, `connections_open`, `dropped_readings_total`,
    /// `lines_uncached_total`, `connections_evicted_total`,
    /// `idle_timeouts_total` and `line_timeouts_total`.
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
            ("lines_uncached_total", self.lines_uncached()),
            ("connections_evicted_total", self.connections_evicted()),
            ("idle_timeouts_total", self.idle_timeouts()),
            ("line_timeouts_total", self.line_timeouts()),
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
    let open = Arc::new(Mutex::new(Open::default()));
    let mut limit_log = LogLimit::new(LIMIT_LOG_PERIOD);
    let mut accept_log = LogLimit::new(LIMIT_LOG_PERIOD);
    let mut connections = JoinSet::new();
    let closes = tokio::spawn(report_closes(
        cfg.name.clone(),
        cfg.closes_period,
        intake.clone(),
        stats.clone(),
        stop_rx.clone(),
    ));
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: close the idlest
                // connection (its descriptor serves the next accept), pause,
                // don't spin.
                let now = clock.now_ns();
                let evicted = open
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .evict_idlest();
                if evicted {
                    stats.add(&stats.connections_evicted, 1);
                }
                if let Some(held_back) = accept_log.event(now) {
                    tracing::warn!(source = %cfg.name, error = %e, evicted, held_back,
                        "accepting a connection failed ({held_back} more since the last message)");
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(FIRST_RETRY_PAUSE * 10) => continue,
                }
            }
        };
        let now = clock.now_ns();
        let (id, kicked, evicted) = open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(now, cfg.max_connections);
        if evicted {
            stats.add(&stats.connections_evicted, 1);
            if let Some(held_back) = limit_log.event(now) {
                tracing::warn!(source = %cfg.name, max_connections = cfg.max_connections, held_back,
                    "connection limit reached: closed the idlest connection to serve a new one ({held_back} more since the last message)");
            }
        }
        let connection = Connection {
            deadlines: Deadlines::new(now, Some(cfg.idle_timeout), Some(cfg.line_timeout)),
            buffer: intake.budget().cloned().map(Charge::new),
            keys: intake.key_cache(),
            cfg: cfg.clone(),
            clock: clock.clone(),
            intake: intake.clone(),
            stats: stats.clone(),
            stop: stop_rx.clone(),
            peer,
            warn: WarnLimit::default(),
            id,
            open: open.clone(),
        };
        connections.spawn(connection.serve(stream, kicked));
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    let _ = closes.await;
}

/// How often a TCP listener journals the connections it closed.
const CLOSES_PERIOD: Duration = Duration::from_secs(1);

/// Journals the connections the listener closed (at its limit: health kind
/// 13; timed out: kind 14) as `stats` counts them, at most every
/// `period` ([`InfluxConfig::closes_period`]) and once more when the listener stops, so they reach
/// the collector, not only `/metrics`. What a failed commit did not journal
/// is journaled with the next.
async fn report_closes(
    source: String,
    period: Duration,
    intake: Intake,
    stats: Arc<SourceStats>,
    mut stop: watch::Receiver<bool>,
) {
    let (mut evicted, mut timed_out) = (0u64, 0u64);
    // The first report a period from now (an interval's first tick is
    // immediate).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let now_evicted = stats.connections_evicted();
        let now_timed_out = stats.idle_timeouts() + stats.line_timeouts();
        let mut work = Work::default();
        if now_evicted > evicted {
            work.health.push((
                source.clone(),
                health::CONNECTIONS_EVICTED,
                now_evicted - evicted,
            ));
        }
        if now_timed_out > timed_out {
            work.health.push((
                source.clone(),
                health::CONNECTIONS_TIMED_OUT,
                now_timed_out - timed_out,
            ));
        }
        if !work.health.is_empty() && intake.submit(work).await.is_ok() {
            (evicted, timed_out) = (now_evicted, now_timed_out);
        }
        if stopping {
            break;
        }
    }
}

/// The open connections of a listener, and how to close each.
#[derive(Debug, Default)]
struct Open {
    table: ConnectionTable,
    kick: HashMap<u64, oneshot::Sender<()>>,
}

impl Open {
    /// Admits a connection: its id, what closes it, and whether the idlest
    /// was closed to make room.
    fn admit(&mut self, now: i64, max: usize) -> (u64, oneshot::Receiver<()>, bool) {
        let (id, evicted) = self.table.admit(now, max);
        if let Some(e) = evicted
            && let Some(kick) = self.kick.remove(&e)
        {
            let _ = kick.send(());
        }
        let (tx, rx) = oneshot::channel();
        self.kick.insert(id, tx);
        (id, rx, evicted.is_some())
    }

    /// Closes the idlest connection; true if there was one.
    fn evict_idlest(&mut self) -> bool {
        let Some(id) = self.table.evict_idlest() else {
            return false;
        };
        if let Some(kick) = self.kick.remove(&id) {
            let _ = kick.send(());
        }
        true
    }

    fn remove(&mut self, id: u64) {
        self.table.remove(id);
        self.kick.remove(&id);
    }
}

fn parse_pieces(
    buf: &[u8],
    pieces: &[Piece],
    cfg: &InfluxConfig,
    keys: &mut KeyCache,
    now_ns: i64,
) -> Parsed {
    parse_pieces_within(buf, pieces, cfg, keys, now_ns, u64::MAX).0
}

/// [`parse_pieces`], stopping after the line that brings the parsed
/// readings' heap to `heap` bytes (at least one line is parsed): the
/// parsed chunk and how many pieces it took.
fn parse_pieces_within(
    buf: &[u8],
    pieces: &[Piece],
    cfg: &InfluxConfig,
    keys: &mut KeyCache,
    now_ns: i64,
    heap: u64,
) -> (Parsed, usize) {
    let mut parser = ChunkParser::new(cfg.precision, now_ns, &cfg.name, &cfg.device_tag, keys)
        .string_fields(cfg.string_fields);
    for (taken, piece) in pieces.iter().enumerate() {
        if parser.heap_bytes() >= heap {
            return (parser.finish(), taken);
        }
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
    (parser.finish(), pieces.len())
}

/// The work for a chunk: its readings and its rejected-line count.
fn chunk_work(parsed: Parsed, cfg: &InfluxConfig) -> Work {
    parsed_work(parsed, &cfg.name)
}

/// The journal work for parsed line protocol from the source `source`: its
/// readings; rejected lines and skipped string fields as health records. Every line-protocol
/// input (TCP, UDP, HTTP) hands its chunks over through this.
pub(super) fn parsed_work(parsed: Parsed, source: &str) -> Work {
    let mut work = Work {
        readings: parsed.readings,
        ..Work::default()
    };
    if !parsed.errors.is_empty() {
        work.health.push((
            source.to_owned(),
            health::REJECTED_INPUT,
            parsed.errors.len() as u64,
        ));
    }
    if parsed.string_fields_skipped > 0 {
        work.health.push((
            source.to_owned(),
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
    /// The read buffer's share of the memory budget.
    buffer: Option<Charge>,
    deadlines: Deadlines,
    /// This connection in the listener's table.
    id: u64,
    open: Arc<Mutex<Open>>,
}

impl Connection {
    async fn serve(mut self, mut stream: TcpStream, kicked: oneshot::Receiver<()>) {
        self.stats.add(&self.stats.connections, 1);
        self.stats.add(&self.stats.connections_open, 1);
        let closed = self.read_loop(&mut stream, kicked).await;
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.id);
        if let Some(why) = closed {
            match why {
                Closed::Idle => self.stats.add(&self.stats.idle_timeouts, 1),
                Closed::LineStalled => self.stats.add(&self.stats.line_timeouts, 1),
                // Counted by the listener when it chose it.
                Closed::Evicted => {}
            }
            tracing::debug!(source = %self.cfg.name, peer = %self.peer, reason = why.as_str(), "connection closed by the agent");
        }
        self.warn.finish(&self.cfg.name, self.peer);
        self.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        self.stats.changed.send_modify(|_| {});
    }

    /// Reads and submits until the stream ends, the agent stops, or the
    /// connection is closed by a limit (then why).
    async fn read_loop(
        &mut self,
        stream: &mut TcpStream,
        mut kicked: oneshot::Receiver<()>,
    ) -> Option<Closed> {
        let mut chunker = Chunker::new(self.cfg.max_line_bytes, self.cfg.chunk_lines, CHUNK_BYTES);
        let mut pressure = self.intake.budget().map(|b| b.pressure());
        // Bytes read at this instant, not yet seen by the deadlines.
        let mut fresh: Option<i64> = None;
        loop {
            let state = chunker.poll();
            if let Some(at) = fresh.take() {
                self.deadlines
                    .handle_bytes(at, state != Chunk::Read, chunker.has_partial());
            }
            match state {
                Chunk::Ready => {}
                Chunk::TopUp => {
                    // What is already waiting in the socket joins this chunk
                    // (without waiting for more): one journal commit per
                    // chunk, so a fast sender gets large commits, a slow one
                    // small ones. Nothing waiting, the end of the stream or
                    // an error: the blocking read meets it again.
                    if let Ok(n @ 1..) = stream.try_read_buf(chunker.read_buf(READ_SIZE)) {
                        self.read(n, &chunker, &mut fresh);
                        continue;
                    }
                }
                Chunk::Read => {
                    match stream.try_read_buf(chunker.read_buf(READ_SIZE)) {
                        Ok(0) => {
                            chunker.handle_eof();
                            while chunker.lines() > 0 {
                                let hold = self.hold(&mut pressure).await;
                                let (parsed, hold) = self.parse(&mut chunker, hold);
                                if !self.submit(parsed, hold).await {
                                    break;
                                }
                            }
                            return None;
                        }
                        Ok(n) => {
                            self.read(n, &chunker, &mut fresh);
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            tracing::debug!(source = %self.cfg.name, peer = %self.peer, error = %e, "connection read failed");
                            return None;
                        }
                    }
                    // Nothing waiting: no buffer is held while there is
                    // nothing in it, and the wait ends at a deadline, a
                    // close, the budget's pressure or readable bytes.
                    chunker.release_if_empty();
                    self.charge_buffer(&chunker);
                    let due = self.deadlines.due().map(|due| {
                        let wait = due.saturating_sub(self.clock.now_ns()).max(0);
                        tokio::time::Instant::now() + Duration::from_nanos(wait as u64)
                    });
                    tokio::select! {
                        _ = stopped(&mut self.stop) => return None,
                        _ = &mut kicked => return Some(Closed::Evicted),
                        _ = sleep_until(due) => {
                            if let Some(why) = self.deadlines.expired(self.clock.now_ns()) {
                                return Some(why);
                            }
                        }
                        _ = pressed(&mut pressure) => {
                            // Unless this cache made room already.
                            if self.keys.pressed() {
                                self.keys.evict();
                            }
                        }
                        ready = stream.readable() => {
                            if let Err(e) = ready {
                                tracing::debug!(source = %self.cfg.name, peer = %self.peer, error = %e, "connection read failed");
                                return None;
                            }
                        }
                    }
                    continue;
                }
            }
            // Room in the memory budget first: without it, nothing more is
            // read (the producer waits), and the chunk parses only what
            // the hold covers.
            let hold = self.hold(&mut pressure).await;
            let (parsed, hold) = self.parse(&mut chunker, hold);
            self.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .table
                .progress(self.id, self.clock.now_ns());
            if !self.submit(parsed, hold).await {
                return None;
            }
            // Time spent waiting for the journal is not the sender's idling.
            self.deadlines
                .handle_bytes(self.clock.now_ns(), true, chunker.has_partial());
        }
    }

    /// `n` bytes were read into `chunker`.
    fn read(&mut self, n: usize, chunker: &Chunker, fresh: &mut Option<i64>) {
        self.stats.add(&self.stats.bytes, n as u64);
        *fresh = Some(self.clock.now_ns());
        self.charge_buffer(chunker);
    }

    fn charge_buffer(&mut self, chunker: &Chunker) {
        if let Some(charge) = &mut self.buffer {
            charge.set(chunker.capacity() as u64);
        }
    }

    /// Parses what [`CHUNK_HOLD`] covers of the chunk (all of it without a
    /// hold) and sets the hold to what the parsed chunk holds until its
    /// commit.
    fn parse(&mut self, chunker: &mut Chunker, hold: Option<Hold>) -> (Parsed, Option<Hold>) {
        let now = self.clock.now_ns();
        let heap = if hold.is_some() {
            heap_within(CHUNK_HOLD)
        } else {
            u64::MAX
        };
        let parsed = chunker.take_some(|buf, pieces| {
            parse_pieces_within(buf, pieces, &self.cfg, &mut self.keys, now, heap)
        });
        let hold = hold.map(|mut h| {
            h.set(held_bytes(parsed.heap_bytes()));
            h
        });
        (parsed, hold)
    }

    /// Admission to parse a chunk: waits until [`CHUNK_HOLD`] more bytes
    /// fit in the memory budget (`None` without a budget, or when the
    /// agent stops). While
    /// it waits the connection reads nothing: its socket fills and its
    /// producer waits; its own cache makes room first.
    async fn hold(&mut self, pressure: &mut Option<watch::Receiver<u64>>) -> Option<Hold> {
        let budget = self.intake.budget()?.clone();
        let mut waited = false;
        loop {
            let room = budget.room();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(hold) = budget.try_hold(CHUNK_HOLD) {
                return Some(hold);
            }
            if !waited {
                waited = true;
                budget.record_wait();
            }
            if self.keys.charged() > 0 {
                self.keys.evict();
                continue;
            }
            tokio::select! {
                _ = &mut room => {}
                _ = pressed(pressure) => {}
                // Parsed without a hold and handed over: the writer
                // answers it (committed, or counted as dropped).
                _ = stopped(&mut self.stop) => return None,
            }
        }
    }

    /// Hands a chunk to the journal, retrying while it is refused; false
    /// when the agent is stopping. `_hold` (the chunk's share of the
    /// memory budget) is handed back when the commit returned.
    async fn submit(&mut self, parsed: Parsed, _hold: Option<Hold>) -> bool {
        if parsed.lines_uncached > 0 {
            self.stats
                .add(&self.stats.lines_uncached, parsed.lines_uncached);
        }
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

/// Resolves at `at`; never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the memory budget asks caches to make room; never
/// without a budget.
async fn pressed(pressure: &mut Option<watch::Receiver<u64>>) {
    match pressure {
        Some(p) => {
            if p.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
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
