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
//!   collector as [`REJECTED_INPUT`](ferry_proto::health::REJECTED_INPUT) for the source; the message is
//!   acknowledged after the commit holding that count (a bad payload is not
//!   redelivered forever).
//! - **Structure.** `pipeline.rs` holds the decisions (what to commit, when
//!   to ack which packet, when to resubmit, when to reconnect), sans-IO
//!   with fake-clock tests; [`run`] here only moves packets, journal
//!   answers and timers between it and rumqttc.
//! - **TLS** (`tls = true`, with `ca` for a private CA, else the system's
//!   roots) on rustls with ring; `username`/`password`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ferry_clock::{Clock, SystemClock, until};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use tokio::sync::mpsc;

mod config;
pub mod dedupe;
pub mod payload;
mod pipeline;
mod stats;

pub use config::{
    BrokerError, MqttCheckError, MqttConfig, OptionsError, PayloadFormat, TopicParsing,
};
pub use stats::MqttStats;

use self::dedupe::Dedupe;
use self::pipeline::{AckSent, Flow, MAX_BATCH, Pipeline, Reconnect};
use crate::intake::{Intake, Refused};
use crate::journal::Work;

/// Messages forwarded from the connection to the decoder before the
/// connection stops being read.
const FORWARD_QUEUE: usize = 1024;
/// The largest packet the client reads (Mosquitto's own limit).
const MAX_PACKET: usize = 268_435_455;

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
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let connection = tokio::spawn(drive(
        eventloop,
        client.clone(),
        cfg.clone(),
        tx,
        stats.clone(),
        clock.clone(),
    ));
    let pipeline = Pipeline::new(cfg.clone(), Dedupe::load(&cfg.name, &marks), stats);
    process(pipeline, &cfg.name, &client, &intake, &*clock, rx, shutdown).await;
    connection.abort();
    let _ = connection.await;
}

/// Polls the connection; forwards PUBLISHes; subscribes on each ConnAck;
/// after an error, waits as [`Reconnect`] says.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    cfg: MqttConfig,
    tx: mpsc::Sender<Publish>,
    stats: Arc<MqttStats>,
    clock: Arc<dyn Clock>,
) {
    let mut reconnect = Reconnect::default();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                reconnect.handle_connected();
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
                let (at, log) = reconnect.handle_error(clock.now_ns());
                if let Some(suppressed) = log {
                    tracing::warn!(source = %cfg.name, broker = %cfg.broker, error = %e,
                        suppressed, "MQTT connection failed; reconnecting");
                }
                tokio::time::sleep(until(clock.now_ns(), at)).await;
            }
        }
    }
}

/// Moves messages into `pipeline`, its work to the journal and its acks to
/// the client, and sleeps until it asks to be woken, until `shutdown`.
/// Uncommitted messages stay unacknowledged: redelivered next time.
async fn process(
    mut pipeline: Pipeline,
    source: &str,
    client: &AsyncClient,
    intake: &Intake,
    clock: &dyn Clock,
    mut rx: mpsc::Receiver<Publish>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut commit: Option<Commit> = None;
    loop {
        let now = clock.now_ns();
        pipeline.flush_acks(now, |p| match client.try_ack(p) {
            Ok(()) => AckSent::Queued,
            Err(rumqttc::ClientError::TryRequest(_)) => AckSent::Full,
            Err(e) => {
                tracing::debug!(source, error = %e, "ack not sent");
                AckSent::Gone
            }
        });
        if commit.is_none()
            && let Some(work) = pipeline.poll_submit(now)
        {
            commit = Some(Box::pin(submit_work(intake.clone(), work)));
        }
        let wake = pipeline.poll_wake().map(|at| until(now, at));
        tokio::select! {
            _ = &mut shutdown => break,
            _ = sleep_for(wake) => {}
            Some(p) = rx.recv(), if pipeline.has_room() => pipeline.handle_publish(clock.now_ns(), p),
            done = async { commit.as_mut().expect("guarded").as_mut().await }, if commit.is_some() => {
                commit = None;
                if pipeline.handle_answer(clock.now_ns(), done) == Flow::Stop {
                    break;
                }
            }
        }
    }
}

/// Resolves after `wait`; never without one.
async fn sleep_for(wait: Option<std::time::Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

async fn submit_work(intake: Intake, work: Work) -> Result<(), Refused> {
    intake.submit_or_return(work).await.map(|_| ())
}
