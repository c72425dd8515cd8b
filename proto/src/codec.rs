//! Encoding and decoding of single Ferry messages.
//!
//! Two implementations of one representation (see [`crate::wire`]):
//! - [`to_slice`] / [`from_slice`]: `messagepack-serde`, no allocator, for
//!   devices (and anywhere else a fixed buffer is at hand);
//! - [`to_vec`] / [`from_bytes`] (feature `std`): `rmp-serde`, for the agent and
//!   the collector.
//!
//! Both reject trailing bytes after the message where they can see them, and
//! their errors name the message type and, inside it, the field that failed.

use core::fmt::{self, Write as _};

use crate::wire::Pinned;

/// Longest error detail kept; longer texts are cut (devices have no heap).
pub const MAX_DETAIL: usize = 96;

/// Why a message could not be decoded: which message, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {message}: {detail}")]
pub struct DecodeError {
    /// The message type that was being decoded, e.g. `Batch`.
    pub message: &'static str,
    /// What was wrong, naming the field path where the decoder knows it.
    pub detail: heapless::String<MAX_DETAIL>,
}

impl DecodeError {
    /// Builds an error from anything printable, cut to [`MAX_DETAIL`] bytes.
    pub fn new(message: &'static str, detail: impl fmt::Display) -> Self {
        let mut out = Truncating(heapless::String::new());
        let _ = write!(out, "{detail}");
        Self {
            message,
            detail: out.0,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer is smaller than the encoded message.
    #[error("encoded message does not fit the {capacity}-byte buffer")]
    BufferTooSmall {
        /// Size of the buffer that was offered.
        capacity: usize,
    },
    /// A value cannot be represented (a serde error other than buffer space).
    #[error("value cannot be encoded")]
    Unrepresentable,
}

struct Truncating(heapless::String<MAX_DETAIL>);

impl fmt::Write for Truncating {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.0.push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Encodes `value` into `buf` without allocating; returns the length written.
pub fn to_slice<T: serde::Serialize + ?Sized>(
    value: &T,
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    use messagepack_serde::messagepack_core::encode::Error as CoreError;
    use messagepack_serde::ser::Error;
    messagepack_serde::to_slice_with_config(value, buf, Pinned).map_err(|e| match e {
        Error::Encode(CoreError::Io(_)) => EncodeError::BufferTooSmall {
            capacity: buf.len(),
        },
        _ => EncodeError::Unrepresentable,
    })
}

/// Decodes one message of type `T` from `bytes` without allocating (unless `T`
/// itself owns heap data). `message` names the type in errors.
pub fn from_slice<'de, T: serde::Deserialize<'de>>(
    message: &'static str,
    bytes: &'de [u8],
) -> Result<T, DecodeError> {
    messagepack_serde::from_slice(bytes).map_err(|e| DecodeError::new(message, e))
}

/// Encodes `value` into a new vector with `messagepack-serde`: the same bytes
/// as [`to_vec`], available to `alloc`-only builds (the agent's journal on a
/// device).
#[cfg(feature = "alloc")]
pub fn encode_alloc<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<alloc::vec::Vec<u8>, EncodeError> {
    let mut out = VecWriter(alloc::vec::Vec::new());
    messagepack_serde::ser::to_core_writer_with_config(value, &mut out, Pinned)
        .map_err(|_| EncodeError::Unrepresentable)?;
    Ok(out.0)
}

/// A growing vector as a `messagepack-core` writer. Ours rather than
/// `messagepack-serde`'s `alloc` feature, which pulls its whole owned-value
/// machinery into the device journal image (about 70 KiB of flash).
#[cfg(feature = "alloc")]
struct VecWriter(alloc::vec::Vec<u8>);

#[cfg(feature = "alloc")]
impl messagepack_serde::messagepack_core::io::IoWrite for VecWriter {
    type Error = core::convert::Infallible;

    fn write(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        // Nearly every write is a marker byte or an integer's 1, 2, 4 or 8
        // bytes: copied inline, not by a `memcpy` call each.
        match buf.len() {
            1 => self.0.push(buf[0]),
            2 => push_array::<2>(&mut self.0, buf),
            4 => push_array::<4>(&mut self.0, buf),
            8 => push_array::<8>(&mut self.0, buf),
            _ => self.0.extend_from_slice(buf),
        }
        Ok(())
    }
}

/// Appends `buf`, `N` bytes long, as an array (a copy of known size).
#[cfg(feature = "alloc")]
#[inline(always)]
fn push_array<const N: usize>(out: &mut alloc::vec::Vec<u8>, buf: &[u8]) {
    match <[u8; N]>::try_from(buf) {
        Ok(array) => out.extend_from_slice(&array),
        Err(_) => out.extend_from_slice(buf),
    }
}

/// Encodes `value` with `rmp-serde`.
#[cfg(feature = "std")]
pub fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> Result<alloc::vec::Vec<u8>, EncodeError> {
    let mut out = alloc::vec::Vec::new();
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut out))
        .map_err(|_| EncodeError::Unrepresentable)?;
    Ok(out)
}

/// Appends the encoding of `value` to `out` with `rmp-serde`.
#[cfg(feature = "std")]
pub fn extend_vec<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut alloc::vec::Vec<u8>,
) -> Result<(), EncodeError> {
    value
        .serialize(&mut rmp_serde::Serializer::new(out))
        .map_err(|_| EncodeError::Unrepresentable)
}

/// Decodes one message of type `T` from the start of `bytes` with
/// `rmp-serde`; returns it and the number of bytes it used (the caller
/// decides what bytes after it mean).
#[cfg(feature = "std")]
pub fn from_bytes_prefix<T: serde::de::DeserializeOwned>(
    message: &'static str,
    bytes: &[u8],
) -> Result<(T, usize), DecodeError> {
    let mut rest = bytes;
    let value = {
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        T::deserialize(&mut de).map_err(|e| DecodeError::new(message, e))?
    };
    Ok((value, bytes.len() - rest.len()))
}

/// The error for `extra` bytes after a message that ended at `at`.
pub fn trailing_bytes(message: &'static str, extra: usize, at: usize) -> DecodeError {
    DecodeError::new(
        message,
        format_args!("{extra} trailing bytes after the message at offset {at}"),
    )
}

/// Decodes exactly one message of type `T` from `bytes` with `rmp-serde`.
/// Trailing bytes after the message are an error.
#[cfg(feature = "std")]
pub fn from_bytes<T: serde::de::DeserializeOwned>(
    message: &'static str,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    let (value, used) = from_bytes_prefix(message, bytes)?;
    if used < bytes.len() {
        return Err(trailing_bytes(message, bytes.len() - used, used));
    }
    Ok(value)
}
