//! Starting a journaling node: opening the journal, reading the report log
//! oldest record first to rebuild the sector index, the clocks and the
//! sequence counters, choosing this power-up's number and logging it. What
//! the crash-consistency notes in the parent module promise after a power
//! loss is re-established here, from the log and the journal alone.

use alloc::vec::Vec;

use embedded_storage::nor_flash::NorFlash;
use ferry_agent::journal::{FullPolicy, Journal, JournalConfig};
use ferry_proto::link::{Channel, DeviceId, LinkConfig};
use ferry_proto::serial::Deframer;

use crate::link::LinkTimers;
use crate::node::FIRMWARE;
use crate::sampler::{ConfigError, MAX_SENSORS, Sampler};
use crate::sensor::Sensor;
use crate::storage::LogError;

use super::clock::Clock;
use super::record::{self, PowerUpRecord, Record};
use super::resume::{self, Fold, ResumeRecord, read_clocks, read_folds, read_resume};
use super::{
    JournalNode, JournalNodeStats, JournalSettings, NodeStorage, SectorIndex, StartError,
    channel_series, clock_mut, short,
};

impl<F: NorFlash> JournalNode<F> {
    /// Opens the journal, reads the report log and starts the node at
    /// uptime `now_ms` (ms since this power-up began: the clock its windows
    /// and hellos count in). On new storage the epoch is `new_epoch` and
    /// sampling uses `config`; otherwise the storage decides (and
    /// `new_epoch` and `config` are not used).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        now_ms: u64,
        storage: NodeStorage<F>,
        settings: JournalSettings,
        device_id: DeviceId,
        new_epoch: u32,
        config: LinkConfig,
        timers: LinkTimers,
        sensors: &[&dyn Sensor],
        every: &[u32],
    ) -> Result<Self, StartError> {
        let NodeStorage { db, mut log, drops } = storage;
        let journal = Journal::open(
            db,
            JournalConfig {
                budget_bytes: settings.budget_bytes,
                policy: FullPolicy::Backpressure,
                // Every commit seals what it holds: a fold is one batch.
                batch_max_readings: 1,
                batch_linger_ns: 0,
                rules: Vec::new(),
                eager_seal: false,
                eager_seal_unacked: 0,
            },
        )?;
        let stored = read_resume(journal.database())?;
        let folds_on_disk = read_folds(journal.database())?;
        // Clocks as of the last fold; the log's records are newer.
        let mut clocks: Vec<Clock> = read_clocks(journal.database())?;

        // The log, oldest record first.
        let mut index = alloc::vec![SectorIndex::default(); log.config().sectors as usize];
        let mut max_seq = 0u32;
        let mut acked_hint = 0u32;
        let mut latest_config: Option<LinkConfig> = None;
        let mut max_power_up = clocks.iter().map(|c| c.power_up).max().unwrap_or(0);
        for sector in log.sectors_oldest_first() {
            let entry = &mut index[sector as usize];
            log.for_each_record(sector, |_, bytes| match Record::decode(bytes) {
                Some(Record::Report(r)) => {
                    entry.reports = Some(match entry.reports {
                        Some((lo, hi)) => (lo.min(r.seq), hi.max(r.seq)),
                        None => (r.seq, r.seq),
                    });
                    max_seq = max_seq.max(r.seq);
                    acked_hint = acked_hint.max(r.acked);
                    max_power_up = max_power_up.max(r.power_up);
                    clock_mut(&mut clocks, r.power_up)
                        .saw_report(r.seq, r.start_ms + u64::from(r.len_ms));
                }
                Some(Record::PowerUp(p)) => {
                    entry.power_up = Some(entry.power_up.unwrap_or(0).max(p.power_up));
                    max_power_up = max_power_up.max(p.power_up);
                    latest_config = Some(LinkConfig {
                        sample_period_ms: p.period_ms,
                        window_ms: p.window_ms,
                    });
                }
                Some(Record::Clock(c)) => {
                    entry.clocks = true;
                    max_power_up = max_power_up.max(c.power_up);
                    clock_mut(&mut clocks, c.power_up).update_from(&c);
                }
                None => {}
            })?;
        }

        let mut record = match stored {
            Some(r) => r,
            None => {
                let r = ResumeRecord {
                    epoch: new_epoch,
                    power_ups: 0,
                    sample_period_ms: config.sample_period_ms,
                    window_ms: config.window_ms,
                };
                // The epoch is named once, for the journal's life.
                resume::write(journal.database(), &r, None, 0, &[], false)?;
                r
            }
        };
        let config = latest_config.unwrap_or(LinkConfig {
            sample_period_ms: record.sample_period_ms,
            window_ms: record.window_ms,
        });
        let power_up = record.power_ups.max(max_power_up) + 1;
        for entry in &mut index {
            // Power-up records the resume record already covers need no care.
            entry.power_up = entry.power_up.filter(|&p| p > record.power_ups);
        }
        record.power_ups = record.power_ups.max(max_power_up);

        let device_hex = alloc::format!("{device_id}");
        let folded = journal
            .devices()?
            .into_iter()
            .find(|(d, b, _)| *d == device_hex && *b == record.epoch)
            .map_or(0, |(_, _, seq)| seq);
        let js = journal.stats()?;
        let lowest_batch = js.next_seq - js.outbox_batches;
        let folds: Vec<(u64, Fold)> = folds_on_disk
            .into_iter()
            .filter(|(b, _)| *b >= lowest_batch && *b < js.next_seq)
            .collect();
        for (_, f) in &folds {
            for (k, &(_, p)) in f.reports.iter().enumerate() {
                clock_mut(&mut clocks, p).saw_report(f.first_seq + k as u32, 0);
            }
        }
        let next_seq = max_seq
            .max(folded)
            .max(folds.last().map_or(0, |(_, f)| f.last_seq()))
            + 1;
        // Reports below the journal's oldest batch were acked (their
        // batches are gone); with no batch, every folded one was.
        let acked_floor = folds
            .first()
            .map_or(folded, |(_, f)| f.first_seq.saturating_sub(1));
        let acked = acked_hint.max(acked_floor).min(next_seq - 1);

        // This power-up's clock: estimated from the latest power-up whose
        // zero is known, as if the power had come back at once.
        clocks.sort_unstable_by_key(|c| c.power_up);
        let mut now_clock = Clock::new(power_up);
        now_clock.estimate = clocks
            .iter()
            .rev()
            .find_map(|c| Some(c.zero()?.saturating_add(c.end_ms as i64)));
        clocks.push(now_clock);

        let mut channels = heapless::Vec::new();
        let mut series = Vec::new();
        let mut counts = heapless::Vec::<u8, MAX_SENSORS>::new();
        for sensor in sensors {
            let qs = sensor.quantities();
            counts
                .push(qs.len() as u8)
                .map_err(|_| StartError::Config(ConfigError::BadLayout))?;
            for q in qs {
                let id = channels.len() as u8;
                let channel = Channel {
                    id,
                    sensor: short(q.sensor)?,
                    quantity: short(q.quantity)?,
                    unit: short(q.unit)?,
                };
                channels
                    .push(channel)
                    .map_err(|_| StartError::Config(ConfigError::BadLayout))?;
                series.push(channel_series(id).ok_or(StartError::Config(ConfigError::BadLayout))?);
            }
        }
        // The window grid starts at this power-up's zero; samples due
        // before `now_ms` are taken late, at their scheduled instants.
        let sampler = Sampler::new(0, config, &counts, every).map_err(StartError::Config)?;
        let mut node = Self {
            sampler,
            journal,
            log,
            drops,
            record,
            power_up,
            device_id,
            device_hex,
            firmware: heapless::String::try_from(FIRMWARE).unwrap_or_default(),
            channels,
            series,
            timers,
            deframer: Deframer::new(),
            clocks,
            next_seq,
            acked,
            folded,
            index,
            folds,
            batch_cache: Vec::new(),
            outgoing: heapless::Deque::new(),
            hello_due_ms: Some(now_ms),
            hello_sent: false,
            heard_gateway: false,
            heartbeat_due_ms: now_ms + u64::from(timers.heartbeat_every_ms),
            logged_config: config,
            waiting_for_sync: false,
            log_failed: false,
            stats: JournalNodeStats::default(),
        };
        node.stats.dropped = node.drops.total();
        node.prune_clocks();
        // This power-up, in the log: its number is never used again, and
        // its sampling and estimated clock are found after a power loss.
        match node.log_power_up() {
            Ok(()) => {}
            Err(LogError::Full) => {
                // A log full of unacknowledged reports (and a full
                // journal): the power-up is counted in the resume record.
                node.record.power_ups = power_up;
                let lowest = node.folds.first().map_or(u64::MAX, |(b, _)| *b);
                resume::write(
                    node.journal.database(),
                    &node.record,
                    None,
                    lowest,
                    &[],
                    false,
                )?;
            }
            Err(_) => node.stats.journal_errors += 1,
        }
        Ok(node)
    }

    /// Appends this power-up's record (number and sampling) and its clock.
    fn log_power_up(&mut self) -> Result<(), LogError> {
        let config = self.sampler.config();
        let rec = PowerUpRecord {
            power_up: self.power_up,
            period_ms: config.sample_period_ms,
            window_ms: config.window_ms,
        };
        let mut buf = [0u8; record::MAX_LEN];
        let n = rec.encode(&mut buf);
        self.append(&buf[..n], None, Some(self.power_up), false)?;
        self.logged_config = config;
        self.log_clock(self.power_up)
    }

    /// Appends the clock of `power_up` (what is known of it now).
    pub(super) fn log_clock(&mut self, power_up: u32) -> Result<(), LogError> {
        let Some(c) = self.clocks.iter().find(|c| c.power_up == power_up) else {
            return Ok(());
        };
        let mut buf = [0u8; record::MAX_LEN];
        let n = record::encode_clock(c, &mut buf);
        self.append(&buf[..n], None, None, true)
    }

    /// Forgets clocks no unacknowledged report needs (keeping this
    /// power-up's and the latest one with a known zero, which the next
    /// power-up's estimate starts from).
    pub(super) fn prune_clocks(&mut self) {
        let acked = self.acked;
        let current = self.power_up;
        let anchor = self
            .clocks
            .iter()
            .filter(|c| c.power_up != current && c.zero().is_some())
            .map(|c| c.power_up)
            .max();
        self.clocks
            .retain(|c| c.power_up == current || Some(c.power_up) == anchor || c.last_seq > acked);
    }
}
