//! The Prometheus HTTP API, under `/prometheus/api/v1/` (Ferry's own
//! `/api/v1/query` and `/api/v1/series` keep their shapes): `query`,
//! `query_range`, `labels`, `label/<name>/values`, `series`, `metadata`,
//! `status/buildinfo`, `query_exemplars`. GET with a query string or POST
//! with a form body, as Prometheus takes them; answers and errors in
//! Prometheus's JSON shapes.
//!
//! [`answer`] is the whole request → response logic over any
//! [`SeriesSource`]; the axum handlers only gather parameters and run it on
//! a blocking thread over the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::Expr;

use super::eval::{Engine, NAME, parse};
use super::source::{Budget, QueryError, SeriesSource};
use super::store_source::StoreSource;
use super::value::{Labels, write_data, write_str};
use crate::server::Shared;

/// The Prometheus version whose API this implements (what
/// `status/buildinfo` reports, and Grafana reads).
pub const PROMETHEUS_VERSION: &str = "2.42.0";

/// Where the API is mounted.
pub const PREFIX: &str = "/prometheus";

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `query`
    Query,
    /// `query_range`
    QueryRange,
    /// `labels`
    Labels,
    /// `label/<name>/values`
    LabelValues(String),
    /// `series`
    Series,
    /// `metadata`
    Metadata,
    /// `status/buildinfo`
    BuildInfo,
    /// `query_exemplars` (Ferry has none)
    Exemplars,
}

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: String,
}

fn success(data: &str) -> Answer {
    Answer {
        status: 200,
        body: format!("{{\"status\":\"success\",\"data\":{data}}}"),
    }
}

fn failure(e: &QueryError) -> Answer {
    let (status, kind) = match e {
        QueryError::BadData(_) => (400, "bad_data"),
        QueryError::Execution(_) | QueryError::Budget { .. } => (422, "execution"),
        _ => (500, "internal"),
    };
    let mut body = format!("{{\"status\":\"error\",\"errorType\":\"{kind}\",\"error\":");
    write_str(&mut body, &e.to_string());
    body.push('}');
    Answer { status, body }
}

struct Params<'a>(&'a [(String, String)]);

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time(&self, name: &str, default: Option<i64>) -> Result<i64, QueryError> {
        match (self.get(name), default) {
            (None | Some(""), Some(d)) => Ok(d),
            (v, _) => parse_time(v.unwrap_or("")).ok_or_else(|| {
                QueryError::BadData(format!(
                    "invalid parameter \"{name}\": cannot parse {:?} to a valid timestamp",
                    v.unwrap_or("")
                ))
            }),
        }
    }
}

/// A time as Prometheus takes it: seconds since the epoch (fraction
/// rounded to milliseconds) or RFC 3339; in ms.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return None;
        }
        let secs = f.trunc();
        let frac = ((f - secs) * 1000.0).round();
        return Some(
            (secs as i64)
                .saturating_mul(1000)
                .saturating_add(frac as i64),
        );
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// A duration as Prometheus takes it: seconds (a float) or `5m`, `1h30m`;
/// in ms.
pub fn parse_step(s: &str) -> Option<i64> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        return (ms.is_finite() && ms.abs() < 9.2e18).then_some(ms as i64);
    }
    promql_parser::util::parse_duration(s)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

const ALL_TIME: (i64, i64) = (i64::MIN / 1_000_000, i64::MAX / 1_000_000);

fn selectors(params: &Params<'_>) -> Result<Vec<Vec<Matcher>>, QueryError> {
    params
        .all("match[]")
        .into_iter()
        .map(|m| {
            let bad =
                |why: String| QueryError::BadData(format!("invalid parameter \"match[]\": {why}"));
            match parse(m).map_err(|e| bad(e.to_string()))? {
                Expr::VectorSelector(vs) => {
                    let mut ms = vs.matchers.matchers.clone();
                    if let Some(name) = &vs.name {
                        ms.push(Matcher::new(MatchOp::Equal, NAME, name));
                    }
                    Ok(ms)
                }
                _ => Err(bad(format!("{m:?} is not a series selector"))),
            }
        })
        .collect()
}

/// Label sets of the series matching any `match[]` (every series without
/// one), in `[start, end]`, sorted and unique.
fn matching_labels(
    params: &Params<'_>,
    source: &dyn SeriesSource,
    engine: &Engine,
    require_match: bool,
) -> Result<BTreeSet<Labels>, QueryError> {
    let start = params.time("start", Some(ALL_TIME.0))?;
    let end = params.time("end", Some(ALL_TIME.1))?;
    let mut sels = selectors(params)?;
    if sels.is_empty() {
        if require_match {
            return Err(QueryError::BadData("no match[] parameter provided".into()));
        }
        // Every series has a name.
        let any = Matcher::new(MatchOp::NotEqual, NAME, "");
        sels.push(vec![any]);
    }
    let mut budget = Budget::new(engine.limits);
    let mut out = BTreeSet::new();
    for m in sels {
        out.extend(source.labels(&m, start, end, &mut budget)?);
    }
    Ok(out)
}

fn json_strings<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write_str(&mut s, item);
    }
    s.push(']');
    s
}

/// Answers one request: the endpoint, its parameters (query string and
/// form body, in that order), the time now.
#[cfg(test)]
pub fn answer(
    endpoint: &Endpoint,
    params: &[(String, String)],
    source: &dyn SeriesSource,
    engine: &Engine,
    now_ms: i64,
) -> Answer {
    answer_counted(endpoint, params, source, engine, now_ms).0
}

/// Answers one request (the endpoint, its parameters: query string and
/// form body, in that order; the time now), and names the bound a refused
/// query went past (`series`, `points`, `bytes`), for the metrics.
fn answer_counted(
    endpoint: &Endpoint,
    params: &[(String, String)],
    source: &dyn SeriesSource,
    engine: &Engine,
    now_ms: i64,
) -> (Answer, Option<&'static str>) {
    match run(endpoint, &Params(params), source, engine, now_ms) {
        Ok(data) => (success(&data), None),
        Err(e) => {
            let bound = match e {
                QueryError::Budget { bound, .. } => Some(bound),
                _ => None,
            };
            (failure(&e), bound)
        }
    }
}

fn run(
    endpoint: &Endpoint,
    params: &Params<'_>,
    source: &dyn SeriesSource,
    engine: &Engine,
    now_ms: i64,
) -> Result<String, QueryError> {
    let mut data = String::new();
    match endpoint {
        Endpoint::Query => {
            let t = params.time("time", Some(now_ms))?;
            let expr = parse(params.get("query").unwrap_or(""))?;
            let v = engine.instant(source, &expr, t)?;
            write_data(&mut data, &v, t);
        }
        Endpoint::QueryRange => {
            let start = params.time("start", None)?;
            let end = params.time("end", None)?;
            let step_text = params.get("step").unwrap_or("");
            let step = parse_step(step_text).ok_or_else(|| {
                QueryError::BadData(format!(
                    "invalid parameter \"step\": cannot parse {step_text:?} to a valid duration"
                ))
            })?;
            let expr = parse(params.get("query").unwrap_or(""))?;
            let v = engine.range(source, &expr, start, end, step)?;
            write_data(&mut data, &v, start);
        }
        Endpoint::Labels => {
            let sets = matching_labels(params, source, engine, false)?;
            let names: BTreeSet<&str> = sets
                .iter()
                .flat_map(|l| l.iter().map(|(n, _)| n.as_str()))
                .collect();
            data = json_strings(names);
        }
        Endpoint::LabelValues(name) => {
            if !is_label_name(name) {
                return Err(QueryError::BadData(format!("invalid label name: {name:?}")));
            }
            let sets = matching_labels(params, source, engine, false)?;
            let values: BTreeSet<&str> = sets
                .iter()
                .filter_map(|l| l.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()))
                .collect();
            data = json_strings(values);
        }
        Endpoint::Series => {
            let sets = matching_labels(params, source, engine, true)?;
            data.push('[');
            for (i, l) in sets.iter().enumerate() {
                if i > 0 {
                    data.push(',');
                }
                super::value::write_labels(&mut data, l);
            }
            data.push(']');
        }
        Endpoint::Metadata => {
            let sets = matching_labels(&Params(&[]), source, engine, false)?;
            let wanted = params.get("metric");
            let limit: usize = match params.get("limit") {
                None | Some("") => usize::MAX,
                Some(s) => s
                    .parse::<i64>()
                    .map_or(usize::MAX, |n| if n < 0 { usize::MAX } else { n as usize }),
            };
            let names: BTreeMap<&str, ()> = sets
                .iter()
                .filter_map(|l| {
                    l.iter()
                        .find(|(n, _)| n == NAME)
                        .map(|(_, v)| (v.as_str(), ()))
                })
                .filter(|(n, _)| wanted.is_none_or(|w| w == *n))
                .take(limit)
                .collect();
            data.push('{');
            for (i, n) in names.keys().enumerate() {
                if i > 0 {
                    data.push(',');
                }
                write_str(&mut data, n);
                data.push_str(":[{\"type\":\"gauge\",\"help\":");
                write_str(&mut data, &metadata_help(n));
                data.push_str(",\"unit\":\"\"}]");
            }
            data.push('}');
        }
        Endpoint::BuildInfo => {
            data = format!(
                "{{\"version\":\"{PROMETHEUS_VERSION}\",\"revision\":\"ferry-collector {}\",\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":\"\"}}",
                env!("CARGO_PKG_VERSION")
            );
        }
        Endpoint::Exemplars => data.push_str("[]"),
    }
    Ok(data)
}

fn metadata_help(name: &str) -> String {
    for (suffix, what) in [
        ("_count", "readings per window"),
        ("_sum", "sum of the readings per window"),
        ("_min", "smallest reading per window"),
        ("_max", "largest reading per window"),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            return format!(
                "Ferry: {name} is a reading of {name}, or the {what} of {base} (docs/prometheus.md)"
            );
        }
    }
    format!(
        "Ferry: readings of {name}; with a quantile label, window sketch quantiles (docs/prometheus.md)"
    )
}

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The routes, to nest under [`PREFIX`].
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/query_exemplars", get(exemplars).post(exemplars))
}

fn form_params(
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = query
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if *method == Method::POST && is_form {
        let body: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
        // Prometheus (Go's ParseForm) reads the body's values first.
        out.splice(0..0, body);
    }
    out
}

async fn serve(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    method: Method,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = form_params(&method, query.as_deref(), &headers, &body);
    let margin = i64::try_from(shared.config.storage.downsample_window.as_nanos())
        .unwrap_or(i64::MAX)
        .max(3_600_000_000_000);
    let now_ms = crate::now_ns().div_euclid(1_000_000);
    let engine = Engine {
        limits: shared.config.query.into(),
        ..Engine::default()
    };
    let metrics = shared.metrics.clone();
    let (answered, refused) = tokio::task::spawn_blocking(move || {
        let source = StoreSource::new(&shared.store, margin);
        answer_counted(&endpoint, &params, &source, &engine, now_ms)
    })
    .await
    .unwrap_or_else(|e| (failure(&QueryError::Internal(e.to_string())), None));
    if let Some(bound) = refused {
        metrics
            .queries_refused
            .get_or_create(&[("api", "prometheus"), ("bound", bound)])
            .inc();
    }
    (
        StatusCode::from_u16(answered.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        answered.body,
    )
        .into_response()
}

macro_rules! handler {
    ($name:ident, $endpoint:expr) => {
        async fn $name(
            State(shared): State<Arc<Shared>>,
            method: Method,
            RawQuery(query): RawQuery,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            serve(shared, $endpoint, method, query, headers, body).await
        }
    };
}

handler!(query, Endpoint::Query);
handler!(query_range, Endpoint::QueryRange);
handler!(labels, Endpoint::Labels);
handler!(series, Endpoint::Series);
handler!(metadata, Endpoint::Metadata);
handler!(buildinfo, Endpoint::BuildInfo);
handler!(exemplars, Endpoint::Exemplars);

async fn label_values(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve(
        shared,
        Endpoint::LabelValues(name),
        method,
        query,
        headers,
        Bytes::new(),
    )
    .await
}

#[cfg(test)]
mod tests;
