//! A chunk's way into the journal, sans-IO: what each answer of the writer
//! means for the connection and its counters ([`ChunkSubmission`]). The
//! connection's task only submits, sleeps until a retry's deadline and
//! acts on the [`Step`].

use std::net::SocketAddr;
use std::time::Duration;

use ferry_clock::Backoff;

use super::super::SourceStats;
use crate::intake::{Refused, SubmitError};
use crate::journal::Work;

/// First pause before resubmitting work the journal refused; doubles up to
/// [`MAX_RETRY_PAUSE`] ([`Backoff`]).
pub const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between resubmissions of a refused chunk.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What the connection does after an answer.
#[derive(Debug)]
pub enum Step {
    /// The chunk is committed: read on.
    Committed,
    /// Refused for now (journal or disk full): submit `work` again at `at`,
    /// reading nothing meanwhile.
    RetryAt {
        /// When (ns since the epoch).
        at: i64,
        /// The chunk's work, handed back.
        work: Box<Work>,
    },
    /// The chunk is lost (counted in `dropped_readings`): close the
    /// connection, so that its sender sees the failure (or the agent stops).
    Close,
}

/// One chunk's submission: its counts, credited once it is committed, and
/// the pause between retries.
#[derive(Debug)]
pub struct ChunkSubmission {
    lines: u64,
    readings: u64,
    pause: Backoff,
}

impl ChunkSubmission {
    /// A chunk of `lines` accepted lines holding `readings` readings.
    pub fn new(lines: u64, readings: u64) -> Self {
        Self {
            lines,
            readings,
            pause: Backoff::new(FIRST_RETRY_PAUSE, MAX_RETRY_PAUSE),
        }
    }

    /// The writer answered at `now` (`source` and `peer` name the
    /// connection in logs).
    pub fn handle_answer(
        &mut self,
        now: i64,
        answer: Result<(), Refused>,
        stats: &SourceStats,
        source: &str,
        peer: SocketAddr,
    ) -> Step {
        match answer {
            Ok(()) => {
                stats.add(&stats.lines_accepted, self.lines);
                stats.add(&stats.readings_accepted, self.readings);
                Step::Committed
            }
            Err(Refused {
                error: SubmitError::Shutdown,
                ..
            }) => self.handle_stop(stats),
            Err(Refused { error, work: None }) => {
                // The commit holding the chunk failed in storage: the
                // journal cannot take it now, and the sender has no
                // acknowledgement to wait for. Closing the connection
                // tells it something went wrong.
                tracing::error!(source, %peer, %error, readings = self.readings,
                    "journal commit failed; chunk dropped and connection closed");
                stats.add(&stats.dropped_readings, self.readings);
                Step::Close
            }
            Err(Refused {
                error,
                work: Some(work),
            }) => {
                tracing::debug!(source, %peer, %error,
                    "journal refused a chunk; pausing this connection");
                Step::RetryAt {
                    at: self.pause.next_at(now),
                    work,
                }
            }
        }
    }

    /// The agent stops while the chunk waits for a retry: it is lost.
    pub fn handle_stop(&self, stats: &SourceStats) -> Step {
        stats.add(&stats.dropped_readings, self.readings);
        Step::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const T0: i64 = 1_700_000_000 * ferry_clock::SEC;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    fn full() -> Result<(), Refused> {
        Err(Refused::full(10, 8, Work::default()))
    }

    fn counts(s: &SourceStats) -> [u64; 3] {
        [
            s.lines_accepted(),
            s.readings_accepted(),
            s.dropped_readings(),
        ]
    }

    #[test]
    fn a_committed_chunk_credits_its_lines_and_readings() {
        let stats = SourceStats::default();
        let mut c = ChunkSubmission::new(3, 7);
        let step = c.handle_answer(T0, Ok(()), &stats, "tcp-in", peer());
        assert!(matches!(step, Step::Committed));
        assert_eq!(counts(&stats), [3, 7, 0]);
    }

    #[test]
    fn a_refused_chunk_is_retried_after_doubling_pauses_up_to_a_second() {
        let stats = SourceStats::default();
        let mut c = ChunkSubmission::new(3, 7);
        let mut now = T0;
        let mut pauses = Vec::new();
        for _ in 0..9 {
            let Step::RetryAt { at, .. } = c.handle_answer(now, full(), &stats, "s", peer()) else {
                panic!("retried");
            };
            pauses.push((at - now) / MS);
            now = at;
        }
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(counts(&stats), [0, 0, 0], "nothing counted while it waits");
        let disk = Err(Refused {
            error: SubmitError::DiskFull { free: 1 },
            work: Some(Box::default()),
        });
        assert!(matches!(
            c.handle_answer(now, disk, &stats, "s", peer()),
            Step::RetryAt { .. }
        ));
        assert!(matches!(
            c.handle_answer(now, Ok(()), &stats, "s", peer()),
            Step::Committed
        ));
        assert_eq!(counts(&stats), [3, 7, 0]);
    }

    #[test]
    fn a_failed_commit_drops_the_chunk_and_closes_the_connection() {
        let stats = SourceStats::default();
        let mut c = ChunkSubmission::new(3, 7);
        let failed = Err(Refused::from(SubmitError::Storage("io".into())));
        assert!(matches!(
            c.handle_answer(T0, failed, &stats, "s", peer()),
            Step::Close
        ));
        assert_eq!(counts(&stats), [0, 0, 7]);
    }

    #[test]
    fn stopping_drops_the_chunk_whether_answered_or_waiting() {
        let stats = SourceStats::default();
        let mut c = ChunkSubmission::new(3, 7);
        let shutdown = Err(Refused {
            error: SubmitError::Shutdown,
            work: Some(Box::default()),
        });
        assert!(matches!(
            c.handle_answer(T0, shutdown, &stats, "s", peer()),
            Step::Close
        ));
        assert_eq!(counts(&stats), [0, 0, 7]);
        assert!(matches!(c.handle_stop(&stats), Step::Close));
        assert_eq!(counts(&stats), [0, 0, 14]);
    }
}
