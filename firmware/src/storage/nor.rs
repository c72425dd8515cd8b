//! The translation layer itself: [`NorBackend`] over any
//! [`NorFlash`](embedded_storage::nor_flash::NorFlash). Design and invariants
//! are in the module doc of [`storage`](super).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};
use redb::{BackendError, StorageBackend};
use spin::Mutex;

use super::layout::{
    self, ANCHOR_LEN, Anchor, CHUNK, KIND_DELTA, KIND_SNAPSHOT, RECORD_CRC, RECORD_HEADER,
    RecordHeader, RecordWriter,
};

/// A physical or logical page number that maps nothing.
const UNMAPPED: u16 = u16::MAX;
/// Sectors 0 and 1 of the region hold anchor entries.
const ANCHOR_SECTORS: u32 = 2;
/// Free sectors kept back from redb's writes: one for garbage collection to
/// relocate into, one for a metadata sector switch.
const RESERVE_DATA: usize = 2;
/// Free sectors kept back from garbage collection: the metadata switch.
const RESERVE_GC: usize = 1;

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
    /// spare sectors means less copying per collected sector.
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

fn flash_err<E: NorFlashError>(err: E) -> Error {
    Error::Flash(err.kind())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sector {
    Anchor,
    /// The sector the current metadata records go to.
    Meta,
    /// Holds data pages; `live` counts the referenced ones.
    Data,
    /// No reference from the current or the committed state: erased before
    /// reuse.
    Dirty,
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

struct Ftl<F> {
    flash: F,
    config: Config,
    geo: Geometry,
    /// Current state: logical page → physical page, or `UNMAPPED`.
    map: Vec<u16>,
    /// For each logical page changed since the last commit: its committed
    /// physical page. The committed state is `map` overlaid with `shadow`.
    shadow: BTreeMap<u16, u16>,
    len: u64,
    committed_len: u64,
    kinds: Vec<Sector>,
    /// Physical pages of the sector referenced by `map` or `shadow`.
    live: Vec<u16>,
    erases: Vec<u32>,
    /// Erases not yet in a record.
    pending_erases: Vec<u16>,
    /// Data sector being filled and its next free slot.
    head: Option<(u32, u32)>,
    meta_sector: u32,
    meta_offset: usize,
    record_seq: u32,
    anchor_sector: u32,
    anchor_slot: usize,
    anchor_seq: u32,
    /// Sector being collected: stays referenced until its record is written.
    collecting: Option<u32>,
    page: Vec<u8>,
    failed: bool,
    stats: FtlStats,
}

impl<F: NorFlash> Ftl<F> {
    fn new(flash: F, config: Config) -> Result<Self, Error> {
        let geo = Geometry::new(&config, F::ERASE_SIZE, F::WRITE_SIZE, F::READ_SIZE)?;
        let region_end = u64::from(config.offset) + geo.physical_bytes;
        if region_end > flash.capacity() as u64 {
            return Err(Error::Geometry("region extends past the end of the flash"));
        }
        Ok(Self {
            flash,
            config,
            geo,
            map: vec![UNMAPPED; geo.logical_pages],
            shadow: BTreeMap::new(),
            len: 0,
            committed_len: 0,
            kinds: vec![Sector::Dirty; geo.sectors],
            live: vec![0; geo.sectors],
            erases: vec![0; geo.sectors],
            pending_erases: Vec::new(),
            head: None,
            meta_sector: 0,
            meta_offset: 0,
            record_seq: 0,
            anchor_sector: 0,
            anchor_slot: 0,
            anchor_seq: 0,
            collecting: None,
            page: vec![0; geo.page_size],
            failed: false,
            stats: FtlStats::default(),
        })
    }

    fn mount_or_format(flash: F, config: Config) -> Result<Self, Error> {
        let mut ftl = Self::new(flash, config)?;
        match ftl.load() {
            Err(Error::NotFormatted) => {
                ftl.format()?;
                Ok(ftl)
            }
            Err(err) => Err(err),
            Ok(()) => Ok(ftl),
        }
    }

    fn mount(flash: F, config: Config) -> Result<Self, Error> {
        let mut ftl = Self::new(flash, config)?;
        ftl.load()?;
        Ok(ftl)
    }

    /// A length the region cannot hold is refused before anything changes,
    /// and the backend stays usable.
    fn within_capacity(&self, len: u64) -> Result<(), Error> {
        if len > self.geo.logical_bytes {
            return Err(Error::Full);
        }
        Ok(())
    }

    /// Runs a mutating operation. A failure part-way (a flash error, or no
    /// sector left to collect into) leaves RAM ahead of the flash, so every
    /// later call fails with [`Error::Failed`] until a remount, which
    /// returns to the last commit.
    fn guarded(&mut self, op: impl FnOnce(&mut Self) -> Result<(), Error>) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Failed);
        }
        let result = op(self);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    // ---- addresses ----

    fn sector_addr(&self, sector: u32) -> u32 {
        self.config.offset + sector * self.geo.sector_size as u32
    }

    fn page_addr(&self, ppn: u16) -> u32 {
        let k = self.geo.pages_per_sector as u32;
        self.sector_addr(u32::from(ppn) / k) + (u32::from(ppn) % k) * self.geo.page_size as u32
    }

    fn sector_of(&self, ppn: u16) -> usize {
        usize::from(ppn) / self.geo.pages_per_sector
    }

    fn anchor_slots(&self) -> usize {
        self.geo.sector_size / layout::round_up(ANCHOR_LEN, self.geo.write_size)
    }

    fn anchor_addr(&self, sector: u32, slot: usize) -> u32 {
        self.sector_addr(sector) + (slot * layout::round_up(ANCHOR_LEN, self.geo.write_size)) as u32
    }

    // ---- flash primitives ----

    fn flash_read(&mut self, addr: u32, out: &mut [u8]) -> Result<(), Error> {
        let r = F::READ_SIZE;
        if r == 1 {
            return self.flash.read(addr, out).map_err(flash_err);
        }
        let mut bounce = [0u8; CHUNK];
        let mut done = 0;
        while done < out.len() {
            let at = addr as usize + done;
            let start = at - at % r;
            let skip = at - start;
            let take = (CHUNK - skip).min(out.len() - done);
            let span = layout::round_up(skip + take, r);
            self.flash
                .read(start as u32, &mut bounce[..span])
                .map_err(flash_err)?;
            out[done..done + take].copy_from_slice(&bounce[skip..skip + take]);
            done += take;
        }
        Ok(())
    }

    fn erase_sector(&mut self, sector: u32) -> Result<(), Error> {
        let from = self.sector_addr(sector);
        self.erases[sector as usize] += 1;
        self.pending_erases.push(sector as u16);
        self.flash
            .erase(from, from + self.geo.sector_size as u32)
            .map_err(flash_err)
    }

    // ---- format and mount ----

    fn format(&mut self) -> Result<(), Error> {
        self.erase_sector(0)?;
        self.erase_sector(1)?;
        for sector in ANCHOR_SECTORS as usize..self.geo.sectors {
            self.kinds[sector] = Sector::Dirty;
        }
        self.kinds[0] = Sector::Anchor;
        self.kinds[1] = Sector::Anchor;
        self.anchor_sector = 0;
        self.anchor_slot = 0;
        self.anchor_seq = 0;
        // No meta sector yet: the switch writes the first snapshot and anchor.
        self.meta_sector = u32::MAX;
        self.switch_meta(false)
    }

    /// Reads the newest anchor, its snapshot and deltas into RAM, then moves
    /// the metadata to a fresh sector (the old one may end in a torn record).
    fn load(&mut self) -> Result<(), Error> {
        let mut newest: Option<(Anchor, u32, usize)> = None;
        let mut last_used = [None::<usize>; 2];
        for sector in 0..ANCHOR_SECTORS {
            for slot in 0..self.anchor_slots() {
                let mut bytes = [0u8; ANCHOR_LEN];
                let addr = self.anchor_addr(sector, slot);
                self.flash_read(addr, &mut bytes)?;
                if bytes.iter().all(|&b| b == 0xFF) {
                    continue;
                }
                last_used[sector as usize] = Some(slot);
                if let Some(anchor) = Anchor::decode(&bytes)
                    && newest.is_none_or(|(n, _, _)| anchor.seq > n.seq)
                {
                    newest = Some((anchor, sector, slot));
                }
            }
        }
        let Some((anchor, sector, _)) = newest else {
            return Err(Error::NotFormatted);
        };
        if anchor.page_size != self.config.page_size || anchor.sectors != self.config.sectors {
            return Err(Error::FormatMismatch);
        }
        if anchor.meta_sector < ANCHOR_SECTORS || anchor.meta_sector as usize >= self.geo.sectors {
            return Err(Error::Corrupt("anchor names a sector outside the pool"));
        }
        self.anchor_seq = anchor.seq;
        self.anchor_sector = sector;
        // Append after anything programmed, torn or not.
        self.anchor_slot = last_used[sector as usize].map_or(0, |slot| slot + 1);
        self.kinds[0] = Sector::Anchor;
        self.kinds[1] = Sector::Anchor;
        self.meta_sector = anchor.meta_sector;
        self.kinds[anchor.meta_sector as usize] = Sector::Meta;
        self.replay(anchor.meta_sector)?;
        for ppn in self.map.clone() {
            if ppn != UNMAPPED {
                let sector = self.sector_of(ppn);
                if self.kinds[sector] != Sector::Data && self.kinds[sector] != Sector::Dirty {
                    return Err(Error::Corrupt(
                        "a page maps into an anchor or metadata sector",
                    ));
                }
                self.kinds[sector] = Sector::Data;
                self.live[sector] += 1;
            }
        }
        self.switch_meta(false)
    }

    fn replay(&mut self, meta: u32) -> Result<(), Error> {
        let base = self.sector_addr(meta);
        let mut offset = 0;
        let mut first = true;
        while offset + RECORD_HEADER + RECORD_CRC <= self.geo.sector_size {
            let mut header = [0u8; RECORD_HEADER];
            self.flash_read(base + offset as u32, &mut header)?;
            let Some(h) = RecordHeader::decode(&header) else {
                break;
            };
            let total = layout::record_len(h.body_len, self.geo.write_size);
            if offset + total > self.geo.sector_size
                || (first && h.kind != KIND_SNAPSHOT)
                || (!first && (h.kind != KIND_DELTA || h.seq != self.record_seq.wrapping_add(1)))
            {
                break;
            }
            let mut bytes = vec![0u8; RECORD_HEADER + h.body_len + RECORD_CRC];
            self.flash_read(base + offset as u32, &mut bytes)?;
            if !layout::record_crc_ok(&bytes) {
                break;
            }
            let body = &bytes[RECORD_HEADER..RECORD_HEADER + h.body_len];
            if first {
                self.apply_snapshot(body)?;
            } else {
                self.apply_delta(body)?;
            }
            self.record_seq = h.seq;
            first = false;
            offset += total;
        }
        if first {
            return Err(Error::Corrupt("the anchored sector has no valid snapshot"));
        }
        Ok(())
    }

    fn apply_snapshot(&mut self, body: &[u8]) -> Result<(), Error> {
        let pages = self.geo.logical_pages;
        let sectors = self.geo.sectors;
        if body.len() != layout::snapshot_body_len(pages, sectors)
            || layout::u32_at(body, 8) as usize != pages
            || layout::u32_at(body, 12) as usize != sectors
        {
            return Err(Error::Corrupt("snapshot of another size"));
        }
        let len = layout::u64_at(body, 0);
        self.set_loaded_len(len)?;
        for lpn in 0..pages {
            let ppn = layout::u16_at(body, layout::SNAPSHOT_FIXED + 2 * lpn);
            self.set_loaded(lpn, ppn)?;
        }
        let base = layout::SNAPSHOT_FIXED + 2 * pages;
        for sector in 0..sectors {
            self.erases[sector] = layout::u32_at(body, base + 4 * sector);
        }
        Ok(())
    }

    fn apply_delta(&mut self, body: &[u8]) -> Result<(), Error> {
        let delta = layout::decode_delta(body).ok_or(Error::Corrupt("malformed delta"))?;
        self.set_loaded_len(delta.len)?;
        for (lpn, ppn) in delta.entries {
            self.set_loaded(usize::from(lpn), ppn)?;
        }
        for sector in delta.erased {
            let count = self
                .erases
                .get_mut(usize::from(sector))
                .ok_or(Error::Corrupt("erase of a sector outside the region"))?;
            *count += 1;
        }
        Ok(())
    }

    fn set_loaded_len(&mut self, len: u64) -> Result<(), Error> {
        if len > self.geo.logical_bytes {
            return Err(Error::Corrupt("length beyond capacity"));
        }
        self.len = len;
        self.committed_len = len;
        Ok(())
    }

    fn set_loaded(&mut self, lpn: usize, ppn: u16) -> Result<(), Error> {
        let total = (self.geo.sectors * self.geo.pages_per_sector) as u16;
        let slot = self
            .map
            .get_mut(lpn)
            .ok_or(Error::Corrupt("logical page beyond capacity"))?;
        if ppn != UNMAPPED && ppn >= total {
            return Err(Error::Corrupt("physical page outside the region"));
        }
        *slot = ppn;
        Ok(())
    }

    // ---- metadata ----

    /// Starts a fresh metadata sector with a snapshot of the committed state
    /// (or, when `committing`, of the current state, which this makes the
    /// committed one), then points a new anchor entry at it.
    fn switch_meta(&mut self, committing: bool) -> Result<(), Error> {
        let sector = self.take_sector(0).ok_or(Error::Full)?;
        self.erase_sector(sector)?;
        let pages = self.geo.logical_pages;
        let sectors = self.geo.sectors;
        let body_len = layout::snapshot_body_len(pages, sectors);
        let seq = self.record_seq.wrapping_add(1);
        let header = RecordHeader {
            kind: KIND_SNAPSHOT,
            body_len,
            seq,
        };
        let mut writer = RecordWriter::new(self.sector_addr(sector));
        let flash = &mut self.flash;
        let mut program = |addr: u32, bytes: &[u8]| flash.write(addr, bytes).map_err(flash_err);
        writer.push(&header.encode(), &mut program)?;
        let len = if committing {
            self.len
        } else {
            self.committed_len
        };
        writer.push(&len.to_le_bytes(), &mut program)?;
        writer.push(&(pages as u32).to_le_bytes(), &mut program)?;
        writer.push(&(sectors as u32).to_le_bytes(), &mut program)?;
        for (lpn, &ppn) in self.map.iter().enumerate() {
            let ppn = if committing {
                ppn
            } else {
                self.shadow.get(&(lpn as u16)).copied().unwrap_or(ppn)
            };
            writer.push(&ppn.to_le_bytes(), &mut program)?;
        }
        for count in &self.erases {
            writer.push(&count.to_le_bytes(), &mut program)?;
        }
        writer.finish(self.geo.write_size, &mut program)?;
        self.pending_erases.clear();
        self.record_seq = seq;
        self.stats.records += 1;
        self.stats.meta_switches += 1;

        self.write_anchor(sector)?;
        let old = self.meta_sector;
        self.kinds[sector as usize] = Sector::Meta;
        self.meta_sector = sector;
        self.meta_offset = layout::record_len(body_len, self.geo.write_size);
        if (old as usize) < self.geo.sectors {
            self.kinds[old as usize] = Sector::Dirty;
        }
        Ok(())
    }

    fn write_anchor(&mut self, meta_sector: u32) -> Result<(), Error> {
        if self.anchor_slot >= self.anchor_slots() {
            // The other anchor sector only holds older entries.
            self.anchor_sector = 1 - self.anchor_sector;
            self.anchor_slot = 0;
            self.erase_sector(self.anchor_sector)?;
        }
        self.anchor_seq = self.anchor_seq.wrapping_add(1);
        let entry = Anchor {
            seq: self.anchor_seq,
            meta_sector,
            page_size: self.config.page_size,
            sectors: self.config.sectors,
        }
        .encode();
        let mut unit = [0xFFu8; CHUNK];
        unit[..ANCHOR_LEN].copy_from_slice(&entry);
        let size = layout::round_up(ANCHOR_LEN, self.geo.write_size);
        let addr = self.anchor_addr(self.anchor_sector, self.anchor_slot);
        self.anchor_slot += 1;
        self.flash.write(addr, &unit[..size]).map_err(flash_err)
    }

    /// Makes `entries` (logical → physical) and `len` the committed state:
    /// a delta record, or a snapshot in a fresh sector if it does not fit.
    fn persist(&mut self, entries: &[(u16, u16)], len: u64, committing: bool) -> Result<(), Error> {
        let body_len = layout::delta_body_len(entries.len(), self.pending_erases.len());
        let total = layout::record_len(body_len, self.geo.write_size);
        if body_len > usize::from(u16::MAX) || self.meta_offset + total > self.geo.sector_size {
            return self.switch_meta(committing);
        }
        let seq = self.record_seq.wrapping_add(1);
        let header = RecordHeader {
            kind: KIND_DELTA,
            body_len,
            seq,
        };
        let mut writer =
            RecordWriter::new(self.sector_addr(self.meta_sector) + self.meta_offset as u32);
        let flash = &mut self.flash;
        let mut program = |addr: u32, bytes: &[u8]| flash.write(addr, bytes).map_err(flash_err);
        writer.push(&header.encode(), &mut program)?;
        writer.push(&len.to_le_bytes(), &mut program)?;
        writer.push(&(entries.len() as u16).to_le_bytes(), &mut program)?;
        writer.push(
            &(self.pending_erases.len() as u16).to_le_bytes(),
            &mut program,
        )?;
        for (lpn, ppn) in entries {
            writer.push(&lpn.to_le_bytes(), &mut program)?;
            writer.push(&ppn.to_le_bytes(), &mut program)?;
        }
        for sector in &self.pending_erases {
            writer.push(&sector.to_le_bytes(), &mut program)?;
        }
        writer.finish(self.geo.write_size, &mut program)?;
        self.pending_erases.clear();
        self.record_seq = seq;
        self.meta_offset += total;
        self.stats.records += 1;
        Ok(())
    }

    // ---- allocation and garbage collection ----

    /// The least-erased sector that no state references, if more than
    /// `reserve` such sectors exist.
    fn take_sector(&self, reserve: usize) -> Option<u32> {
        let mut free = 0;
        let mut best: Option<usize> = None;
        for (sector, kind) in self.kinds.iter().enumerate() {
            if *kind == Sector::Dirty {
                free += 1;
                if best.is_none_or(|b| self.erases[sector] < self.erases[b]) {
                    best = Some(sector);
                }
            }
        }
        if free > reserve {
            best.map(|s| s as u32)
        } else {
            None
        }
    }

    /// A slot for a page: in the head sector, or a fresh sector taken from
    /// the free ones beyond `reserve`.
    fn slot(&mut self, reserve: usize) -> Result<Option<u16>, Error> {
        let k = self.geo.pages_per_sector as u32;
        if let Some((sector, next)) = self.head
            && next < k
        {
            self.head = Some((sector, next + 1));
            return Ok(Some((sector * k + next) as u16));
        }
        // A full head is closed, so that it can be collected.
        self.close_head();
        let Some(sector) = self.take_sector(reserve) else {
            return Ok(None);
        };
        self.erase_sector(sector)?;
        self.kinds[sector as usize] = Sector::Data;
        self.head = Some((sector, 1));
        Ok(Some((sector * k) as u16))
    }

    /// A slot for redb's data, collecting garbage if the free sectors are
    /// down to the reserve.
    fn data_slot(&mut self) -> Result<u16, Error> {
        loop {
            if let Some(ppn) = self.slot(RESERVE_DATA)? {
                return Ok(ppn);
            }
            let victim = self.victim().ok_or(Error::Full)?;
            // Collection must be able to finish once started: its copies go
            // to the head and to free sectors beyond the metadata reserve.
            let head_free = self
                .head
                .map_or(0, |(_, next)| self.geo.pages_per_sector - next as usize);
            let free = self.kinds.iter().filter(|k| **k == Sector::Dirty).count();
            let room = head_free + free.saturating_sub(RESERVE_GC) * self.geo.pages_per_sector;
            if usize::from(self.live[victim as usize]) > room {
                return Err(Error::Full);
            }
            self.collect(victim)?;
        }
    }

    fn close_head(&mut self) {
        if let Some((sector, _)) = self.head.take()
            && self.live[sector as usize] == 0
        {
            self.kinds[sector as usize] = Sector::Dirty;
        }
    }

    /// The data sector with the fewest live pages, if it has a dead one.
    fn victim(&self) -> Option<u32> {
        let k = self.geo.pages_per_sector as u16;
        let head = self.head.map(|(s, _)| s as usize);
        (0..self.geo.sectors)
            .filter(|&s| self.kinds[s] == Sector::Data && Some(s) != head && self.live[s] < k)
            .min_by_key(|&s| (self.live[s], self.erases[s]))
            .map(|s| s as u32)
    }

    /// Copies the live pages of `victim` to the head, records the new places
    /// of committed pages, then frees the sector.
    fn collect(&mut self, victim: u32) -> Result<(), Error> {
        let k = self.geo.pages_per_sector;
        let lo = victim as usize * k;
        let in_victim = |ppn: u16| ppn != UNMAPPED && (lo..lo + k).contains(&usize::from(ppn));
        self.collecting = Some(victim);
        let mut moves: Vec<(u16, u16)> = Vec::new(); // (lpn, old ppn)
        for (lpn, &ppn) in self.map.iter().enumerate() {
            if in_victim(ppn) {
                moves.push((lpn as u16, ppn));
            }
        }
        for (&lpn, &ppn) in &self.shadow {
            if in_victim(ppn) && self.map[usize::from(lpn)] != ppn {
                moves.push((lpn, ppn));
            }
        }
        let mut committed: Vec<(u16, u16)> = Vec::new();
        for (lpn, old) in moves {
            // Callers check the room first; running out here is a bug, and
            // poisons the backend rather than leave the sector half moved.
            let new = self.slot(RESERVE_GC)?.ok_or(Error::Failed)?;
            self.copy_page(old, new)?;
            self.stats.pages_relocated += 1;
            let in_map = self.map[usize::from(lpn)] == old;
            let shadowed = self.shadow.get(&lpn).copied();
            if in_map {
                self.map[usize::from(lpn)] = new;
            }
            match shadowed {
                None => committed.push((lpn, new)),
                Some(c) if c == old => {
                    self.shadow.insert(lpn, new);
                    committed.push((lpn, new));
                }
                Some(_) => {}
            }
            let sector = self.sector_of(new);
            self.live[sector] += 1;
            self.live[victim as usize] -= 1;
        }
        if !committed.is_empty() {
            let len = self.committed_len;
            self.persist(&committed, len, false)?;
        }
        self.collecting = None;
        self.kinds[victim as usize] = Sector::Dirty;
        Ok(())
    }

    fn copy_page(&mut self, from: u16, to: u16) -> Result<(), Error> {
        let (src, dst) = (self.page_addr(from), self.page_addr(to));
        let mut chunk = [0u8; CHUNK];
        let mut done = 0;
        while done < self.geo.page_size {
            let n = CHUNK.min(self.geo.page_size - done);
            self.flash_read(src + done as u32, &mut chunk[..n])?;
            self.flash
                .write(dst + done as u32, &chunk[..n])
                .map_err(flash_err)?;
            done += n;
        }
        Ok(())
    }

    /// Drops a reference to `ppn`; a sector left with none is freed unless
    /// it is the head or being collected.
    fn release(&mut self, ppn: u16) {
        if ppn == UNMAPPED {
            return;
        }
        let sector = self.sector_of(ppn);
        self.live[sector] -= 1;
        if self.live[sector] == 0
            && self.head.map(|(s, _)| s as usize) != Some(sector)
            && self.collecting.map(|s| s as usize) != Some(sector)
        {
            self.kinds[sector] = Sector::Dirty;
        }
    }

    /// Points `lpn` at `ppn` in the current state, keeping its committed
    /// page referenced until the next commit.
    fn remap(&mut self, lpn: u16, ppn: u16) {
        let old = self.map[usize::from(lpn)];
        match self.shadow.get(&lpn) {
            None => {
                self.shadow.insert(lpn, old);
            }
            Some(&committed) if committed != old => self.release(old),
            Some(_) => {}
        }
        self.map[usize::from(lpn)] = ppn;
        if ppn != UNMAPPED {
            let sector = self.sector_of(ppn);
            self.live[sector] += 1;
        }
    }

    // ---- redb's operations ----

    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Failed);
        }
        let end = offset
            .checked_add(out.len() as u64)
            .ok_or(Error::BeyondEnd)?;
        if end > self.len {
            return Err(Error::BeyondEnd);
        }
        let p = self.geo.page_size as u64;
        let mut done = 0;
        while done < out.len() {
            let at = offset + done as u64;
            let lpn = (at / p) as usize;
            let within = (at % p) as usize;
            let n = (self.geo.page_size - within).min(out.len() - done);
            let ppn = self.map[lpn];
            if ppn == UNMAPPED {
                out[done..done + n].fill(0);
            } else {
                let addr = self.page_addr(ppn) + within as u32;
                self.flash_read(addr, &mut out[done..done + n])?;
            }
            done += n;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let end = offset.checked_add(data.len() as u64).ok_or(Error::Full)?;
        if end > self.geo.logical_bytes {
            return Err(Error::Full);
        }
        if end > self.len {
            self.len = end;
        }
        let p = self.geo.page_size;
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let lpn = (at / p as u64) as usize;
            let within = (at % p as u64) as usize;
            let n = (p - within).min(data.len() - done);
            self.write_page(lpn as u16, within, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Read-modify-write of one logical page into a fresh slot; skipped if
    /// the bytes are already there.
    fn write_page(&mut self, lpn: u16, within: usize, bytes: &[u8]) -> Result<(), Error> {
        let current = self.map[usize::from(lpn)];
        let mut page = core::mem::take(&mut self.page);
        let loaded = if current == UNMAPPED {
            page.fill(0);
            Ok(())
        } else {
            self.flash_read(self.page_addr(current), &mut page)
        };
        let result = loaded.and_then(|()| {
            if page[within..within + bytes.len()] == *bytes {
                self.stats.pages_unchanged += 1;
                return Ok(());
            }
            page[within..within + bytes.len()].copy_from_slice(bytes);
            let ppn = self.data_slot()?;
            self.flash
                .write(self.page_addr(ppn), &page)
                .map_err(flash_err)?;
            self.stats.pages_written += 1;
            self.remap(lpn, ppn);
            Ok(())
        });
        self.page = page;
        result
    }

    fn set_len(&mut self, len: u64) -> Result<(), Error> {
        if len > self.geo.logical_bytes {
            return Err(Error::Full);
        }
        if len < self.len {
            let p = self.geo.page_size as u64;
            let keep = len.div_ceil(p) as usize;
            for lpn in keep..self.map.len() {
                if self.map[lpn] != UNMAPPED {
                    self.remap(lpn as u16, UNMAPPED);
                }
            }
            // Bytes past the end of a kept partial page must read as zero
            // if the length grows again.
            let tail = (len % p) as usize;
            if tail != 0 && self.map[keep - 1] != UNMAPPED {
                let zeros = [0u8; CHUNK];
                let mut at = tail;
                while at < self.geo.page_size {
                    let n = CHUNK.min(self.geo.page_size - at);
                    self.write_page((keep - 1) as u16, at, &zeros[..n])?;
                    at += n;
                }
            }
        }
        self.len = len;
        Ok(())
    }

    /// `sync_data`: one record makes everything since the last commit the
    /// committed state; then committed pages it replaced are freed.
    fn commit(&mut self) -> Result<(), Error> {
        if self.shadow.is_empty() && self.len == self.committed_len {
            return Ok(());
        }
        let entries: Vec<(u16, u16)> = self
            .shadow
            .keys()
            .map(|&lpn| (lpn, self.map[usize::from(lpn)]))
            .collect();
        self.persist(&entries, self.len, true)?;
        self.committed_len = self.len;
        let shadow = core::mem::take(&mut self.shadow);
        for (lpn, committed) in shadow {
            if self.map[usize::from(lpn)] != committed {
                self.release(committed);
            }
        }
        self.stats.commits += 1;
        self.level_wear()
    }

    /// Static wear levelling: a data sector that has sat far behind the
    /// most-erased sector gives its (cold) pages to the head, so that it
    /// joins the rotation.
    fn level_wear(&mut self) -> Result<(), Error> {
        let max = self
            .erases
            .iter()
            .skip(ANCHOR_SECTORS as usize)
            .max()
            .copied()
            .unwrap_or(0);
        let head = self.head.map(|(s, _)| s as usize);
        let coldest = (0..self.geo.sectors)
            .filter(|&s| self.kinds[s] == Sector::Data && Some(s) != head)
            .min_by_key(|&s| self.erases[s]);
        if let Some(cold) = coldest
            && max - self.erases[cold] > self.config.wear_threshold
            && self.take_sector(RESERVE_DATA).is_some()
        {
            self.collect(cold as u32)?;
        }
        Ok(())
    }
}
