//! pgha controller (the tutorial's "monitor").
//!
//! - [`planner`]: the pure decision function (no I/O);
//! - [`records`]: the durable records, desired apart from intent apart from observed;
//! - [`rule`]: why each decision and event happened, as a typed enum;
//! - [`store`]: where the durable state lives (a file, or etcd);
//! - [`leader`]: which controller decides, and the fence that stops a deposed one;
//! - [`state`]: live state (durable records + observations) and plan application;
//! - [`admission`]: who may join a formation and speak for its nodes;
//! - [`credentials`]: the operator's and the read-only credential of the monitor;
//! - [`http`]: the HTTP API for agents and operators;
//! - [`probe`]: SQL health probes of every node;
//! - [`metrics`]: the Prometheus page;
//! - [`clock`]: the monotonic clock the planner's durations are measured on.

pub mod admission;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod desired;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod planner;
pub mod probe;
pub mod records;
pub mod rule;
pub mod state;
pub mod store;

use anyhow::Context;
use state::ControllerState;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use config::MonitorConfig;

pub use clock::now_ms;

/// Shared handle to the controller's state.
pub type Shared = Arc<Mutex<ControllerState>>;

/// Locks the state; a poisoned lock (a panic elsewhere) is still usable data.
pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, ControllerState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    cfg: MonitorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A monitor made before the operator's and the read credential gets them now.
    credentials::ensure(&cfg.dir)
        .with_context(|| format!("making the monitor's credentials in {}", cfg.dir.display()))?;
    let (shared, leadership) = match &cfg.store {
        config::StoreConfig::File => {
            let store = store::FileStore::lock(&cfg.dir).with_context(|| {
                format!("opening the controller store in {}", cfg.dir.display())
            })?;
            let st = ControllerState::open(Box::new(store), now_ms()).with_context(|| {
                format!("opening the controller store in {}", cfg.dir.display())
            })?;
            let shared: Shared = Arc::new(Mutex::new(st));
            lock(&shared).credentials = credentials::MonitorCredentials::load(&cfg.dir);
            lock(&shared).pipeline();
            // The desired state is read before anything is served or reconciled.
            if let Some(dir) = &cfg.formations_dir {
                reload_desired(&shared, dir, &cfg.dir);
            }
            (shared, Arc::new(leader::Leadership::sole()))
        }
        #[cfg(feature = "etcd")]
        config::StoreConfig::Etcd(settings) => start_etcd_campaign(&cfg, settings)?,
        #[cfg(not(feature = "etcd"))]
        config::StoreConfig::Etcd(_) => anyhow::bail!(
            "{}: this monitor keeps its state in etcd, and this pgha was built without the `etcd` feature",
            MonitorConfig::path(&cfg.dir).display()
        ),
    };
    let _watcher = cfg.formations_dir.as_ref().map(|dir| {
        spawn_desired_loop(
            shared.clone(),
            leadership.clone(),
            dir.clone(),
            cfg.dir.clone(),
        )
    });
    let tls = cfg.server_tls()?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, url = %cfg.url(), "controller started");
    if tls.is_none() {
        tracing::warn!(
            "the API is plain HTTP (created with --no-ssl): credentials and reports cross the network unencrypted"
        );
    }

    let reconciler = tokio::spawn(reconcile_loop(shared.clone(), leadership.clone()));
    let prober = tokio::spawn(probe::probe_loop(shared.clone(), leadership.clone()));
    let app = http::router(shared.clone(), cfg.clone(), leadership);
    raise_open_files_limit(MAX_API_CONNECTIONS as u64 + 1024);
    pgha_api::server::serve(listener, app, api_limits(), tls, shutdown).await;
    reconciler.abort();
    prober.abort();
    Ok(())
}

/// Connections the API keeps at once. Every agent holds one open (it reports each
/// second over a kept connection), so this bounds the nodes one controller serves; the
/// default of 256 of the agents' own health servers cut a fleet at 256 nodes, which
/// `pgha-scale` found.
pub const MAX_API_CONNECTIONS: usize = 8192;

/// What clients of the API may hold (see `pgha_api::server`).
pub fn api_limits() -> pgha_api::server::Limits {
    pgha_api::server::Limits {
        max_connections: MAX_API_CONNECTIONS,
        // A quarter: one flooding host leaves the rest to agents and operators (the
        // scale bench runs 1,000 agents from one address).
        max_per_source: MAX_API_CONNECTIONS / 4,
        header_read_timeout: Duration::from_secs(5),
        // A report or an action is read and answered within this; a trickled body is
        // cut (hyper has no body deadline of its own).
        request_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// Raises the soft limit of open files toward `want` (at most the hard limit): every
/// connection is a descriptor, and the usual soft limit is 1024.
fn raise_open_files_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < want
    {
        let new = want.min(hard);
        if setrlimit(Resource::RLIMIT_NOFILE, new, hard).is_err() || new < want {
            tracing::warn!(
                soft = new,
                "open files limited to {new} (hard limit): fewer agents than {MAX_API_CONNECTIONS} can stay connected; raise LimitNOFILE"
            );
        }
    }
}

/// Opens the etcd store as a follower and starts contending for leadership; on winning,
/// the state is loaded afresh from etcd (another controller may have led meanwhile)
/// and the formation files applied, before this controller answers as leader.
#[cfg(feature = "etcd")]
fn start_etcd_campaign(
    cfg: &MonitorConfig,
    settings: &config::EtcdSettings,
) -> anyhow::Result<(Shared, Arc<leader::Leadership>)> {
    use store::etcd::{Campaign, Etcd, EtcdStore};
    let etcd = Etcd::connect(settings).context("opening the controller store")?;
    let leadership = Arc::new(leader::Leadership::follower());
    let st = ControllerState::open(
        Box::new(EtcdStore::new(etcd.clone(), leadership.clone())),
        now_ms(),
    )
    .context("opening the controller store in etcd")?;
    let shared: Shared = Arc::new(Mutex::new(st));
    // A follower checks credentials too (its /metrics is read with the read token).
    lock(&shared).credentials = credentials::MonitorCredentials::load(&cfg.dir);
    let on_elected = {
        let (shared, etcd, leadership) = (shared.clone(), etcd.clone(), leadership.clone());
        let (dir, formations_dir) = (cfg.dir.clone(), cfg.formations_dir.clone());
        let own_url = cfg.own_url();
        move || -> anyhow::Result<()> {
            let store = EtcdStore::new(etcd.clone(), leadership.clone());
            let mut st = ControllerState::open(Box::new(store), now_ms())?;
            st.credentials = credentials::MonitorCredentials::load(&dir);
            st.leader_url = Some(own_url.clone());
            // A follower's state stays inline: it writes nothing (its store refuses).
            st.pipeline();
            *lock(&shared) = st;
            if let Some(d) = &formations_dir {
                reload_desired(&shared, d, &dir);
            }
            Ok(())
        }
    };
    tokio::spawn(
        Campaign {
            etcd,
            leadership: leadership.clone(),
            own_url: cfg.own_url(),
            lease_ttl_s: settings.lease_ttl_s,
            on_elected: Arc::new(on_elected),
        }
        .run(),
    );
    Ok((shared, leadership))
}

/// Reads the formations directory and applies it (secrets from the monitor's secrets
/// directory).
fn reload_desired(shared: &Shared, dir: &std::path::Path, monitor_dir: &std::path::Path) {
    let secrets = config::secrets_dir(monitor_dir);
    let scan = state::off_async_workers(|| desired::scan(dir, Some(&secrets)));
    if let Err(e) = lock(shared).apply_desired(scan, now_ms()) {
        tracing::error!("applying formation files failed: {e}");
    }
}

/// Reloads formation files on change (the directory is watched: Git replaces files by
/// rename), on SIGHUP, and every [`desired::RESYNC`] as a safety net; the monitor's
/// credentials with them.
fn spawn_desired_loop(
    shared: Shared,
    leadership: Arc<leader::Leadership>,
    dir: std::path::PathBuf,
    monitor_dir: std::path::PathBuf,
) -> Option<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let watcher = match desired::watch(&dir, tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot watch formation files ({e}); relying on SIGHUP and periodic resync");
            None
        }
    };
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).ok();
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = rx.recv() => {
                    // Let a burst of events (write, rename) settle.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = hup_recv => tracing::info!("SIGHUP: reloading formation files"),
                _ = tokio::time::sleep(desired::RESYNC) => {}
            }
            // Only the leader applies formation files (a follower's state is replaced
            // when it wins, and the files applied then).
            if leadership.is_leader(now_ms()) {
                reload_desired(&shared, &dir, &monitor_dir);
            }
            // Rotated credentials take effect with the formation files.
            let creds =
                state::off_async_workers(|| credentials::MonitorCredentials::load(&monitor_dir));
            lock(&shared).credentials = creds;
        }
    });
    watcher
}

/// The safety net: every formation is re-planned periodically, so timers (failure
/// timeouts, leases) fire without waiting for a report.
async fn reconcile_loop(shared: Shared, leadership: Arc<leader::Leadership>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let ticket = {
            let mut st = lock(&shared);
            // Checked under the lock: a newly elected state is swapped in under it too.
            if !leadership.is_leader(now_ms()) {
                continue;
            }
            let names: Vec<String> = st.durable.formations.keys().cloned().collect();
            for f in names {
                let span = tracing::info_span!("reconcile", formation = %f);
                let _entered = span.enter();
                if let Err(e) = st.reconcile(&f, now_ms()) {
                    tracing::error!("reconcile failed: {e}");
                }
                st.take_scheduled_backups(&f, now_ms());
                if let Err(e) = st.take_scheduled_restarts(&f, now_ms()) {
                    tracing::error!("scheduled restarts: {e}");
                }
            }
            st.ticket(None)
        };
        // What the tick decided is stored now, not at the next answer that needs it
        // (events, and changes nobody asks about soon).
        if let Some(t) = ticket
            && let Err(e) = t.settle(&shared).await
        {
            tracing::error!("storing the reconcile loop's changes failed: {e}");
        }
    }
}
