//! What a storage sink gathers for one send, sans-IO: entries after a
//! cursor up to `max_rows` readings and aggregates, waiting at most
//! `linger` after the first one for more ([`super::feed::gather`] moves the
//! reads, waits and clock).
//!
//! - Entries up to the head the feed had *before* a read are committed, so
//!   an entry a read does not find is gone (trimmed), not late: the gather
//!   ends, and the entries skipped before the first one found are its gap.
//! - Nothing gathered yet: wait for news without a deadline (a stop ends
//!   the gather empty, gap 0).
//! - Something gathered: wait until `linger` after the first wait for more,
//!   then send what there is; a full gather or a stopping feed sends at once.

use std::time::Duration;

use super::feed::{Entry, Wake};

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Read entries after this seq (the feed's head was `head`).
    Read {
        /// The last seq gathered (or the cursor).
        after: u64,
        /// The head before the read.
        head: u64,
    },
    /// Wait for news on the bus, until this time if any.
    Wait {
        /// Wall-clock ns; `None`: no deadline.
        until: Option<i64>,
    },
    /// Send what was gathered ([`Gathering::finish`]).
    Done,
}

/// One gather in progress. See the module docs.
#[derive(Debug)]
pub(crate) struct Gathering {
    after: u64,
    max_rows: usize,
    linger: Duration,
    out: Vec<Entry>,
    rows: usize,
    gap: u64,
    deadline: Option<i64>,
    done: bool,
}

impl Gathering {
    /// A gather of entries after `after`.
    pub fn new(after: u64, max_rows: usize, linger: Duration) -> Self {
        Self {
            after,
            max_rows,
            linger,
            out: Vec::new(),
            rows: 0,
            gap: 0,
            deadline: None,
            done: false,
        }
    }

    /// The next step at `now`, the feed's head being `head`.
    pub fn poll(&mut self, now: i64, head: u64) -> Step {
        if self.done {
            return Step::Done;
        }
        let last = self.out.last().map_or(self.after, |e| e.seq);
        if last < head {
            return Step::Read { after: last, head };
        }
        if self.out.is_empty() {
            return Step::Wait { until: None };
        }
        let linger = self.linger;
        let until = *self
            .deadline
            .get_or_insert_with(|| ferry_clock::after(now, linger));
        if now >= until {
            self.done = true;
            return Step::Done;
        }
        Step::Wait { until: Some(until) }
    }

    /// The read of [`Step::Read`] returned `got`; the feed is `stopping`.
    pub fn handle_read(&mut self, head: u64, got: Vec<Entry>, stopping: bool) {
        let Some(first) = got.first() else {
            if self.out.is_empty() {
                self.gap = head - self.after;
            }
            self.done = true;
            return;
        };
        if self.out.is_empty() {
            self.gap = first.seq - self.after - 1;
        }
        for e in got {
            self.rows += e.reading_count() + e.aggregates.len();
            self.out.push(e);
        }
        if self.rows >= self.max_rows || stopping {
            self.done = true;
        }
    }

    /// The wait of [`Step::Wait`] ended with `wake`.
    pub fn handle_wake(&mut self, wake: Wake) {
        if wake == Wake::Stop {
            if self.out.is_empty() {
                self.gap = 0;
            }
            self.done = true;
        }
    }

    /// What was gathered, and how many entries before the first were gone.
    pub fn finish(self) -> (Vec<Entry>, u64) {
        (self.out, self.gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::batch::Reading;

    const MS: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000_000_000_000;

    fn entry(seq: u64, readings: usize) -> Entry {
        Entry {
            seq,
            stored_ns: T0,
            readings: vec![(
                1,
                (0..readings)
                    .map(|i| Reading {
                        ts_ns: T0 + i as i64,
                        value: i as f64,
                    })
                    .collect(),
            )],
            aggregates: Vec::new(),
        }
    }

    fn seqs(g: Gathering) -> (Vec<u64>, u64) {
        let (out, gap) = g.finish();
        (out.iter().map(|e| e.seq).collect(), gap)
    }

    #[test]
    fn nothing_new_waits_without_a_deadline_and_a_stop_ends_it_empty() {
        let mut g = Gathering::new(10, 100, Duration::from_millis(50));
        assert_eq!(g.poll(T0, 10), Step::Wait { until: None });
        g.handle_wake(Wake::News);
        assert_eq!(g.poll(T0, 10), Step::Wait { until: None });
        g.handle_wake(Wake::Stop);
        assert_eq!(g.poll(T0, 10), Step::Done);
        assert_eq!(seqs(g), (vec![], 0));
    }

    #[test]
    fn the_linger_runs_from_the_first_wait_and_more_entries_join_meanwhile() {
        let mut g = Gathering::new(0, 100, Duration::from_millis(50));
        assert_eq!(g.poll(T0, 2), Step::Read { after: 0, head: 2 });
        g.handle_read(2, vec![entry(1, 3), entry(2, 3)], false);
        let until = T0 + 10 * MS + 50 * MS;
        assert_eq!(g.poll(T0 + 10 * MS, 2), Step::Wait { until: Some(until) });
        // News: one more entry, read; the deadline does not move.
        g.handle_wake(Wake::News);
        assert_eq!(g.poll(T0 + 20 * MS, 3), Step::Read { after: 2, head: 3 });
        g.handle_read(3, vec![entry(3, 3)], false);
        assert_eq!(g.poll(T0 + 30 * MS, 3), Step::Wait { until: Some(until) });
        g.handle_wake(Wake::Timeout);
        assert_eq!(g.poll(until - 1, 3), Step::Wait { until: Some(until) });
        assert_eq!(g.poll(until, 3), Step::Done);
        assert_eq!(seqs(g), (vec![1, 2, 3], 0));
    }

    #[test]
    fn a_full_gather_or_a_stopping_feed_sends_at_once() {
        let mut g = Gathering::new(0, 6, Duration::from_secs(1));
        assert_eq!(g.poll(T0, 5), Step::Read { after: 0, head: 5 });
        g.handle_read(5, vec![entry(1, 4), entry(2, 2)], false);
        assert_eq!(g.poll(T0, 5), Step::Done, "6 rows: full");
        assert_eq!(seqs(g), (vec![1, 2], 0));

        let mut g = Gathering::new(0, 100, Duration::from_secs(1));
        g.poll(T0, 1);
        g.handle_read(1, vec![entry(1, 1)], true);
        assert_eq!(g.poll(T0, 1), Step::Done);

        let mut g = Gathering::new(0, 100, Duration::from_secs(1));
        g.poll(T0, 1);
        g.handle_read(1, vec![entry(1, 1)], false);
        assert!(matches!(g.poll(T0, 1), Step::Wait { until: Some(_) }));
        g.handle_wake(Wake::Stop);
        assert_eq!(g.poll(T0, 1), Step::Done);
        assert_eq!(seqs(g), (vec![1], 0), "a stop sends what was gathered");
    }

    /// A gather after seq 10 with no linger, the head at 16: it reads.
    fn reading_after_10_up_to_16() -> Gathering {
        let mut g = Gathering::new(10, 100, Duration::ZERO);
        let read = Step::Read {
            after: 10,
            head: 16,
        };
        assert_eq!(g.poll(T0, 16), read);
        g
    }

    #[test]
    fn entries_gone_before_the_first_found_are_the_gap() {
        // Entries 11..=14 were trimmed: the first found is 15.
        let mut g = reading_after_10_up_to_16();
        g.handle_read(16, vec![entry(15, 1), entry(16, 1)], false);
        assert_eq!(g.poll(T0, 16), Step::Done, "no linger");
        assert_eq!(seqs(g), (vec![15, 16], 4));

        // Everything up to the head was trimmed: the whole range is gone.
        let mut g = reading_after_10_up_to_16();
        g.handle_read(16, Vec::new(), false);
        assert_eq!(g.poll(T0, 20), Step::Done);
        assert_eq!(seqs(g), (vec![], 6));
    }
}
