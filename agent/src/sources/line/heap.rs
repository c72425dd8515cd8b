//! What parsed keys and groups are charged to the memory budget: estimates
//! of their heap bytes (glibc's `malloc` sizes, maps grown by doubling).

use ferry_proto::series::SeriesKey;

use crate::journal::SeriesReadings;

/// Bytes `malloc` takes for `n` bytes of heap: a 16-byte-aligned chunk with
/// its 8-byte header, at least 32 (glibc); nothing for an empty buffer.
pub(super) fn alloc(n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    ((n + 8).div_ceil(16) * 16).max(32) as u64
}

/// What a series key costs besides its 48-byte header: the metric, the tag
/// vector and every tag's two strings, each a heap allocation.
pub fn series_key_heap(key: &SeriesKey) -> u64 {
    let strings: u64 = key
        .tags
        .iter()
        .map(|t| alloc(t.key.len()) + alloc(t.value.len()))
        .sum();
    alloc(key.metric.len()) + alloc(key.tags.len() * 48) + strings
}

/// A reading in a group's vector.
pub(super) const READING_BYTES: u64 = 16;

/// What a new group costs [`ChunkParser::heap_bytes`] before its readings:
/// its slot (twice: the vector grows by doubling), series key, origin and
/// its readings' allocation header.
pub(super) fn group_heap(g: &SeriesReadings) -> u64 {
    2 * 96 + READING_BYTES + series_key_heap(&g.series) + alloc(g.origin.len())
}

/// Hash map slots are charged twice their size: maps grow by doubling and
/// keep an eighth free.
pub(super) const SLOT: u64 = 2;

/// What a cached key section is charged: its raw bytes (a map key), the
/// canonical key twice (a map key and the entry's), its origin, its entry
/// (grown by doubling) and the entry's empty field map.
pub(super) fn entry_bytes(raw: &[u8], key: &SeriesKey, origin: &str) -> u64 {
    let key_heap = series_key_heap(key);
    SLOT * 32
        + alloc(raw.len())
        + SLOT * 56
        + key_heap
        + SLOT * 168
        + key_heap
        + alloc(origin.len())
        + 160
}

/// What a cached field is charged: its name (a map key), its series key
/// (header and heap), its id and group slots.
pub(super) fn field_bytes(series: &SeriesKey, field: &[u8]) -> u64 {
    SLOT * 32 + alloc(field.len()) + SLOT * 48 + series_key_heap(series) + SLOT * (4 + 16)
}
