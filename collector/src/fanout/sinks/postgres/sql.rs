//! What the PostgreSQL sink says to the server: the schema's DDL and its
//! migration, reconciling the collector's cursor with PostgreSQL's (the
//! authoritative one) at start, and one range of stored batches written by
//! binary `COPY` in the same transaction as the cursor it moves.

use std::collections::HashSet;

use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::*;
use crate::fanout::sinks::feed::{Entry, Feed, Progress};

/// The DDL, in order; `{s}` is the schema.
pub(super) const DDL: &[&str] = &[
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
pub(super) struct Conn {
    pub(super) client: tokio_postgres::Client,
    /// Series ids known to be in `<schema>.series`.
    pub(super) series: HashSet<u64>,
}

/// Why a step failed.
pub(super) enum Failure {
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

/// Creates the schema if missing; refuses a newer one.
pub(super) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<(), Failure> {
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
pub(super) async fn reconcile(
    feed: &mut Feed,
    conn: &mut Conn,
    schema: &str,
) -> Result<u64, Failure> {
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

pub(super) fn tags_json(key: &ferry_proto::series::SeriesKey) -> String {
    let map: serde_json::Map<String, serde_json::Value> = key
        .tags
        .iter()
        .map(|t| (t.key.clone(), serde_json::Value::String(t.value.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Writes `entries` and moves PostgreSQL's cursor from `from` to `to`, in
/// one transaction. Returns the rows written.
pub(super) async fn write(
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
