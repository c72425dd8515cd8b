//! The agent's TLS: its enrolled bundle as a rustls client configuration,
//! over a crypto provider narrowed to what enrollment issues.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable.
    #[error("{path}: not a readable PEM {what}")]
    Pem {
        /// The file.
        path: String,
        /// What it should hold.
        what: &'static str,
    },
    /// rustls refused the material.
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// The agent's TLS configuration from its enrolled bundle: the collector's
/// CA as the only root, the agent's certificate and key, TLS 1.3, ALPN
/// `ferry/1`.
pub fn client_tls(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ClientConfig, TlsError> {
    let pem = |path: &std::path::Path, what| TlsError::Pem {
        path: path.display().to_string(),
        what,
    };
    let certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let v: Vec<_> = CertificateDer::pem_file_iter(path)
            .map_err(|_| pem(path, "certificate"))?
            .collect::<Result<_, _>>()
            .map_err(|_| pem(path, "certificate"))?;
        if v.is_empty() {
            return Err(pem(path, "certificate"));
        }
        Ok(v)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| TlsError::Rustls(e.to_string()))?;
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| pem(key, "private key"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(tls_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(cert)?, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![ferry_proto::session::ALPN.to_vec()];
    Ok(config)
}

/// The TLS the agent speaks: TLS 1.3 with AES-128-GCM, key exchange on
/// P-256, ECDSA P-256 signatures. That is what `ferry-collector enroll`
/// issues (rcgen's ECDSA P-256 keys, for the CA, the collector and every
/// agent) and what every QUIC stack implements. ring's default provider also
/// carries X25519, ChaCha20-Poly1305, P-384 and RSA; listing only what is used
/// lets the linker leave them out, code the idle agent would otherwise keep
/// resident (agent/README.md, "What bounds it").
pub fn tls_provider() -> rustls::crypto::CryptoProvider {
    use rustls::SignatureScheme;
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::crypto::ring::{cipher_suite, kx_group};
    use webpki::ring::ECDSA_P256_SHA256;
    static SIGNATURES: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
        all: &[ECDSA_P256_SHA256],
        mapping: &[(SignatureScheme::ECDSA_NISTP256_SHA256, &[ECDSA_P256_SHA256])],
    };
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![kx_group::SECP256R1],
        signature_verification_algorithms: SIGNATURES,
        secure_random: &RingKeys,
        key_provider: &RingKeys,
    }
}

/// Randomness and the agent's private key, from ring: what rustls' own ring
/// provider does, without naming every algorithm it has.
#[derive(Debug)]
struct RingKeys;

impl rustls::crypto::SecureRandom for RingKeys {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

impl rustls::crypto::KeyProvider for RingKeys {
    fn load_private_key(
        &self,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        rustls::crypto::ring::sign::any_ecdsa_type(&key)
    }
}
