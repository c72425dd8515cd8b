//! What the node sends: the hello, then up to [`IN_FLIGHT`](super::IN_FLIGHT) reports oldest
//! first (read back from the log or from a journal batch) and heartbeats,
//! framed for the serial link; and when it next has work to do.

use alloc::vec::Vec;

use embedded_storage::nor_flash::NorFlash;
use ferry_proto::batch::Batch;
use ferry_proto::codec;
use ferry_proto::link::{DeviceHello, Heartbeat, LINK_VERSION, Report, Uplink, WindowReport};

use crate::link::frame;

use super::record::Record;
use super::resume::Fold;
use super::{IN_FLIGHT, JournalNode, Outgoing, Stored};

impl<F: NorFlash> JournalNode<F> {
    /// The next frame to send, written to `out` (at least
    /// [`crate::link::TX_BUFFER`] bytes). Order: hello, reports oldest
    /// first, heartbeat.
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut [u8]) -> Option<usize> {
        loop {
            let msg = self.next_message(now_ms)?;
            match frame(&msg, out) {
                Some(n) => return Some(n),
                None => self.stats.encode_errors += 1,
            }
        }
    }

    /// The next instant `poll` or `poll_transmit` has work, in uptime ms.
    pub fn next_due_ms(&self, now_ms: u64) -> u64 {
        let resend = u64::from(self.timers.resend_after_ms);
        let sample = self.sampler.next_due_ms();
        let fill = if self.outgoing.len() < IN_FLIGHT
            && self.next_to_load() < self.next_seq
            && !self.waiting_for_sync
        {
            now_ms
        } else {
            u64::MAX
        };
        self.outgoing
            .iter()
            .map(|o| o.sent_ms.map_or(0, |t| t + resend))
            .chain(self.hello_due_ms)
            .fold(self.heartbeat_due_ms.min(sample).min(fill), u64::min)
    }

    fn next_to_load(&self) -> u32 {
        self.outgoing
            .back()
            .map_or(self.acked + 1, |o| o.seq + 1)
            .max(self.acked + 1)
    }

    fn fill_outgoing(&mut self) {
        while !self.outgoing.is_full() {
            let seq = self.next_to_load();
            if seq >= self.next_seq {
                return;
            }
            let stored = if seq <= self.folded {
                self.read_from_journal(seq)
            } else {
                self.read_from_log(seq)
            };
            let Some((power_up, windows)) = stored else {
                // Cannot happen for what this node wrote. Counted; the link
                // stalls visibly rather than send out of order.
                self.stats.unsendable += 1;
                return;
            };
            // Where its windows lie. This power-up's reports wait for its
            // first sync (the gateway answers the hello with one), and what
            // follows them waits too, in order; an ended power-up's
            // estimate is the best anyone will know.
            let current = power_up == self.power_up;
            let Some(time) = self
                .clocks
                .iter()
                .find(|c| c.power_up == power_up)
                .filter(|c| !current || !c.syncs.is_empty())
                .and_then(|c| c.time_of(seq))
            else {
                // Not due again until a sync comes (no busy loop).
                self.waiting_for_sync = true;
                return;
            };
            // Not full (checked above).
            let _ = self.outgoing.push_back(Outgoing {
                seq,
                windows,
                time,
                sent_ms: None,
            });
        }
    }

    fn read_from_log(&mut self, seq: u32) -> Option<Stored> {
        let sector = self
            .index
            .iter()
            .position(|e| e.reports.is_some_and(|(lo, hi)| lo <= seq && seq <= hi))?;
        let mut found = None;
        self.log
            .for_each_record(sector as u32, |_, bytes| {
                if let Some(Record::Report(r)) = Record::decode(bytes)
                    && r.seq == seq
                {
                    found = Some((r.power_up, r.windows));
                }
            })
            .ok()?;
        found
    }

    fn read_from_journal(&mut self, seq: u32) -> Option<Stored> {
        for attempt in 0..2 {
            if let Some((_, w)) = self.batch_cache.iter().find(|(s, _)| *s == seq) {
                return Some(w.clone());
            }
            // The journal hands batches out oldest first, each once, until
            // released: read on to the batch that holds `seq`.
            loop {
                let batches = self.journal.next_to_send(0, false).ok()?;
                let Some((batch, body)) = batches.into_iter().next() else {
                    break;
                };
                let fold = self.folds.iter().find(|(b, _)| *b == batch)?.1.clone();
                if fold.last_seq() < seq {
                    continue;
                }
                self.batch_cache = self.split_batch(&fold, &body)?;
                break;
            }
            if attempt == 0 && !self.batch_cache.iter().any(|(s, _)| *s == seq) {
                // Behind us (a resend after a hello request): from the start.
                self.journal.release_in_flight();
                self.batch_cache.clear();
            }
        }
        None
    }

    /// A folded batch back into its link reports.
    fn split_batch(&self, fold: &Fold, body: &[u8]) -> Option<Vec<(u32, Stored)>> {
        let batch: Batch = codec::from_slice("Batch", body).ok()?;
        let mut aggregates = batch.aggregates.iter();
        let mut out = Vec::with_capacity(fold.reports.len());
        for (k, &(n, power_up)) in fold.reports.iter().enumerate() {
            let mut windows = heapless::Vec::new();
            for _ in 0..n {
                let a = aggregates.next()?;
                let key = batch.series.get(a.series as usize)?;
                let channel = self.series.iter().position(|s| s == key)? as u8;
                windows
                    .push(WindowReport {
                        channel,
                        start_ms: u64::try_from(a.start_ns / 1_000_000).ok()?,
                        len_ms: u32::try_from(a.len_ns / 1_000_000).ok()?,
                        count: u32::try_from(a.count).ok()?,
                        // Widened from f32 when journaled: narrowing is exact.
                        sum: a.sum as f32,
                        min: a.min as f32,
                        max: a.max as f32,
                        first: a.first as f32,
                        last: a.last as f32,
                    })
                    .ok()?;
            }
            out.push((fold.first_seq + k as u32, (power_up, windows)));
        }
        Some(out)
    }

    fn next_message(&mut self, now_ms: u64) -> Option<Uplink> {
        if self.hello_due_ms.is_some_and(|t| t <= now_ms) {
            self.hello_sent = true;
            self.hello_due_ms =
                (!self.heard_gateway).then(|| now_ms + u64::from(self.timers.hello_every_ms));
            return Some(Uplink::Hello(DeviceHello {
                link_version: LINK_VERSION,
                device_id: self.device_id.clone(),
                boot: self.record.epoch,
                firmware: self.firmware.clone(),
                uptime_ms: now_ms,
                channels: self.channels.clone(),
                power_up: self.power_up,
            }));
        }
        self.fill_outgoing();
        let resend = u64::from(self.timers.resend_after_ms);
        if let Some(o) = self
            .outgoing
            .iter_mut()
            .find(|o| o.sent_ms.is_none_or(|t| t + resend <= now_ms))
        {
            if o.sent_ms.is_some() {
                self.stats.resent += 1;
            }
            o.sent_ms = Some(now_ms);
            return Some(Uplink::Report(Report {
                seq: o.seq,
                windows: o.windows.clone(),
                time: o.time,
            }));
        }
        if self.heartbeat_due_ms <= now_ms {
            self.heartbeat_due_ms = now_ms + u64::from(self.timers.heartbeat_every_ms);
            return Some(Uplink::Heartbeat(self.heartbeat(now_ms)));
        }
        None
    }

    /// The heartbeat as it would be sent at `now_ms`: `queued` is what the
    /// node holds unacknowledged (saturating), so the gateway's floor
    /// `next_seq − queued − 1` is the highest acknowledged sequence.
    pub fn heartbeat(&self, now_ms: u64) -> Heartbeat {
        Heartbeat {
            uptime_ms: now_ms,
            dropped: self.drops.total(),
            queued: u16::try_from(self.unacked()).unwrap_or(u16::MAX),
            next_seq: self.next_seq,
            power_up: self.power_up,
        }
    }
}
