//! The MQTT source's logic, sans-IO: [`Pipeline`] decides what to commit
//! (batches of the messages that arrived while the previous batch was
//! being committed), when to acknowledge which packets (after the commit
//! holding them), when to resubmit a refused batch; [`Reconnect`] decides
//! when to reconnect to the broker and when to log it. Time is a `now` in
//! ns ([`ferry_clock`]); the tokio/rumqttc code in [`super`] only moves
//! packets, answers and timers.

use std::collections::VecDeque;
use std::time::Duration;

use ferry_clock::Backoff;
use ferry_proto::health;
use rumqttc::{Publish, QoS};

use super::dedupe::{Dedupe, Verdict, message_hash};
use super::payload::{Decoded, Malformed, decode};
use super::{MqttConfig, MqttStats};
use crate::intake::{Refused, SubmitError};
use crate::journal::Work;
use crate::sources::conn::LogLimit;
use crate::sources::line::KeyCache;

/// Most messages per journal submission.
pub const MAX_BATCH: usize = 4096;
/// The first pause before resubmitting a refused batch, and the pause
/// before retrying acks the client's queue had no room for.
pub const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause before resubmitting a refused batch.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The first pause before reconnecting to the broker.
pub const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause before reconnecting.
pub const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);
/// Most connection-error log lines per this period.
pub const WARN_PERIOD: Duration = Duration::from_secs(10);

/// A batch being built or committed: the messages to acknowledge after
/// its commit, the marks it carries and what to count once committed.
#[derive(Default)]
struct Batch {
    acks: Vec<Publish>,
    marks: Vec<u16>,
    messages: u64,
    readings: u64,
    strings: u64,
    malformed: Vec<Malformed>,
}

/// The batch whose work is with the journal, or waits to go back.
struct Committing {
    batch: Batch,
    /// Pauses between resubmissions of this batch.
    pause: Backoff,
    /// Refused: its work, and when to submit it again.
    retry: Option<(i64, Work)>,
}

/// What the client did with an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckSent {
    /// Queued for the broker.
    Queued,
    /// The client's request queue is full: try again shortly.
    Full,
    /// The event loop is gone (stopping): the broker redelivers, and the
    /// marks recognise the messages.
    Gone,
}

/// Whether the source goes on after a journal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// The agent is stopping.
    Stop,
}

/// Messages in, journal work and acks out (module docs).
pub struct Pipeline {
    cfg: MqttConfig,
    stats: std::sync::Arc<MqttStats>,
    keys: KeyCache,
    dedupe: Dedupe,
    building: Batch,
    /// The work of `building`.
    work: Work,
    committing: Option<Committing>,
    /// Acks to hand the client, oldest first.
    unsent: VecDeque<Publish>,
    /// The client had no room for an ack: when to try again.
    ack_retry_at: Option<i64>,
}

impl Pipeline {
    /// For source `cfg` with its journaled marks loaded in `dedupe`.
    pub fn new(cfg: MqttConfig, dedupe: Dedupe, stats: std::sync::Arc<MqttStats>) -> Self {
        Self {
            cfg,
            stats,
            keys: KeyCache::default(),
            dedupe,
            building: Batch::default(),
            work: Work::default(),
            committing: None,
            unsent: VecDeque::new(),
            ack_retry_at: None,
        }
    }

    /// Whether the batch being built takes more messages (else the
    /// connection is not read: the broker holds them).
    pub fn has_room(&self) -> bool {
        self.building.acks.len() < MAX_BATCH
    }

    /// A PUBLISH arrived at `now`.
    pub fn handle_publish(&mut self, now: i64, p: Publish) {
        if p.qos != QoS::AtMostOnce {
            let hash = message_hash(&p.topic, &p.payload);
            match self.dedupe.receive(p.pkid, p.dup, hash) {
                Verdict::AckNow => {
                    self.stats.add(&self.stats.redeliveries_skipped, 1);
                    self.unsent.push_back(p);
                    return;
                }
                Verdict::AckAfterCommit => {
                    self.stats.add(&self.stats.redeliveries_skipped, 1);
                    self.building.acks.push(p);
                    return;
                }
                Verdict::Store => {
                    self.work.marks.push(self.dedupe.record(p.pkid, hash));
                    self.building.marks.push(p.pkid);
                }
            }
        }
        let decoded = if p.payload.len() > self.cfg.max_message_bytes {
            Decoded {
                malformed: vec![Malformed::TooLarge],
                ..Decoded::default()
            }
        } else {
            decode(&self.cfg, &mut self.keys, &p.topic, &p.payload, now)
        };
        let batch = &mut self.building;
        batch.messages += 1;
        batch.readings += decoded
            .readings
            .iter()
            .map(|g| g.readings.len() as u64)
            .sum::<u64>();
        batch.strings += decoded.strings_skipped;
        if !decoded.malformed.is_empty() {
            let n = decoded.malformed.len() as u64;
            match self
                .work
                .health
                .iter_mut()
                .find(|(_, kind, _)| *kind == health::REJECTED_INPUT)
            {
                Some(h) => h.2 += n,
                None => self
                    .work
                    .health
                    .push((self.cfg.name.clone(), health::REJECTED_INPUT, n)),
            }
            batch.malformed.extend(decoded.malformed);
        }
        if decoded.strings_skipped > 0 {
            self.work.health.push((
                self.cfg.name.clone(),
                health::SKIPPED_STRING_FIELDS,
                decoded.strings_skipped,
            ));
        }
        self.work.readings.extend(decoded.readings);
        if p.qos != QoS::AtMostOnce {
            batch.acks.push(p);
        }
    }

    /// The work to submit at `now`, if any: the batch built so far when
    /// none is being committed, or the refused batch once its pause is
    /// over. Its answer goes to [`handle_answer`](Self::handle_answer).
    pub fn poll_submit(&mut self, now: i64) -> Option<Work> {
        match &mut self.committing {
            Some(c) => c.retry.take_if(|(at, _)| *at <= now).map(|(_, work)| work),
            None if self.building.acks.is_empty() && self.work.is_empty() => None,
            None => {
                self.committing = Some(Committing {
                    batch: std::mem::take(&mut self.building),
                    pause: Backoff::new(FIRST_RETRY_PAUSE, MAX_RETRY_PAUSE),
                    retry: None,
                });
                Some(std::mem::take(&mut self.work))
            }
        }
    }

    /// The journal answered the submitted work at `now`.
    pub fn handle_answer(&mut self, now: i64, answer: Result<(), Refused>) -> Flow {
        let Some(mut c) = self.committing.take() else {
            return Flow::Continue;
        };
        match answer {
            Ok(()) => self.committed(c.batch),
            Err(Refused {
                error: SubmitError::Shutdown,
                ..
            }) => return Flow::Stop,
            Err(Refused {
                error,
                work: Some(work),
            }) => {
                // Full: the same batch again after a pause.
                tracing::debug!(source = %self.cfg.name, %error, "journal refused a batch; pausing");
                c.retry = Some((c.pause.next_at(now), *work));
                self.committing = Some(c);
            }
            Err(Refused { error, work: None }) => {
                // Not acknowledged: the broker redelivers these messages
                // on the next connection.
                tracing::error!(source = %self.cfg.name, %error, messages = c.batch.acks.len(),
                    "journal commit failed; messages left unacknowledged");
                self.dedupe.forget(&c.batch.marks);
            }
        }
        Flow::Continue
    }

    fn committed(&mut self, batch: Batch) {
        self.dedupe.committed(&batch.marks);
        let s = &self.stats;
        s.add(&s.messages, batch.messages);
        s.add(&s.readings_accepted, batch.readings);
        s.add(&s.string_fields_skipped, batch.strings);
        for m in batch.malformed {
            let i = Malformed::ALL.iter().position(|r| *r == m).unwrap_or(0);
            s.add(&s.malformed[i], 1);
        }
        self.unsent.extend(batch.acks);
    }

    /// Hands the waiting acks, oldest first, to `try_ack` at `now` until
    /// one does not go (a full queue: tried again
    /// [`FIRST_RETRY_PAUSE`] later; a gone client: dropped).
    pub fn flush_acks(&mut self, now: i64, mut try_ack: impl FnMut(&Publish) -> AckSent) {
        self.ack_retry_at = None;
        while let Some(p) = self.unsent.front() {
            match try_ack(p) {
                AckSent::Queued => {
                    self.unsent.pop_front();
                }
                AckSent::Full => {
                    self.ack_retry_at = Some(ferry_clock::after(now, FIRST_RETRY_PAUSE));
                    break;
                }
                AckSent::Gone => {
                    self.unsent.clear();
                    break;
                }
            }
        }
    }

    /// When to act without a message or an answer: a refused batch's
    /// resubmission, or acks to retry.
    pub fn poll_wake(&self) -> Option<i64> {
        let retry = self
            .committing
            .as_ref()
            .and_then(|c| c.retry.as_ref().map(|(at, _)| *at));
        let acks = self.ack_retry_at.filter(|_| !self.unsent.is_empty());
        retry.into_iter().chain(acks).min()
    }
}

/// The connection to the broker: when to reconnect after an error
/// (doubling pauses from [`FIRST_RECONNECT_PAUSE`] to
/// [`MAX_RECONNECT_PAUSE`], from the first again once connected) and
/// whether to log the error (once per [`WARN_PERIOD`], with the count held
/// back).
pub struct Reconnect {
    pause: Backoff,
    warn: LogLimit,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            pause: Backoff::new(FIRST_RECONNECT_PAUSE, MAX_RECONNECT_PAUSE),
            warn: LogLimit::new(WARN_PERIOD),
        }
    }
}

impl Reconnect {
    /// The broker accepted the connection.
    pub fn handle_connected(&mut self) {
        self.pause.reset();
    }

    /// The connection failed at `now`: when to poll it again (which
    /// reconnects), and `Some(errors held back since the last log line)`
    /// when this one is to be logged.
    pub fn handle_error(&mut self, now: i64) -> (i64, Option<u64>) {
        (self.pause.next_at(now), self.warn.event(now))
    }
}

#[cfg(test)]
mod tests;
