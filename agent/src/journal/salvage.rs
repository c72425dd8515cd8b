//! What survives a journal: its ledger (what it holds, kept beside it) and
//! taking in batches salvaged from a journal that was quarantined.

use alloc::string::String;
use alloc::vec::Vec;

use super::rows::OutboxMeta;
use super::seal::kind_counts;

use super::*;

/// The origin salvaged batches and readings lost with a quarantined
/// journal are counted under: which source or device they came from is
/// in the journal that could not be read.
pub const SALVAGE_ORIGIN: &str = "journal";

/// What a journal holds, as of its latest commit: enough to tell, once the
/// journal is unreadable, which of the batches found in its bytes were
/// still waiting and how many readings could not be found
/// ([`Journal::ledger`]). The agent keeps it in a file beside the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// The journal's epoch.
    pub epoch: u64,
    /// Readings it holds: in the outbox, the batch being filled and open
    /// windows (none of them delivered or counted as dropped yet).
    pub held: u64,
    /// Its outbox sequences, as inclusive ranges, ascending.
    pub outbox: Vec<(u64, u64)>,
    /// Health counts it holds and has not delivered (waiting for the next
    /// batch or inside the outbox's batches), per kind, ascending: what
    /// the collector would not hear of if the journal were lost (the
    /// received counts of readings, for one).
    pub health: Vec<(u16, u64)>,
}

impl Ledger {
    /// True if `seq` was waiting in the outbox.
    pub fn holds(&self, seq: u64) -> bool {
        self.outbox.iter().any(|&(a, b)| a <= seq && seq <= b)
    }
}

/// A batch found in a quarantined journal, to be shipped as it is (its
/// body keeps its epoch and seq, so the collector deduplicates it as what
/// it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvagedBatch {
    /// The seq its body carries.
    pub wire_seq: u64,
    /// The outbox row: `[codec][body]`.
    pub row: Vec<u8>,
    /// Readings in it (raw plus counted in aggregates).
    pub readings: u64,
    /// Its `created_ns`.
    pub created_ns: i64,
    /// Its health records summed per kind.
    pub health: Vec<(u16, u64)>,
}

impl Journal {
    /// What the journal holds now ([`Ledger`]).
    pub fn ledger(&self) -> Ledger {
        let mut outbox: Vec<(u64, u64)> = Vec::new();
        for &seq in self.outbox.keys() {
            match outbox.last_mut() {
                Some((_, end)) if *end + 1 == seq => *end = seq,
                _ => outbox.push((seq, seq)),
            }
        }
        Ledger {
            epoch: self.epoch,
            held: self.outbox_readings
                + self.pending.count as u64
                + self.aggregator.open_readings(),
            outbox,
            health: self
                .held_health
                .iter()
                .filter(|&(_, &n)| n > 0)
                .map(|(&k, &n)| (k, n))
                .collect(),
        }
    }

    /// Takes in what was salvaged from a quarantined journal, in one
    /// transaction: `batches` join the outbox (each under a new outbox seq,
    /// shipped with the seq its body carries), and `lost` readings are
    /// counted as dropped (health kind 10, origin [`SALVAGE_ORIGIN`]),
    /// and `lost_health`, the health counts the old journal held that are in
    /// none of `batches`, are counted again (origin [`SALVAGE_ORIGIN`]), so
    /// the collector sees them and the ledger closes.
    pub fn import_salvaged(
        &mut self,
        batches: Vec<SalvagedBatch>,
        lost: u64,
        lost_health: &[(u16, u64)],
    ) -> Result<(), CommitError> {
        let result = self.import_inner(batches, lost, lost_health);
        if result.is_err() {
            // The transaction was aborted: memory follows the disk again.
            self.reload()?;
        }
        result
    }

    fn import_inner(
        &mut self,
        batches: Vec<SalvagedBatch>,
        lost: u64,
        lost_health: &[(u16, u64)],
    ) -> Result<(), CommitError> {
        if batches.is_empty() && lost == 0 && lost_health.iter().all(|&(_, n)| n == 0) {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let mut metas = txn.open_table(OUTBOX_META)?;
            let mut salvaged = txn.open_table(SALVAGED)?;
            for b in batches {
                let seq = self.next_seq;
                self.next_seq += 1;
                let meta = encode(&OutboxMeta {
                    bytes: b.row.len() as u64,
                    readings: b.readings,
                    created_ns: b.created_ns,
                    origins: alloc::vec![OriginCount {
                        origin: String::from(SALVAGE_ORIGIN),
                        readings: b.readings,
                    }],
                    health: kind_counts(b.health.iter().copied()),
                })?;
                for &(kind, count) in &b.health {
                    *self.held_health.entry(kind).or_default() += count;
                }
                let key = layout::id_key(seq);
                outbox.insert(key.as_slice(), b.row.as_slice())?;
                metas.insert(key.as_slice(), meta.as_slice())?;
                salvaged.insert(key.as_slice(), layout::u64_value(b.wire_seq).as_slice())?;
                self.bytes += (b.row.len() + meta.len()) as u64;
                self.outbox.insert(
                    seq,
                    Sealed {
                        readings: b.readings,
                        created_ns: b.created_ns,
                    },
                );
                self.outbox_readings += b.readings;
                self.salvaged.insert(seq, b.wire_seq);
            }
        }
        {
            let mut health_table = txn.open_table(HEALTH)?;
            for &(kind, count) in lost_health.iter().filter(|&&(_, n)| n > 0) {
                add_count(
                    &mut health_table,
                    &layout::count_key(SALVAGE_ORIGIN, kind, Some(0)),
                    count,
                )?;
                *self.held_health.entry(kind).or_default() += count;
                self.health_pending = true;
            }
        }
        if lost > 0 {
            let kind = health::DROPPED_CORRUPT_JOURNAL;
            add_count(
                &mut txn.open_table(HEALTH)?,
                &layout::count_key(SALVAGE_ORIGIN, kind, Some(0)),
                lost,
            )?;
            *self.held_health.entry(kind).or_default() += lost;
            add_count(
                &mut txn.open_table(DROPPED)?,
                &layout::count_key(SALVAGE_ORIGIN, kind, None),
                lost,
            )?;
            self.health_pending = true;
        }
        {
            let mut meta = txn.open_table(META)?;
            for (name, value) in [("next_seq", self.next_seq), ("bytes", self.bytes)] {
                meta.insert(name.as_bytes(), layout::u64_value(value).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}
