//! A small HTTP/1.1 client for the remote_write sink: hyper's connection
//! API (already in the tree through axum) over one kept-alive TCP or TLS
//! connection, re-opened when the server closes it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// An `http://` or `https://` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    /// `https`?
    pub tls: bool,
    /// The host, without brackets for IPv6.
    pub host: String,
    /// The port (default 80 or 443).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `http[s]://host[:port][/path]`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!("url {text:?}: expected http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("url {text:?}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("url {text:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("url {text:?}: bad host")),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse()
                        .map_err(|_| format!("url {text:?}: bad port {p:?}"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("url {text:?}: no host"));
        }
        Ok(Self {
            tls,
            host,
            port,
            path: path.to_owned(),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An answer: its status and the start of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body, lossily as text, at most 4 KiB.
    pub body: String,
}

/// One server, one connection at a time.
pub(crate) struct Client {
    url: Url,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub(crate) fn new(url: Url, tls: Option<Arc<rustls::ClientConfig>>, timeout: Duration) -> Self {
        Self {
            url,
            tls,
            timeout,
            sender: None,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let authority = self.url.authority();
        let tcp = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = ServerName::try_from(self.url.host.clone())
                    .map_err(|e| format!("TLS server name {:?}: {e}", self.url.host))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {authority}: {e}"))?;
                Box::new(tls)
            }
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// POSTs `body` with `headers`; one attempt, within the timeout.
    pub(crate) async fn post(
        &mut self,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let timeout = self.timeout;
        let attempt = async {
            let mut sender = match self.sender.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            sender
                .ready()
                .await
                .map_err(|e| format!("connection lost: {e}"))?;
            let mut req = hyper::Request::builder()
                .method("POST")
                .uri(self.url.path.as_str())
                .header("host", self.url.authority())
                .header(
                    "user-agent",
                    concat!("ferry-collector/", env!("CARGO_PKG_VERSION")),
                );
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req
                .body(Full::new(body))
                .map_err(|e| format!("building the request: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("sending: {e}"))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), 4096)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            self.sender = Some(sender);
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_with_default_ports() {
        let u = Url::parse("http://127.0.0.1:9090/api/v1/write").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 9090, "/api/v1/write")
        );
        let u = Url::parse("https://mimir.example.org/api/v1/push").unwrap();
        assert_eq!((u.tls, u.port), (true, 443));
        let u = Url::parse("http://[::1]:9090").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9090, "/")
        );
        assert_eq!(u.authority(), "[::1]:9090");
        assert!(
            Url::parse("ftp://x")
                .unwrap_err()
                .contains("expected http://")
        );
        assert!(Url::parse("http://:80/").unwrap_err().contains("no host"));
        assert!(Url::parse("http://h:x/").unwrap_err().contains("bad port"));
    }
}
