//! The store's dedupe against a model, over whatever an agent that follows
//! the protocol can do: ship in any order (oldest first, newest first,
//! shuffled), lose acks and resend, drop batches and report them in later
//! batches (which may themselves be dropped), replace its journal (a new
//! epoch) and still ship the old one's batches, promise `resolved_below` in a
//! Hello, and meet the `max_dedupe_ranges` bound.
//!
//! Properties, checked at every answer: a batch is stored iff it was never
//! resolved before (stored, or counted as dropped); a drop is counted iff
//! its batch was never resolved; a `DEDUPE_FULL` refusal comes exactly when
//! the bound says so. At the end (everything shipped, the bound lifted):
//! every batch ever sealed is stored or counted dropped, exactly once, and
//! the store's ranges are the model's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_collector::config::Limits;
use ferry_collector::ingest::prepare;
use ferry_collector::store::{Applied, DedupeLimits, Store};
use ferry_proto::batch::{Batch, HealthRecord, Reading, ReadingBlock};
use ferry_proto::health::DROPPED_JOURNAL_FULL;
use ferry_proto::series::SeriesKey;
use ferry_proto::session::reason;
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000_000_000;
const AGENT: &str = "gw-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the outbox: not acked (maybe sent, maybe stored with its ack lost).
    Pending,
    /// Acked stored or duplicate: deleted.
    Acked,
    /// Dropped by the agent; its count waits in the queue or a carrier.
    Dropped,
}

#[derive(Debug, Clone)]
struct SimBatch {
    readings: u64,
    /// Health records naming dropped batches: `(seq, readings)`.
    tags: Vec<(u64, u64)>,
    state: State,
}

/// One journal of the simulated agent.
#[derive(Debug, Clone, Default)]
struct Journal {
    epoch: u64,
    next_seq: u64,
    batches: BTreeMap<u64, SimBatch>,
    /// Drop counts not yet sealed into a batch.
    queue: Vec<(u64, u64)>,
}

impl Journal {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            next_seq: 1,
            ..Self::default()
        }
    }

    fn pending(&self) -> Vec<u64> {
        self.batches
            .iter()
            .filter(|(_, b)| b.state == State::Pending)
            .map(|(s, _)| *s)
            .collect()
    }

    fn seal(&mut self, readings: u64) {
        let tags = std::mem::take(&mut self.queue);
        self.batches.insert(
            self.next_seq,
            SimBatch {
                readings,
                tags,
                state: State::Pending,
            },
        );
        self.next_seq += 1;
    }

    fn drop_batch(&mut self, seq: u64) {
        let b = self.batches.get_mut(&seq).unwrap();
        b.state = State::Dropped;
        // Its readings are counted, naming it; its own drop counts travel
        // on, keeping their names (as the journal does).
        self.queue.push((seq, b.readings));
        let carried = b.tags.clone();
        self.queue.extend(carried);
    }

    /// The promise an honest agent can make: every batch below it is acked,
    /// or dropped with its count delivered.
    fn resolved_below(&self) -> u64 {
        let mut open: BTreeSet<u64> = self
            .batches
            .iter()
            .filter(|(_, b)| b.state == State::Pending)
            .map(|(s, _)| *s)
            .collect();
        open.extend(self.queue.iter().map(|t| t.0));
        for b in self.batches.values() {
            if b.state == State::Pending {
                open.extend(b.tags.iter().map(|t| t.0));
            }
        }
        open.first().copied().unwrap_or(self.next_seq)
    }
}

/// What the collector must have: resolved sequences per epoch, drops
/// counted, readings stored.
#[derive(Debug, Default)]
struct Model {
    resolved: BTreeMap<u64, BTreeSet<u64>>,
    stored_readings: u64,
    stored_batches: u64,
    dropped_readings: u64,
}

fn ranges(set: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in set {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == s => *last = s,
            _ => out.push((s, s)),
        }
    }
    out
}

impl Model {
    fn expect(&mut self, epoch: u64, seq: u64, b: &SimBatch, cap: u64) -> Expected {
        let r = self.resolved.entry(epoch).or_default();
        if r.contains(&seq) {
            return Expected::Duplicate;
        }
        let carries = !b.tags.is_empty();
        let bound = if carries { cap * 2 } else { cap };
        let touches = seq.checked_sub(1).is_some_and(|p| r.contains(&p)) || r.contains(&(seq + 1));
        if ranges(r).len() as u64 >= bound && !touches {
            return Expected::Full;
        }
        let before = r.clone();
        for &(x, n) in &b.tags {
            if !before.contains(&x) {
                self.dropped_readings += n;
                r.insert(x);
            }
        }
        r.insert(seq);
        self.stored_readings += b.readings;
        self.stored_batches += 1;
        Expected::Stored
    }

    fn promise(&mut self, epoch: u64, below: u64) {
        let r = self.resolved.entry(epoch).or_default();
        if below > 0 {
            r.extend(0..below);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Stored,
    Duplicate,
    Full,
}

#[derive(Debug, Clone)]
enum Step {
    /// Ship up to `n` pending batches of a journal, in an order, as one
    /// group commit; maybe losing their acks.
    Ship {
        journal: usize,
        n: usize,
        order: u8,
        lose_acks: bool,
        seed: u64,
    },
    /// Drop a pending batch (budget overflow, or a permanent rejection).
    Drop { journal: usize, pick: usize },
    /// Seal a batch of `readings` readings, carrying queued drop counts.
    Seal { journal: usize, readings: u64 },
    /// The journal is replaced: a new epoch (the old stays shippable, as a
    /// salvaged journal).
    NewJournal,
    /// A new session: Hello with the journal's honest `resolved_below`.
    Hello { journal: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0usize..3, 1usize..6, 0u8..3, prop::bool::weighted(0.2), any::<u64>()).prop_map(
            |(journal, n, order, lose_acks, seed)| Step::Ship { journal, n, order, lose_acks, seed }
        ),
        2 => (0usize..3, any::<usize>()).prop_map(|(journal, pick)| Step::Drop { journal, pick }),
        5 => (0usize..3, 0u64..4).prop_map(|(journal, readings)| Step::Seal { journal, readings }),
        1 => Just(Step::NewJournal),
        1 => (0usize..3).prop_map(|journal| Step::Hello { journal }),
    ]
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    state: ferry_collector::store::WriterState,
    limits: DedupeLimits,
    agent: Arc<str>,
}

impl Harness {
    fn new(cap: u64) -> Self {
        // A logic test: memory-backed files where there are any (each group
        // commit fsyncs).
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let store = Store::open(&dir.path().join("ferry.redb")).unwrap();
        let mut state = store.writer_state().unwrap();
        let limits = DedupeLimits {
            max_ranges: cap,
            max_epochs: 1000,
        };
        state.set_dedupe_limits(limits);
        Self {
            _dir: dir,
            store,
            state,
            limits,
            agent: Arc::from(AGENT),
        }
    }

    fn batch(epoch: u64, seq: u64, b: &SimBatch) -> Batch {
        let readings: Vec<Reading> = (0..b.readings)
            .map(|i| Reading {
                ts_ns: T0 + (seq * 10 + i) as i64,
                value: i as f64,
            })
            .collect();
        Batch {
            seq,
            created_ns: T0,
            epoch,
            series: vec![SeriesKey::new("t", [("device", "d")]).unwrap()],
            blocks: if readings.is_empty() {
                vec![]
            } else {
                vec![ReadingBlock::encode(0, &readings)]
            },
            health: b
                .tags
                .iter()
                .map(|&(x, n)| HealthRecord {
                    source: "d".into(),
                    kind: DROPPED_JOURNAL_FULL,
                    count: n,
                    batch: x,
                })
                .collect(),
            ..Batch::default()
        }
    }

    fn apply(&mut self, group: &[(u64, u64, SimBatch)]) -> Vec<Applied> {
        let limits = Limits {
            max_past: Duration::from_secs(86_400),
            ..Limits::default()
        };
        let prepared: Vec<_> = group
            .iter()
            .map(|(e, s, b)| {
                prepare(&self.agent, "t", &Self::batch(*e, *s, b), &limits, T0).unwrap()
            })
            .collect();
        self.store
            .apply_group(&mut self.state, &prepared, 1000, T0)
            .unwrap()
    }
}

fn order(mut seqs: Vec<u64>, how: u8, seed: u64) -> Vec<u64> {
    match how {
        0 => seqs,
        1 => {
            seqs.reverse();
            seqs
        }
        _ => {
            // Fisher–Yates with a xorshift: an arbitrary interleaving.
            let mut x = seed | 1;
            for i in (1..seqs.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                seqs.swap(i, (x % (i as u64 + 1)) as usize);
            }
            seqs
        }
    }
}

fn check(answer: &Applied, want: &Expected, what: &str) {
    let ok = match (answer, want) {
        (Applied::Stored { refused, .. }, Expected::Stored) => refused.is_empty(),
        (Applied::Duplicate, Expected::Duplicate) => true,
        (Applied::Rejected { code, .. }, Expected::Full) => *code == reason::DEDUPE_FULL,
        _ => false,
    };
    assert!(
        ok,
        "{what}: store answered {answer:?}, model expected {want:?}"
    );
}

fn run(steps: &[Step], cap: u64) {
    let mut h = Harness::new(cap);
    let mut model = Model::default();
    let mut journals = vec![Journal::new(1001)];
    for st in steps {
        match *st {
            Step::Seal { journal, readings } => {
                let j = journal % journals.len();
                journals[j].seal(readings);
            }
            Step::Drop { journal, pick } => {
                let len = journals.len();
                let j = &mut journals[journal % len];
                let pending = j.pending();
                if !pending.is_empty() {
                    j.drop_batch(pending[pick % pending.len()]);
                }
            }
            Step::NewJournal => {
                let epoch = 1001 + journals.len() as u64;
                journals.push(Journal::new(epoch));
            }
            Step::Hello { journal } => {
                let j = &journals[journal % journals.len()];
                let below = j.resolved_below();
                h.store
                    .open_session(AGENT, j.epoch, below, h.limits, T0)
                    .unwrap();
                model.promise(j.epoch, below);
            }
            Step::Ship {
                journal,
                n,
                order: how,
                lose_acks,
                seed,
            } => {
                let j = journal % journals.len();
                let seqs = order(journals[j].pending(), how, seed);
                let epoch = journals[j].epoch;
                let group: Vec<(u64, u64, SimBatch)> = seqs
                    .iter()
                    .take(n)
                    .map(|s| (epoch, *s, journals[j].batches[s].clone()))
                    .collect();
                let answers = h.apply(&group);
                for ((e, s, b), answer) in group.iter().zip(&answers) {
                    let want = model.expect(*e, *s, b, cap);
                    check(answer, &want, &format!("epoch {e} batch {s}"));
                    if !lose_acks && matches!(want, Expected::Stored | Expected::Duplicate) {
                        journals[j].batches.get_mut(s).unwrap().state = State::Acked;
                    }
                }
            }
        }
    }
    // Drain, with the bound lifted (an operator raising max_dedupe_ranges):
    // seal what is queued, then ship everything oldest first, one at a time,
    // until every journal is empty.
    let cap = u64::MAX / 4;
    h.limits.max_ranges = cap;
    h.state.set_dedupe_limits(h.limits);
    for _round in 0..10_000 {
        let mut progress = false;
        let mut left = false;
        for j in &mut journals {
            if !j.queue.is_empty() {
                j.seal(0);
            }
            for s in j.pending() {
                left = true;
                let b = j.batches[&s].clone();
                let answer = h.apply(&[(j.epoch, s, b.clone())]).remove(0);
                let want = model.expect(j.epoch, s, &b, cap);
                check(
                    &answer,
                    &want,
                    &format!("drain: epoch {} batch {s}", j.epoch),
                );
                if want != Expected::Full {
                    j.batches.get_mut(&s).unwrap().state = State::Acked;
                    progress = true;
                }
            }
        }
        if !left {
            break;
        }
        assert!(progress, "the drain is stuck");
    }
    // Every batch sealed is stored or counted dropped, once.
    let sealed: u64 = journals
        .iter()
        .flat_map(|j| j.batches.values())
        .map(|b| b.readings)
        .sum();
    let agents = h.store.agents().unwrap();
    let stored = agents.first().map_or(0, |a| a.readings);
    let dropped: u64 = h
        .store
        .health()
        .unwrap()
        .iter()
        .filter(|r| r.2 == DROPPED_JOURNAL_FULL)
        .map(|r| r.3)
        .sum();
    assert_eq!(
        (stored, dropped),
        (model.stored_readings, model.dropped_readings)
    );
    assert_eq!(stored + dropped, sealed, "the ledger closes");
    assert_eq!(
        agents.first().map_or(0, |a| a.batches),
        model.stored_batches
    );
    for j in &journals {
        let want = model.resolved.get(&j.epoch).map(ranges).unwrap_or_default();
        assert_eq!(
            h.store.dedupe_ranges(AGENT, j.epoch).unwrap(),
            want,
            "epoch {}",
            j.epoch
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_batch_is_stored_iff_never_resolved_before(
        steps in prop::collection::vec(step(), 1..120),
        cap in prop_oneof![Just(1u64), Just(2), Just(4), Just(10_000)],
    ) {
        run(&steps, cap);
    }
}

/// The bug this design replaces: with `newest_first` and a backlog larger
/// than the old 100 000-entry window, older batches were answered
/// "duplicate" unseen. Here 120 000 batches arrive newest first, in group
/// commits of 512: every one is stored, and the dedupe holds one range.
#[test]
fn newest_first_backlog_beyond_the_old_window_is_stored_whole() {
    let mut h = Harness::new(10_000);
    let n = 120_000u64;
    let one = SimBatch {
        readings: 0,
        tags: vec![],
        state: State::Pending,
    };
    let seqs: Vec<u64> = (1..=n).rev().collect();
    let mut stored = 0u64;
    for chunk in seqs.chunks(512) {
        let group: Vec<_> = chunk.iter().map(|&s| (7, s, one.clone())).collect();
        for a in h.apply(&group) {
            assert!(matches!(a, Applied::Stored { .. }), "{a:?}");
            stored += 1;
        }
    }
    assert_eq!(stored, n);
    assert_eq!(h.store.dedupe_ranges(AGENT, 7).unwrap(), [(1, n)]);
    // And every one is a duplicate now.
    let again: Vec<_> = [1, n / 2, n].iter().map(|&s| (7, s, one.clone())).collect();
    assert!(h.apply(&again).iter().all(|a| *a == Applied::Duplicate));
}
