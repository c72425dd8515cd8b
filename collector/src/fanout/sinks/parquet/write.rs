//! Writing one period's Parquet files: the readings and aggregates schemas,
//! the columns gathered from the event log's batches, and a file writer
//! that is complete (written, fsynced, renamed from a temporary name)
//! before the manifest may list it. Files are cut at `max_rows_per_file`
//! rows or when the sink's lag reaches half its budget.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::*;
use crate::fanout::sinks::feed::{Entry, Names, READ_ENTRIES, read_blocking};

/// The period directory name of `ns`: `period=20251202T1500Z`
/// (`…T150010Z` when periods are shorter than a minute).
pub(super) fn period_dir(start_ns: i64, period_ns: i64) -> String {
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

pub(super) const READINGS_SCHEMA: &str = "
message readings {
  REQUIRED INT64 series_id;
  REQUIRED BYTE_ARRAY metric (STRING);
  REQUIRED BYTE_ARRAY series (STRING);
  REQUIRED BYTE_ARRAY tags (JSON);
  REQUIRED INT64 ts (TIMESTAMP(NANOS,true));
  REQUIRED DOUBLE value;
}";

pub(super) const AGGREGATES_SCHEMA: &str = "
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
pub(super) struct SeriesCols {
    metric: ByteArray,
    series: ByteArray,
    tags: ByteArray,
}

pub(super) fn cols_of(key: &ferry_proto::series::SeriesKey) -> SeriesCols {
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
pub(super) struct Columns {
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
pub(super) struct Writer {
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
    ) -> Result<Self, ParquetError> {
        let path = dir.join(&rel);
        let parent = path.parent().unwrap_or(dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|source| ParquetError::Create {
            path: parent.clone(),
            source,
        })?;
        let tmp = parent.join(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        let file = File::create(&tmp).map_err(|source| ParquetError::Create {
            path: tmp.clone(),
            source,
        })?;
        let schema = Arc::new(parse_message_type(schema)?);
        let level = ZstdLevel::try_new(cfg.raw.zstd_level)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_created_by(concat!("ferry-collector ", env!("CARGO_PKG_VERSION")).into())
            .build();
        let writer = SerializedFileWriter::new(file, schema, Arc::new(props))?;
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
    ) -> Result<(), ParquetError> {
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

    fn flush(&mut self) -> Result<(), ParquetError> {
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
        let mut rg = self.writer.next_row_group()?;
        let mut i = 0usize;
        while let Some(mut col) = rg.next_column()? {
            match i {
                0 => {
                    col.typed::<Int64Type>()
                        .write_batch(&cols.ids, None, None)?;
                }
                1..=3 => {
                    col.typed::<ByteArrayType>()
                        .write_batch(&cols.strings[i - 1], None, None)?;
                }
                _ => {
                    let j = i - 4;
                    if j < self.ints {
                        col.typed::<Int64Type>()
                            .write_batch(&cols.ints[j], None, None)?;
                    } else if j < self.ints + self.doubles {
                        col.typed::<DoubleType>().write_batch(
                            &cols.doubles[j - self.ints],
                            None,
                            None,
                        )?;
                    } else {
                        let (vals, defs) = &cols.optional[j - self.ints - self.doubles];
                        col.typed::<DoubleType>()
                            .write_batch(vals, Some(defs), None)?;
                    }
                }
            }
            col.close()?;
            i += 1;
        }
        rg.close()?;
        Ok(())
    }

    /// Finishes the file: fsync, rename to its final name.
    fn finish(mut self, kind: &str, from: u64, to: u64) -> Result<FileEntry, ParquetError> {
        self.flush()?;
        let file = self.writer.into_inner()?;
        file.sync_all().map_err(ParquetError::Sync)?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|source| ParquetError::Rename {
            path: self.tmp.clone(),
            source,
        })?;
        if let Some(parent) = self.path.parent() {
            fsync_dir(parent).map_err(ParquetError::Sync)?;
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
pub(super) struct Written {
    pub(super) to: u64,
    pub(super) entries: u64,
    pub(super) rows: u64,
    pub(super) files: Vec<FileEntry>,
}

/// Writes the stored batches after `after` that were stored in the period
/// of the first one, up to `max_rows_per_file` rows or `limit` (the head
/// when cutting early), into one readings and one aggregates file.
/// Blocking.
pub(super) fn write_period(
    store: &crate::Store,
    sink: &str,
    cfg: &ParquetSink,
    after: u64,
    limit: u64,
    names: &mut Names,
) -> Result<Option<Written>, ParquetError> {
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
    let mut stage =
        |staged: &mut Vec<Entry>, pdir: &str, names: &Names| -> Result<(), ParquetError> {
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
        let got =
            read_blocking(store, sink, last, READ_ENTRIES, names).map_err(ParquetError::Feed)?;
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
