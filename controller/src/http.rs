//! The controller's HTTP API: versioned JSON under `/v1/`, `{error, code}` on failure.
//! Handlers only map: a request to one `ControllerState` method under the lock, its
//! result or [`ActionError`] to a response.

use crate::config::MonitorConfig;
use crate::state::{ActionError, Principal, Refusal, unknown_formation};
use crate::{Shared, lock, now_ms};
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
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
    leadership: std::sync::Arc<crate::leader::Leadership>,
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

/// Bodies are small (a report is a few kilobytes): a larger one is refused (413).
const MAX_BODY_BYTES: usize = 256 * 1024;

/// A JSON body, refused with the API's own error body (`bad_request`, and the status
/// axum chose: 400, 413, 415, 422) when it is not what the route takes: malformed,
/// unknown fields, too large, too deep.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = Failure;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Failure> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(r) => Err(Failure::new(
                r.status(),
                ErrorCode::BadRequest,
                r.body_text(),
            )),
        }
    }
}

/// A query string, refused as a [`Body`] is.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = Failure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Failure> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(r) => Err(Failure::new(
                r.status(),
                ErrorCode::BadRequest,
                r.body_text(),
            )),
        }
    }
}

pub fn router(
    shared: Shared,
    cfg: MonitorConfig,
    leadership: std::sync::Arc<crate::leader::Leadership>,
) -> Router {
    let ctx = Ctx {
        shared,
        cfg,
        leadership,
    };
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
        .route(routes::PAUSE, post(pause).delete(resume))
        .route(routes::PROMOTE_FORMATION, post(promote_formation))
        .route(routes::REPLICATION_PASSWORD, get(replication_password))
        .route(routes::BACKUPS, get(backups).post(start_backup))
        .route(routes::REINIT, post(reinit))
        .route(routes::RESTART, post(restart))
        .route(routes::EVENTS, get(events))
        // Every matched route passes the access check of its entry in routes::ALL.
        .route_layer(axum::middleware::from_fn_with_state(ctx.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(|| async {
            Failure::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such API endpoint",
            )
        })
        .with_state(ctx)
}

/// Who a request speaks for, as the access check found (None: no credential, on a
/// route whose handler decides: registration into an open formation).
#[derive(Clone)]
struct Caller(Option<Principal>);

impl Caller {
    fn actor(&self, st: &crate::state::ControllerState) -> String {
        self.0
            .as_ref()
            .map_or_else(|| "anyone".into(), |p| p.actor(st))
    }
}

/// The access check of every route: its entry in `routes::ALL` (none: refused, so a
/// route added without one is closed, not open), then the bearer token against it.
async fn guard(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    matched: axum::extract::MatchedPath,
    params: axum::extract::RawPathParams,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.as_str().to_string();
    let Some(access) = routes::access(req.method().as_str(), &route) else {
        return Failure::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("{route} has no access rule: refused"),
        )
        .into_response();
    };
    // A follower answers only what needs no state: health, and its own metrics page.
    if access != routes::Access::Public
        && route != routes::METRICS
        && !ctx.leadership.is_leader(now_ms())
    {
        return not_leader(&ctx).into_response();
    }
    let formation = params
        .iter()
        .find(|(k, _)| *k == "name")
        .map(|(_, v)| v.to_string());
    let caller = lock(&ctx.shared).authenticate(
        access,
        bearer(req.headers()).as_deref(),
        formation.as_deref(),
        peer.ip(),
        &route,
        now_ms(),
    );
    let response = match caller {
        Ok(p) => {
            req.extensions_mut().insert(Caller(p));
            next.run(req).await
        }
        Err(e) => Failure::from(e).into_response(),
    };
    // Nothing staged goes out before the store holds it: every answer but a report's
    // (which waits for its own formation only) waits for all that is staged by now.
    if route != routes::REPORT {
        let ticket = lock(&ctx.shared).ticket(None);
        if let Some(t) = ticket
            && let Err(e) = t.settle(&ctx.shared).await
        {
            return Failure::store(e).into_response();
        }
    }
    response
}

/// A follower's refusal, naming the leader when one is known.
fn not_leader(ctx: &Ctx) -> Failure {
    let leader = match ctx.leadership.leader_url() {
        Some(url) if url != ctx.cfg.own_url() => format!("the leader is {url}"),
        _ => "no controller leads right now (an election is under way, or etcd cannot be reached)"
            .into(),
    };
    Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::NotLeader,
        format!(
            "this controller ({}) does not lead: {leader}",
            ctx.cfg.own_url()
        ),
    )
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    let now = now_ms();
    let text = if ctx.leadership.is_leader(now) {
        lock(&ctx.shared).metrics_page(now)
    } else {
        // A follower's formations are stale: it says only that it follows, so a
        // Prometheus scraping every controller counts each formation once.
        String::from("# EOF\n")
    };
    let text = crate::metrics::with_leader_gauge(
        text,
        ctx.leadership.shared_store(),
        ctx.leadership.is_leader(now),
    );
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
            ErrorCode::JoinSecret | ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
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

/// The token a request presents: `Authorization: Bearer TOKEN`, or HTTP Basic with the
/// token as the password (any user name), which is what `curl` sends for the
/// `https://read:TOKEN@host` URL that `pgha show uri` prints, and what Prometheus'
/// `basic_auth` sends.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.to_string());
    }
    let encoded = v.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (_user, token) = decoded.split_once(':')?;
    Some(token.to_string())
}

/// Standard base64 (with or without padding); None when `s` is not base64.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 || s.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    Some(out)
}

async fn register(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<RegisterRequest>,
) -> ApiResult<RegisterResponse> {
    let mut st = lock(&ctx.shared);
    Ok(Json(st.register(
        &req,
        caller.0.as_ref(),
        peer.ip(),
        now_ms(),
    )?))
}

async fn report(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Extension(caller): Extension<Caller>,
    Body(r): Body<NodeReport>,
) -> ApiResult<Assignment> {
    let (assignment, ticket) = {
        let mut st = lock(&ctx.shared);
        let span = tracing::info_span!("reconcile", formation = %r.formation, node = r.node_id);
        let _entered = span.enter();
        let a = st.report(&r, caller.0.as_ref(), peer.ip(), now_ms())?;
        // Only this formation's staged changes hold the answer up, not other
        // formations' writes.
        (a, st.ticket(Some(&r.formation)))
    };
    if let Some(t) = ticket {
        t.settle(&ctx.shared).await.map_err(Failure::store)?;
    }
    Ok(Json(assignment))
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

async fn backups(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> ApiResult<pgha_api::BackupsStatus> {
    let st = lock(&ctx.shared);
    st.backups_status(&name)
        .map(Json)
        .ok_or_else(|| unknown_formation(&name).into())
}

async fn start_backup(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<pgha_api::BackupStart>,
) -> ApiResult<pgha_api::BackupsStatus> {
    let mut st = lock(&ctx.shared);
    let actor = caller.actor(&st);
    Ok(Json(st.request_backup(
        &name,
        req.kind,
        &actor,
        now_ms(),
    )?))
}

async fn switchover(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<SwitchoverStarted> {
    let mut st = lock(&ctx.shared);
    let actor = caller.actor(&st);
    Ok(Json(st.switchover(&name, None, &actor, now_ms())?))
}

async fn promotion(
    State(ctx): State<Ctx>,
    Path((name, node)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<SwitchoverStarted> {
    let mut st = lock(&ctx.shared);
    let actor = caller.actor(&st);
    Ok(Json(st.switchover(&name, Some(&node), &actor, now_ms())?))
}

/// `pgha perform failover --allow-data-loss --reason R`.
async fn forced_failover(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<ForcedFailoverRequest>,
) -> ApiResult<ForcedFailoverStarted> {
    let mut st = lock(&ctx.shared);
    let actor = caller.actor(&st);
    Ok(Json(st.forced_failover(&name, &req, &actor, now_ms())?))
}

#[derive(Deserialize)]
struct EventsQuery {
    formation: Option<String>,
    count: Option<usize>,
    since: Option<u64>,
}

async fn events(
    State(ctx): State<Ctx>,
    Params(mut q): Params<EventsQuery>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Vec<Event>> {
    // A node reads the events of its own formation only.
    if let Some(Principal::Node { formation, .. }) = caller.0 {
        q.formation = Some(formation);
    }
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

/// An operator action on one node: the state method, under the lock, as the caller.
fn on_node(
    ctx: &Ctx,
    (name, node): (String, String),
    caller: &Caller,
    act: impl FnOnce(
        &mut crate::state::ControllerState,
        &str,
        &str,
        &str,
        u64,
    ) -> Result<(), ActionError>,
) -> ApiResult<serde_json::Value> {
    let mut st = lock(&ctx.shared);
    let actor = caller.actor(&st);
    act(&mut st, &name, &node, &actor, now_ms())?;
    Ok(Json(serde_json::json!({"node": node, "formation": name})))
}

async fn enable_maintenance(
    State(ctx): State<Ctx>,
    Path(at): Path<(String, String)>,
    Params(q): Params<MaintenanceQuery>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<serde_json::Value> {
    on_node(&ctx, at, &caller, |st, f, n, who, now| {
        st.set_maintenance(f, n, true, q.allow_failover, who, now)
    })
}

async fn disable_maintenance(
    State(ctx): State<Ctx>,
    Path(at): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<serde_json::Value> {
    on_node(&ctx, at, &caller, |st, f, n, who, now| {
        st.set_maintenance(f, n, false, false, who, now)
    })
}

async fn drop_node(
    State(ctx): State<Ctx>,
    Path(at): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<serde_json::Value> {
    on_node(&ctx, at, &caller, |st, f, n, who, now| {
        st.drop_node(f, n, who, now)
    })
}

async fn reinit(
    State(ctx): State<Ctx>,
    Path(at): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<serde_json::Value> {
    on_node(&ctx, at, &caller, |st, f, n, who, now| {
        st.reinit(f, n, who, now)
    })
}

#[derive(Deserialize)]
struct RestartQuery {
    /// `pgha restart --scheduled`: when, in unix milliseconds.
    #[serde(default)]
    at_ms: Option<u64>,
}

async fn restart(
    State(ctx): State<Ctx>,
    Path(at): Path<(String, String)>,
    Params(q): Params<RestartQuery>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<serde_json::Value> {
    on_node(&ctx, at, &caller, |st, f, n, who, now| {
        st.restart(f, n, q.at_ms, who, now)
    })
}

async fn pause(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<serde_json::Value> {
    set_paused(&ctx, name, &caller, true)
}

async fn resume(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<serde_json::Value> {
    set_paused(&ctx, name, &caller, false)
}

/// Never logged: the caller holds the operator's credential (checked by the route's
/// access entry before this runs).
async fn replication_password(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<serde_json::Value> {
    let mut st = lock(&ctx.shared);
    let actor = caller.actor(&st);
    let password = st.read_replication_password(&name, actor, peer.ip(), now_ms())?;
    Ok(Json(
        serde_json::json!({"formation": name, "replication_password": password}),
    ))
}

async fn promote_formation(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<serde_json::Value> {
    let mut st = lock(&ctx.shared);
    let actor = caller.actor(&st);
    let from = st.promote_formation(&name, &actor, now_ms())?;
    Ok(Json(
        serde_json::json!({"formation": name, "promoted_from": from.hosts}),
    ))
}

fn set_paused(ctx: &Ctx, name: String, caller: &Caller, on: bool) -> ApiResult<serde_json::Value> {
    let mut st = lock(&ctx.shared);
    let actor = caller.actor(&st);
    let paused = st.set_paused(&name, on, &actor, now_ms())?;
    Ok(Json(
        serde_json::json!({"formation": name, "paused": paused}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read URL `pgha show uri` prints (`https://read:TOKEN@host:port`) works with
    /// `curl`, which sends it as HTTP Basic, and with Prometheus' `basic_auth`.
    #[test]
    fn a_token_comes_as_bearer_or_as_the_basic_password() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            bearer(&h)
        };
        assert_eq!(with("Bearer abc123").as_deref(), Some("abc123"));
        // base64("read:abc123")
        assert_eq!(with("Basic cmVhZDphYmMxMjM=").as_deref(), Some("abc123"));
        // base64("read:ab") without padding
        assert_eq!(with("Basic cmVhZDphYg").as_deref(), Some("ab"));
        assert_eq!(with("Basic !!!"), None);
        assert_eq!(with("Basic cmVhZA=="), None, "no password");
        assert_eq!(with("Digest x"), None);
    }
}
