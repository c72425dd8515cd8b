//! A counter on NOR flash that only grows, one write unit per increment:
//! how a journaling node counts the windows it had to drop (its journal
//! full) without a redb commit per drop, so that a device whose gateway is
//! gone for weeks counts every loss and does not wear its flash out doing
//! it.
//!
//! # On flash
//! `sectors` (at least 2) erase sectors used in turn. The current one starts
//! with a header; each increment after it programs one write unit to zeros:
//!
//! ```text
//! header: magic "FTY1" u32 | seq u32 | base u32 | crc u32   (padded to the write size)
//! units:  00.. (counted) | FF.. (not yet)
//! ```
//!
//! The total is the current sector's `base` plus its units that are not
//! all `0xFF`; the current sector is the one whose header checks with the
//! highest `seq`. When it is full the next sector in turn is erased and
//! gets a header whose `base` is the total.
//!
//! # Invariants
//! - **An increment is durable when [`Tally::add`] returns.** A power cut
//!   during one leaves its unit either counted (some bits cleared) or not,
//!   and then the increment had not returned.
//! - **A unit is programmed once between erases**: after a mount the next
//!   increment skips one unit (the unit a torn increment may have touched
//!   without visibly changing it).
//! - **The total never goes back**: a new sector's header carries the total
//!   before the old sector can be erased (two turns later), and a torn
//!   header leaves the old sector current.
//! - Wear: one erase per `(erase size − header) / write size` increments
//!   (1 021 on the nRF52840's 4-byte words), spread over the sectors.

use alloc::vec;
use core::fmt;

use embedded_storage::nor_flash::NorFlash;

use super::layout::CRC32C;
use super::report_log::{LogConfig, LogError, read_at};

const MAGIC: u32 = 0x3159_5446; // "FTY1"
const HEADER: usize = 16;

/// The counter; see the module docs.
pub struct Tally<F> {
    flash: F,
    config: LogConfig,
    sector_size: u32,
    unit: u32,
    /// Current sector, its seq and base; `None` before the first increment
    /// of a blank region.
    current: Option<(u32, u32, u32)>,
    /// Byte offset of the next unit in the current sector.
    next: u32,
    total: u32,
}

impl<F> fmt::Debug for Tally<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tally")
            .field("config", &self.config)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<F: NorFlash> Tally<F> {
    /// Reads the total from the region (0 if it was never written).
    ///
    /// # Errors
    /// [`LogError::Layout`] or [`LogError::Flash`].
    pub fn mount(mut flash: F, config: LogConfig) -> Result<Self, LogError> {
        let sector_size = F::ERASE_SIZE as u32;
        let unit = F::WRITE_SIZE.max(1) as u32;
        if config.sectors < 2 {
            return Err(LogError::Layout("a tally needs at least 2 sectors"));
        }
        if !config.offset.is_multiple_of(sector_size) {
            return Err(LogError::Layout(
                "offset is not a multiple of the erase size",
            ));
        }
        let end = u64::from(config.offset) + u64::from(config.sectors) * u64::from(sector_size);
        if end > flash.capacity() as u64 {
            return Err(LogError::Layout("region beyond the end of the flash"));
        }
        let mut current: Option<(u32, u32, u32)> = None;
        for i in 0..config.sectors {
            let mut h = [0u8; HEADER];
            read_at(&mut flash, config.offset + i * sector_size, &mut h)?;
            let word = |k: usize| u32::from_le_bytes([h[k], h[k + 1], h[k + 2], h[k + 3]]);
            if word(0) == MAGIC
                && word(12) == CRC32C.checksum(&h[..12])
                && current.is_none_or(|(_, seq, _)| word(4).wrapping_sub(seq) < u32::MAX / 2)
            {
                current = Some((i, word(4), word(8)));
            }
        }
        let first = header_len(unit);
        let (mut total, mut next) = (0, first);
        if let Some((sector, _, base)) = current {
            let sector_base = config.offset + sector * sector_size;
            let mut buf = vec![0u8; (sector_size - first) as usize];
            read_at(&mut flash, sector_base + first, &mut buf)?;
            let mut counted = 0u32;
            let mut last = None;
            for (k, u) in buf.chunks_exact(unit as usize).enumerate() {
                if u.iter().any(|&b| b != 0xFF) {
                    counted += 1;
                    last = Some(k as u32);
                }
            }
            total = base.wrapping_add(counted);
            // Past the last counted unit, and one more (see the invariants).
            next = first + last.map_or(0, |k| k + 1) * unit + unit;
        }
        Ok(Self {
            flash,
            config,
            sector_size,
            unit,
            current,
            next,
            total,
        })
    }

    /// The total.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Adds one; durable when this returns.
    ///
    /// # Errors
    /// [`LogError::Flash`] (the increment may or may not count; remount).
    pub fn add_one(&mut self) -> Result<u32, LogError> {
        if self.current.is_none() || self.next + self.unit > self.sector_size {
            self.turn()?;
        }
        let Some((sector, _, _)) = self.current else {
            return Err(LogError::Full);
        };
        let at = self.config.offset + sector * self.sector_size + self.next;
        self.next += self.unit;
        let zeros = vec![0u8; self.unit as usize];
        self.flash
            .write(at, &zeros)
            .map_err(|e| LogError::Flash(embedded_storage::nor_flash::NorFlashError::kind(&e)))?;
        self.total = self.total.wrapping_add(1);
        Ok(self.total)
    }

    /// Starts the next sector with the total so far as its base.
    fn turn(&mut self) -> Result<(), LogError> {
        let (sector, seq) = match self.current {
            Some((s, seq, _)) => ((s + 1) % self.config.sectors, seq.wrapping_add(1)),
            None => (0, 0),
        };
        let from = self.config.offset + sector * self.sector_size;
        let kind =
            |e: F::Error| LogError::Flash(embedded_storage::nor_flash::NorFlashError::kind(&e));
        self.flash
            .erase(from, from + self.sector_size)
            .map_err(kind)?;
        let mut h = vec![0xFFu8; header_len(self.unit) as usize];
        h[..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&seq.to_le_bytes());
        h[8..12].copy_from_slice(&self.total.to_le_bytes());
        let crc = CRC32C.checksum(&h[..12]);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        self.flash.write(from, &h).map_err(kind)?;
        self.current = Some((sector, seq, self.total));
        self.next = header_len(self.unit);
        Ok(())
    }
}

fn header_len(unit: u32) -> u32 {
    (HEADER as u32).div_ceil(unit) * unit
}
