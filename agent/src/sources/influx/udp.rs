//! The UDP listener: each datagram is one chunk, handed over without
//! waiting; what cannot be handed over is counted and its counts ride along
//! later (module docs of [`super`]).
//!
//! [`Udp`] holds the logic, without a socket or a clock: a datagram at
//! `now` becomes a submission ([`Udp::datagram`]), the writer's answer is
//! counted ([`Udp::answered`]), and pending drop counts are retried
//! [`UDP_HEALTH_RETRY`] after they were lost when no datagram carries them
//! first ([`Udp::poll_retry`], [`Udp::handle_retry`]). [`run_udp`] only
//! receives, waits for answers and sleeps until the retry.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_clock::{Clock, SystemClock, until};
use ferry_proto::health;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::{
    InfluxConfig, KeyCache, MAX_PENDING_ORIGINS, SourceStats, UDP_HEALTH_RETRY, WarnLimit,
    chunk_work, parse_pieces, split_datagram,
};
use crate::intake::{Intake, Outcome, SubmitError};
use crate::journal::Work;
use crate::limits::{Charge, MemoryBudget};

/// Bytes of the receive buffer: the largest datagram.
const RECV_BUF: usize = 64 * 1024;

/// Reads line protocol datagrams from `socket` until `shutdown` completes.
pub async fn run_udp(
    socket: UdpSocket,
    cfg: InfluxConfig,
    intake: Intake,
    stats: Arc<SourceStats>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let clock = SystemClock;
    let mut buf = RecvBuf::new(intake.budget());
    let mut udp = Udp::new(cfg, intake, stats);
    let mut in_flight = JoinSet::new();
    loop {
        let retry = udp.poll_retry().map(|at| until(clock.now_ns(), at));
        let submitted = tokio::select! {
            _ = &mut shutdown => break,
            received = socket.recv_from(&mut buf.bytes) => match received {
                Ok((n, peer)) => udp.datagram(clock.now_ns(), &buf.bytes[..n], peer),
                Err(e) => {
                    tracing::debug!(source = %udp.cfg.name, error = %e, "UDP receive failed");
                    None
                }
            },
            Some(answer) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok((sent, answer)) = answer {
                    udp.answered(clock.now_ns(), sent, answer);
                }
                None
            }
            _ = sleep_for(retry) => udp.handle_retry(clock.now_ns()),
        };
        if let Some(submitted) = submitted {
            in_flight.spawn(submitted.answer());
        }
    }
}

/// Resolves after `wait`; never without one.
async fn sleep_for(wait: Option<std::time::Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// The receive buffer, held for the socket's life: charged to the memory
/// budget (whatever the bound: it is fixed) for as long.
struct RecvBuf {
    bytes: Vec<u8>,
    _charge: Option<Charge>,
}

impl RecvBuf {
    fn new(budget: Option<&Arc<MemoryBudget>>) -> Self {
        let bytes = vec![0u8; RECV_BUF];
        let charge = budget.map(|budget| {
            let mut charge = Charge::new(budget.clone());
            charge.set(bytes.len() as u64);
            charge
        });
        Self {
            bytes,
            _charge: charge,
        }
    }
}

/// What an unanswered UDP submission carried, to count if it is lost.
#[derive(Debug, Default)]
struct Sent {
    lines: u64,
    /// Readings per origin.
    readings: Vec<(String, u64)>,
    /// Health increments it carried.
    health: Vec<(String, u16, u64)>,
    /// Its parsed readings' heap bytes, charged to the memory budget until
    /// the journal answers (as a TCP chunk's are).
    charge: Option<Charge>,
}

/// The writer's answer to a submission.
#[derive(Debug)]
enum Answer {
    /// Committed.
    Committed,
    /// Refused or failed: nothing of it was committed.
    Refused(SubmitError),
    /// The writer is gone without answering.
    WriterGone,
}

impl Answer {
    /// `None`: the writer dropped the submission unanswered.
    fn of(outcome: Option<Outcome>) -> Self {
        match outcome {
            Some(Ok(_)) => Self::Committed,
            Some(Err(refused)) => Self::Refused(refused.error),
            None => Self::WriterGone,
        }
    }
}

/// A submission handed to the writer, waiting for its answer.
#[derive(Debug)]
struct Submitted {
    sent: Sent,
    answer: oneshot::Receiver<Outcome>,
}

impl Submitted {
    /// Waits for the answer.
    async fn answer(self) -> (Sent, Answer) {
        (self.sent, Answer::of(self.answer.await.ok()))
    }
}

/// One UDP socket's logic (module docs).
struct Udp {
    cfg: InfluxConfig,
    intake: Intake,
    stats: Arc<SourceStats>,
    /// Health increments waiting for room in the queue.
    pending: BTreeMap<(String, u16), u64>,
    /// When to hand `pending` over without a datagram to carry it.
    retry_at: Option<i64>,
    warn: WarnLimit,
    /// Series keys parsed from datagrams.
    keys: KeyCache,
}

impl Udp {
    fn new(cfg: InfluxConfig, intake: Intake, stats: Arc<SourceStats>) -> Self {
        Self {
            keys: intake.key_cache(),
            cfg,
            intake,
            stats,
            pending: BTreeMap::new(),
            retry_at: None,
            warn: WarnLimit::default(),
        }
    }

    /// A datagram from `peer` at `now`: parsed, counted and handed over
    /// with the pending counts; the submission to wait for, if the queue
    /// took it.
    fn datagram(&mut self, now: i64, bytes: &[u8], peer: SocketAddr) -> Option<Submitted> {
        let pieces = split_datagram(bytes, self.cfg.max_line_bytes);
        let parsed = parse_pieces(bytes, &pieces, &self.cfg, &mut self.keys, now);
        if !parsed.errors.is_empty() {
            self.stats
                .lines_rejected
                .fetch_add(parsed.errors.len() as u64, Ordering::Relaxed);
            self.warn
                .rejected(now, &self.cfg.name, peer, &parsed.errors);
        }
        if parsed.lines_uncached > 0 {
            self.stats
                .add(&self.stats.lines_uncached, parsed.lines_uncached);
        }
        self.stats
            .string_fields_skipped
            .fetch_add(parsed.string_fields_skipped, Ordering::Relaxed);
        let mut per_origin: BTreeMap<&str, u64> = BTreeMap::new();
        for group in &parsed.readings {
            *per_origin.entry(&group.origin).or_default() += group.readings.len() as u64;
        }
        let charge = self.intake.budget().map(|budget| {
            let mut charge = Charge::new(budget.clone());
            charge.set(parsed.heap_bytes());
            charge
        });
        let sent = Sent {
            charge,
            lines: parsed.lines_accepted,
            readings: per_origin
                .into_iter()
                .map(|(o, n)| (o.to_owned(), n))
                .collect(),
            health: Vec::new(),
        };
        let work = chunk_work(parsed, &self.cfg);
        let submitted = self.submit(now, work, sent);
        // Counted last, so that a watcher of the stats sees the datagram
        // handled, submitted or dropped.
        self.stats.add(&self.stats.bytes, bytes.len() as u64);
        submitted
    }

    /// When to retry handing over pending counts (none pending: never).
    fn poll_retry(&self) -> Option<i64> {
        self.retry_at.filter(|_| !self.pending.is_empty())
    }

    /// Hands the pending counts over alone if their retry is due at `now`.
    fn handle_retry(&mut self, now: i64) -> Option<Submitted> {
        if self.poll_retry().is_none_or(|at| now < at) {
            return None;
        }
        self.submit(now, Work::default(), Sent::default())
    }

    /// Tries to hand `work` plus pending health counts to the journal.
    fn submit(&mut self, now: i64, mut work: Work, mut sent: Sent) -> Option<Submitted> {
        for ((origin, kind), n) in std::mem::take(&mut self.pending) {
            work.health.push((origin, kind, n));
        }
        self.retry_at = None;
        if work.is_empty() {
            return None;
        }
        sent.health = work.health.clone();
        match self.intake.try_submit(work) {
            Ok(answer) => Some(Submitted { sent, answer }),
            Err(_) => {
                self.lost(now, sent);
                None
            }
        }
    }

    /// The writer answered `sent` at `now`.
    fn answered(&mut self, now: i64, mut sent: Sent, answer: Answer) {
        // Answered: its readings are the journal's now (or lost), handed
        // back before the stats say the datagram is done.
        sent.charge = None;
        match answer {
            Answer::Committed => {
                let readings = sent.readings.iter().map(|(_, n)| n).sum();
                self.stats
                    .lines_accepted
                    .fetch_add(sent.lines, Ordering::Relaxed);
                self.stats.add(&self.stats.readings_accepted, readings);
            }
            Answer::Refused(e) => {
                tracing::debug!(source = %self.cfg.name, error = %e, "journal refused a datagram");
                self.lost(now, sent);
            }
            // The writer is gone: nothing more can be recorded.
            Answer::WriterGone => {
                let readings = sent.readings.iter().map(|(_, n)| n).sum();
                self.stats.add(&self.stats.dropped_readings, readings);
            }
        }
    }

    /// Counts a submission that was not committed at `now`, and keeps
    /// what it carried for the next one (or the retry).
    fn lost(&mut self, now: i64, sent: Sent) {
        let mut dropped = 0;
        for (origin, n) in sent.readings {
            dropped += n;
            self.pend(origin, health::DROPPED_QUEUE_FULL, n);
        }
        for (origin, kind, n) in sent.health {
            self.pend(origin, kind, n);
        }
        if !self.pending.is_empty() && self.retry_at.is_none() {
            self.retry_at = Some(ferry_clock::after(now, UDP_HEALTH_RETRY));
        }
        self.stats.add(&self.stats.dropped_readings, dropped);
    }

    fn pend(&mut self, origin: String, kind: u16, n: u64) {
        let known = self.pending.contains_key(&(origin.clone(), kind));
        let origin = if known || self.pending.len() < MAX_PENDING_ORIGINS {
            origin
        } else {
            self.cfg.name.clone()
        };
        *self.pending.entry((origin, kind)).or_default() += n;
    }
}

#[cfg(test)]
mod tests;
