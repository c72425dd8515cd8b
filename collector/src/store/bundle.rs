//! Staged bundles: the chunks one batch brought for one bucket, in one row.
//!
//! Ingest writes one `staged` row per (batch, bucket) instead of one row per
//! (series, batch): a batch from an agent holds a few readings of many
//! series, and a row per series made every commit dirty most leaves of the
//! chunk tree. Maintenance later moves settled bundles into per-series
//! chunks (docs/storage.md, "Staged bundles").
//!
//! Layout, little-endian:
//! ```text
//! n: u32 | n × (series: u64, len: u32) | the n chunks' bytes, in order
//! ```
//! Entries are sorted by series id (a series may appear more than once, in
//! write order).

/// Bytes of the header and of one directory entry.
const HEADER: usize = 4;
const ENTRY: usize = 12;

/// Encodes `(series, chunk bytes)` pieces, already sorted by series.
pub fn encode(pieces: &[(u64, &[u8])]) -> Vec<u8> {
    let data: usize = pieces.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(HEADER + ENTRY * pieces.len() + data);
    out.extend_from_slice(&(pieces.len() as u32).to_le_bytes());
    for (series, bytes) in pieces {
        out.extend_from_slice(&series.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    }
    for (_, bytes) in pieces {
        out.extend_from_slice(bytes);
    }
    out
}

/// Why a stored bundle did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("staged bundle: {0}")]
pub struct BundleError(String);

fn take<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], BundleError> {
    bytes
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| BundleError(format!("truncated at byte {at} of {}", bytes.len())))
}

/// The pieces of a bundle, borrowing its bytes.
pub fn decode(bytes: &[u8]) -> Result<Vec<(u64, &[u8])>, BundleError> {
    let n = u32::from_le_bytes(take::<4>(bytes, 0)?) as usize;
    let directory = n
        .checked_mul(ENTRY)
        .and_then(|d| d.checked_add(HEADER))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| BundleError(format!("{n} entries do not fit in {} bytes", bytes.len())))?;
    let mut out = Vec::with_capacity(n);
    let mut at = directory;
    for i in 0..n {
        let e = HEADER + i * ENTRY;
        let series = u64::from_le_bytes(take::<8>(bytes, e)?);
        let len = u32::from_le_bytes(take::<4>(bytes, e + 8)?) as usize;
        let chunk = bytes.get(at..at + len).ok_or_else(|| {
            BundleError(format!(
                "entry {i}: {len} bytes at {at} run past the end ({})",
                bytes.len()
            ))
        })?;
        out.push((series, chunk));
        at += len;
    }
    if at != bytes.len() {
        return Err(BundleError(format!(
            "{} bytes after the last chunk",
            bytes.len() - at
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_exact_bytes() {
        let bytes = encode(&[(1, b"ab".as_slice()), (7, b"".as_slice()), (7, b"xyz")]);
        assert_eq!(
            bytes,
            [
                &3u32.to_le_bytes()[..],
                &1u64.to_le_bytes(),
                &2u32.to_le_bytes(),
                &7u64.to_le_bytes(),
                &0u32.to_le_bytes(),
                &7u64.to_le_bytes(),
                &3u32.to_le_bytes(),
                b"abxyz",
            ]
            .concat()
        );
        assert_eq!(
            decode(&bytes).unwrap(),
            vec![
                (1, b"ab".as_slice()),
                (7, b"".as_slice()),
                (7, b"xyz".as_slice())
            ]
        );
    }

    #[test]
    fn damaged_bundles_are_errors_not_panics() {
        let good = encode(&[(1, b"ab".as_slice()), (2, b"cd".as_slice())]);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            decode(&long).unwrap_err().to_string(),
            "staged bundle: 1 bytes after the last chunk"
        );
        assert_eq!(
            decode(&u32::MAX.to_le_bytes()).unwrap_err().to_string(),
            "staged bundle: 4294967295 entries do not fit in 4 bytes"
        );
    }
}
