//! redb on NOR flash: a flash translation layer behind redb's
//! [`StorageBackend`], over any `embedded-storage`
//! [`NorFlash`](embedded_storage::nor_flash::NorFlash) — a region of a
//! microcontroller's internal flash or an external SPI NOR chip.
//!
//! # Why a translation layer
//! NOR flash programs bits from 1 to 0 only, each write unit once between
//! erases, and erases whole sectors (4 KiB typically) rated for ~100 000
//! cycles. redb rewrites its header at offset 0 on every commit and reuses
//! freed pages: mapped straight onto flash, the header's sector would need an
//! erase per commit and die within weeks at one commit per 10 s. So redb sees
//! a byte-addressable file of *logical pages* (`page_size`, 256–4096 B), and
//! every write goes out of place to a fresh *physical page* in log order;
//! a mapping table in RAM says where each logical page lives.
//!
//! # On flash
//! The region is `sectors` erase sectors:
//!
//! | sectors | holds |
//! |---|---|
//! | 0, 1 | **anchors**: append-only entries `(seq, metadata sector, page size, sectors, CRC)`; when one sector is full the other is erased and used |
//! | all others | a pool: **data** sectors (`erase size / page size` physical pages each, no headers), the one **metadata** sector, and **free** sectors (erased when taken) |
//!
//! The metadata sector starts with a **snapshot** record (the whole mapping
//! table, the logical length and every sector's erase count) followed by
//! **delta** records (the mapping entries that changed, the new length, the
//! sectors erased since the previous record). Every record carries a sequence
//! number and a trailing CRC-32C (see `layout.rs` for the bytes). When a
//! record does not fit, a *metadata switch* takes a free sector, writes a
//! snapshot there, then appends an anchor entry pointing at it; the old
//! metadata sector becomes free. Metadata thus rotates through the whole
//! pool like data does, and the anchors see one entry per switch (one per
//! ~7 commits with 256-byte pages; the month's report below shows 108 erases
//! per anchor sector).
//!
//! # Commit point
//! `sync_data` writes one delta (or a snapshot) naming the logical pages
//! changed since the last one. Mount reads the newest valid anchor, that
//! sector's snapshot, and its deltas up to the first one whose CRC or
//! sequence is wrong. So the state after a mount is the state of the last
//! *completed* `sync_data`, whatever was written after it and wherever the
//! power failed (mid-program or mid-erase included). redb only needs writes
//! before a sync to be durable after it; this is stronger, and makes "after a
//! power cut the database holds exactly its committed transactions" true by
//! construction rather than by redb's recovery.
//!
//! # Invariants
//! 1. **Order of durability.** A record is written only after every page it
//!    names is programmed; an anchor only after its snapshot. Drivers must
//!    return from `write`/`erase` only when the operation is complete (the
//!    nRF NVMC and SPI NOR drivers poll their ready/WIP flag).
//! 2. **Nothing referenced is erased.** A page is *live* while the current
//!    state (`map`) or the committed state (`map` overlaid with `shadow`, the
//!    committed place of every page changed since the last commit) refers to
//!    it; only a sector with no live page is freed and erased. A collected
//!    sector stays referenced until the record naming its pages' new places is
//!    written.
//! 3. **Uncommitted writes are invisible after a mount**: only RAM refers to
//!    them until `sync_data`.
//! 4. **Each write unit is programmed once between erases**, as `NorFlash`
//!    demands: pages fill whole slots, records are padded to the write size
//!    and follow each other, anchors take one slot each, and after a mount
//!    the metadata continues in a fresh sector, never after a torn record.
//! 5. **Reserve.** redb's writes never take the last two free sectors and
//!    garbage collection never the last one, so a collection that starts can
//!    finish, a metadata switch always finds a sector, and a mount (which
//!    switches) always finds one too.
//! 6. **Wear.** A new sector is the least-erased free one; collection picks
//!    the data sector with the fewest live pages (ties: fewest erases); and
//!    at a commit, if the least-erased data sector is more than
//!    `wear_threshold` erases behind the most-erased sector, its cold pages
//!    are moved, so it joins the rotation (static levelling).
//! 7. **Errors never panic.** A failure part-way poisons the backend
//!    ([`Error::Failed`]) until a remount brings back the last commit; a
//!    length beyond the capacity is refused ([`Error::Full`]) with nothing
//!    changed.
//!
//! # Other behaviour
//! Reads of never-written logical space return zeros; writes at any offset
//! and length read-modify-write the logical pages they touch; a page whose
//! bytes are already there is not written (redb rewrites much of what it
//! had: in the wear report this cuts the pages programmed 3 to 5 times);
//! shrinking unmaps the pages past the end and zeroes the tail of a partial
//! last page, so growing again reads zeros. [`open_database`] restarts a
//! database whose creation was cut short.
//!
//! # Costs (see `firmware/README.md`, "Journal on flash", for measured wear)
//! - Capacity: 2 anchor sectors, 2 metadata sectors (current + switch), 2
//!   reserve and `spare_sectors` (default 2) are not redb's: 64 sectors of
//!   4 KiB give 56 × 4 KiB logical (87.5 %), 256 give 97 %. The spare
//!   sectors also hold the committed copies of the pages a transaction
//!   changes: with redb's file filling the logical space, a transaction can
//!   change that many sectors' worth of pages ([`Config::spare_sectors`]).
//! - RAM while mounted: 2 B per logical page (mapping) + 7 B per sector
//!   (kind, live count, erase count) + one page buffer, plus ~16 B per page a
//!   transaction changes (the `shadow` map) — ~10 KiB per MiB of flash with
//!   256-byte pages, 5.8 KiB with 512, 3.8 KiB with 1 KiB, 0.6 KiB with
//!   4 KiB pages on 64 KiB erase blocks. Mount needs, briefly, one snapshot's
//!   bytes more. [`Geometry::ram_bytes`] gives the figure of a layout.
//! - The snapshot must fit 3/4 of a sector: with 4 KiB sectors, regions up to
//!   364 KiB (256-byte pages), 632 KiB (512), 1 MiB (1 KiB), 1.5 MiB (2 KiB);
//!   larger SPI NOR chips are driven through their 64 KiB block erase (up to
//!   85 MiB with 4 KiB pages). [`Geometry::new`] says which rule a layout
//!   breaks.
//!
//! # Choices
//! - The mapping lives in RAM and in snapshot + delta records, not in
//!   per-page headers scanned at mount: data pages then hold redb's bytes
//!   only (no slot lost to headers, no user bytes that could pass for
//!   metadata), and a mount reads one sector of metadata, not the flash.
//! - The lock is `spin::Mutex`, not a critical section: a flash operation can
//!   take milliseconds and an SPI driver may need interrupts meanwhile. redb
//!   never takes it from an interrupt, and one thread drives the journal.
//! - redb does not say which pages it freed, so collection copies pages redb
//!   no longer uses; spare sectors keep that cheap.
mod ftl;
mod layout;
mod meta;
mod nor;
pub mod report_log;
mod shared;
pub mod sim_flash;
mod tally;

use redb::{Builder, Database, DatabaseError, StorageBackend};

pub use nor::{Config, Error, FtlStats, Geometry, NorBackend};
pub use report_log::{LogConfig, LogError, LogStats, ReportLog};
pub use shared::SharedFlash;
pub use tally::Tally;

/// redb's file magic (its `docs/design.md`, "Database header"): the first
/// bytes of every database whose creation finished.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Opens (or creates) the database on `backend` (a [`NorBackend`], or a
/// wrapper of one).
///
/// redb writes its magic number last when it creates a database, and refuses
/// a non-empty file without it. Power lost during creation leaves just that:
/// committed bytes without the magic, and no transaction (none can commit
/// before creation ends). Such a region is truncated and the database created
/// afresh, so a device that lost power in its first second still boots.
///
/// # Errors
/// What [`Builder::create_with_backend`] returns, and backend failures while
/// discarding an unfinished creation.
pub fn open_database(
    builder: &Builder,
    backend: impl StorageBackend,
) -> Result<Database, DatabaseError> {
    let len = backend.len()?;
    if len > 0 {
        let mut magic = [0u8; REDB_MAGIC.len()];
        let head = if len >= magic.len() as u64 {
            backend.read(0, &mut magic)
        } else {
            Ok(())
        };
        head?;
        if magic != REDB_MAGIC {
            backend.set_len(0)?;
            backend.sync_data()?;
        }
    }
    builder.create_with_backend(backend)
}
