//! One wrapper per Postgres binary (initdb, pg_ctl, pg_basebackup, pg_rewind,
//! pg_controldata): explicit environment, privilege drop to the Postgres OS user when
//! the agent runs as root, stderr captured into the error.

use crate::config::{AgentConfig, AuthMethod};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{bin} not found in {dir}: is --pg-bin-dir right?")]
    MissingBinary { bin: String, dir: String },
    #[error("{bin} failed ({status}): {stderr}")]
    Failed {
        bin: String,
        status: String,
        stderr: String,
    },
    #[error("{bin} did not finish within {secs} s")]
    Timeout { bin: String, secs: u64 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("OS user {0:?} does not exist (install the postgresql package or pass another user)")]
    NoSuchUser(String),
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// What the controller assigned cannot be applied as it is.
    #[error("refused from the assignment: {0}")]
    Refused(String),
}

pub use crate::os_user::RunAs;

/// Resolves the unprivileged OS user when running as root; None when not root.
pub fn run_as(cfg: &AgentConfig) -> Result<Option<RunAs>, PgError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = cfg
        .os_user
        .clone()
        .unwrap_or_else(|| "postgres".to_string());
    let user = nix::unistd::User::from_name(&name)
        .ok()
        .flatten()
        .ok_or(PgError::NoSuchUser(name))?;
    Ok(Some(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

/// Runs a Postgres binary to completion and returns its stdout.
pub async fn run(
    cfg: &AgentConfig,
    bin: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, PgError> {
    let path = cfg.bin(bin);
    if !path.exists() {
        return Err(PgError::MissingBinary {
            bin: bin.to_string(),
            dir: cfg.pg_bin_dir.display().to_string(),
        });
    }
    run_program(cfg, &path, bin, args, timeout).await
}

/// Runs a program as the Postgres OS user (as [`run`] does a Postgres binary).
pub async fn run_program(
    cfg: &AgentConfig,
    path: &Path,
    bin: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, PgError> {
    let who = run_as(cfg)?;
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGPASSFILE", cfg.passfile())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(r) = who {
        cmd.uid(r.uid).gid(r.gid);
    }
    // pg_ctl start leaves the postmaster running in its own session: it must survive the
    // agent (restarts of the agent do not restart Postgres).
    cmd.process_group(0);
    tracing::debug!(bin, ?args, "running");
    let child = cmd.spawn().map_err(|source| PgError::Io {
        what: format!("starting {}", path.display()),
        source,
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            return Err(PgError::Timeout {
                bin: bin.to_string(),
                secs: timeout.as_secs(),
            });
        }
        Ok(r) => r.map_err(|source| PgError::Io {
            what: format!("waiting for {bin}"),
            source,
        })?,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let stderr = if stderr.is_empty() {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        } else {
            stderr.to_string()
        };
        return Err(PgError::Failed {
            bin: bin.to_string(),
            status: out.status.to_string(),
            stderr: last_lines(&stderr, 3),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// `pg_controldata` fields the agent uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlData {
    pub state: String,
    pub timeline: Option<u32>,
    pub checkpoint_lsn: Option<pgha_api::Lsn>,
    pub system_identifier: Option<String>,
    /// Values of the settings a standby may not run below the primary's (recorded from
    /// the primary's WAL): setting name -> value.
    pub hot_standby_floors: std::collections::BTreeMap<String, i64>,
}

/// Settings a hot standby must run at least as high as its primary, with the
/// `pg_controldata` line that records the primary's value.
pub const HOT_STANDBY_SETTINGS: [(&str, &str); 5] = [
    ("max_connections", "max_connections setting"),
    ("max_worker_processes", "max_worker_processes setting"),
    ("max_wal_senders", "max_wal_senders setting"),
    ("max_prepared_transactions", "max_prepared_xacts setting"),
    ("max_locks_per_transaction", "max_locks_per_xact setting"),
];

impl ControlData {
    /// The cluster was last a primary (crashed or cleanly shut down), not a standby.
    pub fn was_primary(&self) -> bool {
        matches!(
            self.state.as_str(),
            "in production" | "shut down" | "in crash recovery"
        )
    }
}

pub fn parse_controldata(out: &str) -> ControlData {
    let mut c = ControlData::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "Database cluster state" => c.state = v.to_string(),
            "Latest checkpoint's TimeLineID" => c.timeline = v.parse().ok(),
            "Latest checkpoint location" => c.checkpoint_lsn = v.parse().ok(),
            "Database system identifier" => c.system_identifier = Some(v.to_string()),
            k => {
                if let Some((name, _)) = HOT_STANDBY_SETTINGS.iter().find(|(_, line)| *line == k)
                    && let Ok(n) = v.parse()
                {
                    c.hot_standby_floors.insert(name.to_string(), n);
                }
            }
        }
    }
    c
}

pub async fn controldata(cfg: &AgentConfig) -> Result<ControlData, PgError> {
    let pgdata = cfg.pgdata.display().to_string();
    let out = run(cfg, "pg_controldata", &[&pgdata], Duration::from_secs(10)).await?;
    Ok(parse_controldata(&out))
}

pub async fn initdb(cfg: &AgentConfig) -> Result<(), PgError> {
    let pgdata = cfg.pgdata.display().to_string();
    let auth_host = format!("--auth-host={}", cfg.auth.hba_name());
    let user = format!("--username={}", cfg.username);
    run(
        cfg,
        "initdb",
        &[
            "-D",
            &pgdata,
            &user,
            "--auth-local=trust",
            &auth_host,
            "--encoding=UTF8",
            "--data-checksums",
        ],
        Duration::from_secs(120),
    )
    .await
    .map(|_| ())
}

/// Starts Postgres without waiting; readiness is read from postmaster.pid afterwards.
pub async fn start(cfg: &AgentConfig) -> Result<(), PgError> {
    let pgdata = cfg.pgdata.display().to_string();
    let log = cfg.log_file().display().to_string();
    run(
        cfg,
        "pg_ctl",
        &["start", "-D", &pgdata, "-l", &log, "-W", "-s"],
        Duration::from_secs(30),
    )
    .await
    .map(|_| ())
}

/// Stops Postgres at once (`-m immediate`): the fence when the lease ran out, where no
/// standby is streaming that a clean shutdown could hand the last WAL to.
pub async fn stop_immediate(cfg: &AgentConfig) -> Result<(), PgError> {
    stop_unresponsive(cfg).await
}

/// How long `pg_ctl stop -m immediate` may take before the processes are killed.
const IMMEDIATE_STOP_TIMEOUT_S: u32 = 3;

/// Stops a postmaster that does not answer: immediately, and when even that does not end
/// it (a stopped or hung postmaster does not act on signals it cannot take), SIGKILL of
/// the postmaster and every process it started. Its open sessions (backends, WAL
/// senders) would otherwise go on committing and sending after the node was written
/// off: this is what fences a hung primary. A process stuck in the kernel (an NFS or
/// disk hang) dies only when it returns from there; nothing in user space can do more.
pub async fn stop_unresponsive(cfg: &AgentConfig) -> Result<(), PgError> {
    let pgdata = cfg.pgdata.display().to_string();
    let t = IMMEDIATE_STOP_TIMEOUT_S.to_string();
    let immediate = run(
        cfg,
        "pg_ctl",
        &[
            "stop",
            "-D",
            &pgdata,
            "-m",
            "immediate",
            "-w",
            "-t",
            &t,
            "-s",
        ],
        Duration::from_secs(u64::from(IMMEDIATE_STOP_TIMEOUT_S) + 2),
    )
    .await;
    let Err(e) = immediate else { return Ok(()) };
    let Some(pm) = crate::observe::postmaster_pid(&cfg.pgdata) else {
        return Err(e);
    };
    let victims = crate::observe::postgres_processes(pm);
    tracing::warn!(
        postmaster = pm,
        processes = victims.len(),
        "immediate shutdown did not end Postgres ({e}): killing the postmaster and its processes"
    );
    for pid in &victims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Gone within a moment unless stuck in the kernel.
    for _ in 0..50 {
        if victims.iter().all(|p| !crate::observe::process_alive(*p)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(e)
}

/// Stops Postgres: fast first (clean shutdown that replicates the final WAL), then
/// immediate if fast does not finish in time.
pub async fn stop(cfg: &AgentConfig) -> Result<(), PgError> {
    let pgdata = cfg.pgdata.display().to_string();
    let fast = run(
        cfg,
        "pg_ctl",
        &["stop", "-D", &pgdata, "-m", "fast", "-w", "-t", "15", "-s"],
        Duration::from_secs(20),
    )
    .await;
    match fast {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!("fast shutdown failed ({e}); stopping immediately");
            stop_unresponsive(cfg).await
        }
    }
}

/// One libpq conninfo value, single-quoted with `\\` and `'` escaped: a host or path with
/// a space or `=` stays one value and cannot add a keyword of its own.
pub fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `primary_conninfo` of a standby formation's leader: every node of the source, a
/// standby of it preferred (libpq's `target_session_attrs=prefer-standby`): a standby of
/// the source holds no WAL its failover could lose, so the leader never has to be
/// rewound after one. Its application name is not a `pgha_standby_<id>` one, so the
/// source never counts it as a synchronous standby nor as renewing its lease.
pub fn source_conninfo(cfg: &AgentConfig, hosts: &[(String, u16)]) -> String {
    let list =
        |f: &dyn Fn(&(String, u16)) -> String| hosts.iter().map(f).collect::<Vec<_>>().join(",");
    format!(
        "{} target_session_attrs=prefer-standby",
        conninfo_multi(
            cfg,
            &list(&|h| h.0.clone()),
            &list(&|h| h.1.to_string()),
            "postgres",
            &source_application_name(cfg),
        )
    )
}

fn conninfo(cfg: &AgentConfig, host: &str, port: u16, dbname: &str, app: &str) -> String {
    conninfo_multi(cfg, host, &port.to_string(), dbname, app)
}

/// `port`: numbers and commas only (made from u16s here), so it needs no quotes.
fn conninfo_multi(cfg: &AgentConfig, host: &str, port: &str, dbname: &str, app: &str) -> String {
    let q = conninfo_value;
    format!(
        "host={} port={port} user={} dbname={} application_name={} connect_timeout=5 passfile={}{}",
        q(host),
        q(pgha_api::REPLICATION_USER),
        q(dbname),
        q(app),
        q(&cfg.passfile().display().to_string()),
        link_security(cfg)
    )
}

/// What a replication link (streaming, pg_rewind, a remote checkpoint) asks of the
/// server it reaches. With SSL on (`--ssl-self-signed`): TLS or nothing
/// (`sslmode=require`), and with scram-sha-256 the server must prove it holds the
/// password's verifier for this very TLS channel (`channel_binding=require`): a man in
/// the middle can neither read the stream nor ask for the password in clear (libpq 15
/// sends it when a server asks). The nodes' certificates are self-signed, one per node,
/// so there is no CA to check them against (`verify-full`): channel binding is what
/// authenticates the server. Without SSL, libpq's default (`prefer`) stands.
fn link_security(cfg: &AgentConfig) -> &'static str {
    match (cfg.ssl_self_signed, &cfg.auth) {
        (true, AuthMethod::ScramSha256) => " sslmode=require channel_binding=require",
        (true, _) => " sslmode=require",
        (false, _) => "",
    }
}

/// Writes the libpq password file for the replication role (0600, owned by Postgres).
pub fn write_passfile(cfg: &AgentConfig, who: Option<RunAs>) -> Result<(), PgError> {
    let path = cfg.passfile();
    let escaped = cfg
        .replication_password
        .replace('\\', "\\\\")
        .replace(':', "\\:");
    let line = format!("*:*:*:{}:{escaped}\n", pgha_api::REPLICATION_USER);
    if crate::files::read_nofollow(&path)?.as_deref() == Some(line.as_str()) {
        return Ok(());
    }
    crate::files::replace(&path, line.as_bytes(), 0o600, who)?;
    Ok(())
}

/// Fresh copy of the upstream into `target` (an empty directory owned by Postgres).
/// `from_source`: a standby formation's leader copying its source, through the slot the
/// file names there (if any), under its own application name (see [`source_conninfo`]);
/// otherwise a standby copying its upstream through its own slot there.
pub async fn basebackup(
    cfg: &AgentConfig,
    target: &Path,
    host: &str,
    port: u16,
    from_source: Option<Option<&str>>,
) -> Result<(), PgError> {
    let target = target.display().to_string();
    let (slot, app) = match from_source {
        Some(slot) => (slot.map(str::to_string), source_application_name(cfg)),
        None => (
            Some(pgha_api::replication_slot_name(cfg.node_id)),
            pgha_api::standby_application_name(cfg.node_id),
        ),
    };
    let port = port.to_string();
    let dbname = format!("application_name={app}");
    let mut args = vec![
        "-D",
        &target,
        "-h",
        host,
        "-p",
        &port,
        "-U",
        pgha_api::REPLICATION_USER,
        "-d",
        &dbname,
        "-X",
        "stream",
        "-c",
        "fast",
    ];
    if let Some(slot) = &slot {
        args.extend(["-S", slot]);
    }
    run(cfg, "pg_basebackup", &args, Duration::from_secs(3600))
        .await
        .map(|_| ())
}

/// A standby formation leader's application name on its source.
fn source_application_name(cfg: &AgentConfig) -> String {
    format!("pgha_dr_{}_{}", cfg.formation, cfg.node_id)
}

/// `CHECKPOINT` on another node, as the replication role (granted `pg_checkpoint`).
pub async fn checkpoint_remote(cfg: &AgentConfig, host: &str, port: u16) -> anyhow::Result<()> {
    // Through libpq (psql), as pg_rewind will connect: the same conninfo, the same TLS
    // and channel binding.
    let source = conninfo(cfg, host, port, "postgres", "pgha_rewind");
    run(
        cfg,
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &source,
            "-c",
            "CHECKPOINT",
        ],
        Duration::from_secs(60),
    )
    .await?;
    Ok(())
}

/// Rewinds a former primary onto the new primary's timeline.
pub async fn rewind(cfg: &AgentConfig, host: &str, port: u16) -> Result<(), PgError> {
    let pgdata = cfg.pgdata.display().to_string();
    let source = conninfo(cfg, host, port, "postgres", "pgha_rewind");
    let source = format!("--source-server={source}");
    let target = format!("--target-pgdata={pgdata}");
    run(
        cfg,
        "pg_rewind",
        &[&target, &source, "--progress"],
        Duration::from_secs(3600),
    )
    .await
    .map(|_| ())
}

/// The `primary_conninfo` a standby streams with.
pub fn primary_conninfo(cfg: &AgentConfig, host: &str, port: u16) -> String {
    conninfo(
        cfg,
        host,
        port,
        "postgres",
        &pgha_api::standby_application_name(cfg.node_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_are_quoted_and_escaped() {
        assert_eq!(conninfo_value("10.0.0.5"), "'10.0.0.5'");
        assert_eq!(
            conninfo_value("a b' sslmode=disable \\"),
            "'a b\\' sslmode=disable \\\\'"
        );
    }

    #[test]
    fn parses_pg_controldata_output() {
        let out = "pg_control version number:            1300\n\
                   Database system identifier:           7301234567890123456\n\
                   Database cluster state:               shut down in recovery\n\
                   Latest checkpoint location:           0/3000060\n\
                   Latest checkpoint's TimeLineID:       2\n";
        let c = parse_controldata(out);
        assert_eq!(c.state, "shut down in recovery");
        assert_eq!(c.timeline, Some(2));
        assert_eq!(c.checkpoint_lsn, Some("0/3000060".parse().unwrap()));
        assert_eq!(c.system_identifier.as_deref(), Some("7301234567890123456"));
        assert!(!c.was_primary());
        assert!(parse_controldata("Database cluster state: in production").was_primary());
    }
}
