//! The collector's own certificate authority: `init` creates it, `enroll`
//! issues agent certificates, and the QUIC endpoint checks client
//! certificates against it and the revocation list.
//!
//! **Invariant:** an agent's identity is the Common Name of the client
//! certificate it completed the TLS handshake with; nothing in a payload can
//! change it.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::config::{DEFAULT_QUIC_PORT, DEFAULT_TOML};

mod tls;

pub use tls::{RevocationList, agent_id_of, client_tls, client_tls_pem, server_tls};

/// CA certificate file in the data directory (and in agent bundles).
pub const CA_CERT: &str = "ca.crt";
/// CA private key file in the data directory.
pub const CA_KEY: &str = "ca.key";
/// Server certificate file in the data directory.
pub const SERVER_CERT: &str = "server.crt";
/// Server private key file in the data directory.
pub const SERVER_KEY: &str = "server.key";
/// Directory of issued agent certificates, `<agent id>.crt`.
pub const AGENTS_DIR: &str = "agents";
/// Configuration file written by `init`.
pub const CONFIG_FILE: &str = "collector.toml";
/// Longest agent id, in bytes.
pub const MAX_AGENT_ID_LEN: usize = 64;

const CA_NAME: &str = "Ferry collector CA";
const SERVER_NAME: &str = "ferry-collector";

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// `init` found an existing CA and refuses to overwrite it.
    #[error("{0} already exists: refusing to overwrite an existing certificate authority")]
    AlreadyInitialized(PathBuf),
    /// The data directory has no CA: run `init` first.
    #[error("no certificate authority at {0}: run `ferry-collector init` first")]
    NotInitialized(PathBuf),
    /// `enroll` refuses to overwrite an existing bundle.
    #[error("{0} already exists: refusing to overwrite an agent key")]
    BundleExists(PathBuf),
    /// The agent id breaks the naming rule.
    #[error("agent id {id:?}: {why}")]
    BadAgentId {
        /// The id.
        id: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate or key file is not valid PEM of the expected kind.
    #[error("{path}: not a valid PEM {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What `init` should create.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The data directory (created if missing).
    pub data_dir: PathBuf,
    /// Subject alternative names of the server certificate: DNS names or IP
    /// addresses agents use to reach the collector.
    pub sans: Vec<String>,
    /// Write a commented `collector.toml` into the data directory (unless
    /// one is there). Off when the configuration lives elsewhere, as with
    /// the Debian package's `/etc/ferry-collector/collector.toml`.
    pub write_config: bool,
}

impl InitOptions {
    /// Defaults: SANs `localhost` and `127.0.0.1`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            write_config: true,
        }
    }
}

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The configuration file (`None` if one existed and was kept, or none
    /// was asked for).
    pub config: Option<PathBuf>,
}

/// Creates the data directory, a CA, a server certificate and a commented
/// `collector.toml` (kept if present). Refuses to overwrite an existing CA.
pub fn init(opts: &InitOptions) -> Result<InitReport, PkiError> {
    let dir = &opts.data_dir;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_cert_path = dir.join(CA_CERT);
    if ca_cert_path.exists() || dir.join(CA_KEY).exists() {
        return Err(PkiError::AlreadyInitialized(ca_cert_path));
    }
    fs::create_dir_all(dir.join(AGENTS_DIR)).map_err(io_err(dir))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, CA_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca_params, 20 * 365);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(opts.sans.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, 10 * 365);
    let server_cert = params.signed_by(&server_key, &issuer)?;

    write_private(&dir.join(CA_KEY), &ca_key.serialize_pem())?;
    write_file(&ca_cert_path, &ca_cert.pem())?;
    write_private(&dir.join(SERVER_KEY), &server_key.serialize_pem())?;
    write_file(&dir.join(SERVER_CERT), &server_cert.pem())?;
    let config_path = dir.join(CONFIG_FILE);
    let config = if config_path.exists() || !opts.write_config {
        None
    } else {
        write_file(&config_path, DEFAULT_TOML)?;
        Some(config_path)
    };
    Ok(InitReport {
        ca_cert: ca_cert_path,
        server_cert: dir.join(SERVER_CERT),
        config,
    })
}

/// What `enroll` should issue.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The collector's data directory (with the CA).
    pub data_dir: PathBuf,
    /// The agent's id: the certificate's Common Name.
    pub agent_id: String,
    /// Where the bundle is written (created if missing).
    pub out_dir: PathBuf,
    /// The collector address written into `agent.toml`.
    pub address: String,
    /// The TLS server name written into `agent.toml` (a SAN of the server
    /// certificate).
    pub server_name: String,
    /// Days the certificate is valid from now; negative values issue an
    /// already-expired certificate (for tests of expiry handling).
    pub valid_days: i64,
}

impl EnrollOptions {
    /// Defaults: address `127.0.0.1:7410`, server name `localhost`, 5 years.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        agent_id: impl Into<String>,
        out_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            data_dir: data_dir.into(),
            agent_id: agent_id.into(),
            out_dir: out_dir.into(),
            address: format!("127.0.0.1:{DEFAULT_QUIC_PORT}"),
            server_name: "localhost".into(),
            valid_days: 5 * 365,
        }
    }
}

/// The files of an agent bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The agent id.
    pub agent_id: String,
    /// `agent.crt`: the client certificate.
    pub cert: PathBuf,
    /// `agent.key`: its private key (mode 0600).
    pub key: PathBuf,
    /// `ca.crt`: the collector's CA, to verify the server.
    pub ca: PathBuf,
    /// `agent.toml`: the agent configuration snippet.
    pub config: PathBuf,
}

/// Issues a client certificate for `agent_id` and writes the bundle
/// (`agent.crt`, `agent.key`, `ca.crt`, `agent.toml`) to `out_dir`, with the
/// defaults of [`EnrollOptions::new`].
pub fn enroll(data_dir: &Path, agent_id: &str, out_dir: &Path) -> Result<Bundle, PkiError> {
    enroll_with(&EnrollOptions::new(data_dir, agent_id, out_dir))
}

/// [`enroll`] with every option.
pub fn enroll_with(opts: &EnrollOptions) -> Result<Bundle, PkiError> {
    validate_agent_id(&opts.agent_id)?;
    let authority = Authority::load(&opts.data_dir)?;
    let out = &opts.out_dir;
    fs::create_dir_all(out).map_err(io_err(out))?;
    let key_path = out.join("agent.key");
    if key_path.exists() {
        return Err(PkiError::BundleExists(key_path));
    }
    let issued = authority.issue(&opts.agent_id, opts.valid_days)?;
    let cert_path = out.join("agent.crt");
    let ca_out = out.join(CA_CERT);
    let config_path = out.join("agent.toml");
    write_private(&key_path, &issued.key_pem)?;
    write_file(&cert_path, &issued.cert_pem)?;
    write_file(&ca_out, authority.ca_pem())?;
    write_file(&config_path, &agent_toml(opts))?;
    authority.record(&opts.agent_id, &issued.cert_pem)?;
    Ok(Bundle {
        agent_id: opts.agent_id.clone(),
        cert: cert_path,
        key: key_path,
        ca: ca_out,
        config: config_path,
    })
}

/// A certificate and its key, in PEM, as issued (nothing written).
#[derive(Clone)]
pub struct Issued {
    /// The agent id (the certificate's Common Name).
    pub agent_id: String,
    /// The client certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

/// The CA of a data directory, loaded once to issue many certificates
/// (what `enroll` does one at a time; the fleet benchmark issues 10,000).
pub struct Authority {
    data_dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA certificate and key of `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, PkiError> {
        let ca_cert_path = data_dir.join(CA_CERT);
        let ca_key_path = data_dir.join(CA_KEY);
        if !ca_cert_path.exists() || !ca_key_path.exists() {
            return Err(PkiError::NotInitialized(data_dir.to_owned()));
        }
        let ca_pem = fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
        let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|_| PkiError::BadPem {
            path: ca_key_path.clone(),
            what: "private key",
        })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|_| PkiError::BadPem {
            path: ca_cert_path.clone(),
            what: "certificate",
        })?;
        Ok(Self {
            data_dir: data_dir.to_owned(),
            ca_pem,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a client certificate for `agent_id`, valid for `valid_days`
    /// (negative: already expired). Writes nothing.
    pub fn issue(&self, agent_id: &str, valid_days: i64) -> Result<Issued, PkiError> {
        validate_agent_id(agent_id)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, agent_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, valid_days);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            agent_id: agent_id.to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Records an issued certificate as enrolled (`agents/<id>.crt`, what
    /// the agents table lists).
    pub fn record(&self, agent_id: &str, cert_pem: &str) -> Result<(), PkiError> {
        validate_agent_id(agent_id)?;
        let agents = self.data_dir.join(AGENTS_DIR);
        fs::create_dir_all(&agents).map_err(io_err(&agents))?;
        write_file(&agents.join(format!("{agent_id}.crt")), cert_pem)
    }
}

fn agent_toml(opts: &EnrollOptions) -> String {
    format!(
        "# Issued by `ferry-collector enroll {id}`. Paths are relative to this file.\n\
         [collector]\n\
         # QUIC address of the collector (UDP).\n\
         address = \"{address}\"\n\
         # Name the collector's certificate is checked against.\n\
         server_name = \"{server_name}\"\n\
         ca = \"ca.crt\"\n\
         cert = \"agent.crt\"\n\
         key = \"agent.key\"\n\
         # For logs only: the collector takes the agent's identity from its certificate.\n\
         agent_id = \"{id}\"\n",
        id = opts.agent_id,
        address = opts.address,
        server_name = opts.server_name,
    )
}

/// Agent ids: 1 to [`MAX_AGENT_ID_LEN`] bytes of `A-Z a-z 0-9 . _ -`,
/// starting with a letter or digit (they name files and appear in URLs).
pub fn validate_agent_id(id: &str) -> Result<(), PkiError> {
    let bad = |why| {
        Err(PkiError::BadAgentId {
            id: id.to_owned(),
            why,
        })
    };
    let Some(first) = id.bytes().next() else {
        return bad("empty");
    };
    if id.len() > MAX_AGENT_ID_LEN {
        return bad("longer than 64 bytes");
    }
    if !first.is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only A-Z a-z 0-9 . _ - are allowed");
    }
    Ok(())
}

/// Agents enrolled in `data_dir` (from `agents/*.crt`), sorted.
pub fn enrolled_agents(data_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(data_dir.join(AGENTS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".crt").map(str::to_owned)
        })
        .collect();
    out.sort();
    out
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    if days >= 0 {
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
    } else {
        params.not_before = now + time::Duration::days(days * 2);
        params.not_after = now + time::Duration::days(days);
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), PkiError> {
    fs::write(path, text).map_err(io_err(path))
}

fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests;
