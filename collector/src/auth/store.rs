//! Token records on disk: `<data_dir>/tokens.json` (mode 0600, replaced
//! atomically) holds each token's SHA-256, name, role and creation time;
//! creating and revoking records, checking names, and reading the local
//! admin credential the running server writes for the CLI.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct TokensFile {
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
