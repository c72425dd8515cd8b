//! The UDP listener: each datagram is one chunk, handed over without
//! waiting; what cannot be handed over is counted and its counts ride along
//! later (module docs of [`super`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_clock::{Clock, SystemClock};
use ferry_proto::health;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::{
    InfluxConfig, KeyCache, MAX_PENDING_ORIGINS, SourceStats, UDP_HEALTH_RETRY, WarnLimit,
    chunk_work, parse_pieces, split_datagram,
};
use crate::intake::{Intake, SubmitError};
use crate::journal::{CommitReport, Work};
use crate::limits::Charge;

/// Reads line protocol datagrams from `socket` until `shutdown` completes.
pub async fn run_udp(
    socket: UdpSocket,
    cfg: InfluxConfig,
    intake: Intake,
    stats: Arc<SourceStats>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; 64 * 1024];
    // The receive buffer is held for the socket's life: charged to the
    // memory budget (whatever the bound: it is fixed) for as long.
    let _buf_charge = intake.budget().map(|budget| {
        let mut charge = Charge::new(budget.clone());
        charge.set(buf.len() as u64);
        charge
    });
    let clock = SystemClock;
    let mut udp = Udp {
        cfg: &cfg,
        clock: &clock,
        intake: &intake,
        stats: &stats,
        pending: BTreeMap::new(),
        in_flight: JoinSet::new(),
        warn: WarnLimit::default(),
        keys: intake.key_cache(),
    };
    let mut retry = tokio::time::interval(UDP_HEALTH_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, peer)) => udp.datagram(&buf[..n], peer),
                Err(e) => tracing::debug!(source = %cfg.name, error = %e, "UDP receive failed"),
            },
            Some(answer) = udp.in_flight.join_next(), if !udp.in_flight.is_empty() => {
                if let Ok((sent, result)) = answer {
                    udp.answered(sent, result);
                }
            }
            _ = retry.tick(), if !udp.pending.is_empty() => udp.submit(Work::default(), Sent::default()),
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

type Answer = (Sent, Result<Result<CommitReport, SubmitError>, ()>);

struct Udp<'a> {
    cfg: &'a InfluxConfig,
    clock: &'a dyn Clock,
    intake: &'a Intake,
    stats: &'a SourceStats,
    /// Health increments waiting for room in the queue.
    pending: BTreeMap<(String, u16), u64>,
    in_flight: JoinSet<Answer>,
    warn: WarnLimit,
    /// Series keys parsed from datagrams.
    keys: KeyCache,
}

impl Udp<'_> {
    fn datagram(&mut self, bytes: &[u8], peer: SocketAddr) {
        let pieces = split_datagram(bytes, self.cfg.max_line_bytes);
        let now = self.clock.now_ns();
        let parsed = parse_pieces(bytes, &pieces, self.cfg, &mut self.keys, now);
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
        let work = chunk_work(parsed, self.cfg);
        self.submit(work, sent);
        // Counted last, so that a watcher of the stats sees the datagram
        // handled, submitted or dropped.
        self.stats.add(&self.stats.bytes, bytes.len() as u64);
    }

    /// Tries to hand `work` plus pending health counts to the journal.
    fn submit(&mut self, mut work: Work, mut sent: Sent) {
        for ((origin, kind), n) in std::mem::take(&mut self.pending) {
            work.health.push((origin, kind, n));
        }
        if work.is_empty() {
            return;
        }
        sent.health = work.health.clone();
        match self.intake.try_submit(work) {
            Ok(answer) => {
                self.in_flight.spawn(async move {
                    let outcome = answer.await.map_err(|_| ());
                    (sent, outcome.map(|o| o.map_err(|r| r.error)))
                });
            }
            Err(_) => self.lost(sent),
        }
    }

    fn answered(&mut self, mut sent: Sent, result: Result<Result<CommitReport, SubmitError>, ()>) {
        // Answered: its readings are the journal's now (or lost), handed
        // back before the stats say the datagram is done.
        sent.charge = None;
        match result {
            Ok(Ok(_)) => {
                let readings = sent.readings.iter().map(|(_, n)| n).sum();
                self.stats
                    .lines_accepted
                    .fetch_add(sent.lines, Ordering::Relaxed);
                self.stats.add(&self.stats.readings_accepted, readings);
            }
            Ok(Err(e)) => {
                tracing::debug!(source = %self.cfg.name, error = %e, "journal refused a datagram");
                self.lost(sent);
            }
            // The writer is gone: nothing more can be recorded.
            Err(()) => {
                let readings = sent.readings.iter().map(|(_, n)| n).sum();
                self.stats.add(&self.stats.dropped_readings, readings);
            }
        }
    }

    /// Counts a submission that was not committed, and keeps what it
    /// carried for the next one.
    fn lost(&mut self, sent: Sent) {
        let mut dropped = 0;
        for (origin, n) in sent.readings {
            dropped += n;
            self.pend(origin, health::DROPPED_QUEUE_FULL, n);
        }
        for (origin, kind, n) in sent.health {
            self.pend(origin, kind, n);
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
