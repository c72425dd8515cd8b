//! The translation layer's state and its page work: redb's reads and
//! writes, allocation in log order, garbage collection, wear levelling and
//! the commit. Records and mounting are in `meta.rs`.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use embedded_storage::nor_flash::{NorFlash, NorFlashError};

use super::layout::{self, ANCHOR_LEN, CHUNK};
use super::nor::{Config, Error, FtlStats, Geometry};

/// A physical or logical page number that maps nothing.
pub(super) const UNMAPPED: u16 = u16::MAX;
/// Sectors 0 and 1 of the region hold anchor entries.
pub(super) const ANCHOR_SECTORS: u32 = 2;
/// Free sectors kept back from redb's writes: one for garbage collection to
/// relocate into, one for a metadata sector switch.
pub(super) const RESERVE_DATA: usize = 2;
/// Free sectors kept back from garbage collection: the metadata switch.
pub(super) const RESERVE_GC: usize = 1;

pub(super) fn flash_err<E: NorFlashError>(err: E) -> Error {
    Error::Flash(err.kind())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sector {
    Anchor,
    /// The sector the current metadata records go to.
    Meta,
    /// Holds data pages; `live` counts the referenced ones.
    Data,
    /// No reference from the current or the committed state: free, and
    /// erased when taken.
    Free,
}

pub(super) struct Ftl<F> {
    pub(super) flash: F,
    pub(super) config: Config,
    pub(super) geo: Geometry,
    /// Current state: logical page → physical page, or `UNMAPPED`.
    pub(super) map: Vec<u16>,
    /// For each logical page changed since the last commit: its committed
    /// physical page. The committed state is `map` overlaid with `shadow`.
    pub(super) shadow: BTreeMap<u16, u16>,
    pub(super) len: u64,
    pub(super) committed_len: u64,
    pub(super) kinds: Vec<Sector>,
    /// Per sector: how many of its physical pages `map` or `shadow` refers to.
    pub(super) live: Vec<u16>,
    pub(super) erases: Vec<u32>,
    /// Erases not yet in a record.
    pub(super) pending_erases: Vec<u16>,
    /// Data sector being filled and its next free slot.
    pub(super) head: Option<(u32, u32)>,
    pub(super) meta_sector: u32,
    pub(super) meta_offset: usize,
    pub(super) record_seq: u32,
    pub(super) anchor_sector: u32,
    pub(super) anchor_slot: usize,
    pub(super) anchor_seq: u32,
    /// Sector being collected: stays referenced until its record is written.
    pub(super) collecting: Option<u32>,
    pub(super) page: Vec<u8>,
    pub(super) failed: bool,
    pub(super) stats: FtlStats,
}

impl<F: NorFlash> Ftl<F> {
    pub(super) fn new(flash: F, config: Config) -> Result<Self, Error> {
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
            kinds: vec![Sector::Free; geo.sectors],
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

    pub(super) fn mount_or_format(flash: F, config: Config) -> Result<Self, Error> {
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

    pub(super) fn mount(flash: F, config: Config) -> Result<Self, Error> {
        let mut ftl = Self::new(flash, config)?;
        ftl.load()?;
        Ok(ftl)
    }

    /// A length the region cannot hold is refused before anything changes,
    /// and the backend stays usable.
    pub(super) fn within_capacity(&self, len: u64) -> Result<(), Error> {
        if len > self.geo.logical_bytes {
            return Err(Error::Full);
        }
        Ok(())
    }

    /// Runs a mutating operation. A failure part-way (a flash error, or no
    /// sector left to collect into) leaves RAM ahead of the flash, so every
    /// later call fails with [`Error::Failed`] until a remount, which
    /// returns to the last commit.
    pub(super) fn guarded(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<(), Error>,
    ) -> Result<(), Error> {
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

    pub(super) fn sector_addr(&self, sector: u32) -> u32 {
        self.config.offset + sector * self.geo.sector_size as u32
    }

    pub(super) fn page_addr(&self, ppn: u16) -> u32 {
        let k = self.geo.pages_per_sector as u32;
        self.sector_addr(u32::from(ppn) / k) + (u32::from(ppn) % k) * self.geo.page_size as u32
    }

    pub(super) fn sector_of(&self, ppn: u16) -> usize {
        usize::from(ppn) / self.geo.pages_per_sector
    }

    pub(super) fn anchor_slots(&self) -> usize {
        self.geo.sector_size / layout::round_up(ANCHOR_LEN, self.geo.write_size)
    }

    pub(super) fn anchor_addr(&self, sector: u32, slot: usize) -> u32 {
        self.sector_addr(sector) + (slot * layout::round_up(ANCHOR_LEN, self.geo.write_size)) as u32
    }

    // ---- flash primitives ----

    pub(super) fn flash_read(&mut self, addr: u32, out: &mut [u8]) -> Result<(), Error> {
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

    pub(super) fn erase_sector(&mut self, sector: u32) -> Result<(), Error> {
        let from = self.sector_addr(sector);
        self.erases[sector as usize] += 1;
        self.pending_erases.push(sector as u16);
        self.flash
            .erase(from, from + self.geo.sector_size as u32)
            .map_err(flash_err)
    }

    // ---- allocation and garbage collection ----

    /// The least-erased sector that no state references, if more than
    /// `reserve` such sectors exist.
    pub(super) fn take_sector(&self, reserve: usize) -> Option<u32> {
        let mut free = 0;
        let mut best: Option<usize> = None;
        for (sector, kind) in self.kinds.iter().enumerate() {
            if *kind == Sector::Free {
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
    pub(super) fn slot(&mut self, reserve: usize) -> Result<Option<u16>, Error> {
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
    pub(super) fn data_slot(&mut self) -> Result<u16, Error> {
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
            let free = self.kinds.iter().filter(|k| **k == Sector::Free).count();
            let room = head_free + free.saturating_sub(RESERVE_GC) * self.geo.pages_per_sector;
            if usize::from(self.live[victim as usize]) > room {
                return Err(Error::Full);
            }
            self.collect(victim)?;
        }
    }

    pub(super) fn close_head(&mut self) {
        if let Some((sector, _)) = self.head.take()
            && self.live[sector as usize] == 0
        {
            self.kinds[sector as usize] = Sector::Free;
        }
    }

    /// The data sector with the fewest live pages, if it has a dead one.
    pub(super) fn victim(&self) -> Option<u32> {
        let k = self.geo.pages_per_sector as u16;
        let head = self.head.map(|(s, _)| s as usize);
        (0..self.geo.sectors)
            .filter(|&s| self.kinds[s] == Sector::Data && Some(s) != head && self.live[s] < k)
            .min_by_key(|&s| (self.live[s], self.erases[s]))
            .map(|s| s as u32)
    }

    /// Copies the live pages of `victim` to the head, records the new places
    /// of committed pages, then frees the sector.
    pub(super) fn collect(&mut self, victim: u32) -> Result<(), Error> {
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
        self.kinds[victim as usize] = Sector::Free;
        Ok(())
    }

    pub(super) fn copy_page(&mut self, from: u16, to: u16) -> Result<(), Error> {
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
    pub(super) fn release(&mut self, ppn: u16) {
        if ppn == UNMAPPED {
            return;
        }
        let sector = self.sector_of(ppn);
        self.live[sector] -= 1;
        if self.live[sector] == 0
            && self.head.map(|(s, _)| s as usize) != Some(sector)
            && self.collecting.map(|s| s as usize) != Some(sector)
        {
            self.kinds[sector] = Sector::Free;
        }
    }

    /// Points `lpn` at `ppn` in the current state, keeping its committed
    /// page referenced until the next commit.
    pub(super) fn remap(&mut self, lpn: u16, ppn: u16) {
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

    pub(super) fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
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

    pub(super) fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
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
    pub(super) fn write_page(
        &mut self,
        lpn: u16,
        within: usize,
        bytes: &[u8],
    ) -> Result<(), Error> {
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

    pub(super) fn set_len(&mut self, len: u64) -> Result<(), Error> {
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
    pub(super) fn commit(&mut self) -> Result<(), Error> {
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
    pub(super) fn level_wear(&mut self) -> Result<(), Error> {
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
