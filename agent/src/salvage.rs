//! Salvaging a quarantined journal: the batches still readable in its
//! bytes are shipped as they are (their body keeps the old journal's epoch
//! and seq, so the collector deduplicates them as what they are), and the
//! readings that cannot be found are counted as dropped (health kind 10,
//! `corrupt_journal`), so the ledger still closes.
//!
//! What the journal held is known from its ledger file
//! ([`ledger_path`]), which the writer rewrites after every commit that
//! changes it: the journal's epoch, the readings it holds and its outbox
//! sequences. A corrupt redb file cannot be trusted to say that itself.
//!
//! The batches are found by scanning the file's bytes for stored batches
//! (redb keeps a value's bytes contiguous), in either of the two forms the
//! journal stores them: `[codec 1][zstd frame]`, when zstd made the batch
//! smaller, and `[codec 0][batch]` (a MessagePack array of 8 fields,
//! marker `0x98`, its seq first) otherwise. A zstd frame that decompresses
//! (its content checksum holds), or a plain batch that decodes, is salvaged
//! when it is a batch of the ledger's epoch carrying a sequence the outbox
//! held. A plain batch has no checksum of its own: the ledger's epoch and
//! outbox, and a decode that must consume a whole batch, are what stand
//! between a damaged one and the collector. Pages redb freed may hold older copies of batches already
//! delivered: the ledger's outbox leaves them out. Readings in the batch
//! being filled, in open windows or in batches that do not survive are the
//! ones counted as lost.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ferry_proto::batch::Batch;
use ferry_proto::codec;
use ferry_proto::stream::compression;

use crate::journal::{Ledger, SalvagedBatch};

/// The ledger file of the journal at `journal`: `<journal>.ledger`.
pub fn ledger_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".ledger");
    PathBuf::from(name)
}

const MAGIC: &str = "ferry-journal-ledger 1";

/// `ledger` as the file's text.
pub fn encode_ledger(ledger: &Ledger) -> String {
    let ranges: Vec<String> = ledger
        .outbox
        .iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect();
    let health: Vec<String> = ledger
        .health
        .iter()
        .map(|(kind, n)| format!("{kind}:{n}"))
        .collect();
    format!(
        "{MAGIC}\nepoch {}\nheld {}\noutbox {}\nhealth {}\nend\n",
        ledger.epoch,
        ledger.held,
        ranges.join(" "),
        health.join(" ")
    )
}

/// The ledger in `text`; `None` if it is not a whole ledger file.
pub fn decode_ledger(text: &str) -> Option<Ledger> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let value = |line: Option<&str>, key: &str| -> Option<String> {
        Some(line?.strip_prefix(key)?.strip_prefix(' ')?.to_owned())
    };
    let epoch = value(lines.next(), "epoch")?.parse().ok()?;
    let held = value(lines.next(), "held")?.parse().ok()?;
    let outbox = lines.next()?.strip_prefix("outbox")?;
    let mut ranges = Vec::new();
    for r in outbox.split_whitespace() {
        let (a, b) = r.split_once('-')?;
        ranges.push((a.parse().ok()?, b.parse().ok()?));
    }
    let mut health = Vec::new();
    for h in lines.next()?.strip_prefix("health")?.split_whitespace() {
        let (kind, n) = h.split_once(':')?;
        health.push((kind.parse().ok()?, n.parse().ok()?));
    }
    (lines.next()? == "end").then_some(Ledger {
        epoch,
        held,
        outbox: ranges,
        health,
    })
}

/// Writes `ledger` to `path` whole: a temporary file renamed over it, so a
/// crash leaves the old ledger or the new one. Not synced: it is as
/// durable as the page cache (a process crash keeps it; see the README on
/// what a power loss can cost).
pub fn write_ledger(path: &Path, ledger: &Ledger) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, encode_ledger(ledger))?;
    std::fs::rename(&tmp, path)
}

/// The ledger at `path`, if there is a whole one.
pub fn read_ledger(path: &Path) -> Option<Ledger> {
    decode_ledger(&std::fs::read_to_string(path).ok()?)
}

/// What was found in a quarantined journal.
#[derive(Debug, Default)]
pub struct Salvage {
    /// Batches to ship, by the seq their body carries.
    pub batches: Vec<SalvagedBatch>,
    /// Readings in them.
    pub readings: u64,
    /// Readings the ledger says the journal held that were not found.
    pub lost: u64,
    /// Health counts the ledger says the journal held that are in none of
    /// `batches`, per kind (the received counts of the lost readings, for
    /// one): counted again in the new journal so the collector hears of
    /// them.
    pub lost_health: Vec<(u16, u64)>,
}

/// zstd's frame magic, little-endian.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The MessagePack marker a stored plain batch starts with: an array of
/// its 8 fields.
const PLAIN_MARKER: u8 = 0x98;
/// Largest decoded batch accepted.
const MAX_PLAIN: usize = ferry_proto::stream::DEFAULT_MAX_FRAME as usize;
/// Bytes read per step of the scan.
const CHUNK: usize = 4 << 20;

/// Scans the journal file at `path` for the batches `ledger` says it held.
pub fn scan(path: &Path, ledger: &Ledger) -> std::io::Result<Salvage> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut found: BTreeMap<u64, SalvagedBatch> = BTreeMap::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        file.seek(SeekFrom::Start(offset))?;
        let n = read_full(&mut file, &mut chunk)?;
        if n == 0 {
            break;
        }
        let window = &chunk[..n];
        // Candidates start in this chunk (a frame may run past it: it is
        // read again from its start).
        let mut i = 1;
        while i + ZSTD_MAGIC.len() <= n {
            let at = offset + i as u64;
            let candidate = if window[i..i + 4] == ZSTD_MAGIC && window[i - 1] == compression::ZSTD
            {
                batch_at(&mut file, at, len, ledger)?
            } else if window[i] == PLAIN_MARKER
                && window[i - 1] == compression::NONE
                && plain_seq(&window[i..]).is_none_or(|seq| ledger.holds(seq))
            {
                plain_batch_at(&mut file, at, len, ledger)?
            } else {
                None
            };
            if let Some(b) = candidate {
                found.entry(b.wire_seq).or_insert(b);
            }
            i += 1;
        }
        // Overlap by the codec byte and the magic.
        offset += (n as u64).saturating_sub(4).max(1);
    }
    let batches: Vec<SalvagedBatch> = found.into_values().collect();
    let readings = batches.iter().map(|b| b.readings).sum::<u64>();
    let mut found_health: BTreeMap<u16, u64> = BTreeMap::new();
    for &(kind, n) in batches.iter().flat_map(|b| &b.health) {
        *found_health.entry(kind).or_default() += n;
    }
    let lost_health = ledger
        .health
        .iter()
        .map(|&(kind, n)| {
            let found = found_health.get(&kind).copied().unwrap_or(0);
            (kind, n.saturating_sub(found))
        })
        .filter(|&(_, n)| n > 0)
        .collect();
    Ok(Salvage {
        lost: ledger.held.saturating_sub(readings),
        readings,
        batches,
        lost_health,
    })
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads the bytes from `at` in growing windows (64 KiB, then four times
/// larger, up to [`MAX_PLAIN`] or the end of the file) until `look` decides
/// (`Some`: what it found, or `None` for nothing there); nothing when even
/// the largest window does not do.
fn read_growing<T>(
    file: &mut std::fs::File,
    at: u64,
    len: u64,
    mut look: impl FnMut(&[u8]) -> Option<Option<T>>,
) -> std::io::Result<Option<T>> {
    let remaining = len - at;
    let mut want = 64 * 1024usize;
    loop {
        let have = remaining.min(want as u64) as usize;
        let mut buf = vec![0u8; have];
        file.seek(SeekFrom::Start(at))?;
        let n = read_full(file, &mut buf)?;
        buf.truncate(n);
        if let Some(found) = look(&buf) {
            return Ok(found);
        }
        // Perhaps cut short by the window: read more, up to the largest
        // batch there can be.
        if n as u64 >= remaining || want >= MAX_PLAIN {
            return Ok(None);
        }
        want *= 4;
    }
}

/// The batch whose zstd frame starts at `at`, if it is whole, of the
/// ledger's epoch and held by its outbox.
fn batch_at(
    file: &mut std::fs::File,
    at: u64,
    len: u64,
    ledger: &Ledger,
) -> std::io::Result<Option<SalvagedBatch>> {
    read_growing(
        file,
        at,
        len,
        |buf| match zstd::zstd_safe::find_frame_compressed_size(buf) {
            Ok(size) if size <= buf.len() => Some(decode(buf[..size].to_vec(), ledger)),
            _ => None,
        },
    )
}

/// The seq a plain batch starting at `bytes[0]` (its array marker)
/// carries, if it is there; `None` when `bytes` ends first or it is not a
/// MessagePack unsigned integer.
fn plain_seq(bytes: &[u8]) -> Option<u64> {
    let width = match *bytes.get(1)? {
        m @ 0x00..=0x7f => return Some(u64::from(m)),
        0xcc => 1,
        0xcd => 2,
        0xce => 4,
        0xcf => 8,
        _ => return None,
    };
    let digits = bytes.get(2..2 + width)?;
    Some(digits.iter().fold(0u64, |n, &b| n << 8 | u64::from(b)))
}

/// The plain batch whose encoding starts at `at` (its array marker), if it
/// decodes whole, is of the ledger's epoch and held by its outbox.
fn plain_batch_at(
    file: &mut std::fs::File,
    at: u64,
    len: u64,
    ledger: &Ledger,
) -> std::io::Result<Option<SalvagedBatch>> {
    read_growing(file, at, len, |buf| {
        if plain_seq(buf).is_some_and(|seq| !ledger.holds(seq)) {
            return Some(None);
        }
        let (batch, used) = codec::from_bytes_prefix::<Batch>("Batch", buf).ok()?;
        let mut row = Vec::with_capacity(used + 1);
        row.push(compression::NONE);
        row.extend_from_slice(&buf[..used]);
        Some(accept(batch, row, ledger))
    })
}

fn decode(frame: Vec<u8>, ledger: &Ledger) -> Option<SalvagedBatch> {
    let plain = zstd::bulk::decompress(&frame, MAX_PLAIN).ok()?;
    let batch: Batch = codec::from_bytes("Batch", &plain).ok()?;
    let mut row = Vec::with_capacity(frame.len() + 1);
    row.push(compression::ZSTD);
    row.extend_from_slice(&frame);
    accept(batch, row, ledger)
}

/// `batch`, stored as `row`, if it is of the ledger's epoch and held by its
/// outbox.
fn accept(batch: Batch, row: Vec<u8>, ledger: &Ledger) -> Option<SalvagedBatch> {
    if batch.epoch != ledger.epoch || !ledger.holds(batch.seq) {
        return None;
    }
    let readings =
        batch.reading_count() as u64 + batch.aggregates.iter().map(|a| a.count).sum::<u64>();
    let mut health: BTreeMap<u16, u64> = BTreeMap::new();
    for h in &batch.health {
        *health.entry(h.kind).or_default() += h.count;
    }
    Some(SalvagedBatch {
        wire_seq: batch.seq,
        row,
        readings,
        created_ns: batch.created_ns,
        health: health.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_round_trips_and_a_torn_one_is_refused() {
        let l = Ledger {
            epoch: 77,
            held: 1234,
            outbox: vec![(3, 9), (11, 11)],
            health: vec![(1, 5), (7, 1239)],
        };
        let text = encode_ledger(&l);
        assert_eq!(
            text,
            "ferry-journal-ledger 1\nepoch 77\nheld 1234\noutbox 3-9 11-11\nhealth 1:5 7:1239\nend\n"
        );
        assert_eq!(decode_ledger(&text), Some(l.clone()));
        assert!(l.holds(3) && l.holds(9) && l.holds(11));
        assert!(!l.holds(2) && !l.holds(10) && !l.holds(12));
        for cut in 0..text.len() - 1 {
            assert_eq!(decode_ledger(&text[..cut]), None, "{cut}");
        }
        let empty = Ledger {
            epoch: 1,
            held: 0,
            outbox: Vec::new(),
            health: Vec::new(),
        };
        assert_eq!(decode_ledger(&encode_ledger(&empty)), Some(empty));
    }

    fn batch(epoch: u64, seq: u64, n: usize) -> Batch {
        use ferry_proto::batch::{HealthRecord, Reading, ReadingBlock};
        let readings: Vec<Reading> = (0..n)
            .map(|i| Reading {
                ts_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000_000,
                value: i as f64,
            })
            .collect();
        Batch {
            seq,
            created_ns: 1_700_000_000_000_000_000,
            blocks: vec![ReadingBlock::encode(0, &readings)],
            health: vec![HealthRecord {
                source: "t".into(),
                kind: 7,
                count: n as u64,
                batch: 0,
            }],
            epoch,
            ..Batch::default()
        }
    }

    fn plain_row(b: &Batch) -> Vec<u8> {
        let mut row = vec![compression::NONE];
        row.extend(codec::to_vec(b).unwrap());
        row
    }

    fn zstd_row(b: &Batch) -> Vec<u8> {
        let mut c = zstd::bulk::Compressor::new(1).unwrap();
        c.include_checksum(true).unwrap();
        let mut row = vec![compression::ZSTD];
        row.extend(c.compress(&codec::to_vec(b).unwrap()).unwrap());
        row
    }

    /// A file holding both kinds of stored batch among garbage: the whole
    /// ones of the ledger's epoch and outbox are found, as they were
    /// stored; a plain batch cut short, one of another epoch and one the
    /// outbox no longer held are not; what is missing is counted.
    #[test]
    fn plain_and_zstd_batches_are_found_among_garbage() {
        let ledger = Ledger {
            epoch: 77,
            held: 4 * 100,
            outbox: vec![(1, 4)],
            health: vec![(7, 400)],
        };
        let zstd1 = zstd_row(&batch(77, 1, 100));
        let plain2 = plain_row(&batch(77, 2, 100));
        let other_epoch = plain_row(&batch(78, 3, 100));
        let not_held = plain_row(&batch(77, 9, 100));
        let cut4 = plain_row(&batch(77, 4, 100));
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let mut file = Vec::new();
        for part in [
            &garbage[..],
            &[0, 0x98, 0xcf][..],
            &plain2,
            &garbage,
            &zstd1,
            &other_epoch,
            &[0, 0x98][..],
            &not_held,
            &garbage,
            // A second copy (a page redb freed) is found once.
            &plain2,
            &[0u8; 100][..],
            &cut4[..cut4.len() - 3],
        ] {
            file.extend_from_slice(part);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        std::fs::write(&path, &file).unwrap();
        let s = scan(&path, &ledger).unwrap();
        let seqs: Vec<u64> = s.batches.iter().map(|b| b.wire_seq).collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(s.batches[0].row, zstd1);
        assert_eq!(s.batches[1].row, plain2);
        assert_eq!((s.readings, s.lost), (200, 200));
        assert_eq!(s.lost_health, [(7, 200)]);
        assert!(s.batches.iter().all(|b| b.health == [(7, 100)]));
    }
}
