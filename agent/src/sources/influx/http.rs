//! The InfluxDB HTTP write API on the agent (`[[influx_http]]`): what
//! Telegraf's `outputs.influxdb_v2` / `outputs.influxdb` and the InfluxDB
//! client libraries write to, with a real acknowledgement.
//!
//! - `POST /api/v2/write?org=…&bucket=…&precision=ns|us|ms|s` with
//!   `Authorization: Token <token>` (InfluxDB 2).
//! - `POST /write?db=…&precision=n|ns|u|us|ms|s&u=…&p=…` (InfluxDB 1): the
//!   token is the password (`p=`, or HTTP Basic auth), as InfluxDB 2's v1
//!   compatibility API takes it; `Authorization: Token` works too.
//! - `GET|HEAD /ping` (204) and `GET /health` (200), which clients probe.
//!
//! `org`, `bucket` and `db` are required, as InfluxDB requires them, and not
//! stored: an agent has one journal. Bodies may be gzip
//! (`Content-Encoding: gzip`); `max_body_bytes` bounds the body both as sent
//! and decompressed (413 beyond). The body is parsed as one chunk
//! ([`line`](super::super::line): string fields skipped and counted, or the
//! line rejected, as `string_fields` says), and its readings are handed to
//! the journal as one submission.
//!
//! # Answers
//! - **204** only after the journal commit that holds every good line of the
//!   body (the group commit is shared with other sources and requests).
//! - **400** with InfluxDB's JSON (`{"code":"invalid","message":…}` on v2,
//!   `{"error":…}` on v1) when lines were bad: the message is one
//!   `unable to parse '<line>': <why>` per bad line (the first 100), joined
//!   by `\n`. As InfluxDB does for a partial write, the body's good lines
//!   are stored (committed before the answer); bad lines are counted as
//!   [`ferry_proto::health::REJECTED_INPUT`] and must not be resent.
//! - **401** for a missing or wrong token, **413** for a body over the
//!   limit, **400** for a missing `bucket`/`db` or an unknown precision or
//!   encoding: nothing of such a request is stored.
//! - **503** with `Retry-After` when the journal is full under the
//!   `backpressure` policy or the agent is stopping; **500** when the commit
//!   failed in storage. Nothing of the request is stored; the client
//!   resends it (the client libraries and Telegraf do).
//!
//! A client that resends after a lost 204 (a timeout) stores its lines
//! twice: the write API is at-least-once, as it is against InfluxDB.
//!
//! The request logic ([`authorize`], [`precision_of`], [`decode_body`],
//! [`parse_body`], [`Reject`]) is plain functions; the handler only moves
//! bytes.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use ferry_clock::{Clock, SystemClock};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::SourceStats;
use crate::intake::{Intake, Refused, SubmitError};
use crate::journal::Work;
use crate::sources::line::{
    ChunkParser, KeyCache, LineError, LineSplitter, Parsed, Precision, StringFields, count_newlines,
};

/// Most bad lines quoted in a 400's message.
const MAX_REPORTED: usize = 100;
/// Longest line quoted in a 400's message, bytes.
const MAX_QUOTED_LINE: usize = 256;
/// What `Retry-After` says under backpressure, seconds.
const RETRY_AFTER_S: u32 = 1;

/// One `[[influx_http]]` listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InfluxHttpConfig {
    /// Address to listen on; port 0 picks one.
    pub listen: SocketAddr,
    /// The source's name: the origin of readings without the device tag and
    /// of rejected-input counts.
    pub name: String,
    /// Precision of a request without a `precision` parameter.
    pub precision: Precision,
    /// Tag whose value is a reading's origin.
    pub device_tag: String,
    /// String fields: `"skip"` (counted) or `"reject"` (the line).
    pub string_fields: StringFields,
    /// Accepted tokens (v2 `Authorization: Token …`, v1 password). Empty:
    /// no authentication, allowed only on a loopback `listen` address.
    pub tokens: Vec<String>,
    /// Largest body, bytes, as sent and decompressed.
    pub max_body_bytes: usize,
    /// Longest accepted line, bytes.
    pub max_line_bytes: usize,
    /// Most requests parsed or waiting for their commit at once; further
    /// ones wait (bounds the memory bodies take).
    pub max_requests: usize,
}

impl Default for InfluxHttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8086)),
            name: "influx_http".to_owned(),
            precision: Precision::Nanoseconds,
            device_tag: "device".to_owned(),
            string_fields: StringFields::Skip,
            tokens: Vec::new(),
            max_body_bytes: 32 * 1024 * 1024,
            max_line_bytes: 64 * 1024,
            max_requests: 16,
        }
    }
}

impl InfluxHttpConfig {
    /// Why this listener may not start: no tokens on a non-loopback address.
    pub fn check(&self) -> Result<(), InfluxHttpCheckError> {
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() {
            return Err(InfluxHttpCheckError::OpenListen {
                name: self.name.clone(),
                listen: self.listen,
            });
        }
        if self.tokens.iter().any(|t| t.trim().is_empty()) {
            return Err(InfluxHttpCheckError::EmptyToken {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// Why an `[[influx_http]]` listener may not start
/// ([`InfluxHttpConfig::check`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InfluxHttpCheckError {
    /// No tokens on an address other hosts can reach.
    #[error(
        "[[influx_http]] {name:?}: listen = {listen} is not loopback, so tokens = [\"…\"] must be set"
    )]
    OpenListen {
        /// The listener's name.
        name: String,
        /// Its address.
        listen: SocketAddr,
    },
    /// A blank token.
    #[error("[[influx_http]] {name:?}: an empty token")]
    EmptyToken {
        /// The listener's name.
        name: String,
    },
}

/// Which write API a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/write`.
    V1,
    /// `/api/v2/write`.
    V2,
}

/// A request refused or answered with an error, as InfluxDB words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The HTTP status.
    pub status: StatusCode,
    /// The v2 `code` (`invalid`, `unauthorized`, `request too large`,
    /// `unavailable`, `internal error`).
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// `Retry-After` seconds (503).
    pub retry_after: Option<u32>,
}

impl Reject {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// The JSON body: `{"code":…,"message":…}` (v2) or `{"error":…}` (v1).
    pub fn body(&self, api: Api) -> String {
        let v = match api {
            Api::V2 => serde_json::json!({"code": self.code, "message": self.message}),
            Api::V1 => serde_json::json!({"error": self.message}),
        };
        v.to_string()
    }

    fn into_response(self, api: Api) -> Response {
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            self.body(api),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// Checks the request's credentials against `tokens` (any passes; none
/// configured: everything passes). v2: `Authorization: Token <t>` (or
/// `Bearer`); v1 also `p=<t>` or Basic auth with the token as password.
pub fn authorize(
    tokens: &[String],
    api: Api,
    query: &HashMap<String, String>,
    authorization: Option<&str>,
) -> Result<(), Reject> {
    if tokens.is_empty() {
        return Ok(());
    }
    let mut offered: Vec<String> = Vec::new();
    if let Some(auth) = authorization {
        let auth = auth.trim();
        if let Some((scheme, rest)) = auth.split_once(' ') {
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer") {
                offered.push(rest.to_owned());
            } else if scheme.eq_ignore_ascii_case("basic") && api == Api::V1 {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok());
                if let Some((_, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                    offered.push(password.to_owned());
                }
            }
        }
    }
    if api == Api::V1
        && let Some(p) = query.get("p")
    {
        offered.push(p.clone());
    }
    let ok = offered.iter().any(|o| {
        tokens
            .iter()
            .any(|t| same(o.as_bytes(), t.trim().as_bytes()))
    });
    if ok {
        Ok(())
    } else {
        let message = match api {
            Api::V2 => "unauthorized access",
            Api::V1 => "authorization failed",
        };
        Err(Reject::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
        ))
    }
}

/// Compares in time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's precision (`default` without the parameter) after checking
/// its `bucket` (v2) or `db` (v1) is there.
pub fn precision_of(
    api: Api,
    query: &HashMap<String, String>,
    default: Precision,
) -> Result<Precision, Reject> {
    let target = match api {
        Api::V2 => "bucket",
        Api::V1 => "db",
    };
    if query.get(target).is_none_or(|b| b.is_empty()) {
        return Err(Reject::invalid(format!("missing {target}")));
    }
    let Some(p) = query.get("precision") else {
        return Ok(default);
    };
    Ok(match (api, p.as_str()) {
        (_, "ns") | (Api::V1, "n") => Precision::Nanoseconds,
        (_, "us") | (Api::V1, "u") => Precision::Microseconds,
        (_, "ms") => Precision::Milliseconds,
        (_, "s") => Precision::Seconds,
        _ => {
            return Err(Reject::invalid(format!(
                "invalid precision {p:?}: expected {}",
                match api {
                    Api::V2 => "ns, us, ms or s",
                    Api::V1 => "n, ns, u, us, ms or s",
                }
            )));
        }
    })
}

/// The body, decompressed as `Content-Encoding` says (identity or gzip),
/// at most `max` bytes.
pub fn decode_body(encoding: Option<&str>, body: &[u8], max: usize) -> Result<Vec<u8>, Reject> {
    match encoding.map(str::trim) {
        None | Some("") | Some("identity") => Ok(body.to_vec()),
        Some(e) if e.eq_ignore_ascii_case("gzip") => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(body)
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| Reject::invalid(format!("gzip body: {e}")))?;
            if out.len() > max {
                return Err(too_large(max));
            }
            Ok(out)
        }
        Some(e) => Err(Reject::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid",
            format!("Content-Encoding {e:?} is not supported (identity or gzip)"),
        )),
    }
}

fn too_large(max: usize) -> Reject {
    Reject::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request too large",
        format!("request body is larger than {max} bytes (max_body_bytes)"),
    )
}

/// What a body parsed into: the work for the journal (readings and health
/// counts) and, when lines were bad, the 400 to answer after committing it.
#[derive(Debug)]
pub struct ParsedBody {
    /// The parse.
    pub parsed: Parsed,
    /// The 400 for bad lines, `None` when every line was good.
    pub reject: Option<Reject>,
}

/// Parses a (decompressed) body; see the module docs.
pub fn parse_body(
    body: &[u8],
    precision: Precision,
    now_ns: i64,
    cfg: &InfluxHttpConfig,
) -> ParsedBody {
    let mut cache = KeyCache::default();
    let mut parser = ChunkParser::new(precision, now_ns, &cfg.name, &cfg.device_tag, &mut cache)
        .string_fields(cfg.string_fields);
    let mut splitter = LineSplitter::default();
    let mut bad: Vec<String> = Vec::new();
    let (mut pos, mut line_no) = (0, 1);
    while pos < body.len() {
        let rest = &body[pos..];
        let (line, next, newlines) = match splitter.next_end(rest) {
            Some(end) => (&rest[..end], pos + end + 1, splitter.newlines()),
            None => (rest, body.len(), count_newlines(rest)),
        };
        let before = parser.rejected();
        if line.len() > cfg.max_line_bytes {
            parser.reject(
                line_no,
                LineError::LineTooLong {
                    max: cfg.max_line_bytes,
                },
            );
        } else {
            parser.push_line(line_no, line);
        }
        if parser.rejected() > before && bad.len() < MAX_REPORTED {
            bad.push(quote_line(line));
        }
        line_no += 1 + newlines;
        pos = next;
    }
    let parsed = parser.finish();
    let reject = (!parsed.errors.is_empty()).then(|| {
        let mut message: Vec<String> = parsed
            .errors
            .iter()
            .zip(&bad)
            .map(|((no, e), line)| format!("unable to parse '{line}' (line {no}): {e}"))
            .collect();
        if parsed.errors.len() > MAX_REPORTED {
            message.push(format!(
                "{} more lines unable to parse",
                parsed.errors.len() - MAX_REPORTED
            ));
        }
        Reject::invalid(message.join("\n"))
    });
    ParsedBody { parsed, reject }
}

fn quote_line(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() <= MAX_QUOTED_LINE {
        return String::from_utf8_lossy(line).into_owned();
    }
    let mut end = MAX_QUOTED_LINE;
    while end > 0 && (line[end] & 0xc0) == 0x80 {
        end -= 1;
    }
    format!("{}…", String::from_utf8_lossy(&line[..end]))
}

/// The journal work for a parsed body.
pub fn body_work(parsed: Parsed, cfg: &InfluxHttpConfig) -> Work {
    super::parsed_work(parsed, &cfg.name)
}

struct HttpState {
    cfg: InfluxHttpConfig,
    intake: Intake,
    stats: Arc<SourceStats>,
    clock: Arc<dyn Clock>,
    requests: Semaphore,
}

/// The routes of one listener.
pub fn router(cfg: InfluxHttpConfig, intake: Intake, stats: Arc<SourceStats>) -> Router {
    let requests = Semaphore::new(cfg.max_requests.max(1));
    let state = Arc::new(HttpState {
        cfg,
        intake,
        stats,
        clock: Arc::new(SystemClock),
        requests,
    });
    Router::new()
        .route(
            "/api/v2/write",
            post(
                |State(s): State<Arc<HttpState>>,
                 Query(q): Query<HashMap<String, String>>,
                 headers: HeaderMap,
                 body: Body| async move { write(&s, Api::V2, q, headers, body).await },
            ),
        )
        .route(
            "/write",
            post(
                |State(s): State<Arc<HttpState>>,
                 Query(q): Query<HashMap<String, String>>,
                 headers: HeaderMap,
                 body: Body| async move { write(&s, Api::V1, q, headers, body).await },
            ),
        )
        .route(
            "/ping",
            get(|| async { StatusCode::NO_CONTENT }).head(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/health",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
                    r#"{"name":"ferry-agent","message":"ready for writes","status":"pass"}"#,
                )
            }),
        )
        .with_state(state)
}

/// Serves `[[influx_http]]` on `listener` until `shutdown` completes;
/// requests in flight finish first.
pub async fn run_http(
    listener: TcpListener,
    cfg: InfluxHttpConfig,
    intake: Intake,
    stats: Arc<SourceStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let name = cfg.name.clone();
    let app = router(cfg, intake, stats);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(source = %name, error = %e, "InfluxDB write API stopped");
    }
}

async fn write(
    s: &HttpState,
    api: Api,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match write_inner(s, api, &query, &headers, body).await {
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Ok(Some(reject)) | Err(reject) => reject.into_response(api),
    }
}

/// `Ok(None)`: 204; `Ok(Some(400))`: stored, but lines were bad.
async fn write_inner(
    s: &HttpState,
    api: Api,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Option<Reject>, Reject> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    authorize(&s.cfg.tokens, api, query, text(header::AUTHORIZATION))?;
    let precision = precision_of(api, query, s.cfg.precision)?;
    let max = s.cfg.max_body_bytes;
    if text(header::CONTENT_LENGTH)
        .and_then(|l| l.parse::<u64>().ok())
        .is_some_and(|l| l > max as u64)
    {
        return Err(too_large(max));
    }
    let _permit = s
        .requests
        .acquire()
        .await
        .map_err(|_| unavailable("the agent is stopping"))?;
    let raw = match Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(max)),
        Err(e) => return Err(Reject::invalid(format!("reading the body: {e}"))),
    };
    s.stats.add(&s.stats.bytes, raw.len() as u64);
    let body = decode_body(text(header::CONTENT_ENCODING), &raw, max)?;
    drop(raw);
    let ParsedBody { parsed, reject } = parse_body(&body, precision, s.clock.now_ns(), &s.cfg);
    drop(body);
    let (lines, readings) = (parsed.lines_accepted, parsed.readings_accepted);
    let (rejected, strings) = (parsed.errors.len() as u64, parsed.string_fields_skipped);
    let work = body_work(parsed, &s.cfg);
    if work.is_empty() {
        return Ok(reject);
    }
    match s.intake.submit_or_return(work).await {
        Ok(_) => {
            s.stats.add(&s.stats.lines_accepted, lines);
            s.stats.add(&s.stats.readings_accepted, readings);
            s.stats.add(&s.stats.lines_rejected, rejected);
            s.stats.add(&s.stats.string_fields_skipped, strings);
            if let Some(r) = &reject {
                tracing::debug!(source = %s.cfg.name, rejected, first = %r.message.lines().next().unwrap_or(""),
                    "partial write: bad lines rejected, good lines stored");
            }
            Ok(reject)
        }
        Err(Refused {
            error: error @ SubmitError::Full { .. },
            ..
        }) => {
            tracing::debug!(source = %s.cfg.name, %error, "journal full; answering 503");
            Err(unavailable(format!(
                "{error}; retry after {RETRY_AFTER_S} s"
            )))
        }
        Err(Refused {
            error: SubmitError::Shutdown,
            ..
        }) => Err(unavailable("the agent is stopping")),
        Err(Refused { error, .. }) => {
            tracing::error!(source = %s.cfg.name, %error, readings, "journal commit failed; answering 500");
            Err(Reject::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                format!("{error}; nothing of this request was stored"),
            ))
        }
    }
}

fn unavailable(message: impl Into<String>) -> Reject {
    Reject {
        retry_after: Some(RETRY_AFTER_S),
        ..Reject::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

#[cfg(test)]
mod tests;
