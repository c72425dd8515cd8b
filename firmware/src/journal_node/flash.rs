//! Where a journaling node's three stores (redb on the translation layer,
//! the report log and the drop tally) lie on one NOR flash chip, and
//! mounting them there, each through its own shared handle of the chip.

use embedded_storage::nor_flash::NorFlash;

use crate::storage::{LogError, ReportLog, Tally};

use super::NodeStorage;

/// Where a journaling node's three stores lie on one NOR flash chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashLayout {
    /// redb's region, under the translation layer.
    pub journal: crate::storage::Config,
    /// The report log's region.
    pub log: crate::storage::LogConfig,
    /// The drop tally's region.
    pub drops: crate::storage::LogConfig,
    /// redb's page cache, bytes.
    pub cache_bytes: usize,
}

impl FlashLayout {
    /// 128 sectors of 4 KiB from `offset` (512 KiB: the nRF52840-DK's
    /// journal region, the upper half of its internal flash): redb in the
    /// first 48 (160 KiB for its file), the tally in the next 2, the report
    /// log in the last 78 (51 reports of two windows per sector: eleven
    /// hours at one per 10 s before the first fold). The log's share is
    /// what endurance needs at 10 000 erase cycles (firmware/README.md,
    /// "Wear").
    #[must_use]
    pub const fn internal_512k(offset: u32) -> Self {
        Self {
            journal: crate::storage::Config::new(offset, 48),
            drops: crate::storage::LogConfig {
                offset: offset + 48 * 4096,
                sectors: 2,
            },
            log: crate::storage::LogConfig {
                offset: offset + 50 * 4096,
                sectors: 78,
            },
            cache_bytes: 16 * 1024,
        }
    }

    /// 256 sectors of 4 KiB from `offset` (a 1 MiB SPI NOR chip): redb in
    /// the first 128 (512 KiB, 512-byte pages), the tally in 2, the report
    /// log in 126.
    #[must_use]
    pub const fn spi_nor_1m(offset: u32) -> Self {
        Self {
            journal: crate::storage::Config::new(offset, 128),
            drops: crate::storage::LogConfig {
                offset: offset + 128 * 4096,
                sectors: 2,
            },
            log: crate::storage::LogConfig {
                offset: offset + 130 * 4096,
                sectors: 126,
            },
            cache_bytes: 16 * 1024,
        }
    }
}

/// Why the stores on a flash could not be mounted.
#[derive(Debug)]
#[non_exhaustive]
pub enum MountError {
    /// The translation layer refused the region (corrupt metadata, another
    /// geometry, a flash error). A blank region is formatted, not refused.
    Ftl(crate::storage::Error),
    /// redb could not open or create its database.
    Database(redb::DatabaseError),
    /// The report log or the tally region is unusable.
    Log(LogError),
}

impl core::fmt::Display for MountError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ftl(e) => write!(f, "journal region: {e}"),
            Self::Database(e) => write!(f, "journal database: {e}"),
            Self::Log(e) => write!(f, "report log: {e}"),
        }
    }
}

/// Mounts the three stores of `layout` on `flash`: the translation layer
/// (formatting a blank region) with redb on it, the report log and the
/// drop tally, each through its own [`SharedFlash`](crate::storage::SharedFlash)
/// handle of the chip.
///
/// # Errors
/// [`MountError`]; nothing is erased on an error.
pub fn mount_flash<F: NorFlash + Send + 'static>(
    flash: F,
    layout: &FlashLayout,
) -> Result<NodeStorage<crate::storage::SharedFlash<F>>, MountError> {
    let shared = crate::storage::SharedFlash::new(flash);
    let backend = crate::storage::NorBackend::mount_or_format(shared.clone(), layout.journal)
        .map_err(MountError::Ftl)?;
    let db = crate::storage::open_database(
        redb::Builder::new().set_cache_size(layout.cache_bytes),
        backend,
    )
    .map_err(MountError::Database)?;
    let log = ReportLog::mount(shared.clone(), layout.log).map_err(MountError::Log)?;
    let drops = Tally::mount(shared, layout.drops).map_err(MountError::Log)?;
    Ok(NodeStorage { db, log, drops })
}
