//! The controller's HTTP API: versioned JSON under `/v1/`, `{error, code}` on failure.

use crate::admission::{self, Refusal};
use crate::config::MonitorConfig;
use crate::planner::{self, NodeView};
use crate::store::{FormationRecord, NodeRecord};
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
    let text = crate::metrics::render(&lock(&ctx.shared), now_ms());
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

/// A refusal of the admission rules, with its status.
impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        let status = match r.code {
            ErrorCode::JoinSecret => StatusCode::UNAUTHORIZED,
            ErrorCode::UnknownFormation | ErrorCode::UnknownNode => StatusCode::NOT_FOUND,
            ErrorCode::InvalidName | ErrorCode::InvalidHost => StatusCode::BAD_REQUEST,
            ErrorCode::NotDeclared | ErrorCode::AddressMismatch => StatusCode::FORBIDDEN,
            _ => StatusCode::CONFLICT,
        };
        Failure::new(status, r.code, r.message)
    }
}

/// The formation's join secret, as the request presents it.
fn check_secret(
    st: &crate::state::ControllerState,
    formation: &str,
    headers: &HeaderMap,
) -> Result<(), Failure> {
    let f = st
        .durable
        .formations
        .get(formation)
        .ok_or_else(|| unknown_formation(formation))?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    Ok(admission::check_secret(f, presented)?)
}

async fn register(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<RegisterResponse> {
    let now = now_ms();
    let mut st = lock(&ctx.shared);
    check_secret(&st, &req.formation, &headers)?;
    let f = st
        .durable
        .formations
        .get(&req.formation)
        .ok_or_else(|| unknown_formation(&req.formation))?;
    // Nothing of a refused node is stored.
    let declared = admission::admit_registration(f, &req, peer.ip())?;
    let others: Vec<NodeView> = st
        .view(&req.formation, now)
        .map(|v| v.nodes)
        .unwrap_or_default();
    let goal = planner::initial_state(&others);
    // Made before anything changes, so a failure here leaves nothing half-done.
    let new_password = match f.replication_password.is_empty() {
        true => Some(crate::store::random_secret().map_err(Failure::internal)?),
        false => None,
    };
    let id = st.durable.next_node_id.max(1);
    st.durable.next_node_id = id + 1;
    let name = req.name.clone().unwrap_or_else(|| format!("node_{id}"));
    let rec = NodeRecord {
        id,
        name: name.clone(),
        host: req.host.clone(),
        port: req.port,
        goal,
        reported: pgha_api::NodeState::Init,
        operator_maintenance: false,
        drop_requested: false,
        rebuild_epoch: 0,
        candidate_priority: match &declared {
            Some(d) => d.candidate_priority.min(100) as u8,
            None => req.candidate_priority.min(100),
        },
        replication_quorum: match &declared {
            Some(d) => d.replication_quorum,
            None => req.replication_quorum,
        },
    };
    let f: &mut FormationRecord = st
        .durable
        .formations
        .get_mut(&req.formation)
        .ok_or_else(|| Failure::internal("formation vanished"))?;
    if f.nodes.is_empty() {
        f.dbname = req.dbname.clone();
    }
    if let Some(p) = new_password {
        f.replication_password = p;
    }
    let replication_password = f.replication_password.clone();
    f.nodes.insert(id, rec.clone());
    st.save().map_err(Failure::store)?;
    let ev = st.event(
        &req.formation,
        Some(&rec),
        "register",
        format!(
            "registered {name} ({}:{}) as node {id}, assigned {goal}",
            req.host, req.port
        ),
        now,
    );
    st.record(ev).map_err(Failure::store)?;
    Ok(Json(RegisterResponse {
        node_id: id,
        name,
        formation: req.formation,
        assigned_state: goal,
        replication_password,
    }))
}

async fn report(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Json(r): Json<NodeReport>,
) -> ApiResult<Assignment> {
    let now = now_ms();
    let mut st = lock(&ctx.shared);
    check_secret(&st, &r.formation, &headers)?;
    if st.formation_of(r.node_id).map(|f| f.name.as_str()) != Some(r.formation.as_str()) {
        // An admitted agent with an id this store never issued (it was restored from an
        // older copy): that id is never handed out again.
        if r.node_id >= st.durable.next_node_id && st.formation_of(r.node_id).is_none() {
            st.durable.next_node_id = r.node_id.saturating_add(1);
            st.save().map_err(Failure::store)?;
        }
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownNode,
            format!(
                "node {} is not registered in formation {:?} on this monitor",
                r.node_id, r.formation
            ),
        ));
    }
    if let Some(f) = st.formation_of(r.node_id)
        && let Some(n) = f.nodes.get(&r.node_id)
        && let Some(host) = admission::declared_host(f, &n.name)
        && !admission::peer_may_speak_for(host, peer.ip())
    {
        let (name, host) = (n.name.clone(), host.to_string());
        // One event per node and address, not one per second.
        if st.refused_peers.insert((r.node_id, peer.ip())) {
            let ev = st.event(
                &r.formation,
                None,
                "report_refused",
                format!(
                    "a report for {name} (declared at {host}) came from {}: refused",
                    peer.ip()
                ),
                now,
            );
            st.record(ev).map_err(Failure::store)?;
        }
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            ErrorCode::AddressMismatch,
            format!("node {name} is declared at {host}; reports for it come from there only"),
        ));
    }
    let span = tracing::info_span!("reconcile", formation = %r.formation, node = r.node_id);
    let _entered = span.enter();
    st.take_report(&r, now).map_err(Failure::store)?;
    st.reconcile(&r.formation, now).map_err(Failure::store)?;
    st.assignment(&r.formation, r.node_id, now)
        .map(Json)
        .ok_or_else(|| Failure::internal("node vanished"))
}

fn unknown_formation(name: &str) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownFormation,
        format!("formation {name:?} does not exist on this monitor"),
    )
}

async fn formation_state(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> ApiResult<FormationStatus> {
    let st = lock(&ctx.shared);
    st.status(&name, now_ms())
        .map(Json)
        .ok_or_else(|| unknown_formation(&name))
}

async fn switchover(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<SwitchoverStarted> {
    authorize(&ctx, &name, &headers)?;
    start_switchover(&ctx, name, None)
}

/// Operator actions need the formation's join secret, as registration does: whoever may
/// not join a formation may not switch it over, fail it over or take nodes out of it.
fn authorize(ctx: &Ctx, formation: &str, headers: &HeaderMap) -> Result<(), Failure> {
    check_secret(&lock(&ctx.shared), formation, headers)
}

async fn promotion(
    State(ctx): State<Ctx>,
    Path((name, node)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<SwitchoverStarted> {
    authorize(&ctx, &name, &headers)?;
    start_switchover(&ctx, name, Some(node))
}

fn start_switchover(
    ctx: &Ctx,
    name: String,
    target: Option<String>,
) -> ApiResult<SwitchoverStarted> {
    let now = now_ms();
    let mut st = lock(&ctx.shared);
    let view = st
        .view(&name, now)
        .ok_or_else(|| unknown_formation(&name))?;
    let (plan, from, to) = match planner::plan_switchover_to(&view, target.as_deref()) {
        Ok(x) => x,
        Err(why) => {
            let l = crate::metrics::labels(&[("formation", &name), ("result", "refused")]);
            st.metrics.switchovers.get_or_create(&l).inc();
            return Err(Failure::new(
                StatusCode::CONFLICT,
                ErrorCode::SwitchoverRefused,
                why,
            ));
        }
    };
    let ev = st.event(
        &name,
        None,
        "operator_switchover",
        match &target {
            Some(t) => format!("operator asked to promote {t} (node {from} -> node {to})"),
            None => format!("operator asked for a switchover (node {from} -> node {to})"),
        },
        now,
    );
    st.record(ev).map_err(Failure::store)?;
    st.apply_plan(&name, &plan, now).map_err(Failure::store)?;
    let term = st.durable.formations[&name].term;
    Ok(Json(SwitchoverStarted {
        from_node: from,
        to_node: to,
        term,
    }))
}

/// `pgha perform failover --allow-data-loss --reason R`.
async fn forced_failover(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(req): Json<ForcedFailoverRequest>,
) -> ApiResult<ForcedFailoverStarted> {
    authorize(&ctx, &name, &headers)?;
    if !req.allow_data_loss {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::AllowDataLossRequired,
            "failover without data loss runs by itself; a forced failover must say allow_data_loss",
        ));
    }
    if req.reason.trim().is_empty() {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ReasonRequired,
            "a forced failover needs the operator's reason (it is recorded as an event)",
        ));
    }
    let now = now_ms();
    let mut st = lock(&ctx.shared);
    let view = st
        .view(&name, now)
        .ok_or_else(|| unknown_formation(&name))?;
    let (plan, term) = planner::plan_forced_failover(&view)
        .map_err(|why| Failure::new(StatusCode::CONFLICT, ErrorCode::FailoverRefused, why))?;
    st.allow_data_loss(&name, term);
    let mut ev = st.event(
        &name,
        None,
        "operator_failover_allow_data_loss",
        format!(
            "operator forced a failover that may lose acknowledged commits (term {term}): {}",
            req.reason.trim()
        ),
        now,
    );
    ev.inputs = Some(crate::state::decision_inputs(&view));
    st.record(ev).map_err(Failure::store)?;
    // Persists the override (and the plan's term and goals, if any).
    st.save().map_err(Failure::store)?;
    st.apply_plan(&name, &plan, now).map_err(Failure::store)?;
    let to_node = plan
        .decisions
        .iter()
        .find(|d| d.goal.is_standby())
        .map(|d| d.node_id);
    Ok(Json(ForcedFailoverStarted { term, to_node }))
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

/// Sets an operator flag on a node and records what was asked.
fn operator_action(
    ctx: &Ctx,
    formation: &str,
    node: &str,
    rule: &str,
    what: String,
    set: impl FnOnce(&mut NodeRecord),
) -> ApiResult<serde_json::Value> {
    let now = now_ms();
    let mut st = lock(&ctx.shared);
    let f = st
        .durable
        .formations
        .get_mut(formation)
        .ok_or_else(|| unknown_formation(formation))?;
    let n = f
        .nodes
        .values_mut()
        .find(|n| n.name == node)
        .ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownNode,
                format!("no node {node:?} in formation {formation:?}"),
            )
        })?;
    set(n);
    let rec = n.clone();
    st.save().map_err(Failure::store)?;
    let ev = st.event(formation, Some(&rec), rule, what, now);
    st.record(ev).map_err(Failure::store)?;
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
    authorize(&ctx, &name, &headers)?;
    let is_primary = lock(&ctx.shared)
        .durable
        .formations
        .get(&name)
        .and_then(|f| f.nodes.values().find(|n| n.name == node))
        .is_some_and(|n| n.goal.is_writable());
    if is_primary && !q.allow_failover {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            ErrorCode::NeedsAllowFailover,
            format!("{node} is the primary: maintenance hands over first; pass --allow-failover"),
        ));
    }
    if is_primary {
        // Refused now rather than parked: a flag left waiting would take the primary
        // out of service whenever a candidate shows up later.
        let view = lock(&ctx.shared)
            .view(&name, now_ms())
            .ok_or_else(|| unknown_formation(&name))?;
        if let Err(why) = planner::plan_switchover(&view) {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                ErrorCode::NoCandidate,
                format!("{node} is the primary and cannot hand over: {why}"),
            ));
        }
    }
    operator_action(
        &ctx,
        &name,
        &node,
        "operator_maintenance",
        format!("operator asked for maintenance of {node}"),
        |n| n.operator_maintenance = true,
    )
}

async fn disable_maintenance(
    State(ctx): State<Ctx>,
    Path((name, node)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<serde_json::Value> {
    authorize(&ctx, &name, &headers)?;
    operator_action(
        &ctx,
        &name,
        &node,
        "operator_maintenance",
        format!("operator ended the maintenance of {node}"),
        |n| n.operator_maintenance = false,
    )
}

async fn drop_node(
    State(ctx): State<Ctx>,
    Path((name, node)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<serde_json::Value> {
    authorize(&ctx, &name, &headers)?;
    operator_action(
        &ctx,
        &name,
        &node,
        "operator_drop",
        format!("operator asked to drop {node}"),
        |n| n.drop_requested = true,
    )
}
