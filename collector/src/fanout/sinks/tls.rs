//! TLS for the storage sinks' clients (remote_write over https, PostgreSQL
//! with `sslmode=require`): rustls on ring, the server's certificate
//! checked against `ca_file` (PEM) or, without one, the system's roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// Why a sink's TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// `ca_file` could not be read.
    #[error("reading ca_file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `ca_file` is not PEM.
    #[error("ca_file {}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `ca_file` holds no certificate.
    #[error("ca_file {}: no PEM certificate in it", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of `ca_file` was refused as a root.
    #[error("ca_file {}: {source}", path.display())]
    Root {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// No `ca_file` and no system roots.
    #[error("no system CA certificates found; give ca_file")]
    NoSystemRoots,
    /// The provider refused the protocol versions.
    #[error("{0}")]
    Versions(rustls::Error),
}

/// A client configuration trusting `ca_file`, or the system's roots.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })?;
            let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|source| TlsError::Pem {
                    path: path.to_owned(),
                    source,
                })?;
            if certs.is_empty() {
                return Err(TlsError::Empty {
                    path: path.to_owned(),
                });
            }
            for c in certs {
                roots.add(c).map_err(|source| TlsError::Root {
                    path: path.to_owned(),
                    source,
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing), &[]).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("reading ca_file {}: ", missing.display())),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let e = client_config(Some(&empty), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("ca_file {}: no PEM certificate in it", empty.display())
        );
    }
}
