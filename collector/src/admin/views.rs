//! What the operator sees, computed from the store: the agents table
//! (records joined with live connections and reported statuses) and the
//! losses ledger (drop rows per agent and reason, ledgers per epoch).
//! Shared by the CLI's local mode and the HTTP API.

use serde::{Deserialize, Serialize};

use crate::server::LiveConnection;
use crate::store::{AgentRecord, Store, StoreError};

/// One row of the agents table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// `connected`, `idle` (seen before, not connected), `enrolled` (never
    /// seen) or `revoked`.
    pub state: String,
    /// Last stored batch, ns since the epoch (0: never).
    #[serde(with = "crate::json::ns")]
    pub last_seen_ns: i64,
    /// Remote address of the live connection, or of the last stored batch.
    pub remote: String,
    /// Batches stored.
    pub batches: u64,
    /// Readings stored.
    pub readings: u64,
    /// Highest batch sequence stored.
    pub last_seq: Option<u64>,
    /// Readings the agent reported as dropped.
    pub dropped: u64,
    /// Readings of its batches the collector refused (bad timestamps,
    /// series past the store's limit).
    #[serde(default)]
    pub refused: u64,
    /// Open connections.
    pub connections: usize,
    /// Its journal's identity (16 hex digits; empty when none is known).
    #[serde(default)]
    pub epoch: String,
    /// Since when `epoch` is its journal, ns since the epoch (0: unknown).
    #[serde(default, with = "crate::json::ns")]
    pub epoch_since_ns: i64,
    /// The journal epoch before `epoch` (empty: none).
    #[serde(default)]
    pub previous_epoch: String,
    /// Times it came back with another journal (quarantined, wiped,
    /// re-imaged): each is logged and shown here; nothing is dropped.
    #[serde(default)]
    pub journal_resets: u64,
    /// Readings in its journal not yet acknowledged, from its newest
    /// status report since this collector started (null: none reported).
    #[serde(default)]
    pub backlog_readings: Option<u64>,
    /// Sealed batches waiting in its journal, from the same report.
    #[serde(default)]
    pub backlog_batches: Option<u64>,
    /// `created_ns` of its oldest unacknowledged batch, from the same
    /// report (0: none waiting).
    #[serde(default, with = "crate::json::ns")]
    pub oldest_unacked_ns: i64,
    /// When that report arrived, ns since the epoch (0: none).
    #[serde(default, with = "crate::json::ns")]
    pub status_ns: i64,
}

/// An epoch as operators see it: 16 hex digits, empty for none.
pub fn epoch_text(epoch: u64) -> String {
    if epoch == 0 {
        String::new()
    } else {
        format!("{epoch:016x}")
    }
}

/// One row of the drops table: readings lost for one agent, device and
/// reason, and who counted them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRow {
    /// Agent id.
    pub agent: String,
    /// For the agent's counts, the origin it reported (a device id, or a
    /// source name for readings without a device tag); for the collector's,
    /// the series' `device` tag. Empty: none.
    pub device: String,
    /// Why: a health kind name (`journal_full`, `late`, `device_ring`,
    /// `queue_full`, `rejected_batch`, `rejected_input`, `memory_budget`,
    /// `skipped_string_fields`, `kind_<n>`) or a
    /// refusal reason (`bad_timestamp`, `series_limit`).
    pub reason: String,
    /// `agent` (reported in its health records) or `collector` (refused at
    /// ingest).
    pub counted_by: String,
    /// Readings (for `device_ring`: device reports; for `rejected_input`:
    /// lines, frames or MQTT messages; for `skipped_string_fields`: fields).
    pub readings: u64,
}

/// One agent's ledger: what its sources handed over, and where it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Agent id.
    pub agent: String,
    /// Readings its sources handed to its journal (health kind 7, reported
    /// every `health_interval`).
    pub received: u64,
    /// Readings stored: raw readings and readings inside stored windows.
    pub stored: u64,
    /// Readings it reported dropped after receiving them (kinds 1, 3, 6,
    /// 10).
    pub dropped: u64,
    /// Readings the collector refused from its stored batches.
    pub refused: u64,
    /// `received − stored − dropped − refused`: readings still on their way
    /// (in the agent's journal, or received since its last health report
    /// when negative). 0 once everything is delivered and reported.
    pub in_transit: i64,
}

/// The drops table from the store: agents' health records (all kinds but
/// `received`) and the collector's refusals, by agent, device and reason.
pub fn drop_rows(store: &Store) -> Result<Vec<DropRow>, StoreError> {
    let mut rows: Vec<DropRow> = store
        .health()?
        .into_iter()
        .filter(|(_, _, kind, _)| *kind != ferry_proto::health::RECEIVED)
        .map(|(agent, device, kind, readings)| DropRow {
            agent,
            device,
            reason: ferry_proto::health::name(kind)
                .map_or_else(|| format!("kind_{kind}"), str::to_owned),
            counted_by: "agent".into(),
            readings,
        })
        .collect();
    rows.extend(
        store
            .refused()?
            .into_iter()
            .map(|(agent, device, code, readings)| DropRow {
                agent,
                device,
                reason: ferry_proto::session::reason::name(code).to_owned(),
                counted_by: "collector".into(),
                readings,
            }),
    );
    rows.sort_by(|a, b| {
        (&a.agent, &a.device, &a.reason, &a.counted_by).cmp(&(
            &b.agent,
            &b.device,
            &b.reason,
            &b.counted_by,
        ))
    });
    Ok(rows)
}

/// Every agent's ledger from the store.
pub fn ledgers(store: &Store) -> Result<Vec<Ledger>, StoreError> {
    use ferry_proto::health::{
        DROPPED_CORRUPT_JOURNAL, DROPPED_JOURNAL_FULL, DROPPED_LATE, DROPPED_REJECTED, RECEIVED,
    };
    let mut by_agent: std::collections::BTreeMap<String, Ledger> = store
        .agents()?
        .into_iter()
        .filter(|a| a.batches > 0)
        .map(|a| {
            let ledger = Ledger {
                agent: a.id.clone(),
                received: 0,
                stored: a.readings + a.window_readings,
                dropped: 0,
                refused: a.refused,
                in_transit: 0,
            };
            (a.id, ledger)
        })
        .collect();
    for (agent, _, kind, n) in store.health()? {
        let Some(l) = by_agent.get_mut(&agent) else {
            continue;
        };
        match kind {
            RECEIVED => l.received += n,
            DROPPED_JOURNAL_FULL | DROPPED_LATE | DROPPED_REJECTED | DROPPED_CORRUPT_JOURNAL => {
                l.dropped += n
            }
            _ => {}
        }
    }
    Ok(by_agent
        .into_values()
        .map(|mut l| {
            let out = l.stored as i128 + l.dropped as i128 + l.refused as i128;
            l.in_transit = i64::try_from(l.received as i128 - out).unwrap_or(i64::MIN);
            l
        })
        .collect())
}

/// What `ferry-collector drops` and `GET /api/v1/drops` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Per agent, device and reason.
    pub drops: Vec<DropRow>,
    /// Per agent.
    pub ledgers: Vec<Ledger>,
}

/// The drops table and ledgers from the store.
pub fn drops(store: &Store) -> Result<Drops, StoreError> {
    Ok(Drops {
        drops: drop_rows(store)?,
        ledgers: ledgers(store)?,
    })
}

/// Builds the agents table from the store, the enrolled certificates and
/// the live connections.
pub fn agent_views(
    records: Vec<AgentRecord>,
    enrolled: Vec<String>,
    live: &[LiveConnection],
    statuses: &std::collections::HashMap<String, crate::server::ReportedStatus>,
) -> Vec<AgentView> {
    let mut by_id: std::collections::BTreeMap<String, AgentRecord> =
        records.into_iter().map(|r| (r.id.clone(), r)).collect();
    for id in enrolled {
        by_id.entry(id.clone()).or_insert_with(|| AgentRecord {
            id,
            ..AgentRecord::default()
        });
    }
    for c in live {
        by_id.entry(c.agent.clone()).or_insert_with(|| AgentRecord {
            id: c.agent.clone(),
            ..AgentRecord::default()
        });
    }
    let mut conns_of: std::collections::HashMap<&str, Vec<&LiveConnection>> =
        std::collections::HashMap::new();
    for c in live {
        conns_of.entry(c.agent.as_str()).or_default().push(c);
    }
    by_id
        .into_values()
        .map(|r| {
            let conns = conns_of.remove(r.id.as_str()).unwrap_or_default();
            let reported = statuses.get(&r.id);
            let state = if r.revoked {
                "revoked"
            } else if !conns.is_empty() {
                "connected"
            } else if r.batches > 0 {
                "idle"
            } else {
                "enrolled"
            };
            AgentView {
                state: state.into(),
                last_seen_ns: r.last_seen_ns,
                remote: conns
                    .first()
                    .map_or(r.last_addr.clone(), |c| c.remote.to_string()),
                batches: r.batches,
                readings: r.readings,
                last_seq: r.last_seq,
                dropped: r.dropped,
                refused: r.refused,
                connections: conns.len(),
                epoch: epoch_text(r.epoch),
                epoch_since_ns: r.epoch_since_ns,
                previous_epoch: epoch_text(r.previous_epoch),
                journal_resets: r.journal_resets,
                backlog_readings: reported.map(|s| s.status.backlog_readings),
                backlog_batches: reported.map(|s| s.status.backlog_batches),
                oldest_unacked_ns: reported.map_or(0, |s| s.status.oldest_unacked_ns),
                status_ns: reported.map_or(0, |s| s.received_ns),
                id: r.id,
            }
        })
        .collect()
}
