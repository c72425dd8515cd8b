//! Why the Parquet sink refused its config or could not write: one enum for
//! the config check and one for the file work (manifest, data files, the
//! event log), each message naming the file at fault. The sink logs them
//! and retries with backoff; the config error is reported with the sink's
//! name when the config loads.

use std::path::PathBuf;

use super::MANIFEST;

/// Why `[sink.<name>] kind = "parquet"` is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ParquetConfigError {
    /// A duration that does not parse (the message names the key).
    #[error(transparent)]
    Duration(crate::fanout::sinks::DurationError),
    /// `roll_every` outside 1 s..=24 h.
    #[error("`roll_every` must be between 1s and 24h")]
    RollRange,
    /// `roll_every` does not divide a day.
    #[error("`roll_every` must divide a day in whole seconds (1h, 10m, 15m, 1d…)")]
    RollDivides,
    /// `max_rows_per_file` or `row_group_rows` is zero.
    #[error("`max_rows_per_file` and `row_group_rows` must be positive")]
    Rows,
    /// `zstd_level` outside 1..=22.
    #[error("`zstd_level` must be 1 to 22")]
    ZstdLevel,
    /// `dir` is empty.
    #[error("`dir` is empty")]
    EmptyDir,
    /// The backoff is out of range.
    #[error("`backoff_min` must be positive, `backoff_max` >= `backoff_min`")]
    Backoff,
}

/// Why the Parquet sink could not open its directory or write a period.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParquetError {
    /// A directory or file could not be created.
    #[error("creating {}: {source}", path.display())]
    Create {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest could not be read.
    #[error("{}: {source}", path.display())]
    ReadManifest {
        /// The manifest's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of a manifest.
    #[error("{}: {source}", path.display())]
    BadManifest {
        /// The manifest's path.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The manifest could not be encoded.
    #[error("{0}")]
    EncodeManifest(serde_json::Error),
    /// The manifest could not be replaced.
    #[error("writing {MANIFEST}: {source}")]
    WriteManifest {
        /// Why.
        source: std::io::Error,
    },
    /// The directory's manifest names another sink.
    #[error("{} belongs to the sink {sink:?}, not {name:?}", path.display())]
    OtherSink {
        /// The manifest's path.
        path: PathBuf,
        /// The sink it names.
        sink: String,
        /// This sink.
        name: String,
    },
    /// A leftover file could not be removed.
    #[error("removing {}: {source}", path.display())]
    Remove {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A finished file could not be renamed to its name.
    #[error("renaming {}: {source}", path.display())]
    Rename {
        /// The temporary file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Syncing a file or directory failed.
    #[error("{0}")]
    Sync(std::io::Error),
    /// The Parquet writer refused.
    #[error("{0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The event log could not be read.
    #[error("{0}")]
    Feed(crate::fanout::sinks::feed::FeedError),
    /// The blocking task did not finish.
    #[error("{0}")]
    Join(#[from] tokio::task::JoinError),
}
