//! The batch being filled ([`Pending`], mirrored from the `pending` rows)
//! and sealing it into the outbox.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use ferry_proto::batch::{Batch, HealthRecord, Reading, ReadingBlock};
use redb::ReadableTable;

use super::rows::{KindCount, OriginCount, OutboxMeta, PendingRow};

use super::*;

/// In-memory copy of the batch being filled (mirrors the `pending` rows).
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) index: Dictionary,
    pub(super) batch: Batch,
    /// Raw readings by series index in `batch.series`.
    pub(super) raw: Vec<Vec<Reading>>,
    pub(super) origins: BTreeMap<String, u64>,
    pub(super) count: usize,
    pub(super) since_ns: Option<i64>,
    pub(super) rows: Vec<u64>,
}

impl Pending {
    /// Adds a row read back from the `pending` table.
    pub(super) fn add_row(&mut self, row: PendingRow) -> Result<(), CommitError> {
        let mut raw = Vec::with_capacity(row.batch.blocks.len());
        for block in &row.batch.blocks {
            let readings = block
                .readings()
                .map_err(|e| CommitError::Corrupt(alloc::format!("pending row: {e}")))?;
            raw.push((block.series, readings));
        }
        self.absorb(row, raw)
    }

    /// Adds a commit's content: `raw` readings by index into `row`'s series
    /// (its blocks are ignored), its aggregates and origins.
    pub(super) fn absorb(
        &mut self,
        row: PendingRow,
        raw: Vec<(u32, Vec<Reading>)>,
    ) -> Result<(), CommitError> {
        let PendingRow {
            batch,
            origins,
            written_ns,
        } = row;
        // The row's dictionary, moved into the batch's.
        let to_batch: Vec<u32> = batch
            .series
            .into_iter()
            .map(|key| self.index.intern(&mut self.batch.series, key))
            .collect();
        let unknown = || CommitError::Corrupt("pending row references an unknown series".into());
        for (series, readings) in raw {
            let i = *to_batch.get(series as usize).ok_or_else(unknown)? as usize;
            self.count += readings.len();
            if self.raw.len() <= i {
                self.raw.resize_with(i + 1, Vec::new);
            }
            let slot = &mut self.raw[i];
            if slot.is_empty() {
                *slot = readings;
            } else {
                slot.extend(readings);
            }
        }
        for mut agg in batch.aggregates {
            agg.series = *to_batch.get(agg.series as usize).ok_or_else(unknown)?;
            self.batch.aggregates.push(agg);
            self.count += 1;
        }
        for o in origins {
            *self.origins.entry(o.origin).or_default() += o.readings;
        }
        self.since_ns = Some(self.since_ns.map_or(written_ns, |s| s.min(written_ns)));
        Ok(())
    }
}

impl Journal {
    /// Seals the pending rows and health increments into the next batch.
    pub(super) fn seal(
        &mut self,
        txn: &redb::WriteTransaction,
        now: i64,
    ) -> Result<Option<u64>, CommitError> {
        let mut pending = core::mem::take(&mut self.pending);
        let mut batch = core::mem::take(&mut pending.batch);
        for (series, mut readings) in core::mem::take(&mut pending.raw).into_iter().enumerate() {
            if readings.is_empty() {
                continue;
            }
            // Readings of a series may come from several commits: order them
            // so the block's deltas stay small.
            readings.sort_by_key(|r| r.ts_ns);
            batch
                .blocks
                .push(ReadingBlock::encode(series as u32, &readings));
        }
        {
            let mut health_table = txn.open_table(HEALTH)?;
            for entry in health_table.iter()? {
                let (k, v) = entry?;
                let (source, kind, dropped_batch) = layout::count_key_of("health", k.value())?;
                batch.health.push(HealthRecord {
                    source,
                    kind,
                    count: count_of("health", v.value())?,
                    batch: dropped_batch.unwrap_or_default(),
                });
            }
            health_table.retain(|_, _| false)?;
        }
        self.health_pending = false;
        if batch.blocks.is_empty() && batch.aggregates.is_empty() && batch.health.is_empty() {
            return Ok(None);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        batch.seq = seq;
        batch.created_ns = now;
        batch.epoch = self.epoch;
        let readings =
            batch.reading_count() as u64 + batch.aggregates.iter().map(|a| a.count).sum::<u64>();
        let health = kind_counts(batch.health.iter().map(|h| (h.kind, h.count)));
        let plain = encode(&batch)?;
        drop(batch);
        let mut body = Vec::new();
        match self
            .compressor
            .as_ref()
            .and_then(|c| Some((c.codec(), c.compress(&plain)?)))
        {
            Some((codec, packed)) => {
                body.reserve_exact(packed.len() + 1);
                body.push(codec);
                body.extend_from_slice(&packed);
            }
            None => {
                body.reserve_exact(plain.len() + 1);
                body.push(0);
                body.extend_from_slice(&plain);
            }
        }
        drop(plain);
        let meta = encode(&OutboxMeta {
            bytes: body.len() as u64,
            readings,
            created_ns: now,
            origins: pending
                .origins
                .iter()
                .map(|(origin, &readings)| OriginCount {
                    origin: origin.clone(),
                    readings,
                })
                .collect(),
            health,
        })?;
        let key = layout::id_key(seq);
        txn.open_table(OUTBOX)?
            .insert(key.as_slice(), body.as_slice())?;
        txn.open_table(OUTBOX_META)?
            .insert(key.as_slice(), meta.as_slice())?;
        self.outbox.insert(
            seq,
            Sealed {
                readings,
                created_ns: now,
            },
        );
        self.outbox_readings += readings;
        self.bytes += (body.len() + meta.len()) as u64;
        let mut rows = txn.open_table(PENDING)?;
        for id in &pending.rows {
            if let Some(old) = rows.remove(layout::id_key(*id).as_slice())? {
                self.bytes -= (old.value().len() as u64).min(self.bytes);
            }
        }
        Ok(Some(seq))
    }
}

/// `counts` summed per kind, ascending.
pub(super) fn kind_counts(counts: impl Iterator<Item = (u16, u64)>) -> Vec<KindCount> {
    let mut sums: BTreeMap<u16, u64> = BTreeMap::new();
    for (kind, count) in counts {
        *sums.entry(kind).or_default() += count;
    }
    sums.into_iter()
        .map(|(kind, count)| KindCount { kind, count })
        .collect()
}
