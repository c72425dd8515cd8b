//! Why the PostgreSQL sink refused its config or could not connect: one
//! enum per operation, each message naming the key or the step at fault.
//! A connection error is retried with backoff; a config error is reported
//! when the config loads.

/// Why `[sink.<name>] kind = "postgres"` is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresConfigError {
    /// The connection string does not parse.
    #[error("dsn: {0}")]
    Dsn(tokio_postgres::Error),
    /// The connection string names no host.
    #[error("dsn: no host")]
    NoHost,
    /// The schema is not a plain lower-case identifier.
    #[error("schema {0:?}: use 1 to 63 of a-z 0-9 _, not starting with a digit")]
    Schema(String),
    /// A duration that does not parse (the message names the key).
    #[error(transparent)]
    Duration(crate::fanout::sinks::DurationError),
    /// The backoff is out of range.
    #[error("`backoff_min` must be positive, `backoff_max` >= `backoff_min`")]
    Backoff,
    /// `max_rows` is out of range.
    #[error("`max_rows` must be between 1 and 10000000")]
    MaxRows,
    /// `ca_file` without TLS.
    #[error("`ca_file` needs sslmode=require in the dsn")]
    CaWithoutTls,
}

/// Why the sink could not connect to PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection string does not parse.
    #[error("dsn: {0}")]
    Dsn(tokio_postgres::Error),
    /// `connect_timeout` does not parse.
    #[error(transparent)]
    Timeout(crate::fanout::sinks::DurationError),
    /// The TLS config could not be built (the CA file).
    #[error("{0}")]
    Tls(crate::fanout::sinks::tls::TlsError),
    /// The server could not be reached, or refused.
    #[error("connecting: {0}")]
    Connecting(tokio_postgres::Error),
}
