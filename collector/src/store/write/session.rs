//! Recording a session's Hello: the agent's journal epoch opened or
//! resumed (bounded by the dedupe limits), in the same write transaction as
//! the batches of its group or in one of its own.

use std::sync::Arc;

use redb::WriteTransaction;

use super::*;
use crate::store::dedupe::{self, DEDUPE, EpochRecord};
use crate::store::{Store, StoreError};

/// A session's Hello, to record ([`Store::apply_commit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// The agent, from its certificate.
    pub agent: Arc<str>,
    /// `Hello.epoch`.
    pub epoch: u64,
    /// `Hello.resolved_below`.
    pub resolved_below: u64,
}

/// Records a Hello: the agent's current journal epoch (a change is a
/// journal reset, counted and kept in its record), the epoch's record and
/// its `resolved_below` promise.
pub(super) fn session_in(
    txn: &WriteTransaction,
    s: &SessionRequest,
    limits: DedupeLimits,
    now_ns: i64,
) -> Result<SessionOutcome, StoreError> {
    let (agent, epoch) = (&*s.agent, s.epoch);
    let mut rec = load_agent(txn, agent)?;
    let mut erec = match dedupe::load_epoch(txn, agent, epoch)? {
        Some(e) => e,
        None => {
            if rec.epochs >= limits.max_epochs {
                return Ok(SessionOutcome::TooManyEpochs(rec.epochs));
            }
            rec.epochs += 1;
            EpochRecord {
                first_seen_ns: now_ns,
                ..EpochRecord::default()
            }
        }
    };
    let mut previous_epoch = None;
    if epoch != rec.epoch {
        if rec.epoch != 0 || rec.batches > 0 {
            rec.journal_resets += 1;
            previous_epoch = Some(rec.epoch);
            rec.previous_epoch = rec.epoch;
        }
        rec.epoch = epoch;
        rec.epoch_since_ns = now_ns;
        rec.last_seq = None;
    }
    if s.resolved_below > erec.resolved_below {
        let mut ranges = txn.open_table(DEDUPE)?;
        let delta = dedupe::resolve_below(&mut ranges, agent, epoch, s.resolved_below)?;
        dedupe::adjust(&mut erec.ranges, delta);
        erec.resolved_below = s.resolved_below;
    }
    dedupe::save_epoch(txn, agent, epoch, &erec)?;
    save_agent(txn, &rec)?;
    Ok(SessionOutcome::Recorded {
        previous_epoch,
        journal_resets: rec.journal_resets,
    })
}

impl Store {
    /// Records one session's Hello in a durable transaction of its own
    /// (the server groups them with batches: [`Store::apply_commit`]).
    pub fn open_session(
        &self,
        agent: &str,
        epoch: u64,
        resolved_below: u64,
        limits: DedupeLimits,
        now_ns: i64,
    ) -> Result<SessionOutcome, StoreError> {
        let mut txn = self.db().begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let request = SessionRequest {
            agent: Arc::from(agent),
            epoch,
            resolved_below,
        };
        let out = session_in(&txn, &request, limits, now_ns)?;
        txn.commit()?;
        Ok(out)
    }
}
