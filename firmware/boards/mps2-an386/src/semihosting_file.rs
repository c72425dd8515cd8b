//! The emulated board's flash chip: a file on the host, reached through
//! semihosting file I/O (`SYS_OPEN`, `SYS_SEEK`, `SYS_READ`, `SYS_WRITE`,
//! `SYS_FLEN`), as a [`redb::StorageBackend`]. The file outlives QEMU, so a
//! journal on it survives a power loss (QEMU killed) and a restart.
//!
//! # File layout
//! ```text
//!  0        8                16
//! +--------+----------------+==================================+
//! | FERRYFL1 | length (u64 LE) | storage bytes 0 .. (file end)   |
//! +--------+----------------+==================================+
//! ```
//! Semihosting has no truncate, and redb needs `set_len`; so the storage's
//! length is the **length record** at bytes 8..16, not the file's size.
//! - *shrink*: only the record changes; bytes past it stay in the file and
//!   are never read;
//! - *grow*: the stale bytes between the old length and the new one that
//!   the file still holds are overwritten with zeros first, then the record
//!   changes (redb requires new storage to read as zeros); storage past the
//!   file's end reads as zeros, and writing there extends the file.
//!
//! **Crash consistency.** The record is one 8-byte `SYS_WRITE`, which the
//! host applies whole or not at all when QEMU is killed. Every write reaches
//! the host file before the call returns (QEMU writes through to the host
//! kernel), so `sync_data` has nothing left to do: a QEMU kill loses no write
//! that returned. A crash of the host itself is outside this model; the
//! host's page cache stands in for the chip.
#![allow(unsafe_code)]

use alloc::boxed::Box;
use core::cell::Cell;
use core::fmt;

use cortex_m::interrupt::Mutex;
use cortex_m_semihosting::{nr, syscall};
use redb::{BackendError, StorageBackend};

const MAGIC: [u8; 8] = *b"FERRYFL1";
/// Bytes before storage offset 0.
const HEADER: u64 = 16;
/// Zeros written per call when growing over stale bytes.
const ZERO_CHUNK: usize = 512;

/// A failed semihosting call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashError {
    /// What was being done.
    pub op: &'static str,
    /// Storage offset, where it applies.
    pub offset: u64,
}

impl fmt::Display for FlashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flash file: {} failed at {}", self.op, self.offset)
    }
}

impl core::error::Error for FlashError {}

fn err(op: &'static str, offset: u64) -> BackendError {
    BackendError::Other(Box::new(FlashError { op, offset }))
}

/// Why the flash file could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The path is too long (or empty).
    BadPath,
    /// The host refused to open or create the file.
    Open,
    /// The file is not empty and does not start with the magic.
    NotAFlashFile,
    /// Reading the header failed.
    Io(FlashError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPath => write!(f, "flash path is empty or longer than 255 bytes"),
            Self::Open => write!(f, "the host could not open or create the flash file"),
            Self::NotAFlashFile => write!(f, "the file is not a ferry flash file (bad magic)"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The host file standing in for the flash chip.
pub struct SemihostingFile {
    handle: usize,
    /// The length record, mirrored.
    len: Mutex<Cell<u64>>,
}

impl fmt::Debug for SemihostingFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemihostingFile")
            .field("handle", &self.handle)
            .field("len", &self.logical_len())
            .finish()
    }
}

impl SemihostingFile {
    /// Opens `path` on the host, creating an empty flash file if there is
    /// none.
    pub fn open(path: &str) -> Result<Self, OpenError> {
        let mut name = [0u8; 256];
        if path.is_empty() || path.len() >= name.len() {
            return Err(OpenError::BadPath);
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
        if handle < 0 {
            return Err(OpenError::Open);
        }
        let file = Self {
            handle: handle as usize,
            len: Mutex::new(Cell::new(0)),
        };
        let size = file.file_len().map_err(|_| OpenError::Open)?;
        if size == 0 {
            file.write_header(0).map_err(|_| {
                OpenError::Io(FlashError {
                    op: "init",
                    offset: 0,
                })
            })?;
            return Ok(file);
        }
        let mut header = [0u8; HEADER as usize];
        if size < HEADER || file.read_at(0, &mut header).is_err() || header[..8] != MAGIC {
            return Err(OpenError::NotAFlashFile);
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[8..]);
        file.set_logical_len(u64::from_le_bytes(len));
        Ok(file)
    }

    fn logical_len(&self) -> u64 {
        cortex_m::interrupt::free(|cs| self.len.borrow(cs).get())
    }

    fn set_logical_len(&self, len: u64) {
        cortex_m::interrupt::free(|cs| self.len.borrow(cs).set(len));
    }

    /// The host file's size (header included).
    fn file_len(&self) -> Result<u64, FlashError> {
        let args = [self.handle];
        // SAFETY: SYS_FLEN takes a block holding the handle, which lives
        // across the call.
        let n = unsafe { syscall(nr::FLEN, &args) as isize };
        u64::try_from(n).map_err(|_| FlashError {
            op: "size",
            offset: 0,
        })
    }

    fn seek(&self, pos: u64) -> Result<(), FlashError> {
        let fail = FlashError {
            op: "seek",
            offset: pos,
        };
        let args = [self.handle, usize::try_from(pos).map_err(|_| fail)?];
        // SAFETY: SYS_SEEK takes a block of the handle and the position.
        let status = unsafe { syscall(nr::SEEK, &args) as isize };
        if status == 0 { Ok(()) } else { Err(fail) }
    }

    /// Reads at file position `pos`; returns the bytes actually read (fewer
    /// at the end of the file).
    fn read_at(&self, pos: u64, out: &mut [u8]) -> Result<usize, FlashError> {
        self.seek(pos)?;
        let args = [self.handle, out.as_mut_ptr() as usize, out.len()];
        // SAFETY: SYS_READ writes at most `out.len()` bytes into `out`, which
        // is borrowed mutably across the call. It returns the bytes *not* read.
        let left = unsafe { syscall(nr::READ, &args) };
        if left > out.len() {
            return Err(FlashError {
                op: "read",
                offset: pos,
            });
        }
        Ok(out.len() - left)
    }

    fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), FlashError> {
        self.seek(pos)?;
        let args = [self.handle, data.as_ptr() as usize, data.len()];
        // SAFETY: SYS_WRITE reads `data.len()` bytes of `data`, borrowed
        // across the call. It returns the bytes *not* written.
        let left = unsafe { syscall(nr::WRITE, &args) };
        if left == 0 {
            Ok(())
        } else {
            Err(FlashError {
                op: "write",
                offset: pos,
            })
        }
    }

    fn write_header(&self, len: u64) -> Result<(), FlashError> {
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(&MAGIC);
        header[8..].copy_from_slice(&len.to_le_bytes());
        // One write of the whole header on creation; afterwards only the
        // 8-byte record changes, in one call.
        if self.file_len()? < HEADER {
            self.write_at(0, &header)?;
        } else {
            self.write_at(8, &header[8..])?;
        }
        self.set_logical_len(len);
        Ok(())
    }
}

impl StorageBackend for SemihostingFile {
    fn len(&self) -> Result<u64, BackendError> {
        Ok(self.logical_len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let end = offset.checked_add(out.len() as u64);
        if end.is_none_or(|e| e > self.logical_len()) {
            return Err(err("read past the end", offset));
        }
        let n = self
            .read_at(HEADER + offset, out)
            .map_err(|e| err(e.op, offset))?;
        // Storage past the file's end has never been written: zeros.
        out[n..].fill(0);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        let old = self.logical_len();
        if len > old {
            let file_end = self
                .file_len()
                .map_err(|e| err(e.op, old))?
                .saturating_sub(HEADER);
            let zeros = [0u8; ZERO_CHUNK];
            let mut at = old;
            while at < len.min(file_end) {
                let n = (len.min(file_end) - at).min(ZERO_CHUNK as u64) as usize;
                self.write_at(HEADER + at, &zeros[..n])
                    .map_err(|e| err(e.op, at))?;
                at += n as u64;
            }
        }
        self.write_header(len).map_err(|e| err(e.op, len))
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        // Every write already reached the host file (module docs).
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > self.logical_len()) {
            return Err(err("write past the end", offset));
        }
        self.write_at(HEADER + offset, data)
            .map_err(|e| err(e.op, offset))
    }

    fn close(&self) -> Result<(), BackendError> {
        let args = [self.handle];
        // SAFETY: SYS_CLOSE takes a block holding the handle; redb calls
        // close once and never uses the backend afterwards.
        let status = unsafe { syscall(nr::CLOSE, &args) as isize };
        if status == 0 {
            Ok(())
        } else {
            Err(err("close", 0))
        }
    }
}
