//! MQTT input (`[[mqtt]]`): subscribes to topic filters on a broker with
//! QoS 1 in a persistent session, and acknowledges each message only after
//! the journal commit that holds it.
//!
//! - **Session.** A fixed `client_id` and `clean_session = false`: the
//!   broker keeps the subscriptions and queues messages while the agent is
//!   away (Mosquitto: set `max_queued_messages` to what an outage needs,
//!   and `persistence true` so the queue survives a broker restart). The
//!   source subscribes again on every connection (harmless when the session
//!   kept the subscriptions).
//! - **Acks.** Manual: a PUBACK goes out only after the commit that holds
//!   the message's readings (or the count of why it had none) returned. A
//!   crash of the agent before that makes the broker redeliver the message
//!   on the next connection; a crash of the broker loses nothing it had
//!   persisted.
//! - **Redeliveries** are not stored twice: the packet id and a hash of
//!   topic and payload of each stored message are committed with it, and a
//!   redelivery (DUP) matching one is acknowledged without being stored
//!   ([`dedupe`] has the rule and its one limit).
//! - **Backpressure.** Messages are decoded and handed to the journal in
//!   batches: those that arrived while the previous batch was being
//!   committed. While the journal refuses work (full, `backpressure`
//!   policy) the source stops reading the connection, so the broker holds
//!   the messages.
//! - **Payloads** (`format`): `line` (line protocol; string fields as
//!   `string_fields` says), `json` (an object: numeric and boolean fields
//!   by dotted path in `json_fields`, or all of them, named by their path
//!   with `_`; a timestamp at `json_timestamp`, in `precision`), `value` (a
//!   plain number or boolean). Without a timestamp a reading gets the time
//!   the agent received it.
//! - **Topic → series**, in the spirit of Telegraf's `topic_parsing`: the
//!   first `[[mqtt.topic_parsing]]` whose `topic` filter matches maps topic
//!   levels by position (`/`-separated patterns, `_` skips a level):
//!   `measurement = "_/measurement/_"` takes the measurement from level 2,
//!   `tags = "site/_/_"` makes level 1 the tag `site`, `field = "_/_/field"`
//!   names a `value` payload's field. Defaults: measurement `measurement`
//!   (`mqtt`), field `value`. Series are `<measurement>_<field>` as for line
//!   protocol, with the tags and, unless `topic_tag = ""`, the tag
//!   `topic=<topic>`. Characters outside Ferry's names in measurement,
//!   field and tag names become `_`.
//! - **Malformed payloads** are counted by reason ([`payload::Malformed`],
//!   `ferry_agent_mqtt_malformed_total{reason=…}`) and reported to the
//!   collector as [`health::REJECTED_INPUT`] for the source; the message is
//!   acknowledged after the commit holding that count (a bad payload is not
//!   redelivered forever).
//! - **TLS** (`tls = true`, with `ca` for a private CA, else the system's
//!   roots) on rustls with ring; `username`/`password`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_clock::{Backoff, Clock, SystemClock};
use ferry_proto::health;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, watch};

pub mod dedupe;
pub mod payload;

use self::dedupe::{Dedupe, Verdict, message_hash};
use self::payload::{Decoded, Malformed, decode};
use crate::intake::{Intake, Refused, SubmitError};
use crate::journal::Work;
use crate::sources::line::{KeyCache, Precision, StringFields};

/// Messages forwarded from the connection to the decoder before the
/// connection stops being read.
const FORWARD_QUEUE: usize = 1024;
/// The largest packet the client reads (Mosquitto's own limit).
const MAX_PACKET: usize = 268_435_455;
/// Most messages per journal submission.
const MAX_BATCH: usize = 4096;
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(10);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);
const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(50);
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);
/// Most connection-error log lines per this period.
const WARN_PERIOD: Duration = Duration::from_secs(10);

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
    pub fn check(&self) -> Result<(), String> {
        let what = format!("[[mqtt]] {:?}", self.name);
        if self.client_id.is_empty() {
            return Err(format!(
                "{what}: client_id is required (a persistent session needs a fixed one)"
            ));
        }
        if self.topics.is_empty() {
            return Err(format!("{what}: topics = [\"…\"] is empty"));
        }
        self.host_port()
            .map_err(|e| format!("{what}: broker {:?}: {e}", self.broker))?;
        if self.keep_alive < Duration::from_secs(1) {
            return Err(format!("{what}: keep_alive: at least 1s"));
        }
        Ok(())
    }

    fn host_port(&self) -> Result<(String, u16), String> {
        let (host, port) = self.broker.rsplit_once(':').ok_or("expected host:port")?;
        let port = port.parse().map_err(|_| "the port is not a number")?;
        Ok((host.trim_matches(['[', ']']).to_owned(), port))
    }

    /// The client options: persistent session, manual acks.
    pub fn options(&self) -> Result<MqttOptions, String> {
        let (host, port) = self.host_port()?;
        if self.client_id.is_empty() {
            return Err("client_id is required".into());
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

    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("ca {}: {e}", path.display()))?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| format!("ca {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("ca {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("ca {}: no certificate", path.display()));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err("tls: no system CA certificates; set ca".into());
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

/// A source's counters.
#[derive(Debug)]
pub struct MqttStats {
    messages: AtomicU64,
    readings_accepted: AtomicU64,
    redeliveries_skipped: AtomicU64,
    string_fields_skipped: AtomicU64,
    malformed: [AtomicU64; Malformed::ALL.len()],
    connections: AtomicU64,
    connection_errors: AtomicU64,
    changed: watch::Sender<()>,
}

impl Default for MqttStats {
    fn default() -> Self {
        Self {
            messages: AtomicU64::new(0),
            readings_accepted: AtomicU64::new(0),
            redeliveries_skipped: AtomicU64::new(0),
            string_fields_skipped: AtomicU64::new(0),
            malformed: Default::default(),
            connections: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            changed: watch::channel(()).0,
        }
    }
}

impl MqttStats {
    /// Messages committed (and acknowledged).
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }
    /// Readings committed.
    pub fn readings_accepted(&self) -> u64 {
        self.readings_accepted.load(Ordering::Relaxed)
    }
    /// Redeliveries of committed messages, acknowledged and not stored.
    pub fn redeliveries_skipped(&self) -> u64 {
        self.redeliveries_skipped.load(Ordering::Relaxed)
    }
    /// Malformed messages for `reason`.
    pub fn malformed(&self, reason: Malformed) -> u64 {
        let i = Malformed::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.malformed[i].load(Ordering::Relaxed)
    }
    /// Connections made (ConnAcks).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// A receiver marked changed after each update.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Prometheus samples `ferry_agent_mqtt_<counter>{source="name"}`
    /// (`messages_total`, `readings_accepted_total`,
    /// `redeliveries_skipped_total`, `string_fields_skipped_total`,
    /// `connections_total`, `connection_errors_total`) and
    /// `ferry_agent_mqtt_malformed_total{source,reason}`.
    pub fn render_prometheus(&self, source: &str, out: &mut String) {
        let source = source.replace('\\', r"\\").replace('"', "\\\"");
        for (name, c) in [
            ("messages_total", &self.messages),
            ("readings_accepted_total", &self.readings_accepted),
            ("redeliveries_skipped_total", &self.redeliveries_skipped),
            ("string_fields_skipped_total", &self.string_fields_skipped),
            ("connections_total", &self.connections),
            ("connection_errors_total", &self.connection_errors),
        ] {
            let v = c.load(Ordering::Relaxed);
            let _ = writeln!(out, "ferry_agent_mqtt_{name}{{source=\"{source}\"}} {v}");
        }
        for (reason, c) in Malformed::ALL.iter().zip(&self.malformed) {
            let _ = writeln!(
                out,
                "ferry_agent_mqtt_malformed_total{{source=\"{source}\",reason=\"{}\"}} {}",
                reason.name(),
                c.load(Ordering::Relaxed)
            );
        }
    }

    fn add(&self, c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
            self.changed.send_modify(|_| {});
        }
    }
}

/// A batch being built or committed: its work, the messages to acknowledge
/// after its commit, and the marks it carries.
#[derive(Default)]
struct Batch {
    work: Work,
    acks: Vec<Publish>,
    marks: Vec<u16>,
    messages: u64,
    readings: u64,
    strings: u64,
    malformed: Vec<Malformed>,
    refusals: u32,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.work.is_empty()
    }
}

type Commit = Pin<Box<dyn Future<Output = Result<(), Refused>> + Send>>;

/// Runs the source until `shutdown`: connects (and reconnects), decodes,
/// commits, acknowledges. `marks` are the journal's records with
/// [`Dedupe::prefix`]`(name)`.
pub async fn run(
    cfg: MqttConfig,
    marks: Vec<crate::journal::Mark>,
    intake: Intake,
    stats: Arc<MqttStats>,
    shutdown: impl Future<Output = ()>,
) {
    let options = match cfg.options() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(source = %cfg.name, error = %e, "MQTT source not started");
            return;
        }
    };
    // Room for every ack of a full batch: acks are queued with try_ack from
    // this task, never waiting on the event loop.
    let (client, eventloop) = AsyncClient::new(options, 2 * MAX_BATCH);
    let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
    let connection = tokio::spawn(drive(
        eventloop,
        client.clone(),
        cfg.clone(),
        tx,
        stats.clone(),
    ));
    let source = Source {
        dedupe: Dedupe::load(&cfg.name, &marks),
        cfg,
        intake,
        stats,
        client,
        clock: Arc::new(SystemClock),
        keys: KeyCache::default(),
        unsent: VecDeque::new(),
    };
    source.process(rx, shutdown).await;
    connection.abort();
    let _ = connection.await;
}

/// Polls the connection; forwards PUBLISHes; subscribes on each ConnAck.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    cfg: MqttConfig,
    tx: mpsc::Sender<Publish>,
    stats: Arc<MqttStats>,
) {
    let mut pause = Backoff::new(FIRST_RECONNECT_PAUSE, MAX_RECONNECT_PAUSE);
    let mut last_warn: Option<tokio::time::Instant> = None;
    let mut suppressed = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                pause = Backoff::new(FIRST_RECONNECT_PAUSE, MAX_RECONNECT_PAUSE);
                stats.add(&stats.connections, 1);
                tracing::info!(source = %cfg.name, broker = %cfg.broker,
                    session_present = ack.session_present, "connected to the MQTT broker");
                let filters = cfg
                    .topics
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(filters) {
                    tracing::error!(source = %cfg.name, error = %e, "subscribing failed");
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.add(&stats.connection_errors, 1);
                let now = tokio::time::Instant::now();
                if last_warn.is_none_or(|t| now.duration_since(t) >= WARN_PERIOD) {
                    tracing::warn!(source = %cfg.name, broker = %cfg.broker, error = %e,
                        suppressed, "MQTT connection failed; reconnecting");
                    last_warn = Some(now);
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                tokio::time::sleep(pause.next_delay()).await;
            }
        }
    }
}

struct Source {
    cfg: MqttConfig,
    intake: Intake,
    stats: Arc<MqttStats>,
    client: AsyncClient,
    clock: Arc<dyn Clock>,
    keys: KeyCache,
    dedupe: Dedupe,
    /// Acks the client's queue had no room for yet.
    unsent: VecDeque<Publish>,
}

impl Source {
    async fn process(
        mut self,
        mut rx: mpsc::Receiver<Publish>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut building = Batch::default();
        let mut committing: Option<(Batch, Commit)> = None;
        loop {
            self.flush_acks();
            if committing.is_none() && !building.is_empty() {
                let mut batch = std::mem::take(&mut building);
                let commit = self.submit(std::mem::take(&mut batch.work));
                committing = Some((batch, commit));
            }
            let room = building.acks.len() < MAX_BATCH;
            let acks_waiting = !self.unsent.is_empty();
            tokio::select! {
                _ = &mut shutdown => break,
                // The client's request queue was full: try again shortly.
                _ = tokio::time::sleep(FIRST_RETRY_PAUSE), if acks_waiting => {}
                Some(p) = rx.recv(), if room => self.receive(p, &mut building),
                done = async { committing.as_mut().expect("guarded").1.as_mut().await }, if committing.is_some() => {
                    let (batch, _) = committing.take().expect("guarded");
                    match done {
                        Ok(()) => self.committed(batch),
                        Err(Refused { error: SubmitError::Shutdown, .. }) => break,
                        Err(Refused { error, work: Some(work) }) => {
                            // Full: the same batch again after a pause; no
                            // new messages meanwhile (the broker holds them).
                            tracing::debug!(source = %self.cfg.name, %error, "journal refused a batch; pausing");
                            let mut batch = batch;
                            let intake = self.intake.clone();
                            let pause = batch_pause(&mut batch);
                            let commit: Commit = Box::pin(async move {
                                tokio::time::sleep(pause).await;
                                submit_work(intake, *work).await
                            });
                            committing = Some((batch, commit));
                        }
                        Err(Refused { error, work: None }) => {
                            // Not acknowledged: the broker redelivers these
                            // messages on the next connection.
                            tracing::error!(source = %self.cfg.name, %error, messages = batch.acks.len(),
                                "journal commit failed; messages left unacknowledged");
                            self.dedupe.forget(&batch.marks);
                        }
                    }
                }
            }
        }
        // Uncommitted messages stay unacknowledged: redelivered next time.
    }

    fn receive(&mut self, p: Publish, batch: &mut Batch) {
        if p.qos != QoS::AtMostOnce {
            let hash = message_hash(&p.topic, &p.payload);
            match self.dedupe.receive(p.pkid, p.dup, hash) {
                Verdict::AckNow => {
                    self.stats.add(&self.stats.redeliveries_skipped, 1);
                    self.ack(p);
                    return;
                }
                Verdict::AckAfterCommit => {
                    self.stats.add(&self.stats.redeliveries_skipped, 1);
                    batch.acks.push(p);
                    return;
                }
                Verdict::Store => {
                    batch.work.marks.push(self.dedupe.record(p.pkid, hash));
                    batch.marks.push(p.pkid);
                }
            }
        }
        let decoded = if p.payload.len() > self.cfg.max_message_bytes {
            Decoded {
                malformed: vec![Malformed::TooLarge],
                ..Decoded::default()
            }
        } else {
            decode(
                &self.cfg,
                &mut self.keys,
                &p.topic,
                &p.payload,
                self.clock.now_ns(),
            )
        };
        batch.messages += 1;
        batch.readings += decoded
            .readings
            .iter()
            .map(|g| g.readings.len() as u64)
            .sum::<u64>();
        batch.strings += decoded.strings_skipped;
        if !decoded.malformed.is_empty() {
            let n = decoded.malformed.len() as u64;
            match batch
                .work
                .health
                .iter_mut()
                .find(|(_, kind, _)| *kind == health::REJECTED_INPUT)
            {
                Some(h) => h.2 += n,
                None => batch
                    .work
                    .health
                    .push((self.cfg.name.clone(), health::REJECTED_INPUT, n)),
            }
            batch.malformed.extend(decoded.malformed);
        }
        if decoded.strings_skipped > 0 {
            batch.work.health.push((
                self.cfg.name.clone(),
                health::SKIPPED_STRING_FIELDS,
                decoded.strings_skipped,
            ));
        }
        batch.work.readings.extend(decoded.readings);
        if p.qos != QoS::AtMostOnce {
            batch.acks.push(p);
        }
    }

    fn submit(&self, work: Work) -> Commit {
        Box::pin(submit_work(self.intake.clone(), work))
    }

    fn committed(&mut self, batch: Batch) {
        self.dedupe.committed(&batch.marks);
        let s = &self.stats;
        s.add(&s.messages, batch.messages);
        s.add(&s.readings_accepted, batch.readings);
        s.add(&s.string_fields_skipped, batch.strings);
        for m in batch.malformed {
            let i = Malformed::ALL.iter().position(|r| *r == m).unwrap_or(0);
            s.add(&s.malformed[i], 1);
        }
        for p in batch.acks {
            self.ack(p);
        }
    }

    fn ack(&mut self, p: Publish) {
        self.unsent.push_back(p);
        self.flush_acks();
    }

    fn flush_acks(&mut self) {
        while let Some(p) = self.unsent.front() {
            match self.client.try_ack(p) {
                Ok(()) => {
                    self.unsent.pop_front();
                }
                Err(rumqttc::ClientError::TryRequest(_)) => break,
                Err(e) => {
                    // The event loop is gone (stopping): the broker
                    // redelivers, and the marks recognise the messages.
                    tracing::debug!(source = %self.cfg.name, error = %e, "ack not sent");
                    self.unsent.clear();
                    break;
                }
            }
        }
    }
}

async fn submit_work(intake: Intake, work: Work) -> Result<(), Refused> {
    intake.submit_or_return(work).await.map(|_| ())
}

/// The pause before resubmitting a refused batch: doubles per refusal of
/// the same batch, up to [`MAX_RETRY_PAUSE`].
fn batch_pause(batch: &mut Batch) -> Duration {
    let pause = FIRST_RETRY_PAUSE.saturating_mul(1 << batch.refusals.min(16));
    batch.refusals += 1;
    pause.min(MAX_RETRY_PAUSE)
}
