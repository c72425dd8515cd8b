//! The agent's CPU per reading on the line-protocol TCP path, without the
//! network: the e2e benchmark's load (`temperature,device=dNNN,sensor=sK
//! value=21.37 <ns>`, 1,000 series over 4 connections of 250) cut into
//! chunks by [`Chunker`] (as a connection's reads arrive), parsed by
//! [`ChunkParser`] with each connection's [`KeyCache`] (charged to a memory
//! budget), and committed two chunks at a time (a group commit) into a
//! journal on redb's in-memory backend with the agent's settings (eager
//! seal, zstd), every sealed batch handed out and acknowledged at the next
//! commit as the shipper does. Prints nanoseconds per reading per stage.
//!
//! ```sh
//! cargo bench -p ferry-agent --bench line_path
//! FERRY_LINE_READINGS=4000000 FERRY_LINE_ROUNDS=5 target/release/deps/line_path-<hash> --bench
//! ```
//!
//! Each round runs the whole load once; the figures are the fastest round
//! per stage. Stages are timed in this thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), so time the thread waits for a core on a
//! shared machine is not counted (its caches are still shared); the clock
//! read costs about 2 ns per reading, spread over the stages.

use std::time::Duration;

use ferry_agent::journal::{Journal, JournalConfig, Work};
use ferry_agent::limits::MemoryBudget;
use ferry_agent::sources::line::{Chunk, ChunkParser, Chunker, KeyCache, Piece, Precision};

const CONNECTIONS: usize = 4;
const DEVICES_PER_CONNECTION: usize = 50;
const SENSORS: usize = 5;
/// What a connection reads at once, and the agent's chunk limits.
const READ: usize = 64 * 1024;
const CHUNK_LINES: usize = 4096;
const CHUNK_BYTES: usize = 256 * 1024;
const MAX_LINE: usize = 64 * 1024;
const T0_NS: i64 = 1_796_000_000_000_000_000;

/// One connection's producer: the e2e load's lines, series by series.
struct Lines {
    series: Vec<(Vec<u8>, i64, i64)>,
    next: usize,
    rng: u64,
}

impl Lines {
    fn new(connection: usize) -> Self {
        let mut series = Vec::new();
        for d in 0..DEVICES_PER_CONNECTION {
            let device = connection * DEVICES_PER_CONNECTION + d;
            for s in 0..SENSORS {
                let prefix = format!("temperature,device=d{device:03},sensor=s{s} value=");
                series.push((
                    prefix.into_bytes(),
                    1800 + ((device * 7 + s * 13) % 900) as i64,
                    T0_NS,
                ));
            }
        }
        Self {
            series,
            next: 0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ connection as u64,
        }
    }

    /// Appends lines to `buf` until it holds at least `bytes` more; the
    /// number of lines.
    fn push(&mut self, buf: &mut Vec<u8>, bytes: usize) -> u64 {
        let target = buf.len() + bytes;
        let mut n = 0;
        while buf.len() < target {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let (prefix, value, ts) = &mut self.series[self.next];
            *value = (*value + (self.rng % 11) as i64 - 5).clamp(1000, 3500);
            buf.extend_from_slice(prefix);
            push_decimal(buf, *value as u64 / 100);
            let cents = *value as u64 % 100;
            buf.extend_from_slice(&[
                b'.',
                b'0' + (cents / 10) as u8,
                b'0' + (cents % 10) as u8,
                b' ',
            ]);
            push_decimal(buf, *ts as u64);
            buf.push(b'\n');
            *ts += 1_000_000;
            self.next = (self.next + 1) % self.series.len();
            n += 1;
        }
        n
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// This thread's CPU time so far.
#[derive(Clone, Copy)]
struct Instant(Duration);

impl Instant {
    #[allow(unsafe_code)]
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write to.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime");
        Self(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(self) -> Duration {
        Self::now().0 - self.0
    }
}

#[derive(Default, Clone, Copy)]
struct Stages {
    split: Duration,
    parse: Duration,
    commit: Duration,
    readings: u64,
}

struct Conn {
    lines: Lines,
    chunker: Chunker,
    keys: KeyCache,
    input: Vec<u8>,
}

fn round(target: u64) -> Stages {
    let budget = MemoryBudget::new(64 << 20);
    let mut conns: Vec<Conn> = (0..CONNECTIONS)
        .map(|c| Conn {
            lines: Lines::new(c),
            chunker: Chunker::new(MAX_LINE, CHUNK_LINES, CHUNK_BYTES),
            keys: KeyCache::with_budget(budget.clone()),
            input: Vec::new(),
        })
        .collect();
    let db = redb::Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .expect("in-memory redb");
    let config = JournalConfig {
        eager_seal: true,
        ..JournalConfig::default()
    };
    let mut journal = Journal::open(db, config).expect("journal");
    journal.set_compressor(Box::new(ferry_agent::shipper::Zstd));
    let mut s = Stages::default();
    let mut generated = 0u64;
    let mut acks: Vec<(u64, bool)> = Vec::new();
    let mut now = T0_NS;
    let mut c = 0;
    let mut work = Work::default();
    let mut chunks = 0;
    while s.readings < target {
        let conn = &mut conns[c % CONNECTIONS];
        c += 1;
        // Split: reads of READ bytes into the chunker until a chunk is ready.
        loop {
            if conn.input.len() < READ {
                generated += conn.lines.push(&mut conn.input, READ);
            }
            let t = Instant::now();
            let step = conn.chunker.poll();
            if step == Chunk::Ready {
                s.split += t.elapsed();
                break;
            }
            conn.chunker
                .read_buf(READ)
                .extend_from_slice(&conn.input[..READ]);
            s.split += t.elapsed();
            conn.input.drain(..READ);
        }
        // Parse.
        let t = Instant::now();
        let parsed = conn.chunker.take(|buf, pieces| {
            let mut parser = ChunkParser::new(
                Precision::Nanoseconds,
                now,
                "influx",
                "device",
                &mut conn.keys,
            );
            for piece in pieces {
                if let Piece::Line { no, start, end } = *piece {
                    parser.push_line(no, &buf[start..end]);
                }
            }
            parser.finish()
        });
        s.parse += t.elapsed();
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors.first());
        s.readings += parsed.readings_accepted;
        // Commit: two chunks per group commit, as the e2e run's ~7,800
        // readings per commit.
        let t = Instant::now();
        work.readings.extend(parsed.readings);
        chunks += 1;
        if chunks == 2 {
            chunks = 0;
            now += 1_000_000;
            let mut w = std::mem::take(&mut work);
            w.acks = std::mem::take(&mut acks);
            journal.commit(w, now).expect("commit");
            for b in journal.next_to_ship(u64::MAX, false).expect("ship") {
                acks.push((b.seq, true));
            }
        }
        s.commit += t.elapsed();
    }
    assert!(generated >= s.readings);
    s
}

fn main() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let readings = env("FERRY_LINE_READINGS", 2_000_000);
    let rounds = env("FERRY_LINE_ROUNDS", 5);
    // `cargo test --benches` runs this too: one small round.
    let (readings, rounds) = if std::env::args().any(|a| a == "--bench") {
        (readings, rounds)
    } else {
        (100_000, 1)
    };
    let mut best: Option<[f64; 4]> = None;
    for r in 0..rounds {
        let s = round(readings);
        let per = |d: Duration| d.as_nanos() as f64 / s.readings as f64;
        let row = [
            per(s.split),
            per(s.parse),
            per(s.commit),
            per(s.split + s.parse + s.commit),
        ];
        println!(
            "round {r}: {} readings  split {:6.1}  parse {:6.1}  commit {:6.1}  total {:6.1} ns/reading",
            s.readings, row[0], row[1], row[2], row[3]
        );
        best = Some(match best {
            None => row,
            Some(b) => std::array::from_fn(|i| b[i].min(row[i])),
        });
    }
    if let Some(b) = best {
        println!(
            "line path (best of {rounds}): split {:.1}  parse {:.1}  commit {:.1}  total {:.1} ns/reading",
            b[0], b[1], b[2], b[3]
        );
    }
}
