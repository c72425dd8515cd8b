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

use super::UrlError;

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
    pub(crate) fn parse(text: &str) -> Result<Self, UrlError> {
        let (tls, rest) = if let Some(r) = text.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = text.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(UrlError::Scheme(text.to_owned()));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::UnclosedBracket(text.to_owned()))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| UrlError::Port {
                    url: text.to_owned(),
                    port: p.to_owned(),
                })?,
                None if after.is_empty() => default_port,
                None => return Err(UrlError::Host(text.to_owned())),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| UrlError::Port {
                        url: text.to_owned(),
                        port: p.to_owned(),
                    })?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(text.to_owned()));
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

/// Why a POST got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PostError {
    /// The TCP connection failed.
    #[error("connecting to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The host is not a name TLS can check.
    #[error("TLS server name {host:?}: {source}")]
    ServerName {
        /// The URL's host.
        host: String,
        /// Why it is not a server name.
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {authority}: {source}")]
    Tls {
        /// `host:port`.
        authority: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP handshake with {authority}: {source}")]
    Handshake {
        /// `host:port`.
        authority: String,
        /// What failed.
        source: hyper::Error,
    },
    /// The connection closed before the request could go.
    #[error("connection lost: {0}")]
    Lost(#[source] hyper::Error),
    /// The request could not be built (a header the sink was given).
    #[error("building the request: {0}")]
    Request(#[source] hyper::http::Error),
    /// Sending the request or reading the answer's head failed.
    #[error("sending: {0}")]
    Send(#[source] hyper::Error),
    /// No answer within the sink's `timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

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

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, PostError> {
        let authority = self.url.authority();
        let tcp = TcpStream::connect(&authority)
            .await
            .map_err(|source| PostError::Connect {
                authority: authority.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = ServerName::try_from(self.url.host.clone()).map_err(|source| {
                    PostError::ServerName {
                        host: self.url.host.clone(),
                        source,
                    }
                })?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| PostError::Tls {
                        authority: authority.clone(),
                        source,
                    })?;
                Box::new(tls)
            }
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| PostError::Handshake { authority, source })?;
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
    ) -> Result<Answer, PostError> {
        let timeout = self.timeout;
        let attempt = async {
            let mut sender = match self.sender.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            sender.ready().await.map_err(PostError::Lost)?;
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
            let req = req.body(Full::new(body)).map_err(PostError::Request)?;
            let resp = sender.send_request(req).await.map_err(PostError::Send)?;
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
            Err(_) => Err(PostError::Timeout(timeout)),
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
                .to_string()
                .contains("expected http://")
        );
        assert_eq!(
            Url::parse("http://:80/").unwrap_err().to_string(),
            "url \"http://:80/\": no host"
        );
        assert_eq!(
            Url::parse("http://h:x/").unwrap_err().to_string(),
            "url \"http://h:x/\": bad port \"x\""
        );
    }
}
