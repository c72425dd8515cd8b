//! What every storage sink shares: reading the event log after its cursor
//! (decoded into readings and aggregates with their series keys), waiting
//! for news, the lag budget's `skip`, and committing the cursor through the
//! writer (which trims the log to its floor in the same transaction).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::batch::{Reading, WindowAggregate};
use ferry_proto::series::SeriesKey;
use tokio::sync::watch;

use ferry_clock::{Clock, SystemClock, until};

use super::StorageSink;
use super::gather::{Gathering, Step};
use super::retry::{Failure, LOCAL_PAUSE, Retry};
use crate::fanout::LagPolicy;
use crate::fanout::run::commit_sink;
use crate::server::Shared;
use crate::store::{CursorRecord, SinkCommit, StoreError};
use crate::writer::WriterError;

/// Why the event log could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The store refused the read.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The blocking read did not finish.
    #[error("reading the event log: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Entries read from the log per store read at most.
pub(crate) const READ_ENTRIES: usize = 256;

/// One stored batch, decoded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    /// Its event-log seq.
    pub seq: u64,
    /// When the collector stored it, ns.
    pub stored_ns: i64,
    /// `(series id, readings in timestamp order)`.
    pub readings: Vec<(u64, Vec<Reading>)>,
    /// `(series id, aggregate)`.
    pub aggregates: Vec<(u64, WindowAggregate)>,
}

impl Entry {
    /// Raw readings in it.
    pub fn reading_count(&self) -> usize {
        self.readings.iter().map(|(_, r)| r.len()).sum()
    }
}

/// What a sink did with a range of entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Entries handled.
    pub entries: u64,
    /// Readings (and aggregate rows or samples) delivered.
    pub delivered: u64,
    /// Readings refused for good by the server.
    pub refused: u64,
    /// Entries skipped (lag budget, gaps, unreadable).
    pub skipped: u64,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Stop now.
    Stop,
    /// Something changed on the bus (a new head, most likely).
    News,
    /// The timeout passed.
    Timeout,
}

/// A storage sink's view of the event log. See the module docs.
pub(crate) struct Feed {
    shared: Arc<Shared>,
    /// The sink's name.
    pub name: String,
    /// Its cursor's name, `sink/<name>`.
    pub key: String,
    stop: watch::Receiver<bool>,
    changes: watch::Receiver<u64>,
    names: Names,
}

impl Feed {
    /// The feed of `sink`, whose cursor is on the bus; records the cursor
    /// durably if this is the sink's first run. `None` if stopped first.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        sink: &StorageSink,
        stop: watch::Receiver<bool>,
    ) -> Option<Self> {
        let key = sink.key();
        let changes = shared.bus.changes();
        let mut feed = Self {
            shared,
            name: sink.name.clone(),
            key,
            stop,
            changes,
            names: HashMap::new(),
        };
        loop {
            let known = feed
                .shared
                .store
                .cursors()
                .map(|c| c.contains_key(&feed.key));
            match known {
                Ok(true) => return Some(feed),
                Ok(false) => {
                    let at = feed.cursor();
                    match feed.commit(at, Progress::default()).await {
                        Ok(()) => return Some(feed),
                        Err(e) => tracing::error!(
                            sink = feed.name,
                            "recording the new sink's cursor: {e}"
                        ),
                    }
                }
                Err(e) => tracing::error!(sink = feed.name, "reading cursors: {e}"),
            }
            if feed.pause(LOCAL_PAUSE).await == Wake::Stop {
                return None;
            }
        }
    }

    /// The shared collector state.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The sink's cursor as last committed.
    pub(crate) fn cursor(&self) -> u64 {
        self.record().seq
    }

    /// The sink's durable record as last committed.
    pub(crate) fn record(&self) -> CursorRecord {
        self.shared.bus.record(&self.key).unwrap_or_default()
    }

    /// The event log's head.
    pub(crate) fn head(&self) -> u64 {
        self.shared.bus.event_head()
    }

    /// True once the sink must stop.
    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits for news on the bus, the timeout, or stop.
    pub(crate) async fn wait(&mut self, timeout: Option<Duration>) -> Wake {
        if self.stopping() {
            return Wake::Stop;
        }
        let sleep = async {
            match timeout {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = crate::stopped(&mut self.stop) => Wake::Stop,
            r = self.changes.changed() => if r.is_err() { Wake::Stop } else { Wake::News },
            _ = sleep => Wake::Timeout,
        }
    }

    /// Sleeps `d` unless stopped first.
    pub(crate) async fn pause(&mut self, d: Duration) -> Wake {
        tokio::select! {
            _ = crate::stopped(&mut self.stop) => Wake::Stop,
            _ = tokio::time::sleep(d) => Wake::Timeout,
        }
    }

    /// Waits after `failure` as `retry` decides ([`Retry::handle_failure`]),
    /// unless stopped first; a wait that counts as a retry is counted and
    /// logged with `why` ([`Feed::retried`]).
    pub(crate) async fn back_off(
        &mut self,
        retry: &mut Retry,
        failure: Failure,
        why: &str,
    ) -> Wake {
        let pause = retry.handle_failure(crate::now_ns(), failure);
        if pause.counted {
            self.retried(why, pause.delay);
        }
        self.pause(ferry_clock::until(crate::now_ns(), pause.until))
            .await
    }

    /// A future that resolves when the sink must stop (for `select!`
    /// around a long delivery).
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Under a `skip` lag budget and past it: the range to skip, `(from,
    /// to)` inclusive.
    pub(crate) fn over_budget(&self) -> Option<(u64, u64)> {
        let budget = self.shared.bus.budget(&self.key)?;
        let (cursor, head) = (self.cursor(), self.head());
        let lag = head.saturating_sub(cursor);
        (budget.policy == LagPolicy::Skip && lag > budget.max).then_some((cursor + 1, head))
    }

    /// Up to `max_entries` entries after `after`, decoded, with the series
    /// keys they use known to [`Feed::series`]. Entries missing between
    /// `after` and the first one returned were trimmed while the sink was
    /// not configured: the caller counts them as skipped.
    pub(crate) async fn read(
        &mut self,
        after: u64,
        max_entries: usize,
    ) -> Result<Vec<Entry>, FeedError> {
        let store = self.shared.store.clone();
        let mut names = std::mem::take(&mut self.names);
        let name = self.name.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = read_blocking(&store, &name, after, max_entries, &mut names);
            (names, r)
        })
        .await?;
        self.names = joined.0;
        joined.1
    }

    /// The series keys learnt so far, to use off the async threads
    /// ([`read_blocking`]); give them back with [`Feed::put_names`].
    pub(crate) fn take_names(&mut self) -> Names {
        std::mem::take(&mut self.names)
    }

    /// See [`Feed::take_names`].
    pub(crate) fn put_names(&mut self, names: Names) {
        self.names = names;
    }

    /// The key of series `id` (known after [`Feed::read`] returned an entry
    /// that uses it).
    pub(crate) fn series(&self, id: u64) -> Option<&Arc<SeriesKey>> {
        self.names.get(&id)
    }

    /// Commits the cursor `to` durably with `p`'s tallies (through the
    /// writer, which also trims the log), and updates the bus.
    pub(crate) async fn commit(&mut self, to: u64, p: Progress) -> Result<(), WriterError> {
        let commit = SinkCommit {
            name: self.name.clone(),
            cursor: to,
            handled: p.entries,
            skipped: p.skipped,
            delivered: p.delivered,
            refused: p.refused,
            reads_log: true,
            ..SinkCommit::default()
        };
        let record = commit_sink(&self.shared, commit).await?;
        self.shared.bus.advance(&self.key, record);
        let m = &self.shared.metrics;
        m.sink_readings(&self.name, "delivered", p.delivered);
        m.sink_readings(&self.name, "refused", p.refused);
        Ok(())
    }

    /// Commits, retrying every second until it works or the sink stops
    /// (false).
    pub(crate) async fn commit_retrying(&mut self, to: u64, p: Progress) -> bool {
        loop {
            match self.commit(to, p).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(sink = self.name, cursor = to, "committing the cursor: {e}");
                    if self.pause(LOCAL_PAUSE).await == Wake::Stop {
                        return false;
                    }
                }
            }
        }
    }

    /// Counts a retry (metrics) and logs why, rate-limited by the caller's
    /// backoff.
    fn retried(&self, why: &str, delay: Duration) {
        self.shared.metrics.sink_retry(&self.name);
        tracing::warn!(
            sink = self.name,
            retry_in_ms = delay.as_millis() as u64,
            "delivery failed, retrying: {why}"
        );
    }
}

/// Series keys by id.
pub(crate) type Names = HashMap<u64, Arc<SeriesKey>>;

/// Reads up to `max_entries` entries after `after` from the store, decoded,
/// and learns the keys of the series they use into `names`. Blocking.
pub(crate) fn read_blocking(
    store: &crate::Store,
    sink: &str,
    after: u64,
    max_entries: usize,
    names: &mut Names,
) -> Result<Vec<Entry>, FeedError> {
    let raw = store.log_after(after, max_entries)?;
    let mut out = Vec::with_capacity(raw.len());
    for (seq, e) in raw {
        let mut entry = Entry {
            seq,
            stored_ns: e.stored_ns,
            readings: Vec::with_capacity(e.chunks.len()),
            aggregates: e.aggregates,
        };
        for (series, bytes) in &e.chunks {
            match crate::store::decode_chunk(bytes) {
                Ok(r) => entry.readings.push((*series, r)),
                Err(err) => {
                    // The entry was encoded by this collector; a chunk that
                    // does not decode is damage, not input.
                    tracing::error!(
                        sink,
                        seq,
                        series,
                        "event log chunk unreadable, its readings are not delivered: {err}"
                    );
                }
            }
        }
        out.push(entry);
    }
    let mut missing: Vec<u64> = out
        .iter()
        .flat_map(|e| {
            e.readings
                .iter()
                .map(|r| r.0)
                .chain(e.aggregates.iter().map(|a| a.0))
        })
        .filter(|id| !names.contains_key(id))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    for (id, n) in store.series_names(&missing)? {
        names.insert(id, Arc::new(n.key));
    }
    Ok(out)
}

/// Gathers entries after `after` until `max_rows` readings and aggregates,
/// waiting up to `linger` for more while fewer are there (batching by size
/// and time). Returns the entries in order and how many entries right
/// after `after` are gone (trimmed while the sink was not configured; the
/// caller counts them skipped). Empty with no gap only when stopping. The
/// decisions are [`Gathering`]'s; this moves the reads, waits and clock.
pub(crate) async fn gather(
    feed: &mut Feed,
    after: u64,
    max_rows: usize,
    linger: Duration,
) -> Result<(Vec<Entry>, u64), FeedError> {
    let clock = SystemClock;
    let mut gathering = Gathering::new(after, max_rows, linger);
    loop {
        match gathering.poll(clock.now_ns(), feed.head()) {
            Step::Read { after, head } => {
                let got = feed.read(after, READ_ENTRIES).await?;
                gathering.handle_read(head, got, feed.stopping());
            }
            Step::Wait { until: deadline } => {
                let left = deadline.map(|d| until(clock.now_ns(), d));
                gathering.handle_wake(feed.wait(left).await);
            }
            Step::Done => return Ok(gathering.finish()),
        }
    }
}
