//! Why a journal operation failed.

use alloc::string::String;
use core::fmt;

use super::*;

/// Why a commit failed. Nothing of the commit was applied.
#[derive(Debug)]
#[non_exhaustive]
pub enum CommitError {
    /// Under `backpressure`, the journal is at its budget.
    Full {
        /// Bytes used.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// Storage failed.
    Storage(redb::Error),
    /// A row could not be encoded or decoded.
    Corrupt(String),
    /// The file is a journal of another on-disk format.
    Format {
        /// The format the file says it holds.
        found: u64,
    },
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { used, budget } => {
                write!(
                    f,
                    "journal full: {used} bytes used of a {budget}-byte budget"
                )
            }
            Self::Storage(e) => write!(f, "journal storage: {e}"),
            Self::Corrupt(e) => write!(f, "journal corrupt: {e}"),
            Self::Format { found } => write!(
                f,
                "journal format {found}: this build reads format {FORMAT} only"
            ),
        }
    }
}

impl core::error::Error for CommitError {}

impl<E: Into<redb::Error>> From<E> for CommitError {
    fn from(e: E) -> Self {
        Self::Storage(e.into())
    }
}

/// Why a stored batch did not decompress ([`Compressor::decompress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecompressError {
    /// The codec (`ferry_proto::stream::compression`).
    pub codec: u8,
    /// What the decompressor said.
    pub reason: String,
}

impl fmt::Display for DecompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "codec {}: {}", self.codec, self.reason)
    }
}

impl core::error::Error for DecompressError {}
