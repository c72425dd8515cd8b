//! The redb backend over NOR flash (`storage::NorBackend`), on the simulated
//! flash: erase semantics, byte-level behaviour, capacity, and power cuts at
//! every write of a scripted workload.

use std::collections::BTreeMap;

use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use ferry_firmware::storage::sim_flash::{SimError, SimFlash};
use ferry_firmware::storage::{Config, Error, Geometry, NorBackend, open_database};
use redb::{
    BackendError, Builder, Database, ReadableDatabase, ReadableTable, StorageBackend,
    TableDefinition,
};

type Flash = SimFlash<4, 4096>;

const ROWS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("rows");

fn open<const W: usize>(flash: &SimFlash<W, 4096>, config: Config) -> Result<Database, String> {
    let backend =
        NorBackend::mount_or_format(flash.clone(), config).map_err(|e| format!("mount: {e}"))?;
    open_database(Builder::new().set_cache_size(16 * 1024), backend)
        .map_err(|e| format!("open: {e}"))
}

fn rows(db: &Database) -> BTreeMap<u64, Vec<u8>> {
    let tx = db.begin_read().expect("begin_read");
    let table = match tx.open_table(ROWS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return BTreeMap::new(),
        Err(e) => panic!("open_table: {e}"),
    };
    table
        .iter()
        .expect("iter")
        .map(|row| {
            let (k, v) = row.expect("row");
            (k.value(), v.value().to_vec())
        })
        .collect()
}

/// One transaction of the scripted workload: insert a row, delete an old one.
#[derive(Debug, Clone)]
struct Step {
    insert: (u64, Vec<u8>),
    delete: Option<u64>,
}

fn workload(steps: usize, seed: u64) -> Vec<Step> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..steps as u64)
        .map(|i| {
            let len = 1 + (next() % 300) as usize;
            let byte = next() as u8;
            Step {
                insert: (i, vec![byte; len]),
                delete: (i >= 4 && next() % 2 == 0).then(|| i - 4),
            }
        })
        .collect()
}

/// The rows after the first `n` steps.
fn expected(steps: &[Step], n: usize) -> BTreeMap<u64, Vec<u8>> {
    let mut rows = BTreeMap::new();
    for step in &steps[..n] {
        rows.insert(step.insert.0, step.insert.1.clone());
        if let Some(k) = step.delete {
            rows.remove(&k);
        }
    }
    rows
}

fn apply(db: &Database, step: &Step) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = tx.open_table(ROWS).map_err(|e| e.to_string())?;
        table
            .insert(step.insert.0, step.insert.1.as_slice())
            .map_err(|e| e.to_string())?;
        if let Some(k) = step.delete {
            table.remove(k).map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Runs `steps` until the first error; returns how many commits returned Ok.
fn run(flash: &Flash, config: Config, steps: &[Step]) -> usize {
    let Ok(db) = open(flash, config) else {
        return 0;
    };
    for (done, step) in steps.iter().enumerate() {
        if apply(&db, step).is_err() {
            return done;
        }
    }
    steps.len()
}

/// After a cut during the run of `steps` (of which `acked` commits returned
/// Ok), power comes back: the database must open and hold exactly the acked
/// steps, or those and the one in flight (its commit may have reached flash
/// before the cut). Then it must take a new commit, and keep it over a
/// remount.
fn check_after_cut(flash: &Flash, config: Config, steps: &[Step], acked: usize, what: &str) {
    flash.restore_power();
    let db = open(flash, config).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    let got = rows(&db);
    let held = if got == expected(steps, acked) {
        acked
    } else if acked < steps.len() && got == expected(steps, acked + 1) {
        acked + 1
    } else {
        panic!(
            "{what}: after the cut the database holds {} rows {:?}, not the {acked} acked steps",
            got.len(),
            got.keys().collect::<Vec<_>>()
        );
    };
    let extra = Step {
        insert: (1_000_000, b"after the cut".to_vec()),
        delete: None,
    };
    apply(&db, &extra).unwrap_or_else(|e| panic!("{what}: commit after recovery: {e}"));
    drop(db);
    let db = open(flash, config).unwrap_or_else(|e| panic!("{what}: second reopen: {e}"));
    let mut want = expected(steps, held);
    want.insert(extra.insert.0, extra.insert.1);
    assert_eq!(
        rows(&db),
        want,
        "{what}: after recovery and one more commit"
    );
}

/// A region small enough that a short workload collects garbage, and pages
/// small enough (many deltas per commit) that it switches metadata sectors:
/// 36 sectors of 4 KiB, 28 of them for data.
fn small_config() -> Config {
    Config {
        page_size: 128,
        spare_sectors: 2,
        ..Config::new(0, 36)
    }
}

#[test]
fn sim_flash_enforces_nor_rules() {
    let mut flash = Flash::new(2, 1);
    assert_eq!(flash.write(2, &[0; 4]), Err(SimError::NotAligned));
    assert_eq!(flash.write(0, &[0; 3]), Err(SimError::NotAligned));
    assert_eq!(flash.write(8192, &[0; 4]), Err(SimError::OutOfBounds));
    assert_eq!(flash.erase(100, 4096), Err(SimError::NotAligned));
    flash.write(0, &[0xF0, 0x0F, 0xAA, 0x55]).unwrap();
    // Programming only clears bits, and a unit is programmed once.
    assert_eq!(
        flash.write(0, &[0xFF, 0xFF, 0x0F, 0xFF]),
        Err(SimError::Reprogram { addr: 0 })
    );
    let mut bytes = [0u8; 4];
    flash.read(0, &mut bytes).unwrap();
    assert_eq!(bytes, [0xF0, 0x0F, 0x0A, 0x55]);
    flash.erase(0, 4096).unwrap();
    flash.read(0, &mut bytes).unwrap();
    assert_eq!(bytes, [0xFF; 4]);
    flash.write(0, &[1, 2, 3, 4]).unwrap();
    assert_eq!(flash.stats().erases, vec![1, 0]);
    assert_eq!(flash.stats().programs, 3);
}

#[test]
fn sim_flash_cut_tears_the_operation_and_stops_everything_after() {
    let mut flash = Flash::new(2, 7);
    flash.cut_at(Some(1));
    flash.write(0, &[0; 4]).unwrap();
    assert_eq!(flash.write(4, &[0; 64]), Err(SimError::PowerCut));
    assert!(flash.is_cut());
    let mut bytes = [0u8; 4];
    assert_eq!(flash.read(0, &mut bytes), Err(SimError::PowerCut));
    assert_eq!(flash.erase(4096, 8192), Err(SimError::PowerCut));
    flash.restore_power();
    // The torn units count as programmed: writing them again needs an erase.
    assert_eq!(
        flash.write(4, &[0; 4]),
        Err(SimError::Reprogram { addr: 4 })
    );
    let image = flash.image();
    assert_eq!(&image[68..4096], &[0xFF; 4096 - 68][..]);
}

/// redb rewrites its header in place on every commit: straight onto NOR
/// flash, that is a second program of the same units, which the simulator
/// (like the `NorFlash` contract) refuses.
#[derive(Debug)]
struct InPlace(spin::Mutex<(Flash, u64)>);

impl StorageBackend for InPlace {
    fn len(&self) -> Result<u64, BackendError> {
        Ok(self.0.lock().1)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        let mut g = self.0.lock();
        g.0.read(offset as u32, out)
            .map_err(|e| BackendError::Other(e.to_string().into()))
    }
    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.0.lock().1 = len;
        Ok(())
    }
    fn sync_data(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let mut g = self.0.lock();
        g.0.write(offset as u32, data)
            .map_err(|e| BackendError::Other(e.to_string().into()))
    }
}

#[test]
fn a_naive_in_place_backend_fails_on_nor_flash() {
    let flash = Flash::new(64, 1);
    let naive = InPlace(spin::Mutex::new((flash.clone(), 0)));
    let err = Builder::new()
        .create_with_backend(naive)
        .expect_err("in-place writes must be refused");
    assert!(
        err.to_string()
            .contains("write unit at 0x0 programmed twice without an erase"),
        "{err}"
    );
    // The same flash under the translation layer takes the database.
    let flash = Flash::new(64, 1);
    let db = open(&flash, Config::new(0, 64)).unwrap();
    let steps = workload(5, 3);
    for step in &steps {
        apply(&db, step).unwrap();
    }
    drop(db);
    assert_eq!(
        rows(&open(&flash, Config::new(0, 64)).unwrap()),
        expected(&steps, 5)
    );
}

#[test]
fn bytes_unaligned_unwritten_shrunk_and_grown() {
    let flash = Flash::new(16, 1);
    let config = Config::new(0, 16);
    let backend = NorBackend::mount_or_format(flash.clone(), config).unwrap();
    assert_eq!(backend.len().unwrap(), 0);
    backend.set_len(3000).unwrap();
    let mut out = vec![0xAAu8; 3000];
    backend.read(0, &mut out).unwrap();
    assert_eq!(out, vec![0u8; 3000], "never-written space reads as zeros");
    // Unaligned, across two 512-byte pages.
    let data: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8).collect();
    backend.write(301, &data).unwrap();
    let mut out = vec![0u8; 1200];
    backend.read(0, &mut out).unwrap();
    assert_eq!(&out[..301], &[0u8; 301][..]);
    assert_eq!(&out[301..1001], &data[..]);
    assert_eq!(&out[1001..], &[0u8; 199][..]);
    let mut beyond = [0u8; 2];
    assert!(
        backend.read(2999, &mut beyond).is_err(),
        "read past the end"
    );
    // Shrink into the middle of the data, then grow: the cut-off bytes are zeros.
    backend.set_len(600).unwrap();
    backend.set_len(2048).unwrap();
    let mut out = vec![0xAAu8; 2048];
    backend.read(0, &mut out).unwrap();
    assert_eq!(&out[301..600], &data[..299]);
    assert_eq!(&out[600..], &vec![0u8; 1448][..]);
    backend.sync_data().unwrap();
    drop(backend);
    // The committed bytes are what a remount reads.
    let backend = NorBackend::mount(flash.clone(), config).unwrap();
    assert_eq!(backend.len().unwrap(), 2048);
    let mut again = vec![0u8; 2048];
    backend.read(0, &mut again).unwrap();
    assert_eq!(again, out);
    // Unsynced writes vanish at a remount.
    backend.write(0, &[9; 10]).unwrap();
    backend.set_len(4096).unwrap();
    drop(backend);
    let backend = NorBackend::mount(flash, config).unwrap();
    assert_eq!(backend.len().unwrap(), 2048);
    let mut head = [0u8; 10];
    backend.read(0, &mut head).unwrap();
    assert_eq!(head, [0; 10]);
}

#[test]
fn layout_rules_and_capacity() {
    let geo = Geometry::new(&Config::new(0, 64), 4096, 4, 1).unwrap();
    // 64 sectors: 2 anchors, 2 metadata, 2 reserve, 2 spare: 56 for data.
    assert_eq!(geo.logical_pages, 56 * 8);
    assert_eq!(geo.logical_bytes, 56 * 4096);
    assert_eq!(geo.physical_bytes, 64 * 4096);
    let bad = |config: Config, sector, write| Geometry::new(&config, sector, write, 1).unwrap_err();
    assert_eq!(
        bad(Config::new(0, 8), 4096, 4),
        Error::Geometry(
            "too few sectors: anchors (2), metadata (2), reserve (2) and spares leave none for data"
        )
    );
    assert_eq!(
        bad(Config::new(100, 64), 4096, 4),
        Error::Geometry("region offset must be a multiple of the erase size")
    );
    assert_eq!(
        bad(Config::new(0, 512), 4096, 4),
        Error::Geometry(
            "mapping snapshot larger than 3/4 of a sector: use a larger page size or fewer sectors"
        )
    );
    let bigger_pages = Config {
        page_size: 2048,
        ..Config::new(0, 256)
    };
    assert_eq!(
        Geometry::new(&bigger_pages, 4096, 4, 1)
            .unwrap()
            .logical_bytes,
        (256 - 8) * 4096
    );
    // A region past the end of the flash, and a remount with another layout.
    let flash = Flash::new(16, 1);
    assert_eq!(
        NorBackend::mount_or_format(flash.clone(), Config::new(4096, 16)).err(),
        Some(Error::Geometry("region extends past the end of the flash"))
    );
    assert_eq!(
        NorBackend::mount(flash.clone(), Config::new(0, 16)).err(),
        Some(Error::NotFormatted)
    );
    drop(NorBackend::mount_or_format(flash.clone(), Config::new(0, 16)).unwrap());
    let other = Config {
        page_size: 1024,
        ..Config::new(0, 16)
    };
    assert_eq!(
        NorBackend::mount(flash, other).err(),
        Some(Error::FormatMismatch)
    );
}

#[test]
fn a_region_within_a_larger_flash_leaves_the_rest_alone() {
    let flash = Flash::new(80, 1);
    let config = Config::new(16 * 4096, 64);
    let db = open(&flash, config).unwrap();
    let steps = workload(10, 5);
    for step in &steps {
        apply(&db, step).unwrap();
    }
    drop(db);
    assert_eq!(&flash.image()[..16 * 4096], &vec![0xFF; 16 * 4096][..]);
    assert_eq!(rows(&open(&flash, config).unwrap()), expected(&steps, 10));
}

#[test]
fn a_full_flash_is_an_error_and_keeps_what_was_committed() {
    let flash = Flash::new(36, 1);
    let config = small_config();
    let backend = NorBackend::mount_or_format(flash.clone(), config).unwrap();
    let logical = backend.geometry().logical_bytes;
    assert_eq!(logical, 28 * 4096);
    assert_eq!(
        backend.set_len(logical + 1).unwrap_err().to_string(),
        "Storage backend error: flash full"
    );
    // Refused before anything changed: the backend goes on working.
    backend.set_len(4096).unwrap();
    backend.write(4000, &[7; 96]).unwrap();
    let mut tail = [0u8; 96];
    backend.read(4000, &mut tail).unwrap();
    assert_eq!(tail, [7; 96]);
    drop(backend);
    let db = open(&flash, config).unwrap();
    let mut committed = 0u64;
    let err = loop {
        let step = Step {
            insert: (committed, vec![committed as u8; 2000]),
            delete: None,
        };
        match apply(&db, &step) {
            Ok(()) => committed += 1,
            Err(e) => break e,
        }
        assert!(committed < 1000, "never filled");
    };
    assert!(err.contains("flash full"), "{err}");
    drop(db);
    let db = open(&flash, config).unwrap();
    let got = rows(&db);
    assert_eq!(got.len() as u64, committed);
    assert!(got.iter().all(|(k, v)| *v == vec![*k as u8; 2000]));
}

/// Power fails at each mutating flash operation of a 10-commit workload in
/// turn (including the format and redb's creation), mid-operation; every
/// time, the reopened database holds exactly the acknowledged commits.
#[test]
fn power_cut_at_every_write_of_a_small_workload() {
    let config = small_config();
    let steps = workload(10, 42);
    let clean = Flash::new(36, 1);
    assert_eq!(run(&clean, config, &steps), steps.len());
    let total = clean.stats().ops;
    let erases: u32 = clean.stats().erases.iter().sum();
    println!("workload: {total} flash operations, {erases} erases");
    assert!(
        erases > 36,
        "the workload must collect garbage ({erases} erases)"
    );
    let anchors = anchor_entries(&clean.image());
    println!("anchor entries: {anchors}");
    assert!(
        anchors >= 3,
        "the workload must switch metadata sectors ({anchors} anchors)"
    );
    for cut in 0..total {
        let flash = Flash::new(36, cut);
        flash.cut_at(Some(cut));
        let acked = run(&flash, config, &steps);
        assert!(flash.is_cut(), "cut {cut}: no cut happened");
        check_after_cut(&flash, config, &steps, acked, &format!("cut at op {cut}"));
    }
}

/// Anchor entries in the two anchor sectors (24 bytes each at write size 4):
/// one at format, one per metadata sector switch.
fn anchor_entries(image: &[u8]) -> usize {
    image[..2 * 4096]
        .chunks(24)
        .filter(|entry| entry.starts_with(b"FTAN"))
        .count()
}

/// Larger workloads, other write sizes, cut points and tears from seeds.
#[test]
fn power_cuts_at_random_points_of_larger_workloads() {
    for seed in 1..=24u64 {
        let steps = workload(60, seed);
        match seed % 3 {
            0 => random_cut::<1>(seed, &steps),
            1 => random_cut::<4>(seed, &steps),
            _ => random_cut::<16>(seed, &steps),
        }
    }
}

fn random_cut<const W: usize>(seed: u64, steps: &[Step]) {
    let config = small_config();
    let clean = SimFlash::<W, 4096>::new(36, seed);
    let flash = clean.clone();
    let db = open(&flash, config).unwrap();
    for step in steps {
        apply(&db, step).unwrap();
    }
    drop(db);
    let total = clean.stats().ops;
    let cut = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) % total;
    println!("seed {seed}: write size {W}, cut at op {cut} of {total}");
    let flash = SimFlash::<W, 4096>::new(36, seed);
    flash.cut_at(Some(cut));
    let mut acked = 0;
    if let Ok(db) = open(&flash, config) {
        for step in steps {
            if apply(&db, step).is_err() {
                break;
            }
            acked += 1;
        }
    }
    assert!(flash.is_cut(), "seed {seed}: no cut happened");
    flash.restore_power();
    let db = open(&flash, config).unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
    let got = rows(&db);
    assert!(
        got == expected(steps, acked) || got == expected(steps, acked + 1),
        "seed {seed}: cut at op {cut}: {} rows, {acked} steps acked",
        got.len()
    );
}

/// Byte-level model check of the backend, without redb: random writes at any
/// offset and length, length changes, commits, remounts and power cuts,
/// against a model that keeps the current bytes and the committed bytes.
mod model {
    use super::*;
    use proptest::prelude::*;

    type Small = SimFlash<4, 4096>;

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            offset: u64,
            len: usize,
            byte: u8,
        },
        SetLen(u64),
        Sync,
        Remount,
        /// Power fails during the flash operation this many operations on.
        Cut(u64),
    }

    /// 24 sectors, 256-byte pages: 16 sectors × 16 pages for data, 64 KiB.
    fn config() -> Config {
        Config {
            page_size: 256,
            ..Config::new(0, 24)
        }
    }

    const CAPACITY: u64 = 16 * 4096;
    const PAGE: usize = 256;
    /// Pages a transaction may change without running out of room, however
    /// full the logical space: the spare sectors' (2 × 16).
    const SPARE_PAGES: usize = 32;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => (0..CAPACITY, 1..4000usize, any::<u8>()).prop_map(|(offset, len, byte)| Op::Write {
                offset,
                len: len.min((CAPACITY - offset) as usize),
                byte,
            }),
            1 => (0..=CAPACITY).prop_map(Op::SetLen),
            3 => Just(Op::Sync),
            1 => Just(Op::Remount),
            1 => (0..40u64).prop_map(Op::Cut),
        ]
    }

    /// Equal bytes, or the first place they differ.
    fn same(got: &[u8], want: &[u8], what: &str) -> Result<(), TestCaseError> {
        if got.len() != want.len() {
            return Err(TestCaseError::fail(format!(
                "{what}: length {} instead of {}",
                got.len(),
                want.len()
            )));
        }
        match got.iter().zip(want).position(|(a, b)| a != b) {
            Some(at) => Err(TestCaseError::fail(format!(
                "{what}: byte {at} is {} instead of {}",
                got[at], want[at]
            ))),
            None => Ok(()),
        }
    }

    fn contents(backend: &NorBackend<Small>) -> Vec<u8> {
        let mut out = vec![0u8; backend.len().unwrap() as usize];
        backend.read(0, &mut out).unwrap();
        out
    }

    /// Mounts; a cut during the mount (it writes a snapshot) is followed by
    /// power back and another mount.
    fn remount(flash: &Small) -> Result<NorBackend<Small>, TestCaseError> {
        match NorBackend::mount(flash.clone(), config()) {
            Ok(backend) => Ok(backend),
            Err(_) if flash.is_cut() => {
                flash.restore_power();
                NorBackend::mount(flash.clone(), config())
                    .map_err(|e| TestCaseError::fail(format!("mount after a cut in a mount: {e}")))
            }
            Err(e) => Err(TestCaseError::fail(format!("mount: {e}"))),
        }
    }

    fn run(ops: &[Op], seed: u64) -> Result<(), TestCaseError> {
        let flash = Small::new(24, seed);
        let mut backend = NorBackend::mount_or_format(flash.clone(), config()).unwrap();
        let mut current: Vec<u8> = Vec::new();
        let mut committed: Vec<u8> = Vec::new();
        // Logical pages changed since the last commit (an upper bound).
        let mut touched = std::collections::BTreeSet::new();
        for (i, op) in ops.iter().enumerate() {
            let result = match op {
                Op::Write { offset, len, byte } => {
                    let data = vec![*byte; *len];
                    let end = (*offset as usize) + len;
                    touched.extend(*offset as usize / PAGE..=(end - 1) / PAGE);
                    let r = backend.write(*offset, &data);
                    if r.is_ok() {
                        if current.len() < end {
                            current.resize(end, 0);
                        }
                        current[*offset as usize..end].copy_from_slice(&data);
                    }
                    r.map_err(|e| e.to_string())
                }
                Op::SetLen(len) => {
                    if (*len as usize) < current.len() && !(*len as usize).is_multiple_of(PAGE) {
                        touched.insert(*len as usize / PAGE); // its tail is zeroed
                    }
                    let r = backend.set_len(*len);
                    if r.is_ok() {
                        current.resize(*len as usize, 0);
                    }
                    r.map_err(|e| e.to_string())
                }
                Op::Sync => {
                    let r = backend.sync_data();
                    if r.is_ok() {
                        committed = current.clone();
                        touched.clear();
                    }
                    r.map_err(|e| e.to_string())
                }
                Op::Remount => {
                    drop(backend);
                    backend = remount(&flash)?;
                    current = committed.clone();
                    touched.clear();
                    Ok(())
                }
                Op::Cut(after) => {
                    flash.cut_at(Some(flash.stats().ops + after));
                    Ok(())
                }
            };
            if let Err(err) = result {
                // Only a power cut may fail an operation, or a transaction
                // changing more pages than the spare sectors hold (their old
                // committed copies stay until the commit): then the error is
                // "flash full" and a remount returns to the last commit.
                if !flash.is_cut() {
                    prop_assert_eq!(
                        &err,
                        "Storage backend error: flash full",
                        "op {}: {:?}",
                        i,
                        op
                    );
                    prop_assert!(
                        touched.len() > SPARE_PAGES,
                        "op {i} {op:?}: full with only {} pages changed since the commit",
                        touched.len()
                    );
                }
                touched.clear();
                flash.restore_power();
                drop(backend);
                backend = remount(&flash)?;
                let got = contents(&backend);
                // A cut inside sync_data may land before or after its record.
                if matches!(op, Op::Sync) && got == current {
                    committed = current.clone();
                }
                same(&got, &committed, &format!("op {i}: {op:?}: after the cut"))?;
                current = committed.clone();
                continue;
            }
            if flash.is_cut() {
                continue;
            }
            // Read back what a write touched; everything after other ops.
            if let Op::Write { offset, len, .. } = op {
                let mut back = vec![0u8; *len];
                backend.read(*offset, &mut back).unwrap();
                let at = *offset as usize;
                same(&back, &current[at..at + len], &format!("op {i}: {op:?}"))?;
            } else {
                same(&contents(&backend), &current, &format!("op {i}: {op:?}"))?;
            }
        }
        flash.cut_at(None);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn backend_matches_its_model(ops in prop::collection::vec(op(), 1..300), seed in any::<u64>()) {
            run(&ops, seed)?;
        }
    }
}

/// A flash that reads only in aligned 8-byte units (some internal flashes
/// and ECC-protected parts): the backend must bounce its unaligned reads.
#[derive(Debug, Clone)]
struct ReadsOf8(Flash);

impl embedded_storage::nor_flash::ErrorType for ReadsOf8 {
    type Error = SimError;
}

impl ReadNorFlash for ReadsOf8 {
    const READ_SIZE: usize = 8;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimError> {
        if !offset.is_multiple_of(8) || !bytes.len().is_multiple_of(8) {
            return Err(SimError::NotAligned);
        }
        self.0.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl NorFlash for ReadsOf8 {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimError> {
        self.0.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimError> {
        self.0.write(offset, bytes)
    }
}

#[test]
fn a_flash_with_aligned_reads_only() {
    let flash = Flash::new(64, 1);
    let config = Config::new(0, 64);
    let backend = NorBackend::mount_or_format(ReadsOf8(flash.clone()), config).unwrap();
    backend.set_len(2000).unwrap();
    backend.write(3, &[0xA5; 1000]).unwrap();
    let mut odd = [0u8; 13];
    backend.read(995, &mut odd).unwrap();
    assert_eq!(
        odd,
        [
            0xA5, 0xA5, 0xA5, 0xA5, 0xA5, 0xA5, 0xA5, 0xA5, 0, 0, 0, 0, 0
        ]
    );
    backend.sync_data().unwrap();
    drop(backend);
    let db = open_database(
        Builder::new().set_cache_size(16 * 1024),
        NorBackend::mount(ReadsOf8(flash.clone()), config).unwrap(),
    );
    // Not a redb file: open_database restarts it, then redb creates one.
    let db = db.unwrap();
    let steps = workload(8, 9);
    for step in &steps {
        apply(&db, step).unwrap();
    }
    drop(db);
    let db = open_database(
        &Builder::new(),
        NorBackend::mount(ReadsOf8(flash), config).unwrap(),
    )
    .unwrap();
    assert_eq!(rows(&db), expected(&steps, 8));
}

/// Wear levelling on a 256 KiB region: after 3 000 journal-like commits
/// (append a row, delete an old one), every pool sector has been erased, and
/// the spread between the most- and least-erased stays within the static
/// levelling threshold plus the few erases one commit can add.
#[test]
fn wear_is_spread_over_every_sector() {
    let config = Config {
        page_size: 256,
        ..Config::new(0, 64)
    };
    let flash = Flash::new(64, 1);
    let db = open(&flash, config).unwrap();
    for i in 0..3000u64 {
        let step = Step {
            insert: (i, vec![i as u8; 96]),
            delete: i.checked_sub(128),
        };
        apply(&db, &step).unwrap();
    }
    drop(db);
    let erases = flash.stats().erases;
    let pool = &erases[2..];
    let (max, min) = (*pool.iter().max().unwrap(), *pool.iter().min().unwrap());
    println!(
        "erases per pool sector after 3000 commits: max {max}, min {min}; anchors {:?}",
        &erases[..2]
    );
    assert!(min > 0, "a sector was never used: {pool:?}");
    assert!(
        max - min <= config.wear_threshold + 4,
        "spread {max} - {min}: {pool:?}"
    );
}
