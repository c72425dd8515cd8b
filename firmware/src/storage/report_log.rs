//! An append-only log of small records in its own sectors of NOR flash:
//! where a journaling node writes each window report the moment it closes,
//! so that the redb journal is written only rarely, in large transactions
//! (`journal_node`). A record costs its own bytes (~80 B for a report of two
//! windows) instead of a redb commit (13–18 KB of programs), which is what
//! turns the flash's lifetime from months into decades
//! (firmware/README.md, "Wear").
//!
//! # On flash
//! The region is `sectors` erase sectors used as a ring. A sector in use
//! starts with a header, then records back to back:
//!
//! ```text
//! header: magic "FRL1" u32 | seq u32 | crc u32              (padded to the write size)
//! record: len u16 | payload (len bytes) | crc u32            (padded to the write size with 0xFF)
//! ```
//!
//! Integers little-endian; CRC-32C over the bytes before it. `seq` orders
//! the sectors (it only grows); a sector whose header does not check
//! (erased, or torn by a power cut) is *free*. Records are opaque to the
//! log. Reading a sector stops at the first record whose length reads
//! `0xFFFF` (erased) or whose CRC fails (a write torn by a power cut).
//!
//! # Invariants
//! 1. **A record is durable when [`ReportLog::append`] returns**, and never
//!    changes until its sector is erased: records are written once, in
//!    order, and never in place.
//! 2. **A torn write is never built upon.** After a mount, appends go to a
//!    fresh sector (the head sector may end in a torn record, whose write
//!    units cannot be programmed again); a torn record is the last thing in
//!    its sector, and reading stops there.
//! 3. **A sector is erased only when its owner says so**
//!    ([`ReportLog::erase`]): the log never reclaims space by itself, so it
//!    never loses a record its owner still needs. When no free sector is
//!    left, [`ReportLog::append`] answers [`LogError::Full`] and the owner
//!    moves what it still needs elsewhere, then erases.
//! 4. **Even wear.** A new head sector is the first free one after the
//!    current head in ring order, and the owner erases oldest first, so the
//!    sectors take turns.
//! 5. A power cut during an erase or a header write leaves a sector that is
//!    free (its header does not check) and is erased again before use.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

use super::layout::CRC32C;

const MAGIC: u32 = 0x314C_5246; // "FRL1"
const HEADER: usize = 12;
/// Length field plus CRC.
const FRAMING: usize = 6;
/// Longest record payload.
pub const MAX_RECORD: usize = 255;

/// Where a log lives: `sectors` erase sectors from byte `offset` of the
/// flash (a multiple of the erase size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// First byte of the region.
    pub offset: u32,
    /// Erase sectors in the region (at least 2).
    pub sectors: u32,
}

/// Why the log refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogError {
    /// The flash driver failed.
    Flash(NorFlashErrorKind),
    /// No room: the head sector is full and no sector is free.
    Full,
    /// A payload longer than [`MAX_RECORD`].
    TooLong,
    /// The region is not sector-aligned, too small, or beyond the flash.
    Layout(&'static str),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flash(kind) => write!(f, "flash error: {kind}"),
            Self::Full => f.write_str("report log full"),
            Self::TooLong => write!(f, "record longer than {MAX_RECORD} bytes"),
            Self::Layout(why) => write!(f, "bad report log layout: {why}"),
        }
    }
}

impl core::error::Error for LogError {}

fn flash_err<E: NorFlashError>(e: E) -> LogError {
    LogError::Flash(e.kind())
}

/// Where a record is: sector index in the region and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Sector index in the region.
    pub sector: u32,
    /// Byte offset of the record in the sector.
    pub offset: u32,
}

#[derive(Debug, Clone, Copy)]
struct Sector {
    /// `Some(seq)` when the header checks.
    seq: Option<u32>,
    /// Bytes in use: header and records up to the first that does not read.
    used: u32,
    /// Erased since the mount and not written: taking it needs no erase.
    erased: bool,
}

/// Counters since mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended.
    pub records: u64,
    /// Bytes programmed (headers and padding included).
    pub bytes_programmed: u64,
    /// Sectors erased.
    pub erases: u64,
}

/// The log; see the module docs.
pub struct ReportLog<F> {
    flash: F,
    config: LogConfig,
    sector_size: u32,
    write_size: usize,
    sectors: Vec<Sector>,
    /// The sector being appended to; `None` right after a mount (invariant 2).
    head: Option<u32>,
    next_seq: u32,
    stats: LogStats,
}

impl<F> fmt::Debug for ReportLog<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportLog")
            .field("config", &self.config)
            .field("head", &self.head)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl<F: NorFlash> ReportLog<F> {
    /// Reads the region's headers and finds where each sector's records
    /// end. Blank or foreign sectors are free (erased before use).
    ///
    /// # Errors
    /// [`LogError::Layout`] or [`LogError::Flash`].
    pub fn mount(mut flash: F, config: LogConfig) -> Result<Self, LogError> {
        let sector_size = F::ERASE_SIZE as u32;
        let write_size = F::WRITE_SIZE.max(1);
        if config.sectors < 2 {
            return Err(LogError::Layout("a report log needs at least 2 sectors"));
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
        if round_up(HEADER, write_size) + round_up(FRAMING + MAX_RECORD, write_size)
            > sector_size as usize
        {
            return Err(LogError::Layout("erase sectors too small for a record"));
        }
        let mut sectors = Vec::with_capacity(config.sectors as usize);
        let mut next_seq = 0u32;
        let mut buf = vec![0u8; FRAMING + MAX_RECORD];
        for i in 0..config.sectors {
            let base = config.offset + i * sector_size;
            let mut header = [0u8; HEADER];
            read_at(&mut flash, base, &mut header)?;
            let seq = decode_header(&header);
            let mut used = 0;
            if let Some(seq) = seq {
                next_seq = next_seq.max(seq.wrapping_add(1));
                used = round_up(HEADER, write_size) as u32;
                while let Some(len) = read_record(&mut flash, base, used, sector_size, &mut buf)? {
                    used += round_up(FRAMING + len, write_size) as u32;
                }
            }
            sectors.push(Sector {
                seq,
                used,
                erased: false,
            });
        }
        Ok(Self {
            flash,
            config,
            sector_size,
            write_size,
            sectors,
            head: None,
            next_seq,
            stats: LogStats::default(),
        })
    }

    /// The region.
    pub fn config(&self) -> LogConfig {
        self.config
    }

    /// Counters since mount.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Sectors in use, oldest first.
    pub fn sectors_oldest_first(&self) -> Vec<u32> {
        let mut used: Vec<(u32, u32)> = self
            .sectors
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.seq.map(|seq| (seq, i as u32)))
            .collect();
        used.sort_unstable();
        used.into_iter().map(|(_, i)| i).collect()
    }

    /// Sectors free (to be erased before use).
    pub fn free_sectors(&self) -> usize {
        self.sectors.iter().filter(|s| s.seq.is_none()).count()
    }

    /// The sector appends go to, once one has been taken since the mount.
    pub fn head(&self) -> Option<u32> {
        self.head
    }

    /// Whether a payload of `len` bytes fits without taking a new sector.
    pub fn fits_in_head(&self, len: usize) -> bool {
        self.head.is_some_and(|h| {
            self.sectors[h as usize].used as usize + round_up(FRAMING + len, self.write_size)
                <= self.sector_size as usize
        })
    }

    /// Calls `f` with the position and payload of each record of `sector`,
    /// in order.
    ///
    /// # Errors
    /// [`LogError::Flash`].
    pub fn for_each_record(
        &mut self,
        sector: u32,
        mut f: impl FnMut(Position, &[u8]),
    ) -> Result<(), LogError> {
        let Some(s) = self.sectors.get(sector as usize).copied() else {
            return Ok(());
        };
        if s.seq.is_none() {
            return Ok(());
        }
        let base = self.config.offset + sector * self.sector_size;
        let mut buf = vec![0u8; FRAMING + MAX_RECORD];
        let mut at = round_up(HEADER, self.write_size) as u32;
        while at < s.used {
            let Some(len) = read_record(&mut self.flash, base, at, self.sector_size, &mut buf)?
            else {
                break;
            };
            f(Position { sector, offset: at }, &buf[2..2 + len]);
            at += round_up(FRAMING + len, self.write_size) as u32;
        }
        Ok(())
    }

    /// Reads the payload of the record at `at` into `out`; its length.
    ///
    /// # Errors
    /// [`LogError::Flash`]; `Ok(None)` if no valid record is there.
    pub fn read(&mut self, at: Position, out: &mut [u8]) -> Result<Option<usize>, LogError> {
        if at.sector >= self.config.sectors {
            return Ok(None);
        }
        let base = self.config.offset + at.sector * self.sector_size;
        let mut buf = vec![0u8; FRAMING + MAX_RECORD];
        match read_record(&mut self.flash, base, at.offset, self.sector_size, &mut buf)? {
            Some(len) if len <= out.len() => {
                out[..len].copy_from_slice(&buf[2..2 + len]);
                Ok(Some(len))
            }
            _ => Ok(None),
        }
    }

    /// Appends a record; durable when this returns. Takes a free sector
    /// (erasing it) when the head is full or none has been taken since the
    /// mount.
    ///
    /// # Errors
    /// [`LogError::Full`] (nothing written: erase a sector and retry),
    /// [`LogError::TooLong`], [`LogError::Flash`] (the record may be torn;
    /// remount before appending again).
    pub fn append(&mut self, payload: &[u8]) -> Result<Position, LogError> {
        if payload.len() > MAX_RECORD {
            return Err(LogError::TooLong);
        }
        if !self.fits_in_head(payload.len()) {
            self.take_sector()?;
        }
        let head = self.head.ok_or(LogError::Full)?;
        let len = round_up(FRAMING + payload.len(), self.write_size);
        let mut rec = vec![0xFFu8; len];
        rec[..2].copy_from_slice(&(payload.len() as u16).to_le_bytes());
        rec[2..2 + payload.len()].copy_from_slice(payload);
        let crc = CRC32C.checksum(&rec[..2 + payload.len()]);
        rec[2 + payload.len()..FRAMING + payload.len()].copy_from_slice(&crc.to_le_bytes());
        let at = Position {
            sector: head,
            offset: self.sectors[head as usize].used,
        };
        // Counted as used before the write: a failed write may have torn
        // the units, which must not be programmed again.
        self.sectors[head as usize].used += len as u32;
        let base = self.config.offset + head * self.sector_size;
        self.flash
            .write(base + at.offset, &rec)
            .map_err(flash_err)?;
        self.stats.records += 1;
        self.stats.bytes_programmed += len as u64;
        Ok(at)
    }

    /// Erases `sector` (its records are gone). The owner calls this only
    /// for a sector holding nothing it still needs, oldest first.
    ///
    /// # Errors
    /// [`LogError::Flash`].
    pub fn erase(&mut self, sector: u32) -> Result<(), LogError> {
        if sector >= self.config.sectors {
            return Ok(());
        }
        // Free from now on, whatever the erase does: a torn erase leaves a
        // header that does not check.
        self.sectors[sector as usize] = Sector {
            seq: None,
            used: 0,
            erased: false,
        };
        if self.head == Some(sector) {
            self.head = None;
        }
        let from = self.config.offset + sector * self.sector_size;
        self.flash
            .erase(from, from + self.sector_size)
            .map_err(flash_err)?;
        self.sectors[sector as usize].erased = true;
        self.stats.erases += 1;
        Ok(())
    }

    fn take_sector(&mut self) -> Result<(), LogError> {
        let n = self.config.sectors;
        let start = self.head.map_or(0, |h| h + 1);
        let Some(next) = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.sectors[i as usize].seq.is_none())
        else {
            return Err(LogError::Full);
        };
        let from = self.config.offset + next * self.sector_size;
        self.head = None;
        // A sector erased since the mount is taken as it is (one erase per
        // turn of the ring); any other free sector may hold a torn header
        // or records and is erased first.
        if !self.sectors[next as usize].erased {
            self.flash
                .erase(from, from + self.sector_size)
                .map_err(flash_err)?;
            self.stats.erases += 1;
        }
        self.sectors[next as usize].erased = false;
        let seq = self.next_seq;
        let mut header = vec![0xFFu8; round_up(HEADER, self.write_size)];
        header[..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].copy_from_slice(&seq.to_le_bytes());
        let crc = CRC32C.checksum(&header[..8]);
        header[8..12].copy_from_slice(&crc.to_le_bytes());
        self.flash.write(from, &header).map_err(flash_err)?;
        self.stats.bytes_programmed += header.len() as u64;
        self.next_seq = seq.wrapping_add(1);
        self.sectors[next as usize] = Sector {
            seq: Some(seq),
            used: header.len() as u32,
            erased: false,
        };
        self.head = Some(next);
        Ok(())
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Reads `out.len()` bytes at `addr`, through an aligned bounce buffer when
/// the flash reads in units larger than a byte.
pub(super) fn read_at<F: NorFlash>(
    flash: &mut F,
    addr: u32,
    out: &mut [u8],
) -> Result<(), LogError> {
    let r = F::READ_SIZE.max(1) as u32;
    if r == 1 {
        return flash.read(addr, out).map_err(flash_err);
    }
    let start = addr / r * r;
    let end = (addr + out.len() as u32).div_ceil(r) * r;
    let mut tmp = vec![0u8; (end - start) as usize];
    flash.read(start, &mut tmp).map_err(flash_err)?;
    let skip = (addr - start) as usize;
    out.copy_from_slice(&tmp[skip..skip + out.len()]);
    Ok(())
}

fn decode_header(h: &[u8; HEADER]) -> Option<u32> {
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    (word(0) == MAGIC && word(8) == CRC32C.checksum(&h[..8])).then(|| word(4))
}

/// Reads the record at `at` of the sector at `base` into `buf` (length
/// field, payload, CRC); its payload length, or `None` at the end of the
/// sector's records (erased, torn, or past the sector).
fn read_record<F: NorFlash>(
    flash: &mut F,
    base: u32,
    at: u32,
    sector_size: u32,
    buf: &mut [u8],
) -> Result<Option<usize>, LogError> {
    if at as usize + FRAMING > sector_size as usize {
        return Ok(None);
    }
    read_at(flash, base + at, &mut buf[..2])?;
    let len = usize::from(u16::from_le_bytes([buf[0], buf[1]]));
    if len > MAX_RECORD || at as usize + FRAMING + len > sector_size as usize {
        return Ok(None);
    }
    read_at(flash, base + at + 2, &mut buf[2..FRAMING + len])?;
    let crc = u32::from_le_bytes([buf[2 + len], buf[3 + len], buf[4 + len], buf[5 + len]]);
    Ok((crc == CRC32C.checksum(&buf[..2 + len])).then_some(len))
}
