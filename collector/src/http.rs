//! The HTTP API (axum): queries, agents, `/metrics`, `/healthz`, the
//! admin calls (revoke, reload, tokens), all behind the auth gate
//! (`crate::auth`): one middleware decides every request from its method
//! and path, routes added later included.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::admin::{AgentView, RevokeResult, agent_views};
use crate::auth::{AuthError, CreatedToken, Role, TokenView};
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
            StoreError::OverBudget(b) => ApiError(StatusCode::BAD_REQUEST, b.to_string()),
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
        .route("/api/v1/tokens", get(tokens).post(create_token))
        .route("/api/v1/tokens/{name}/revoke", post(revoke_token))
        .nest(
            crate::prometheus::api::PREFIX,
            crate::prometheus::api::routes(),
        )
        .merge(crate::fleet::routes())
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

/// The auth gate: every request, before routing.
async fn gate(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let decision = shared.auth.check(
        req.method().as_str(),
        req.uri().path(),
        req.headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    );
    let refusal = match decision {
        Ok(_) => return next.run(req).await,
        Err(r) => r,
    };
    let (method, path) = (req.method().as_str(), req.uri().path());
    let message = refusal.message(method, path);
    shared
        .metrics
        .http_refused
        .get_or_create(&[("reason", refusal.label())])
        .inc();
    if let Some(suppressed) = shared.auth.should_log(&refusal) {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "?".to_owned(), |c| c.0.to_string());
        tracing::warn!(reason = refusal.label(), %peer, suppressed, "HTTP request refused: {message}");
    }
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    // One body for both kinds of clients: Ferry's `error`, and Prometheus's
    // `status`/`errorType` (what Grafana shows).
    let body = Json(serde_json::json!({
        "status": "error",
        "errorType": if status == StatusCode::FORBIDDEN { "forbidden" } else { "unauthorized" },
        "error": message,
    }));
    if status == StatusCode::UNAUTHORIZED {
        // Bearer only: a Basic challenge would make browsers pop up their
        // own dialog over the fleet page's prompt.
        (
            status,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"ferry-collector\"")],
            body,
        )
            .into_response()
    } else {
        (status, body).into_response()
    }
}

fn auth_error(e: AuthError) -> ApiError {
    let status = match e {
        AuthError::BadName { .. } | AuthError::BadRole(_) => StatusCode::BAD_REQUEST,
        AuthError::Exists(_) => StatusCode::CONFLICT,
        AuthError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(status, e.to_string())
}

async fn tokens(State(shared): State<Arc<Shared>>) -> Json<Vec<TokenView>> {
    Json(shared.auth.list())
}

#[derive(Deserialize)]
struct CreateParams {
    name: String,
    #[serde(default)]
    role: Option<String>,
}

async fn create_token(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<CreateParams>,
) -> Result<Json<CreatedToken>, ApiError> {
    let role: Role = params
        .role
        .as_deref()
        .unwrap_or("read")
        .parse()
        .map_err(auth_error)?;
    let created =
        blocking(move || shared.auth.create(&params.name, role).map_err(auth_error)).await?;
    tracing::info!(name = created.name, role = %created.role, "token created");
    Ok(Json(created))
}

async fn revoke_token(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let gone = blocking(move || shared.auth.revoke(&name).map_err(auth_error)).await?;
    tracing::info!(name = gone.name, role = %gone.role, "token revoked");
    Ok(Json(gone))
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
    let limits = shared.config.query;
    let answer = tokio::task::spawn_blocking(move || store.query_within(&q, &limits))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match answer {
        Ok(v) => Ok(Json(v)),
        Err(e) => {
            if let StoreError::OverBudget(b) = &e {
                shared
                    .metrics
                    .queries_refused
                    .get_or_create(&[("api", "ferry"), ("bound", b.label())])
                    .inc();
            }
            Err(e.into())
        }
    }
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
        &shared.statuses(),
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
    Path(id): Path<String>,
) -> Result<Json<RevokeResult>, ApiError> {
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
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
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
) -> Result<Json<crate::server::ReloadReport>, ApiError> {
    shared
        .reload()
        .await
        .map(Json)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}
