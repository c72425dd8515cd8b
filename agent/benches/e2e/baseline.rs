//! Baseline in the same run: raw redb, a row per reading.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use redb::{Database, TableDefinition};

use crate::{BASELINE_CHUNK, CONNECTIONS, DEVICES_PER_CONNECTION, SENSORS};

// Baseline: raw redb.

pub struct Baseline {
    pub readings: u64,
    pub rate: f64,
}

/// One row `(series, ts) → value` per reading, one durable commit per
/// chunk of [`BASELINE_CHUNK`] readings, chunks from [`CONNECTIONS`]
/// threads: what "journal every reading before acking it" costs without
/// blocks of readings per row.
pub fn baseline(dir: &Path, readings: u64) -> Baseline {
    const ROWS: TableDefinition<'_, (u64, i64), f64> = TableDefinition::new("rows");
    let db = Arc::new(Database::create(dir.join("baseline.redb")).expect("baseline db"));
    let per_thread = readings / CONNECTIONS as u64;
    let started = Instant::now();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let db = db.clone();
            std::thread::spawn(move || {
                let series = (DEVICES_PER_CONNECTION * SENSORS) as u64;
                let mut done = 0u64;
                let mut value = 2000i64;
                let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ c as u64;
                while done < per_thread {
                    let n = (per_thread - done).min(BASELINE_CHUNK as u64);
                    let txn = db.begin_write().expect("begin");
                    {
                        let mut rows = txn.open_table(ROWS).expect("table");
                        for i in done..done + n {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            value = (value + (rng % 11) as i64 - 5).clamp(1000, 3500);
                            let sid = c as u64 * series + i % series;
                            let ts = (i / series) as i64 * 1_000_000_000;
                            rows.insert((sid, ts), value as f64 / 100.0)
                                .expect("insert");
                        }
                    }
                    txn.commit().expect("commit");
                    done += n;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("baseline thread");
    }
    let elapsed = started.elapsed();
    let total = per_thread * CONNECTIONS as u64;
    Baseline {
        readings: total,
        rate: total as f64 / elapsed.as_secs_f64(),
    }
}
