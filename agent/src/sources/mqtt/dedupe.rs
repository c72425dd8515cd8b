//! Recognising QoS 1 redeliveries: the packet ids of committed messages,
//! kept in the journal with the commit that holds each message.
//!
//! Each stored QoS 1 message is remembered as `packet id → hash of topic and
//! payload`, written to the journal's `source_marks` table in the same
//! transaction as the message's readings (key: `mqtt\0<source>\0\0` + the
//! packet id, big-endian; value: the hash; one record per packet id, so at
//! most 65,536 per source). A PUBLISH the broker marks as a redelivery (DUP
//! set) whose packet id and hash match the remembered message is
//! acknowledged without being stored again; every other PUBLISH is stored
//! (and replaces the mark of its packet id).
//!
//! Why that is exact: the broker redelivers, with the DUP flag and the
//! original packet id, exactly the messages whose PUBACK it has not
//! received, however many it had in flight; it reuses a packet id only
//! after it has received the PUBACK for the previous message with that id.
//! A redelivery of a message the agent committed therefore finds its mark;
//! a redelivery of a message the agent had not committed finds the mark of
//! an earlier message under that id, which differs in topic or payload,
//! and is stored. The one case this does not cover: a message with the same
//! topic and payload as the earlier message under its packet id, which the
//! agent received and died before committing; its redelivery is taken for
//! the earlier message and not stored. Payloads that carry their own
//! timestamp never repeat, so for them the rule is exact.

use std::collections::HashMap;

/// FNV-1a over the topic, a zero byte and the payload: stable across
/// versions and restarts (it is stored). Never 0 (0 marks "none").
pub fn message_hash(topic: &str, payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in topic.as_bytes().iter().chain(&[0]).chain(payload) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// What to do with a received QoS 1 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it; put [`Dedupe::record`] in the commit.
    Store,
    /// A redelivery of a committed message: acknowledge it now.
    AckNow,
    /// A redelivery of a message whose commit is still under way:
    /// acknowledge it after that commit.
    AckAfterCommit,
}

/// The marks of one source.
#[derive(Debug)]
pub struct Dedupe {
    prefix: Vec<u8>,
    /// Per packet id, the hash of the last message stored under it (0:
    /// none); allocated on the first message.
    hashes: Vec<u64>,
    /// Packet ids with marks in batches not yet committed, and how many.
    pending: HashMap<u16, u32>,
}

impl Dedupe {
    /// The journal key prefix of source `name`'s marks.
    pub fn prefix(name: &str) -> Vec<u8> {
        let mut p = b"mqtt\0".to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&[0, 0]);
        p
    }

    /// The marks of source `name` as read from the journal
    /// ([`Journal::source_marks`](crate::journal::Journal::source_marks)
    /// with [`Dedupe::prefix`]); records that do not decode are ignored.
    pub fn load(name: &str, records: &[crate::journal::Mark]) -> Self {
        let mut d = Self {
            prefix: Self::prefix(name),
            hashes: Vec::new(),
            pending: HashMap::new(),
        };
        for (key, value) in records {
            let Some(id) = key.strip_prefix(d.prefix.as_slice()) else {
                continue;
            };
            let (Ok(id), Ok(hash)) = (<[u8; 2]>::try_from(id), <[u8; 8]>::try_from(&value[..]))
            else {
                continue;
            };
            *d.slot(u16::from_be_bytes(id)) = u64::from_le_bytes(hash);
        }
        d
    }

    fn slot(&mut self, pkid: u16) -> &mut u64 {
        if self.hashes.is_empty() {
            self.hashes = vec![0; 1 << 16];
        }
        &mut self.hashes[usize::from(pkid)]
    }

    /// Decides for a QoS 1 PUBLISH with packet id `pkid`, the DUP flag
    /// `dup` and [`message_hash`] `hash`.
    pub fn receive(&mut self, pkid: u16, dup: bool, hash: u64) -> Verdict {
        let slot = self.slot(pkid);
        if dup && *slot == hash {
            return if self.pending.contains_key(&pkid) {
                Verdict::AckAfterCommit
            } else {
                Verdict::AckNow
            };
        }
        *slot = hash;
        *self.pending.entry(pkid).or_default() += 1;
        Verdict::Store
    }

    /// The journal record of the mark of message `pkid` with `hash`.
    pub fn record(&self, pkid: u16, hash: u64) -> crate::journal::Mark {
        let mut key = self.prefix.clone();
        key.extend_from_slice(&pkid.to_be_bytes());
        (key, hash.to_le_bytes().to_vec())
    }

    /// The marks of `pkids` (one batch's) are committed.
    pub fn committed(&mut self, pkids: &[u16]) {
        for pkid in pkids {
            if let Some(n) = self.pending.get_mut(pkid) {
                *n -= 1;
                if *n == 0 {
                    self.pending.remove(pkid);
                }
            }
        }
    }

    /// The marks of `pkids` were not committed (the commit failed): forget
    /// them, so that their redeliveries are stored.
    pub fn forget(&mut self, pkids: &[u16]) {
        self.committed(pkids);
        for &pkid in pkids {
            *self.slot(pkid) = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_of_committed_messages_are_acked_not_stored() {
        let mut d = Dedupe::load("m", &[]);
        let h = message_hash("t", b"1");
        assert_eq!(d.receive(5, false, h), Verdict::Store);
        let rec = d.record(5, h);
        assert_eq!(rec.0, b"mqtt\0m\0\0\x00\x05");
        assert_eq!(
            d.receive(5, true, h),
            Verdict::AckAfterCommit,
            "commit under way"
        );
        // Another batch holding a message under another id commits: 5 is
        // still pending.
        assert_eq!(d.receive(6, false, message_hash("t", b"6")), Verdict::Store);
        d.committed(&[6]);
        assert_eq!(d.receive(5, true, h), Verdict::AckAfterCommit);
        d.committed(&[5]);
        assert_eq!(d.receive(5, true, h), Verdict::AckNow);
        assert_eq!(
            d.receive(5, true, message_hash("t", b"2")),
            Verdict::Store,
            "another message under a reused id"
        );
        assert_eq!(d.receive(7, true, h), Verdict::Store, "never stored");
        assert_eq!(
            d.receive(5, false, message_hash("t", b"2")),
            Verdict::Store,
            "no DUP: new"
        );

        // After a restart, from the journal's records.
        let mut d = Dedupe::load("m", std::slice::from_ref(&rec));
        assert_eq!(d.receive(5, true, h), Verdict::AckNow);
        assert_eq!(d.receive(9, false, h), Verdict::Store);
        let mut other = Dedupe::load("n", &[rec]);
        assert_eq!(
            other.receive(5, true, h),
            Verdict::Store,
            "another source's marks"
        );
    }

    #[test]
    fn failed_commits_forget_their_marks() {
        let mut d = Dedupe::load("m", &[]);
        let h = message_hash("t", b"1");
        assert_eq!(d.receive(1, false, h), Verdict::Store);
        d.forget(&[1]);
        assert_eq!(d.receive(1, true, h), Verdict::Store);
        d.committed(&[1]);
        assert_eq!(d.receive(1, true, h), Verdict::AckNow);
        assert_ne!(message_hash("", b""), 0);
    }
}
