//! One group commit: [`Journal::commit`]'s transaction, phase by phase.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use ferry_proto::batch::{Batch, Reading, ReadingBlock};
use ferry_proto::health;
use ferry_proto::series::SeriesKey;
use redb::ReadableTable;

use super::rows::{OriginCount, PendingRow};

use layout::Table;

use crate::window::{Added, LatePolicy};

use super::*;

/// What one commit builds before it decides where its content goes: the
/// pending row (raw readings, closed windows, device windows), the series
/// whose open windows changed, and the health increments.
struct Row {
    row: PendingRow,
    index: Dictionary,
    origins: BTreeMap<String, u64>,
    raw: Vec<(u32, Vec<Reading>)>,
    touched: BTreeSet<SeriesKey>,
    health: Vec<(String, u16, u64)>,
}

impl Row {
    fn new(now: i64, health: Vec<(String, u16, u64)>) -> Self {
        Self {
            row: PendingRow {
                batch: Batch::default(),
                origins: Vec::new(),
                written_ns: now,
            },
            index: Dictionary::default(),
            origins: BTreeMap::new(),
            raw: Vec::new(),
            touched: BTreeSet::new(),
            health,
        }
    }

    /// Readings and aggregates in the row.
    fn count(&self) -> usize {
        self.raw.iter().map(|(_, r)| r.len()).sum::<usize>() + self.row.batch.aggregates.len()
    }
}

impl Journal {
    /// The transaction of [`Journal::commit`], phase by phase. Memory may run
    /// ahead of the disk when it fails: the caller reloads.
    pub(super) fn commit_inner(
        &mut self,
        work: Work,
        now: i64,
    ) -> Result<CommitReport, CommitError> {
        let Work {
            readings,
            reports,
            health,
            device_dropped,
            acks,
            marks,
        } = work;
        let mut report = CommitReport::default();
        let mut row = Row::new(now, health);
        let txn = self.db.begin_write()?;
        self.add_readings(&mut row, readings, now, &mut report);
        add_device_reports(&txn, &mut row, &reports, &mut report)?;
        count_device_drops(&txn, &mut row, &device_dropped)?;
        self.close_windows(&mut row, now);
        if !marks.is_empty() {
            let mut table = txn.open_table(SOURCE_MARKS)?;
            for (key, value) in &marks {
                table.insert(key.as_slice(), value.as_slice())?;
            }
        }
        let mut wrote = !acks.is_empty()
            || !marks.is_empty()
            || !row.health.is_empty()
            || !reports.is_empty()
            || !device_dropped.is_empty();
        wrote |= self.write_windows(&txn, &row)?;
        self.write_health(&txn, &row)?;
        self.apply_acks(&txn, &acks, &mut report)?;
        wrote |= self.place_row(&txn, row, now, &mut report)?;
        wrote |= self.enforce_budget(&txn, &mut report)?;
        if wrote {
            let mut meta = txn.open_table(META)?;
            for (name, value) in [
                ("next_seq", self.next_seq),
                ("next_row", self.next_row),
                ("bytes", self.bytes),
            ] {
                meta.insert(name.as_bytes(), layout::u64_value(value).as_slice())?;
            }
            drop(meta);
            txn.commit()?;
            report.wrote = true;
        } else {
            txn.abort()?;
        }
        Ok(report)
    }

    /// Raw readings into the row; readings of aggregated series into their
    /// windows (attributed to their origin when the window closes), late
    /// ones by the rule's policy.
    fn add_readings(
        &mut self,
        row: &mut Row,
        readings: Vec<SeriesReadings>,
        now: i64,
        report: &mut CommitReport,
    ) {
        for group in readings {
            let SeriesReadings {
                series,
                origin,
                readings,
            } = group;
            let total = readings.len() as u64;
            let mut raw: Vec<Reading> = Vec::new();
            let mut late_dropped = 0u64;
            match self.rule_for(&series) {
                None => raw = readings,
                Some(rule) => {
                    for r in &readings {
                        match self
                            .aggregator
                            .add(&series, &origin, rule, r.ts_ns, r.value, now)
                        {
                            Added::Window => {}
                            Added::Late(LatePolicy::Raw) => raw.push(*r),
                            Added::Late(LatePolicy::Drop) => late_dropped += 1,
                        }
                    }
                    row.touched.insert(series.clone());
                }
            }
            report.accepted += total - late_dropped;
            report.late_dropped += late_dropped;
            if late_dropped > 0 {
                row.health
                    .push((origin.clone(), health::DROPPED_LATE, late_dropped));
            }
            if !raw.is_empty() {
                let i = row.index.intern(&mut row.row.batch.series, series);
                *row.origins.entry(origin).or_default() += raw.len() as u64;
                row.raw.push((i, raw));
            }
        }
    }

    /// Windows due at `now` close into the row.
    fn close_windows(&mut self, row: &mut Row, now: i64) {
        let closed = self.aggregator.close_due(now, |k| {
            row.touched.insert(k.clone());
        });
        for c in closed {
            let i = row.index.intern(&mut row.row.batch.series, c.series);
            row.row.batch.aggregates.push(c.window.to_aggregate(i));
            *row.origins.entry(c.origin).or_default() += c.window.count;
        }
    }

    /// The open windows of touched series, rewritten (or removed when none
    /// is left open). True if any was.
    fn write_windows(
        &mut self,
        txn: &redb::WriteTransaction,
        row: &Row,
    ) -> Result<bool, CommitError> {
        let mut windows = txn.open_table(WINDOWS)?;
        for key in &row.touched {
            let k = encode(key)?;
            let old = windows
                .get(k.as_slice())?
                .map_or(0, |v| v.value().len() as u64);
            match self.aggregator.state(key) {
                Some(state) => {
                    let v = encode(state)?;
                    self.bytes = self.bytes - old.min(self.bytes) + v.len() as u64;
                    windows.insert(k.as_slice(), v.as_slice())?;
                }
                None => {
                    self.bytes -= old.min(self.bytes);
                    windows.remove(k.as_slice())?;
                }
            }
        }
        Ok(!row.touched.is_empty())
    }

    /// Health increments into `health` (the next batch carries them); late
    /// drops also into the cumulative `dropped`.
    fn write_health(&mut self, txn: &redb::WriteTransaction, row: &Row) -> Result<(), CommitError> {
        let mut health_table = txn.open_table(HEALTH)?;
        for (origin, kind, count) in &row.health {
            if *count == 0 {
                continue;
            }
            add_count(
                &mut health_table,
                &layout::count_key(origin, *kind, Some(0)),
                *count,
            )?;
            *self.held_health.entry(*kind).or_default() += *count;
            self.health_pending = true;
        }
        let mut dropped = txn.open_table(DROPPED)?;
        for (origin, kind, count) in &row.health {
            // Counted where `status` shows them: losses the journal itself
            // decided (late) or that sources report only through it.
            if matches!(
                *kind,
                health::DROPPED_LATE
                    | health::REJECTED_TIMESTAMP
                    | health::DROPPED_KERNEL
                    | health::DROPPED_CORRUPT_JOURNAL
            ) {
                add_count(
                    &mut dropped,
                    &layout::count_key(origin, *kind, None),
                    *count,
                )?;
            }
        }
        Ok(())
    }

    /// The collector's answers: delivered batches leave the outbox, rejected
    /// ones are counted as dropped (invariant 3).
    fn apply_acks(
        &mut self,
        txn: &redb::WriteTransaction,
        acks: &[(u64, bool)],
        report: &mut CommitReport,
    ) -> Result<(), CommitError> {
        for &(seq, delivered) in acks {
            self.in_flight.remove(&seq);
            let kind = (!delivered).then_some(DROPPED_REJECTED);
            let readings = self.remove_batch(txn, seq, kind)?;
            if delivered {
                report.delivered_readings += readings;
            }
        }
        Ok(())
    }

    /// Seal now? Then this commit's content goes straight into the batch
    /// (invariant 6); otherwise into a `pending` row. True if anything was
    /// written.
    fn place_row(
        &mut self,
        txn: &redb::WriteTransaction,
        mut row: Row,
        now: i64,
        report: &mut CommitReport,
    ) -> Result<bool, CommitError> {
        let mut wrote = false;
        row.row.origins = core::mem::take(&mut row.origins)
            .into_iter()
            .map(|(origin, readings)| OriginCount { origin, readings })
            .collect();
        let row_count = row.count();
        let count = self.pending.count + row_count;
        let has_content = count > 0 || self.health_pending;
        // Health only: its linger starts now.
        let since = self.pending.since_ns.or(has_content.then_some(now));
        let due = since.is_some_and(|s| now.saturating_sub(s) >= self.config.batch_linger_ns);
        let max = self.config.batch_max_readings;
        let caught_up = self.config.eager_seal
            && self.outbox.len() <= self.config.eager_seal_unacked
            && self.outbox.keys().all(|seq| self.in_flight.contains(seq));
        let seal_now =
            has_content && (count >= max || due || row_count.saturating_mul(4) >= max || caught_up);
        if row_count > 0 {
            let Row { mut row, raw, .. } = row;
            if !seal_now {
                for (i, readings) in &raw {
                    row.batch.blocks.push(ReadingBlock::encode(*i, readings));
                }
                let bytes = encode(&row)?;
                let id = self.next_row;
                self.next_row += 1;
                txn.open_table(PENDING)?
                    .insert(layout::id_key(id).as_slice(), bytes.as_slice())?;
                self.bytes += bytes.len() as u64;
                self.pending.rows.push(id);
            }
            self.pending.absorb(row, raw)?;
            wrote = true;
        }
        if has_content && self.pending.since_ns.is_none() {
            self.pending.since_ns = since;
        }
        if seal_now && let Some(seq) = self.seal(txn, now)? {
            report.sealed.push(seq);
            wrote = true;
        }
        Ok(wrote)
    }
}

/// Device reports: each journaled once, in order (invariant 7); its
/// windows into the row, its boot's clock offset kept.
fn add_device_reports(
    txn: &redb::WriteTransaction,
    row: &mut Row,
    reports: &[DeviceReport],
    report: &mut CommitReport,
) -> Result<(), CommitError> {
    let mut devices = txn.open_table(DEVICES)?;
    for rep in reports {
        let last = match devices.get(rep.device.as_bytes())? {
            Some(v) => Some(layout::u32_pair_of("devices", v.value())?),
            None => None,
        };
        let done = match last {
            Some((boot, seq)) if boot == rep.boot => seq,
            _ => 0,
        };
        if rep.seq <= done {
            report.reports.push(true); // journaled before: ack again
            continue;
        }
        if rep.seq != done.max(rep.floor) + 1 {
            report.reports.push(false); // a gap: wait for the missing one
            continue;
        }
        for (series, partial) in &rep.windows {
            let i = row.index.intern_ref(&mut row.row.batch.series, series);
            row.row.batch.aggregates.push(partial.to_aggregate(i));
            *row.origins.entry(rep.device.clone()).or_default() += partial.count;
            report.accepted += partial.count;
        }
        devices.insert(
            rep.device.as_bytes(),
            layout::u32_pair_value(rep.boot, rep.seq).as_slice(),
        )?;
        let mut offsets = txn.open_table(DEVICE_OFFSETS)?;
        let boot = match offsets.get(rep.device.as_bytes())? {
            Some(v) => Some(layout::offset_of(v.value())?.0),
            None => None,
        };
        if boot != Some(rep.boot) {
            offsets.insert(
                rep.device.as_bytes(),
                layout::offset_value(rep.boot, rep.offset_ns).as_slice(),
            )?;
        }
        report.reports.push(true);
    }
    Ok(())
}

/// Devices' drop totals become increments over what was counted for the
/// boot (a total sent twice counts once).
fn count_device_drops(
    txn: &redb::WriteTransaction,
    row: &mut Row,
    device_dropped: &[(String, u32, u32)],
) -> Result<(), CommitError> {
    if device_dropped.is_empty() {
        return Ok(());
    }
    let mut drops = txn.open_table(DEVICE_DROPS)?;
    for (device, boot, total) in device_dropped {
        let last = match drops.get(device.as_bytes())? {
            Some(v) => Some(layout::u32_pair_of("device_drops", v.value())?),
            None => None,
        };
        let base = match last {
            Some((b, counted)) if b == *boot => counted,
            _ => 0,
        };
        if *total > base {
            row.health.push((
                device.clone(),
                health::DROPPED_DEVICE_RING,
                u64::from(total - base),
            ));
        }
        drops.insert(
            device.as_bytes(),
            layout::u32_pair_value(*boot, (*total).max(base)).as_slice(),
        )?;
    }
    Ok(())
}

/// `table[key] += n` (`health`, `dropped`).
pub(super) fn add_count(table: &mut Table<'_>, key: &[u8], n: u64) -> Result<(), CommitError> {
    let old = match table.get(key)? {
        Some(v) => count_of("count", v.value())?,
        None => 0,
    };
    table.insert(key, layout::u64_value(old.saturating_add(n)).as_slice())?;
    Ok(())
}
