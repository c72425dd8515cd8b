//! Deciding a request: the role each route needs ([`required_role`]), the
//! credential a request presents (bearer or basic), and the [`Gate`] that
//! checks it against the token records and the local admin credential,
//! with refusals counted and their logging rate-limited.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use super::*;

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
pub(super) struct Keys {
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
