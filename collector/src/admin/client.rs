//! The CLI's HTTP client for the running server's admin API: one request
//! per connection, `Connection: close`, JSON answers.

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{AdminError, Remote};
use crate::auth;

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

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// A minimal HTTP/1.1 client for the admin API: one request per
/// connection, `Connection: close`, JSON answers.
pub(super) async fn request<T: serde::de::DeserializeOwned>(
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
