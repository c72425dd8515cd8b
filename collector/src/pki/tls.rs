//! The CA's certificates put to use in TLS: the server and client rustls
//! configs (ring provider), reading PEM certificates and keys, the agent id
//! (Common Name) of a client certificate, the revocation list, and the
//! client-certificate verifier that refuses revoked agents.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::*;

/// The agent id (Common Name) of a DER certificate.
pub fn agent_id_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    let id = cn.as_str().ok()?;
    validate_agent_id(id).ok()?;
    Some(id.to_owned())
}

/// Revoked agent ids, shared by the TLS verifier, the connection registry
/// and the store. Revocation is by agent id and covers every certificate
/// issued for that id.
#[derive(Debug, Default)]
pub struct RevocationList {
    ids: RwLock<HashSet<String>>,
}

impl RevocationList {
    /// A list holding `ids`.
    pub fn new(ids: impl IntoIterator<Item = String>) -> Self {
        Self {
            ids: RwLock::new(ids.into_iter().collect()),
        }
    }

    /// True if `id` is revoked.
    pub fn contains(&self, id: &str) -> bool {
        self.ids
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Adds `id`; true if it was not revoked before.
    pub fn insert(&self, id: &str) -> bool {
        self.ids
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned())
    }
}

pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|_| PkiError::BadPem {
            path: path.to_owned(),
            what: "certificate",
        })?
        .collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        _ => Err(PkiError::BadPem {
            path: path.to_owned(),
            what: "certificate",
        }),
    }
}

pub(super) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|_| PkiError::BadPem {
        path: path.to_owned(),
        what: "private key",
    })
}

/// The crypto provider: ring, TLS 1.3 only.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration: TLS 1.3, ALPN `ferry/1`, client
/// certificates required, issued by the CA in `data_dir` and not revoked.
pub fn server_tls(
    data_dir: &Path,
    revoked: Arc<RevocationList>,
) -> Result<rustls::ServerConfig, PkiError> {
    let ca_path = data_dir.join(CA_CERT);
    if !ca_path.exists() {
        return Err(PkiError::NotInitialized(data_dir.to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&ca_path)? {
        roots
            .add(cert)
            .map_err(|e| PkiError::Tls(format!("{}: {e}", ca_path.display())))?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let verifier = Arc::new(AgentVerifier { inner, revoked });
    let chain = read_certs(&data_dir.join(SERVER_CERT))?;
    let key = read_key(&data_dir.join(SERVER_KEY))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ferry_proto::session::ALPN.to_vec()];
    Ok(config)
}

/// A client TLS configuration from an agent bundle's files, for tests and
/// tools that speak to the collector like an agent does.
pub fn client_tls(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ClientConfig, PkiError> {
    client_tls_with(read_certs(ca)?, read_certs(cert)?, read_key(key)?)
}

/// [`client_tls`] from PEM text in memory (an [`Issued`] certificate and
/// [`Authority::ca_pem`]).
pub fn client_tls_pem(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, PkiError> {
    let bad = |what| PkiError::BadPem {
        path: PathBuf::from("(memory)"),
        what,
    };
    let certs = |pem: &str| -> Result<Vec<CertificateDer<'static>>, PkiError> {
        let v: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
        v.ok().filter(|v| !v.is_empty()).ok_or(bad("certificate"))
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| bad("private key"))?;
    client_tls_with(certs(ca_pem)?, certs(cert_pem)?, key)
}

pub(super) fn client_tls_with(
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c)
            .map_err(|e| PkiError::Tls(format!("CA certificate: {e}")))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ferry_proto::session::ALPN.to_vec()];
    Ok(config)
}

/// WebPKI verification against the CA, then the revocation list and the
/// agent-id rule on the certificate's Common Name.
pub(super) struct AgentVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevocationList>,
}

impl fmt::Debug for AgentVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentVerifier")
    }
}

impl ClientCertVerifier for AgentVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let Some(id) = agent_id_of(end_entity) else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        };
        if self.revoked.contains(&id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
