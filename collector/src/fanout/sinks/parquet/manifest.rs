//! The Parquet sink's manifest: the list of committed files and the sink's
//! cursor, replaced atomically (temporary file, fsync, rename, directory
//! fsync), and the start-up sweep that deletes every file it does not list.
//! The manifest is the authoritative cursor of the sink.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;

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

pub(super) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename,
/// directory fsync.
pub(super) fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

pub(super) fn load_manifest(dir: &Path) -> Result<Option<Manifest>, ParquetError> {
    let path = dir.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| ParquetError::BadManifest { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ParquetError::ReadManifest { path, source }),
    }
}

pub(super) fn save_manifest(dir: &Path, m: &Manifest) -> Result<(), ParquetError> {
    let bytes = serde_json::to_vec_pretty(m).map_err(ParquetError::EncodeManifest)?;
    replace(&dir.join(MANIFEST), &bytes).map_err(|source| ParquetError::WriteManifest { source })
}

/// Deletes every `.parquet` under `dir` the manifest does not list, and
/// every temporary file: leftovers of a crash before a manifest commit.
pub(super) fn remove_unlisted(dir: &Path, m: &Manifest) -> Result<u64, ParquetError> {
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
                std::fs::remove_file(&p).map_err(|source| ParquetError::Remove {
                    path: p.clone(),
                    source,
                })?;
                tracing::info!(file = %p.display(), "parquet: removed a file no manifest lists (left by a crash)");
                removed += 1;
            }
        }
    }
    Ok(removed)
}
