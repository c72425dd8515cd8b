//! Where the store file's bytes go: per table, redb's own accounting of
//! keys and values, its per-page overhead and the unused rest of its pages,
//! and the chunk payload itself. Walks every page of the tables it reports:
//! for benchmarks and diagnostics, not for a hot path.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableStats};

use super::{AGGREGATES, CHUNKS, CHUNKS_BY_TIME, STAGED, Store, StoreError};

/// Bytes one table takes in the store file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableBytes {
    /// Table name.
    pub name: &'static str,
    /// Rows.
    pub rows: u64,
    /// Keys and values as stored in leaf pages.
    pub stored: u64,
    /// Branch pages and leaf page headers.
    pub overhead: u64,
    /// Unused bytes of the table's pages.
    pub slack: u64,
}

impl TableBytes {
    fn of(name: &'static str, rows: u64, s: &TableStats) -> Self {
        Self {
            name,
            rows,
            stored: s.stored_bytes(),
            overhead: s.metadata_bytes(),
            slack: s.fragmented_bytes(),
        }
    }

    /// Every byte of the table's pages.
    pub fn total(&self) -> u64 {
        self.stored + self.overhead + self.slack
    }
}

/// Where the store file's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// The store file's size.
    pub file: u64,
    /// Chunk values (the encoded readings of settled buckets), summed.
    pub chunk_payload: u64,
    /// Staged bundle values (the encoded readings of recent buckets), summed.
    pub staged_payload: u64,
    /// `chunks`, `chunks_by_time`, `staged`, `aggregates`.
    pub tables: Vec<TableBytes>,
}

impl Footprint {
    /// The file bytes not in the reported tables' pages: free pages, the
    /// other tables, redb's own.
    pub fn other(&self) -> u64 {
        let tables: u64 = self.tables.iter().map(TableBytes::total).sum();
        self.file.saturating_sub(tables)
    }
}

impl Store {
    /// Where the store file's bytes go (see [`Footprint`]). Reads every
    /// page of the data tables.
    pub fn footprint(&self) -> Result<Footprint, StoreError> {
        let txn = self.db().begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        let by_time = txn.open_table(CHUNKS_BY_TIME)?;
        let staged = txn.open_table(STAGED)?;
        let aggs = txn.open_table(AGGREGATES)?;
        let mut chunk_payload = 0u64;
        for entry in by_time.iter()? {
            chunk_payload += u64::from(entry?.1.value());
        }
        let mut staged_payload = 0u64;
        for entry in staged.iter()? {
            staged_payload += entry?.1.value().len() as u64;
        }
        Ok(Footprint {
            file: self.file_bytes(),
            chunk_payload,
            staged_payload,
            tables: vec![
                TableBytes::of("chunks", chunks.len()?, &chunks.stats()?),
                TableBytes::of("chunks_by_time", by_time.len()?, &by_time.stats()?),
                TableBytes::of("staged", staged.len()?, &staged.stats()?),
                TableBytes::of("aggregates", aggs.len()?, &aggs.stats()?),
            ],
        })
    }
}
