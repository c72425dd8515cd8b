//! Length-prefixed frames on QUIC streams.
//!
//! ```text
//! +--------+--------+----------------+------------------+
//! | type:1 | flags:1| length:4 (BE)  | body: length     |
//! +--------+--------+----------------+------------------+
//! ```
//! `type` is a [`FrameType`]; `flags` bit 0 says the body is zstd-compressed
//! (only for [`FrameType::Batch`]); the other bits are reserved and must be 0.
//! `length` is checked against the receiver's limit before a single body byte
//! is buffered, so a peer cannot make the receiver allocate more than it
//! chose to accept.

/// Body compression codes, used in the session's hello and welcome and as
/// frame flags.
pub mod compression {
    /// No compression.
    pub const NONE: u8 = 0;
    /// Zstandard.
    pub const ZSTD: u8 = 1;
}

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 6;
/// Default largest frame body, 4 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 4 << 20;
/// Flag bit: the body is zstd-compressed.
pub const FLAG_ZSTD: u8 = 0b0000_0001;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// [`crate::session::Hello`].
    Hello = 1,
    /// [`crate::session::Welcome`].
    Welcome = 2,
    /// [`crate::batch::Batch`].
    Batch = 3,
    /// [`crate::session::Ack`].
    Ack = 4,
    /// [`crate::session::ErrorMsg`].
    Error = 5,
    /// [`crate::session::AgentStatus`].
    Status = 6,
    /// [`crate::compact::Definitions`] (revision 4), on a batch stream
    /// before the [`FrameType::CompactBatch`].
    Definitions = 7,
    /// [`crate::compact::CompactBatch`] (revision 4).
    CompactBatch = 8,
}

impl FrameType {
    /// The type for a wire byte, if known.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Hello,
            2 => Self::Welcome,
            3 => Self::Batch,
            4 => Self::Ack,
            5 => Self::Error,
            6 => Self::Status,
            7 => Self::Definitions,
            8 => Self::CompactBatch,
            _ => return None,
        })
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the body is.
    pub frame_type: FrameType,
    /// Body compression, a [`compression`] code.
    pub compression: u8,
    /// Body length in bytes.
    pub len: u32,
}

/// A header that must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Byte 0 is not a known frame type.
    #[error("unknown frame type {0} at byte 0")]
    UnknownType(u8),
    /// Reserved flag bits are set, or compression on a frame that cannot have it.
    #[error("invalid flags {flags:#04x} at byte 1 for a {frame_type:?} frame")]
    BadFlags {
        /// The flags byte.
        flags: u8,
        /// The frame's type.
        frame_type: FrameType,
    },
    /// The declared body length exceeds the receiver's limit.
    #[error("frame body of {len} bytes (bytes 2-5) exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
}

/// The result of looking at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole frame: its header, its body, and the bytes it used.
    Frame {
        /// The header.
        header: FrameHeader,
        /// The body (`header.len` bytes).
        body: &'a [u8],
        /// Header plus body length: where the next frame starts.
        consumed: usize,
    },
    /// Not enough bytes yet; at least `needed` bytes in total are required.
    Incomplete {
        /// Total bytes needed before parsing can go further.
        needed: usize,
    },
}

impl FrameHeader {
    /// Parses and checks a header. `max` is the receiver's body limit.
    pub fn parse(bytes: &[u8; HEADER_LEN], max: u32) -> Result<Self, FrameError> {
        let frame_type = FrameType::from_u8(bytes[0]).ok_or(FrameError::UnknownType(bytes[0]))?;
        let flags = bytes[1];
        let allowed = if matches!(
            frame_type,
            FrameType::Batch | FrameType::Definitions | FrameType::CompactBatch
        ) {
            FLAG_ZSTD
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Err(FrameError::BadFlags { flags, frame_type });
        }
        let len = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        let compression = if flags & FLAG_ZSTD != 0 {
            compression::ZSTD
        } else {
            compression::NONE
        };
        Ok(Self {
            frame_type,
            compression,
            len,
        })
    }

    /// The header's six bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let flags = if self.compression == compression::ZSTD {
            FLAG_ZSTD
        } else {
            0
        };
        let l = self.len.to_be_bytes();
        [self.frame_type as u8, flags, l[0], l[1], l[2], l[3]]
    }
}

/// Parses one frame from the start of `buf`, telling "need more bytes" apart
/// from "invalid". Never allocates and never panics.
pub fn parse(buf: &[u8], max: u32) -> Result<Parsed<'_>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        // Check what we can already: an unknown type is invalid at byte 0.
        if let Some(&t) = buf.first() {
            FrameType::from_u8(t).ok_or(FrameError::UnknownType(t))?;
        }
        return Ok(Parsed::Incomplete { needed: HEADER_LEN });
    };
    let header = FrameHeader::parse(head, max)?;
    let total = HEADER_LEN + header.len as usize;
    match buf.get(HEADER_LEN..total) {
        Some(body) => Ok(Parsed::Frame {
            header,
            body,
            consumed: total,
        }),
        None => Ok(Parsed::Incomplete { needed: total }),
    }
}

/// Appends a frame with `body` to `out`.
#[cfg(feature = "alloc")]
pub fn write_frame(
    out: &mut alloc::vec::Vec<u8>,
    frame_type: FrameType,
    compression: u8,
    body: &[u8],
) {
    let header = FrameHeader {
        frame_type,
        compression,
        len: u32::try_from(body.len()).unwrap_or(u32::MAX),
    };
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn incomplete_is_not_invalid() {
        assert_eq!(parse(&[], 100), Ok(Parsed::Incomplete { needed: 6 }));
        assert_eq!(parse(&[3, 0, 0], 100), Ok(Parsed::Incomplete { needed: 6 }));
        assert_eq!(
            parse(&[3, 0, 0, 0, 0, 4, 1], 100),
            Ok(Parsed::Incomplete { needed: 10 })
        );
        let frame = [3, 1, 0, 0, 0, 2, 0xaa, 0xbb, 0xcc];
        assert_eq!(
            parse(&frame, 100),
            Ok(Parsed::Frame {
                header: FrameHeader {
                    frame_type: FrameType::Batch,
                    compression: compression::ZSTD,
                    len: 2
                },
                body: &[0xaa, 0xbb],
                consumed: 8
            })
        );
    }

    #[test]
    fn invalid_headers_are_named() {
        assert_eq!(parse(&[9], 100), Err(FrameError::UnknownType(9)));
        assert_eq!(
            parse(&[4, 1, 0, 0, 0, 0], 100),
            Err(FrameError::BadFlags {
                flags: 1,
                frame_type: FrameType::Ack
            })
        );
        assert_eq!(
            parse(&[3, 0x80, 0, 0, 0, 0], 100),
            Err(FrameError::BadFlags {
                flags: 0x80,
                frame_type: FrameType::Batch
            })
        );
        let err = parse(&[3, 0, 0xff, 0xff, 0xff, 0xff], 4 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frame body of 4294967295 bytes (bytes 2-5) exceeds the limit of 4194304"
        );
    }
}
