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
use tokio::net::TcpStream;

use crate::auth::{self, AuthError, CreatedToken, Role, Token, TokenView};
use crate::pki;
use crate::query::{QueryError, QueryParams, Selector};
use crate::store::{SeriesInfo, SeriesResult, Store, StoreError};

/// File in the data directory holding the running server's HTTP address.
pub const ADDR_FILE: &str = "collector.http";

mod client;
mod views;

pub use client::encode_query;
use client::request;
pub use views::{
    AgentView, DropRow, Drops, Ledger, agent_views, drop_rows, drops, epoch_text, ledgers,
};

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
                    .map_err(|e| AdminError::Invalid(e.to_string()))?;
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
