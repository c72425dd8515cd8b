//! Wear report: a simulated month of one journal commit every 10 s
//! (259 200 commits) on the simulated NOR flash, through the translation
//! layer and redb; prints erase counts per sector, the projected lifetime at
//! 100 000 erase cycles, write amplification, capacity and RAM.
//!
//! ```sh
//! cargo run --release -p ferry-firmware --features nor-flash --example nor_wear
//! cargo run --release -p ferry-firmware --features nor-flash --example nor_wear -- 25920   # 3 days
//! ```
//!
//! The workload is the device journal's steady state: each commit appends a
//! 96-byte row of readings and deletes the row from 512 commits earlier (the
//! gateway acknowledged it), so the database stays the same size.

use std::sync::Arc;
use std::time::Instant;

use embedded_storage::nor_flash::NorFlash;
use ferry_firmware::storage::sim_flash::SimFlash;
use ferry_firmware::storage::{Config, NorBackend, open_database};
use redb::{BackendError, Builder, StorageBackend, TableDefinition};

/// Keeps a handle on the backend redb owns, for its counters.
#[derive(Debug)]
struct Shared<F>(Arc<NorBackend<F>>);

impl<F: NorFlash + Send + Sync + std::fmt::Debug + 'static> StorageBackend for Shared<F> {
    fn len(&self) -> Result<u64, BackendError> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), BackendError> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.0.write(offset, data)
    }
}

const ROWS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("pending");
const MONTH: u64 = 30 * 24 * 3600 / 10;
const CYCLES: f64 = 100_000.0;
const KEEP: u64 = 512;

fn main() {
    let commits = std::env::args()
        .nth(1)
        .map_or(MONTH, |arg| arg.parse().expect("commits: a number"));
    println!(
        "{commits} commits (one per 10 s: {:.1} days)",
        commits as f64 / 8640.0
    );
    println!();
    // An nRF52840's internal flash: 4 KiB pages, 4-byte words; a 256 KiB region.
    let page = std::env::var("PAGE").map_or(256, |p| p.parse().expect("PAGE: bytes"));
    let internal = Config {
        page_size: page,
        ..Config::new(0, 64)
    };
    report::<4, 4096>("internal flash, 256 KiB region", internal, commits);
    // An external SPI NOR chip: 4 KiB sectors, byte programming; 1 MiB region.
    let spi = Config {
        page_size: std::env::var("SPI_PAGE").map_or(1024, |p| p.parse().expect("SPI_PAGE: bytes")),
        ..Config::new(0, 256)
    };
    report::<1, 4096>("SPI NOR, 1 MiB region", spi, commits);
    // A larger SPI NOR region through the chip's 64 KiB block erase: 4 MiB.
    let blocks = Config {
        page_size: 1024,
        ..Config::new(0, 64)
    };
    report::<1, 65536>("SPI NOR, 4 MiB region in 64 KiB blocks", blocks, commits);
}

fn report<const W: usize, const E: usize>(name: &str, config: Config, commits: u64) {
    let flash = SimFlash::<W, E>::new(config.sectors as usize, 1);
    let backend = NorBackend::mount_or_format(flash.clone(), config).expect("format");
    let geo = backend.geometry();
    let backend = Arc::new(backend);
    let db = open_database(
        Builder::new().set_cache_size(16 * 1024),
        Shared(Arc::clone(&backend)),
    )
    .expect("open");
    let start = Instant::now();
    let row = [0x5Au8; 96];
    for i in 0..commits {
        let tx = db.begin_write().expect("begin");
        {
            let mut table = tx.open_table(ROWS).expect("table");
            table.insert(i, &row[..]).expect("insert");
            if i >= KEEP {
                table.remove(i - KEEP).expect("remove");
            }
        }
        tx.commit().expect("commit");
    }
    drop(db);
    let elapsed = start.elapsed();
    let ftl = backend.stats();
    let file = backend.len().expect("len");
    let stats = flash.stats();
    let pool = &stats.erases[2..];
    let max = *pool.iter().max().unwrap_or(&0);
    let min = *pool.iter().min().unwrap_or(&0);
    let mean = f64::from(pool.iter().sum::<u32>()) / pool.len() as f64;
    let anchors = &stats.erases[..2];
    let months = commits as f64 / MONTH as f64;
    let per_month = f64::from(max) / months;
    let mib = geo.physical_bytes as f64 / (1024.0 * 1024.0);
    println!("== {name} ==");
    println!(
        "flash: {} sectors × {} B, write size {} B, translation page {} B",
        geo.sectors, geo.sector_size, geo.write_size, geo.page_size
    );
    println!(
        "capacity: {} of {} bytes logical ({:.1} %); snapshot record {} B",
        geo.logical_bytes,
        geo.physical_bytes,
        100.0 * geo.logical_bytes as f64 / geo.physical_bytes as f64,
        geo.snapshot_bytes
    );
    println!("redb's file at the end: {file} B");
    println!(
        "RAM: {} B mounted ({:.0} B per MiB of flash)",
        geo.ram_bytes,
        geo.ram_bytes as f64 / mib
    );
    println!(
        "erases per data/metadata sector: max {max}, mean {mean:.1}, min {min}; anchor sectors {anchors:?}"
    );
    println!(
        "programmed: {:.1} MiB in {} programs ({:.0} B per commit)",
        stats.bytes_programmed as f64 / (1024.0 * 1024.0),
        stats.programs,
        stats.bytes_programmed as f64 / commits as f64
    );
    println!(
        "per commit: {:.1} pages written for redb, {:.1} unchanged pages skipped, {:.1} relocated by collection, {:.2} metadata records, {:.3} metadata sector switches",
        ftl.pages_written as f64 / commits as f64,
        ftl.pages_unchanged as f64 / commits as f64,
        ftl.pages_relocated as f64 / commits as f64,
        ftl.records as f64 / commits as f64,
        ftl.meta_switches as f64 / commits as f64,
    );
    if per_month > 0.0 {
        let life_months = CYCLES / per_month;
        println!(
            "lifetime at {CYCLES:.0} cycles: {life_months:.1} months ({:.1} years) at this rate",
            life_months / 12.0
        );
    }
    println!("simulated in {:.1} s", elapsed.as_secs_f64());
    println!();
}
