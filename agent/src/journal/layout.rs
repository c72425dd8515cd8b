//! The journal's one table type and the byte encodings of its keys and
//! values.
//!
//! Every journal table is `&[u8] → &[u8]`: redb's B-tree code is generic over
//! a table's key and value types and is compiled once per pair, which on a
//! microcontroller costs ~10 KiB of flash per pair. So the journal encodes
//! its keys and values itself, with these rules:
//!
//! - a `u64` or `u16` key part is big-endian, so byte order is numeric order;
//! - a string key part that is followed by another part is escaped (`0x00` →
//!   `0x00 0x01`) and ends with `0x00 0x00`: byte order of the encoding is
//!   the string's order, and no encoding is a prefix of another; a string
//!   that is the whole key is its UTF-8 bytes;
//! - values that are integers are little-endian, fixed width.

use alloc::string::String;
use alloc::vec::Vec;

use redb::TableDefinition;

use super::CommitError;

/// The type of every journal table (and of tables an embedder keeps beside
/// them, such as the firmware's resume record).
pub type Bytes = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// An open journal table.
pub(super) type Table<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// A batch sequence or row id as a key.
pub(super) fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// The id of an [`id_key`].
pub(super) fn id_of(what: &str, key: &[u8]) -> Result<u64, CommitError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| bad(what, "key"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A `u64` value.
pub fn u64_value(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

/// The number in a [`u64_value`]; `None` if it is not 8 bytes.
pub fn u64_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.try_into().ok()?))
}

/// A `(u32, u32)` value (`devices`, `device_drops`).
pub(super) fn u32_pair_value(a: u32, b: u32) -> [u8; 8] {
    let mut out = [0; 8];
    out[..4].copy_from_slice(&a.to_le_bytes());
    out[4..].copy_from_slice(&b.to_le_bytes());
    out
}

/// The numbers in a [`u32_pair_value`].
pub(super) fn u32_pair_of(what: &str, value: &[u8]) -> Result<(u32, u32), CommitError> {
    match value {
        [a0, a1, a2, a3, b0, b1, b2, b3] => Ok((
            u32::from_le_bytes([*a0, *a1, *a2, *a3]),
            u32::from_le_bytes([*b0, *b1, *b2, *b3]),
        )),
        _ => Err(bad(what, "value")),
    }
}

/// A `(boot, offset_ns)` value (`device_offsets`).
pub(super) fn offset_value(boot: u32, offset_ns: i64) -> [u8; 12] {
    let mut out = [0; 12];
    out[..4].copy_from_slice(&boot.to_le_bytes());
    out[4..].copy_from_slice(&offset_ns.to_le_bytes());
    out
}

/// The numbers in an [`offset_value`].
pub(super) fn offset_of(value: &[u8]) -> Result<(u32, i64), CommitError> {
    let bytes: [u8; 12] = value
        .try_into()
        .map_err(|_| bad("device_offsets", "value"))?;
    let (boot, offset) = bytes.split_at(4);
    Ok((
        u32::from_le_bytes(boot.try_into().unwrap_or_default()),
        i64::from_le_bytes(offset.try_into().unwrap_or_default()),
    ))
}

/// A count key: `origin`, `kind`, and `batch` when given (`health` has it,
/// `dropped` does not).
pub(super) fn count_key(origin: &str, kind: u16, batch: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(origin.len() + 12);
    for &b in origin.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(1);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&kind.to_be_bytes());
    if let Some(batch) = batch {
        out.extend_from_slice(&batch.to_be_bytes());
    }
    out
}

/// The parts of a [`count_key`]; `batch` is `Some` if the key has one.
pub(super) fn count_key_of(
    what: &str,
    key: &[u8],
) -> Result<(String, u16, Option<u64>), CommitError> {
    let mut origin = Vec::with_capacity(key.len());
    let mut i = 0;
    loop {
        match key.get(i..i + 2) {
            Some([0, 0]) => break,
            Some([0, 1]) => {
                origin.push(0);
                i += 2;
            }
            Some(&[b, _]) if b != 0 => {
                origin.push(b);
                i += 1;
            }
            _ => return Err(bad(what, "key")),
        }
    }
    let origin = String::from_utf8(origin).map_err(|_| bad(what, "key"))?;
    let (kind, batch) = match &key[i + 2..] {
        [k0, k1] => (u16::from_be_bytes([*k0, *k1]), None),
        [k0, k1, rest @ ..] if rest.len() == 8 => (
            u16::from_be_bytes([*k0, *k1]),
            Some(u64::from_be_bytes(rest.try_into().unwrap_or_default())),
        ),
        _ => return Err(bad(what, "key")),
    };
    Ok((origin, kind, batch))
}

/// A key that is a whole string (device id, `meta` name).
pub(super) fn str_of<'a>(what: &str, key: &'a [u8]) -> Result<&'a str, CommitError> {
    core::str::from_utf8(key).map_err(|_| bad(what, "key"))
}

fn bad(table: &str, part: &str) -> CommitError {
    CommitError::Corrupt(alloc::format!("a {table} {part} does not decode"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_keys_sort_as_their_parts_and_decode() {
        let parts: Vec<(&str, u16, u64)> = vec![
            ("", 0, 0),
            ("", 0, 1),
            ("", 1, 0),
            ("\0", 0, 0),
            ("\0\0", 2, 0),
            ("\0a", 0, 0),
            ("\x01", 0, 0),
            ("a", 0, 0),
            ("a", 0, u64::MAX),
            ("a", 256, 0),
            ("a\0", 0, 0),
            ("a\0b", 0, 0),
            ("a\x01", 0, 0),
            ("ab", 0, 0),
            ("b", 0, 0),
            ("é", 7, 3),
        ];
        let keys: Vec<Vec<u8>> = parts
            .iter()
            .map(|&(o, k, b)| count_key(o, k, Some(b)))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(
                count_key_of("health", key).unwrap(),
                (parts[i].0.into(), parts[i].1, Some(parts[i].2))
            );
            for (j, other) in keys.iter().enumerate() {
                assert_eq!(key.cmp(other), parts[i].cmp(&parts[j]), "{i} vs {j}");
            }
        }
        let short = count_key("dev\0ice", 3, None);
        assert_eq!(short, b"dev\0\x01ice\0\0\0\x03");
        assert_eq!(
            count_key_of("dropped", &short).unwrap(),
            ("dev\0ice".into(), 3, None)
        );
    }

    #[test]
    fn malformed_keys_and_values_are_corrupt_not_panics() {
        for key in [
            &b""[..],
            b"a",
            b"a\0",
            b"a\0\0",
            b"a\0\0\0",
            b"a\0\x02\0\0\0\0",
            b"a\0\0\0\0\0",
            b"\xff\0\0\0\0",
        ] {
            assert!(
                matches!(count_key_of("health", key), Err(CommitError::Corrupt(_))),
                "{key:?}"
            );
        }
        assert!(id_of("outbox", &[0; 7]).is_err());
        assert_eq!(id_of("outbox", &id_key(0x0102)).unwrap(), 0x0102);
        assert!(id_key(255) < id_key(256));
        assert!(u32_pair_of("devices", &[0; 9]).is_err());
        assert_eq!(
            u32_pair_of("devices", &u32_pair_value(7, u32::MAX)).unwrap(),
            (7, u32::MAX)
        );
        assert!(offset_of(&[0; 8]).is_err());
        assert_eq!(offset_of(&offset_value(3, -5)).unwrap(), (3, -5));
        assert_eq!(u64_of(&u64_value(u64::MAX)), Some(u64::MAX));
        assert_eq!(u64_of(&[0; 4]), None);
        assert!(str_of("devices", b"\xff").is_err());
    }
}
