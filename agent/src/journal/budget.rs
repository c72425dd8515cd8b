//! The disk budget (invariant 5): refusing data under `backpressure`,
//! dropping the oldest batches not in flight under `drop_oldest`.

use ferry_proto::health;

use super::*;

impl Journal {
    /// `Some((used, budget))` when a commit carrying readings or device
    /// reports would be refused ([`CommitError::Full`], `backpressure`).
    pub fn refuses_data(&self) -> Option<(u64, u64)> {
        (self.config.policy == FullPolicy::Backpressure && self.bytes >= self.config.budget_bytes)
            .then_some((self.bytes, self.config.budget_bytes))
    }

    /// Under `drop_oldest`, drops the oldest batches not in flight until the
    /// journal is within its budget (invariants 4 and 5). True if any was.
    pub(super) fn enforce_budget(
        &mut self,
        txn: &redb::WriteTransaction,
        report: &mut CommitReport,
    ) -> Result<bool, CommitError> {
        let mut dropped = false;
        if self.config.policy != FullPolicy::DropOldest {
            return Ok(false);
        }
        while self.bytes > self.config.budget_bytes {
            let victim = self
                .outbox
                .keys()
                .find(|seq| !self.in_flight.contains(seq))
                .copied();
            let Some(seq) = victim else { break };
            report.dropped_readings +=
                self.remove_batch(txn, seq, Some(health::DROPPED_JOURNAL_FULL))?;
            report.dropped_batches += 1;
            dropped = true;
        }
        Ok(dropped)
    }
}
