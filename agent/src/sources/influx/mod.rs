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

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_proto::health;
use tokio::sync::watch;

pub mod http;
mod tcp;
mod udp;

pub use self::http::{InfluxHttpConfig, run_http};
pub use self::tcp::run_tcp;
pub use self::udp::run_udp;
use super::line::{
    ChunkParser, KeyCache, LineError, Parsed, Piece, Precision, StringFields, split_datagram,
};
use crate::journal::Work;

/// Most log lines per connection per this period.
const WARN_PERIOD: Duration = Duration::from_secs(1);
/// How long after a loss UDP retries handing over pending drop counts when
/// no datagram comes to carry them first.
const UDP_HEALTH_RETRY: Duration = Duration::from_millis(100);
/// Most distinct origins with pending UDP drop counts; further origins'
/// counts go to the source's name, so the map stays bounded.
const MAX_PENDING_ORIGINS: usize = 1024;
/// The connection limit is logged at most once per this period.
pub const LIMIT_LOG_PERIOD: Duration = Duration::from_secs(10);

/// How often a TCP listener journals the connections it closed.
const CLOSES_PERIOD: Duration = Duration::from_secs(1);

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
