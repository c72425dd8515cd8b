//! `kind = "postgres"`: readings and window aggregates into PostgreSQL by
//! binary `COPY`, exactly once.
//!
//! **Invariant: the rows of a range of stored batches and the sink's cursor
//! commit in one PostgreSQL transaction**, and PostgreSQL's cursor
//! (`<schema>.cursors`) is the authoritative one: the collector's own
//! (`sink/<name>` in its store) is committed after it and only mirrors it
//! (it is what holds the event log). A crash before the PostgreSQL commit
//! loses the transaction, and the range is delivered again from the same
//! cursor; a crash after it leaves PostgreSQL ahead, and at start the sink
//! moves the collector's cursor up to PostgreSQL's ([`reconcile`]). Each
//! transaction also checks (`SELECT … FOR UPDATE`) that PostgreSQL's cursor
//! is where the sink thinks, so two collectors pointed at one schema by
//! mistake cannot both write a range.
//!
//! The schema (docs/sinks.md) is created at start if missing, and its
//! version recorded in `<schema>.schema_version`.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode;

use super::duration;
use super::feed::{Entry, Feed, Progress, Wake, gather};
use super::retry::{Failure as Wait, Retry};
use crate::fanout::LagBudget;

mod connect;
mod error;
mod sql;

use connect::*;
pub use error::{ConnectError, PostgresConfigError};
use sql::*;

/// The schema version this collector writes.
pub const SCHEMA_VERSION: i32 = 1;

/// `[sink.<name>] kind = "postgres"` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresRaw {
    /// libpq-style connection string (`host=… port=… user=… dbname=…
    /// password=… sslmode=require`) or URL (`postgresql://user@host/db`).
    pub dsn: String,
    /// The schema holding Ferry's tables; default `ferry`.
    #[serde(default = "schema")]
    pub schema: String,
    /// PEM file of the CA that signed the server's certificate (with
    /// `sslmode=require`); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Readings and aggregates per transaction at most; default 100000.
    #[serde(default = "max_rows")]
    pub max_rows: usize,
    /// How long a transaction waits for more rows while it has fewer than
    /// `max_rows`; default `200ms`.
    #[serde(default = "linger")]
    pub batch_linger: String,
    /// Connect timeout; default `10s`.
    #[serde(default = "ten_seconds")]
    pub connect_timeout: String,
    /// First retry delay, doubling; default `100ms`.
    #[serde(default = "backoff_min")]
    pub backoff_min: String,
    /// Longest retry delay; default `30s`.
    #[serde(default = "backoff_max")]
    pub backoff_max: String,
    /// Lag budget in stored batches.
    #[serde(default)]
    pub lag_budget: LagBudget,
}

fn schema() -> String {
    "ferry".into()
}
fn max_rows() -> usize {
    100_000
}
fn linger() -> String {
    "200ms".into()
}
fn ten_seconds() -> String {
    "10s".into()
}
fn backoff_min() -> String {
    "100ms".into()
}
fn backoff_max() -> String {
    "30s".into()
}

/// A checked PostgreSQL sink.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresSink {
    /// As written.
    pub raw: PostgresRaw,
    linger: Duration,
    backoff: (Duration, Duration),
    tls: bool,
}

impl TryFrom<PostgresRaw> for PostgresSink {
    type Error = PostgresConfigError;
    fn try_from(raw: PostgresRaw) -> Result<Self, PostgresConfigError> {
        let config: tokio_postgres::Config = raw.dsn.parse().map_err(PostgresConfigError::Dsn)?;
        if config.get_hosts().is_empty() {
            return Err(PostgresConfigError::NoHost);
        }
        if raw.schema.is_empty()
            || raw.schema.len() > 63
            || !raw
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || raw.schema.as_bytes()[0].is_ascii_digit()
        {
            return Err(PostgresConfigError::Schema(raw.schema.clone()));
        }
        let dur = |what, text| duration(what, text).map_err(PostgresConfigError::Duration);
        let linger = dur("batch_linger", &raw.batch_linger)?;
        dur("connect_timeout", &raw.connect_timeout)?;
        let backoff = (
            dur("backoff_min", &raw.backoff_min)?,
            dur("backoff_max", &raw.backoff_max)?,
        );
        if backoff.0.is_zero() || backoff.1 < backoff.0 {
            return Err(PostgresConfigError::Backoff);
        }
        if !(1..=10_000_000).contains(&raw.max_rows) {
            return Err(PostgresConfigError::MaxRows);
        }
        let tls = config.get_ssl_mode() == SslMode::Require;
        if raw.ca_file.is_some() && !tls {
            return Err(PostgresConfigError::CaWithoutTls);
        }
        Ok(Self {
            raw,
            linger,
            backoff,
            tls,
        })
    }
}

/// The sink's loop: connect, migrate, reconcile, then gather → one
/// transaction → the collector's cursor, until stopped.
pub(crate) async fn run(feed: &mut Feed, cfg: &PostgresSink) {
    let schema = cfg.raw.schema.as_str();
    let mut retry = Retry::new(cfg.backoff.0, cfg.backoff.1);
    let mut conn: Option<Conn> = None;
    // Entries gathered but not yet in PostgreSQL (kept across retries).
    let mut pending: Option<(u64, Vec<Entry>, u64)> = None;
    loop {
        if feed.stopping() {
            return;
        }
        let mut c = match conn.take() {
            Some(c) if !c.client.is_closed() => c,
            _ => {
                let mut stop = feed.stop_signal();
                let attempt = async {
                    let mut client = connect(cfg)
                        .await
                        .map_err(|e| Failure::Retry(e.to_string()))?;
                    migrate(&mut client, schema).await?;
                    let mut c = Conn {
                        client,
                        series: HashSet::new(),
                    };
                    reconcile(feed, &mut c, schema).await?;
                    Ok::<_, Failure>(c)
                };
                let attempt = tokio::select! {
                    r = attempt => r,
                    _ = crate::stopped(&mut stop) => return,
                };
                match attempt {
                    Ok(c) => {
                        // What was gathered may be stale after a reconcile.
                        pending = None;
                        c
                    }
                    Err(Failure::Retry(e) | Failure::Moved(e)) => {
                        let why = format!("PostgreSQL: {e}");
                        if feed.back_off(&mut retry, Wait::Delivery, &why).await == Wake::Stop {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        if let Some((from, to)) = feed.over_budget() {
            tracing::warn!(
                sink = feed.name,
                from,
                to,
                "past its lag budget: skipping {} stored batches",
                to + 1 - from
            );
            let moved = c
                .client
                .execute(
                    &format!("UPDATE {schema}.cursors SET seq = $2, updated_at = now() WHERE sink = $1 AND seq = $3"),
                    &[&feed.name, &(to as i64), &((from - 1) as i64)],
                )
                .await;
            pending = None;
            // Otherwise PostgreSQL's cursor moved (or the connection
            // failed): reconnect and reconcile.
            if let Ok(1) = moved {
                let p = Progress {
                    skipped: to + 1 - from,
                    ..Progress::default()
                };
                if !feed.commit_retrying(to, p).await {
                    return;
                }
                conn = Some(c);
            }
            continue;
        }
        let after = feed.cursor();
        let (entries, gap) = match pending.take() {
            Some((from, entries, gap)) if from == after => (entries, gap),
            _ => match gather(feed, after, cfg.raw.max_rows, cfg.linger).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(sink = feed.name, "{e}");
                    conn = Some(c);
                    if feed.back_off(&mut retry, Wait::Local, "").await == Wake::Stop {
                        return;
                    }
                    continue;
                }
            },
        };
        if entries.is_empty() && gap == 0 {
            conn = Some(c);
            continue;
        }
        if gap > 0 {
            tracing::warn!(
                sink = feed.name,
                from = after + 1,
                to = after + gap,
                "stored batches no longer in the event log (the sink was not configured when they were trimmed): counted as skipped"
            );
        }
        let to = entries.last().map_or(after + gap, |e| e.seq);
        // A stop (shutdown, reload) does not wait for a server that hangs:
        // the transaction is dropped uncommitted, and the range delivered
        // again by the next run.
        let mut stop = feed.stop_signal();
        let written = tokio::select! {
            r = write(feed, &mut c, schema, after, to, &entries) => r,
            _ = crate::stopped(&mut stop) => return,
        };
        match written {
            Ok((rows, new_series)) => {
                retry.handle_answered();
                c.series.extend(new_series);
                let p = Progress {
                    entries: entries.len() as u64,
                    delivered: rows,
                    skipped: gap,
                    ..Progress::default()
                };
                conn = Some(c);
                if !feed.commit_retrying(to, p).await {
                    return;
                }
            }
            Err(Failure::Retry(e)) => {
                pending = Some((after, entries, gap));
                // The connection may be fine (a server-side error): keep it
                // unless it closed.
                conn = Some(c);
                let why = format!("PostgreSQL: {e}");
                if feed.back_off(&mut retry, Wait::Delivery, &why).await == Wake::Stop {
                    return;
                }
            }
            Err(Failure::Moved(e)) => {
                tracing::error!(sink = feed.name, "{e}; reconciling");
                if feed.back_off(&mut retry, Wait::Logged, "").await == Wake::Stop {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
