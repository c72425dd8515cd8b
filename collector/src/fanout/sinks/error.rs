//! Why a `[sink.<name>]` storage sink is refused when the configuration
//! loads: one enum per sink kind (PostgreSQL's and Parquet's live beside
//! them), the shared duration and URL checks, and the enum that
//! [`super::StorageSink::new`] returns. Each message names the key at fault.

use super::parquet::ParquetConfigError;
use super::postgres::PostgresConfigError;
use crate::fanout::rules::RuleError;

/// A sink key holding a duration that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} {text:?}: {source}")]
pub struct DurationError {
    /// The key.
    pub what: &'static str,
    /// What it held.
    pub text: String,
    /// Why it does not parse.
    pub source: humantime::DurationError,
}

/// A sink `url` that is not `http[s]://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Neither `http://` nor `https://`.
    #[error("url {0:?}: expected http:// or https://")]
    Scheme(String),
    /// An IPv6 host without its closing bracket.
    #[error("url {0:?}: unclosed [ in the host")]
    UnclosedBracket(String),
    /// Something other than `:port` after an IPv6 host.
    #[error("url {0:?}: bad host")]
    Host(String),
    /// A port that is not a number from 0 to 65535.
    #[error("url {url:?}: bad port {port:?}")]
    Port {
        /// The URL.
        url: String,
        /// What stood for the port.
        port: String,
    },
    /// No host at all.
    #[error("url {0:?}: no host")]
    NoHost(String),
}

/// Why `[sink.<name>] kind = "prometheus_remote_write"` is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteWriteConfigError {
    /// `url` does not parse.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A duration that does not parse.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// The timeout or the backoff is out of range.
    #[error("`timeout` and `backoff_min` must be positive, `backoff_max` >= `backoff_min`")]
    Times,
    /// `max_samples_per_send` is out of range.
    #[error("`max_samples_per_send` must be between 1 and 1000000")]
    MaxSamples,
    /// A quantile outside 0..=1.
    #[error("`quantiles` must be between 0 and 1")]
    Quantiles,
    /// `ca_file` with a plain `http://` URL.
    #[error("`ca_file` needs an https:// url")]
    CaWithoutTls,
    /// A header name with characters outside A-Z a-z 0-9 -.
    #[error("header name {0:?}: use A-Z a-z 0-9 -")]
    HeaderName(String),
}

/// Why a `[sink.<name>]` storage sink is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageSinkError {
    /// The table's name breaks the rule for names.
    #[error(transparent)]
    Name(#[from] RuleError),
    /// A `prometheus_remote_write` key is wrong.
    #[error(transparent)]
    RemoteWrite(#[from] RemoteWriteConfigError),
    /// A `postgres` key is wrong.
    #[error(transparent)]
    Postgres(#[from] PostgresConfigError),
    /// A `parquet` key is wrong.
    #[error(transparent)]
    Parquet(#[from] ParquetConfigError),
}
