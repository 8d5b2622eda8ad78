//! The controller's HTTP API: versioned JSON under `/v1/`, `{error, code}` on failure.
//! Handlers only map: a request to one `ControllerState` method under the lock, its
//! result or [`ActionError`] to a response.

use crate::config::MonitorConfig;
use crate::state::{ActionError, Refusal, unknown_formation};
use crate::{Shared, lock, now_ms};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pgha_api::routes::{self, ErrorCode};
use pgha_api::{
    ApiError, Assignment, Event, ForcedFailoverRequest, ForcedFailoverStarted, FormationStatus,
    MonitorInfo, NodeReport, RegisterRequest, RegisterResponse, SwitchoverStarted,
};
use serde::Deserialize;

#[derive(Clone)]
struct Ctx {
    shared: Shared,
    cfg: MonitorConfig,
}

/// An API failure: HTTP status plus the uniform body.
pub struct Failure(StatusCode, ApiError);

impl Failure {
    fn new(status: StatusCode, code: ErrorCode, error: impl Into<String>) -> Self {
        Failure(
            status,
            ApiError {
                error: error.into(),
                code,
            },
        )
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    }
    /// The store refused a write: nothing of the request is in force; try again.
    fn store(e: crate::store::StoreError) -> Self {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            format!("the controller cannot persist its state, nothing was changed: {e}"),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, Failure>;

pub fn router(shared: Shared, cfg: MonitorConfig) -> Router {
    Router::new()
        .route(routes::HEALTHZ, get(|| async { "ok\n" }))
        .route(routes::METRICS, get(metrics))
        .route(routes::INFO, get(info))
        .route(routes::REGISTER, post(register))
        .route(routes::REPORT, post(report))
        .route(routes::FORMATION_STATE, get(formation_state))
        .route(routes::SWITCHOVER, post(switchover))
        .route(routes::PROMOTION, post(promotion))
        .route(routes::FAILOVER, post(forced_failover))
        .route(
            routes::MAINTENANCE,
            post(enable_maintenance).delete(disable_maintenance),
        )
        .route(routes::NODE, axum::routing::delete(drop_node))
        .route(routes::EVENTS, get(events))
        .fallback(|| async {
            Failure::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such API endpoint",
            )
        })
        .with_state(Ctx { shared, cfg })
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let text = lock(&ctx.shared).metrics_page(now_ms());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn info(State(ctx): State<Ctx>) -> ApiResult<MonitorInfo> {
    let st = lock(&ctx.shared);
    Ok(Json(MonitorInfo {
        url: ctx.cfg.url(),
        formations: st.durable.formations.keys().cloned().collect(),
        sslmode: ctx.cfg.sslmode.clone(),
        username: None,
    }))
}

/// A refused action, with its status.
impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        let status = match r.code {
            ErrorCode::JoinSecret => StatusCode::UNAUTHORIZED,
            ErrorCode::UnknownFormation | ErrorCode::UnknownNode => StatusCode::NOT_FOUND,
            ErrorCode::InvalidName
            | ErrorCode::InvalidHost
            | ErrorCode::AllowDataLossRequired
            | ErrorCode::ReasonRequired => StatusCode::BAD_REQUEST,
            ErrorCode::NotDeclared | ErrorCode::AddressMismatch => StatusCode::FORBIDDEN,
            _ => StatusCode::CONFLICT,
        };
        Failure::new(status, r.code, r.message)
    }
}

impl From<ActionError> for Failure {
    fn from(e: ActionError) -> Self {
        match e {
            ActionError::Refused(r) => r.into(),
            ActionError::Store(e) => Failure::store(e),
            ActionError::Internal(e) => Failure::internal(e),
        }
    }
}

/// The bearer token a request presents.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

async fn register(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<RegisterResponse> {
    let mut st = lock(&ctx.shared);
    st.authorize(&req.formation, bearer(&headers))?;
    Ok(Json(st.register(&req, peer.ip(), now_ms())?))
}

async fn report(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Json(r): Json<NodeReport>,
) -> ApiResult<Assignment> {
    let mut st = lock(&ctx.shared);
    st.authorize(&r.formation, bearer(&headers))?;
    let span = tracing::info_span!("reconcile", formation = %r.formation, node = r.node_id);
    let _entered = span.enter();
    Ok(Json(st.report(&r, peer.ip(), now_ms())?))
}

async fn formation_state(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> ApiResult<FormationStatus> {
    let st = lock(&ctx.shared);
    st.status(&name, now_ms())
        .map(Json)
        .ok_or_else(|| unknown_formation(&name).into())
}

async fn switchover(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<SwitchoverStarted> {
    let mut st = lock(&ctx.shared);
    st.authorize(&name, bearer(&headers))?;
    Ok(Json(st.switchover(&name, None, now_ms())?))
}

async fn promotion(
    State(ctx): State<Ctx>,
    Path((name, node)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<SwitchoverStarted> {
    let mut st = lock(&ctx.shared);
    st.authorize(&name, bearer(&headers))?;
    Ok(Json(st.switchover(&name, Some(&node), now_ms())?))
}

/// `pgha perform failover --allow-data-loss --reason R`.
async fn forced_failover(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(req): Json<ForcedFailoverRequest>,
) -> ApiResult<ForcedFailoverStarted> {
    let mut st = lock(&ctx.shared);
    st.authorize(&name, bearer(&headers))?;
    Ok(Json(st.forced_failover(&name, &req, now_ms())?))
}

#[derive(Deserialize)]
struct EventsQuery {
    formation: Option<String>,
    count: Option<usize>,
    since: Option<u64>,
}

async fn events(State(ctx): State<Ctx>, Query(q): Query<EventsQuery>) -> ApiResult<Vec<Event>> {
    let st = lock(&ctx.shared);
    let mut out: Vec<Event> = st
        .events
        .iter()
        .filter(|e| q.formation.as_deref().is_none_or(|f| e.formation == f))
        .filter(|e| q.since.is_none_or(|s| e.id > s))
        .cloned()
        .collect();
    let count = q.count.unwrap_or(10);
    if out.len() > count {
        out.drain(..out.len() - count);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct MaintenanceQuery {
    #[serde(default)]
    allow_failover: bool,
}

fn node_done(formation: &str, node: &str) -> ApiResult<serde_json::Value> {
    Ok(Json(
        serde_json::json!({"node": node, "formation": formation}),
    ))
}

async fn enable_maintenance(
    State(ctx): State<Ctx>,
    Path((name, node)): Path<(String, String)>,
    Query(q): Query<MaintenanceQuery>,
    headers: HeaderMap,
) -> ApiResult<serde_json::Value> {
    let mut st = lock(&ctx.shared);
    st.authorize(&name, bearer(&headers))?;
    st.set_maintenance(&name, &node, true, q.allow_failover, now_ms())?;
    node_done(&name, &node)
}

async fn disable_maintenance(
    State(ctx): State<Ctx>,
    Path((name, node)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<serde_json::Value> {
    let mut st = lock(&ctx.shared);
    st.authorize(&name, bearer(&headers))?;
    st.set_maintenance(&name, &node, false, false, now_ms())?;
    node_done(&name, &node)
}

async fn drop_node(
    State(ctx): State<Ctx>,
    Path((name, node)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<serde_json::Value> {
    let mut st = lock(&ctx.shared);
    st.authorize(&name, bearer(&headers))?;
    st.drop_node(&name, &node, now_ms())?;
    node_done(&name, &node)
}
