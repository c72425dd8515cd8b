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
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Serialize, Deserialize)]
struct TokensFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// Names: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit; `local-admin` is reserved.
pub fn validate_name(name: &str) -> Result<(), AuthError> {
    let bad = |why| {
        Err(AuthError::BadName {
            name: name.to_owned(),
            why,
        })
    };
    let Some(first) = name.bytes().next() else {
        return bad("empty");
    };
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 64 bytes");
    }
    if !first.is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only A-Z a-z 0-9 . _ - are allowed");
    }
    if name == LOCAL_NAME {
        return bad("reserved for the local admin credential");
    }
    Ok(())
}

/// The token records of `data_dir` (none if the file does not exist).
pub fn load(data_dir: &Path) -> Result<Vec<TokenRecord>, AuthError> {
    let path = data_dir.join(TOKENS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let file: TokensFile = serde_json::from_str(&text).map_err(|e| AuthError::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    })?;
    for r in &file.tokens {
        if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| HEX.contains(&b)) {
            return Err(AuthError::Corrupt {
                path,
                message: format!("token {:?}: sha256 is not 64 hex digits", r.name),
            });
        }
    }
    Ok(file.tokens)
}

/// Writes `contents` to `path` (mode 0600) through a temporary file and a
/// rename, synced: a crash leaves the old file or the new one.
pub(crate) fn write_private_atomic(path: &Path, contents: &[u8]) -> Result<(), AuthError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(contents).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes the token records of `data_dir`.
pub fn save(data_dir: &Path, records: &[TokenRecord]) -> Result<(), AuthError> {
    let file = TokensFile {
        version: 1,
        tokens: records.to_vec(),
    };
    let mut text = serde_json::to_vec_pretty(&file).map_err(|e| AuthError::Corrupt {
        path: data_dir.join(TOKENS_FILE),
        message: e.to_string(),
    })?;
    text.push(b'\n');
    write_private_atomic(&data_dir.join(TOKENS_FILE), &text)
}

/// Adds a token named `name` with `role` to `records`; returns it in clear.
pub fn create(
    records: &mut Vec<TokenRecord>,
    name: &str,
    role: Role,
    now_ns: i64,
) -> Result<CreatedToken, AuthError> {
    validate_name(name)?;
    if records.iter().any(|r| r.name == name) {
        return Err(AuthError::Exists(name.to_owned()));
    }
    let token = Token::generate()?;
    records.push(TokenRecord {
        name: name.to_owned(),
        role,
        sha256: hex(&token.digest()),
        created_ns: now_ns,
    });
    Ok(CreatedToken {
        name: name.to_owned(),
        role,
        token: token.as_str().to_owned(),
    })
}

/// Removes the token named `name` from `records`.
pub fn revoke(records: &mut Vec<TokenRecord>, name: &str) -> Result<TokenView, AuthError> {
    let at = records
        .iter()
        .position(|r| r.name == name)
        .ok_or_else(|| AuthError::NotFound(name.to_owned()))?;
    Ok(TokenView::from(&records.remove(at)))
}

/// Reads the local admin credential of `data_dir`, if there is one.
pub fn read_local_token(data_dir: &Path) -> Option<Token> {
    let text = std::fs::read_to_string(data_dir.join(LOCAL_TOKEN_FILE)).ok()?;
    Token::parse(&text).ok()
}

/// What a request needs, by method and path: `None` (open), read or admin.
///
/// - open: `/healthz` and the fleet page's files (`/`, `/ui`, `/ui/…`): the
///   page holds no data and asks for a token itself;
/// - admin: `POST /api/v1/agents/{id}/revoke`, `POST /api/v1/reload`,
///   anything under `/api/v1/tokens`, and any method but GET and HEAD
///   except the Prometheus API's form POSTs;
/// - read: everything else (`/metrics`, `/api/v1/…`, `/prometheus/…`, and
///   paths that do not exist, so that a refusal tells nothing about them).
///
/// With [`AuthMode::OpenReads`] read requests need nothing.
pub fn required_role(method: &str, path: &str, mode: AuthMode) -> Option<Role> {
    let read_method = matches!(method, "GET" | "HEAD");
    if read_method
        && (path == "/healthz" || path == "/" || path == "/ui" || path.starts_with("/ui/"))
    {
        return None;
    }
    let admin = path == "/api/v1/tokens"
        || path.starts_with("/api/v1/tokens/")
        || path == "/api/v1/reload"
        || (path.starts_with("/api/v1/agents/") && path.ends_with("/revoke"))
        || !(read_method || (method == "POST" && path.starts_with("/prometheus/")));
    if admin {
        Some(Role::Admin)
    } else if mode == AuthMode::OpenReads {
        None
    } else {
        Some(Role::Read)
    }
}

/// Credentials found in a request's `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// No `Authorization` header.
    Nothing,
    /// `Bearer <token>`, or basic auth with the token as the password (or
    /// as the user name with an empty password).
    Token(String),
    /// A header that cannot be read.
    Malformed(&'static str),
}

/// Reads an `Authorization` header value.
pub fn presented(authorization: Option<&[u8]>) -> Presented {
    use base64::Engine as _;
    let Some(raw) = authorization else {
        return Presented::Nothing;
    };
    let Ok(value) = std::str::from_utf8(raw) else {
        return Presented::Malformed("the Authorization header is not text");
    };
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Presented::Malformed("Authorization: Bearer without a token");
        }
        return Presented::Token(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return Presented::Malformed("Authorization: Basic is not base64");
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return Presented::Malformed("Authorization: Basic is not UTF-8");
        };
        let (user, password) = text.split_once(':').unwrap_or((&text, ""));
        let token = if password.is_empty() { user } else { password };
        return Presented::Token(token.to_owned());
    }
    Presented::Malformed("the Authorization scheme is neither Bearer nor Basic")
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials: 401.
    NoCredentials {
        /// The role needed.
        needed: Role,
    },
    /// Credentials that are not a known token: 401.
    BadToken {
        /// What was wrong.
        why: String,
    },
    /// A valid token without the role needed: 403.
    Forbidden {
        /// The token's name.
        name: String,
        /// Its role.
        role: Role,
        /// The role needed.
        needed: Role,
    },
}

impl Refusal {
    /// The metric label: `no_credentials`, `bad_token`, `forbidden`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoCredentials { .. } => "no_credentials",
            Refusal::BadToken { .. } => "bad_token",
            Refusal::Forbidden { .. } => "forbidden",
        }
    }

    /// 401 or 403.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Forbidden { .. } => 403,
            _ => 401,
        }
    }

    /// The error text answered, naming what to do.
    pub fn message(&self, method: &str, path: &str) -> String {
        match self {
            Refusal::NoCredentials { needed } => format!(
                "authentication required: {method} {path} needs a token with the {needed} role; \
                 send `Authorization: Bearer <token>` (or basic auth with the token as the password). \
                 Create one with `ferry-collector token create --role {needed} --name NAME`"
            ),
            Refusal::BadToken { why } => format!("the token is not valid: {why}"),
            Refusal::Forbidden { name, role, needed } => format!(
                "forbidden: token {name:?} has the {role} role; {method} {path} needs the {needed} role"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Keys {
    entries: Vec<([u8; 32], Role, String)>,
}

impl Keys {
    fn of(records: &[TokenRecord], local: &[u8; 32]) -> Self {
        let mut entries = vec![(*local, Role::Admin, LOCAL_NAME.to_owned())];
        for r in records {
            let mut d = [0u8; 32];
            for (i, out) in d.iter_mut().enumerate() {
                *out = u8::from_str_radix(&r.sha256[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            entries.push((d, r.role, r.name.clone()));
        }
        Self { entries }
    }

    /// The role and name of `token`: every entry is compared, in constant
    /// time each.
    fn find(&self, token: &str) -> Option<(Role, String)> {
        let d = digest(token);
        let mut found = None;
        for (key, role, name) in &self.entries {
            if same(key, &d) {
                found = Some((*role, name.clone()));
            }
        }
        found
    }
}

/// The running server's gate: the mode, the known tokens, the local admin
/// credential. Token changes go to `tokens.json` before they take effect.
#[derive(Debug)]
pub struct Gate {
    mode: AuthMode,
    data_dir: PathBuf,
    local_token: Token,
    local: [u8; 32],
    keys: RwLock<Keys>,
    records: Mutex<Vec<TokenRecord>>,
    log: Mutex<RefusalLog>,
}

impl Gate {
    /// Loads `tokens.json` and writes a fresh local admin credential to
    /// `<data_dir>/admin.token`.
    pub fn open(mode: AuthMode, data_dir: &Path) -> Result<Self, AuthError> {
        let records = load(data_dir)?;
        let local = Token::generate()?;
        let mut text = local.as_str().as_bytes().to_vec();
        text.push(b'\n');
        write_private_atomic(&data_dir.join(LOCAL_TOKEN_FILE), &text)?;
        let digest = local.digest();
        Ok(Self {
            mode,
            data_dir: data_dir.to_owned(),
            local_token: local,
            local: digest,
            keys: RwLock::new(Keys::of(&records, &digest)),
            records: Mutex::new(records),
            log: Mutex::new(RefusalLog::new(std::time::Duration::from_secs(10))),
        })
    }

    /// The local admin credential.
    pub fn local_token(&self) -> Token {
        self.local_token
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Decides a request from its method, path and `Authorization` header;
    /// `Ok` carries the name of the token used, if any.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> Result<Option<String>, Refusal> {
        let needed = required_role(method, path, self.mode);
        let token = match presented(authorization) {
            Presented::Nothing => {
                return match needed {
                    None => Ok(None),
                    Some(needed) => Err(Refusal::NoCredentials { needed }),
                };
            }
            Presented::Malformed(why) => {
                return Err(Refusal::BadToken { why: why.into() });
            }
            Presented::Token(t) => t,
        };
        // Credentials sent where none are needed are still checked: a
        // client with a wrong token learns it at once.
        let Some((role, name)) = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .find(&token)
        else {
            let why = match Token::parse(&token) {
                Err(AuthError::Malformed(why)) => why.to_owned(),
                _ => "unknown or revoked".into(),
            };
            return Err(Refusal::BadToken { why });
        };
        match needed {
            Some(needed) if !role.allows(needed) => Err(Refusal::Forbidden { name, role, needed }),
            _ => Ok(Some(name)),
        }
    }

    /// Whether to log this refusal now (one line per reason per 10 s); if
    /// so, how many went unlogged since the previous line.
    pub fn should_log(&self, refusal: &Refusal) -> Option<u64> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(refusal, crate::now_ns())
    }

    /// The tokens, sorted by name (not the local credential).
    pub fn list(&self) -> Vec<TokenView> {
        let mut v: Vec<TokenView> = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(TokenView::from)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Creates a token: written to `tokens.json`, then accepted. Blocking
    /// (one small synced file).
    pub fn create(&self, name: &str, role: Role) -> Result<CreatedToken, AuthError> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = records.clone();
        let created = create(&mut next, name, role, crate::now_ns())?;
        save(&self.data_dir, &next)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Keys::of(&next, &self.local);
        *records = next;
        Ok(created)
    }

    /// Revokes a token: refused from now on, and removed from
    /// `tokens.json`. Blocking (one small synced file).
    pub fn revoke(&self, name: &str) -> Result<TokenView, AuthError> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = records.clone();
        let gone = revoke(&mut next, name)?;
        // Refused at once, even if the file cannot be written.
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Keys::of(&next, &self.local);
        *records = next;
        save(&self.data_dir, &records)?;
        Ok(gone)
    }
}

/// One log line per reason per interval, with the count suppressed since.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    interval_ns: i64,
    last: [(i64, u64); 3],
}

impl RefusalLog {
    pub(crate) fn new(interval: std::time::Duration) -> Self {
        Self {
            interval_ns: i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX),
            last: [(i64::MIN, 0); 3],
        }
    }

    /// Whether to log a refusal of this kind now; if so, how many were not
    /// logged since the previous line.
    pub(crate) fn check(&mut self, refusal: &Refusal, now_ns: i64) -> Option<u64> {
        let i = match refusal {
            Refusal::NoCredentials { .. } => 0,
            Refusal::BadToken { .. } => 1,
            Refusal::Forbidden { .. } => 2,
        };
        let (at, suppressed) = &mut self.last[i];
        if *at != i64::MIN && now_ns.saturating_sub(*at) < self.interval_ns {
            *suppressed += 1;
            return None;
        }
        let n = *suppressed;
        *at = now_ns;
        *suppressed = 0;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_needs_the_right_role() {
        use AuthMode::{OpenReads, Tokens};
        let cases = [
            ("GET", "/healthz", Tokens, None),
            ("GET", "/", Tokens, None),
            ("GET", "/ui/", Tokens, None),
            ("GET", "/ui/app.js", Tokens, None),
            ("GET", "/metrics", Tokens, Some(Role::Read)),
            ("GET", "/api/v1/query", Tokens, Some(Role::Read)),
            ("GET", "/api/v1/agents", Tokens, Some(Role::Read)),
            ("GET", "/api/v1/something-new", Tokens, Some(Role::Read)),
            ("GET", "/prometheus/api/v1/query", Tokens, Some(Role::Read)),
            (
                "POST",
                "/prometheus/api/v1/query_range",
                Tokens,
                Some(Role::Read),
            ),
            (
                "POST",
                "/api/v1/agents/gw-1/revoke",
                Tokens,
                Some(Role::Admin),
            ),
            ("POST", "/api/v1/reload", Tokens, Some(Role::Admin)),
            ("GET", "/api/v1/tokens", Tokens, Some(Role::Admin)),
            ("POST", "/api/v1/tokens", Tokens, Some(Role::Admin)),
            ("POST", "/api/v1/tokens/x/revoke", Tokens, Some(Role::Admin)),
            ("DELETE", "/api/v1/series", Tokens, Some(Role::Admin)),
            ("POST", "/ui/", Tokens, Some(Role::Admin)),
            ("GET", "/nope", Tokens, Some(Role::Read)),
            ("GET", "/metrics", OpenReads, None),
            ("POST", "/prometheus/api/v1/query", OpenReads, None),
            ("POST", "/api/v1/reload", OpenReads, Some(Role::Admin)),
            (
                "POST",
                "/api/v1/agents/gw-1/revoke",
                OpenReads,
                Some(Role::Admin),
            ),
            ("GET", "/api/v1/tokens", OpenReads, Some(Role::Admin)),
        ];
        for (method, path, mode, want) in cases {
            assert_eq!(
                required_role(method, path, mode),
                want,
                "{method} {path} {mode:?}"
            );
        }
    }

    #[test]
    fn credentials_come_as_bearer_or_basic() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(presented(None), Presented::Nothing);
        assert_eq!(
            presented(Some(b"Bearer ferry_abc")),
            Presented::Token("ferry_abc".into())
        );
        assert_eq!(
            presented(Some(b"bearer   ferry_abc ")),
            Presented::Token("ferry_abc".into())
        );
        let basic = format!("Basic {}", b64("grafana:ferry_x"));
        assert_eq!(
            presented(Some(basic.as_bytes())),
            Presented::Token("ferry_x".into())
        );
        let user_only = format!("Basic {}", b64("ferry_y:"));
        assert_eq!(
            presented(Some(user_only.as_bytes())),
            Presented::Token("ferry_y".into())
        );
        assert!(matches!(
            presented(Some(b"Basic %%%")),
            Presented::Malformed(_)
        ));
        assert!(matches!(
            presented(Some(b"Digest x")),
            Presented::Malformed(_)
        ));
        assert!(matches!(
            presented(Some(b"Bearer")),
            Presented::Malformed(_)
        ));
    }

    #[test]
    fn tokens_are_checked_by_hash_and_role() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::open(AuthMode::Tokens, dir.path()).unwrap();
        let local = gate.local_token();
        assert_eq!(read_local_token(dir.path()), Some(local));
        let reader = gate.create("grafana", Role::Read).unwrap();
        assert_eq!(reader.token.len(), TOKEN_LEN);
        assert!(reader.token.starts_with(TOKEN_PREFIX));
        // Stored hashed: the file never holds the token.
        let file = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!file.contains(&reader.token));
        assert!(file.contains(&hex(&Token::parse(&reader.token).unwrap().digest())));
        #[cfg(unix)]
        for f in [TOKENS_FILE, LOCAL_TOKEN_FILE] {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();

        assert_eq!(
            gate.check("GET", "/api/v1/query", None),
            Err(Refusal::NoCredentials { needed: Role::Read })
        );
        assert_eq!(
            gate.check("GET", "/api/v1/query", Some(&bearer(&reader.token))),
            Ok(Some("grafana".into()))
        );
        assert_eq!(
            gate.check("POST", "/api/v1/reload", Some(&bearer(&reader.token))),
            Err(Refusal::Forbidden {
                name: "grafana".into(),
                role: Role::Read,
                needed: Role::Admin
            })
        );
        assert_eq!(
            gate.check("POST", "/api/v1/reload", Some(&bearer(local.as_str()))),
            Ok(Some(LOCAL_NAME.into()))
        );
        let other = Token::generate().unwrap();
        assert_eq!(
            gate.check("GET", "/metrics", Some(&bearer(other.as_str()))),
            Err(Refusal::BadToken {
                why: "unknown or revoked".into()
            })
        );
        assert_eq!(
            gate.check("GET", "/metrics", Some(b"Bearer hunter2")),
            Err(Refusal::BadToken {
                why: "it does not start with ferry_".into()
            })
        );
        assert_eq!(gate.check("GET", "/healthz", None), Ok(None));

        assert!(matches!(
            gate.create("grafana", Role::Admin),
            Err(AuthError::Exists(_))
        ));
        assert!(matches!(
            gate.create(LOCAL_NAME, Role::Admin),
            Err(AuthError::BadName { .. })
        ));
        assert_eq!(gate.list().len(), 1);
        gate.revoke("grafana").unwrap();
        assert!(matches!(
            gate.check("GET", "/api/v1/query", Some(&bearer(&reader.token))),
            Err(Refusal::BadToken { .. })
        ));
        assert!(load(dir.path()).unwrap().is_empty());
        assert!(matches!(
            gate.revoke("grafana"),
            Err(AuthError::NotFound(_))
        ));

        // A restart reads the file and issues a new local credential.
        let admin = gate.create("ops", Role::Admin).unwrap();
        drop(gate);
        let gate = Gate::open(AuthMode::Tokens, dir.path()).unwrap();
        let local2 = gate.local_token();
        assert_ne!(local, local2);
        assert!(matches!(
            gate.check("GET", "/metrics", Some(&bearer(local.as_str()))),
            Err(Refusal::BadToken { .. })
        ));
        assert_eq!(
            gate.check("POST", "/api/v1/reload", Some(&bearer(&admin.token))),
            Ok(Some("ops".into()))
        );
    }

    #[test]
    fn open_reads_still_guard_admin_actions() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::open(AuthMode::OpenReads, dir.path()).unwrap();
        assert_eq!(gate.check("GET", "/api/v1/query", None), Ok(None));
        assert_eq!(
            gate.check("POST", "/api/v1/agents/gw/revoke", None),
            Err(Refusal::NoCredentials {
                needed: Role::Admin
            })
        );
    }

    #[test]
    fn token_text_is_checked() {
        let t = Token::generate().unwrap();
        assert_eq!(Token::parse(t.as_str()).unwrap(), t);
        assert!(Token::parse("ferry_123").is_err());
        assert!(Token::parse(&format!("ferry_{}", "G".repeat(64))).is_err());
        assert_eq!(format!("{t:?}"), "Token(ferry_…)");
    }

    #[test]
    fn refusal_logs_are_rate_limited() {
        let mut log = RefusalLog::new(std::time::Duration::from_secs(10));
        let r = Refusal::NoCredentials { needed: Role::Read };
        assert_eq!(log.check(&r, 0), Some(0));
        assert_eq!(log.check(&r, 1), None);
        assert_eq!(log.check(&r, 2), None);
        let f = Refusal::BadToken { why: "x".into() };
        assert_eq!(log.check(&f, 3), Some(0));
        assert_eq!(log.check(&r, 10_000_000_000), Some(2));
    }
}
