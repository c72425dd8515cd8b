//! The local admin endpoint: `/status` (JSON), `/metrics` (Prometheus text),
//! `/buffer` (what waits, per series), `/healthz`. Loopback only, unless
//! `[admin] token` is set: then every request but `/healthz` needs it as a
//! bearer token.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::oneshot;

use crate::metrics::AgentMetrics;
use ferry_clock::now_ns;

use crate::writer::{Control, WriterHandle};

#[derive(Clone)]
struct AdminState {
    metrics: Arc<AgentMetrics>,
    writer: WriterHandle,
}

/// The routes, for [`axum::serve`]; with `token`, every request but
/// `/healthz` must carry it as `Authorization: Bearer`.
pub fn router(metrics: Arc<AgentMetrics>, writer: WriterHandle, token: Option<String>) -> Router {
    let token: Option<Arc<str>> = token.map(|t| Arc::from(t.trim()));
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/buffer", get(buffer))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let token = token.clone();
                async move {
                    match token {
                    Some(t) if req.uri().path() != "/healthz" && !bearer_is(&req, &t) => (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Bearer realm=\"ferry-agent\"")],
                        "this endpoint needs the token of [admin] token as Authorization: Bearer\n",
                    )
                        .into_response(),
                    _ => next.run(req).await,
                }
                }
            },
        ))
        .with_state(AdminState { metrics, writer })
}

/// True if the request's bearer token is `token` (compared in time
/// independent of where they differ).
fn bearer_is(req: &Request, token: &str) -> bool {
    let Some(got) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (got.trim().as_bytes(), token.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

async fn status(State(s): State<AdminState>) -> Response {
    match s.writer.stats().await {
        Some(stats) => axum::Json(s.metrics.status(&stats, now_ns())).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "journal writer stopped\n").into_response(),
    }
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn buffer(State(s): State<AdminState>) -> Response {
    let (tx, rx) = oneshot::channel();
    s.writer.send(Control::Inspect(tx)).await;
    match rx.await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "journal writer stopped\n").into_response(),
    }
}
