//! What a flood of new series really allocates, against what the memory
//! budget is charged for it: a TCP connection holds
//! `held_bytes(Parsed::heap_bytes())` of the budget from its parse until
//! its commit returns (`ferry_agent::limits::Hold`), and that covers the
//! parsed keys and readings plus the journal's working copy at the
//! commit's peak. Measured by this test binary's allocator, with glibc's
//! chunk sizes.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use ferry_agent::journal::{Journal, JournalConfig, Work};
use ferry_agent::limits::{MemoryBudget, held_bytes};
use ferry_agent::sources::line::{ChunkParser, KeyCache, Precision};

static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

/// The system allocator, keeping the live heap bytes and their peak.
struct Counting;

/// What glibc's malloc takes for `n` bytes.
fn chunk(n: usize) -> i64 {
    (n.div_ceil(16) * 16 + 16).max(32) as i64
}

fn grew(by: i64) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(chunk(layout.size()));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(chunk(new_size) - chunk(layout.size()));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mark() -> i64 {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// 4,096 lines (a chunk), each of a new series, parsed with no room in
/// the budget (every line uncached) and committed, three times: each time
/// the parse and the commit's peak stay within what the chunk holds.
#[test]
fn a_chunk_of_new_series_holds_what_it_allocates_until_its_commit() {
    let lines = 4096;
    let budget = MemoryBudget::new(0);
    let mut cache = KeyCache::with_budget(budget);
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::builder()
        .set_cache_size(1 << 20)
        .create(dir.path().join("j.redb"))
        .unwrap();
    let mut journal = Journal::open(db, JournalConfig::default()).unwrap();
    journal.set_compressor(Box::new(ferry_agent::shipper::Zstd));
    for round in 0..3i64 {
        let text: Vec<String> = (0..lines)
            .map(|i| format!("flood,device=c{round},key=k{i:05}_with_some_length_to_it v={i}"))
            .collect();
        let before = mark();
        let mut p = ChunkParser::new(Precision::Nanoseconds, 1, "src", "device", &mut cache);
        for (i, l) in text.iter().enumerate() {
            p.push_line(i + 1, l.as_bytes());
        }
        let running = p.heap_bytes();
        let parsed = p.finish();
        assert_eq!(parsed.lines_uncached, lines as u64);
        let parse = (LIVE.load(Ordering::Relaxed) - before) as u64;
        let heap = parsed.heap_bytes();
        let held = held_bytes(heap);
        let work = Work {
            readings: parsed.readings,
            ..Work::default()
        };
        let before = mark();
        journal.commit(work, 1 + round).unwrap();
        let commit = (PEAK.load(Ordering::Relaxed) - before).max(0) as u64;
        println!(
            "{lines} lines of new series: parsed {parse} bytes (estimated {heap}, while parsing \
             {running}), commit peak +{commit} bytes; held {held}"
        );
        assert!(parse <= heap, "the estimate covers the parse");
        assert!(
            running.abs_diff(heap) <= heap / 8,
            "the parser's running count is the estimate's"
        );
        assert!(parse + commit <= held, "the hold covers the commit's peak");
    }
}
