//! The report log and the drop tally (`ferry_firmware::storage`), on the
//! simulated NOR flash: records come back in order and intact, sectors turn
//! in a ring, a full log says so and writes nothing, a mount continues in a
//! fresh sector, and power cut at **every** flash operation of a workload
//! loses no record whose append returned and no increment whose add
//! returned, and never makes the next write fail.

use ferry_firmware::storage::sim_flash::SimFlash;
use ferry_firmware::storage::{LogConfig, LogError, ReportLog, Tally};

/// The nRF52840's NVMC geometry: 4-byte words, 4 KiB pages.
type Flash = SimFlash<4, 4096>;

const LOG: LogConfig = LogConfig {
    offset: 4096,
    sectors: 3,
};
const TALLY: LogConfig = LogConfig {
    offset: 4 * 4096,
    sectors: 2,
};

/// Record `i`: a recognisable payload of 10–90 bytes.
fn payload(i: u32) -> Vec<u8> {
    let len = 10 + (i as usize * 37) % 81;
    (0..len).map(|k| (i as usize * 7 + k) as u8).collect()
}

fn records(log: &mut ReportLog<Flash>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for s in log.sectors_oldest_first() {
        log.for_each_record(s, |_, b| out.push(b.to_vec())).unwrap();
    }
    out
}

#[test]
fn records_come_back_in_order_and_a_full_log_writes_nothing() {
    let flash = Flash::new(8, 1);
    let mut log = ReportLog::mount(flash.clone(), LOG).unwrap();
    assert_eq!(log.free_sectors(), 3);
    let mut appended = Vec::new();
    let mut i = 0;
    loop {
        match log.append(&payload(i)) {
            Ok(at) => {
                let mut back = [0u8; 255];
                let n = log.read(at, &mut back).unwrap().unwrap();
                assert_eq!(&back[..n], payload(i).as_slice());
                appended.push(payload(i));
            }
            Err(LogError::Full) => break,
            Err(e) => panic!("{e}"),
        }
        i += 1;
    }
    assert_eq!(log.free_sectors(), 0);
    assert_eq!(records(&mut log), appended);
    let before = flash.stats().ops;
    assert_eq!(log.append(&payload(i)), Err(LogError::Full));
    assert_eq!(flash.stats().ops, before, "a full log writes nothing");
    assert_eq!(log.append(&[0; 256]), Err(LogError::TooLong));

    // The owner frees the oldest sector: its records go, the rest stay.
    let oldest = log.sectors_oldest_first()[0];
    let mut in_oldest = 0;
    log.for_each_record(oldest, |_, _| in_oldest += 1).unwrap();
    log.erase(oldest).unwrap();
    assert_eq!(records(&mut log), appended[in_oldest..]);
    log.append(&payload(1000)).unwrap();
    assert_eq!(
        log.sectors_oldest_first().last(),
        Some(&oldest),
        "the ring turns"
    );

    // A mount finds the same records and continues in a fresh sector.
    let mut log = ReportLog::mount(flash.clone(), LOG).unwrap();
    let mut want = appended[in_oldest..].to_vec();
    want.push(payload(1000));
    assert_eq!(records(&mut log), want);
    assert_eq!(log.head(), None);
    let oldest = log.sectors_oldest_first()[0];
    log.erase(oldest).unwrap();
    let at = log.append(&payload(7)).unwrap();
    assert_eq!(
        (at.sector, at.offset),
        (oldest, 12),
        "a fresh sector after a mount"
    );
    // Nothing outside the region was touched.
    let image = flash.image();
    assert!(
        image[..4096]
            .iter()
            .chain(&image[4 * 4096..])
            .all(|&b| b == 0xFF)
    );
}

#[test]
fn layouts_that_cannot_work_are_refused() {
    let flash = Flash::new(4, 1);
    for (config, why) in [
        (
            LogConfig {
                offset: 0,
                sectors: 1,
            },
            "at least 2",
        ),
        (
            LogConfig {
                offset: 100,
                sectors: 2,
            },
            "offset",
        ),
        (
            LogConfig {
                offset: 0,
                sectors: 5,
            },
            "beyond",
        ),
    ] {
        let e = ReportLog::mount(flash.clone(), config).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        let e = Tally::mount(flash.clone(), config).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn the_tally_counts_across_mounts_and_sector_turns() {
    let flash = Flash::new(8, 1);
    let mut tally = Tally::mount(flash.clone(), TALLY).unwrap();
    assert_eq!(tally.total(), 0);
    // 1 020 units per 4 KiB sector after the header: this crosses three turns.
    for n in 1..=2_500 {
        assert_eq!(tally.add_one().unwrap(), n);
        if n % 700 == 0 {
            tally = Tally::mount(flash.clone(), TALLY).unwrap();
            assert_eq!(tally.total(), n);
        }
    }
    let tally = Tally::mount(flash.clone(), TALLY).unwrap();
    assert_eq!(tally.total(), 2_500);
    let erases = flash.stats().erases;
    assert_eq!(
        erases[4] + erases[5],
        3,
        "one erase per sector's worth: {erases:?}"
    );
}

/// What a workload left: records whose append returned and were not erased
/// (oldest first), the record being appended and the records of the sector
/// being erased when the power went, and tally increments that returned.
#[derive(Default)]
struct Outcome {
    live: Vec<(u32, Vec<u8>)>,
    appending: Option<Vec<u8>>,
    erasing: Vec<Vec<u8>>,
    added: u32,
}

/// The workload under test: appends that fill the ring, an erase of the
/// oldest sector whenever it is full, and a tally increment every 5th
/// record.
fn workload(flash: &Flash, records_total: u32) -> Outcome {
    let mut o = Outcome::default();
    let Ok(mut log) = ReportLog::mount(flash.clone(), LOG) else {
        return o;
    };
    let Ok(mut tally) = Tally::mount(flash.clone(), TALLY) else {
        return o;
    };
    for i in 0..records_total {
        if i % 5 == 0 {
            match tally.add_one() {
                Ok(_) => o.added += 1,
                Err(_) => return o,
            }
        }
        o.appending = Some(payload(i));
        let r = match log.append(&payload(i)) {
            Err(LogError::Full) => {
                let oldest = log.sectors_oldest_first()[0];
                o.erasing = o
                    .live
                    .iter()
                    .filter(|(s, _)| *s == oldest)
                    .map(|(_, p)| p.clone())
                    .collect();
                o.live.retain(|(s, _)| *s != oldest);
                if log.erase(oldest).is_err() {
                    o.appending = None;
                    return o;
                }
                o.erasing.clear();
                log.append(&payload(i))
            }
            other => other,
        };
        match r {
            Ok(at) => o.live.push((at.sector, payload(i))),
            Err(_) => return o,
        }
        o.appending = None;
    }
    o
}

#[test]
fn power_cut_at_every_flash_operation_loses_nothing_that_returned() {
    const RECORDS: u32 = 150;
    // Count the workload's operations once, uncut.
    let clean = Flash::new(8, 1);
    workload(&clean, RECORDS);
    let ops = clean.stats().ops;
    assert!(ops > u64::from(RECORDS), "{ops} operations");
    let mut torn_kept = 0;
    for cut in 0..ops {
        let flash = Flash::new(8, cut + 1);
        flash.cut_at(Some(cut));
        let o = workload(&flash, RECORDS);
        assert!(flash.is_cut(), "cut {cut} never happened");
        flash.restore_power();

        let mut log = ReportLog::mount(flash.clone(), LOG).unwrap();
        let got = records(&mut log);
        // Exactly the records that returned and were not erased; a record
        // whose write was cut at its very end may be whole; a sector whose
        // erase was cut before it reached the header keeps its records.
        let live: Vec<Vec<u8>> = o.live.iter().map(|(_, p)| p.clone()).collect();
        let mut with_torn = live.clone();
        with_torn.extend(o.appending.clone());
        let mut with_erasing = o.erasing.clone();
        with_erasing.extend(live.iter().cloned());
        assert!(
            got == live || got == with_torn || (!o.erasing.is_empty() && got == with_erasing),
            "cut {cut}: the log holds {} records; {} returned and were kept",
            got.len(),
            live.len()
        );
        if got == with_torn && got != live {
            torn_kept += 1;
        }
        let tally = Tally::mount(flash.clone(), TALLY).unwrap();
        assert!(
            tally.total() == o.added || tally.total() == o.added + 1,
            "cut {cut}: tally {} after {} adds returned",
            tally.total(),
            o.added
        );

        // And the flash takes more after the cut: appends and increments,
        // none refused (no write unit is programmed twice).
        let mut tally = tally;
        let before = tally.total();
        for k in 0..30 {
            tally
                .add_one()
                .unwrap_or_else(|e| panic!("cut {cut}: add after the cut: {e}"));
            let r = match log.append(&payload(500 + k)) {
                Err(LogError::Full) => {
                    let oldest = log.sectors_oldest_first()[0];
                    log.erase(oldest).unwrap();
                    log.append(&payload(500 + k))
                }
                other => other,
            };
            r.unwrap_or_else(|e| panic!("cut {cut}: append after the cut: {e}"));
        }
        assert_eq!(tally.total(), before + 30);
        let again = records(&mut ReportLog::mount(flash.clone(), LOG).unwrap());
        assert_eq!(again.last(), Some(&payload(529)), "cut {cut}");
    }
    println!("{ops} power cuts; {torn_kept} left a record whose write was cut whole");
}
