//! The agent's own HTTP endpoint: health checks for load balancers, compatible with
//! Patroni's (`/primary`, `/replica?lag=`, `/health`, `/read-only`, GET and HEAD, 200 or
//! 503), and the agent's `/metrics`.

use crate::observe::Local;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pgha_api::{Lsn, NodeState};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the agent knows right now, refreshed every tick.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub node: String,
    pub formation: String,
    pub local: Local,
    pub goal: NodeState,
    pub reported: NodeState,
    pub fenced: bool,
    /// Lease left before this node fences itself (writable states with peers).
    pub lease_remaining_ms: Option<u64>,
    pub last_report_ok: Option<Instant>,
    pub primary_lsn: Option<Lsn>,
    /// The formation file keeps this node out of read load balancing (`/replica` 503).
    pub no_load_balance: bool,
}

pub type SharedSnapshot = Arc<Mutex<Option<Snapshot>>>;

fn snapshot(s: &SharedSnapshot) -> Option<Snapshot> {
    s.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The node's role as the health endpoints see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Replica,
    Stopped,
    Unknown,
}

impl Snapshot {
    pub fn role(&self) -> Role {
        let l = &self.local;
        if !l.ready {
            return if l.postmaster_running {
                Role::Unknown
            } else {
                Role::Stopped
            };
        }
        match l.in_recovery {
            Some(false) if self.goal.is_writable() && !self.fenced => Role::Primary,
            Some(true) => Role::Replica,
            _ => Role::Unknown,
        }
    }

    /// Bytes this standby has yet to replay of what the primary last reported.
    pub fn lag_bytes(&self) -> Option<u64> {
        match (self.primary_lsn, self.local.lsn) {
            (Some(p), Some(me)) => Some(p.bytes_ahead_of(me)),
            _ => None,
        }
    }
}

/// `16MB`, `1048576`, `10 kB` → bytes (Patroni's `?lag=` syntax).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[derive(Serialize)]
struct Health {
    state: &'static str,
    role: Role,
    assigned_state: Option<NodeState>,
    reported_state: Option<NodeState>,
    timeline: Option<u32>,
    lsn: Option<Lsn>,
    lag_bytes: Option<u64>,
    fenced: bool,
}

fn answer(s: &Option<Snapshot>, ok: bool) -> Response {
    let body = Health {
        state: match s {
            Some(s) if s.local.ready => "running",
            Some(_) => "stopped",
            None => "starting",
        },
        role: s.as_ref().map(|s| s.role()).unwrap_or(Role::Unknown),
        assigned_state: s.as_ref().map(|s| s.goal),
        reported_state: s.as_ref().map(|s| s.reported),
        timeline: s.as_ref().and_then(|s| s.local.timeline),
        lsn: s.as_ref().and_then(|s| s.local.lsn),
        lag_bytes: s.as_ref().and_then(|s| s.lag_bytes()),
        fenced: s.as_ref().is_some_and(|s| s.fenced),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
struct LagQuery {
    lag: Option<String>,
}

async fn primary(State(s): State<SharedSnapshot>) -> Response {
    let s = snapshot(&s);
    let ok = s.as_ref().is_some_and(|s| s.role() == Role::Primary);
    answer(&s, ok)
}

async fn replica(State(s): State<SharedSnapshot>, Query(q): Query<LagQuery>) -> Response {
    let max_lag = match q.lag.as_deref().map(parse_size) {
        Some(None) => {
            return (
                StatusCode::BAD_REQUEST,
                "lag must be bytes, optionally with a unit: 1048576, 16MB, 1GB\n",
            )
                .into_response();
        }
        Some(Some(n)) => Some(n),
        None => None,
    };
    let s = snapshot(&s);
    let ok = s.as_ref().is_some_and(|s| {
        s.role() == Role::Replica
            && !s.no_load_balance
            && s.local.receiver_live()
            && max_lag.is_none_or(|max| s.lag_bytes().is_some_and(|lag| lag <= max))
    });
    answer(&s, ok)
}

async fn health(State(s): State<SharedSnapshot>) -> Response {
    let s = snapshot(&s);
    let ok = s.as_ref().is_some_and(|s| s.local.ready);
    answer(&s, ok)
}

async fn read_only(State(s): State<SharedSnapshot>) -> Response {
    let s = snapshot(&s);
    let ok = s
        .as_ref()
        .is_some_and(|s| matches!(s.role(), Role::Primary | Role::Replica));
    answer(&s, ok)
}

type Labels = Vec<(String, String)>;

/// Renders the agent's metrics page.
pub fn render_metrics(s: &Snapshot) -> String {
    let base = vec![
        ("formation".to_string(), s.formation.clone()),
        ("node".to_string(), s.node.clone()),
    ];
    let with = |k: &str, v: &str| {
        let mut l = base.clone();
        l.push((k.to_string(), v.to_string()));
        l
    };
    let mut reg = Registry::with_prefix("pgha_agent");
    let gauge = |reg: &mut Registry, name: &str, help: &str, v: i64| {
        let f = Family::<Labels, Gauge>::default();
        f.get_or_create(&base).set(v);
        reg.register(name, help, f);
    };
    gauge(
        &mut reg,
        "postgres_up",
        "1 when the local Postgres accepts connections",
        s.local.ready as i64,
    );
    gauge(
        &mut reg,
        "fenced",
        "1 while the agent keeps Postgres stopped because its lease ran out",
        s.fenced as i64,
    );
    gauge(
        &mut reg,
        "pending_restart",
        "1 when a changed setting waits for a Postgres restart",
        !s.local.pending_restart.is_empty() as i64,
    );
    if let Some(t) = s.local.timeline {
        gauge(
            &mut reg,
            "timeline",
            "Current timeline of the local Postgres",
            t as i64,
        );
    }
    if let Some(d) = s.local.disk {
        gauge(
            &mut reg,
            "pgdata_free_bytes",
            "Bytes free on the filesystem of PGDATA (as an unprivileged user sees it)",
            d.free_bytes as i64,
        );
        gauge(
            &mut reg,
            "pgdata_size_bytes",
            "Size of the filesystem of PGDATA, in bytes",
            d.total_bytes as i64,
        );
    }
    if let Some(l) = s.local.lsn {
        gauge(
            &mut reg,
            "wal_lsn_bytes",
            "Current WAL position of the local Postgres, in bytes",
            l.0 as i64,
        );
    }
    let role = Family::<Labels, Gauge>::default();
    for r in ["primary", "replica", "stopped", "unknown"] {
        let is = serde_json::to_value(s.role())
            .ok()
            .and_then(|v| v.as_str().map(|x| x == r))
            .unwrap_or(false);
        role.get_or_create(&with("role", r)).set(is as i64);
    }
    reg.register("role", "Role of the local Postgres (one-hot)", role);
    let lag_b = Family::<Labels, Gauge>::default();
    let lag_s = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let primary_lsn = s.local.lsn.unwrap_or_default();
    for sb in &s.local.standbys {
        let l = with("standby", &sb.obs.application_name);
        let behind = sb
            .obs
            .flush_lsn
            .map(|f| primary_lsn.bytes_ahead_of(f))
            .unwrap_or(0);
        lag_b.get_or_create(&l).set(behind as i64);
        lag_s.get_or_create(&l).set(sb.replay_lag_seconds);
    }
    reg.register(
        "standby_lag_bytes",
        "Bytes a standby has not flushed yet, seen from this primary",
        lag_b,
    );
    reg.register(
        "standby_replay_lag_seconds",
        "replay_lag of a standby, seen from this primary",
        lag_s,
    );
    let secs = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    if let Some(ms) = s.lease_remaining_ms {
        secs.get_or_create(&base).set(ms as f64 / 1000.0);
    }
    reg.register(
        "lease_remaining_seconds",
        "Lease left before a writable node fences itself",
        secs,
    );
    let age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    if let Some(t) = s.last_report_ok {
        age.get_or_create(&base).set(t.elapsed().as_secs_f64());
    }
    reg.register(
        "last_report_age_seconds",
        "Seconds since the controller last answered a report",
        age,
    );
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        return "# metrics encoding failed\n".into();
    }
    out
}

async fn metrics(State(s): State<SharedSnapshot>) -> Response {
    let text = snapshot(&s)
        .map(|s| render_metrics(&s))
        .unwrap_or_else(|| "# EOF\n".into());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub fn router(s: SharedSnapshot) -> Router {
    health_router(s.clone()).merge(metrics_router(s))
}

/// The health endpoints alone: read-only, no credential (HAProxy checks them).
pub fn health_router(s: SharedSnapshot) -> Router {
    // axum answers HEAD on every GET route (headers only), as load balancers expect.
    Router::new()
        .route("/primary", get(primary))
        .route("/master", get(primary))
        .route("/leader", get(primary))
        .route("/replica", get(replica))
        .route("/health", get(health))
        .route("/read-only", get(read_only))
        .with_state(s)
}

/// `/metrics` alone, for `--metrics-listen` (another address than the health checks').
pub fn metrics_router(s: SharedSnapshot) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lag_sizes_like_patroni() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("10 kB"), Some(10 << 10));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5parsecs"), None);
    }

    fn snap(ready: bool, in_recovery: bool, goal: NodeState) -> Snapshot {
        Snapshot {
            node: "node_a".into(),
            formation: "default".into(),
            local: Local {
                initialized: true,
                postmaster_running: ready,
                ready,
                in_recovery: Some(in_recovery),
                lsn: Some(Lsn(100)),
                disk: Some(pgha_api::DiskSpace {
                    free_bytes: 1 << 30,
                    total_bytes: 10 << 30,
                }),
                ..Local::default()
            },
            goal,
            reported: goal,
            fenced: false,
            lease_remaining_ms: Some(2500),
            last_report_ok: None,
            primary_lsn: Some(Lsn(300)),
            no_load_balance: false,
        }
    }

    /// A streaming standby kept out of load balancing fails `/replica` only.
    #[tokio::test]
    async fn a_standby_kept_out_of_load_balancing_fails_replica_checks_only() {
        let mut s = snap(true, true, NodeState::Secondary);
        s.local.wal_receiver_streaming = true;
        let status = async |s: &Snapshot| {
            let shared: SharedSnapshot = Arc::new(Mutex::new(Some(s.clone())));
            let r = replica(State(shared.clone()), Query(LagQuery { lag: None })).await;
            let ro = read_only(State(shared)).await;
            (r.status(), ro.status())
        };
        assert_eq!(status(&s).await, (StatusCode::OK, StatusCode::OK));
        s.no_load_balance = true;
        assert_eq!(
            status(&s).await,
            (StatusCode::SERVICE_UNAVAILABLE, StatusCode::OK)
        );
    }

    #[test]
    fn roles_follow_recovery_and_fencing() {
        assert_eq!(snap(true, false, NodeState::Primary).role(), Role::Primary);
        assert_eq!(snap(true, true, NodeState::Secondary).role(), Role::Replica);
        assert_eq!(snap(false, false, NodeState::Demoted).role(), Role::Stopped);
        let mut fenced = snap(true, false, NodeState::Primary);
        fenced.fenced = true;
        assert_eq!(fenced.role(), Role::Unknown);
        assert_eq!(
            snap(true, true, NodeState::Secondary).lag_bytes(),
            Some(200)
        );
    }

    #[test]
    fn metrics_page_has_help_for_every_metric() {
        let text = render_metrics(&snap(true, false, NodeState::Primary));
        for name in [
            "pgha_agent_postgres_up",
            "pgha_agent_role",
            "pgha_agent_fenced",
            "pgha_agent_lease_remaining_seconds",
            "pgha_agent_pgdata_free_bytes",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} missing HELP in\n{text}"
            );
        }
        assert!(
            text.contains(r#"pgha_agent_role{formation="default",node="node_a",role="primary"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    /// Opens a connection from `source` (a loopback address of its own).
    async fn connect_from(
        source: std::net::IpAddr,
        to: std::net::SocketAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(std::net::SocketAddr::new(source, 0))?;
        sock.connect(to).await
    }

    /// One HAProxy-style check (`GET /health`, 2 s timeout) from 127.0.0.1: how long
    /// the answer took, or None when it did not come in time.
    async fn check(to: std::net::SocketAddr) -> Option<std::time::Duration> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let t0 = std::time::Instant::now();
        let run = async {
            let mut s = tokio::net::TcpStream::connect(to).await.ok()?;
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut buf = vec![];
            s.read_to_end(&mut buf).await.ok()?;
            buf.starts_with(b"HTTP/1.1 ").then_some(())
        };
        tokio::time::timeout(std::time::Duration::from_secs(2), run)
            .await
            .ok()
            .flatten()
            .map(|()| t0.elapsed())
    }

    /// The second review: about 13 idle connections a second took all 64 slots of the
    /// health server (5 s header timeout), and HAProxy (`timeout check 2s`, `fall 2`)
    /// marked the primary down. With a host flooding idle connections and another
    /// trickling a body, HAProxy-style checks from a third keep their answers within
    /// their 2 s timeout, every one; the flooders hold at most their share.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_are_answered_while_other_hosts_flood_the_health_port() {
        let fds = || {
            std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = crate::agent::health_limits(&crate::postgres::conf::tests::cfg());
        let per_source = limits.max_per_source;
        tokio::spawn(pgha_api::server::serve(
            listener,
            router(SharedSnapshot::default()),
            limits,
            None,
            std::future::pending::<()>(),
        ));
        let flood_for = std::time::Duration::from_secs(6);
        // Idle connections from 127.0.0.2, as fast as they open (bounded: 6 s, 3,000).
        let flood = tokio::spawn(async move {
            let mut idle = vec![];
            let t0 = std::time::Instant::now();
            let mut opened = 0;
            while t0.elapsed() < flood_for && opened < 3000 {
                let c = connect_from([127, 0, 0, 2].into(), addr);
                if let Ok(Ok(s)) =
                    tokio::time::timeout(std::time::Duration::from_millis(200), c).await
                {
                    opened += 1;
                    idle.push(s);
                }
            }
            (opened, idle)
        });
        // Headers trickled from 127.0.0.3, a byte every 300 ms: cut by the deadline.
        let trickle = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = connect_from([127, 0, 0, 3].into(), addr).await.unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            let t0 = std::time::Instant::now();
            while t0.elapsed() < flood_for {
                if s.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            let mut buf = vec![];
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), s.read_to_end(&mut buf))
                    .await;
            (t0.elapsed(), String::from_utf8_lossy(&buf).to_string())
        });
        let before = fds();
        let mut answered = vec![];
        let mut missed = 0;
        let t0 = std::time::Instant::now();
        while t0.elapsed() < flood_for {
            match check(addr).await {
                Some(d) => answered.push(d),
                None => missed += 1,
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let held = fds().saturating_sub(before);
        let (opened, idle) = flood.await.unwrap();
        let (trickled, answer) = trickle.await.unwrap();
        answered.sort();
        let p99 = answered[(answered.len() * 99 / 100).min(answered.len() - 1)];
        println!(
            "flood: {opened} idle connections opened from one host in {:?}; checks: {} answered, {missed} missed, p50 {:?}, p99 {:?}, max {:?}; trickled headers cut after {trickled:?}",
            flood_for,
            answered.len(),
            answered[answered.len() / 2],
            p99,
            answered.last().unwrap()
        );
        assert!(opened >= 100, "the flood opened only {opened} connections");
        assert_eq!(
            missed, 0,
            "checks missed their 2 s timeout during the flood"
        );
        assert!(
            held <= 64 + idle.len() + 8,
            "descriptors grew by {held} with {} idle clients",
            idle.len()
        );
        assert!(
            answer.starts_with("HTTP/1.1 408") || answer.is_empty(),
            "the trickled request got: {answer}"
        );
        assert!(
            trickled < flood_for,
            "the trickled headers were read for the whole {flood_for:?}"
        );
        // The flood is cut at its share: the rest of the slots served the checks.
        assert!(per_source < 64);
    }

    /// An allowlist for the health port: connections from elsewhere are closed.
    #[tokio::test]
    async fn only_allowed_networks_reach_the_health_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = crate::postgres::conf::tests::cfg();
        cfg.health_allow = vec!["127.0.0.1".into()];
        tokio::spawn(pgha_api::server::serve(
            listener,
            router(SharedSnapshot::default()),
            crate::agent::health_limits(&cfg),
            None,
            std::future::pending::<()>(),
        ));
        assert!(check(addr).await.is_some());
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = connect_from([127, 0, 0, 5].into(), addr).await.unwrap();
        let _ = s
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buf = vec![];
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), s.read_to_end(&mut buf)).await;
        assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    }
}
