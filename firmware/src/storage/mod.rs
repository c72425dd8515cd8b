//! Storage: redb on NOR flash.
mod layout;
mod nor;
pub mod sim_flash;

use redb::{Builder, Database, DatabaseError, StorageBackend};

pub use nor::{Config, Error, FtlStats, Geometry, NorBackend};

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
