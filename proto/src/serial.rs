//! Frames on serial links: COBS with a CRC-32C trailer, `0x00`-delimited.
//!
//! ```text
//! COBS( payload ‖ crc32c(payload) as 4 bytes little-endian ) ‖ 0x00
//! ```
//! - **COBS** removes every zero byte from the frame, so `0x00` marks frame
//!   ends unambiguously: a receiver that starts mid-stream or loses bytes
//!   resynchronises at the next zero.
//! - **CRC-32C** (Castagnoli, reflected, init and xorout `0xFFFFFFFF`; the
//!   iSCSI CRC) detects all errors of up to 5 flipped bits in frames up to
//!   [`MAX_SERIAL_FRAME`] bytes (Hamming distance 6 below ~650 bytes;
//!   CRC-16/CCITT offers distance 4) and every burst up to 32 bits, for 4
//!   bytes a frame. UART noise comes in bursts, and a report is ~200 bytes, so
//!   the extra two bytes over a CRC-16 are cheap insurance. A 1 KiB table in
//!   flash computes it at a few cycles per byte on a Cortex-M.
//!
//! Decoding is a byte-at-a-time state machine with a fixed buffer
//! ([`Deframer`]): an overlong frame is reported once and skipped up to the
//! next delimiter, so garbage on the line never stalls the link.

use crc::{CRC_32_ISCSI, Crc};

/// Largest payload (an encoded [`crate::link`] message) in bytes.
pub const MAX_LINK_PAYLOAD: usize = 480;
/// CRC trailer length.
pub const CRC_LEN: usize = 4;
/// Largest frame on the wire, delimiter included.
pub const MAX_SERIAL_FRAME: usize = cobs::max_encoding_length(MAX_LINK_PAYLOAD + CRC_LEN) + 1;

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// Why a serial frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// More than [`MAX_SERIAL_FRAME`] bytes arrived without a delimiter.
    #[error("frame longer than {MAX_SERIAL_FRAME} bytes; skipped to the next delimiter")]
    TooLong,
    /// The bytes between delimiters are not valid COBS.
    #[error("invalid COBS encoding in a {len}-byte frame")]
    BadCobs {
        /// Encoded length.
        len: usize,
    },
    /// The frame is shorter than its CRC.
    #[error("frame of {len} bytes is shorter than its 4-byte CRC")]
    TooShort {
        /// Decoded length.
        len: usize,
    },
    /// The CRC does not match the payload.
    #[error("CRC mismatch: frame says {expected:#010x}, payload gives {actual:#010x}")]
    BadCrc {
        /// CRC carried by the frame.
        expected: u32,
        /// CRC computed over the payload.
        actual: u32,
    },
    /// Payload too long to frame.
    #[error("payload of {len} bytes exceeds {MAX_LINK_PAYLOAD}")]
    PayloadTooLong {
        /// Payload length.
        len: usize,
    },
    /// Output buffer too small for the frame.
    #[error("output buffer of {capacity} bytes is too small")]
    BufferTooSmall {
        /// Buffer length.
        capacity: usize,
    },
}

/// Frames `payload` into `out`, delimiter included; returns the frame length.
pub fn encode_frame(payload: &[u8], out: &mut [u8]) -> Result<usize, SerialError> {
    if payload.len() > MAX_LINK_PAYLOAD {
        return Err(SerialError::PayloadTooLong { len: payload.len() });
    }
    let mut raw = [0u8; MAX_LINK_PAYLOAD + CRC_LEN];
    raw[..payload.len()].copy_from_slice(payload);
    raw[payload.len()..payload.len() + CRC_LEN].copy_from_slice(&crc32c(payload).to_le_bytes());
    let raw = &raw[..payload.len() + CRC_LEN];
    let need = cobs::max_encoding_length(raw.len()) + 1;
    if out.len() < need {
        return Err(SerialError::BufferTooSmall {
            capacity: out.len(),
        });
    }
    let n = cobs::encode(raw, out);
    out[n] = 0;
    Ok(n + 1)
}

/// Decodes one frame in place: `encoded` is the bytes between delimiters
/// (without the `0x00`). Returns the payload.
pub fn decode_frame(encoded: &mut [u8]) -> Result<&[u8], SerialError> {
    let len = encoded.len();
    let n = cobs::decode_in_place(encoded).map_err(|_| SerialError::BadCobs { len })?;
    if n < CRC_LEN {
        return Err(SerialError::TooShort { len: n });
    }
    let (payload, crc) = encoded[..n].split_at(n - CRC_LEN);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32c(payload);
    if expected != actual {
        return Err(SerialError::BadCrc { expected, actual });
    }
    Ok(payload)
}

/// Streaming deframer with a fixed buffer; feed it bytes as they arrive.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: heapless::Vec<u8, MAX_SERIAL_FRAME>,
    /// Dropping bytes of an overlong frame up to the next delimiter.
    skipping: bool,
    /// `buf` holds a payload handed out by the previous call.
    delivered: bool,
}

impl Deframer {
    /// A deframer at the start of the stream.
    pub const fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
            skipping: false,
            delivered: false,
        }
    }

    /// Feeds one byte. Returns a payload or an error when a frame ends (or
    /// overflows); `None` while a frame is still arriving. Empty frames
    /// (two delimiters in a row) are ignored: senders may send a leading
    /// delimiter to flush a receiver's partial frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<&[u8], SerialError>> {
        if self.delivered {
            self.buf.clear();
            self.delivered = false;
        }
        if byte != 0 {
            if self.skipping {
                return None;
            }
            if self.buf.push(byte).is_err() {
                self.buf.clear();
                self.skipping = true;
                return Some(Err(SerialError::TooLong));
            }
            return None;
        }
        if self.skipping {
            self.skipping = false;
            return None;
        }
        if self.buf.is_empty() {
            return None;
        }
        match decode_frame(&mut self.buf).map(<[u8]>::len) {
            Ok(n) => {
                // The payload is a prefix of the buffer after in-place decoding.
                self.buf.truncate(n);
                self.delivered = true;
                Some(Ok(&self.buf))
            }
            Err(e) => {
                self.buf.clear();
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(stream: &[u8]) -> heapless::Vec<Result<heapless::Vec<u8, 512>, SerialError>, 8> {
        let mut d = Deframer::new();
        let mut out = heapless::Vec::new();
        for &b in stream {
            if let Some(r) = d.push(b) {
                let _ = out.push(r.map(|p| heapless::Vec::from_slice(p).unwrap()));
            }
        }
        out
    }

    #[test]
    fn round_trip_and_resync_after_garbage() {
        let mut buf = [0u8; MAX_SERIAL_FRAME];
        let n = encode_frame(&[1, 0, 2, 0, 0, 3], &mut buf).unwrap();
        assert_eq!(buf[n - 1], 0);
        assert!(!buf[..n - 1].contains(&0));
        let mut stream: heapless::Vec<u8, 1024> = heapless::Vec::new();
        stream.extend_from_slice(&[0x55, 0x66, 0]).unwrap(); // line noise
        stream.extend_from_slice(&buf[..n]).unwrap();
        stream.extend_from_slice(&buf[..n]).unwrap();
        let got = frames(&stream);
        assert_eq!(got.len(), 3);
        assert!(matches!(
            got[0],
            Err(SerialError::BadCobs { .. }) | Err(SerialError::TooShort { .. })
        ));
        assert_eq!(got[1].as_deref(), Ok(&[1, 0, 2, 0, 0, 3][..]));
        assert_eq!(got[2].as_deref(), Ok(&[1, 0, 2, 0, 0, 3][..]));
    }

    #[test]
    fn corrupted_byte_fails_crc() {
        let mut buf = [0u8; MAX_SERIAL_FRAME];
        let n = encode_frame(b"hello", &mut buf).unwrap();
        buf[2] ^= 0x01;
        let got = frames(&buf[..n]);
        assert!(matches!(got[0], Err(SerialError::BadCrc { .. })), "{got:?}");
    }

    #[test]
    fn overlong_frame_is_reported_once_and_skipped() {
        let mut stream = [7u8; MAX_SERIAL_FRAME + 20];
        stream[MAX_SERIAL_FRAME + 10] = 0;
        let mut buf = [0u8; MAX_SERIAL_FRAME];
        let n = encode_frame(b"ok", &mut buf).unwrap();
        stream[MAX_SERIAL_FRAME + 11..MAX_SERIAL_FRAME + 11 + n].copy_from_slice(&buf[..n]);
        let got = frames(&stream[..MAX_SERIAL_FRAME + 11 + n]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Err(SerialError::TooLong));
        assert_eq!(got[1].as_deref(), Ok(&b"ok"[..]));
    }

    #[test]
    fn payload_limits() {
        let mut buf = [0u8; MAX_SERIAL_FRAME];
        let big = [1u8; MAX_LINK_PAYLOAD + 1];
        assert_eq!(
            encode_frame(&big, &mut buf),
            Err(SerialError::PayloadTooLong {
                len: MAX_LINK_PAYLOAD + 1
            })
        );
        let max = [1u8; MAX_LINK_PAYLOAD];
        assert_eq!(encode_frame(&max, &mut buf), Ok(MAX_SERIAL_FRAME));
        assert_eq!(
            encode_frame(&max, &mut buf[..10]),
            Err(SerialError::BufferTooSmall { capacity: 10 })
        );
    }
}
