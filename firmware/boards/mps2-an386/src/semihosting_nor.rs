//! A NOR flash chip played by a host file, reached through semihosting:
//! where the emulated journal board keeps its report log and drop tally
//! (`ferry_firmware::storage::{ReportLog, Tally}`), with the rules of real
//! NOR flash — erase sets a sector to `0xFF`, a program only clears bits
//! (the file gets the AND of old and new) — so the log code runs here as
//! it runs on the nRF52840's NVMC. Sectors of 1 KiB, 4-byte words: small
//! sectors, so that the power-loss test's outages fill the log and fold it
//! into the journal.
//!
//! The file is `sectors × 1 KiB`, created erased (`0xFF`). A QEMU kill
//! lands between two host writes, never inside one, so a program or an
//! erase is whole or absent; the log's CRCs cover the rest.
#![allow(unsafe_code)]

use cortex_m_semihosting::{nr, syscall};
use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Bytes of an erase sector.
pub const SECTOR: usize = 1024;

/// A semihosting call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NorFileError(NorFlashErrorKind);

impl NorFlashError for NorFileError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

/// One handle to the host file; open it once per owner (each keeps to its
/// own region).
pub struct SemihostingNor {
    handle: usize,
    sectors: usize,
}

impl SemihostingNor {
    /// Opens `path` (a NUL-free host path) as a chip of `sectors` sectors,
    /// creating it erased if it is missing or shorter. `None` if the host
    /// refuses.
    pub fn open(path: &str, sectors: usize) -> Option<Self> {
        let mut name = [0u8; 256];
        if path.is_empty() || path.len() >= name.len() {
            return None;
        }
        name[..path.len()].copy_from_slice(path.as_bytes());
        let open = |mode: usize| {
            let args = [name.as_ptr() as usize, mode, path.len()];
            // SAFETY: SYS_OPEN reads `path.len()` bytes of the NUL-terminated
            // name in `name`; both live across the call.
            unsafe { syscall(nr::OPEN, &args) as isize }
        };
        let mut handle = open(nr::open::RW_BINARY);
        if handle < 0 {
            handle = open(nr::open::RW_TRUNC_BINARY);
        }
        let flash = Self {
            handle: usize::try_from(handle).ok()?,
            sectors,
        };
        let args = [flash.handle];
        // SAFETY: SYS_FLEN takes a block holding the handle.
        let size = unsafe { syscall(nr::FLEN, &args) as isize };
        let size = usize::try_from(size).ok()?;
        let erased = [0xFFu8; SECTOR];
        let mut at = size / SECTOR * SECTOR;
        while at < sectors * SECTOR {
            flash.write_at(at, &erased).ok()?;
            at += SECTOR;
        }
        Some(flash)
    }

    fn seek(&self, pos: usize) -> Result<(), NorFileError> {
        let args = [self.handle, pos];
        // SAFETY: SYS_SEEK takes a block of the handle and the position.
        let status = unsafe { syscall(nr::SEEK, &args) as isize };
        if status == 0 {
            Ok(())
        } else {
            Err(NorFileError(NorFlashErrorKind::Other))
        }
    }

    fn read_at(&self, pos: usize, out: &mut [u8]) -> Result<(), NorFileError> {
        self.seek(pos)?;
        let args = [self.handle, out.as_mut_ptr() as usize, out.len()];
        // SAFETY: SYS_READ writes at most `out.len()` bytes into `out`,
        // borrowed mutably across the call; it returns the bytes not read.
        let left = unsafe { syscall(nr::READ, &args) };
        if left == 0 {
            Ok(())
        } else {
            Err(NorFileError(NorFlashErrorKind::Other))
        }
    }

    fn write_at(&self, pos: usize, data: &[u8]) -> Result<(), NorFileError> {
        self.seek(pos)?;
        let args = [self.handle, data.as_ptr() as usize, data.len()];
        // SAFETY: SYS_WRITE reads `data.len()` bytes of `data`, borrowed
        // across the call; it returns the bytes not written.
        let left = unsafe { syscall(nr::WRITE, &args) };
        if left == 0 {
            Ok(())
        } else {
            Err(NorFileError(NorFlashErrorKind::Other))
        }
    }

    fn check(&self, offset: u32, len: usize, align: usize) -> Result<usize, NorFileError> {
        let start = offset as usize;
        if start + len > self.sectors * SECTOR {
            return Err(NorFileError(NorFlashErrorKind::OutOfBounds));
        }
        if !start.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(NorFileError(NorFlashErrorKind::NotAligned));
        }
        Ok(start)
    }
}

impl ErrorType for SemihostingNor {
    type Error = NorFileError;
}

impl ReadNorFlash for SemihostingNor {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let start = self.check(offset, bytes.len(), 1)?;
        self.read_at(start, bytes)
    }

    fn capacity(&self) -> usize {
        self.sectors * SECTOR
    }
}

impl NorFlash for SemihostingNor {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let start = self.check(from, to.saturating_sub(from) as usize, SECTOR)?;
        let erased = [0xFFu8; SECTOR];
        for at in (start..to as usize).step_by(SECTOR) {
            self.write_at(at, &erased)?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let start = self.check(offset, bytes.len(), Self::WRITE_SIZE)?;
        // Programming clears bits only: the AND of what is there and what
        // is written, in chunks of a sector.
        let mut cell = [0u8; SECTOR];
        for (k, chunk) in bytes.chunks(SECTOR).enumerate() {
            let at = start + k * SECTOR;
            let cell = &mut cell[..chunk.len()];
            self.read_at(at, cell)?;
            for (c, b) in cell.iter_mut().zip(chunk) {
                *c &= b;
            }
            self.write_at(at, cell)?;
        }
        Ok(())
    }
}
