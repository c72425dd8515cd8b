//! `kind = "prometheus_remote_write"`: Prometheus remote_write 1.0
//! (protobuf `WriteRequest`, snappy block compression, HTTP POST) to
//! Prometheus, Mimir, Thanos receive, VictoriaMetrics…
//!
//! Series are named by [`crate::prometheus::naming`] (docs/prometheus.md).
//! Entries are gathered up to `max_samples_per_send` or `batch_linger`,
//! sent in requests of at most `max_samples_per_send` samples, and the
//! cursor is committed once every request of the range was answered:
//! - 2xx: delivered;
//! - 5xx, 429, a network error or no answer: retried with doubling
//!   backoff, without end (the lag budget decides what happens meanwhile);
//! - another 4xx: Prometheus refuses a whole request for one bad sample
//!   (out of order, too old, a different value at the same millisecond), so
//!   the request is split in halves and each half sent again until the
//!   refused samples are alone: each is counted as refused and logged with
//!   its series, timestamp, value and the server's answer (the first five
//!   of a request; the rest in one line with the count); every other
//!   sample is delivered. These decisions are the sans-IO
//!   [`sending::Sending`]'s, tested without a server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::feed::{Entry, Feed, Progress, Wake, gather};
use super::http::{Client, Url};
use super::retry::{Failure, Retry};
use super::{RemoteWriteConfigError, duration};
use crate::fanout::LagBudget;
use crate::prometheus::naming::{self, AggregatePart, Labels};

mod sending;
use sending::{Answer, Sending};

/// `[sink.<name>] kind = "prometheus_remote_write"` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteRaw {
    /// `http://host:port/api/v1/write` or `https://…`.
    pub url: String,
    /// Extra request headers (e.g. `X-Scope-OrgID` for Mimir,
    /// `Authorization`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// PEM file of the CA that signed the server's certificate (https);
    /// default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Per request; default `10s`.
    #[serde(default = "ten_seconds")]
    pub timeout: String,
    /// Samples per request at most; default 5000.
    #[serde(default = "max_samples")]
    pub max_samples_per_send: usize,
    /// How long a request waits for more samples while it has fewer than
    /// `max_samples_per_send`; default `1s`.
    #[serde(default = "one_second")]
    pub batch_linger: String,
    /// First retry delay, doubling; default `100ms`.
    #[serde(default = "backoff_min")]
    pub backoff_min: String,
    /// Longest retry delay; default `30s`.
    #[serde(default = "backoff_max")]
    pub backoff_max: String,
    /// Quantiles exported for window aggregates with sketches; default
    /// `[0.5, 0.9, 0.95, 0.99]`.
    #[serde(default = "quantiles")]
    pub quantiles: Vec<f64>,
    /// Lag budget in stored batches.
    #[serde(default)]
    pub lag_budget: LagBudget,
}

fn ten_seconds() -> String {
    "10s".into()
}
fn one_second() -> String {
    "1s".into()
}
fn backoff_min() -> String {
    "100ms".into()
}
fn backoff_max() -> String {
    "30s".into()
}
fn max_samples() -> usize {
    5000
}
fn quantiles() -> Vec<f64> {
    naming::DEFAULT_QUANTILES.to_vec()
}

/// A checked remote_write sink.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWriteSink {
    /// As written.
    pub raw: RemoteWriteRaw,
    url: Url,
    timeout: Duration,
    linger: Duration,
    backoff: (Duration, Duration),
}

impl TryFrom<RemoteWriteRaw> for RemoteWriteSink {
    type Error = RemoteWriteConfigError;
    fn try_from(raw: RemoteWriteRaw) -> Result<Self, RemoteWriteConfigError> {
        let url = Url::parse(&raw.url)?;
        let timeout = duration("timeout", &raw.timeout)?;
        let linger = duration("batch_linger", &raw.batch_linger)?;
        let backoff = (
            duration("backoff_min", &raw.backoff_min)?,
            duration("backoff_max", &raw.backoff_max)?,
        );
        if timeout.is_zero() || backoff.0.is_zero() || backoff.1 < backoff.0 {
            return Err(RemoteWriteConfigError::Times);
        }
        if !(1..=1_000_000).contains(&raw.max_samples_per_send) {
            return Err(RemoteWriteConfigError::MaxSamples);
        }
        if raw.quantiles.iter().any(|q| !(0.0..=1.0).contains(q)) {
            return Err(RemoteWriteConfigError::Quantiles);
        }
        if raw.ca_file.is_some() && !url.tls {
            return Err(RemoteWriteConfigError::CaWithoutTls);
        }
        for k in raw.headers.keys() {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(RemoteWriteConfigError::HeaderName(k.clone()));
            }
        }
        Ok(Self {
            raw,
            url,
            timeout,
            linger,
            backoff,
        })
    }
}

/// remote_write 1.0's messages (prometheus/prompb/remote.proto, types.proto).
mod prompb {
    /// The request body, before snappy.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        /// The series and their samples.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    /// One series: labels sorted by name, samples in time order.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Labels, `__name__` included.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// Samples.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    /// A label.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        /// Name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// A sample.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Sample {
        /// Value.
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Milliseconds since the epoch.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

use prompb::{Label, Sample, TimeSeries, WriteRequest};

/// Where the samples of one stored series (or one part of its aggregates)
/// go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    Raw,
    Count,
    Sum,
    Min,
    Max,
    Quantile(u64),
}

/// Labels of each `(series, part)`, computed once per series.
#[derive(Default)]
struct LabelCache(HashMap<(u64, Part), Arc<Vec<Label>>>);

fn to_proto(labels: Labels) -> Arc<Vec<Label>> {
    Arc::new(
        labels
            .into_iter()
            .map(|(name, value)| Label { name, value })
            .collect(),
    )
}

/// The entries' readings and aggregates as remote_write series, each
/// series' samples in time order (nanoseconds become milliseconds).
fn series_of(
    feed: &Feed,
    cache: &mut LabelCache,
    quantiles: &[f64],
    entries: &[Entry],
) -> Vec<TimeSeries> {
    let mut by: HashMap<(u64, Part), usize> = HashMap::new();
    let mut out: Vec<TimeSeries> = Vec::new();
    let mut push = |cache: &mut LabelCache, series: u64, part: Part, s: Sample| {
        let Some(key) = feed.series(series) else {
            return;
        };
        let i = *by.entry((series, part)).or_insert_with(|| {
            let labels = cache
                .0
                .entry((series, part))
                .or_insert_with(|| {
                    to_proto(match part {
                        Part::Raw => naming::raw_labels(key),
                        Part::Count => naming::aggregate_labels(key, AggregatePart::Count),
                        Part::Sum => naming::aggregate_labels(key, AggregatePart::Sum),
                        Part::Min => naming::aggregate_labels(key, AggregatePart::Min),
                        Part::Max => naming::aggregate_labels(key, AggregatePart::Max),
                        Part::Quantile(bits) => naming::aggregate_labels(
                            key,
                            AggregatePart::Quantile(f64::from_bits(bits)),
                        ),
                    })
                })
                .clone();
            out.push(TimeSeries {
                labels: (*labels).clone(),
                samples: Vec::new(),
            });
            out.len() - 1
        });
        out[i].samples.push(s);
    };
    for e in entries {
        for (series, readings) in &e.readings {
            for r in readings {
                push(
                    cache,
                    *series,
                    Part::Raw,
                    Sample {
                        value: r.value,
                        timestamp: r.ts_ns.div_euclid(1_000_000),
                    },
                );
            }
        }
        for (series, a) in &e.aggregates {
            let end = (a.start_ns.saturating_add(a.len_ns as i64)).div_euclid(1_000_000);
            let sample = |value| Sample {
                value,
                timestamp: end,
            };
            push(cache, *series, Part::Count, sample(a.count as f64));
            push(cache, *series, Part::Sum, sample(a.sum));
            push(cache, *series, Part::Min, sample(a.min));
            push(cache, *series, Part::Max, sample(a.max));
            if let Some(sketch) = &a.sketch {
                for &q in quantiles {
                    if let Some(v) = sketch.quantile(q) {
                        push(cache, *series, Part::Quantile(q.to_bits()), sample(v));
                    }
                }
            }
        }
    }
    for ts in &mut out {
        ts.samples.sort_by_key(|s| s.timestamp);
    }
    out
}

/// Cuts series into requests of at most `max` samples (a long series is
/// cut across requests, in order).
fn requests(series: Vec<TimeSeries>, max: usize) -> Vec<Vec<TimeSeries>> {
    let mut out: Vec<Vec<TimeSeries>> = Vec::new();
    let mut cur: Vec<TimeSeries> = Vec::new();
    let mut n = 0;
    for ts in series {
        let mut samples = ts.samples.as_slice();
        while !samples.is_empty() {
            let take = (max - n).min(samples.len());
            cur.push(TimeSeries {
                labels: ts.labels.clone(),
                samples: samples[..take].to_vec(),
            });
            samples = &samples[take..];
            n += take;
            if n == max {
                out.push(std::mem::take(&mut cur));
                n = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn count(req: &[TimeSeries]) -> u64 {
    req.iter().map(|t| t.samples.len() as u64).sum()
}

/// Splits a refused request in two halves (by series, or a lone series by
/// samples). `None` for a single sample.
fn halves(req: Vec<TimeSeries>) -> Option<(Vec<TimeSeries>, Vec<TimeSeries>)> {
    if req.len() > 1 {
        let mut a = req;
        let b = a.split_off(a.len() / 2);
        return Some((a, b));
    }
    let ts = req.into_iter().next()?;
    if ts.samples.len() < 2 {
        return None;
    }
    let mid = ts.samples.len() / 2;
    let a = TimeSeries {
        labels: ts.labels.clone(),
        samples: ts.samples[..mid].to_vec(),
    };
    let b = TimeSeries {
        labels: ts.labels,
        samples: ts.samples[mid..].to_vec(),
    };
    Some((vec![a], vec![b]))
}

fn encode(req: &[TimeSeries]) -> Bytes {
    let body = WriteRequest {
        timeseries: req.to_vec(),
    }
    .encode_to_vec();
    let compressed = snap::raw::Encoder::new()
        .compress_vec(&body)
        .unwrap_or_default();
    Bytes::from(compressed)
}

fn describe(ts: &TimeSeries) -> String {
    let name = ts
        .labels
        .iter()
        .find(|l| l.name == naming::NAME)
        .map_or("", |l| l.value.as_str());
    let labels: Vec<String> = ts
        .labels
        .iter()
        .filter(|l| l.name != naming::NAME)
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// What sending one request came to.
enum Sent {
    Done { delivered: u64, refused: u64 },
    Stopped,
}

/// Sends `req`, retrying transient failures and bisecting refusals (the
/// decisions are [`Sending`]'s; this moves the bytes and logs).
async fn send(
    feed: &mut Feed,
    client: &mut Client,
    headers: &[(String, String)],
    retry: &mut Retry,
    req: Vec<TimeSeries>,
) -> Sent {
    let mut sending = Sending::new(req);
    while let Some(body) = sending.poll_piece().map(encode) {
        loop {
            if feed.stopping() {
                return Sent::Stopped;
            }
            let mut stop = feed.stop_signal();
            let answer = tokio::select! {
                a = client.post(headers, body.clone()) => a,
                _ = crate::stopped(&mut stop) => return Sent::Stopped,
            };
            let why = match answer {
                Ok(a) => match sending.handle_answer(a.status, &a.body) {
                    Answer::Retry => format!("HTTP {}: {}", a.status, a.body.trim()),
                    answered => {
                        retry.handle_answered();
                        if let Answer::Refused { log: Some(r) } = answered {
                            tracing::warn!(
                                sink = feed.name,
                                status = a.status,
                                series = r.series,
                                timestamp_ms = r.timestamp_ms,
                                value = r.value,
                                "sample refused by the server (docs/sinks.md, out-of-order samples): {}",
                                a.body.trim()
                            );
                        }
                        break;
                    }
                },
                Err(e) => e.to_string(),
            };
            if feed.back_off(retry, Failure::Delivery, &why).await == Wake::Stop {
                return Sent::Stopped;
            }
        }
    }
    let done = sending.finish();
    if let Some((more, last_reason)) = &done.unlogged {
        tracing::warn!(
            sink = feed.name,
            "{more} more samples of this request refused by the server, the last with: {last_reason}"
        );
    }
    Sent::Done {
        delivered: done.delivered,
        refused: done.refused,
    }
}

/// The sink's loop: gather, send, commit, until stopped.
pub(crate) async fn run(feed: &mut Feed, cfg: &RemoteWriteSink) {
    let tls = if cfg.url.tls {
        match super::tls::client_config(cfg.raw.ca_file.as_deref(), &[b"http/1.1"]) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(sink = feed.name, "TLS: {e}; the sink does not run");
                return;
            }
        }
    } else {
        None
    };
    let mut client = Client::new(cfg.url.clone(), tls, cfg.timeout);
    let mut headers: Vec<(String, String)> = vec![
        ("content-encoding".into(), "snappy".into()),
        ("content-type".into(), "application/x-protobuf".into()),
        ("x-prometheus-remote-write-version".into(), "0.1.0".into()),
    ];
    headers.extend(cfg.raw.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut retry = Retry::new(cfg.backoff.0, cfg.backoff.1);
    let mut cache = LabelCache::default();
    loop {
        if feed.stopping() {
            return;
        }
        if let Some((from, to)) = feed.over_budget() {
            tracing::warn!(
                sink = feed.name,
                from,
                to,
                "past its lag budget: skipping {} stored batches",
                to + 1 - from
            );
            let p = Progress {
                skipped: to + 1 - from,
                ..Progress::default()
            };
            if !feed.commit_retrying(to, p).await {
                return;
            }
            continue;
        }
        let after = feed.cursor();
        let (entries, gap) =
            match gather(feed, after, cfg.raw.max_samples_per_send, cfg.linger).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(sink = feed.name, "{e}");
                    if feed.back_off(&mut retry, Failure::Local, "").await == Wake::Stop {
                        return;
                    }
                    continue;
                }
            };
        if gap > 0 {
            tracing::warn!(
                sink = feed.name,
                from = after + 1,
                to = after + gap,
                "stored batches no longer in the event log (the sink was not configured when they were trimmed): counted as skipped"
            );
        }
        if entries.is_empty() && gap == 0 {
            continue; // stopping
        }
        let to = entries.last().map_or(after + gap, |e| e.seq);
        let series = series_of(feed, &mut cache, &cfg.raw.quantiles, &entries);
        let mut p = Progress {
            entries: entries.len() as u64,
            skipped: gap,
            ..Progress::default()
        };
        for req in requests(series, cfg.raw.max_samples_per_send) {
            match send(feed, &mut client, &headers, &mut retry, req).await {
                Sent::Done { delivered, refused } => {
                    p.delivered += delivered;
                    p.refused += refused;
                }
                Sent::Stopped => return,
            }
        }
        if !feed.commit_retrying(to, p).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
