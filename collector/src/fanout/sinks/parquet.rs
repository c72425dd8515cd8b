//! `kind = "parquet"`: readings and window aggregates as zstd-compressed
//! Parquet files in a directory, one file per period (an hour by default)
//! and kind, exactly once.
//!
//! Layout (docs/sinks.md): `<dir>/readings/period=<UTC start>/<from>-<to>.parquet`
//! and `<dir>/aggregates/period=…/<from>-<to>.parquet`, where `from..=to`
//! is the range of stored batches (event-log seqs) the file holds and the
//! period is when the collector stored them. `<dir>/manifest.json` lists
//! every committed file and the sink's cursor.
//!
//! **Invariants.**
//! - A file holds exactly the readings of the stored batches `from..=to`;
//!   the ranges of the files of one kind do not overlap.
//! - A data file is complete (written, fsynced, renamed from a temporary
//!   name) before the manifest lists it; the manifest is replaced
//!   atomically (temporary file, fsync, rename, directory fsync) together
//!   with the cursor, and is the authoritative cursor: the collector's own
//!   is committed after it. A crash before the manifest's rename leaves a
//!   file nobody lists: at start every `.parquet` the manifest does not list
//!   (and every temporary file) is deleted, and the range is written again,
//!   under the same name (the range is cut by the same rule). A crash after
//!   it leaves the manifest ahead of the collector's cursor, which moves up.
//! - A reader that reads the files the manifest lists (or, once the sink is
//!   idle, every `*.parquet`) sees each reading once.
//!
//! Files are written when their period is over (plus a second of grace for
//! batches still committing), from the event log, which holds the period's
//! batches meanwhile; a file is cut early when its period passes
//! `max_rows_per_file` rows or the sink's lag reaches half its budget (when
//! to write: the sans-IO [`roll::Roll`], tested with a fake clock).

use std::path::PathBuf;
use std::time::Duration;

use ferry_clock::{Clock, SystemClock, until};
use parquet::basic::ZstdLevel;
use serde::{Deserialize, Serialize};

use super::duration;
use super::feed::{Feed, Progress, Wake};
use super::retry::{Failure, Retry};
use crate::fanout::LagBudget;

mod error;
mod manifest;
mod roll;
mod write;

pub use error::{ParquetConfigError, ParquetError};
use manifest::*;
pub use manifest::{FileEntry, MANIFEST, Manifest};
use roll::{Close, Roll};
use write::*;

/// `[sink.<name>] kind = "parquet"` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetRaw {
    /// The directory (created if missing). Relative paths are relative to
    /// the collector's working directory.
    pub dir: PathBuf,
    /// Period of a file (UTC-aligned); default `1h`.
    #[serde(default = "hour")]
    pub roll_every: String,
    /// Rows per file at most (a busy period gets several files); default
    /// 50 000 000.
    #[serde(default = "max_rows_per_file")]
    pub max_rows_per_file: u64,
    /// Rows per row group; default 1 000 000.
    #[serde(default = "row_group_rows")]
    pub row_group_rows: usize,
    /// zstd level, 1 to 22; default 3.
    #[serde(default = "level")]
    pub zstd_level: i32,
    /// First retry delay (a failed write), doubling; default `1s`.
    #[serde(default = "backoff_min")]
    pub backoff_min: String,
    /// Longest retry delay; default `60s`.
    #[serde(default = "backoff_max")]
    pub backoff_max: String,
    /// Lag budget in stored batches: the log holds a period's batches
    /// until its file is written, so this bounds a period too (a file is
    /// cut when the lag reaches half of it).
    #[serde(default = "budget")]
    pub lag_budget: LagBudget,
}

fn hour() -> String {
    "1h".into()
}
fn max_rows_per_file() -> u64 {
    50_000_000
}
fn row_group_rows() -> usize {
    1_000_000
}
fn level() -> i32 {
    3
}
fn backoff_min() -> String {
    "1s".into()
}
fn backoff_max() -> String {
    "60s".into()
}
fn budget() -> LagBudget {
    LagBudget {
        max: 1_000_000,
        policy: crate::fanout::LagPolicy::Backpressure,
    }
}

/// A checked Parquet sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ParquetSink {
    /// As written.
    pub raw: ParquetRaw,
    period_ns: i64,
    backoff: (Duration, Duration),
}

impl TryFrom<ParquetRaw> for ParquetSink {
    type Error = ParquetConfigError;
    fn try_from(raw: ParquetRaw) -> Result<Self, ParquetConfigError> {
        let dur = |what, text| duration(what, text).map_err(ParquetConfigError::Duration);
        let period = dur("roll_every", &raw.roll_every)?;
        if period < Duration::from_secs(1) || period > Duration::from_secs(86_400) {
            return Err(ParquetConfigError::RollRange);
        }
        if 86_400 % period.as_secs() != 0 || period.subsec_nanos() != 0 {
            return Err(ParquetConfigError::RollDivides);
        }
        if raw.max_rows_per_file == 0 || raw.row_group_rows == 0 {
            return Err(ParquetConfigError::Rows);
        }
        ZstdLevel::try_new(raw.zstd_level).map_err(|_| ParquetConfigError::ZstdLevel)?;
        if raw.dir.as_os_str().is_empty() {
            return Err(ParquetConfigError::EmptyDir);
        }
        let backoff = (
            dur("backoff_min", &raw.backoff_min)?,
            dur("backoff_max", &raw.backoff_max)?,
        );
        if backoff.0.is_zero() || backoff.1 < backoff.0 {
            return Err(ParquetConfigError::Backoff);
        }
        Ok(Self {
            period_ns: period.as_nanos() as i64,
            backoff,
            raw,
        })
    }
}

/// The sink's loop: reconcile with the manifest, then write each period's
/// files once it is over, until stopped.
pub(crate) async fn run(feed: &mut Feed, cfg: &ParquetSink) {
    let dir = cfg.raw.dir.clone();
    let mut retry = Retry::new(cfg.backoff.0, cfg.backoff.1);
    // Open: the manifest, leftovers, the cursor.
    let mut manifest = loop {
        let opened = {
            let dir = dir.clone();
            let name = feed.name.clone();
            tokio::task::spawn_blocking(move || -> Result<(Manifest, bool, u64), ParquetError> {
                std::fs::create_dir_all(&dir).map_err(|source| ParquetError::Create {
                    path: dir.clone(),
                    source,
                })?;
                let (m, fresh) = match load_manifest(&dir)? {
                    Some(m) if m.sink != name => {
                        return Err(ParquetError::OtherSink {
                            path: dir.join(MANIFEST),
                            sink: m.sink,
                            name,
                        });
                    }
                    Some(m) => (m, false),
                    None => (
                        Manifest {
                            version: 1,
                            sink: name,
                            ..Manifest::default()
                        },
                        true,
                    ),
                };
                let removed = remove_unlisted(&dir, &m)?;
                Ok((m, fresh, removed))
            })
            .await
            .map_err(ParquetError::Join)
            .and_then(|r| r)
        };
        match opened {
            Ok((mut m, fresh, _)) => {
                let mine = feed.cursor();
                if fresh {
                    m.cursor = mine;
                    let saved = {
                        let (dir, m) = (dir.clone(), m.clone());
                        tokio::task::spawn_blocking(move || save_manifest(&dir, &m))
                            .await
                            .map_err(ParquetError::Join)
                            .and_then(|r| r)
                    };
                    if let Err(e) = saved {
                        tracing::error!(sink = feed.name, "{e}");
                        if feed.back_off(&mut retry, Failure::Logged, "").await == Wake::Stop {
                            return;
                        }
                        continue;
                    }
                } else if m.cursor > mine {
                    tracing::info!(
                        sink = feed.name,
                        collector = mine,
                        manifest = m.cursor,
                        "the manifest is ahead of the collector's cursor (a crash between the two commits): moving up"
                    );
                    let p = Progress {
                        entries: m.cursor - mine,
                        ..Progress::default()
                    };
                    if !feed.commit_retrying(m.cursor, p).await {
                        return;
                    }
                } else if m.cursor < mine {
                    tracing::error!(
                        sink = feed.name,
                        collector = mine,
                        manifest = m.cursor,
                        "the manifest is behind the collector's cursor (the directory was restored or replaced?): stored batches {}..={mine} are missing from it and no longer held by the event log; counted as skipped",
                        m.cursor + 1
                    );
                    let p = Progress {
                        skipped: mine - m.cursor,
                        ..Progress::default()
                    };
                    m.cursor = mine;
                    if !feed.commit_retrying(mine, p).await {
                        return;
                    }
                }
                break m;
            }
            Err(e) => {
                let why = format!("parquet: {e}");
                if feed.back_off(&mut retry, Failure::Delivery, &why).await == Wake::Stop {
                    return;
                }
            }
        }
    };
    retry.handle_answered();
    let (clock, roll) = (SystemClock, Roll::new(cfg));
    loop {
        if feed.stopping() {
            return;
        }
        let after = feed.cursor();
        let head = feed.head();
        let budget = feed.shared().bus.budget(&feed.key).unwrap_or_default();
        if let Some((from, to)) = feed.over_budget() {
            tracing::warn!(
                sink = feed.name,
                from,
                to,
                "past its lag budget: skipping {} stored batches",
                to + 1 - from
            );
            manifest.cursor = to;
            let saved = {
                let (dir, m) = (dir.clone(), manifest.clone());
                tokio::task::spawn_blocking(move || save_manifest(&dir, &m))
                    .await
                    .map_err(ParquetError::Join)
                    .and_then(|r| r)
            };
            if let Err(e) = saved {
                tracing::error!(sink = feed.name, "{e}");
                manifest.cursor = after;
                if feed.back_off(&mut retry, Failure::Logged, "").await == Wake::Stop {
                    return;
                }
                continue;
            }
            let p = Progress {
                skipped: to + 1 - from,
                ..Progress::default()
            };
            if !feed.commit_retrying(to, p).await {
                return;
            }
            continue;
        }
        if head <= after {
            if feed.wait(None).await == Wake::Stop {
                return;
            }
            continue;
        }
        // The period of the first batch not yet written.
        let first = match feed.read(after, 1).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(sink = feed.name, "{e}");
                if feed.back_off(&mut retry, Failure::Local, "").await == Wake::Stop {
                    return;
                }
                continue;
            }
        };
        let Some(first) = first.into_iter().next() else {
            // (after, head] is gone: trimmed while the sink was away.
            tracing::warn!(
                sink = feed.name,
                from = after + 1,
                to = head,
                "stored batches no longer in the event log (the sink was not configured when they were trimmed): counted as skipped"
            );
            manifest.cursor = head;
            let (d, m) = (dir.clone(), manifest.clone());
            let _ = tokio::task::spawn_blocking(move || save_manifest(&d, &m)).await;
            let p = Progress {
                skipped: head - after,
                ..Progress::default()
            };
            if !feed.commit_retrying(head, p).await {
                return;
            }
            continue;
        };
        let gap = first.seq - after - 1;
        let now = clock.now_ns();
        let limit = match roll.poll(now, first.stored_ns, after, head, budget.max) {
            Close::Write { limit } => limit,
            Close::Wait { until: deadline } => {
                // News may push the lag past half the budget: look again then.
                if feed.wait(Some(until(now, deadline))).await == Wake::Stop {
                    return;
                }
                continue;
            }
        };
        let written = {
            let store = feed.shared().store.clone();
            let name = feed.name.clone();
            let cfg = cfg.clone();
            let mut names = feed.take_names();
            let joined = tokio::task::spawn_blocking(move || {
                let r = write_period(&store, &name, &cfg, after, limit, &mut names);
                (names, r)
            })
            .await;
            match joined {
                Ok((names, r)) => {
                    feed.put_names(names);
                    r
                }
                Err(e) => Err(ParquetError::Join(e)),
            }
        };
        let w = match written {
            Ok(Some(w)) => w,
            Ok(None) => continue,
            Err(e) => {
                let why = format!("parquet: {e}");
                if feed.back_off(&mut retry, Failure::Delivery, &why).await == Wake::Stop {
                    return;
                }
                continue;
            }
        };
        let mut next = manifest.clone();
        next.cursor = w.to;
        next.files.extend(w.files.iter().cloned());
        let saved = {
            let (dir, m) = (dir.clone(), next.clone());
            tokio::task::spawn_blocking(move || save_manifest(&dir, &m))
                .await
                .map_err(ParquetError::Join)
                .and_then(|r| r)
        };
        if let Err(e) = saved {
            let why = format!("parquet: {e}");
            if feed.back_off(&mut retry, Failure::Delivery, &why).await == Wake::Stop {
                return;
            }
            continue;
        }
        retry.handle_answered();
        manifest = next;
        for f in &w.files {
            tracing::info!(
                sink = feed.name,
                file = f.path,
                rows = f.rows,
                bytes = f.bytes,
                "parquet file written"
            );
        }
        let p = Progress {
            entries: w.entries,
            delivered: w.rows,
            skipped: gap,
            ..Progress::default()
        };
        if !feed.commit_retrying(w.to, p).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
