//! The public face of the translation layer: [`NorBackend`] over any
//! [`NorFlash`](embedded_storage::nor_flash::NorFlash), its [`Config`],
//! [`Geometry`] and [`Error`]. Design and invariants are in the module doc
//! of [`storage`](super); the machinery is in `ftl.rs` (pages, collection)
//! and `meta.rs` (records, anchors, mount).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use embedded_storage::nor_flash::{NorFlash, NorFlashErrorKind};
use redb::{BackendError, StorageBackend};
use spin::Mutex;

use super::ftl::{ANCHOR_SECTORS, Ftl, RESERVE_DATA, UNMAPPED};
use super::layout::{self, CHUNK};

/// Where the journal lives on the flash and how it is cut up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// First byte of the region, a multiple of the erase size.
    pub offset: u32,
    /// Sectors (erase units) in the region.
    pub sectors: u32,
    /// Bytes of a translation page: the unit of remapping. A power of two,
    /// a multiple of the write size, at most the erase size.
    pub page_size: u32,
    /// Sectors of over-provisioning beyond the two the layer reserves: more
    /// spare sectors means less copying per collected sector. They also
    /// bound a transaction when redb's file fills the logical space: the
    /// committed copies of the pages a transaction changes stay until its
    /// commit, so it can always change `spare_sectors × erase size` bytes of
    /// pages; more fails with [`Error::Full`] if no free space is left.
    pub spare_sectors: u32,
    /// Static wear levelling: when the most-erased sector leads the
    /// least-erased data sector by more than this, that cold sector is
    /// relocated at the next commit.
    pub wear_threshold: u32,
}

impl Config {
    /// `sectors` sectors from `offset`, 512-byte pages, 2 spare sectors,
    /// wear threshold 16.
    #[must_use]
    pub const fn new(offset: u32, sectors: u32) -> Self {
        Self {
            offset,
            sectors,
            page_size: 512,
            spare_sectors: 2,
            wear_threshold: 16,
        }
    }
}

/// The shape of a formatted region, derived from [`Config`] and the flash's
/// sizes, with what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of an erase unit.
    pub sector_size: usize,
    /// Bytes of a program unit.
    pub write_size: usize,
    /// Bytes of a translation page.
    pub page_size: usize,
    /// Sectors in the region.
    pub sectors: usize,
    /// Translation pages per sector.
    pub pages_per_sector: usize,
    /// Logical pages redb can use.
    pub logical_pages: usize,
    /// Bytes of flash in the region.
    pub physical_bytes: u64,
    /// Bytes redb can use: the largest `set_len` that succeeds.
    pub logical_bytes: u64,
    /// Bytes of a snapshot record (it must fit 3/4 of a sector, leaving a
    /// quarter for deltas).
    pub snapshot_bytes: usize,
    /// RAM held while mounted: mapping table, per-sector state, page buffer
    /// (the uncommitted-page shadow map comes on top, ~16 B per page a
    /// transaction changes).
    pub ram_bytes: usize,
}

impl Geometry {
    /// Checks `config` against a flash with these sizes.
    ///
    /// # Errors
    /// [`Error::Geometry`] naming the rule broken.
    pub fn new(
        config: &Config,
        sector_size: usize,
        write_size: usize,
        read_size: usize,
    ) -> Result<Self, Error> {
        let page_size = config.page_size as usize;
        let sectors = config.sectors as usize;
        let rule = |ok: bool, what: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(Error::Geometry(what))
            }
        };
        rule(
            write_size.is_power_of_two() && write_size <= CHUNK,
            "write size must be a power of two of at most 256 bytes",
        )?;
        rule(
            read_size.is_power_of_two() && read_size <= CHUNK,
            "read size must be a power of two of at most 256 bytes",
        )?;
        rule(
            page_size.is_power_of_two() && page_size >= write_size && page_size >= 64,
            "page size must be a power of two, at least 64 and the write size",
        )?;
        rule(
            sector_size.is_multiple_of(page_size),
            "page size must divide the erase size",
        )?;
        rule(
            sector_size >= 2 * CHUNK && sector_size.is_multiple_of(CHUNK),
            "erase size must be a multiple of 256 and at least 512",
        )?;
        rule(
            (config.offset as usize).is_multiple_of(sector_size),
            "region offset must be a multiple of the erase size",
        )?;
        let pages_per_sector = sector_size / page_size;
        rule(
            sectors * pages_per_sector < usize::from(UNMAPPED),
            "more than 65 534 pages: use a larger page size",
        )?;
        let overhead = ANCHOR_SECTORS as usize + 2 + RESERVE_DATA + config.spare_sectors as usize;
        rule(
            sectors > overhead,
            "too few sectors: anchors (2), metadata (2), reserve (2) and spares leave none for data",
        )?;
        let logical_pages = (sectors - overhead) * pages_per_sector;
        let snapshot_bytes = layout::record_len(
            layout::snapshot_body_len(logical_pages, sectors),
            write_size,
        );
        rule(
            snapshot_bytes + sector_size / 4 <= sector_size,
            "mapping snapshot larger than 3/4 of a sector: use a larger page size or fewer sectors",
        )?;
        let ram_bytes = 2 * logical_pages + 7 * sectors + page_size + 2 * CHUNK;
        Ok(Self {
            sector_size,
            write_size,
            page_size,
            sectors,
            pages_per_sector,
            logical_pages,
            physical_bytes: (sectors * sector_size) as u64,
            logical_bytes: (logical_pages * page_size) as u64,
            snapshot_bytes,
            ram_bytes,
        })
    }
}

/// Why the backend refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The flash driver failed.
    Flash(NorFlashErrorKind),
    /// The region does not fit the rules in [`Geometry::new`].
    Geometry(&'static str),
    /// The region was formatted with another page size or sector count.
    FormatMismatch,
    /// No valid anchor: the region was never formatted (use
    /// [`NorBackend::mount_or_format`]).
    NotFormatted,
    /// A record passed its CRC but names pages or sectors outside the region.
    Corrupt(&'static str),
    /// No room. A length beyond [`Geometry::logical_bytes`] is refused with
    /// nothing changed; a write that finds every sector full of live pages
    /// fails part-way, and the backend must be remounted (to the last
    /// commit) before it is used again.
    Full,
    /// A read past the logical length.
    BeyondEnd,
    /// An earlier flash operation failed part-way; remount to continue.
    Failed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flash(kind) => write!(f, "flash error: {kind}"),
            Self::Geometry(rule) => write!(f, "bad flash layout: {rule}"),
            Self::FormatMismatch => {
                f.write_str("region formatted with another page size or sector count")
            }
            Self::NotFormatted => f.write_str("no valid anchor: region not formatted"),
            Self::Corrupt(what) => write!(f, "corrupt metadata: {what}"),
            Self::Full => f.write_str("flash full"),
            Self::BeyondEnd => f.write_str("read beyond the end of the database"),
            Self::Failed => {
                f.write_str("an earlier flash operation failed part-way; remount the flash")
            }
        }
    }
}

impl core::error::Error for Error {}

impl From<Error> for BackendError {
    fn from(err: Error) -> Self {
        BackendError::Other(Box::new(err))
    }
}

/// Counters of what the layer did since mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FtlStats {
    /// Data pages programmed for redb's writes.
    pub pages_written: u64,
    /// Page writes skipped because the bytes were already there.
    pub pages_unchanged: u64,
    /// Pages copied by garbage collection and wear levelling.
    pub pages_relocated: u64,
    /// Metadata records (deltas and snapshots) written.
    pub records: u64,
    /// Metadata sector switches (each writes a snapshot and an anchor entry).
    pub meta_switches: u64,
    /// Commits (`sync_data` calls that wrote a record).
    pub commits: u64,
}

/// redb's [`StorageBackend`] over NOR flash: a flash translation layer with
/// out-of-place writes, wear levelling and an atomic commit at `sync_data`.
pub struct NorBackend<F> {
    ftl: Mutex<Ftl<F>>,
}

impl<F> fmt::Debug for NorBackend<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NorBackend").finish_non_exhaustive()
    }
}

impl<F: NorFlash> NorBackend<F> {
    /// Mounts the region: the newest anchor, its snapshot and deltas give the
    /// state of the last completed `sync_data`; nothing written after it is
    /// visible.
    ///
    /// # Errors
    /// [`Error::NotFormatted`] if no anchor is valid, [`Error::FormatMismatch`],
    /// [`Error::Geometry`], [`Error::Corrupt`], [`Error::Flash`].
    pub fn mount(flash: F, config: Config) -> Result<Self, Error> {
        Ftl::mount(flash, config).map(|ftl| Self {
            ftl: Mutex::new(ftl),
        })
    }

    /// Mounts, or formats the region if no anchor entry is valid (a blank
    /// flash, or one whose formatting was cut short).
    ///
    /// # Errors
    /// As [`NorBackend::mount`], except [`Error::NotFormatted`].
    pub fn mount_or_format(flash: F, config: Config) -> Result<Self, Error> {
        Ftl::mount_or_format(flash, config).map(|ftl| Self {
            ftl: Mutex::new(ftl),
        })
    }

    /// The region's shape.
    pub fn geometry(&self) -> Geometry {
        self.ftl.lock().geo
    }

    /// Counters since mount.
    pub fn stats(&self) -> FtlStats {
        self.ftl.lock().stats
    }

    /// Erase counts per sector as the layer tracks them (erases after the
    /// last record are not yet counted on flash).
    pub fn erase_counts(&self) -> Vec<u32> {
        self.ftl.lock().erases.clone()
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> F {
        self.ftl.into_inner().flash
    }
}

impl<F: NorFlash + Send + 'static> StorageBackend for NorBackend<F> {
    fn len(&self) -> Result<u64, BackendError> {
        Ok(self.ftl.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        Ok(self.ftl.lock().read(offset, out)?)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        let mut ftl = self.ftl.lock();
        ftl.within_capacity(len)?;
        Ok(ftl.guarded(|ftl| ftl.set_len(len))?)
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        Ok(self.ftl.lock().guarded(Ftl::commit)?)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let mut ftl = self.ftl.lock();
        ftl.within_capacity(offset.saturating_add(data.len() as u64))?;
        Ok(ftl.guarded(|ftl| ftl.write(offset, data))?)
    }
}
