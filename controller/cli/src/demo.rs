//! `pgha demo`: a local formation on loopback doing real work (pg_auto_failover's
//! `do tmux session`, without tmux): a monitor and two nodes as separate processes,
//! a table written through the multi-host URI, `show state`, a switchover, and the
//! rows counted again on the new primary.

use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct DemoArgs {
    /// Where the demo keeps its monitor and nodes (default: a new directory in /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Monitor port; the nodes use the next two ports.
    #[arg(long, default_value_t = 5540)]
    base_port: u16,
    /// Rows written before the switchover.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Leave the formation running at the end (prints how to stop it).
    #[arg(long)]
    keep: bool,
}

struct Procs {
    children: Vec<(String, Child)>,
    pgdatas: Vec<PathBuf>,
    keep: bool,
}

impl Drop for Procs {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for (name, c) in &mut self.children {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
            eprintln!("stopped {name}");
        }
        for pgdata in &self.pgdatas {
            if let Ok(cfg) = pgha_agent::AgentConfig::load(pgdata) {
                let _ = Command::new(cfg.bin("pg_ctl"))
                    .args(["stop", "-D"])
                    .arg(pgdata)
                    .args(["-m", "fast", "-s"])
                    .uid_if_root(&cfg)
                    .status();
            }
        }
    }
}

trait UidIfRoot {
    fn uid_if_root(&mut self, cfg: &pgha_agent::AgentConfig) -> &mut Self;
}

impl UidIfRoot for Command {
    fn uid_if_root(&mut self, cfg: &pgha_agent::AgentConfig) -> &mut Self {
        use std::os::unix::process::CommandExt;
        if let Ok(Some(r)) = pgha_agent::postgres::bin::run_as(cfg) {
            self.uid(r.uid).gid(r.gid);
        }
        self
    }
}

fn pgha(args: &[&str]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let status = Command::new(&exe).args(args).status()?;
    if !status.success() {
        bail!("pgha {} failed", args.join(" "));
    }
    Ok(())
}

fn spawn(procs: &mut Procs, name: &str, args: &[&str], log: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let out = std::fs::File::create(log)?;
    let child = Command::new(exe)
        .args(args)
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    eprintln!(
        "started {name} (pid {}), log: {}",
        child.id(),
        log.display()
    );
    procs.children.push((name.to_string(), child));
    Ok(())
}

fn show_state(monitor: &str) -> anyhow::Result<()> {
    println!();
    pgha(&["show", "state", "--monitor", monitor])?;
    println!();
    Ok(())
}

async fn wait_for_states(
    client: &pgha_api::client::MonitorClient,
    want: &[pgha_api::NodeState],
    timeout: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        if let Ok(st) = client.state(pgha_api::DEFAULT_FORMATION).await {
            let line: Vec<String> = st
                .nodes
                .iter()
                .map(|n| format!("{} {}", n.name, n.reported_state))
                .collect();
            let line = line.join(", ");
            if line != last {
                eprintln!("  {:>5.1}s  {line}", t0.elapsed().as_secs_f64());
                last = line;
            }
            let mut have: Vec<_> = st
                .nodes
                .iter()
                .filter(|n| n.reported_state == n.assigned_state)
                .map(|n| n.reported_state)
                .collect();
            have.sort();
            let mut want = want.to_vec();
            want.sort();
            if have == want {
                return Ok(());
            }
        }
        if t0.elapsed() > timeout {
            bail!("formation did not reach {want:?} within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn app_client(uri: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut cfg: tokio_postgres::Config = uri.parse().context("parsing the formation URI")?;
    if cfg.get_user().is_none() {
        cfg.user("postgres");
    }
    cfg.connect_timeout(Duration::from_secs(2));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let dir = match a.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("pgha-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    // Postgres runs as an unprivileged user when we are root: it must reach its files.
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut procs = Procs {
        children: vec![],
        pgdatas: vec![],
        keep: a.keep,
    };
    let mon_dir = dir.join("monitor");
    println!("== 1. the monitor");
    let join_url = start_monitor(&dir, &mon_dir, a.base_port, &mut procs).await?;
    // The same URL is the operator's (as the tutorial's MONITOR): reads need a
    // credential since the API has scopes.
    let monitor = join_url.clone();
    println!("== 2. nodes A and B");
    start_nodes(&dir, &join_url, a.base_port, &mut procs).await?;
    show_state(&monitor)?;
    println!("== 3. write through the formation URI");
    let uri = write_rows(&monitor, a.rows).await?;
    println!("== 4. switchover");
    switch_over(&mon_dir, &monitor, &uri, a.rows).await?;
    println!("\n== recent events");
    pgha(&["show", "events", "--monitor", &monitor, "--count", "12"])?;
    if a.keep {
        println!(
            "\nthe formation keeps running in {}; stop the processes listed above (kill PID) and \
             then pg_ctl stop -D {}/node_a and node_b",
            dir.display(),
            dir.display()
        );
    } else {
        println!(
            "\ndemo done; stopping the formation (data stays in {})",
            dir.display()
        );
    }
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Creates the monitor in `mon_dir`, starts it and waits until it answers; returns the
/// URL nodes join with (it carries the formation's join secret).
async fn start_monitor(
    dir: &Path,
    mon_dir: &Path,
    base_port: u16,
    procs: &mut Procs,
) -> anyhow::Result<String> {
    let listen = format!("127.0.0.1:{base_port}");
    pgha(&[
        "create",
        "monitor",
        "--dir",
        &s(mon_dir),
        "--hostname",
        "127.0.0.1",
        "--listen",
        &listen,
    ])?;
    // https, the monitor's CA pinned by its fingerprint.
    let monitor = pgha_controller::MonitorConfig::load(mon_dir)?.url();
    spawn(
        procs,
        "monitor",
        &["run", "--dir", &s(mon_dir)],
        &dir.join("monitor.log"),
    )?;
    let client = pgha_api::client::MonitorClient::new(&monitor, Duration::from_secs(2))?;
    let t0 = Instant::now();
    // /healthz needs no credential (/v1/info needs the read one, which nodes do not use).
    while !matches!(client.get_text("/healthz").await, Ok((200, _))) {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!(
                "monitor did not start; see {}",
                dir.join("monitor.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = Command::new(std::env::current_exe()?)
        .args([
            "show",
            "uri",
            "--formation",
            "monitor",
            "--dir",
            &s(mon_dir),
        ])
        .output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Creates and starts node_a, then node_b, each waited for in its state.
async fn start_nodes(
    dir: &Path,
    join_url: &str,
    base_port: u16,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    let client = pgha_api::client::MonitorClient::new(join_url, Duration::from_secs(2))?;
    let mut want = vec![];
    for (i, name) in ["node_a", "node_b"].iter().enumerate() {
        let pgdata = dir.join(name);
        let port = (base_port + 1 + i as u16).to_string();
        let http_port = (base_port + 11 + i as u16).to_string();
        pgha(&[
            "create",
            "postgres",
            "--pgdata",
            &s(&pgdata),
            "--pgport",
            &port,
            "--hostname",
            "127.0.0.1",
            "--dbname",
            "appdb",
            "--monitor",
            join_url,
            "--name",
            name,
            "--auth",
            "trust",
            "--no-ssl",
            "--http-port",
            &http_port,
        ])?;
        procs.pgdatas.push(pgdata.clone());
        spawn(
            procs,
            name,
            &["run", "--pgdata", &s(&pgdata)],
            &dir.join(format!("{name}.log")),
        )?;
        want.push(if i == 0 {
            pgha_api::NodeState::Single
        } else {
            pgha_api::NodeState::Secondary
        });
        if i == 1 {
            want[0] = pgha_api::NodeState::Primary;
        }
        wait_for_states(&client, &want, Duration::from_secs(120)).await?;
    }
    Ok(())
}

/// Creates table foo with `rows` rows through the formation URI; returns the URI.
async fn write_rows(monitor: &str, rows: u64) -> anyhow::Result<String> {
    let out = Command::new(std::env::current_exe()?)
        .args([
            "show",
            "uri",
            "--formation",
            "default",
            "--monitor",
            monitor,
        ])
        .output()?;
    let uri = String::from_utf8(out.stdout)?.trim().to_string();
    println!("APP_DB_URI={uri}");
    let db = app_client(&uri).await?;
    let t = Instant::now();
    db.batch_execute(&format!(
        "SET client_min_messages = warning; DROP TABLE IF EXISTS foo; CREATE TABLE foo AS SELECT generate_series(1, {rows}) bar"
    ))
    .await?;
    println!(
        "created table foo with {rows} rows in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    Ok(uri)
}

/// A switchover, then the rows counted on the new primary through the same URI.
async fn switch_over(mon_dir: &Path, monitor: &str, uri: &str, rows: u64) -> anyhow::Result<()> {
    pgha(&["perform", "switchover", "--dir", &s(mon_dir)])?;
    show_state(monitor)?;
    let db = app_client(uri).await?;
    let row = db
        .query_one("SELECT count(*), inet_server_port() FROM foo", &[])
        .await?;
    let (count, port): (i64, Option<i32>) = (row.get(0), row.get(1));
    println!(
        "SELECT count(*) FROM foo on the new primary (port {}): {count}",
        port.unwrap_or(0)
    );
    if count as u64 != rows {
        bail!("expected {rows} rows after the switchover, found {count}");
    }
    Ok(())
}
