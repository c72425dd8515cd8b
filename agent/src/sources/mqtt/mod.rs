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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_clock::{Backoff, Clock, SystemClock};
use ferry_proto::health;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use tokio::sync::mpsc;

mod config;
pub mod dedupe;
pub mod payload;
mod stats;

pub use config::{
    BrokerError, MqttCheckError, MqttConfig, OptionsError, PayloadFormat, TopicParsing,
};
pub use stats::MqttStats;

use self::dedupe::{Dedupe, Verdict, message_hash};
use self::payload::{Decoded, Malformed, decode};
use crate::intake::{Intake, Refused, SubmitError};
use crate::journal::Work;
use crate::sources::line::KeyCache;

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
