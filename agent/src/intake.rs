//! How sources hand work to the journal writer and learn that it is durable.
//!
//! A source calls [`Intake::submit`] with a [`Work`] and awaits the answer:
//! `Ok` means the work is committed to the journal (fsynced), so the source
//! may now acknowledge it to its sender (a device ack, reading the next
//! chunk of a TCP stream). The channel to the writer is bounded: a source
//! that submits faster than the writer commits waits in `submit` — that is
//! the backpressure path for TCP and serial sources.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::journal::{CommitReport, Work};
use crate::limits::MemoryBudget;
use crate::sources::line::KeyCache;

/// Why a submission was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The journal is at its disk budget under the `backpressure` policy:
    /// retry later (TCP sources stop reading; UDP sources drop and count).
    #[error("journal full ({used} of {budget} bytes)")]
    Full {
        /// Bytes in use.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// The journal's filesystem is full (below its reserve) or a journal
    /// write failed and the journal waits to be reopened: retry later, as
    /// for [`SubmitError::Full`].
    #[error("disk full: {free} bytes free on the journal's filesystem")]
    DiskFull {
        /// Free bytes measured.
        free: u64,
    },
    /// The agent is shutting down; nothing was committed.
    #[error("agent shutting down")]
    Shutdown,
    /// The journal failed to commit; nothing was committed.
    #[error("journal error: {0}")]
    Storage(String),
}

/// A submission that was not committed: why, and the work itself when it
/// can be submitted again as it is (the journal was full), so that a source
/// keeps no copy of what it submits.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: SubmitError,
    /// The work, untouched; `None` when the writer no longer has it (the
    /// commit that held it failed in storage, or the agent is stopping).
    pub work: Option<Box<Work>>,
}

impl Refused {
    /// `work` refused because the journal is full; the source may retry it.
    pub fn full(used: u64, budget: u64, work: Work) -> Self {
        Self {
            error: SubmitError::Full { used, budget },
            work: Some(Box::new(work)),
        }
    }
}

impl From<SubmitError> for Refused {
    fn from(error: SubmitError) -> Self {
        Self { error, work: None }
    }
}

/// The writer's answer to a submission.
pub type Outcome = Result<CommitReport, Refused>;

/// One unit of work and where to send the outcome.
#[derive(Debug)]
pub struct Submission {
    /// What to commit.
    pub work: Work,
    /// Answered after the commit (or its failure).
    pub done: oneshot::Sender<Outcome>,
}

/// A source's handle on the journal writer, and on the agent's memory
/// budget ([`Intake::budget`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Intake {
    tx: mpsc::Sender<Submission>,
    budget: Option<Arc<MemoryBudget>>,
}

impl Intake {
    /// A handle and the writer's receiving end, with room for `bound`
    /// submissions in the queue.
    pub fn channel(bound: usize) -> (Self, mpsc::Receiver<Submission>) {
        let (tx, rx) = mpsc::channel(bound.max(1));
        (Self { tx, budget: None }, rx)
    }

    /// This handle, with sources charging their caches and buffers to
    /// `budget`.
    pub fn with_budget(mut self, budget: Arc<MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The agent's memory budget, if sources are bound by one.
    pub fn budget(&self) -> Option<&Arc<MemoryBudget>> {
        self.budget.as_ref()
    }

    /// A series-key cache for one connection or socket, charged to the
    /// budget when there is one.
    pub fn key_cache(&self) -> KeyCache {
        self.budget
            .clone()
            .map_or_else(KeyCache::default, KeyCache::with_budget)
    }

    /// Commits `work` durably; returns when it is in the journal.
    pub async fn submit(&self, work: Work) -> Result<CommitReport, SubmitError> {
        self.submit_or_return(work).await.map_err(|r| r.error)
    }

    /// [`submit`](Self::submit), handing the work back when it was refused
    /// but can be retried ([`Refused::work`]).
    pub async fn submit_or_return(&self, work: Work) -> Outcome {
        let (done, answer) = oneshot::channel();
        if let Err(e) = self.tx.send(Submission { work, done }).await {
            return Err(Refused {
                error: SubmitError::Shutdown,
                work: Some(Box::new(e.0.work)),
            });
        }
        answer
            .await
            .map_err(|_| Refused::from(SubmitError::Shutdown))?
    }

    /// Like [`submit`](Self::submit) but never waits for queue space:
    /// `Err(work)` back when the queue is full (UDP sources count a drop).
    // The work comes back by value, unboxed: a UDP source hands back what a
    // full queue refused, and a box per refusal would cost more than the move.
    #[allow(clippy::result_large_err)]
    pub fn try_submit(&self, work: Work) -> Result<oneshot::Receiver<Outcome>, Work> {
        let (done, answer) = oneshot::channel();
        match self.tx.try_send(Submission { work, done }) {
            Ok(()) => Ok(answer),
            Err(mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s)) => {
                Err(s.work)
            }
        }
    }
}
