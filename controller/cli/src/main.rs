//! `pgha`: the one binary. Creates and runs the monitor (controller) and nodes (agents),
//! reads state, and performs operations, with the verbs of pg_auto_failover's tutorial.

mod backup;
mod create;
mod demo;
mod formation;
mod migrate;
mod nodes;
mod perform;
mod show;
mod table;
mod time;

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
    Perform(perform::PerformCmd),
    /// Take a node out of service (`maintenance`).
    #[command(subcommand)]
    Enable(nodes::MaintenanceCmd),
    /// Bring a node back from maintenance.
    #[command(subcommand)]
    Disable(nodes::MaintenanceCmd),
    /// Remove a node from its formation (Postgres stopped, PGDATA kept).
    #[command(subcommand)]
    Drop(nodes::DropCmd),
    /// Pause a formation: nothing is assigned or failed over; every node keeps its role.
    Pause(nodes::PauseArgs),
    /// Resume a paused formation (a healthy primary stays primary).
    Resume(nodes::PauseArgs),
    /// Rebuild a standby from a fresh base backup (its data is moved aside, not deleted):
    /// for a standby whose data is damaged, which pg_rewind cannot repair.
    Reinit(nodes::NodeArgs),
    /// Restart a node's Postgres (a standby, or a lone primary; switch a primary with
    /// standbys over first). Settings from the formation file restart by themselves.
    Restart(nodes::RestartArgs),
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

/// Waits until `done` holds for the formation, printing state changes.
pub async fn wait_formation(
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
            Cmd::Perform(p) => perform::run(p).await,
            Cmd::Demo(a) => demo::run(a).await,
            Cmd::Migrate(a) => migrate::run(a).await,
            Cmd::Formation(f) => formation::run(f).await,
            Cmd::Enable(nodes::MaintenanceCmd::Maintenance(a)) => nodes::maintenance(a, true).await,
            Cmd::Disable(nodes::MaintenanceCmd::Maintenance(a)) => {
                nodes::maintenance(a, false).await
            }
            Cmd::Drop(nodes::DropCmd::Node(a)) => nodes::drop_node(a).await,
            Cmd::Pause(a) => nodes::set_paused(a, true).await,
            Cmd::Reinit(a) => nodes::reinit(a).await,
            Cmd::Restart(a) => nodes::restart(a).await,
            Cmd::Backup(a) => backup::backup(a).await,
            Cmd::Resume(a) => nodes::set_paused(a, false).await,
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
