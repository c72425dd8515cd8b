//! A simulated NOR flash that enforces what real NOR flash enforces, counts
//! erases per sector, and loses power on demand.
//!
//! Rules, each an error rather than a silent fix, so that a backend that
//! breaks one fails its tests:
//! - a write (program) must start and end on `WRITE` boundaries and stay in
//!   bounds ([`SimError::NotAligned`], [`SimError::OutOfBounds`]);
//! - a write unit may be programmed once between erases, as
//!   [`NorFlash::write`] demands ("not allowed to write to the same word
//!   twice"): a second program of a unit is [`SimError::Reprogram`], and the
//!   bytes become the AND of old and new, as on real parts;
//! - programming only clears bits: data needing a 0 → 1 change leaves the
//!   AND in the cell;
//! - erase is per `ERASE` sector and sets every byte to `0xFF`.
//!
//! **Power cuts.** [`SimFlash::cut_at`] picks a mutating operation (program or
//! erase, counted from 0 since the flash was made) that power fails during:
//! that operation leaves a torn state — a program has programmed a prefix of
//! its bytes, the next byte holds a random subset of its cleared bits, and
//! every unit it touched counts as programmed; an erase has set a prefix of the
//! sector to `0xFF`, the next byte is random, the rest keep their old content
//! — and returns [`SimError::PowerCut`], as does every operation after it
//! until [`SimFlash::restore_power`]. The tear point comes from a seed, so a
//! run is reproducible.
//!
//! The flash is a handle: clones share the same cells, so a test can give one
//! clone to a backend (which redb owns and drops) and keep another to cut
//! power, reboot and read the erase counters.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use spin::Mutex;

/// What the simulated flash refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimError {
    /// Offset or length not a multiple of the write, read or erase size.
    NotAligned,
    /// Beyond the end of the flash.
    OutOfBounds,
    /// A write unit programmed a second time without an erase in between.
    Reprogram {
        /// Byte address of the unit.
        addr: u32,
    },
    /// Power failed during this operation or an earlier one.
    PowerCut,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAligned => f.write_str("not aligned to the flash's write/erase size"),
            Self::OutOfBounds => f.write_str("beyond the end of the flash"),
            Self::Reprogram { addr } => {
                write!(
                    f,
                    "write unit at {addr:#x} programmed twice without an erase"
                )
            }
            Self::PowerCut => f.write_str("power cut"),
        }
    }
}

impl NorFlashError for SimError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Self::NotAligned => NorFlashErrorKind::NotAligned,
            Self::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            Self::Reprogram { .. } | Self::PowerCut => NorFlashErrorKind::Other,
        }
    }
}

/// Counters of what the flash has done since it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimStats {
    /// Erases started, per sector (a torn erase counts).
    pub erases: Vec<u32>,
    /// Program operations started.
    pub programs: u64,
    /// Bytes passed to program operations.
    pub bytes_programmed: u64,
    /// Mutating operations (programs + erases) started.
    pub ops: u64,
}

#[derive(Debug)]
struct Cells {
    mem: Vec<u8>,
    /// One flag per write unit: programmed since its sector's last erase.
    programmed: Vec<bool>,
    stats: SimStats,
    cut_at: Option<u64>,
    powered: bool,
    rng: u64,
}

/// A simulated NOR flash of `sectors` sectors of `ERASE` bytes, programmed
/// in units of `WRITE` bytes. Reads have no alignment rule (`READ_SIZE` 1).
#[derive(Debug, Clone)]
pub struct SimFlash<const WRITE: usize, const ERASE: usize> {
    cells: Arc<Mutex<Cells>>,
}

impl<const WRITE: usize, const ERASE: usize> SimFlash<WRITE, ERASE> {
    /// An erased flash (all `0xFF`). `seed` drives where torn operations tear.
    #[must_use]
    pub fn new(sectors: usize, seed: u64) -> Self {
        let size = sectors * ERASE;
        Self {
            cells: Arc::new(Mutex::new(Cells {
                mem: vec![0xFF; size],
                programmed: vec![false; size / WRITE],
                stats: SimStats {
                    erases: vec![0; sectors],
                    programs: 0,
                    bytes_programmed: 0,
                    ops: 0,
                },
                cut_at: None,
                powered: true,
                rng: seed | 1,
            })),
        }
    }

    /// Power fails during mutating operation number `op` (counted from 0
    /// since the flash was made; see [`SimStats::ops`]). `None` disarms.
    pub fn cut_at(&self, op: Option<u64>) {
        self.cells.lock().cut_at = op;
    }

    /// Power is back: operations work again (on whatever the cut left).
    pub fn restore_power(&self) {
        let mut cells = self.cells.lock();
        cells.powered = true;
        cells.cut_at = None;
    }

    /// Whether a power cut has happened and power has not been restored.
    #[must_use]
    pub fn is_cut(&self) -> bool {
        !self.cells.lock().powered
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> SimStats {
        self.cells.lock().stats.clone()
    }

    /// A copy of every byte of the flash.
    #[must_use]
    pub fn image(&self) -> Vec<u8> {
        self.cells.lock().mem.clone()
    }
}

impl Cells {
    fn next_random(&mut self) -> u64 {
        // xorshift64: reproducible tears from the seed.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Counts a mutating operation; `true` if power fails during it.
    fn start_op(&mut self) -> Result<bool, SimError> {
        if !self.powered {
            return Err(SimError::PowerCut);
        }
        let op = self.stats.ops;
        self.stats.ops += 1;
        Ok(self.cut_at == Some(op))
    }
}

impl<const WRITE: usize, const ERASE: usize> ErrorType for SimFlash<WRITE, ERASE> {
    type Error = SimError;
}

impl<const WRITE: usize, const ERASE: usize> ReadNorFlash for SimFlash<WRITE, ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimError> {
        let cells = self.cells.lock();
        if !cells.powered {
            return Err(SimError::PowerCut);
        }
        let start = offset as usize;
        let end = start
            .checked_add(bytes.len())
            .filter(|&end| end <= cells.mem.len())
            .ok_or(SimError::OutOfBounds)?;
        bytes.copy_from_slice(&cells.mem[start..end]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.cells.lock().mem.len()
    }
}

impl<const WRITE: usize, const ERASE: usize> NorFlash for SimFlash<WRITE, ERASE> {
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimError> {
        let mut cells = self.cells.lock();
        let (from, to) = (from as usize, to as usize);
        if from > to || to > cells.mem.len() {
            return Err(SimError::OutOfBounds);
        }
        if !from.is_multiple_of(ERASE) || !to.is_multiple_of(ERASE) {
            return Err(SimError::NotAligned);
        }
        for sector in from / ERASE..to / ERASE {
            let torn = cells.start_op()?;
            cells.stats.erases[sector] += 1;
            let base = sector * ERASE;
            let done = if torn {
                (cells.next_random() % ERASE as u64) as usize
            } else {
                ERASE
            };
            cells.mem[base..base + done].fill(0xFF);
            if torn {
                let noise = cells.next_random() as u8;
                cells.mem[base + done] |= noise;
                // The half-erased sector cannot be trusted for programming.
                cells.powered = false;
                return Err(SimError::PowerCut);
            }
            cells.programmed[base / WRITE..(base + ERASE) / WRITE].fill(false);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimError> {
        let mut cells = self.cells.lock();
        let start = offset as usize;
        let end = start
            .checked_add(bytes.len())
            .filter(|&end| end <= cells.mem.len())
            .ok_or(SimError::OutOfBounds)?;
        if !start.is_multiple_of(WRITE) || !bytes.len().is_multiple_of(WRITE) {
            return Err(SimError::NotAligned);
        }
        let torn = cells.start_op()?;
        cells.stats.programs += 1;
        cells.stats.bytes_programmed += bytes.len() as u64;
        let reprogrammed = (start / WRITE..end / WRITE).find(|&unit| cells.programmed[unit]);
        let done = if torn && !bytes.is_empty() {
            (cells.next_random() % bytes.len() as u64) as usize
        } else {
            bytes.len()
        };
        for (cell, byte) in cells.mem[start..start + done].iter_mut().zip(bytes) {
            *cell &= *byte;
        }
        cells.programmed[start / WRITE..end / WRITE].fill(true);
        if torn {
            if done < bytes.len() {
                // Some of the bits this byte should lose are lost.
                let partial = bytes[done] | (cells.next_random() as u8);
                cells.mem[start + done] &= partial;
            }
            cells.powered = false;
            return Err(SimError::PowerCut);
        }
        match reprogrammed {
            Some(unit) => Err(SimError::Reprogram {
                addr: (unit * WRITE) as u32,
            }),
            None => Ok(()),
        }
    }
}
