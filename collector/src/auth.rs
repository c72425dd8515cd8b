//! Operators' access to the HTTP API: tokens with roles.
//!
//! - A **token** is `ferry_` followed by 64 hex digits (32 bytes from the
//!   system's CSPRNG). It is shown once, when created; the collector keeps
//!   only its SHA-256 (a token has 256 bits of entropy, so a fast hash is
//!   enough) in `<data_dir>/tokens.json` (mode 0600), with its name, role
//!   and creation time.
//! - A **role** is `read` (queries, dashboards, the fleet page, `/metrics`)
//!   or `admin` (everything, including revoke, reload and token management).
//! - The **local admin credential**: at start the server writes a fresh
//!   admin token to `<data_dir>/admin.token` (0600). The CLI on the same
//!   machine, with access to the data directory, reads it to talk to the
//!   server (`ferry-collector reload`, `revoke`, `token create`, …); it
//!   changes at every start.
//! - [`required_role`] maps a request to the role it needs: one table for
//!   every route, unknown and future routes included (reads by default,
//!   admin for any other method than GET/HEAD).
//!
//! **Invariant:** an admin action (revoke, reload, tokens) is never served
//! without an admin credential, whatever `http.auth` says; `http.auth =
//! "open_reads"` opens reads only, and only on a loopback address.
//!
//! The logic here is plain functions and data; `http.rs` applies it to
//! requests as an axum middleware.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod gate;
mod store;

pub use gate::{Gate, Presented, Refusal, presented, required_role};
pub(crate) use store::write_private_atomic;
pub use store::{create, load, read_local_token, revoke, save, validate_name};

/// Token records (hashes, names, roles) in the data directory.
pub const TOKENS_FILE: &str = "tokens.json";
/// The local admin credential the running server writes for the CLI.
pub const LOCAL_TOKEN_FILE: &str = "admin.token";
/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "ferry_";
/// Length of a token in bytes: the prefix and 64 hex digits.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 64;
/// The name the local admin credential goes by (reserved).
pub const LOCAL_NAME: &str = "local-admin";
/// Longest token name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Environment variable the CLI takes a token from (before the local
/// credential in the data directory).
pub const TOKEN_ENV: &str = "FERRY_TOKEN";

/// What a token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries, series, agents, devices, alerts, `/metrics`, the
    /// Prometheus API: everything that reads.
    #[default]
    Read,
    /// Everything, including revoke, reload and token management.
    Admin,
}

impl Role {
    /// Its name: `read` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    /// True if a holder of `self` may do what needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "admin" => Ok(Role::Admin),
            other => Err(AuthError::BadRole(other.to_owned())),
        }
    }
}

/// `[http] auth`: which requests need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every request but `/healthz` and the fleet page's files needs a
    /// token (the default).
    #[default]
    Tokens,
    /// Reads need no token; admin actions still need an admin token.
    /// Allowed on a loopback address only.
    OpenReads,
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A role name is not `read` or `admin`.
    #[error("role {0:?}: expected read or admin")]
    BadRole(String),
    /// A token name breaks the naming rule.
    #[error("token name {name:?}: {why}")]
    BadName {
        /// The name.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A token of that name exists.
    #[error("a token named {0:?} exists: revoke it first or pick another name")]
    Exists(String),
    /// No token of that name.
    #[error("no token named {0:?}")]
    NotFound(String),
    /// Text that is not a Ferry token.
    #[error("not a Ferry token: {0}")]
    Malformed(&'static str),
    /// The system's random source failed.
    #[error("the system random number generator failed")]
    Random,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `tokens.json` does not parse.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A token in clear: only ever held to show it once or to send it.
/// `Copy`, so that what holds it (the CLI's connection to the server) is
/// too; `Debug` does not print it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token([u8; TOKEN_LEN]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(ferry_…)")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

impl Token {
    /// 32 bytes from the system's CSPRNG.
    pub fn generate() -> Result<Self, AuthError> {
        use ring::rand::SecureRandom as _;
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| AuthError::Random)?;
        let mut out = [0u8; TOKEN_LEN];
        out[..TOKEN_PREFIX.len()].copy_from_slice(TOKEN_PREFIX.as_bytes());
        out[TOKEN_PREFIX.len()..].copy_from_slice(hex(&secret).as_bytes());
        Ok(Token(out))
    }

    /// Checks the form (prefix, length, lowercase hex), not whether the
    /// collector knows it.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let text = text.trim();
        let Some(digits) = text.strip_prefix(TOKEN_PREFIX) else {
            return Err(AuthError::Malformed("it does not start with ferry_"));
        };
        if text.len() != TOKEN_LEN {
            return Err(AuthError::Malformed("a token is ferry_ and 64 hex digits"));
        }
        if !digits.bytes().all(|b| HEX.contains(&b)) {
            return Err(AuthError::Malformed("a token is ferry_ and 64 hex digits"));
        }
        let mut out = [0u8; TOKEN_LEN];
        out.copy_from_slice(text.as_bytes());
        Ok(Token(out))
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        // Built from ASCII only (prefix and hex digits).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Its SHA-256.
    pub fn digest(&self) -> [u8; 32] {
        digest(self.as_str())
    }
}

fn digest(text: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equality of two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// One token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its name (unique).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// When it was created, ns since the epoch.
    pub created_ns: i64,
}

/// A token as listed: name, role, creation time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was created, ns since the epoch.
    pub created_ns: i64,
}

impl From<&TokenRecord> for TokenView {
    fn from(r: &TokenRecord) -> Self {
        Self {
            name: r.name.clone(),
            role: r.role,
            created_ns: r.created_ns,
        }
    }
}

/// A token just created: the only time its text is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The token.
    pub token: String,
}

#[cfg(test)]
mod tests;
