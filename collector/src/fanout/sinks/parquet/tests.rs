//! Tests of the Parquet sink: period layout, config checks, manifests.

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
            .to_string()
            .contains("divide a day")
    );
    assert!(
        ParquetSink::try_from(raw("2d"))
            .unwrap_err()
            .to_string()
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
            path:
                "readings/period=20251202T1500Z/00000000000000000001-00000000000000000007.parquet"
                    .into(),
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
