//! Journaling closed windows: each report is appended to the report log as
//! one record, and when the log needs its oldest sector again the reports
//! still unacknowledged there are carried forward or folded into the
//! agent's redb journal (txn A, then txn B, then the erase; see the crash
//! consistency notes in the parent module). Windows that fit nowhere are
//! counted in the drop tally.

use alloc::vec::Vec;

use embedded_storage::nor_flash::NorFlash;
use ferry_agent::journal::{CommitError, DeviceReport, Work};
use ferry_proto::link::WindowReport;

use crate::sensor::Sensor;
use crate::storage::LogError;

use super::clock::Clock;
use super::record::{self, PowerUpRecord, Record, ReportRecord};
use super::resume::{self, Fold, ResumeRecord};
use super::{JournalNode, SectorIndex, clock_mut, to_partial};

impl<F: NorFlash> JournalNode<F> {
    /// Samples what is due and logs the windows of each boundary reached.
    pub fn poll(&mut self, now_ms: u64, sensors: &mut [&mut dyn Sensor]) {
        while let Some(windows) = self.sampler.poll(now_ms, sensors) {
            if self.sampler.config() != self.logged_config {
                // A config took effect at this boundary: logged before the
                // first report under it, so a power-up after finds it.
                let config = self.sampler.config();
                let rec = PowerUpRecord {
                    power_up: self.power_up,
                    period_ms: config.sample_period_ms,
                    window_ms: config.window_ms,
                };
                let mut buf = [0u8; record::MAX_LEN];
                let n = rec.encode(&mut buf);
                if self
                    .append(&buf[..n], None, Some(self.power_up), false)
                    .is_ok()
                {
                    self.logged_config = config;
                }
            }
            self.journal_windows(&windows);
        }
    }

    fn journal_windows(&mut self, windows: &[WindowReport]) {
        let Some(first) = windows.first() else { return };
        let rec = ReportRecord {
            seq: self.next_seq,
            power_up: self.power_up,
            start_ms: first.start_ms,
            len_ms: first.len_ms,
            acked: self.acked,
            windows: windows.iter().copied().collect(),
        };
        let mut buf = [0u8; record::MAX_LEN];
        let n = rec.encode(&mut buf);
        match self.append(&buf[..n], Some(rec.seq), None, false) {
            Ok(()) => {
                let end = rec.start_ms + u64::from(rec.len_ms);
                clock_mut(&mut self.clocks, self.power_up).saw_report(rec.seq, end);
                self.next_seq += 1;
                self.stats.journaled += 1;
            }
            Err(e) => {
                if e != LogError::Full {
                    // The record may or may not be whole on the flash: no
                    // more appends (and no sequence given twice) until a
                    // restart reads the log again.
                    self.log_failed = true;
                }
                // The window is lost, and counted.
                match self.drops.add_one() {
                    Ok(total) => self.stats.dropped = total,
                    Err(_) => self.stats.journal_errors += 1,
                }
            }
        }
    }

    /// Appends a record, making room (folding the oldest sector) when the
    /// log is full; then keeps one sector free for the next.
    pub(super) fn append(
        &mut self,
        bytes: &[u8],
        seq: Option<u32>,
        power_up: Option<u32>,
        clock: bool,
    ) -> Result<(), LogError> {
        if self.log_failed {
            return Err(LogError::Full);
        }
        let at = match self.log.append(bytes) {
            Err(LogError::Full) => {
                if !self.reclaim_oldest() {
                    return Err(LogError::Full);
                }
                self.log.append(bytes)
            }
            other => other,
        }
        .inspect_err(|e| {
            if *e != LogError::Full {
                self.stats.journal_errors += 1;
            }
        })?;
        let entry = &mut self.index[at.sector as usize];
        if let Some(seq) = seq {
            entry.reports = Some(entry.reports.map_or((seq, seq), |(lo, _)| (lo, seq)));
        }
        if let Some(p) = power_up {
            entry.power_up = Some(p);
        }
        entry.clocks |= clock;
        if self.log.free_sectors() == 0 {
            // Ahead of need, while the head still has room: a fold that
            // fails now costs nothing yet.
            let _ = self.reclaim_oldest();
        }
        Ok(())
    }

    /// Frees the oldest log sector: folds its unacknowledged reports into
    /// the journal (and notes its power-up in the resume record), then
    /// erases it. `false` if it cannot (the journal is full or failing, or
    /// the oldest sector is the head).
    fn reclaim_oldest(&mut self) -> bool {
        let order = self.log.sectors_oldest_first();
        let Some(&oldest) = order.first() else {
            return false;
        };
        if Some(oldest) == self.log.head() {
            return false;
        }
        let entry = self.index[oldest as usize];
        let done = self.acked.max(self.folded);
        if entry.reports.is_some_and(|(_, hi)| hi > done) {
            match self.fold_sector(oldest, done) {
                Ok(()) => {}
                // The journal is at its budget: the log keeps what it has.
                Err(CommitError::Full { .. }) => return false,
                Err(_) => {
                    self.stats.journal_errors += 1;
                    return false;
                }
            }
        }
        // What the sector says of this power-up (its number and sampling)
        // and of clocks still needed must outlive it: copied to the head
        // (there is room: a sector was just taken), or else into redb.
        self.prune_clocks();
        let mut carried = true;
        if entry.power_up == Some(self.power_up) && self.record.power_ups < self.power_up {
            let config = self.sampler.config();
            let rec = PowerUpRecord {
                power_up: self.power_up,
                period_ms: config.sample_period_ms,
                window_ms: config.window_ms,
            };
            let mut buf = [0u8; record::MAX_LEN];
            let n = rec.encode(&mut buf);
            carried &= self.carry(&buf[..n], Some(self.power_up), false);
        }
        if entry.clocks || !carried {
            let mut buf = [0u8; record::MAX_LEN];
            for k in 0..self.clocks.len() {
                let n = record::encode_clock(&self.clocks[k], &mut buf);
                carried &= self.carry(&buf[..n], None, true);
            }
        }
        if !carried {
            let record = ResumeRecord {
                power_ups: self.record.power_ups.max(self.power_up),
                ..self.record
            };
            let lowest = self.folds.first().map_or(u64::MAX, |(b, _)| *b);
            let clocks: Vec<&Clock> = self.clocks.iter().collect();
            if resume::write(
                self.journal.database(),
                &record,
                None,
                lowest,
                &clocks,
                true,
            )
            .is_err()
            {
                self.stats.journal_errors += 1;
                return false;
            }
            self.record = record;
        }
        if self.log.erase(oldest).is_err() {
            self.stats.journal_errors += 1;
            return false;
        }
        self.index[oldest as usize] = SectorIndex::default();
        true
    }

    /// Appends a record to the head sector without taking a new one;
    /// `false` if it does not fit or the write fails.
    fn carry(&mut self, bytes: &[u8], power_up: Option<u32>, clock: bool) -> bool {
        if !self.log.fits_in_head(bytes.len()) {
            return false;
        }
        match self.log.append(bytes) {
            Ok(at) => {
                let entry = &mut self.index[at.sector as usize];
                if power_up.is_some() {
                    entry.power_up = power_up;
                }
                entry.clocks |= clock;
                true
            }
            Err(_) => false,
        }
    }

    /// Folds the reports of `sector` above `done` into the journal: txn A
    /// (resume record, the batch's row), then txn B (the journal commit,
    /// which also deletes batches the gateway has acked).
    fn fold_sector(&mut self, sector: u32, done: u32) -> Result<(), CommitError> {
        // Refused before anything is written: a full journal costs no
        // flash per attempt.
        if let Some((used, budget)) = self.journal.refuses_data() {
            return Err(CommitError::Full { used, budget });
        }
        let mut reports: Vec<ReportRecord> = Vec::new();
        let mut power_up = 0u32;
        let read = self
            .log
            .for_each_record(sector, |_, bytes| match Record::decode(bytes) {
                Some(Record::Report(r)) if r.seq > done => reports.push(r),
                Some(Record::PowerUp(p)) => power_up = power_up.max(p.power_up),
                _ => {}
            });
        if read.is_err() {
            return Err(CommitError::Corrupt("report log unreadable".into()));
        }
        // Appended in sequence order: already sorted.
        let acked_batches: Vec<u64> = self
            .folds
            .iter()
            .filter(|(_, f)| f.last_seq() <= self.acked)
            .map(|(b, _)| *b)
            .collect();
        let next_batch = self.journal.stats()?.next_seq;
        let fold = (!reports.is_empty()).then(|| Fold {
            first_seq: reports[0].seq,
            reports: reports
                .iter()
                .map(|r| (r.windows.len() as u8, r.power_up))
                .collect(),
        });
        let config = self.sampler.config();
        let record = ResumeRecord {
            power_ups: self.record.power_ups.max(power_up),
            sample_period_ms: config.sample_period_ms,
            window_ms: config.window_ms,
            ..self.record
        };
        // The clocks of what is unacknowledged go with it: the log's clock
        // records may be gone before these reports are.
        self.prune_clocks();
        let clocks: Vec<&Clock> = self.clocks.iter().collect();
        let lowest_kept = self
            .folds
            .iter()
            .map(|(b, _)| *b)
            .find(|b| !acked_batches.contains(b))
            .unwrap_or(next_batch);
        resume::write(
            self.journal.database(),
            &record,
            fold.as_ref().map(|f| (next_batch, f)),
            lowest_kept,
            &clocks,
            true,
        )?;
        self.record = record;
        let Some(fold) = fold else {
            return Ok(());
        };
        let floor = fold.first_seq - 1;
        let work = Work {
            reports: reports
                .iter()
                .map(|r| DeviceReport {
                    device: self.device_hex.clone(),
                    boot: self.record.epoch,
                    seq: r.seq,
                    floor,
                    offset_ns: 0,
                    windows: r
                        .windows
                        .iter()
                        .filter_map(|w| {
                            let series = self.series.get(usize::from(w.channel))?.clone();
                            Some((series, to_partial(w)))
                        })
                        .collect(),
                })
                .collect(),
            acks: acked_batches.iter().map(|&b| (b, true)).collect(),
            ..Work::default()
        };
        let r = self.journal.commit(work, 0)?;
        if r.sealed.as_slice() != [next_batch] {
            return Err(CommitError::Corrupt(
                "a fold sealed another batch than its row names".into(),
            ));
        }
        self.folds.retain(|(b, _)| !acked_batches.contains(b));
        self.batch_cache.clear();
        self.journal.release_in_flight();
        self.folded = self.folded.max(fold.last_seq());
        self.stats.folds += 1;
        self.stats.folded_reports += fold.reports.len() as u32;
        self.folds.push((next_batch, fold));
        Ok(())
    }
}
