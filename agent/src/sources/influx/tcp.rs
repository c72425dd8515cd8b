//! The TCP listener and its connections: accepting at the connection
//! limit, reading chunks of complete lines, the memory budget's holds, and
//! handing chunks to the journal (described in [`super`]). The decisions
//! are sans-IO: `conn`'s `ConnectionTable`, `Deadlines` and `LogLimit`, the
//! line `Chunker`, and here `closes.rs`, `submit.rs` and `waits.rs` (after
//! a failed accept, a wait for room in the budget).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_clock::{Clock, SystemClock, until};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use self::closes::{CloseReport, Closes, Report};
use self::submit::{ChunkSubmission, Step};
use self::waits::{AcceptFailures, NoRoom, RoomWait};
use super::{
    InfluxConfig, LIMIT_LOG_PERIOD, SourceStats, WarnLimit, chunk_work, parse_pieces_within,
};
use crate::intake::Intake;
use crate::limits::{CHUNK_HOLD, Charge, Hold, heap_within, held_bytes};
use crate::sources::conn::{Closed, ConnectionTable, Deadlines, LogLimit};
use crate::sources::line::{Chunk, Chunker, KeyCache, Parsed};

mod closes;
mod submit;
mod waits;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 64 * 1024;
/// A chunk stops taking more of what is waiting in the socket once its
/// buffer holds this much (with [`InfluxConfig::chunk_lines`], this bounds a
/// connection's buffer to about `CHUNK_BYTES + READ_SIZE`, plus one line).
const CHUNK_BYTES: usize = 256 * 1024;
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
    let mut accept_failures = AcceptFailures::new(LIMIT_LOG_PERIOD);
    let mut connections = JoinSet::new();
    let closes = tokio::spawn(report_closes(
        CloseReport::new(&cfg.name, cfg.closes_period, clock.now_ns()),
        clock.clone(),
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
                // don't spin (`AcceptFailures`).
                let after = accept_failures.handle_failure(clock.now_ns());
                let evicted = open
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .evict_idlest();
                if evicted {
                    stats.add(&stats.connections_evicted, 1);
                }
                if let Some(held_back) = after.log {
                    tracing::warn!(source = %cfg.name, error = %e, evicted, held_back,
                        "accepting a connection failed ({held_back} more since the last message)");
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(until(clock.now_ns(), after.retry_at)) => continue,
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

/// Journals the connections the listener closed (at its limit: health kind
/// 13; timed out: kind 14) as `stats` counts them, when [`CloseReport`]
/// says (at most every [`InfluxConfig::closes_period`], and once more when
/// the listener stops), so they reach the collector, not only `/metrics`.
async fn report_closes(
    mut report: CloseReport,
    clock: Arc<dyn Clock>,
    intake: Intake,
    stats: Arc<SourceStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let wait = until(clock.now_ns(), report.poll_due());
        let stopping = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = stop.changed() => true,
        };
        if let Some(Report { work, counts }) =
            report.poll_report(clock.now_ns(), stopping, Closes::of(&stats))
            && intake.submit(work).await.is_ok()
        {
            report.handle_journaled(counts);
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
                    let wait = self
                        .deadlines
                        .due()
                        .map(|due| until(self.clock.now_ns(), due));
                    tokio::select! {
                        _ = stopped(&mut self.stop) => return None,
                        _ = &mut kicked => return Some(Closed::Evicted),
                        _ = sleep_for(wait) => {
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
        let mut wait = RoomWait::default();
        loop {
            let room = budget.room();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(hold) = budget.try_hold(CHUNK_HOLD) {
                return Some(hold);
            }
            let (count, next) = wait.handle_no_room(self.keys.charged());
            if count {
                budget.record_wait();
            }
            if next == NoRoom::EvictOwnCache {
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
        let mut chunk = ChunkSubmission::new(lines, readings);
        let mut work = work;
        loop {
            let answer = self.intake.submit_or_return(work).await.map(|_| ());
            let now = self.clock.now_ns();
            match chunk.handle_answer(now, answer, &self.stats, &self.cfg.name, self.peer) {
                Step::Committed => return true,
                Step::Close => return false,
                Step::RetryAt { at, work: back } => {
                    work = *back;
                    tokio::select! {
                        _ = tokio::time::sleep(until(self.clock.now_ns(), at)) => {}
                        _ = stopped(&mut self.stop) => {
                            chunk.handle_stop(&self.stats);
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

/// Resolves after `d`; never without one.
async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
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
