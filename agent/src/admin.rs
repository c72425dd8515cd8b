//! The local admin endpoint: `/status` (JSON), `/metrics` (Prometheus text),
//! `/buffer` (what waits, per series), `/healthz`. Loopback by default.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
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

/// The routes, for [`axum::serve`].
pub fn router(metrics: Arc<AgentMetrics>, writer: WriterHandle) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/buffer", get(buffer))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(AdminState { metrics, writer })
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
