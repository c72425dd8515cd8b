//! Metadata: formatting, mounting (anchor → snapshot → deltas), and writing
//! records, metadata switches and anchor entries. Byte layouts are in
//! `layout.rs`.

use alloc::vec;

use embedded_storage::nor_flash::NorFlash;

use super::ftl::{ANCHOR_SECTORS, Ftl, Sector, UNMAPPED, flash_err};
use super::layout::{
    self, ANCHOR_LEN, Anchor, CHUNK, KIND_DELTA, KIND_SNAPSHOT, RECORD_CRC, RECORD_HEADER,
    RecordHeader, RecordWriter,
};
use super::nor::Error;

impl<F: NorFlash> Ftl<F> {
    // ---- format and mount ----

    pub(super) fn format(&mut self) -> Result<(), Error> {
        self.erase_sector(0)?;
        self.erase_sector(1)?;
        for sector in ANCHOR_SECTORS as usize..self.geo.sectors {
            self.kinds[sector] = Sector::Free;
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
    pub(super) fn load(&mut self) -> Result<(), Error> {
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
        // Append after anything programmed, torn or not, and skip one more
        // slot: an entry torn before any bit changed reads as erased, yet
        // may not be programmed again. (Only one write is in flight at a
        // cut, so no torn entry lies further on.)
        self.anchor_slot = last_used[sector as usize].map_or(0, |slot| slot + 2);
        self.kinds[0] = Sector::Anchor;
        self.kinds[1] = Sector::Anchor;
        self.meta_sector = anchor.meta_sector;
        self.kinds[anchor.meta_sector as usize] = Sector::Meta;
        self.replay(anchor.meta_sector)?;
        for ppn in self.map.clone() {
            if ppn != UNMAPPED {
                let sector = self.sector_of(ppn);
                if self.kinds[sector] != Sector::Data && self.kinds[sector] != Sector::Free {
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

    pub(super) fn replay(&mut self, meta: u32) -> Result<(), Error> {
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

    pub(super) fn apply_snapshot(&mut self, body: &[u8]) -> Result<(), Error> {
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

    pub(super) fn apply_delta(&mut self, body: &[u8]) -> Result<(), Error> {
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

    pub(super) fn set_loaded_len(&mut self, len: u64) -> Result<(), Error> {
        if len > self.geo.logical_bytes {
            return Err(Error::Corrupt("length beyond capacity"));
        }
        self.len = len;
        self.committed_len = len;
        Ok(())
    }

    pub(super) fn set_loaded(&mut self, lpn: usize, ppn: u16) -> Result<(), Error> {
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
    pub(super) fn switch_meta(&mut self, committing: bool) -> Result<(), Error> {
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
            self.kinds[old as usize] = Sector::Free;
        }
        Ok(())
    }

    pub(super) fn write_anchor(&mut self, meta_sector: u32) -> Result<(), Error> {
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
    pub(super) fn persist(
        &mut self,
        entries: &[(u16, u16)],
        len: u64,
        committing: bool,
    ) -> Result<(), Error> {
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
}
