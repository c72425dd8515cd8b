//! `[[mqtt]]` as written in the agent's config: the broker, the session's
//! client id, topic filters, payload format and topic parsing, TLS and
//! credentials; checked when the config is loaded, and turned into the
//! MQTT client's options (with rustls on ring when `tls = true`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, Transport};

use super::*;
use crate::sources::line::{Precision, StringFields};

/// A payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Influx line protocol, one or more lines.
    #[default]
    Line,
    /// A JSON object.
    Json,
    /// A plain number (or `true`/`false`).
    Value,
}

/// `[[mqtt.topic_parsing]]`: levels of matching topics by position.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicParsing {
    /// Topic filter (`+`, `#`) this rule applies to.
    pub topic: String,
    /// The level named `measurement` (any name but `_`) is the measurement.
    pub measurement: String,
    /// Each named level is a tag of that name.
    pub tags: String,
    /// The named level names the field (`value` payloads).
    pub field: String,
}

/// One `[[mqtt]]` source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// The source's name (origin of readings without the device tag, of
    /// malformed-payload counts; key of its redelivery marks).
    pub name: String,
    /// Broker `host:port`.
    pub broker: String,
    /// The fixed client id of the persistent session (required).
    pub client_id: String,
    /// Topic filters, subscribed with QoS 1.
    pub topics: Vec<String>,
    /// Broker user name.
    pub username: String,
    /// Broker password.
    pub password: String,
    /// TLS to the broker.
    pub tls: bool,
    /// PEM CA certificates for TLS (else the system's roots).
    pub ca: Option<PathBuf>,
    /// MQTT keep-alive.
    #[serde(deserialize_with = "crate::config::duration")]
    pub keep_alive: Duration,
    /// Largest accepted message, bytes.
    pub max_message_bytes: usize,
    /// Payload format.
    pub format: PayloadFormat,
    /// Timestamp unit (line protocol and the JSON timestamp).
    pub precision: Precision,
    /// String fields of line protocol payloads: `skip` or `reject`.
    pub string_fields: StringFields,
    /// Measurement when no topic rule names one.
    pub measurement: String,
    /// Tag holding the whole topic; empty: none.
    pub topic_tag: String,
    /// Tag whose value is a reading's origin.
    pub device_tag: String,
    /// JSON fields by dotted path; empty: every numeric field.
    pub json_fields: Vec<String>,
    /// Dotted path of a JSON timestamp (an integer in `precision`); empty:
    /// the receive time.
    pub json_timestamp: String,
    /// Topic rules, first match wins.
    pub topic_parsing: Vec<TopicParsing>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            name: "mqtt".to_owned(),
            broker: "127.0.0.1:1883".to_owned(),
            client_id: String::new(),
            topics: Vec::new(),
            username: String::new(),
            password: String::new(),
            tls: false,
            ca: None,
            keep_alive: Duration::from_secs(30),
            max_message_bytes: 1 << 20,
            format: PayloadFormat::Line,
            precision: Precision::Nanoseconds,
            string_fields: StringFields::Skip,
            measurement: "mqtt".to_owned(),
            topic_tag: "topic".to_owned(),
            device_tag: "device".to_owned(),
            json_fields: Vec::new(),
            json_timestamp: String::new(),
            topic_parsing: Vec::new(),
        }
    }
}

impl MqttConfig {
    /// Why this source may not start.
    pub fn check(&self) -> Result<(), MqttCheckError> {
        let name = || self.name.clone();
        if self.client_id.is_empty() {
            return Err(MqttCheckError::NoClientId { name: name() });
        }
        if self.topics.is_empty() {
            return Err(MqttCheckError::NoTopics { name: name() });
        }
        self.host_port().map_err(|source| MqttCheckError::Broker {
            name: name(),
            broker: self.broker.clone(),
            source,
        })?;
        if self.keep_alive < Duration::from_secs(1) {
            return Err(MqttCheckError::KeepAlive { name: name() });
        }
        Ok(())
    }

    fn host_port(&self) -> Result<(String, u16), BrokerError> {
        let (host, port) = self.broker.rsplit_once(':').ok_or(BrokerError::NoPort)?;
        let port = port.parse().map_err(|_| BrokerError::BadPort)?;
        Ok((host.trim_matches(['[', ']']).to_owned(), port))
    }

    /// The client options: persistent session, manual acks.
    ///
    /// # Errors
    /// [`OptionsError`]: the broker address, the client id or the TLS
    /// setup.
    pub fn options(&self) -> Result<MqttOptions, OptionsError> {
        let (host, port) = self.host_port()?;
        if self.client_id.is_empty() {
            return Err(OptionsError::NoClientId);
        }
        let mut o = MqttOptions::new(self.client_id.clone(), host, port);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(self.keep_alive)
            // Larger messages are counted (`too_large`) and acknowledged,
            // not refused by the client: that would drop the connection
            // and have the broker redeliver the message forever.
            .set_max_packet_size(MAX_PACKET, 64 * 1024);
        if !self.username.is_empty() {
            o.set_credentials(self.username.clone(), self.password.clone());
        }
        if self.tls {
            o.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(Arc::new(
                self.tls_config()?,
            ))));
        }
        Ok(o)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, OptionsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                let read = |source| OptionsError::ReadCa {
                    path: path.clone(),
                    source,
                };
                let pem = std::fs::read(path).map_err(read)?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(read)?;
                    roots.add(cert).map_err(|source| OptionsError::BadCa {
                        path: path.clone(),
                        source,
                    })?;
                }
                if roots.is_empty() {
                    return Err(OptionsError::NoCaCert(path.clone()));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(OptionsError::NoSystemRoots);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(OptionsError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

/// Why the broker address does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// No `:port`.
    #[error("expected host:port")]
    NoPort,
    /// The port is not a number.
    #[error("the port is not a number")]
    BadPort,
}

/// Why an `[[mqtt]]` source may not start (`ferry-agent check-config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MqttCheckError {
    /// No `client_id`.
    #[error("[[mqtt]] {name:?}: client_id is required (a persistent session needs a fixed one)")]
    NoClientId {
        /// The source's name.
        name: String,
    },
    /// `topics` is empty.
    #[error("[[mqtt]] {name:?}: topics = [\"…\"] is empty")]
    NoTopics {
        /// The source's name.
        name: String,
    },
    /// `broker` is not `host:port`.
    #[error("[[mqtt]] {name:?}: broker {broker:?}: {source}")]
    Broker {
        /// The source's name.
        name: String,
        /// What `broker` held.
        broker: String,
        /// What is wrong with it.
        source: BrokerError,
    },
    /// `keep_alive` under a second.
    #[error("[[mqtt]] {name:?}: keep_alive: at least 1s")]
    KeepAlive {
        /// The source's name.
        name: String,
    },
}

/// Why the MQTT client's options could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// The broker address does not parse.
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// No `client_id`.
    #[error("client_id is required")]
    NoClientId,
    /// The CA file could not be read or is not PEM.
    #[error("ca {}: {source}", path.display())]
    ReadCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate of the CA file was refused.
    #[error("ca {}: {source}", path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// The CA file holds no certificate.
    #[error("ca {}: no certificate", .0.display())]
    NoCaCert(PathBuf),
    /// `ca` is not set and the system has no CA certificates.
    #[error("tls: no system CA certificates; set ca")]
    NoSystemRoots,
    /// rustls refused the protocol versions.
    #[error("{0}")]
    Tls(rustls::Error),
}
