//! pgBackRest on this node: its configuration file (rendered from the formation's
//! `backup` section and this node's paths), the archive and restore commands Postgres
//! runs, the stanza, backup jobs that run in the background while the agent loop goes
//! on, and the repository's list of backups.
//!
//! Every node gets the same archive command and `archive_mode = on`: Postgres runs it
//! only while the node is primary, so a promoted standby archives from its first
//! segment on the new timeline (and its history file) without a restart.

use crate::config::AgentConfig;
use crate::files::write_if_changed;
use crate::os_user::RunAs;
use crate::postgres::bin::{self as pg, PgError};
use pgha_api::{BackupInfo, BackupJob, BackupKind, BackupRequest, BackupSettings, JobState};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Where Debian's package installs pgBackRest.
pub const PGBACKREST: &str = "/usr/bin/pgbackrest";

/// How often a primary reads the repository's list of backups while nothing changes.
const INFO_EVERY: Duration = Duration::from_secs(300);
/// A stanza that could not be created is tried again after this long.
const STANZA_RETRY: Duration = Duration::from_secs(30);

pub fn conf_path(cfg: &AgentConfig) -> PathBuf {
    cfg.state_dir().join("pgbackrest.conf")
}

/// A word for `/bin/sh` (Postgres runs `archive_command` through the shell).
fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `pgbackrest --config=… --stanza=… COMMAND`, for Postgres' shell.
fn command_line(cfg: &AgentConfig, s: &BackupSettings, command: &str) -> String {
    format!(
        "{PGBACKREST} --config={} --stanza={} {command}",
        shell_word(&conf_path(cfg).display().to_string()),
        shell_word(&s.stanza),
    )
}

pub fn archive_command(cfg: &AgentConfig, s: &BackupSettings) -> String {
    command_line(cfg, s, "archive-push %p")
}

pub fn restore_command(cfg: &AgentConfig, s: &BackupSettings) -> String {
    command_line(cfg, s, "archive-get %f \"%p\"")
}

/// The last error `archive-push` printed, for the report while archiving fails
/// (pg_stat_archiver says only that it failed): pgBackRest's errors (`ERROR: [041]:
/// …`) land in the Postgres log, as the archive command's stderr.
pub fn last_archive_error(cfg: &AgentConfig) -> Option<String> {
    // Only the tail: the log grows for as long as Postgres runs.
    last_pgbackrest_error(&log_tail(cfg, 64 * 1024)?)
}

fn last_pgbackrest_error(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().rposition(|l| l.contains("ERROR: ["))?;
    let (_, first) = lines[at].split_once("ERROR: [")?;
    let mut msg = format!("[{}", first.trim());
    // pgBackRest continues a message on indented lines (one per repository…).
    for more in lines[at + 1..]
        .iter()
        .take_while(|l| l.starts_with(' '))
        .take(3)
    {
        msg.push(' ');
        msg.push_str(more.trim());
    }
    Some(msg)
}

/// `pgbackrest.conf` for this node.
/// pgBackRest credentials from the agent's own environment (`PGBACKREST_REPO1_S3_KEY`,
/// `PGBACKREST_REPO1_CIPHER_PASS`…, as a systemd unit's `Environment=` or
/// `EnvironmentFile=` gives them): (option name, value). Only credentials, which a
/// formation file may not hold; the other options come from the file.
pub fn env_credentials() -> Vec<(String, String)> {
    credentials_from(std::env::vars())
}

fn credentials_from(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .filter_map(|(k, v)| {
            let name = k
                .strip_prefix("PGBACKREST_")?
                .to_ascii_lowercase()
                .replace('_', "-");
            let credential = pgha_api::backup::is_credential_option(&name)
                && name.starts_with("repo1-")
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !v.chars().any(|c| c.is_control());
            credential.then_some((name, v))
        })
        .collect();
    out.sort();
    out
}

/// `pgbackrest.conf` of this node. `credentials` (from [`env_credentials`]) go into
/// `[global]`: pgBackRest runs from `archive_command` in Postgres's cleared
/// environment, where the agent's variables never reach it, so the file (0600, the
/// Postgres user's, beside PGDATA) carries them.
pub fn render_conf(
    cfg: &AgentConfig,
    s: &BackupSettings,
    credentials: &[(String, String)],
) -> String {
    let state = cfg.state_dir();
    let mut out = String::from(
        "# Written by the pgha agent from the formation file's backup section; rewritten\n\
         # when it changes. Do not edit: change the formation file.\n[global]\n",
    );
    let mut set = |k: &str, v: &str| out.push_str(&format!("{k}={v}\n"));
    set("repo1-path", &s.repository);
    set("repo1-retention-full", &s.retention_full.to_string());
    set(
        "log-path",
        &state.join("pgbackrest-log").display().to_string(),
    );
    set(
        "lock-path",
        &state.join("pgbackrest-lock").display().to_string(),
    );
    set("log-level-console", "warn");
    set("log-level-file", "info");
    set("start-fast", "y");
    for (k, v) in &s.options {
        // Checked by the controller too: a managed name would route around pgha.
        match pgha_api::backup::check_option(k, v) {
            Ok(()) => set(k, v),
            Err(e) => tracing::error!("backup option skipped: {e}"),
        }
    }
    if !credentials.is_empty() {
        out.push_str("# From the agent's environment (PGBACKREST_*): credentials.\n");
        for (k, v) in credentials {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out.push_str(&format!("\n[{}]\n", s.stanza));
    out.push_str(&format!("pg1-path={}\n", cfg.pgdata.display()));
    out.push_str(&format!("pg1-port={}\n", cfg.pgport));
    out.push_str(&format!("pg1-socket-path={}\n", state.display()));
    out.push_str(&format!("pg1-user={}\n", cfg.username));
    out
}

/// Writes `pgbackrest.conf` and its directories; true when the file changed.
pub fn write_conf(
    cfg: &AgentConfig,
    s: &BackupSettings,
    who: Option<RunAs>,
) -> Result<bool, PgError> {
    s.check().map_err(PgError::Refused)?;
    let state = cfg.state_dir();
    for d in ["pgbackrest-log", "pgbackrest-lock"] {
        crate::files::prepare_dir(&state.join(d), who)?;
    }
    Ok(write_if_changed(
        &conf_path(cfg),
        &render_conf(cfg, s, &env_credentials()),
        who,
    )?)
}

/// Runs `pgbackrest COMMAND ARGS…` for the formation's stanza as the Postgres OS user.
pub async fn pgbackrest(
    cfg: &AgentConfig,
    s: &BackupSettings,
    command: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, PgError> {
    pgbackrest_on(cfg, &s.stanza, command, args, timeout).await
}

/// [`pgbackrest`] for any stanza of the repository.
async fn pgbackrest_on(
    cfg: &AgentConfig,
    stanza: &str,
    command: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, PgError> {
    if !Path::new(PGBACKREST).exists() {
        return Err(PgError::MissingBinary {
            bin: "pgbackrest".into(),
            dir: "/usr/bin (install the pgbackrest package on every node)".into(),
        });
    }
    let config = format!("--config={}", conf_path(cfg).display());
    let stanza = format!("--stanza={stanza}");
    let mut all = vec![config.as_str(), stanza.as_str()];
    all.extend_from_slice(args);
    all.push(command);
    pg::run_program(cfg, Path::new(PGBACKREST), "pgbackrest", &all, timeout).await
}

/// The version of this node's pgBackRest (`pgbackrest version`), reported so that the
/// controller can refuse a backup section for a major it does not back up; None
/// without one.
pub fn pgbackrest_version() -> Option<String> {
    let out = std::process::Command::new(PGBACKREST)
        .arg("version")
        .output()
        .ok()?;
    pgha_api::backup::parse_pgbackrest_version(&String::from_utf8_lossy(&out.stdout))
}

/// Present from a point-in-time restore until its promotion is finished.
pub fn pitr_marker(cfg: &AgentConfig) -> PathBuf {
    cfg.state_dir().join("point-in-time-recovery")
}

/// Postgres' last start ended because its point-in-time recovery ran out of archive
/// before the target (from the tail of the Postgres log).
pub fn recovery_short_of_target(cfg: &AgentConfig) -> bool {
    const SHORT: &str = "recovery ended before configured recovery target was reached";
    let Some(tail) = log_tail(cfg, 8 * 1024) else {
        return false;
    };
    let last_start = tail.rfind("starting PostgreSQL").unwrap_or(0);
    tail[last_start..].contains(SHORT)
}

/// The last `bytes` of the Postgres log.
fn log_tail(cfg: &AgentConfig, bytes: u64) -> Option<String> {
    let tail = crate::files::read_tail(&cfg.log_file(), bytes).ok()??;
    Some(String::from_utf8_lossy(&tail).into_owned())
}

/// What a restore builds.
#[derive(Debug, Clone, Copy)]
pub enum RestoreTarget<'a> {
    /// A standby of the formation: the latest backup, then WAL from the archive and
    /// streaming (`standby.signal`).
    Standby,
    /// A new primary: recovery up to `target_time` (or the end of the archive), then
    /// promotion (`recovery.signal`).
    PointInTime { target_time: Option<&'a str> },
}

/// Restores the latest backup of `stanza` into `into` (an empty directory).
pub async fn restore(
    cfg: &AgentConfig,
    stanza: &str,
    into: &Path,
    target: RestoreTarget<'_>,
) -> Result<(), PgError> {
    let path = format!("--pg1-path={}", into.display());
    let mut args = vec![path.as_str(), "--target-timeline=latest"];
    let time;
    match target {
        RestoreTarget::Standby => args.push("--type=standby"),
        RestoreTarget::PointInTime { target_time: None } => args.push("--type=default"),
        RestoreTarget::PointInTime {
            target_time: Some(t),
        } => {
            time = format!("--target={t}");
            args.extend(["--type=time", &time, "--target-action=promote"]);
        }
    }
    pgbackrest_on(
        cfg,
        stanza,
        "restore",
        &args,
        Duration::from_secs(24 * 3600),
    )
    .await
    .map(|_| ())
}

/// The comment pgBackRest writes above its recovery settings in postgresql.auto.conf.
const RESTORE_MARK: &str = "# Recovery settings generated by pgBackRest restore";

/// Removes the recovery settings a restore wrote into postgresql.auto.conf (its
/// `restore_command` names the stanza it restored from, and a `recovery_target_*` left
/// there would stop this node's recovery the next time it is a standby): pgha's own
/// settings take over. True when something was removed.
pub fn strip_recovery_settings(pgdata: &Path, who: Option<RunAs>) -> Result<bool, PgError> {
    let auto = pgdata.join("postgresql.auto.conf");
    let Some(text) = crate::files::read_nofollow(&auto)? else {
        return Ok(false);
    };
    let kept = without_recovery_settings(&text);
    if kept == text {
        return Ok(false);
    }
    Ok(write_if_changed(&auto, &kept, who)?)
}

fn without_recovery_settings(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if line.starts_with(RESTORE_MARK)
            || key == "restore_command"
            || key.starts_with("recovery_target")
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The backups of `pgbackrest info --output=json`, oldest first.
pub fn parse_info(json: &str) -> Result<Vec<BackupInfo>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("pgbackrest info: {e}"))?;
    let mut out = vec![];
    for stanza in v.as_array().into_iter().flatten() {
        for b in stanza["backup"].as_array().into_iter().flatten() {
            let kind = match b["type"].as_str().unwrap_or("") {
                "full" => BackupKind::Full,
                "diff" => BackupKind::Diff,
                "incr" => BackupKind::Incr,
                other => return Err(format!("pgbackrest info: unknown backup type {other:?}")),
            };
            let u = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
            let s = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
            out.push(BackupInfo {
                label: s(&b["label"]),
                kind,
                started: u(&b["timestamp"]["start"]),
                stopped: u(&b["timestamp"]["stop"]),
                database_bytes: u(&b["info"]["size"]),
                repo_bytes: u(&b["info"]["repository"]["delta"]),
                wal_start: s(&b["archive"]["start"]),
                wal_stop: s(&b["archive"]["stop"]),
            });
        }
    }
    Ok(out)
}

/// A pgBackRest run in the background: the agent loop polls it each tick.
struct Running<T> {
    started: Instant,
    task: JoinHandle<Result<T, String>>,
}

impl<T: Send + 'static> Running<T> {
    fn spawn(f: impl std::future::Future<Output = Result<T, String>> + Send + 'static) -> Self {
        Running {
            started: Instant::now(),
            task: tokio::spawn(f),
        }
    }

    /// The result once the run ended.
    async fn poll(&mut self) -> Option<Result<T, String>> {
        if !self.task.is_finished() {
            return None;
        }
        Some(match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(format!("the task ended abnormally: {e}")),
        })
    }
}

/// What this node does with pgBackRest, between ticks.
#[derive(Default)]
pub struct Backups {
    /// The settings `pgbackrest.conf` was written for.
    written: Option<BackupSettings>,
    /// The settings whose stanza exists, and when creating it last failed.
    stanza_for: Option<BackupSettings>,
    stanza_failed_at: Option<Instant>,
    stanza_error: Option<String>,
    stanza: Option<Running<()>>,
    job: Option<(BackupRequest, Running<()>)>,
    /// The last job, as reported.
    pub last_job: Option<BackupJob>,
    /// A job that ended, reported as ended only once the repository was read after it:
    /// the controller's schedule must never see a backup done and a list without it (it
    /// would ask for the same backup again).
    ended: Option<(BackupRequest, Duration, Result<(), String>, Instant)>,
    info: Option<Running<Vec<BackupInfo>>>,
    info_read_at: Option<Instant>,
    /// The repository's backups as last read (reported until read again).
    pub backups: Option<Vec<BackupInfo>>,
}

/// What the agent loop tells [`Backups::tick`] about this node now.
pub struct Now<'a> {
    pub settings: Option<&'a BackupSettings>,
    pub request: Option<BackupRequest>,
    /// The last request this node carried out (persisted in the agent's state).
    pub done_id: u64,
    /// Postgres runs here as a primary that reached its assigned state.
    pub is_primary: bool,
}

impl Backups {
    /// Keeps the configuration written, the stanza created, the asked backup running,
    /// and the list of backups fresh. Returns the request id to record as done, when a
    /// request was taken up (started, or refused here).
    pub async fn tick(
        &mut self,
        cfg: &AgentConfig,
        who: Option<RunAs>,
        now: Now<'_>,
    ) -> Option<u64> {
        let Some(s) = now.settings else {
            self.written = None;
            return None;
        };
        if self.written.as_ref() != Some(s) {
            match write_conf(cfg, s, who) {
                Ok(_) => self.written = Some(s.clone()),
                Err(e) => {
                    tracing::error!("writing pgbackrest.conf: {e}");
                    return None;
                }
            }
        }
        self.poll_runs(s).await;
        if !now.is_primary {
            // No repository reading here any more: the end is said as it is.
            if let Some((req, took, res, _)) = self.ended.take() {
                self.end_job(req, took, res);
            }
            return self.refuse_request(&now);
        }
        self.ensure_stanza(cfg, s);
        let mut taken = None;
        let stanza_ready = self.stanza_for.as_ref() == Some(s);
        // A request waits while the stanza is being created (a node just promoted).
        let stanza_pending = !stanza_ready && self.stanza_error.is_none();
        if let Some(req) = now.request.filter(|r| r.id > now.done_id)
            && self.job.is_none()
            && self.ended.is_none()
            && !stanza_pending
        {
            taken = Some(req.id);
            if !stanza_ready {
                let why = format!(
                    "the stanza could not be created (is the repository reachable and writable by the Postgres OS user?): {}",
                    self.stanza_error.as_deref().unwrap_or("")
                );
                self.end_job(req, Duration::ZERO, Err(why));
            } else {
                tracing::info!(id = req.id, kind = %req.kind, "backup started");
                let (cfg2, s2) = (cfg.clone(), s.clone());
                let kind = format!("--type={}", req.kind);
                self.job = Some((
                    req,
                    Running::spawn(async move {
                        pgbackrest(
                            &cfg2,
                            &s2,
                            "backup",
                            &[&kind],
                            Duration::from_secs(24 * 3600),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                    }),
                ));
                self.last_job = Some(BackupJob {
                    id: req.id,
                    kind: req.kind,
                    state: JobState::Running,
                    elapsed_ms: 0,
                    message: None,
                });
            }
        }
        if let Some((req, run)) = &self.job
            && let Some(j) = &mut self.last_job
            && j.id == req.id
        {
            j.elapsed_ms = run.started.elapsed().as_millis() as u64;
        }
        let due =
            self.ended.is_some() || self.info_read_at.is_none_or(|t| t.elapsed() >= INFO_EVERY);
        if due && self.info.is_none() && self.stanza_for.as_ref() == Some(s) {
            let (cfg2, s2) = (cfg.clone(), s.clone());
            self.info = Some(Running::spawn(async move {
                let out = pgbackrest(
                    &cfg2,
                    &s2,
                    "info",
                    &["--output=json"],
                    Duration::from_secs(60),
                )
                .await
                .map_err(|e| e.to_string())?;
                parse_info(&out)
            }));
        }
        taken
    }

    /// A standby asked for a backup (the primary changed since): said, not run.
    fn refuse_request(&mut self, now: &Now<'_>) -> Option<u64> {
        let req = now.request.filter(|r| r.id > now.done_id)?;
        if self.job.is_some() {
            return None;
        }
        self.end_job(
            req,
            Duration::ZERO,
            Err("this node is not the primary (any more): ask again".into()),
        );
        Some(req.id)
    }

    fn ensure_stanza(&mut self, cfg: &AgentConfig, s: &BackupSettings) {
        if self.stanza_for.as_ref() == Some(s) || self.stanza.is_some() {
            return;
        }
        if self
            .stanza_failed_at
            .is_some_and(|t| t.elapsed() < STANZA_RETRY)
        {
            return;
        }
        let (cfg2, s2) = (cfg.clone(), s.clone());
        self.stanza = Some(Running::spawn(async move {
            pgbackrest(&cfg2, &s2, "stanza-create", &[], Duration::from_secs(120))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }));
    }

    async fn poll_runs(&mut self, s: &BackupSettings) {
        if let Some(run) = &mut self.stanza
            && let Some(res) = run.poll().await
        {
            self.stanza = None;
            match res {
                Ok(()) => {
                    tracing::info!(stanza = %s.stanza, "pgBackRest stanza ready");
                    self.stanza_for = Some(s.clone());
                    self.stanza_failed_at = None;
                    self.stanza_error = None;
                    self.info_read_at = None;
                }
                Err(e) => {
                    tracing::error!(stanza = %s.stanza, "pgbackrest stanza-create failed: {e}");
                    self.stanza_failed_at = Some(Instant::now());
                    self.stanza_error = Some(e);
                }
            }
        }
        if let Some((req, run)) = &mut self.job
            && let Some(res) = run.poll().await
        {
            let (req, took) = (*req, run.started.elapsed());
            self.job = None;
            if res.is_ok() {
                tracing::info!(
                    id = req.id,
                    "backup finished; reading the repository before saying so"
                );
                self.ended = Some((req, took, res, Instant::now()));
            } else {
                self.end_job(req, took, res);
            }
            self.info_read_at = None;
        }
        if let Some(run) = &mut self.info
            && let Some(res) = run.poll().await
        {
            let started = run.started;
            self.info = None;
            self.info_read_at = Some(Instant::now());
            match res {
                Ok(list) => self.backups = Some(list),
                Err(e) => tracing::warn!("pgbackrest info failed: {e}"),
            }
            // A reading begun before the job ended may not list it.
            if self.ended.as_ref().is_some_and(|e| started >= e.3)
                && let Some((req, took, res, _)) = self.ended.take()
            {
                self.end_job(req, took, res);
            }
        }
    }

    fn end_job(&mut self, req: BackupRequest, took: Duration, res: Result<(), String>) {
        match &res {
            Ok(()) => {
                tracing::info!(id = req.id, kind = %req.kind, secs = took.as_secs_f64(), "backup done")
            }
            Err(e) => tracing::error!(id = req.id, kind = %req.kind, "backup failed: {e}"),
        }
        self.last_job = Some(BackupJob {
            id: req.id,
            kind: req.kind,
            state: if res.is_ok() {
                JobState::Succeeded
            } else {
                JobState::Failed
            },
            elapsed_ms: took.as_millis() as u64,
            message: res.err(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The second review: `archive_command` ran pgBackRest in a cleared environment, so
    /// credentials given to the agent (`PGBACKREST_REPO1_S3_KEY`…) never reached it.
    /// They are written into the node's 0600 pgbackrest.conf; nothing else is taken
    /// from the environment.
    #[test]
    fn credentials_come_from_the_agents_environment_into_the_conf() {
        let vars = [
            ("PGBACKREST_REPO1_S3_KEY", "AKIA123"),
            ("PGBACKREST_REPO1_S3_KEY_SECRET", "s3cr3t"),
            ("PGBACKREST_REPO1_CIPHER_PASS", "passphrase"),
            ("PGBACKREST_REPO1_PATH", "/elsewhere"),
            ("PGBACKREST_CMD_SSH", "/tmp/evil"),
            ("PGBACKREST_REPO1_S3_TOKEN", "bad\nrepo1-path=/x"),
            ("HOME", "/root"),
        ];
        let creds = credentials_from(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(
            creds,
            vec![
                ("repo1-cipher-pass".to_string(), "passphrase".to_string()),
                ("repo1-s3-key".to_string(), "AKIA123".to_string()),
                ("repo1-s3-key-secret".to_string(), "s3cr3t".to_string()),
            ]
        );
        let s = BackupSettings {
            stanza: "orders".into(),
            repository: "/srv/b".into(),
            retention_full: 2,
            options: Default::default(),
        };
        let c = render_conf(&crate::postgres::conf::tests::cfg(), &s, &creds);
        let global = c.split("\n[orders]").next().unwrap();
        assert!(global.contains("repo1-s3-key-secret=s3cr3t"), "{c}");
        assert!(!c.contains("/elsewhere") && !c.contains("evil"), "{c}");
    }

    /// The agent checks the pgBackRest options again: a command or an SSH host never
    /// reaches `pgbackrest.conf`.
    #[test]
    fn options_that_run_commands_never_reach_pgbackrest_conf() {
        let cfg = crate::postgres::conf::tests::cfg();
        let s = BackupSettings {
            stanza: "orders".into(),
            repository: "/srv/b".into(),
            retention_full: 2,
            options: [
                ("cmd-ssh", "/tmp/evil"),
                ("repo1-host-cmd", "/tmp/evil"),
                ("repo1-host", "evil.example"),
                ("repo1-storage-verify-tls", "n"),
                ("compress-type", "zst"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let c = render_conf(&cfg, &s, &[]);
        for bad in ["cmd-ssh", "repo1-host", "verify-tls", "evil"] {
            assert!(!c.contains(bad), "{bad} reached the file:\n{c}");
        }
        assert!(c.contains("compress-type=zst"), "{c}");
    }

    #[test]
    fn finds_the_last_pgbackrest_error_in_the_postgres_log() {
        let log = "2026-12-03 LOG:  checkpoint starting\n\
                   ERROR: [041]: unable to open file '/repo/x': [13] Permission denied\n\
                   2026-12-03 ERROR:  relation \"t\" does not exist\n\
                   2026-12-03 LOG:  archive command failed with exit code 41\n";
        assert_eq!(
            last_pgbackrest_error(log).as_deref(),
            Some("[041]: unable to open file '/repo/x': [13] Permission denied")
        );
        assert_eq!(last_pgbackrest_error("LOG: fine\n"), None);
        let multi = "ERROR: [103]: unable to find a valid repository:\n       repo1: [PathOpenError] unable to list\n2026 LOG: x\n";
        assert_eq!(
            last_pgbackrest_error(multi).as_deref(),
            Some("[103]: unable to find a valid repository: repo1: [PathOpenError] unable to list")
        );
    }

    #[test]
    fn a_restores_recovery_settings_are_removed_and_the_rest_kept() {
        let auto = "# Do not edit this file manually!\n\
                    work_mem = '8MB'\n\
                    \n\
                    # Recovery settings generated by pgBackRest restore on 2026-12-03 06:30:00\n\
                    restore_command = 'pgbackrest --stanza=default archive-get %f \"%p\"'\n\
                    recovery_target_time = '2026-12-03 06:20:00+00'\n\
                    recovery_target_action = 'promote'\n";
        let kept = without_recovery_settings(auto);
        assert_eq!(
            kept,
            "# Do not edit this file manually!\nwork_mem = '8MB'\n\n"
        );
        assert_eq!(without_recovery_settings(&kept), kept);
    }

    #[test]
    fn shell_words_survive_quotes_and_spaces() {
        assert_eq!(shell_word("/a b/c"), "'/a b/c'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn parses_the_backups_of_pgbackrest_info() {
        let json = r#"[{"name":"main","backup":[
            {"label":"20261203-101500F","type":"full",
             "timestamp":{"start":1764756900,"stop":1764756910},
             "info":{"size":30000000,"delta":30000000,"repository":{"size":4000000,"delta":4000000}},
             "archive":{"start":"000000010000000000000004","stop":"000000010000000000000004"}},
            {"label":"20261203-101500F_20261203-102000D","type":"diff",
             "timestamp":{"start":1764757200,"stop":1764757203},
             "info":{"size":30000000,"delta":100000,"repository":{"size":4000000,"delta":20000}},
             "archive":{"start":"000000020000000000000007","stop":"000000020000000000000007"}}],
            "status":{"code":0,"message":"ok"}}]"#;
        let list = parse_info(json).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].kind, BackupKind::Full);
        assert_eq!(list[0].stopped, 1764756910);
        assert_eq!(list[1].kind, BackupKind::Diff);
        assert_eq!(list[1].repo_bytes, 20000);
        assert_eq!(list[1].wal_start, "000000020000000000000007");
        assert!(parse_info("[]").unwrap().is_empty());
        assert!(parse_info("not json").is_err());
    }
}
