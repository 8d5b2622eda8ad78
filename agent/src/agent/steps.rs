//! Carrying out one step of the plan on the local Postgres: each is idempotent (the
//! planner checked before it chose the step; the next tick observes again).

use super::{Agent, BASEBACKUP_RETRY, MAX_START_ATTEMPTS};
use crate::config::AgentConfig;
use crate::observe;
use crate::observe::Local;
use crate::os_user::RunAs;
use crate::plan;
use crate::plan::Step;
use crate::postgres::bin as pg;
use crate::postgres::{conf, sql};
use anyhow::Context;
use pgha_api::NodeState;
use std::time::Duration;
use std::time::Instant;

impl Agent {
    pub(super) async fn reload(&self) -> anyhow::Result<()> {
        let c = observe::local_client(&self.cfg).await?;
        sql::reload(&c).await
    }

    pub(super) async fn execute(&mut self, step: &Step, goal: NodeState) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        match step {
            Step::Reached | Step::Wait(_) => Ok(()),
            Step::Blocked(why) => anyhow::bail!("cannot reach {goal}: {why}"),
            Step::WrongMajor { data, binaries } => anyhow::bail!(
                "cannot reach {goal}: {} holds a PostgreSQL {data} cluster and {} holds PostgreSQL {binaries}: a data directory is never started with another major's binaries (point pg_bin_dir in {} at a PostgreSQL {data} install)",
                cfg.pgdata.display(),
                cfg.pg_bin_dir.display(),
                crate::config::AgentConfig::config_path(&cfg.pgdata).display()
            ),
            Step::NoInstallOf { wanted, binaries } => anyhow::bail!(
                "cannot reach {goal}: the formation runs PostgreSQL {wanted}, and this node has no install of it (the one in use, {}, is PostgreSQL {binaries}): install PostgreSQL {wanted} (e.g. the postgresql-{wanted} package, found under /usr/lib/postgresql/{wanted}/bin when the agent starts) or add its bin directory to pg_bin_dirs in {}",
                cfg.pg_bin_dir.display(),
                crate::config::AgentConfig::config_path(&cfg.pgdata).display()
            ),
            Step::Initdb => {
                prepare_dir(&cfg.pgdata, self.who)?;
                match cfg.restore_from.clone() {
                    Some(from) => {
                        // A restore that failed (no such stanza, repository unreachable)
                        // is tried again every 10 s, its error kept in the report.
                        if self
                            .retries
                            .restore_failed_at
                            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
                        {
                            return Ok(());
                        }
                        if let Err(e) = self.restore_point_in_time(&from).await {
                            self.retries.restore_failed_at = Some(Instant::now());
                            // Only what the failed restore wrote is there (this step
                            // runs on a PGDATA without PG_VERSION): the next try starts
                            // from an empty directory.
                            if let Err(rm) = std::fs::remove_dir_all(&self.cfg.pgdata) {
                                tracing::warn!("clearing {}: {rm}", self.cfg.pgdata.display());
                            }
                            return Err(e.context(format!(
                                "point-in-time recovery from formation {:?} (tried again in 10 s)",
                                from.stanza
                            )));
                        }
                        self.retries.restore_failed_at = None;
                    }
                    None => {
                        tracing::info!(pgdata = %cfg.pgdata.display(), "initdb");
                        pg::initdb(cfg).await?;
                    }
                }
                self.after_new_pgdata(goal).await
            }
            Step::BaseBackup => {
                // A copy that failed (the upstream refused it, or is not there yet) is
                // tried again after a pause, not at every pass.
                if self
                    .retries
                    .basebackup_failed_at
                    .is_some_and(|t| t.elapsed() < BASEBACKUP_RETRY)
                {
                    return Ok(());
                }
                let r = self.base_backup(goal).await;
                self.retries.basebackup_failed_at = r.is_err().then(Instant::now);
                r
            }
            Step::Rewind => {
                let up = self.upstream()?;
                let _ = std::fs::remove_file(cfg.pgdata.join("standby.signal"));
                tracing::info!(upstream = %format!("{}:{}", up.0, up.1), "pg_rewind");
                // pg_rewind reads the source's timeline from its control file, which a
                // freshly promoted node updates only at its next checkpoint.
                if let Err(e) = pg::checkpoint_remote(cfg, &up.0, up.1).await {
                    tracing::warn!("CHECKPOINT on the upstream failed ({e:#}); rewinding anyway");
                }
                if let Err(e) = pg::rewind(cfg, &up.0, up.1).await {
                    self.move_aside("rewind-failed", &e.to_string())?;
                    return Err(e.into());
                }
                self.retries.start_attempts = 0;
                self.after_new_pgdata(goal).await
            }
            Step::Start => {
                // A standby that cannot start (its data does not fit the upstream's
                // timeline) is rebuilt from a fresh base backup; a primary never is.
                if self.retries.start_attempts >= MAX_START_ATTEMPTS && goal.is_standby() {
                    self.retries.start_attempts = 0;
                    return self.move_aside(
                        "start-failed",
                        &format!(
                            "Postgres failed to start {MAX_START_ATTEMPTS} times as a standby"
                        ),
                    );
                }
                if self.point_in_time_recovery_waits() {
                    return Ok(());
                }
                self.retries.start_attempts += 1;
                self.apply_conf(goal)?;
                if goal.is_standby() {
                    self.install_slot_copies()?;
                }
                tracing::info!(attempt = self.retries.start_attempts, "starting Postgres");
                pg::start(&self.cfg).await?;
                Ok(())
            }
            Step::Stop if !goal.is_stopped() => {
                tracing::info!("restarting Postgres to apply settings pending a restart");
                pg::stop(cfg).await?;
                Ok(())
            }
            Step::Stop => {
                tracing::info!("stopping Postgres for {goal}");
                pg::stop(cfg).await?;
                Ok(())
            }
            Step::StopUnresponsive => {
                tracing::warn!("Postgres runs but does not answer: stopping it at once for {goal}");
                pg::stop_unresponsive(cfg).await?;
                Ok(())
            }
            Step::Promote => {
                tracing::info!("promoting");
                let c = observe::local_client(cfg).await?;
                sql::promote(&c).await
            }
            Step::SetupPrimary => self.setup_primary().await,
            Step::SyncNodeSlots => {
                let c = observe::local_client(&self.cfg).await?;
                sql::sync_node_slots(&c, &self.wanted(goal).slots).await
            }
            Step::SyncPermanentSlots(actions) => {
                let c = observe::local_client(&self.cfg).await?;
                let w = self.wanted(goal);
                for (name, action) in actions {
                    let Some(slot) = w.permanent_slots.iter().find(|s| &s.name == name) else {
                        continue;
                    };
                    let db = match &slot.logical {
                        Some(l) => Some(observe::local_client_to(&self.cfg, &l.database).await?),
                        None => None,
                    };
                    sql::permanent_slot_action(&c, slot, action, db.as_ref(), self.binaries_major)
                        .await?;
                }
                Ok(())
            }
            Step::RestartForSlotCopies(names) => {
                tracing::info!(
                    slots = %names.join(", "),
                    "restarting Postgres to load copies of the primary's logical slots"
                );
                self.retries.slot_copy_restart_at = Some(Instant::now());
                pg::stop(cfg).await?;
                Ok(())
            }
        }
    }

    /// A fresh copy of the upstream (or the source) into PGDATA, then a start.
    async fn base_backup(&mut self, goal: NodeState) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let up = self.upstream()?;
        let tmp = sibling(&cfg.pgdata, "basebackup-tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        prepare_dir(&tmp, self.who)?;
        if !self.restore_standby(&tmp).await? {
            tracing::info!(upstream = %format!("{}:{}", up.0, up.1), "pg_basebackup");
            let t0 = std::time::Instant::now();
            let source = self
                .state
                .assignment
                .as_ref()
                .filter(|a| a.goal.is_writable())
                .and_then(|a| a.standby_of.as_ref());
            let from_source = source.map(|s| s.slot.as_deref());
            pg::basebackup(cfg, &tmp, &up.0, up.1, from_source).await?;
            tracing::info!(
                secs = t0.elapsed().as_secs_f64(),
                "base backup copied from the upstream"
            );
        }
        if cfg.pgdata.exists() {
            // Only an empty directory can be here (initialized is false).
            std::fs::remove_dir(&cfg.pgdata).with_context(|| {
                format!(
                    "{} is not empty; refusing to replace it",
                    cfg.pgdata.display()
                )
            })?;
        }
        std::fs::rename(&tmp, &cfg.pgdata)
            .with_context(|| format!("moving the base backup to {}", cfg.pgdata.display()))?;
        self.after_new_pgdata(goal).await
    }

    /// The primary invalidated this node's slot (the WAL it needs is gone): a standby
    /// stops, moves PGDATA aside and takes a fresh base backup, once per epoch the
    /// controller sets. Returns true when it acted.
    pub(super) async fn rebuild_if_asked(&mut self, l: &Local) -> anyhow::Result<bool> {
        let Some(a) = &self.state.assignment else {
            return Ok(false);
        };
        let epoch = a.rebuild_epoch;
        match plan::rebuild(a.goal, epoch, self.state.rebuilt_epoch) {
            plan::Rebuild::No | plan::Rebuild::Later => return Ok(false),
            plan::Rebuild::Skip => {}
            plan::Rebuild::MoveAside => {
                if l.initialized {
                    if l.postmaster_running {
                        pg::stop(&self.cfg).await?;
                    }
                    // Asked by the controller: the primary invalidated this standby's
                    // slot, or an operator ran `pgha reinit`.
                    self.move_aside(
                        "rebuilt",
                        "the controller asked for a rebuild from a fresh base backup (slot invalidated, or pgha reinit)",
                    )?;
                }
            }
        }
        self.state.rebuilt_epoch = epoch;
        self.state.save(&self.cfg)?;
        Ok(true)
    }

    /// `pgha restart`: a running Postgres is stopped once per epoch the controller sets;
    /// the next tick starts it as its goal says. Returns true when it acted.
    pub(super) async fn restart_if_asked(&mut self, l: &Local) -> anyhow::Result<bool> {
        let Some(a) = &self.state.assignment else {
            return Ok(false);
        };
        let epoch = a.restart_epoch;
        if epoch <= self.state.restarted_epoch {
            return Ok(false);
        }
        if l.postmaster_running {
            tracing::info!("restarting Postgres, as an operator asked (pgha restart)");
            pg::stop(&self.cfg).await?;
        }
        self.state.restarted_epoch = epoch;
        self.state.save(&self.cfg)?;
        Ok(true)
    }

    /// Moves PGDATA aside (keeping one earlier copy per reason) so that the next tick
    /// takes a fresh base backup.
    fn move_aside(&self, reason: &str, why: &str) -> anyhow::Result<()> {
        let aside = sibling(&self.cfg.pgdata, reason);
        tracing::error!(
            "{why}; moving PGDATA aside to {} for a fresh base backup",
            aside.display()
        );
        if aside.exists() {
            std::fs::remove_dir_all(&aside)
                .with_context(|| format!("removing {}", aside.display()))?;
        }
        std::fs::rename(&self.cfg.pgdata, &aside)
            .with_context(|| format!("moving PGDATA to {}", aside.display()))?;
        Ok(())
    }

    /// A new standby from the formation's backup repository, when it has one: the
    /// latest backup, then WAL from the archive, then streaming; nothing is copied from
    /// the primary but the WAL since the archive's end. False (and `into` emptied) when
    /// there is no repository or no backup in it: the caller copies from the upstream.
    async fn restore_standby(&self, into: &std::path::Path) -> anyhow::Result<bool> {
        let Some(s) = self
            .state
            .assignment
            .as_ref()
            .and_then(|a| a.backup.clone())
        else {
            return Ok(false);
        };
        crate::backup::write_conf(&self.cfg, &s, self.who)?;
        let t0 = std::time::Instant::now();
        tracing::info!(stanza = %s.stanza, "restoring a standby from the backup repository");
        if let Err(e) = crate::backup::restore(
            &self.cfg,
            &s.stanza,
            into,
            crate::backup::RestoreTarget::Standby,
        )
        .await
        {
            tracing::warn!("no standby from the repository ({e}); copying from the upstream");
            std::fs::remove_dir_all(into)
                .with_context(|| format!("removing {}", into.display()))?;
            prepare_dir(into, self.who)?;
            return Ok(false);
        }
        crate::backup::strip_recovery_settings(into, self.who)?;
        tracing::info!(
            secs = t0.elapsed().as_secs_f64(),
            "restored from the backup repository; replays the archive, then streams"
        );
        Ok(true)
    }

    /// `create postgres --restore-from`: this formation's first node, from another
    /// formation's backups, recovered up to the target and promoted by Postgres. The
    /// recovery settings the restore wrote stay until the promotion
    /// ([`Agent::finish_point_in_time_recovery`]).
    async fn restore_point_in_time(&self, from: &crate::config::RestoreFrom) -> anyhow::Result<()> {
        let s = self
            .state
            .assignment
            .as_ref()
            .and_then(|a| a.backup.clone())
            .context("--restore-from needs a backup section in this formation's file: it names the repository to restore from")?;
        crate::backup::write_conf(&self.cfg, &s, self.who)?;
        tracing::info!(
            stanza = %from.stanza,
            target = from.target_time.as_deref().unwrap_or("the end of the archive"),
            "point-in-time recovery from the backup repository"
        );
        crate::backup::restore(
            &self.cfg,
            &from.stanza,
            &self.cfg.pgdata,
            crate::backup::RestoreTarget::PointInTime {
                target_time: from.target_time.as_deref(),
            },
        )
        .await?;
        // This formation's own stanza, before Postgres starts and archives the new
        // timeline's history file (offline: from pg_control).
        crate::backup::pgbackrest(
            &self.cfg,
            &s,
            "stanza-create",
            &["--no-online"],
            Duration::from_secs(120),
        )
        .await?;
        crate::config::write_atomically(&crate::backup::pitr_marker(&self.cfg), b"")?;
        Ok(())
    }

    /// A point-in-time recovery whose archive ends before the target (the source has not
    /// archived the WAL up to it yet: its `archive_timeout`, 60 s by default, bounds
    /// that): Postgres stops at the end of the archive. Said in the report, and started
    /// again every 5 s until the WAL is there. True while waiting.
    fn point_in_time_recovery_waits(&mut self) -> bool {
        const RETRY: Duration = Duration::from_secs(5);
        if !crate::backup::pitr_marker(&self.cfg).exists()
            || !crate::backup::recovery_short_of_target(&self.cfg)
        {
            self.retries.pitr_retry_at = None;
            return false;
        }
        let target = self
            .cfg
            .restore_from
            .as_ref()
            .and_then(|r| r.target_time.clone())
            .unwrap_or_default();
        self.last_error = Some(format!(
            "point-in-time recovery: the archive ends before the target {target}; waiting for the source formation to archive its WAL up to it (its archive_timeout bounds the wait; `SELECT pg_switch_wal()` on its primary ends it now)"
        ));
        match self.retries.pitr_retry_at {
            Some(t) if t.elapsed() < RETRY => true,
            _ => {
                self.retries.pitr_retry_at = Some(Instant::now());
                false
            }
        }
    }

    /// Once Postgres promoted itself at the end of a point-in-time recovery: the
    /// replication role gets this formation's password (the restored one is the source
    /// formation's), and the restore's recovery settings go (pgha's take over). Those
    /// take a restart, done here, before the node reports itself single.
    /// True when it acted (the pass ends there).
    pub(super) async fn finish_point_in_time_recovery(&self, l: &Local) -> anyhow::Result<bool> {
        let marker = crate::backup::pitr_marker(&self.cfg);
        if !(l.point_in_time_recovery && l.ready && l.in_recovery == Some(false)) {
            return Ok(false);
        }
        let c = observe::local_client(&self.cfg).await?;
        sql::set_replication_password(&c, &self.cfg).await?;
        crate::backup::strip_recovery_settings(&self.cfg.pgdata, self.who)?;
        pg::stop(&self.cfg).await?;
        std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
        tracing::info!("point-in-time recovery done: this node is the formation's primary");
        Ok(true)
    }

    async fn after_new_pgdata(&mut self, goal: NodeState) -> anyhow::Result<()> {
        if self.cfg.ssl_self_signed {
            ensure_certificate(&self.cfg, self.who).await?;
        }
        if let Ok(c) = pg::controldata(&self.cfg).await {
            self.hot_standby_floors = c.hot_standby_floors;
        }
        self.apply_conf(goal)?;
        if goal.is_standby() {
            self.install_slot_copies()?;
        }
        pg::start(&self.cfg).await?;
        Ok(())
    }

    /// The node to copy from (base backup, rewind): the assigned upstream, or for a
    /// standby formation's leader the first node of the source that accepts a
    /// connection.
    fn upstream(&self) -> anyhow::Result<(String, u16)> {
        let a = self.state.assignment.as_ref();
        if let Some(src) = a.and_then(|a| a.standby_of.as_ref())
            && a.is_some_and(|a| a.goal.is_writable())
        {
            return src
                .hosts
                .iter()
                .find(|(h, p)| reachable(h, *p))
                .cloned()
                .with_context(|| {
                    format!(
                        "no node of the source formation answers ({})",
                        src.hosts
                            .iter()
                            .map(|(h, p)| format!("{h}:{p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
        }
        a.and_then(|a| a.upstream.as_ref())
            .map(|u| (u.host.clone(), u.port))
            .context("no upstream node in the assignment")
    }

    pub(super) fn apply_conf(&self, goal: NodeState) -> anyhow::Result<bool> {
        let a = self.state.assignment.as_ref();
        let role = plan::role_for(goal, a, self.synchronous_standby_names());
        let peers = a.map(|a| a.peers.clone()).unwrap_or_default();
        let mut parameters = a.map(|a| a.parameters.clone()).unwrap_or_default();
        if goal.is_standby() {
            // A standby cannot start below the primary's values of these settings: a
            // decrease reaches it only once the primary runs the lower value.
            for (name, floor) in &self.hot_standby_floors {
                if let Some(v) = parameters.get_mut(name)
                    && v.parse::<i64>().is_ok_and(|want| want < *floor)
                {
                    *v = floor.to_string();
                }
            }
        }
        Ok(conf::apply(
            &self.cfg,
            &role,
            &parameters,
            &peers,
            a.and_then(|a| a.backup.as_ref()),
            &plan::logical_slots(a, self.binaries_major),
            self.who,
        )?)
    }

    /// Before a standby starts: the primary's state file of each logical slot of the
    /// file that has no copy here, written where Postgres loads slots at its start
    /// (`pg_replslot/<name>/state`). Postgres checks the file's checksum; the copy is
    /// then advanced as the consumer confirms on the primary.
    fn install_slot_copies(&self) -> anyhow::Result<()> {
        let Some(a) = self.state.assignment.as_ref() else {
            return Ok(());
        };
        // 17 and later: Postgres synchronizes the slots itself (`plan::LogicalSlots`).
        if self.binaries_major.is_some_and(|m| m.failover_slots()) {
            return Ok(());
        }
        let oldest_wal = observe::oldest_wal(&self.cfg.pgdata);
        for s in &a.permanent_slots {
            let Some(logical) = s.logical.as_ref() else {
                continue;
            };
            let Some(state) = logical.state.as_deref() else {
                continue;
            };
            if !plan::copy_can_follow(logical, oldest_wal) {
                tracing::info!(slot = %s.name, "no copy of the primary's logical slot yet: it needs WAL older than this node keeps (it comes once its consumer moves on)");
                continue;
            }
            // The name comes from the formation file (checked there): never a path.
            if pgha_api::validate::check_slot_name(&s.name).is_err() {
                continue;
            }
            let dir = crate::postgres::slots::slot_dir(&self.cfg.pgdata, &s.name);
            let path = dir.join("state");
            if dir.exists() {
                continue;
            }
            let bytes = pgha_api::from_hex(state)
                .with_context(|| format!("the state file of slot {} is not hex", s.name))?;
            prepare_dir(&dir, self.who)?;
            crate::files::replace(&path, &bytes, 0o600, self.who)?;
            crate::files::sync_parent(&dir)?;
            tracing::info!(slot = %s.name, "copy of the primary's logical slot installed");
        }
        Ok(())
    }

    async fn setup_primary(&self) -> anyhow::Result<()> {
        let c = observe::local_client(&self.cfg).await?;
        let slots = self.wanted(NodeState::Primary).slots;
        sql::setup_primary(&c, &self.cfg, &slots).await
    }
}

/// A TCP connection to `host:port` opens within a second.
fn reachable(host: &str, port: u16) -> bool {
    use std::net::ToSocketAddrs;
    (host, port).to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|sa| std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(1)).is_ok())
    })
}

fn sibling(pgdata: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = pgdata.as_os_str().to_owned();
    s.push(format!(".{suffix}"));
    s.into()
}

/// Creates a directory for Postgres: owned by its OS user, mode 0700 (never through a
/// link: see [`crate::files`]).
pub(super) fn prepare_dir(dir: &std::path::Path, who: Option<RunAs>) -> anyhow::Result<()> {
    Ok(crate::files::prepare_dir(dir, who)?)
}

/// A self-signed certificate for `--ssl-self-signed`, made with the openssl tool run as
/// the Postgres OS user: it writes into PGDATA, where that user could have planted links.
async fn ensure_certificate(cfg: &AgentConfig, who: Option<RunAs>) -> anyhow::Result<()> {
    let crt = cfg.pgdata.join("server.crt");
    let key = cfg.pgdata.join("server.key");
    if crt.exists() && key.exists() {
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["req", "-new", "-x509", "-days", "3650", "-nodes", "-subj"])
        .arg(format!("/CN={}", cfg.hostname))
        .arg("-out")
        .arg(&crt)
        .arg("-keyout")
        .arg(&key)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/");
    if let Some(r) = who {
        cmd.uid(r.uid).gid(r.gid);
    }
    let out = cmd
        .output()
        .await
        .context("running openssl to make a self-signed certificate")?;
    if !out.status.success() {
        anyhow::bail!(
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    crate::files::chmod_nofollow(&key, 0o600, who)?;
    Ok(())
}
