//! Recognising QoS 1 redeliveries: the packet ids of committed messages,
//! kept in the journal with the commit that holds each message.
//!
//! A message is remembered as `(packet id, hash of topic and payload)` in a
//! ring of the last [`WINDOW`] QoS 1 messages the source stored, written to
//! the journal's `source_marks` table in the same transaction as the
//! message's readings (key: `mqtt\0<source>\0\0` + ring slot, value: packet
//! id, hash, sequence number). A PUBLISH the broker marks as a redelivery
//! (DUP set) whose packet id and hash match a remembered message is
//! acknowledged without being stored again; every other PUBLISH is stored.
//!
//! Why that is exact: the broker redelivers, with the DUP flag and the
//! original packet id, exactly the messages whose PUBACK it has not
//! received; it reuses a packet id only after it has received the PUBACK
//! for the previous message with that id, and Mosquitto hands ids out in
//! sequence within a run (an id comes back 65,535 messages later). A
//! redelivery of a message
//! the agent committed therefore finds its mark (the ring holds the last
//! [`WINDOW`] messages, far more than a broker keeps in flight: Mosquitto's
//! `max_inflight_messages` is 20); a redelivery of a message the agent had
//! not committed finds none and is stored (a redelivered message that
//! differs from the remembered one only in its payload or topic is a
//! different message). The one case this does not cover: a broker that
//! reuses an id within [`WINDOW`] messages (Mosquitto may, right after its
//! own restart) for a message with the same topic and payload as the one
//! remembered under that id, and the agent dies after receiving it and
//! before committing it; the redelivery would then be taken for the earlier
//! message and not stored. Payloads that carry their own timestamp never
//! repeat, so for them the rule is exact.

use std::collections::HashMap;

/// Messages remembered per source.
pub const WINDOW: u64 = 4096;

/// FNV-1a over the topic, a zero byte and the payload: stable across
/// versions and restarts (it is stored).
pub fn message_hash(topic: &str, payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in topic.as_bytes().iter().chain(&[0]).chain(payload) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A remembered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    hash: u64,
    seq: u64,
}

/// What to do with a received QoS 1 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it; put this mark in the commit.
    Store {
        /// Its sequence number.
        seq: u64,
    },
    /// A redelivery of a committed message: acknowledge it now.
    AckNow,
    /// A redelivery of a message whose commit is still under way:
    /// acknowledge it after the next commit.
    AckAfterCommit,
}

/// The marks of one source.
#[derive(Debug)]
pub struct Dedupe {
    prefix: Vec<u8>,
    by_pkid: HashMap<u16, Mark>,
    /// The next sequence number.
    next: u64,
    /// Sequence numbers below this are committed.
    committed: u64,
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
    pub fn load(name: &str, records: &[(Vec<u8>, Vec<u8>)]) -> Self {
        let prefix = Self::prefix(name);
        let mut by_pkid: HashMap<u16, Mark> = HashMap::new();
        let mut next = 0;
        for (key, value) in records {
            if !key.starts_with(&prefix) || value.len() != 18 {
                continue;
            }
            let pkid = u16::from_le_bytes([value[0], value[1]]);
            let hash = u64::from_le_bytes(value[2..10].try_into().unwrap_or_default());
            let seq = u64::from_le_bytes(value[10..18].try_into().unwrap_or_default());
            next = next.max(seq + 1);
            let newer = by_pkid.get(&pkid).is_none_or(|m| m.seq < seq);
            if newer {
                by_pkid.insert(pkid, Mark { hash, seq });
            }
        }
        Self {
            prefix,
            by_pkid,
            next,
            committed: next,
        }
    }

    /// Decides for a QoS 1 PUBLISH with packet id `pkid` and the DUP flag
    /// `dup`.
    pub fn receive(&mut self, pkid: u16, dup: bool, hash: u64) -> Verdict {
        if dup
            && let Some(m) = self.by_pkid.get(&pkid)
            && m.hash == hash
            && m.seq + WINDOW >= self.next
        {
            return if m.seq < self.committed {
                Verdict::AckNow
            } else {
                Verdict::AckAfterCommit
            };
        }
        let seq = self.next;
        self.next += 1;
        self.by_pkid.insert(pkid, Mark { hash, seq });
        Verdict::Store { seq }
    }

    /// The journal record of the mark `seq` of message `pkid`.
    pub fn record(&self, pkid: u16, hash: u64, seq: u64) -> (Vec<u8>, Vec<u8>) {
        let mut key = self.prefix.clone();
        key.extend_from_slice(&((seq % WINDOW) as u16).to_be_bytes());
        let mut value = Vec::with_capacity(18);
        value.extend_from_slice(&pkid.to_le_bytes());
        value.extend_from_slice(&hash.to_le_bytes());
        value.extend_from_slice(&seq.to_le_bytes());
        (key, value)
    }

    /// Every mark handed out so far is committed.
    pub fn committed(&mut self) {
        self.committed = self.next;
    }

    /// The marks `seqs` were not committed (the commit failed): forget
    /// them, so that their redeliveries are stored.
    pub fn forget(&mut self, seqs: &[(u16, u64)]) {
        for (pkid, seq) in seqs {
            if self.by_pkid.get(pkid).is_some_and(|m| m.seq == *seq) {
                self.by_pkid.remove(pkid);
            }
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
        assert_eq!(d.receive(5, false, h), Verdict::Store { seq: 0 });
        let rec = d.record(5, h, 0);
        assert_eq!(
            d.receive(5, true, h),
            Verdict::AckAfterCommit,
            "commit under way"
        );
        d.committed();
        assert_eq!(d.receive(5, true, h), Verdict::AckNow);
        assert_eq!(
            d.receive(5, true, message_hash("t", b"2")),
            Verdict::Store { seq: 1 },
            "another message under a reused id"
        );
        assert_eq!(
            d.receive(6, true, h),
            Verdict::Store { seq: 2 },
            "never committed"
        );
        assert_eq!(
            d.receive(7, false, h),
            Verdict::Store { seq: 3 },
            "not a redelivery"
        );

        // After a restart, from the journal's records.
        let mut d = Dedupe::load("m", &[rec.clone()]);
        assert_eq!(d.receive(5, true, h), Verdict::AckNow);
        assert_eq!(d.receive(9, false, h), Verdict::Store { seq: 1 });
        let other = Dedupe::load("n", &[rec]);
        assert!(other.by_pkid.is_empty(), "another source's marks");
    }

    #[test]
    fn failed_commits_forget_their_marks_and_old_marks_expire() {
        let mut d = Dedupe::load("m", &[]);
        let h = message_hash("t", b"1");
        let Verdict::Store { seq } = d.receive(1, false, h) else {
            panic!()
        };
        d.forget(&[(1, seq)]);
        assert_eq!(d.receive(1, true, h), Verdict::Store { seq: 1 });
        d.committed();
        for i in 0..WINDOW {
            d.receive(2 + (i % 1000) as u16, false, i);
        }
        assert_eq!(
            d.receive(1, true, h),
            Verdict::Store { seq: WINDOW + 2 },
            "outside the window"
        );
        // The ring's slots wrap: a record's key is its slot.
        assert_eq!(d.record(1, h, 3).0, d.record(1, h, 3 + WINDOW).0);
    }
}
