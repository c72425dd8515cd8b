//! The journal build proper: entry point, main loop, panic handler.

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, heprintln};
use ferry_firmware::drivers::sht4x::{Precision, Sht4x};
use ferry_firmware::drivers::tmp102::Tmp102;
use ferry_firmware::emulated::BootArgs;
use ferry_firmware::journal_node::{
    CommitError, JournalNode, JournalSettings, NodeStorage, StartError,
};
use ferry_firmware::link::TX_BUFFER;
use ferry_firmware::sim::{EMULATED_EVERY, SimClock, SimSht4xBus, SimTmp102Bus, Simulated};
use ferry_firmware::storage::{LogConfig, ReportLog, Tally};

use crate::semihosting_file::SemihostingFile;
use crate::semihosting_nor::{SECTOR, SemihostingNor};
use crate::{clock, heap, semihosting, uart};

/// redb's page cache (read cache and write buffer together).
const CACHE_BYTES: usize = 16 * 1024;
/// The report log's chip (`<flash>.nor`): the drop tally in sectors 0–1,
/// the log in 2–5 (four 1 KiB sectors: ~36 reports of three windows, so an
/// outage of a few seconds folds the log into the journal).
const NOR_SECTORS: usize = 6;
const DROPS: LogConfig = LogConfig {
    offset: 0,
    sectors: 2,
};
const LOG: LogConfig = LogConfig {
    offset: 2 * SECTOR as u32,
    sectors: 4,
};

#[entry]
fn main() -> ! {
    heap::init();
    heap::stack::paint();
    let mut cmdline_buf = [0u8; 512];
    let cmdline = semihosting::cmdline(&mut cmdline_buf);
    let args = BootArgs::parse(cmdline).unwrap_or_else(|e| {
        heprintln!("ferry: {}", e);
        fail("bad command line")
    });
    let Some(path) = args.flash.as_deref() else {
        fail("the journal image needs flash=PATH (the host file that plays the flash chip)")
    };
    let file = SemihostingFile::open(path).unwrap_or_else(|e| {
        heprintln!("ferry: flash {}: {}", path, e);
        fail("no flash")
    });
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(file)
        .unwrap_or_else(|e| {
            heprintln!("ferry: flash {}: redb: {}", path, database_error(&e));
            fail("no database")
        });

    let mut nor_path: heapless::String<256> = heapless::String::new();
    if nor_path
        .push_str(path)
        .and_then(|()| nor_path.push_str(".nor"))
        .is_err()
    {
        fail("flash path too long");
    }
    let (Some(log_chip), Some(tally_chip)) = (
        SemihostingNor::open(&nor_path, NOR_SECTORS),
        SemihostingNor::open(&nor_path, NOR_SECTORS),
    ) else {
        fail("no report log file")
    };
    let log = ReportLog::mount(log_chip, LOG).unwrap_or_else(|_| fail("report log unreadable"));
    let drops = Tally::mount(tally_chip, DROPS).unwrap_or_else(|_| fail("drop tally unreadable"));

    let cp = cortex_m::Peripherals::take().unwrap_or_else(|| fail("core peripherals taken"));
    let mut uart = uart::Uart0::take();
    clock::start(cp.SYST);
    // True time of uptime 0 (with `wall0=`): the host's clock when QEMU
    // started plus how long QEMU has run. The simulated sensors read their
    // waveforms at true time, so a test can check where windows are placed.
    let true_zero = args
        .wall0_ms
        .map(|w| w + semihosting::elapsed_ms().unwrap_or(0));

    let sim_clock = SimClock::new(0);
    let mut sht = Sht4x::new(SimSht4xBus::new(&sim_clock), clock::TickDelay);
    sht.set_precision(Precision::Low);
    let offset = true_zero.unwrap_or(0);
    let mut sht = Simulated::with_offset(&sim_clock, sht, offset);
    let mut tmp = Simulated::with_offset(
        &sim_clock,
        Tmp102::new(SimTmp102Bus::new(&sim_clock)),
        offset,
    );

    let mut node = JournalNode::start(
        clock::now_ms(),
        NodeStorage { db, log, drops },
        JournalSettings::default(),
        args.device_id.clone(),
        args.boot.unwrap_or_else(semihosting::unix_time),
        args.config,
        args.timers,
        &[&sht, &tmp],
        &EMULATED_EVERY,
    )
    .unwrap_or_else(|e| {
        heprintln!("ferry: journal: {}", start_error(&e));
        fail("journal refused")
    });
    let r = node.record();
    heprintln!(
        "ferry: journal device {} epoch {} power-up {} true zero {} ms, next seq {}, unacked {}, period {} ms window {} ms",
        args.device_id,
        r.epoch,
        node.power_up(),
        offset,
        node.next_seq(),
        node.unacked(),
        r.sample_period_ms,
        r.window_ms
    );

    let mut tx = [0u8; TX_BUFFER];
    let mut reported_peak = 0usize;
    loop {
        let now = clock::now_ms();
        while let Some(byte) = uart.read() {
            node.handle_rx(now, byte);
        }
        node.poll(now, &mut [&mut sht, &mut tmp]);
        while let Some(n) = node.poll_transmit(now, &mut tx) {
            uart.write_all(&tx[..n]);
        }
        // The heap's high-water mark, whenever it grows by 1 KiB or more:
        // the test's log shows the peak even when QEMU is killed.
        if heap::peak() >= reported_peak + 1024 {
            reported_peak = heap::peak();
            heprintln!(
                "ferry: heap peak {} B of {} B (in use {} B), stack peak {} B",
                reported_peak,
                heap::HEAP_BYTES,
                heap::used(),
                heap::stack::peak()
            );
        }
        if args.exit_after_ms.is_some_and(|t| now >= t) {
            let s = node.stats();
            heprintln!(
                "ferry: exit at {} ms: samples {} journaled {} folds {} acked {} resent {} dropped {} journal_errors {} bad_frames {} heap peak {} B stack peak {} B",
                now,
                s.sampler.samples,
                s.journaled,
                s.folds,
                s.acked,
                s.resent,
                s.dropped,
                s.journal_errors,
                s.bad_frames,
                heap::peak(),
                heap::stack::peak()
            );
            debug::exit(debug::EXIT_SUCCESS);
        }
        // SysTick wakes us every millisecond.
        cortex_m::asm::wfi();
    }
}

// The two functions below name errors without their `Display` impls: those
// of redb's errors alone are tens of KiB of flash that the 512 KiB budget
// does not have. The variant says what went wrong; the host's file is there
// to inspect.

fn database_error(e: &redb::DatabaseError) -> &'static str {
    match e {
        redb::DatabaseError::Storage(s) => storage_error(s),
        redb::DatabaseError::DatabaseAlreadyOpen => "already open",
        redb::DatabaseError::RepairAborted => "repair aborted",
        redb::DatabaseError::UpgradeRequired(_) => "file format needs an upgrade",
        _ => "cannot open the database",
    }
}

fn storage_error(e: &redb::StorageError) -> &'static str {
    match e {
        redb::StorageError::Corrupted(_) => "corrupted",
        redb::StorageError::ValueTooLarge(_) => "value too large",
        redb::StorageError::Backend(_) => "flash file I/O failed",
        redb::StorageError::LockPoisoned(_) => "lock poisoned",
        _ => "storage error",
    }
}

fn start_error(e: &StartError) -> &'static str {
    match e {
        StartError::Journal(CommitError::Storage(redb::Error::Backend(_))) => {
            "flash file I/O failed"
        }
        StartError::Journal(CommitError::Storage(redb::Error::Corrupted(_))) => "corrupted",
        StartError::Journal(CommitError::Storage(_)) => "storage error",
        StartError::Journal(CommitError::Corrupt(_)) => "a journal row does not decode",
        StartError::Journal(_) => "journal error",
        StartError::Log(_) => "report log error",
        StartError::BadResumeRecord => "the resume record does not decode",
        StartError::Config(_) => "config or sensor layout refused",
        _ => "cannot start",
    }
}

fn fail(why: &str) -> ! {
    heprintln!("ferry: {}", why);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

/// Prints where, not what: formatting panic messages would keep every
/// `Debug`/`Display` impl they name in the image (tens of KiB of flash).
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(at) => heprintln!("ferry: panic at {}:{}", at.file(), at.line()),
        None => heprintln!("ferry: panic"),
    }
    fail("panicked")
}
