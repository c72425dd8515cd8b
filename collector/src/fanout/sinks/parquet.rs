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
//! `max_rows_per_file` rows or the sink's lag reaches half its budget.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde::{Deserialize, Serialize};

use super::feed::{Entry, Feed, Names, Progress, READ_ENTRIES, Wake, read_blocking};
use super::{Backoff, duration};
use crate::fanout::LagBudget;

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
    type Error = String;
    fn try_from(raw: ParquetRaw) -> Result<Self, String> {
        let period = duration("roll_every", &raw.roll_every)?;
        if period < Duration::from_secs(1) || period > Duration::from_secs(86_400) {
            return Err("`roll_every` must be between 1s and 24h".into());
        }
        if 86_400 % period.as_secs() != 0 || period.subsec_nanos() != 0 {
            return Err(
                "`roll_every` must divide a day in whole seconds (1h, 10m, 15m, 1d…)".into(),
            );
        }
        if raw.max_rows_per_file == 0 || raw.row_group_rows == 0 {
            return Err("`max_rows_per_file` and `row_group_rows` must be positive".into());
        }
        ZstdLevel::try_new(raw.zstd_level)
            .map_err(|_| "`zstd_level` must be 1 to 22".to_owned())?;
        if raw.dir.as_os_str().is_empty() {
            return Err("`dir` is empty".into());
        }
        let backoff = (
            duration("backoff_min", &raw.backoff_min)?,
            duration("backoff_max", &raw.backoff_max)?,
        );
        if backoff.0.is_zero() || backoff.1 < backoff.0 {
            return Err("`backoff_min` must be positive, `backoff_max` >= `backoff_min`".into());
        }
        Ok(Self {
            period_ns: period.as_nanos() as i64,
            backoff,
            raw,
        })
    }
}

/// The manifest's name in the directory.
pub const MANIFEST: &str = "manifest.json";

/// `manifest.json`: what a reader can trust.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// The sink that writes here.
    pub sink: String,
    /// Every stored batch up to this event-log seq is in the files below.
    pub cursor: u64,
    /// The committed files, oldest first.
    pub files: Vec<FileEntry>,
}

/// One committed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the directory.
    pub path: String,
    /// `readings` or `aggregates`.
    pub kind: String,
    /// First stored batch (event-log seq) it covers.
    pub from: u64,
    /// Last stored batch it covers.
    pub to: u64,
    /// Rows.
    pub rows: u64,
    /// Smallest and largest reading timestamp (window start for
    /// aggregates), ns.
    pub min_ts_ns: i64,
    /// See `min_ts_ns`.
    pub max_ts_ns: i64,
    /// File size.
    pub bytes: u64,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename,
/// directory fsync.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

fn load_manifest(dir: &Path) -> Result<Option<Manifest>, String> {
    let path = dir.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn save_manifest(dir: &Path, m: &Manifest) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(m).map_err(|e| e.to_string())?;
    replace(&dir.join(MANIFEST), &bytes).map_err(|e| format!("writing {MANIFEST}: {e}"))
}

/// Deletes every `.parquet` under `dir` the manifest does not list, and
/// every temporary file: leftovers of a crash before a manifest commit.
fn remove_unlisted(dir: &Path, m: &Manifest) -> Result<u64, String> {
    let listed: std::collections::HashSet<PathBuf> =
        m.files.iter().map(|f| dir.join(&f.path)).collect();
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if (name.ends_with(".parquet") && !listed.contains(&p))
                || (name.starts_with('.') && name.ends_with(".tmp"))
            {
                std::fs::remove_file(&p).map_err(|e| format!("removing {}: {e}", p.display()))?;
                tracing::info!(file = %p.display(), "parquet: removed a file no manifest lists (left by a crash)");
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The period directory name of `ns`: `period=20251202T1500Z`
/// (`…T150010Z` when periods are shorter than a minute).
fn period_dir(start_ns: i64, period_ns: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_ns))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let base = format!(
        "period={:04}{:02}{:02}T{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    );
    if period_ns % 60_000_000_000 == 0 {
        format!("{base}Z")
    } else {
        format!("{base}{:02}Z", t.second())
    }
}

const READINGS_SCHEMA: &str = "
message readings {
  REQUIRED INT64 series_id;
  REQUIRED BYTE_ARRAY metric (STRING);
  REQUIRED BYTE_ARRAY series (STRING);
  REQUIRED BYTE_ARRAY tags (JSON);
  REQUIRED INT64 ts (TIMESTAMP(NANOS,true));
  REQUIRED DOUBLE value;
}";

const AGGREGATES_SCHEMA: &str = "
message aggregates {
  REQUIRED INT64 series_id;
  REQUIRED BYTE_ARRAY metric (STRING);
  REQUIRED BYTE_ARRAY series (STRING);
  REQUIRED BYTE_ARRAY tags (JSON);
  REQUIRED INT64 start (TIMESTAMP(NANOS,true));
  REQUIRED INT64 len_ns;
  REQUIRED INT64 count;
  REQUIRED DOUBLE sum;
  REQUIRED DOUBLE min;
  REQUIRED DOUBLE max;
  REQUIRED DOUBLE first;
  REQUIRED DOUBLE last;
  OPTIONAL DOUBLE p50;
  OPTIONAL DOUBLE p90;
  OPTIONAL DOUBLE p95;
  OPTIONAL DOUBLE p99;
}";

/// A series' string columns, encoded once.
#[derive(Clone)]
struct SeriesCols {
    metric: ByteArray,
    series: ByteArray,
    tags: ByteArray,
}

fn cols_of(key: &ferry_proto::series::SeriesKey) -> SeriesCols {
    let tags: serde_json::Map<String, serde_json::Value> = key
        .tags
        .iter()
        .map(|t| (t.key.clone(), serde_json::Value::String(t.value.clone())))
        .collect();
    SeriesCols {
        metric: ByteArray::from(Bytes::from(key.metric.clone())),
        series: ByteArray::from(Bytes::from(key.to_string())),
        tags: ByteArray::from(Bytes::from(serde_json::Value::Object(tags).to_string())),
    }
}

/// Column buffers of one row group.
#[derive(Default)]
struct Columns {
    ids: Vec<i64>,
    strings: [Vec<ByteArray>; 3],
    ints: Vec<Vec<i64>>,
    doubles: Vec<Vec<f64>>,
    optional: Vec<(Vec<f64>, Vec<i16>)>,
}

impl Columns {
    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// One Parquet file being written, under a temporary name.
struct Writer {
    writer: SerializedFileWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    rel: String,
    cols: Columns,
    ints: usize,
    doubles: usize,
    optional: usize,
    row_group: usize,
    rows: u64,
    min_ts: i64,
    max_ts: i64,
}

impl Writer {
    fn create(
        dir: &Path,
        rel: String,
        schema: &str,
        (ints, doubles, optional): (usize, usize, usize),
        cfg: &ParquetSink,
    ) -> Result<Self, String> {
        let path = dir.join(&rel);
        let parent = path.parent().unwrap_or(dir).to_path_buf();
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        let tmp = parent.join(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        let file = File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        let schema = Arc::new(parse_message_type(schema).map_err(|e| e.to_string())?);
        let level = ZstdLevel::try_new(cfg.raw.zstd_level).map_err(|e| e.to_string())?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_created_by(concat!("ferry-collector ", env!("CARGO_PKG_VERSION")).into())
            .build();
        let writer =
            SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(|e| e.to_string())?;
        Ok(Self {
            writer,
            tmp,
            path,
            rel,
            cols: Columns {
                ints: vec![Vec::new(); ints],
                doubles: vec![Vec::new(); doubles],
                optional: vec![(Vec::new(), Vec::new()); optional],
                ..Columns::default()
            },
            ints,
            doubles,
            optional,
            row_group: cfg.raw.row_group_rows,
            rows: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        })
    }

    fn row(
        &mut self,
        id: u64,
        s: &SeriesCols,
        ts: i64,
        ints: &[i64],
        doubles: &[f64],
        optional: &[Option<f64>],
    ) -> Result<(), String> {
        let c = &mut self.cols;
        c.ids.push(id as i64);
        c.strings[0].push(s.metric.clone());
        c.strings[1].push(s.series.clone());
        c.strings[2].push(s.tags.clone());
        for (v, col) in ints.iter().zip(&mut c.ints) {
            col.push(*v);
        }
        for (v, col) in doubles.iter().zip(&mut c.doubles) {
            col.push(*v);
        }
        for (v, (vals, defs)) in optional.iter().zip(&mut c.optional) {
            match v {
                Some(x) => {
                    vals.push(*x);
                    defs.push(1);
                }
                None => defs.push(0),
            }
        }
        self.rows += 1;
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
        if c.len() >= self.row_group {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.cols.len() == 0 {
            return Ok(());
        }
        let cols = std::mem::replace(
            &mut self.cols,
            Columns {
                ints: vec![Vec::new(); self.ints],
                doubles: vec![Vec::new(); self.doubles],
                optional: vec![(Vec::new(), Vec::new()); self.optional],
                ..Columns::default()
            },
        );
        let e = |e: parquet::errors::ParquetError| e.to_string();
        let mut rg = self.writer.next_row_group().map_err(e)?;
        let mut i = 0usize;
        while let Some(mut col) = rg.next_column().map_err(e)? {
            match i {
                0 => {
                    col.typed::<Int64Type>()
                        .write_batch(&cols.ids, None, None)
                        .map_err(e)?;
                }
                1..=3 => {
                    col.typed::<ByteArrayType>()
                        .write_batch(&cols.strings[i - 1], None, None)
                        .map_err(e)?;
                }
                _ => {
                    let j = i - 4;
                    if j < self.ints {
                        col.typed::<Int64Type>()
                            .write_batch(&cols.ints[j], None, None)
                            .map_err(e)?;
                    } else if j < self.ints + self.doubles {
                        col.typed::<DoubleType>()
                            .write_batch(&cols.doubles[j - self.ints], None, None)
                            .map_err(e)?;
                    } else {
                        let (vals, defs) = &cols.optional[j - self.ints - self.doubles];
                        col.typed::<DoubleType>()
                            .write_batch(vals, Some(defs), None)
                            .map_err(e)?;
                    }
                }
            }
            col.close().map_err(e)?;
            i += 1;
        }
        rg.close().map_err(e)?;
        Ok(())
    }

    /// Finishes the file: fsync, rename to its final name.
    fn finish(mut self, kind: &str, from: u64, to: u64) -> Result<FileEntry, String> {
        self.flush()?;
        let file = self.writer.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        drop(file);
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| format!("renaming {}: {e}", self.tmp.display()))?;
        if let Some(parent) = self.path.parent() {
            fsync_dir(parent).map_err(|e| e.to_string())?;
        }
        Ok(FileEntry {
            path: self.rel,
            kind: kind.into(),
            from,
            to,
            rows: self.rows,
            min_ts_ns: self.min_ts,
            max_ts_ns: self.max_ts,
            bytes,
        })
    }
}

/// What writing one period's range produced.
struct Written {
    to: u64,
    entries: u64,
    rows: u64,
    files: Vec<FileEntry>,
}

/// Writes the stored batches after `after` that were stored in the period
/// of the first one, up to `max_rows_per_file` rows or `limit` (the head
/// when cutting early), into one readings and one aggregates file.
/// Blocking.
fn write_period(
    store: &crate::Store,
    sink: &str,
    cfg: &ParquetSink,
    after: u64,
    limit: u64,
    names: &mut Names,
) -> Result<Option<Written>, String> {
    let dir = &cfg.raw.dir;
    let mut cols: HashMap<u64, SeriesCols> = HashMap::new();
    let mut period: Option<i64> = None;
    let (mut readings, mut aggregates): (Option<Writer>, Option<Writer>) = (None, None);
    let mut last = after;
    let mut entries = 0u64;
    let mut rows = 0u64;
    let mut staged: Vec<Entry> = Vec::new();
    // Writes what was read: the range's end is not known yet, so the files
    // get their names at the end (they are temporary until then).
    let mut stage = |staged: &mut Vec<Entry>, pdir: &str, names: &Names| -> Result<(), String> {
        for e in staged.drain(..) {
            for (series, rs) in &e.readings {
                let Some(key) = names.get(series) else {
                    continue;
                };
                let c = cols.entry(*series).or_insert_with(|| cols_of(key)).clone();
                let w = match &mut readings {
                    Some(w) => w,
                    None => readings.insert(Writer::create(
                        dir,
                        format!("readings/{pdir}/{}.parquet.part", after + 1),
                        READINGS_SCHEMA,
                        (1, 1, 0),
                        cfg,
                    )?),
                };
                for r in rs {
                    w.row(*series, &c, r.ts_ns, &[r.ts_ns], &[r.value], &[])?;
                }
            }
            for (series, a) in &e.aggregates {
                let Some(key) = names.get(series) else {
                    continue;
                };
                let c = cols.entry(*series).or_insert_with(|| cols_of(key)).clone();
                let w = match &mut aggregates {
                    Some(w) => w,
                    None => aggregates.insert(Writer::create(
                        dir,
                        format!("aggregates/{pdir}/{}.parquet.part", after + 1),
                        AGGREGATES_SCHEMA,
                        (3, 5, 4),
                        cfg,
                    )?),
                };
                let q = |q: f64| a.sketch.as_ref().and_then(|s| s.quantile(q));
                w.row(
                    *series,
                    &c,
                    a.start_ns,
                    &[a.start_ns, a.len_ns as i64, a.count as i64],
                    &[a.sum, a.min, a.max, a.first, a.last],
                    &[q(0.5), q(0.9), q(0.95), q(0.99)],
                )?;
            }
        }

        Ok(())
    };
    'read: loop {
        let got = read_blocking(store, sink, last, READ_ENTRIES, names)?;
        if got.is_empty() {
            break;
        }
        for e in got {
            if e.seq > limit {
                break 'read;
            }
            let p = e.stored_ns - e.stored_ns.rem_euclid(cfg.period_ns);
            match period {
                None => period = Some(p),
                Some(q) if q != p => break 'read,
                Some(_) => {}
            }
            let n = (e.reading_count() + e.aggregates.len()) as u64;
            if rows > 0 && rows + n > cfg.raw.max_rows_per_file {
                break 'read;
            }
            rows += n;
            last = e.seq;
            entries += 1;
            staged.push(e);
        }
        let pdir = period_dir(period.unwrap_or(0), cfg.period_ns);
        stage(&mut staged, &pdir, names)?;
    }
    // Entries read before a cut are written too.
    let pdir = period_dir(period.unwrap_or(0), cfg.period_ns);
    stage(&mut staged, &pdir, names)?;
    if entries == 0 {
        return Ok(None);
    }
    let pdir = period_dir(period.unwrap_or(0), cfg.period_ns);
    let mut files = Vec::new();
    for (w, kind) in [(readings, "readings"), (aggregates, "aggregates")] {
        if let Some(mut w) = w {
            w.rel = format!("{kind}/{pdir}/{:020}-{:020}.parquet", after + 1, last);
            w.path = dir.join(&w.rel);
            files.push(w.finish(kind, after + 1, last)?);
        }
    }
    Ok(Some(Written {
        to: last,
        entries,
        rows,
        files,
    }))
}

/// The sink's loop: reconcile with the manifest, then write each period's
/// files once it is over, until stopped.
pub(crate) async fn run(feed: &mut Feed, cfg: &ParquetSink) {
    let dir = cfg.raw.dir.clone();
    let mut backoff = Backoff::new(cfg.backoff.0, cfg.backoff.1);
    // Open: the manifest, leftovers, the cursor.
    let mut manifest = loop {
        let opened = {
            let dir = dir.clone();
            let name = feed.name.clone();
            tokio::task::spawn_blocking(move || -> Result<(Manifest, bool, u64), String> {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                let (m, fresh) = match load_manifest(&dir)? {
                    Some(m) if m.sink != name => {
                        return Err(format!(
                            "{} belongs to the sink {:?}, not {name:?}",
                            dir.join(MANIFEST).display(),
                            m.sink
                        ));
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
            .map_err(|e| e.to_string())
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
                            .map_err(|e| e.to_string())
                            .and_then(|r| r)
                    };
                    if let Err(e) = saved {
                        tracing::error!(sink = feed.name, "{e}");
                        if feed.pause(backoff.next_delay()).await == Wake::Stop {
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
                let delay = backoff.next_delay();
                feed.retried(&format!("parquet: {e}"), delay);
                if feed.pause(delay).await == Wake::Stop {
                    return;
                }
            }
        }
    };
    backoff.reset();
    const GRACE_NS: i64 = 1_000_000_000;
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
                    .map_err(|e| e.to_string())
                    .and_then(|r| r)
            };
            if let Err(e) = saved {
                tracing::error!(sink = feed.name, "{e}");
                manifest.cursor = after;
                if feed.pause(backoff.next_delay()).await == Wake::Stop {
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
                if feed.pause(Duration::from_secs(1)).await == Wake::Stop {
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
        let period_end =
            first.stored_ns - first.stored_ns.rem_euclid(cfg.period_ns) + cfg.period_ns;
        let now = crate::now_ns();
        let lag = head - after;
        let early = lag >= (budget.max / 2).max(1);
        if now < period_end + GRACE_NS && !early {
            let wait = Duration::from_nanos((period_end + GRACE_NS - now) as u64);
            // News may push the lag past half the budget: look again then.
            if feed.wait(Some(wait)).await == Wake::Stop {
                return;
            }
            continue;
        }
        let limit = if early { head } else { u64::MAX };
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
                Err(e) => Err(e.to_string()),
            }
        };
        let w = match written {
            Ok(Some(w)) => w,
            Ok(None) => continue,
            Err(e) => {
                let delay = backoff.next_delay();
                feed.retried(&format!("parquet: {e}"), delay);
                if feed.pause(delay).await == Wake::Stop {
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
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        };
        if let Err(e) = saved {
            let delay = backoff.next_delay();
            feed.retried(&format!("parquet: {e}"), delay);
            if feed.pause(delay).await == Wake::Stop {
                return;
            }
            continue;
        }
        backoff.reset();
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
mod tests {
    use super::*;

    #[test]
    fn period_directories_are_utc_starts() {
        let h = 3_600_000_000_000;
        // 2025-12-02T15:00:00Z
        let t = 1_764_687_600_000_000_000;
        assert_eq!(period_dir(t, h), "period=20251202T1500Z");
        assert_eq!(
            period_dir(t + 10_000_000_000, 5_000_000_000),
            "period=20251202T150010Z"
        );
    }

    #[test]
    fn roll_periods_must_divide_a_day() {
        let raw = |roll: &str| ParquetRaw {
            dir: "x".into(),
            roll_every: roll.into(),
            max_rows_per_file: max_rows_per_file(),
            row_group_rows: row_group_rows(),
            zstd_level: level(),
            backoff_min: backoff_min(),
            backoff_max: backoff_max(),
            lag_budget: budget(),
        };
        assert!(ParquetSink::try_from(raw("1h")).is_ok());
        assert!(ParquetSink::try_from(raw("15m")).is_ok());
        assert!(
            ParquetSink::try_from(raw("7m"))
                .unwrap_err()
                .contains("divide a day")
        );
        assert!(
            ParquetSink::try_from(raw("2d"))
                .unwrap_err()
                .contains("between 1s and 24h")
        );
    }

    #[test]
    fn manifests_replace_atomically_and_unlisted_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest {
            version: 1,
            sink: "lake".into(),
            cursor: 7,
            files: vec![FileEntry {
                path: "readings/period=20251202T1500Z/00000000000000000001-00000000000000000007.parquet".into(),
                kind: "readings".into(),
                from: 1,
                to: 7,
                rows: 3,
                min_ts_ns: 0,
                max_ts_ns: 1,
                bytes: 4,
            }],
        };
        let listed = dir.path().join(&m.files[0].path);
        std::fs::create_dir_all(listed.parent().unwrap()).unwrap();
        std::fs::write(&listed, b"PAR1").unwrap();
        let orphan = listed.with_file_name("00000000000000000008-00000000000000000009.parquet");
        std::fs::write(&orphan, b"PAR1").unwrap();
        let tmp = listed.with_file_name(".x.parquet.part.tmp");
        std::fs::write(&tmp, b"").unwrap();
        save_manifest(dir.path(), &m).unwrap();
        assert_eq!(load_manifest(dir.path()).unwrap(), Some(m.clone()));
        assert_eq!(remove_unlisted(dir.path(), &m).unwrap(), 2);
        assert!(listed.exists() && !orphan.exists() && !tmp.exists());
    }
}
