//! The [`Log`] on NATS JetStream: one file-stored stream (`<stream>.>`
//! subjects, R replicas, a duplicate window on `Nats-Msg-Id`), durable pull
//! consumers with explicit acks.
//!
//! "Durable" is the NATS servers' business: a publish ack comes once a
//! majority of the stream's replicas has the record; with `sync_interval:
//! always` in the servers' JetStream configuration each of them has also
//! fsynced it (docs/cluster.md, "Running NATS").

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;

use super::log::{BoxFuture, Consumer, ConsumerLag, Delivery, Log, LogError, LogStatus, Published};
use crate::config::ClusterConfig;

/// A JetStream connection bound to one stream.
#[derive(Debug, Clone)]
pub struct JetStream {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    ack_wait: Duration,
}

/// The subject token of a key: NATS subjects are dot-separated tokens, so
/// anything but letters, digits, `-` and `_` becomes `_` (the key itself
/// travels in the record; the subject only groups records).
pub fn subject_token(key: &str) -> String {
    let t: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "_".into() } else { t }
}

impl JetStream {
    /// Connects to the configured servers (retrying until one answers) and
    /// makes sure the stream exists with the configured replicas and
    /// duplicate window.
    pub async fn connect(config: &ClusterConfig) -> Result<Self, LogError> {
        let addrs = config
            .nats
            .iter()
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| LogError::new("parsing cluster.nats", format!("{u}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = async_nats::ConnectOptions::new()
            .name("ferry-collector")
            .retry_on_initial_connect()
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout))
            .event_callback(|event| async move {
                tracing::info!("NATS: {event}");
            })
            .connect(addrs)
            .await
            .map_err(|e| LogError::new("connecting to NATS", e))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.timeout);
        let want = stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.stream)],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window,
            ..Default::default()
        };
        // The stream may be missing while the cluster elects its meta
        // leader just after start: retry for a while.
        let mut tries = 0;
        loop {
            match js.get_or_create_stream(want.clone()).await {
                Ok(_) => break,
                Err(e) if tries < 60 => {
                    tries += 1;
                    tracing::info!("JetStream stream {} not ready yet: {e}", config.stream);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(LogError::new("creating the JetStream stream", e)),
            }
        }
        Ok(Self {
            client,
            js,
            stream: config.stream.clone(),
            ack_wait: config.ack_wait,
        })
    }
}

fn lag_of(info: &jetstream::consumer::Info) -> ConsumerLag {
    ConsumerLag {
        name: info.name.clone(),
        pending: info.num_pending,
        ack_pending: info.num_ack_pending as u64,
        redelivered: info.num_redelivered as u64,
        ack_floor: info.ack_floor.stream_sequence,
    }
}

impl Log for JetStream {
    fn publish<'a>(
        &'a self,
        key: &'a str,
        id: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<Published, LogError>> {
        Box::pin(async move {
            let subject = format!("{}.{}", self.stream, subject_token(key));
            let ack = self
                .js
                .send_publish(
                    subject,
                    jetstream::message::PublishMessage::build()
                        .payload(payload.into())
                        .message_id(id)
                        .expected_stream(&self.stream),
                )
                .await
                .map_err(|e| LogError::new("publishing to JetStream", e))?
                .await
                .map_err(|e| LogError::new("waiting for JetStream's publish ack", e))?;
            Ok(Published {
                position: ack.sequence,
                duplicate: ack.duplicate,
            })
        })
    }

    fn consumer<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Box<dyn Consumer>, LogError>> {
        Box::pin(async move {
            let stream = self
                .js
                .get_stream(&self.stream)
                .await
                .map_err(|e| LogError::new("opening the JetStream stream", e))?;
            let consumer: jetstream::consumer::PullConsumer = stream
                .get_or_create_consumer(
                    name,
                    pull::Config {
                        durable_name: Some(name.to_owned()),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        deliver_policy: jetstream::consumer::DeliverPolicy::All,
                        ack_wait: self.ack_wait,
                        max_ack_pending: 1024,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| LogError::new("creating the durable consumer", e))?;
            Ok(Box::new(NatsConsumer {
                consumer,
                messages: None,
            }) as Box<dyn Consumer>)
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<LogStatus, LogError>> {
        Box::pin(async move {
            let stream = self
                .js
                .get_stream(&self.stream)
                .await
                .map_err(|e| LogError::new("opening the JetStream stream", e))?;
            let info = stream
                .get_info()
                .await
                .map_err(|e| LogError::new("reading the stream's state", e))?;
            let mut nodes = Vec::new();
            if let Some(c) = &info.cluster {
                if let Some(leader) = &c.leader {
                    nodes.push(format!("{leader} (leader)"));
                }
                for p in &c.replicas {
                    nodes.push(format!(
                        "{} ({})",
                        p.name,
                        if p.offline {
                            "offline"
                        } else if p.current {
                            "current"
                        } else {
                            "catching up"
                        }
                    ));
                }
            }
            let mut consumers = Vec::new();
            let mut list = stream.consumers();
            while let Some(c) = list.next().await {
                let c = c.map_err(|e| LogError::new("listing consumers", e))?;
                consumers.push(lag_of(&c));
            }
            consumers.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(LogStatus {
                stream: info.config.name.clone(),
                records: info.state.messages,
                bytes: info.state.bytes,
                last_position: info.state.last_sequence,
                replicas: info.config.num_replicas,
                nodes,
                consumers,
            })
        })
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

struct NatsConsumer {
    consumer: jetstream::consumer::PullConsumer,
    messages: Option<pull::Stream>,
}

impl Consumer for NatsConsumer {
    fn next(&mut self) -> BoxFuture<'_, Result<Box<dyn Delivery>, LogError>> {
        Box::pin(async move {
            loop {
                if self.messages.is_none() {
                    let m = self
                        .consumer
                        .stream()
                        .max_messages_per_batch(256)
                        .expires(Duration::from_secs(5))
                        .heartbeat(Duration::from_secs(2))
                        .messages()
                        .await
                        .map_err(|e| LogError::new("pulling from the consumer", e))?;
                    self.messages = Some(m);
                }
                let Some(messages) = self.messages.as_mut() else {
                    continue;
                };
                match messages.next().await {
                    Some(Ok(m)) => return Ok(Box::new(NatsDelivery(m)) as Box<dyn Delivery>),
                    Some(Err(e)) => {
                        // A missed heartbeat or a lost server: pull again
                        // (the client reconnects on its own).
                        self.messages = None;
                        return Err(LogError::new("pulling from the consumer", e));
                    }
                    None => self.messages = None,
                }
            }
        })
    }
}

struct NatsDelivery(jetstream::Message);

impl Delivery for NatsDelivery {
    fn payload(&self) -> &[u8] {
        &self.0.message.payload
    }

    fn delivered(&self) -> u64 {
        self.0
            .info()
            .map_or(1, |i| u64::try_from(i.delivered).unwrap_or(1))
    }

    fn ack(&self) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            self.0
                .double_ack()
                .await
                .map_err(|e| LogError::new("acking a record", e))
        })
    }

    fn retry_later(&self, delay: Duration) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            self.0
                .ack_with(jetstream::AckKind::Nak(Some(delay)))
                .await
                .map_err(|e| LogError::new("asking for a redelivery", e))
        })
    }
}
