//! Connecting to PostgreSQL: the connection string's TLS mode decides
//! between a plain connection and rustls (ring provider, the server's
//! certificate verified for the host name of the connection string),
//! adapted here to tokio-postgres' TLS traits.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;

use super::*;
use crate::fanout::sinks::duration;

pub(super) async fn connect(cfg: &PostgresSink) -> Result<tokio_postgres::Client, ConnectError> {
    let mut config: tokio_postgres::Config = cfg.raw.dsn.parse().map_err(ConnectError::Dsn)?;
    config.connect_timeout(
        duration("connect_timeout", &cfg.raw.connect_timeout).map_err(ConnectError::Timeout)?,
    );
    config.application_name("ferry-collector");
    let client = if cfg.tls {
        let tls = crate::fanout::sinks::tls::client_config(cfg.raw.ca_file.as_deref(), &[])
            .map_err(ConnectError::Tls)?;
        let (client, conn) = config
            .connect(RustlsConnect(tls))
            .await
            .map_err(ConnectError::Connecting)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("PostgreSQL connection ended: {e}");
            }
        });
        client
    } else {
        config.ssl_mode(SslMode::Disable);
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(ConnectError::Connecting)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("PostgreSQL connection ended: {e}");
            }
        });
        client
    };
    Ok(client)
}

/// rustls as tokio-postgres' TLS (ring provider, the server's certificate
/// verified for the host name of the connection string).
#[derive(Clone)]
pub(super) struct RustlsConnect(Arc<rustls::ClientConfig>);

pub(super) struct RustlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

pub(super) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, Self::Error> {
        Ok(RustlsConnector {
            config: self.0.clone(),
            name: rustls::pki_types::ServerName::try_from(domain.to_owned())?,
        })
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}
