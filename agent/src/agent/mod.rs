//! The agent loop: observe, fence if the lease ran out, take one step toward the
//! assigned state, report, repeat. This is the I/O shell around the pure planner
//! ([`crate::plan`]):
//!
//! - [`tick`]: one pass of the loop, in named phases;
//! - [`steps`]: carrying out one step (initdb, base backup, rewind, start, promote…);
//! - [`report`]: what the agent tells the controller and its HTTP endpoint;
//! - [`fence`]: the lease check and the watchdog's deadline.

mod fence;
mod report;
mod steps;
mod tick;

use crate::config::{AgentConfig, AgentState};
use crate::observe;
use crate::os_user::RunAs;
use crate::plan::{self, Wanted};
use crate::postgres::bin as pg;
use pgha_api::client::MonitorClient;
use pgha_api::{NodeState, Timings};
use std::time::{Duration, Instant};

struct Agent {
    cfg: AgentConfig,
    who: Option<RunAs>,
    state: AgentState,
    client: MonitorClient,
    started: Instant,
    last_controller_contact: Instant,
    contacted_since_start: bool,
    /// The evidence for this node's lease (standbys heard from, its own receiver).
    lease: crate::lease::Evidence,
    /// The node's PostgreSQL installs (found at the start), and the major of the one in
    /// use (`cfg.pg_bin_dir`, switched by [`Agent::choose_install`]).
    installs: Vec<crate::postgres::installs::Install>,
    /// This node's pgBackRest version (found at the start).
    pgbackrest: Option<String>,
    binaries_major: Option<pgha_api::PgMajor>,
    last_heartbeat: Option<Instant>,
    /// `upstream_streaming` as last reported: a change is reported at once (the
    /// controller parks a standby that stopped streaming, and a synchronous primary
    /// waits for it until then).
    reported_upstream_live: Option<bool>,
    last_report: Option<Instant>,
    last_error: Option<String>,
    reported: NodeState,
    /// A wait that has not ended yet, and since when (reported once it lasts).
    waiting: Option<(&'static str, Instant)>,
    /// When failing steps are tried again.
    retries: Retries,
    /// What the HTTP endpoint serves.
    snapshot: crate::http::SharedSnapshot,
    last_report_ok: Option<Instant>,
    /// Generation of the formation settings written and reloaded.
    applied_generation: u64,
    /// The primary's values of the hot-standby settings, from pg_controldata.
    hot_standby_floors: std::collections::BTreeMap<String, i64>,
    /// Dropped and removed from the formation: the agent exits.
    removed: bool,
    /// Fences when the lease runs out while the loop is stuck in a step.
    watchdog: crate::lease::Watchdog,
    /// Invalidated slots seen since the last report that went through: reported even
    /// when this agent already dropped them (the controller rebuilds their standby).
    lost_slots: std::collections::BTreeSet<String>,
    /// The operator's role-change hook.
    hooks: crate::hooks::Hooks,
    pre_promote: crate::hooks::PrePromote,
    /// pgBackRest: configuration, stanza, backup jobs.
    backups: crate::backup::Backups,
    /// Postgres' running state and role at the last tick (for the start/stop hooks).
    pg_was_running: Option<(bool, &'static str)>,
}

/// The agent's memory of steps that failed or must not repeat at once: each is tried
/// again after a pause, not at every pass of the loop.
#[derive(Debug, Default)]
struct Retries {
    /// Starts attempted since Postgres last ran.
    start_attempts: u32,
    /// When a point-in-time recovery short of its target was last started again.
    pitr_retry_at: Option<Instant>,
    /// When a restore from another formation's backups last failed.
    restore_failed_at: Option<Instant>,
    /// When this standby last stopped to load copies of logical slots.
    slot_copy_restart_at: Option<Instant>,
    /// When the last base backup failed.
    basebackup_failed_at: Option<Instant>,
}

/// How long a report may take before the agent counts the controller unreachable.
const REPORT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Starts of a standby that fail in a row before it is rebuilt from a base backup.
const MAX_START_ATTEMPTS: u32 = 5;
/// An idle primary writes its heartbeat after this long without WAL (`lease::WalMarks`):
/// a standby's acknowledgement renews the lease at most this late.
const HEARTBEAT_AFTER: Duration = Duration::from_millis(500);
/// A failed base backup (the upstream refused it, or is not there yet) is tried again
/// after this long.
const BASEBACKUP_RETRY: Duration = Duration::from_secs(2);
/// A standby restarts to load logical slot copies at most this often: a copy Postgres
/// does not keep (or one dropped at once) must not restart it in a loop.
const SLOT_COPY_RESTART_EVERY: Duration = Duration::from_secs(300);

impl Agent {
    fn timings(&self) -> Timings {
        self.state
            .assignment
            .as_ref()
            .map(|a| a.timings)
            .unwrap_or_default()
    }

    /// The goal after local safety overrides: a fenced node stays stopped.
    fn effective_goal(&self) -> NodeState {
        plan::effective_goal(self.state.assignment.as_ref(), self.state.fenced)
    }

    /// `synchronous_standby_names` to apply (see [`plan::synchronous_standby_names`]).
    fn synchronous_standby_names(&self) -> String {
        plan::synchronous_standby_names(self.state.assignment.as_ref(), self.contacted_since_start)
    }

    fn wanted(&self, goal: NodeState) -> Wanted {
        let mut w = plan::wanted(
            goal,
            self.state.assignment.as_ref(),
            self.synchronous_standby_names(),
        );
        w.slot_copy_restart_allowed = self
            .retries
            .slot_copy_restart_at
            .is_none_or(|t| t.elapsed() >= SLOT_COPY_RESTART_EVERY);
        w
    }
}

/// Serves the health endpoints and `/metrics` (on `--metrics-listen` when given); a port
/// that cannot be bound is logged and skipped (health checks must never take the
/// database down).
async fn serve_http(cfg: &AgentConfig, snapshot: crate::http::SharedSnapshot) {
    let host = match cfg.hostname.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => ip.to_string(),
        _ => "0.0.0.0".to_string(),
    };
    match &cfg.metrics_listen {
        Some(m) => {
            let health = crate::http::health_router(snapshot.clone());
            listen(
                format!("{host}:{}", cfg.http_port),
                health,
                "health endpoints",
                health_limits(cfg),
            )
            .await;
            let metrics = crate::http::metrics_router(snapshot);
            listen(m.clone(), metrics, "/metrics", health_limits(cfg)).await;
        }
        None => {
            let both = crate::http::router(snapshot);
            listen(
                format!("{host}:{}", cfg.http_port),
                both,
                "health endpoints and /metrics",
                health_limits(cfg),
            )
            .await;
        }
    }
}

/// What a client of the health endpoints may hold. Load balancers check every few
/// seconds with a short timeout (HAProxy: `timeout check 2s`): a request is read within
/// 1 s and answered within 2 s, and one source holds at most 8 of the 64 connections,
/// so a flooding host cannot make the primary look down to the others.
pub fn health_limits(cfg: &AgentConfig) -> pgha_api::server::Limits {
    pgha_api::server::Limits {
        max_connections: 64,
        max_per_source: 8,
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        max_connection_age: Duration::from_secs(300),
        allow: cfg
            .health_allow
            .iter()
            .filter_map(|n| match n.parse() {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::error!("health_allow: {e} (skipped)");
                    None
                }
            })
            .collect(),
    }
}

/// Serves `app` on `addr`, bounded (connections, per source, header and request
/// deadlines): health checkers and scrapers must never take the descriptors the agent
/// reports and fences with.
async fn listen(addr: String, app: axum::Router, what: &str, limits: pgha_api::server::Limits) {
    match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => {
            tracing::info!(%addr, "{what} listening");
            tokio::spawn(pgha_api::server::serve(
                listener,
                app,
                limits,
                None,
                std::future::pending::<()>(),
            ));
        }
        Err(e) => tracing::error!(%addr, "cannot listen for {what}: {e}"),
    }
}

/// Why the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (SIGTERM, ^C).
    Stopped,
    /// Dropped from its formation: nothing left to do (a service manager should not
    /// restart it; `pgha run` exits with [`EXIT_DROPPED`]).
    Dropped,
}

/// Exit status of `pgha run` for a node dropped from its formation (as pg_autoctl).
pub const EXIT_DROPPED: u8 = 121;

/// Runs the agent until `shutdown` resolves. Postgres is left running when the agent
/// stops: restarting the agent (upgrade, crash) never interrupts the database.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Exit> {
    let who = pg::run_as(&cfg)?;
    let state = AgentState::load(&cfg)?;
    // 0700: the directory holds the Unix socket (local connections are trusted) and
    // the replication password.
    steps::prepare_dir(&cfg.state_dir(), who)?;
    pg::write_passfile(&cfg, who)?;
    let client = cfg.monitor_client(REPORT_TIMEOUT)?;
    let now = Instant::now();
    let reported = state.reported.unwrap_or(NodeState::Init);
    let watchdog = {
        let cfg = cfg.clone();
        crate::lease::Watchdog::spawn(move || {
            let cfg = cfg.clone();
            async move {
                if let Err(e) = pg::stop_immediate(&cfg).await {
                    tracing::error!("the watchdog could not stop Postgres: {e}");
                }
            }
        })
    };
    let installs = crate::postgres::installs::find(&cfg);
    let binaries_major = installs
        .iter()
        .find(|i| i.bin_dir == cfg.pg_bin_dir)
        .map(|i| i.major);
    let mut lease = crate::lease::Evidence::new(now);
    let running = crate::observe::postmaster_identity(&cfg.pgdata);
    if lease.restore(state.lease_senders.as_ref(), running.as_deref()) {
        tracing::info!(
            "Postgres ran on through the agent's restart: only the streams of the last answered report renew the lease"
        );
    }
    let mut agent = Agent {
        hooks: crate::hooks::Hooks::new(cfg.on_role_change.clone())
            .with_start_stop(cfg.on_start.clone(), cfg.on_stop.clone()),
        pg_was_running: None,
        backups: Default::default(),
        pre_promote: crate::hooks::PrePromote::new(cfg.pre_promote.clone()),
        watchdog,
        lost_slots: Default::default(),
        cfg,
        who,
        state,
        client,
        started: now,
        last_controller_contact: now,
        contacted_since_start: false,
        lease,
        installs,
        pgbackrest: crate::backup::pgbackrest_version(),
        binaries_major,
        last_heartbeat: None,
        reported_upstream_live: None,
        last_report: None,
        last_error: None,
        reported,
        waiting: None,
        retries: Retries::default(),
        snapshot: Default::default(),
        last_report_ok: None,
        applied_generation: 0,
        hot_standby_floors: Default::default(),
        removed: false,
    };
    if agent.cfg.http_port != 0 {
        serve_http(&agent.cfg, agent.snapshot.clone()).await;
    }
    tracing::info!(
        node = %agent.cfg.name,
        pgdata = %agent.cfg.pgdata.display(),
        monitor = %pgha_api::client::redact(&agent.cfg.monitor),
        last_goal = ?agent.state.assignment.as_ref().map(|a| a.goal),
        "agent started"
    );
    // Learn the current assignment before touching Postgres when the controller is up;
    // when it is down, act on the last one we persisted.
    let l = observe::observe(&agent.cfg).await;
    if let Err(e) = agent.report(&l).await {
        tracing::warn!("controller unreachable at start ({e:#}); resuming the last assigned role");
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let span =
        tracing::info_span!("agent", formation = %agent.cfg.formation, node = %agent.cfg.name);
    loop {
        let wait = match tracing::Instrument::instrument(agent.tick(), span.clone()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("{e:#}");
                Duration::from_millis(500)
            }
        };
        if agent.removed {
            tracing::info!(
                pgdata = %agent.cfg.pgdata.display(),
                "dropped from the formation: Postgres is stopped, PGDATA is kept; exiting"
            );
            return Ok(Exit::Dropped);
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("agent stopping; Postgres keeps running");
    Ok(Exit::Stopped)
}
