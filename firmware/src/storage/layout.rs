//! Byte layout of what the translation layer writes besides data pages:
//! anchor entries and metadata records (see the module doc of
//! [`storage`](super) for where they live). All integers little-endian;
//! CRC-32C (Castagnoli) like the serial link.

use alloc::vec::Vec;

use crc::{CRC_32_ISCSI, Crc, Digest};

pub(super) static CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// `magic u32 | seq u32 | meta_sector u32 | page_size u32 | sectors u32 | crc u32`.
pub(super) const ANCHOR_MAGIC: u32 = 0x4E41_5446; // "FTAN"
pub(super) const ANCHOR_LEN: usize = 24;

/// `magic u32 | kind u8 | 0 u8 | body_len u16 | seq u32 | body | crc u32`,
/// then `0xFF` padding to the flash's write size.
pub(super) const RECORD_MAGIC: u32 = 0x524D_5446; // "FTMR"
pub(super) const RECORD_HEADER: usize = 12;
pub(super) const RECORD_CRC: usize = 4;

/// Record kinds.
pub(super) const KIND_SNAPSHOT: u8 = 1;
pub(super) const KIND_DELTA: u8 = 2;

/// Body of a snapshot: `len u64 | pages u32 | sectors u32 | map [u16; pages] |
/// erases [u32; sectors]`.
pub(super) const SNAPSHOT_FIXED: usize = 16;
/// Body of a delta: `len u64 | n_map u16 | n_erased u16 | (lpn u16, ppn u16) ×
/// n_map | sector u16 × n_erased`.
pub(super) const DELTA_FIXED: usize = 12;

pub(super) const fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

pub(super) fn record_len(body: usize, write_size: usize) -> usize {
    round_up(RECORD_HEADER + body + RECORD_CRC, write_size)
}

pub(super) fn snapshot_body_len(pages: usize, sectors: usize) -> usize {
    SNAPSHOT_FIXED + 2 * pages + 4 * sectors
}

pub(super) fn delta_body_len(entries: usize, erased: usize) -> usize {
    DELTA_FIXED + 4 * entries + 2 * erased
}

/// An anchor entry: which sector holds the current metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Anchor {
    pub seq: u32,
    pub meta_sector: u32,
    pub page_size: u32,
    pub sectors: u32,
}

impl Anchor {
    pub(super) fn encode(&self) -> [u8; ANCHOR_LEN] {
        let mut out = [0u8; ANCHOR_LEN];
        out[0..4].copy_from_slice(&ANCHOR_MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..12].copy_from_slice(&self.meta_sector.to_le_bytes());
        out[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        out[16..20].copy_from_slice(&self.sectors.to_le_bytes());
        let crc = CRC32C.checksum(&out[..20]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` unless the magic and the CRC are right.
    pub(super) fn decode(bytes: &[u8; ANCHOR_LEN]) -> Option<Self> {
        if u32_at(bytes, 0) != ANCHOR_MAGIC || u32_at(bytes, 20) != CRC32C.checksum(&bytes[..20]) {
            return None;
        }
        Some(Self {
            seq: u32_at(bytes, 4),
            meta_sector: u32_at(bytes, 8),
            page_size: u32_at(bytes, 12),
            sectors: u32_at(bytes, 16),
        })
    }
}

/// A record header as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecordHeader {
    pub kind: u8,
    pub body_len: usize,
    pub seq: u32,
}

impl RecordHeader {
    pub(super) fn encode(&self) -> [u8; RECORD_HEADER] {
        let mut out = [0u8; RECORD_HEADER];
        out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[4] = self.kind;
        out[6..8].copy_from_slice(&(self.body_len as u16).to_le_bytes());
        out[8..12].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    pub(super) fn decode(bytes: &[u8; RECORD_HEADER]) -> Option<Self> {
        if u32_at(bytes, 0) != RECORD_MAGIC || bytes[5] != 0 {
            return None;
        }
        let kind = bytes[4];
        if kind != KIND_SNAPSHOT && kind != KIND_DELTA {
            return None;
        }
        Some(Self {
            kind,
            body_len: usize::from(u16::from_le_bytes([bytes[6], bytes[7]])),
            seq: u32_at(bytes, 8),
        })
    }
}

/// Checks a whole record (header, body, CRC) read into `bytes`.
pub(super) fn record_crc_ok(bytes: &[u8]) -> bool {
    let Some(split) = bytes.len().checked_sub(RECORD_CRC) else {
        return false;
    };
    u32_at(bytes, split) == CRC32C.checksum(&bytes[..split])
}

/// A decoded delta body.
pub(super) struct Delta {
    pub len: u64,
    pub entries: Vec<(u16, u16)>,
    pub erased: Vec<u16>,
}

pub(super) fn decode_delta(body: &[u8]) -> Option<Delta> {
    if body.len() < DELTA_FIXED {
        return None;
    }
    let len = u64_at(body, 0);
    let n_map = usize::from(u16_at(body, 8));
    let n_erased = usize::from(u16_at(body, 10));
    if body.len() != delta_body_len(n_map, n_erased) {
        return None;
    }
    let entries = (0..n_map)
        .map(|i| {
            let at = DELTA_FIXED + 4 * i;
            (u16_at(body, at), u16_at(body, at + 2))
        })
        .collect();
    let base = DELTA_FIXED + 4 * n_map;
    let erased = (0..n_erased).map(|i| u16_at(body, base + 2 * i)).collect();
    Some(Delta {
        len,
        entries,
        erased,
    })
}

/// Streams one record to flash in chunks aligned to the write size, so a
/// snapshot needs no buffer of its own size. The CRC trails the body.
pub(super) struct RecordWriter {
    addr: u32,
    buf: [u8; CHUNK],
    fill: usize,
    digest: Digest<'static, u32>,
}

/// Chunk of a streamed write; a multiple of every supported write size.
pub(super) const CHUNK: usize = 256;

impl RecordWriter {
    pub(super) fn new(addr: u32) -> Self {
        Self {
            addr,
            buf: [0xFF; CHUNK],
            fill: 0,
            digest: CRC32C.digest(),
        }
    }

    pub(super) fn push<E>(
        &mut self,
        bytes: &[u8],
        program: &mut impl FnMut(u32, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.digest.update(bytes);
        self.push_raw(bytes, program)
    }

    fn push_raw<E>(
        &mut self,
        mut bytes: &[u8],
        program: &mut impl FnMut(u32, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            let take = bytes.len().min(CHUNK - self.fill);
            self.buf[self.fill..self.fill + take].copy_from_slice(&bytes[..take]);
            self.fill += take;
            bytes = &bytes[take..];
            if self.fill == CHUNK {
                program(self.addr, &self.buf)?;
                self.addr += CHUNK as u32;
                self.fill = 0;
            }
        }
        Ok(())
    }

    /// Appends the CRC, pads with `0xFF` to `write_size` and programs the rest.
    pub(super) fn finish<E>(
        mut self,
        write_size: usize,
        program: &mut impl FnMut(u32, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let crc = self.digest.clone().finalize().to_le_bytes();
        self.push_raw(&crc, program)?;
        if self.fill > 0 {
            let end = round_up(self.fill, write_size);
            self.buf[self.fill..end].fill(0xFF);
            program(self.addr, &self.buf[..end])?;
        }
        Ok(())
    }
}

pub(super) fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub(super) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

pub(super) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}
