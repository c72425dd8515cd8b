//! The outbox: handing sealed batches out, taking them back, removing them
//! when acknowledged.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use ferry_proto::batch::{Batch, HealthRecord};
use redb::{ReadableDatabase, ReadableTable};

use super::rows::OutboxMeta;

use super::*;

impl Journal {
    /// Removes a batch from the outbox. With `dropped_kind`, its readings are
    /// counted as dropped per origin, and its health records are kept for
    /// the next batch (a count is never lost with the batch carrying it).
    /// Returns the batch's readings. A missing batch (acked twice) is a no-op.
    pub(super) fn remove_batch(
        &mut self,
        txn: &redb::WriteTransaction,
        seq: u64,
        dropped_kind: Option<u16>,
    ) -> Result<u64, CommitError> {
        let mut outbox = txn.open_table(OUTBOX)?;
        let mut metas = txn.open_table(OUTBOX_META)?;
        let key = layout::id_key(seq);
        let Some(body) = outbox.remove(key.as_slice())? else {
            return Ok(0);
        };
        let body_len = body.value().len() as u64;
        let batch_health: Vec<HealthRecord> = if dropped_kind.is_some() {
            decode::<Batch>("Batch", &self.plain(seq, body.value())?)?.health
        } else {
            Vec::new()
        };
        drop(body);
        // A salvaged batch's seq is not one of this epoch's: a drop names
        // no batch (0), and its own records' tags (of its epoch) go too.
        let salvaged = self.salvaged.remove(&seq).is_some();
        if salvaged {
            txn.open_table(SALVAGED)?.remove(key.as_slice())?;
        }
        let tag = if salvaged { 0 } else { seq };
        if let Some(sealed) = self.outbox.remove(&seq) {
            self.outbox_readings -= sealed.readings.min(self.outbox_readings);
        }
        let meta = metas.remove(key.as_slice())?.map(|m| {
            (
                m.value().len() as u64,
                decode::<OutboxMeta>("OutboxMeta", m.value()),
            )
        });
        let (meta_len, meta) = match meta {
            Some((len, m)) => (len, m?),
            None => {
                return Err(CommitError::Corrupt(alloc::format!(
                    "batch {seq} has no outbox_meta row"
                )));
            }
        };
        self.bytes -= (body_len + meta_len).min(self.bytes);
        // Its health records leave the journal with it (or, dropped, are
        // held again below).
        for h in &meta.health {
            let held = self.held_health.entry(h.kind).or_default();
            *held = held.saturating_sub(h.count);
        }
        if let Some(kind) = dropped_kind {
            let mut health_table = txn.open_table(HEALTH)?;
            let mut dropped = txn.open_table(DROPPED)?;
            if meta.origins.iter().all(|o| o.readings == 0) {
                // No readings to count, but the drop still names the batch
                // (invariant 9).
                add_count(
                    &mut health_table,
                    &layout::count_key("", kind, Some(tag)),
                    0,
                )?;
            }
            for o in &meta.origins {
                add_count(
                    &mut health_table,
                    &layout::count_key(&o.origin, kind, Some(tag)),
                    o.readings,
                )?;
                *self.held_health.entry(kind).or_default() += o.readings;
                add_count(
                    &mut dropped,
                    &layout::count_key(&o.origin, kind, None),
                    o.readings,
                )?;
            }
            // The dropped batch's own health records travel on in a later
            // batch, keeping their batch tags.
            for h in &batch_health {
                add_count(
                    &mut health_table,
                    &layout::count_key(&h.source, h.kind, Some(if salvaged { 0 } else { h.batch })),
                    h.count,
                )?;
                *self.held_health.entry(h.kind).or_default() += h.count;
            }
            self.health_pending = true;
        }
        Ok(meta.readings)
    }

    /// Hands out up to `max_bytes` of batches that are not in flight, oldest
    /// (or newest) first, and marks them in flight. At least one batch is
    /// returned if any is waiting.
    pub fn next_to_send(
        &mut self,
        max_bytes: u64,
        newest_first: bool,
    ) -> Result<Vec<(u64, Vec<u8>)>, CommitError> {
        let stored = self.next_to_ship(max_bytes, newest_first)?;
        let mut out = Vec::with_capacity(stored.len());
        for b in stored {
            let plain = if b.codec == 0 {
                b.body
            } else {
                let mut row = Vec::with_capacity(b.body.len() + 1);
                row.push(b.codec);
                row.extend_from_slice(&b.body);
                self.plain(b.seq, &row)?
            };
            out.push((b.seq, plain));
        }
        Ok(out)
    }

    /// Like [`Journal::next_to_send`], but the batches as stored (maybe
    /// compressed), `max_bytes` counting stored bytes: what the shipper
    /// sends without re-encoding.
    pub fn next_to_ship(
        &mut self,
        max_bytes: u64,
        newest_first: bool,
    ) -> Result<Vec<StoredBatch>, CommitError> {
        let txn = self.db.begin_read()?;
        let outbox = txn.open_table(OUTBOX)?;
        let out = if newest_first {
            pick(
                outbox.iter()?.rev(),
                &self.in_flight,
                &self.salvaged,
                max_bytes,
            )?
        } else {
            pick(outbox.iter()?, &self.in_flight, &self.salvaged, max_bytes)?
        };
        for b in &out {
            self.in_flight.insert(b.seq);
        }
        Ok(out)
    }

    /// Hands these batches out again (a transient rejection).
    pub fn release(&mut self, seqs: &[u64]) {
        for seq in seqs {
            self.in_flight.remove(seq);
        }
    }

    /// Forgets which batches are in flight (the connection was lost): they
    /// will be handed out again.
    pub fn release_in_flight(&mut self) {
        self.in_flight.clear();
    }
}

pub(super) type OutboxEntry<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

pub(super) fn pick<'a>(
    entries: impl Iterator<Item = OutboxEntry<'a>>,
    in_flight: &BTreeSet<u64>,
    salvaged: &BTreeMap<u64, u64>,
    max_bytes: u64,
) -> Result<Vec<StoredBatch>, CommitError> {
    let mut out = Vec::new();
    let mut total = 0u64;
    for entry in entries {
        let (seq, row) = entry?;
        let seq = layout::id_of("outbox", seq.value())?;
        if in_flight.contains(&seq) {
            continue;
        }
        let Some((&codec, body)) = row.value().split_first() else {
            return Err(CommitError::Corrupt(alloc::format!(
                "batch {seq}: empty row"
            )));
        };
        if !out.is_empty() && total + body.len() as u64 > max_bytes {
            break;
        }
        total += body.len() as u64;
        out.push(StoredBatch {
            seq,
            wire_seq: salvaged.get(&seq).copied().unwrap_or(seq),
            codec,
            body: body.to_vec(),
        });
    }
    Ok(out)
}
