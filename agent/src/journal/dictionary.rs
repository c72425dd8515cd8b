//! The index of a batch's series dictionary.

use alloc::vec::Vec;
use core::fmt;

use ferry_proto::series::SeriesKey;

/// The hasher of series dictionaries: seeded per process where std has
/// entropy (series names come from the network), fixed on devices.
#[cfg(feature = "std")]
pub(super) type SeriesHasher = foldhash::fast::RandomState;
#[cfg(not(feature = "std"))]
pub(super) type SeriesHasher = foldhash::fast::FixedState;

/// The index of a batch's series dictionary (`Batch::series`): a hash table
/// of positions in that `Vec`, so a key is stored once, in the batch, and
/// looking one up costs a hash and one comparison.
#[derive(Default)]
pub(super) struct Dictionary {
    index: hashbrown::HashTable<u32>,
    hasher: SeriesHasher,
}

impl fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dictionary({} series)", self.index.len())
    }
}

impl Dictionary {
    pub(super) fn find(&self, series: &[SeriesKey], key: &SeriesKey) -> (Option<u32>, u64) {
        use core::hash::BuildHasher;
        let hash = self.hasher.hash_one(key);
        let found = self.index.find(hash, |&i| series[i as usize] == *key);
        (found.copied(), hash)
    }

    pub(super) fn push(&mut self, series: &mut Vec<SeriesKey>, key: SeriesKey, hash: u64) -> u32 {
        use core::hash::BuildHasher;
        let i = series.len() as u32;
        series.push(key);
        let hasher = &self.hasher;
        self.index
            .insert_unique(hash, i, |&j| hasher.hash_one(&series[j as usize]));
        i
    }

    /// The index of `key` in `series`, appending it if new (moved: no copy).
    pub(super) fn intern(&mut self, series: &mut Vec<SeriesKey>, key: SeriesKey) -> u32 {
        match self.find(series, &key) {
            (Some(i), _) => i,
            (None, hash) => self.push(series, key, hash),
        }
    }

    /// [`intern`](Self::intern) for a borrowed key: copied only if new.
    pub(super) fn intern_ref(&mut self, series: &mut Vec<SeriesKey>, key: &SeriesKey) -> u32 {
        match self.find(series, key) {
            (Some(i), _) => i,
            (None, hash) => self.push(series, key.clone(), hash),
        }
    }
}
