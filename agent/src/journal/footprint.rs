//! What the batch being filled holds in memory: an accounting hook for the
//! agent's memory budget (`crate::limits`), which the writer charges after
//! every commit.

use ferry_proto::series::SeriesKey;

use super::*;

/// Bytes `malloc` takes for `n` bytes (16-byte chunks with an 8-byte
/// header, at least 32; nothing for an empty buffer).
fn alloc(n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    ((n + 8).div_ceil(16) * 16).max(32) as u64
}

/// A series key's heap: its metric, its tag vector and every tag's two
/// strings.
fn key_heap(key: &SeriesKey) -> u64 {
    alloc(key.metric.len())
        + alloc(key.tags.len() * 48)
        + key
            .tags
            .iter()
            .map(|t| alloc(t.key.len()) + alloc(t.value.len()))
            .sum::<u64>()
}

impl Journal {
    /// Heap bytes the batch being filled holds (an estimate with
    /// `malloc`'s overhead): its series dictionary (keys, their vector and
    /// index, each vector counted at twice its length: they grow by
    /// doubling), its raw readings and aggregates.
    pub fn pending_heap_bytes(&self) -> u64 {
        let p = &self.pending;
        let keys: u64 = p.batch.series.iter().map(|k| 48 + key_heap(k)).sum();
        let index = 2 * 16 * p.batch.series.len() as u64;
        let raw: u64 = p
            .raw
            .iter()
            .map(|r| 2 * 24 + alloc(r.len() * 16))
            .sum::<u64>();
        let aggregates = 2 * 128 * p.batch.aggregates.len() as u64;
        2 * keys + index + raw + aggregates
    }
}
