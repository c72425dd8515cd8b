//! What the gateway sends: received bytes are deframed and decoded into
//! downlink messages, and each is applied — acks release reports from the
//! log and the journal, time syncs fix this power-up's clock, configs are
//! scheduled on the sampler and hello requests put everything in flight
//! again. Each returns a [`JournalEvent`](super::JournalEvent) saying what it did.

use embedded_storage::nor_flash::NorFlash;
use ferry_agent::journal::Work;
use ferry_proto::codec;
use ferry_proto::link::{Downlink, LinkAck, TimeSync};

use super::{JournalEvent, JournalNode, clock_mut, ms_to_ns};

impl<F: NorFlash> JournalNode<F> {
    /// Feeds one received byte; returns what a completed frame did.
    pub fn handle_rx(&mut self, now_ms: u64, byte: u8) -> Option<JournalEvent> {
        let event = match self.deframer.push(byte)? {
            Ok(payload) => match codec::from_slice::<Downlink>("Downlink", payload) {
                Ok(msg) => self.handle_downlink(now_ms, msg),
                Err(_) => {
                    self.stats.bad_frames += 1;
                    JournalEvent::BadFrame
                }
            },
            Err(_) => {
                self.stats.bad_frames += 1;
                JournalEvent::BadFrame
            }
        };
        Some(event)
    }

    /// Handles one downlink message.
    pub fn handle_downlink(&mut self, now_ms: u64, msg: Downlink) -> JournalEvent {
        if !self.heard_gateway {
            self.heard_gateway = true;
            if self.hello_sent {
                self.hello_due_ms = None;
            }
        }
        match msg {
            Downlink::Ack(ack) => self.handle_ack(now_ms, ack),
            Downlink::Config(config) => {
                if self.sampler.apply_config(config).is_err() {
                    self.stats.configs_rejected += 1;
                }
                JournalEvent::Config(config)
            }
            Downlink::HelloRequest(()) => {
                self.hello_due_ms = Some(now_ms);
                for o in self.outgoing.iter_mut() {
                    o.sent_ms = None;
                }
                JournalEvent::HelloRequested
            }
            Downlink::TimeSync(sync) => self.handle_time_sync(now_ms, sync),
        }
    }

    fn handle_time_sync(&mut self, now_ms: u64, sync: TimeSync) -> JournalEvent {
        let uptime = i64::try_from(sync.uptime_ms).ok();
        let Some(up) =
            uptime.filter(|_| sync.power_up == self.power_up && sync.uptime_ms <= now_ms)
        else {
            return JournalEvent::StaleTimeSync(sync);
        };
        let sample = sync.wall_ms.saturating_sub(up);
        let current = self.power_up;
        let next_seq = self.next_seq;
        let first = clock_mut(&mut self.clocks, current).syncs.is_empty();
        if clock_mut(&mut self.clocks, current).sync(next_seq, sample) {
            let zero = clock_mut(&mut self.clocks, current)
                .zero()
                .unwrap_or(sample);
            let mut changed = alloc::vec![current];
            if first {
                // Earlier power-ups nothing placed (a device that never met
                // a gateway): each ended where the next began.
                let mut next_zero = zero;
                for c in self
                    .clocks
                    .iter_mut()
                    .rev()
                    .filter(|c| c.power_up < current)
                {
                    match c.zero() {
                        Some(z) => next_zero = z,
                        None => {
                            let z = next_zero.saturating_sub(c.end_ms as i64);
                            c.estimate = Some(z);
                            next_zero = z;
                            changed.push(c.power_up);
                        }
                    }
                }
            }
            for p in changed {
                if self.log_clock(p).is_err() {
                    self.stats.journal_errors += 1;
                }
            }
        }
        self.waiting_for_sync = false;
        let zero = clock_mut(&mut self.clocks, current)
            .zero()
            .unwrap_or(sample);
        JournalEvent::TimeSynced {
            wall_at_zero_ms: zero,
        }
    }

    fn handle_ack(&mut self, now_ms: u64, ack: LinkAck) -> JournalEvent {
        if ack.boot != self.record.epoch || ack.up_to >= self.next_seq {
            self.stats.stale_acks += 1;
            return JournalEvent::StaleAck(ack);
        }
        let released = ack.up_to.saturating_sub(self.acked);
        self.acked = self.acked.max(ack.up_to);
        self.stats.acked += released;
        while self.outgoing.front().is_some_and(|o| o.seq <= self.acked) {
            self.outgoing.pop_front();
        }
        // Once the gateway has everything the journal holds, one commit
        // empties it.
        if self
            .folds
            .last()
            .is_some_and(|(_, f)| f.last_seq() <= self.acked)
        {
            let work = Work {
                acks: self.folds.iter().map(|(b, _)| (*b, true)).collect(),
                ..Work::default()
            };
            match self.journal.commit(work, ms_to_ns(now_ms)) {
                Ok(_) => {
                    self.folds.clear();
                    self.batch_cache.clear();
                }
                // Kept; the next fold or ack tries again.
                Err(_) => self.stats.journal_errors += 1,
            }
        }
        JournalEvent::Acked {
            up_to: ack.up_to,
            released,
        }
    }
}
