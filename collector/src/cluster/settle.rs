//! What a worker does with a record, sans-IO: ack it or ask for it again,
//! and what it counts. A record can come more than once (a worker killed
//! after its commit, an ack lost, a retry asked for): the store's dedupe
//! answers a batch delivered again with `Applied::Duplicate`, which is
//! acked and counted as a duplicate, never stored twice. Only a failed
//! commit asks for the record again (after [`RETRY_DELAY`], a NATS `Nak`);
//! a record nobody can store (undecodable, refused for good by the store
//! or by this worker's limits) is acked and counted, since the front end
//! already acked it to the agent. [`super::worker`] moves the records,
//! talks to the writer and bumps the metrics this names.

use std::time::Duration;

use ferry_proto::session::reason;

use crate::ingest::{BadInput, Rejection};
use crate::store::{Applied, SessionOutcome};
use crate::writer::WriterError;

/// How long a record whose commit failed waits before it comes again.
pub(crate) const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The answer to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Done with it (stored, a duplicate, or refused for good).
    Ack,
    /// Deliver it again after this long.
    RetryAfter(Duration),
}

/// A record settled: the reply and what to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settle {
    /// `ferry_collector_cluster_records_total{role="worker",outcome}`.
    pub outcome: &'static str,
    /// Ack, or ask for it again.
    pub reply: Reply,
    /// For a batch: `ferry_batches_total`'s outcome, reason code and
    /// readings.
    pub batch: Option<(&'static str, u16, u64)>,
    /// A bad-input class to count and log.
    pub bad: Option<BadInput>,
    /// A session whose agent came back with a new journal
    /// (`ferry_journal_resets_total`).
    pub journal_reset: bool,
}

const ACK: Settle = Settle {
    outcome: "stored",
    reply: Reply::Ack,
    batch: None,
    bad: None,
    journal_reset: false,
};

const RETRY: Settle = Settle {
    outcome: "retried",
    reply: Reply::RetryAfter(RETRY_DELAY),
    ..ACK
};

/// A record that does not decode.
pub(crate) fn undecodable() -> Settle {
    Settle {
        outcome: "undecodable",
        bad: Some(BadInput::MalformedMessage),
        ..ACK
    }
}

/// A batch record this worker's limits refuse (`worker::prepare`).
pub(crate) fn refused_here(r: &Rejection) -> Settle {
    Settle {
        outcome: "rejected",
        batch: Some(("rejected", r.code, 0)),
        bad: Some(r.kind),
        ..ACK
    }
}

/// A session record, as the writer answered.
pub(crate) fn session(answer: &Result<SessionOutcome, WriterError>) -> Settle {
    match answer {
        Ok(SessionOutcome::Recorded { previous_epoch, .. }) => Settle {
            journal_reset: previous_epoch.is_some(),
            ..ACK
        },
        Ok(SessionOutcome::TooManyEpochs(_)) => Settle {
            outcome: "rejected",
            bad: Some(BadInput::DedupeFull),
            ..ACK
        },
        Err(_) => RETRY,
    }
}

/// A batch record of `readings` readings, as the writer answered.
pub(crate) fn batch(answer: &Result<Applied, WriterError>, readings: u64) -> Settle {
    match answer {
        Ok(Applied::Stored { readings, .. }) => Settle {
            batch: Some(("stored", 0, *readings)),
            ..ACK
        },
        Ok(Applied::Duplicate) => Settle {
            outcome: "duplicate",
            batch: Some(("duplicate", 0, readings)),
            ..ACK
        },
        Ok(Applied::Rejected { code, .. }) => Settle {
            outcome: "rejected",
            batch: Some(("rejected", *code, 0)),
            bad: Some(if *code == reason::DEDUPE_FULL {
                BadInput::DedupeFull
            } else {
                BadInput::InvalidBatch
            }),
            ..ACK
        },
        Err(_) => Settle {
            batch: Some(("rejected", reason::STORAGE, 0)),
            ..RETRY
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn failed() -> WriterError {
        WriterError::Store(Arc::new(crate::store::StoreError::Corrupt("test".into())))
    }

    #[test]
    fn a_batch_delivered_again_is_acked_as_a_duplicate_and_counted_with_its_readings() {
        // First delivery: stored (8 of 10 readings, two refused one by one).
        let first = batch(
            &Ok(Applied::Stored {
                readings: 8,
                refused: vec![],
            }),
            10,
        );
        assert_eq!(first.outcome, "stored");
        assert_eq!(first.reply, Reply::Ack);
        assert_eq!(first.batch, Some(("stored", 0, 8)));
        assert_eq!(first.bad, None);
        // The same record again (an ack lost, a worker killed after its
        // commit): the store's dedupe answers.
        let again = batch(&Ok(Applied::Duplicate), 10);
        assert_eq!(
            again,
            Settle {
                outcome: "duplicate",
                reply: Reply::Ack,
                batch: Some(("duplicate", 0, 10)),
                bad: None,
                journal_reset: false,
            }
        );
    }

    #[test]
    fn a_failed_commit_asks_for_the_record_again_a_second_later() {
        let s = batch(&Err(failed()), 10);
        assert_eq!(s.outcome, "retried");
        assert_eq!(s.reply, Reply::RetryAfter(Duration::from_secs(1)));
        assert_eq!(s.batch, Some(("rejected", reason::STORAGE, 0)));
        assert_eq!(s.bad, None);
        let s = session(&Err(failed()));
        assert_eq!(
            (s.outcome, s.reply),
            ("retried", Reply::RetryAfter(RETRY_DELAY))
        );
        assert_eq!(s.batch, None);
    }

    #[test]
    fn refusals_for_good_are_acked_and_counted_never_retried() {
        let full = batch(
            &Ok(Applied::Rejected {
                code: reason::DEDUPE_FULL,
                reason: "full".into(),
            }),
            10,
        );
        assert_eq!((full.outcome, full.reply), ("rejected", Reply::Ack));
        assert_eq!(full.batch, Some(("rejected", reason::DEDUPE_FULL, 0)));
        assert_eq!(full.bad, Some(BadInput::DedupeFull));
        let invalid = batch(
            &Ok(Applied::Rejected {
                code: reason::INVALID,
                reason: "bad".into(),
            }),
            10,
        );
        assert_eq!(invalid.bad, Some(BadInput::InvalidBatch));
        assert_eq!(invalid.reply, Reply::Ack);
        let here = refused_here(&Rejection::new(
            BadInput::InvalidBatch,
            reason::BAD_TIMESTAMP,
            "too old here",
        ));
        assert_eq!((here.outcome, here.reply), ("rejected", Reply::Ack));
        assert_eq!(here.batch, Some(("rejected", reason::BAD_TIMESTAMP, 0)));
        assert_eq!(here.bad, Some(BadInput::InvalidBatch));
        let garbage = undecodable();
        assert_eq!(
            (garbage.outcome, garbage.reply),
            ("undecodable", Reply::Ack)
        );
        assert_eq!(garbage.bad, Some(BadInput::MalformedMessage));
        assert_eq!(garbage.batch, None);
        let epochs = session(&Ok(SessionOutcome::TooManyEpochs(16)));
        assert_eq!((epochs.outcome, epochs.reply), ("rejected", Reply::Ack));
        assert_eq!(epochs.bad, Some(BadInput::DedupeFull));
    }

    #[test]
    fn a_session_with_a_new_journal_counts_a_reset_and_a_repeated_one_does_not() {
        let new = session(&Ok(SessionOutcome::Recorded {
            previous_epoch: Some(7),
            journal_resets: 1,
        }));
        assert_eq!(
            (new.outcome, new.reply, new.journal_reset),
            ("stored", Reply::Ack, true)
        );
        let same = session(&Ok(SessionOutcome::Recorded {
            previous_epoch: None,
            journal_resets: 1,
        }));
        assert_eq!(
            (same.outcome, same.reply, same.journal_reset),
            ("stored", Reply::Ack, false)
        );
    }
}
