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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::pin_mut;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::Type;

use super::feed::{Entry, Feed, Progress, Wake, gather};
use super::{Backoff, duration};
use crate::fanout::LagBudget;

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
    type Error = String;
    fn try_from(raw: PostgresRaw) -> Result<Self, String> {
        let config: tokio_postgres::Config = raw.dsn.parse().map_err(|e| format!("dsn: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err("dsn: no host".into());
        }
        if raw.schema.is_empty()
            || raw.schema.len() > 63
            || !raw
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || raw.schema.as_bytes()[0].is_ascii_digit()
        {
            return Err(format!(
                "schema {:?}: use 1 to 63 of a-z 0-9 _, not starting with a digit",
                raw.schema
            ));
        }
        let linger = duration("batch_linger", &raw.batch_linger)?;
        duration("connect_timeout", &raw.connect_timeout)?;
        let backoff = (
            duration("backoff_min", &raw.backoff_min)?,
            duration("backoff_max", &raw.backoff_max)?,
        );
        if backoff.0.is_zero() || backoff.1 < backoff.0 {
            return Err("`backoff_min` must be positive, `backoff_max` >= `backoff_min`".into());
        }
        if !(1..=10_000_000).contains(&raw.max_rows) {
            return Err("`max_rows` must be between 1 and 10000000".into());
        }
        let tls = config.get_ssl_mode() == SslMode::Require;
        if raw.ca_file.is_some() && !tls {
            return Err("`ca_file` needs sslmode=require in the dsn".into());
        }
        Ok(Self {
            raw,
            linger,
            backoff,
            tls,
        })
    }
}

/// The DDL, in order; `{s}` is the schema.
const DDL: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS {s}",
    "CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {s}.series (
        id bigint PRIMARY KEY,
        metric text NOT NULL,
        tags jsonb NOT NULL,
        name text NOT NULL)",
    // No foreign key on series_id: checking it costs a lookup per copied
    // row; the sink inserts a series before the rows that use it, in the
    // same transaction.
    "CREATE TABLE IF NOT EXISTS {s}.readings (
        series_id bigint NOT NULL,
        ts_ns bigint NOT NULL,
        value double precision NOT NULL)",
    "CREATE INDEX IF NOT EXISTS readings_series_ts ON {s}.readings (series_id, ts_ns)",
    "CREATE TABLE IF NOT EXISTS {s}.aggregates (
        series_id bigint NOT NULL,
        start_ns bigint NOT NULL,
        len_ns bigint NOT NULL,
        count bigint NOT NULL,
        sum double precision NOT NULL,
        min double precision NOT NULL,
        max double precision NOT NULL,
        first double precision NOT NULL,
        last double precision NOT NULL,
        p50 double precision,
        p90 double precision,
        p95 double precision,
        p99 double precision)",
    "CREATE INDEX IF NOT EXISTS aggregates_series_start ON {s}.aggregates (series_id, start_ns)",
    "CREATE TABLE IF NOT EXISTS {s}.cursors (
        sink text PRIMARY KEY,
        seq bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE OR REPLACE VIEW {s}.readings_v AS
        SELECT s.name AS series, s.metric, s.tags,
               to_timestamp(r.ts_ns / 1e9) AS ts, r.ts_ns, r.value
        FROM {s}.readings r JOIN {s}.series s ON s.id = r.series_id",
];

/// One connection and what this run knows is in PostgreSQL.
struct Conn {
    client: tokio_postgres::Client,
    /// Series ids known to be in `<schema>.series`.
    series: HashSet<u64>,
}

/// Why a step failed.
enum Failure {
    /// Retry after a pause (connection lost, server error).
    Retry(String),
    /// PostgreSQL's cursor is not where the sink thought: reconnect and
    /// reconcile.
    Moved(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        let detail = e
            .as_db_error()
            .map(|d| format!("{}: {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string());
        Failure::Retry(detail)
    }
}

async fn connect(cfg: &PostgresSink) -> Result<tokio_postgres::Client, String> {
    let mut config: tokio_postgres::Config =
        cfg.raw.dsn.parse().map_err(|e| format!("dsn: {e}"))?;
    config.connect_timeout(duration("connect_timeout", &cfg.raw.connect_timeout)?);
    config.application_name("ferry-collector");
    let client = if cfg.tls {
        let tls = super::tls::client_config(cfg.raw.ca_file.as_deref(), &[])?;
        let (client, conn) = config
            .connect(RustlsConnect(tls))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("PostgreSQL connection ended: {e}");
            }
        });
        client
    } else {
        config.ssl_mode(SslMode::Disable);
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("PostgreSQL connection ended: {e}");
            }
        });
        client
    };
    Ok(client)
}

/// Creates the schema if missing; refuses a newer one.
async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<(), Failure> {
    let tx = client.transaction().await?;
    // One migrating collector at a time per schema.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
        &[&schema],
    )
    .await?;
    for stmt in DDL {
        tx.batch_execute(&stmt.replace("{s}", schema)).await?;
    }
    let row = tx
        .query_opt(
            &format!("SELECT max(version) FROM {schema}.schema_version"),
            &[],
        )
        .await?;
    let version: Option<i32> = row.and_then(|r| r.get(0));
    match version {
        None => {
            tx.execute(
                &format!("INSERT INTO {schema}.schema_version (version) VALUES ($1)"),
                &[&SCHEMA_VERSION],
            )
            .await?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(Failure::Retry(format!(
                "schema {schema} is at version {v}, newer than this collector's {SCHEMA_VERSION}"
            )));
        }
        Some(_) => {}
    }
    tx.commit().await?;
    Ok(())
}

/// At start: PostgreSQL's cursor against the collector's. Returns the
/// cursor to deliver after.
async fn reconcile(feed: &mut Feed, conn: &mut Conn, schema: &str) -> Result<u64, Failure> {
    let mine = feed.cursor();
    let theirs: Option<i64> = conn
        .client
        .query_opt(
            &format!("SELECT seq FROM {schema}.cursors WHERE sink = $1"),
            &[&feed.name],
        )
        .await?
        .map(|r| r.get(0));
    match theirs {
        None => {
            // A database new to this sink: it starts where the collector is.
            conn.client
                .execute(
                    &format!("INSERT INTO {schema}.cursors (sink, seq) VALUES ($1, $2)"),
                    &[&feed.name, &(mine as i64)],
                )
                .await?;
            tracing::info!(
                sink = feed.name,
                cursor = mine,
                "PostgreSQL: cursor recorded"
            );
            Ok(mine)
        }
        Some(p) if p as u64 == mine => Ok(mine),
        Some(p) if p as u64 > mine => {
            // The collector stopped between PostgreSQL's commit and its own:
            // those batches are in PostgreSQL already.
            let p = p as u64;
            tracing::info!(
                sink = feed.name,
                collector = mine,
                postgres = p,
                "PostgreSQL is ahead of the collector's cursor (a crash between the two commits): moving up"
            );
            if !feed
                .commit_retrying(
                    p,
                    Progress {
                        entries: p - mine,
                        ..Progress::default()
                    },
                )
                .await
            {
                return Err(Failure::Retry("stopping".into()));
            }
            Ok(p)
        }
        Some(p) => {
            let p = p as u64;
            tracing::error!(
                sink = feed.name,
                collector = mine,
                postgres = p,
                "PostgreSQL's cursor is behind the collector's (a database restored from a backup?): the rows of stored batches {}..={mine} are missing there and no longer held by the event log; counted as skipped",
                p + 1
            );
            conn.client
                .execute(
                    &format!(
                        "UPDATE {schema}.cursors SET seq = $2, updated_at = now() WHERE sink = $1"
                    ),
                    &[&feed.name, &(mine as i64)],
                )
                .await?;
            if !feed
                .commit_retrying(
                    mine,
                    Progress {
                        skipped: mine - p,
                        ..Progress::default()
                    },
                )
                .await
            {
                return Err(Failure::Retry("stopping".into()));
            }
            Ok(mine)
        }
    }
}

fn tags_json(key: &ferry_proto::series::SeriesKey) -> String {
    let map: serde_json::Map<String, serde_json::Value> = key
        .tags
        .iter()
        .map(|t| (t.key.clone(), serde_json::Value::String(t.value.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Writes `entries` and moves PostgreSQL's cursor from `from` to `to`, in
/// one transaction. Returns the rows written.
async fn write(
    feed: &Feed,
    conn: &mut Conn,
    schema: &str,
    from: u64,
    to: u64,
    entries: &[Entry],
) -> Result<(u64, Vec<u64>), Failure> {
    let tx = conn.client.transaction().await?;
    let at: Option<i64> = tx
        .query_opt(
            &format!("SELECT seq FROM {schema}.cursors WHERE sink = $1 FOR UPDATE"),
            &[&feed.name],
        )
        .await?
        .map(|r| r.get(0));
    if at != Some(from as i64) {
        return Err(Failure::Moved(format!(
            "PostgreSQL's cursor is {at:?}, expected {from}: another writer?"
        )));
    }
    let mut new_series: Vec<u64> = entries
        .iter()
        .flat_map(|e| {
            e.readings
                .iter()
                .map(|r| r.0)
                .chain(e.aggregates.iter().map(|a| a.0))
        })
        .filter(|id| !conn.series.contains(id))
        .collect();
    new_series.sort_unstable();
    new_series.dedup();
    if !new_series.is_empty() {
        let stmt = tx
            .prepare(&format!(
                "INSERT INTO {schema}.series (id, metric, tags, name) VALUES ($1, $2, $3::text::jsonb, $4) ON CONFLICT (id) DO NOTHING"
            ))
            .await?;
        for &id in &new_series {
            let Some(key) = feed.series(id) else { continue };
            tx.execute(
                &stmt,
                &[&(id as i64), &key.metric, &tags_json(key), &key.to_string()],
            )
            .await?;
        }
    }
    let mut rows = 0u64;
    let readings: usize = entries.iter().map(Entry::reading_count).sum();
    if readings > 0 {
        let sink = tx
            .copy_in(&format!(
                "COPY {schema}.readings (series_id, ts_ns, value) FROM STDIN BINARY"
            ))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::FLOAT8]);
        pin_mut!(writer);
        for e in entries {
            for (series, rs) in &e.readings {
                if feed.series(*series).is_none() {
                    continue;
                }
                let id = *series as i64;
                for r in rs {
                    writer.as_mut().write(&[&id, &r.ts_ns, &r.value]).await?;
                    rows += 1;
                }
            }
        }
        writer.finish().await?;
    }
    if entries.iter().any(|e| !e.aggregates.is_empty()) {
        let sink = tx
            .copy_in(&format!(
                "COPY {schema}.aggregates (series_id, start_ns, len_ns, count, sum, min, max, first, last, p50, p90, p95, p99) FROM STDIN BINARY"
            ))
            .await?;
        let f = Type::FLOAT8;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                f.clone(),
                f.clone(),
                f.clone(),
                f.clone(),
                f.clone(),
                f.clone(),
                f.clone(),
                f.clone(),
                f,
            ],
        );
        pin_mut!(writer);
        for e in entries {
            for (series, a) in &e.aggregates {
                if feed.series(*series).is_none() {
                    continue;
                }
                let q = |q: f64| a.sketch.as_ref().and_then(|s| s.quantile(q));
                let (p50, p90, p95, p99) = (q(0.5), q(0.9), q(0.95), q(0.99));
                writer
                    .as_mut()
                    .write(&[
                        &(*series as i64),
                        &a.start_ns,
                        &(a.len_ns as i64),
                        &(a.count as i64),
                        &a.sum,
                        &a.min,
                        &a.max,
                        &a.first,
                        &a.last,
                        &p50,
                        &p90,
                        &p95,
                        &p99,
                    ])
                    .await?;
                rows += 1;
            }
        }
        writer.finish().await?;
    }
    tx.execute(
        &format!("UPDATE {schema}.cursors SET seq = $2, updated_at = now() WHERE sink = $1"),
        &[&feed.name, &(to as i64)],
    )
    .await?;
    tx.commit().await?;
    Ok((rows, new_series))
}

/// The sink's loop: connect, migrate, reconcile, then gather → one
/// transaction → the collector's cursor, until stopped.
pub(crate) async fn run(feed: &mut Feed, cfg: &PostgresSink) {
    let schema = cfg.raw.schema.as_str();
    let mut backoff = Backoff::new(cfg.backoff.0, cfg.backoff.1);
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
                    let mut client = connect(cfg).await.map_err(Failure::Retry)?;
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
                        let delay = backoff.next_delay();
                        feed.retried(&format!("PostgreSQL: {e}"), delay);
                        if feed.pause(delay).await == Wake::Stop {
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
                    if feed.pause(Duration::from_secs(1)).await == Wake::Stop {
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
                backoff.reset();
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
                let delay = backoff.next_delay();
                feed.retried(&format!("PostgreSQL: {e}"), delay);
                // The connection may be fine (a server-side error): keep it
                // unless it closed.
                conn = Some(c);
                if feed.pause(delay).await == Wake::Stop {
                    return;
                }
            }
            Err(Failure::Moved(e)) => {
                tracing::error!(sink = feed.name, "{e}; reconciling");
                let delay = backoff.next_delay();
                if feed.pause(delay).await == Wake::Stop {
                    return;
                }
            }
        }
    }
}

/// rustls as tokio-postgres' TLS (ring provider, the server's certificate
/// verified for the host name of the connection string).
#[derive(Clone)]
struct RustlsConnect(Arc<rustls::ClientConfig>);

struct RustlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, Self::Error> {
        Ok(RustlsConnector {
            config: self.0.clone(),
            name: rustls::pki_types::ServerName::try_from(domain.to_owned())?,
        })
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_schema_and_tls_are_checked() {
        let raw = |dsn: &str, schema: &str| PostgresRaw {
            dsn: dsn.into(),
            schema: schema.into(),
            ca_file: None,
            max_rows: max_rows(),
            batch_linger: linger(),
            connect_timeout: ten_seconds(),
            backoff_min: backoff_min(),
            backoff_max: backoff_max(),
            lag_budget: LagBudget::default(),
        };
        let ok = PostgresSink::try_from(raw("host=127.0.0.1 port=5432 user=u dbname=d", "ferry"))
            .unwrap();
        assert!(!ok.tls);
        let tls = PostgresSink::try_from(raw(
            "postgresql://u@db.example.org/d?sslmode=require",
            "x_1",
        ))
        .unwrap();
        assert!(tls.tls);
        let e = PostgresSink::try_from(raw("host=h", "Bad-Name")).unwrap_err();
        assert!(e.contains("schema \"Bad-Name\""), "{e}");
        let e = PostgresSink::try_from(raw("user=u", "ferry")).unwrap_err();
        assert!(e.contains("no host"), "{e}");
    }

    #[test]
    fn tags_are_a_json_object() {
        let key =
            ferry_proto::series::SeriesKey::new("t", [("device", "a\"1"), ("site", "x")]).unwrap();
        assert_eq!(tags_json(&key), r#"{"device":"a\"1","site":"x"}"#);
    }
}
