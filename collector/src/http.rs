//! The HTTP API (axum): queries, agents, `/metrics`, `/healthz`, and the
//! loopback-only admin call that revokes an agent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::admin::{AgentView, RevokeResult, agent_views};
use crate::pki;
use crate::query::{QueryParams, Selector};
use crate::server::{RevokeError, Shared};
use crate::store::StoreError;

/// An error answered as `{"error": "..."}` with a status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            _ => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/query", get(query))
        .route("/api/v1/series", get(series))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{id}/revoke", post(revoke))
        .route("/api/v1/drops", get(drops))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/subscribers", get(subscribers))
        .route("/api/v1/reload", post(reload))
        .nest(
            crate::prometheus::api::PREFIX,
            crate::prometheus::api::routes(),
        )
        .merge(crate::fleet::routes())
        .with_state(shared)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared
        .metrics
        .store_file_bytes
        .set(shared.store.file_bytes());
    // Per agent, device and reason losses: durable totals from the store.
    let store = shared.store.clone();
    let losses = blocking(move || {
        let resets = store
            .agents()?
            .into_iter()
            .map(|a| (a.id, a.journal_resets))
            .collect::<Vec<_>>();
        Ok((crate::admin::drop_rows(&store)?, resets))
    })
    .await;
    match losses {
        Ok((rows, resets)) => shared.metrics.set_losses(&rows, &resets),
        Err(ApiError(_, e)) => tracing::warn!("/metrics: reading the loss totals failed: {e}"),
    }
    shared.metrics.set_subscribers(&shared.bus.views());
    shared.metrics.ingest_waiting.set(shared.bus.waiting());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn query(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<QueryParams>,
) -> Result<Json<Vec<crate::store::SeriesResult>>, ApiError> {
    let q = params
        .resolve(crate::now_ns())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let store = shared.store.clone();
    Ok(Json(blocking(move || Ok(store.query(&q)?)).await?))
}

#[derive(Deserialize)]
struct SeriesParams {
    #[serde(rename = "match", default)]
    selector: Option<String>,
}

async fn series(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<SeriesParams>,
) -> Result<Json<Vec<crate::store::SeriesInfo>>, ApiError> {
    let sel = Selector::parse(params.selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let store = shared.store.clone();
    Ok(Json(blocking(move || Ok(store.series(&sel)?)).await?))
}

async fn agents(State(shared): State<Arc<Shared>>) -> Result<Json<Vec<AgentView>>, ApiError> {
    let store = shared.store.clone();
    let data_dir = shared.config.data_dir.clone();
    let records = blocking(move || Ok(store.agents()?)).await?;
    Ok(Json(agent_views(
        records,
        pki::enrolled_agents(&data_dir),
        &shared.live(),
    )))
}

async fn drops(State(shared): State<Arc<Shared>>) -> Result<Json<crate::admin::Drops>, ApiError> {
    let store = shared.store.clone();
    Ok(Json(
        blocking(move || Ok(crate::admin::drops(&store)?)).await?,
    ))
}

async fn revoke(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Json<RevokeResult>, ApiError> {
    if !peer.ip().is_loopback() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("revoke is answered for loopback clients only, not {peer}"),
        ));
    }
    let closed = shared.live().iter().filter(|c| c.agent == id).count();
    let changed = shared.revoke(&id).await.map_err(|e| match e {
        RevokeError::BadId(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        _ => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    })?;
    Ok(Json(RevokeResult {
        agent: id,
        changed,
        closed,
    }))
}

async fn alerts(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<crate::fanout::AlertParams>,
) -> Result<Json<Vec<crate::fanout::AlertEvent>>, ApiError> {
    let f = params
        .resolve(crate::now_ns())
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let store = shared.store.clone();
    Ok(Json(blocking(move || Ok(store.alerts(&f)?)).await?))
}

async fn subscribers(
    State(shared): State<Arc<Shared>>,
) -> Json<Vec<crate::fanout::SubscriberView>> {
    Json(shared.bus.views())
}

async fn reload(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Json<crate::server::ReloadReport>, ApiError> {
    if !peer.ip().is_loopback() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("reload is answered for loopback clients only, not {peer}"),
        ));
    }
    shared
        .reload()
        .await
        .map(Json)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))
}
