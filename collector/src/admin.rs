//! Operator access for the CLI: through the running server's HTTP API on
//! loopback, or, when no server runs, by opening the data directory.
//!
//! The running server writes its HTTP address to `<data_dir>/collector.http`
//! and a fresh admin credential to `<data_dir>/admin.token` (0600) at start,
//! and removes both at shutdown. The CLI connects there with that
//! credential (or `$FERRY_TOKEN`); when the file is missing or nobody
//! answers (a server killed with `kill -9` leaves the file behind), it
//! opens the store itself. redb locks the store file, so the two never
//! write at once; the same lock keeps the CLI from editing `tokens.json`
//! behind a running server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::auth::{self, AuthError, CreatedToken, Role, Token, TokenView};
use crate::pki;
use crate::query::{QueryError, QueryParams, Selector};
use crate::server::LiveConnection;
use crate::store::{AgentRecord, SeriesInfo, SeriesResult, Store, StoreError};

/// File in the data directory holding the running server's HTTP address.
pub const ADDR_FILE: &str = "collector.http";

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

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The query is invalid.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The agent id is invalid.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// A token operation failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The server answered with an error.
    #[error("the collector at {addr} answered {status}: {message}")]
    Server {
        /// Its address.
        addr: SocketAddr,
        /// HTTP status.
        status: u16,
        /// Its error text.
        message: String,
    },
    /// A parameter is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The operation needs a running collector.
    #[error("no collector is running for {0} (nothing to reload)")]
    NotRunning(PathBuf),
    /// Talking to the server failed midway.
    #[error("talking to the collector at {addr}: {message}")]
    Http {
        /// Its address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
}

/// A running server, and the credential the CLI sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// Sent as `Authorization: Bearer`, when there is one.
    pub token: Option<Token>,
}

impl Remote {
    /// `addr` with `token`.
    pub fn new(addr: SocketAddr, token: Option<Token>) -> Self {
        Self { addr, token }
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// Where the CLI gets its answers.
#[derive(Debug)]
pub enum Admin {
    /// A running server's HTTP API.
    Remote(Remote),
    /// The data directory, opened directly.
    Local {
        /// The data directory.
        data_dir: PathBuf,
        /// Its store.
        store: Store,
    },
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Result of a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeResult {
    /// The agent.
    pub agent: String,
    /// False if it was already revoked.
    pub changed: bool,
    /// Connections closed (0 when no server ran).
    pub closed: usize,
}

impl Admin {
    /// Finds the running server for `data_dir`, or opens the store. The
    /// server is called with the token in `$FERRY_TOKEN` if set, else with
    /// the local admin credential `<data_dir>/admin.token`.
    pub async fn connect(data_dir: &Path) -> Result<Self, AdminError> {
        if let Ok(text) = std::fs::read_to_string(data_dir.join(ADDR_FILE))
            && let Ok(addr) = text.trim().parse::<SocketAddr>()
            && TcpStream::connect(addr).await.is_ok()
        {
            let token = match std::env::var(auth::TOKEN_ENV) {
                Ok(t) if !t.trim().is_empty() => Some(
                    Token::parse(&t)
                        .map_err(|e| AdminError::Invalid(format!("${}: {e}", auth::TOKEN_ENV)))?,
                ),
                _ => auth::read_local_token(data_dir),
            };
            return Ok(Admin::Remote(Remote::new(addr, token)));
        }
        // Never create a store where there is no collector.
        if !data_dir.join(pki::CA_CERT).exists() {
            return Err(pki::PkiError::NotInitialized(data_dir.to_owned()).into());
        }
        let store = Store::open(&data_dir.join(crate::STORE_FILE))?;
        Ok(Admin::Local {
            data_dir: data_dir.to_owned(),
            store,
        })
    }

    /// The agents table.
    pub async fn agents(&self) -> Result<Vec<AgentView>, AdminError> {
        match self {
            Admin::Remote(addr) => request(*addr, "GET", "/api/v1/agents").await,
            Admin::Local { data_dir, store } => Ok(agent_views(
                store.agents()?,
                pki::enrolled_agents(data_dir),
                &[],
                &std::collections::HashMap::new(),
            )),
        }
    }

    /// Readings lost per agent, device and reason, and each agent's ledger.
    pub async fn drops(&self) -> Result<Drops, AdminError> {
        match self {
            Admin::Remote(addr) => request(*addr, "GET", "/api/v1/drops").await,
            Admin::Local { store, .. } => Ok(drops(store)?),
        }
    }

    /// Known series matching `selector`.
    pub async fn series(&self, selector: &str) -> Result<Vec<SeriesInfo>, AdminError> {
        match self {
            Admin::Remote(addr) => {
                let path = format!("/api/v1/series?match={}", encode_query(selector));
                request(*addr, "GET", &path).await
            }
            Admin::Local { store, .. } => Ok(store.series(&Selector::parse(selector)?)?),
        }
    }

    /// Runs a query.
    pub async fn query(&self, params: &QueryParams) -> Result<Vec<SeriesResult>, AdminError> {
        match self {
            Admin::Remote(addr) => {
                let mut qs = Vec::new();
                for (k, v) in [
                    ("match", &params.selector),
                    ("from", &params.from),
                    ("to", &params.to),
                    ("step", &params.step),
                    ("kind", &params.kind),
                ] {
                    if let Some(v) = v {
                        qs.push(format!("{k}={}", encode_query(v)));
                    }
                }
                request(*addr, "GET", &format!("/api/v1/query?{}", qs.join("&"))).await
            }
            Admin::Local { store, .. } => Ok(store.query(&params.resolve(crate::now_ns())?)?),
        }
    }

    /// Stored alert events matching `params`.
    pub async fn alerts(
        &self,
        params: &crate::fanout::AlertParams,
    ) -> Result<Vec<crate::fanout::AlertEvent>, AdminError> {
        match self {
            Admin::Remote(addr) => {
                let mut qs = Vec::new();
                for (k, v) in [
                    ("state", &params.state),
                    ("match", &params.selector),
                    ("rule", &params.rule),
                    ("from", &params.from),
                    ("to", &params.to),
                ] {
                    if let Some(v) = v {
                        qs.push(format!("{k}={}", encode_query(v)));
                    }
                }
                if let Some(l) = params.limit {
                    qs.push(format!("limit={l}"));
                }
                request(*addr, "GET", &format!("/api/v1/alerts?{}", qs.join("&"))).await
            }
            Admin::Local { store, .. } => {
                let f = params
                    .resolve(crate::now_ns())
                    .map_err(AdminError::Invalid)?;
                Ok(store.alerts(&f)?)
            }
        }
    }

    /// The fan-out subscribers: cursors, lag, skipped, dead letters. A
    /// stopped collector shows its durable cursors (lag unknown: 0).
    pub async fn subscribers(&self) -> Result<Vec<crate::fanout::SubscriberView>, AdminError> {
        match self {
            Admin::Remote(addr) => request(*addr, "GET", "/api/v1/subscribers").await,
            Admin::Local { store, .. } => {
                let (event_head, alert_head) = store.fanout_heads()?;
                Ok(store
                    .cursors()?
                    .into_iter()
                    .map(|(name, r)| {
                        let (log, head) = if name == crate::fanout::PROCESSORS || r.reads_log {
                            (crate::fanout::bus::LogKind::Events, event_head)
                        } else {
                            (crate::fanout::bus::LogKind::Alerts, alert_head)
                        };
                        crate::fanout::SubscriberView {
                            name,
                            log,
                            cursor: r.seq,
                            head,
                            lag: head.saturating_sub(r.seq),
                            lag_budget: 0,
                            policy: crate::fanout::LagPolicy::default(),
                            handled: r.handled,
                            skipped: r.skipped,
                            dead_letters: r.dead_letters,
                            delivered: r.delivered,
                            refused: r.refused,
                        }
                    })
                    .collect())
            }
        }
    }

    /// Asks the running collector to reload its configuration.
    pub async fn reload(&self) -> Result<crate::ReloadReport, AdminError> {
        match self {
            Admin::Remote(addr) => request(*addr, "POST", "/api/v1/reload").await,
            Admin::Local { data_dir, .. } => Err(AdminError::NotRunning(data_dir.clone())),
        }
    }

    /// The operators' tokens (names, roles, creation times).
    pub async fn tokens(&self) -> Result<Vec<TokenView>, AdminError> {
        match self {
            Admin::Remote(addr) => request(*addr, "GET", "/api/v1/tokens").await,
            Admin::Local { data_dir, .. } => {
                let mut v: Vec<TokenView> =
                    auth::load(data_dir)?.iter().map(TokenView::from).collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(v)
            }
        }
    }

    /// Creates a token; its text is in the answer, and nowhere else.
    pub async fn create_token(&self, name: &str, role: Role) -> Result<CreatedToken, AdminError> {
        auth::validate_name(name)?;
        match self {
            Admin::Remote(addr) => {
                let path = format!(
                    "/api/v1/tokens?name={}&role={}",
                    encode_query(name),
                    role.as_str()
                );
                request(*addr, "POST", &path).await
            }
            // The store is open (locked): no server can be writing the file.
            Admin::Local { data_dir, .. } => {
                let mut records = auth::load(data_dir)?;
                let created = auth::create(&mut records, name, role, crate::now_ns())?;
                auth::save(data_dir, &records)?;
                Ok(created)
            }
        }
    }

    /// Revokes a token: refused from now on.
    pub async fn revoke_token(&self, name: &str) -> Result<TokenView, AdminError> {
        match self {
            Admin::Remote(addr) => {
                let path = format!("/api/v1/tokens/{}/revoke", encode_query(name));
                request(*addr, "POST", &path).await
            }
            Admin::Local { data_dir, .. } => {
                let mut records = auth::load(data_dir)?;
                let gone = auth::revoke(&mut records, name)?;
                auth::save(data_dir, &records)?;
                Ok(gone)
            }
        }
    }

    /// Revokes an agent.
    pub async fn revoke(&self, agent: &str) -> Result<RevokeResult, AdminError> {
        pki::validate_agent_id(agent)?;
        match self {
            Admin::Remote(addr) => {
                request(*addr, "POST", &format!("/api/v1/agents/{agent}/revoke")).await
            }
            Admin::Local { store, .. } => Ok(RevokeResult {
                agent: agent.to_owned(),
                changed: store.revoke(agent)?,
                closed: 0,
            }),
        }
    }
}

/// Percent-encodes a query-string value.
pub fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A minimal HTTP/1.1 client for the admin API: one request per
/// connection, `Connection: close`, JSON answers.
async fn request<T: serde::de::DeserializeOwned>(
    remote: Remote,
    method: &str,
    path: &str,
) -> Result<T, AdminError> {
    let addr = remote.addr;
    let http = |message: String| AdminError::Http { addr, message };
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| http(e.to_string()))?;
    let authorization = remote
        .token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.as_str()))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{authorization}Content-Length: 0\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| http(e.to_string()))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| http(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| http("incomplete HTTP response".into()))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| http(format!("bad status line {:?}", head.lines().next())))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    if status != 200 {
        let mut message = serde_json::from_str::<ErrorBody>(&body).map_or(body, |e| e.error);
        if status == 401 && remote.token.is_none() {
            message.push_str(&format!(
                " (the CLI sends ${} if set, else the data directory's {}, which the running \
                 collector writes readable by its own user only)",
                auth::TOKEN_ENV,
                auth::LOCAL_TOKEN_FILE
            ));
        }
        return Err(AdminError::Server {
            addr,
            status,
            message,
        });
    }
    serde_json::from_str(&body).map_err(|e| http(format!("bad JSON answer: {e}")))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query(r#"t{a="b c"}"#), "t%7Ba%3D%22b%20c%22%7D");
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
