//! `pgha`: the one binary. Creates and runs the monitor (controller) and nodes (agents),
//! reads state, and performs operations, with the verbs of pg_auto_failover's tutorial.

mod backup;
mod create;
mod demo;
mod formation;
mod migrate;
mod show;
mod table;

use clap::{Args, Parser, Subcommand};
use pgha_api::client::MonitorClient;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "pgha", version, about = "PostgreSQL high availability for VMs")]
struct Cli {
    /// Log lines as text (for a terminal) or JSON (for a log pipeline).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PGHA_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a monitor or a Postgres node.
    #[command(subcommand)]
    Create(Box<create::CreateCmd>),
    /// Run the monitor (--dir) or a node's agent (--pgdata) in the foreground.
    Run(RunArgs),
    /// Read state: state, uri, events, history, topology, backups, formation, systemd,
    /// replication-password.
    #[command(subcommand)]
    Show(show::ShowCmd),
    /// Perform an operation on a formation.
    #[command(subcommand)]
    Perform(PerformCmd),
    /// Take a node out of service (`maintenance`).
    #[command(subcommand)]
    Enable(MaintenanceCmd),
    /// Bring a node back from maintenance.
    #[command(subcommand)]
    Disable(MaintenanceCmd),
    /// Remove a node from its formation (Postgres stopped, PGDATA kept).
    #[command(subcommand)]
    Drop(DropCmd),
    /// Pause a formation: nothing is assigned or failed over; every node keeps its role.
    Pause(PauseArgs),
    /// Resume a paused formation (a healthy primary stays primary).
    Resume(PauseArgs),
    /// Rebuild a standby from a fresh base backup (its data is moved aside, not deleted):
    /// for a standby whose data is damaged, which pg_rewind cannot repair.
    Reinit(NodeArgs),
    /// Restart a node's Postgres (a standby, or a lone primary; switch a primary with
    /// standbys over first). Settings from the formation file restart by themselves.
    Restart(RestartArgs),
    /// Take a backup with pgBackRest on the primary (the formation file's backup
    /// section says where), and follow it to the end.
    Backup(backup::BackupArgs),
    /// Formation files: validate, diff against the monitor.
    #[command(subcommand)]
    Formation(formation::FormationCmd),
    /// Move a stopped monitor's state from its directory into etcd (then more
    /// controllers can join it with `create monitor --store etcd --copy-from`).
    Migrate(migrate::MigrateArgs),
    /// Run a local formation on loopback doing real work: monitor, two nodes, writes,
    /// state, a switchover.
    Demo(demo::DemoArgs),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RunArgs {
    /// The monitor's directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The node's PGDATA.
    #[arg(long)]
    pgdata: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PerformCmd {
    /// Planned switchover: the primary hands over to its best secondary. Waits until done.
    Switchover(SwitchoverArgs),
    /// Planned switchover to a chosen node. Waits until done.
    Promotion(PromotionArgs),
    /// Force a failover that the data-loss guard blocks (the primary and quorum
    /// standbys that may hold its last commits are gone). Waits until a primary runs.
    Failover(FailoverArgs),
}

#[derive(Args)]
struct FailoverArgs {
    /// Required: you accept that commits the failed nodes acknowledged may be lost, and
    /// you checked that the nodes that do not report are down (not merely cut off from
    /// the monitor), since pgha cannot ask them.
    #[arg(long)]
    allow_data_loss: bool,
    /// Why (recorded in the formation's events).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    switchover: SwitchoverArgs,
}

#[derive(Subcommand)]
enum MaintenanceCmd {
    /// A node's maintenance (a primary hands over first: needs --allow-failover).
    Maintenance(MaintenanceArgs),
}

#[derive(Subcommand)]
enum DropCmd {
    /// Drain and drop a node.
    Node(NodeArgs),
}

#[derive(Args)]
struct RestartArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Restart at this UTC time (e.g. "2026-12-03 22:00") instead of now; the command
    /// returns at once and `show state` says when.
    #[arg(long, value_parser = show::parse_utc)]
    scheduled: Option<u64>,
}

#[derive(Args)]
struct MaintenanceArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Allow maintenance of the primary: it hands over to a candidate first (without
    /// it, maintenance of the primary is refused).
    #[arg(long)]
    allow_failover: bool,
}

#[derive(Args)]
struct NodeArgs {
    /// The node, by the name `show state` lists.
    #[arg(long)]
    name: String,
    /// The node's formation.
    #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
    formation: String,
    #[command(flatten)]
    monitor: MonitorArgs,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// Waits until `done` holds for the formation, printing state changes.
async fn wait_formation(
    client: &MonitorClient,
    formation: &str,
    timeout: u64,
    done: impl Fn(&pgha_api::FormationStatus) -> bool,
) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(st) = client.state(formation).await {
            let line: Vec<String> = st
                .nodes
                .iter()
                .map(|n| format!("{}: {}/{}", n.name, n.reported_state, n.assigned_state))
                .collect();
            let line = line.join(", ");
            if line != last {
                eprintln!("{:>6.1}s  {line}", t0.elapsed().as_secs_f64());
                last = line;
            }
            if done(&st) {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(timeout) {
                anyhow::bail!("not done within {timeout} s; {}", st.summary);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn maintenance(m: MaintenanceArgs, enable: bool) -> anyhow::Result<()> {
    use pgha_api::NodeState;
    let a = m.node;
    let client = a.monitor.operator_client()?;
    let name = a.name.clone();
    if enable {
        client
            .enable_maintenance(&a.formation, &a.name, m.allow_failover)
            .await?;
        wait_formation(&client, &a.formation, a.timeout, |st| {
            st.nodes.iter().any(|n| {
                n.name == name
                    && n.assigned_state == NodeState::Maintenance
                    && n.reported_state == NodeState::Maintenance
            })
        })
        .await?;
        eprintln!("{name} is in maintenance");
    } else {
        client.disable_maintenance(&a.formation, &a.name).await?;
        wait_formation(&client, &a.formation, a.timeout, |st| {
            st.nodes.iter().any(|n| {
                n.name == name
                    && n.assigned_state == NodeState::Secondary
                    && n.reported_state == NodeState::Secondary
            })
        })
        .await?;
        eprintln!("{name} is back as a secondary");
    }
    Ok(())
}

#[derive(Args)]
struct PauseArgs {
    #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
    formation: String,
    #[command(flatten)]
    monitor: MonitorArgs,
}

async fn set_paused(a: PauseArgs, on: bool) -> anyhow::Result<()> {
    let client = a.monitor.operator_client()?;
    let v = client.set_paused(&a.formation, on).await?;
    let paused = v["paused"].as_bool().unwrap_or(on);
    match (on, paused) {
        (true, _) => eprintln!(
            "formation {:?} paused: nothing is assigned or failed over until `pgha resume`",
            a.formation
        ),
        (false, false) => eprintln!("formation {:?} resumed", a.formation),
        (false, true) => anyhow::bail!(
            "formation {:?} stays paused: its file says `paused: true`",
            a.formation
        ),
    }
    Ok(())
}

async fn reinit(a: NodeArgs) -> anyhow::Result<()> {
    let client = a.monitor.operator_client()?;
    client.reinit(&a.formation, &a.name).await?;
    eprintln!(
        "{} moves its data aside and takes a fresh base backup",
        a.name
    );
    let name = a.name.clone();
    wait_formation(&client, &a.formation, a.timeout, |st| {
        // Done: the agent carried out the rebuild (it reports the epoch once its data
        // is moved aside) and its new Postgres is up, healthy, in its assigned state.
        st.nodes.iter().any(|n| {
            n.name == name
                && !n.rebuilding
                && n.pg_running
                && n.health == pgha_api::Health::Good
                && n.reported_state == n.assigned_state
                && n.assigned_state.is_standby()
        })
    })
    .await?;
    eprintln!("{name} rebuilt and back as a standby");
    Ok(())
}

async fn restart(r: RestartArgs) -> anyhow::Result<()> {
    let a = r.node;
    let client = a.monitor.operator_client()?;
    client.restart(&a.formation, &a.name, r.scheduled).await?;
    if let Some(at) = r.scheduled {
        eprintln!(
            "{} restarts its Postgres at {} UTC (pgha show state says so until then)",
            a.name,
            show::format_time(at).trim_end_matches(".000")
        );
        return Ok(());
    }
    eprintln!("{} restarts its Postgres", a.name);
    let name = a.name.clone();
    wait_formation(&client, &a.formation, a.timeout, |st| {
        st.nodes.iter().any(|n| {
            n.name == name
                && !n.restarting
                && n.pg_running
                && n.health == pgha_api::Health::Good
                && n.reported_state == n.assigned_state
        })
    })
    .await?;
    eprintln!("{name} restarted");
    Ok(())
}

async fn drop_node(a: NodeArgs) -> anyhow::Result<()> {
    let client = a.monitor.operator_client()?;
    client.drop_node(&a.formation, &a.name).await?;
    let name = a.name.clone();
    wait_formation(&client, &a.formation, a.timeout, |st| {
        !st.nodes.iter().any(|n| n.name == name)
    })
    .await?;
    eprintln!("{name} left the formation (its PGDATA stays on its VM)");
    Ok(())
}

#[derive(Args)]
struct PromotionArgs {
    /// The node to promote.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    switchover: SwitchoverArgs,
}

/// Where to find the monitor: `--monitor`, `PGHA_MONITOR`, or the config beside
/// `--pgdata`/`--dir`.
#[derive(Args, Clone, Default)]
pub struct MonitorArgs {
    /// Monitor URL, e.g. http://monitor:5440, or @FILE to read it from a file (a URL
    /// with the join secret then stays out of `ps`; PGHA_MONITOR works too).
    #[arg(long, env = "PGHA_MONITOR")]
    pub monitor: Option<String>,
    /// A node's PGDATA (its config names the monitor).
    #[arg(long)]
    pub pgdata: Option<PathBuf>,
    /// The monitor's directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl MonitorArgs {
    /// The monitor's URL with the credential this command presents: as given
    /// (`--monitor`, `PGHA_MONITOR`), the node's own (`--pgdata`: reads of its
    /// formation), or the operator's (`--dir`, on the monitor VM).
    pub fn url(&self) -> anyhow::Result<String> {
        if let Some(m) = &self.monitor {
            return Ok(m.clone());
        }
        if let Some(p) = &self.pgdata {
            let cfg = pgha_agent::AgentConfig::load(p)?;
            return Ok(match &cfg.node_token {
                Some(t) => with_credential(&cfg.monitor, "node", t),
                None => cfg.monitor,
            });
        }
        if let Some(d) = &self.dir {
            return operator_url(d);
        }
        anyhow::bail!(
            "where is the monitor? pass --monitor URL, set PGHA_MONITOR, or pass --pgdata/--dir"
        )
    }

    pub fn client(&self) -> anyhow::Result<MonitorClient> {
        Ok(MonitorClient::new(&self.url()?, Duration::from_secs(5))?)
    }

    /// A client for operator actions, which need the operator's credential: carried by
    /// `--monitor`/`PGHA_MONITOR` (the URL `pgha show uri --dir` prints) or read on the
    /// monitor VM (`--dir`). A node's config does not carry it.
    pub fn operator_client(&self) -> anyhow::Result<MonitorClient> {
        if self.monitor.is_none() && self.dir.is_none() {
            anyhow::bail!(
                "operator actions need the operator's credential: pass --monitor with the URL `pgha show uri --dir <monitor dir>` prints, or --dir on the monitor VM"
            );
        }
        self.client()
    }
}

/// `url` presenting `secret` (as its user info; the client sends it as a bearer token).
pub fn with_credential(url: &str, user: &str, secret: &str) -> String {
    url.replacen("://", &format!("://{user}:{secret}@"), 1)
}

/// The monitor's URL with the operator's credential, read on the monitor VM.
pub fn operator_url(dir: &std::path::Path) -> anyhow::Result<String> {
    let cfg = pgha_controller::MonitorConfig::load(dir)?;
    let token =
        pgha_controller::credentials::read_token(dir, pgha_controller::credentials::OPERATOR)?;
    Ok(with_credential(&cfg.url(), "operator", &token))
}

#[derive(Args)]
struct SwitchoverArgs {
    #[command(flatten)]
    monitor: MonitorArgs,
    #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
    formation: String,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PGHA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        // Span fields (formation, node) ride on every line of a reconcile or agent tick.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.dir {
        let cfg = pgha_controller::MonitorConfig::load(&dir)?;
        pgha_controller::run(cfg, shutdown_signal()).await
    } else if let Some(pgdata) = args.pgdata {
        let cfg = pgha_agent::AgentConfig::load(&pgdata)?;
        agent_exit(pgha_agent::run(cfg, shutdown_signal()).await?)
    } else {
        anyhow::bail!("pass --dir (monitor) or --pgdata (node)")
    }
}

/// A dropped node's agent exits with its own status, so systemd does not restart it.
pub fn agent_exit(e: pgha_agent::Exit) -> anyhow::Result<()> {
    if e == pgha_agent::Exit::Dropped {
        std::process::exit(i32::from(pgha_agent::EXIT_DROPPED));
    }
    Ok(())
}

/// Waits for a switchover to finish, printing each state change.
async fn switchover(args: SwitchoverArgs, target: Option<&str>) -> anyhow::Result<()> {
    let client = args.monitor.operator_client()?;
    let t0 = std::time::Instant::now();
    // A standby still replaying a burst of writes (or a formation still settling) is a
    // passing refusal: wait for it, within the timeout, rather than fail at once.
    let mut said = String::new();
    let started = loop {
        match client.switchover(&args.formation, target).await {
            Ok(s) => break s,
            Err(e)
                if e.code() == Some(pgha_api::routes::ErrorCode::SwitchoverRefused)
                    && t0.elapsed() < Duration::from_secs(args.timeout.min(30))
                    && (e.to_string().contains("caught-up")
                        || e.to_string().contains("no stable primary")) =>
            {
                if said != e.to_string() {
                    eprintln!("waiting: {e}");
                    said = e.to_string();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    eprintln!(
        "switchover started (term {}): node {} -> node {}",
        started.term, started.from_node, started.to_node
    );
    let stable = |st: &pgha_api::FormationStatus, id, s| {
        st.nodes
            .iter()
            .any(|n| n.node_id == id && n.reported_state == s && n.assigned_state == s)
    };
    let remaining = args.timeout.saturating_sub(t0.elapsed().as_secs());
    wait_formation(&client, &args.formation, remaining, |st| {
        stable(st, started.to_node, pgha_api::NodeState::Primary)
            && stable(st, started.from_node, pgha_api::NodeState::Secondary)
    })
    .await
    .map_err(|e| anyhow::anyhow!("switchover: {e}"))?;
    eprintln!(
        "switchover done in {:.1}s: node {} is primary, node {} is secondary",
        t0.elapsed().as_secs_f64(),
        started.to_node,
        started.from_node
    );
    Ok(())
}

/// Forces a failover the data-loss guard blocks, then waits until a primary runs.
async fn forced_failover(a: FailoverArgs) -> anyhow::Result<()> {
    if !a.allow_data_loss {
        anyhow::bail!(
            "pgha fails over by itself whenever no acknowledged commit can be lost; \
             forcing one that may lose commits needs --allow-data-loss --reason TEXT"
        );
    }
    let reason = match a.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => anyhow::bail!("--reason TEXT is required: it is recorded in the events"),
    };
    let args = a.switchover;
    let client = args.monitor.operator_client()?;
    let t0 = std::time::Instant::now();
    let started = client
        .forced_failover(
            &args.formation,
            &pgha_api::ForcedFailoverRequest {
                allow_data_loss: true,
                reason,
            },
        )
        .await?;
    match started.to_node {
        Some(n) => eprintln!(
            "failover forced (term {}): promoting node {n}",
            started.term
        ),
        None => eprintln!(
            "failover forced (term {}): the promotion in progress goes on without the data-loss guard",
            started.term
        ),
    }
    wait_formation(&client, &args.formation, args.timeout, |st| {
        st.nodes
            .iter()
            .any(|n| n.assigned_state.is_writable() && n.reported_state == n.assigned_state)
    })
    .await
    .map_err(|e| anyhow::anyhow!("failover: {e}"))?;
    eprintln!(
        "failover done in {:.1}s (recorded in pgha show events)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let logs = matches!(cli.cmd, Cmd::Run(_) | Cmd::Create(_) | Cmd::Demo(_));
    if logs {
        init_logging(cli.log_format);
    }
    let res = rt.block_on(async move {
        match cli.cmd {
            Cmd::Create(c) => create::run(*c).await,
            Cmd::Run(a) => run(a).await,
            Cmd::Show(s) => show::run(s).await,
            Cmd::Perform(PerformCmd::Switchover(a)) => switchover(a, None).await,
            Cmd::Perform(PerformCmd::Promotion(a)) => switchover(a.switchover, Some(&a.name)).await,
            Cmd::Perform(PerformCmd::Failover(a)) => forced_failover(a).await,
            Cmd::Demo(a) => demo::run(a).await,
            Cmd::Migrate(a) => migrate::run(a).await,
            Cmd::Formation(f) => formation::run(f).await,
            Cmd::Enable(MaintenanceCmd::Maintenance(a)) => maintenance(a, true).await,
            Cmd::Disable(MaintenanceCmd::Maintenance(a)) => maintenance(a, false).await,
            Cmd::Drop(DropCmd::Node(a)) => drop_node(a).await,
            Cmd::Pause(a) => set_paused(a, true).await,
            Cmd::Reinit(a) => reinit(a).await,
            Cmd::Restart(a) => restart(a).await,
            Cmd::Backup(a) => backup::backup(a).await,
            Cmd::Resume(a) => set_paused(a, false).await,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
