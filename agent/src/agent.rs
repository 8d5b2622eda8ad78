//! The agent loop: observe, fence if the lease ran out, take one step toward the
//! assigned state, report, repeat.

use crate::conf::{self, Role};
use crate::config::{AgentConfig, AgentState};
use crate::observe::{self, Local};
use crate::pg::{self, RunAs};
use crate::plan::{self, Step, Wanted};
use anyhow::Context;
use pgha_api::client::MonitorClient;
use pgha_api::{Assignment, NodeReport, NodeState, PgObservation, Timings};
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Agent {
    cfg: AgentConfig,
    who: Option<RunAs>,
    state: AgentState,
    client: MonitorClient,
    started: Instant,
    last_controller_contact: Instant,
    contacted_since_start: bool,
    last_standby_seen: Instant,
    standby_replies: HashMap<String, Option<String>>,
    last_streaming: Option<Instant>,
    /// When the WAL receiver was last seen streaming from each address.
    streamed_from: HashMap<(String, u16), Instant>,
    last_report: Option<Instant>,
    last_error: Option<String>,
    reported: NodeState,
    /// A wait that has not ended yet, and since when (reported once it lasts).
    waiting: Option<(&'static str, Instant)>,
    /// Starts attempted since Postgres last ran.
    start_attempts: u32,
    /// What the HTTP endpoint serves.
    snapshot: crate::http::SharedSnapshot,
    last_report_ok: Option<Instant>,
    /// Postgres accepted connections at the previous tick.
    was_ready: bool,
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
}

/// Starts of a standby that fail in a row before it is rebuilt from a base backup.
const MAX_START_ATTEMPTS: u32 = 5;

fn role_for(goal: NodeState, a: Option<&Assignment>, ssn: String) -> Role {
    if goal.is_writable() {
        Role::Primary {
            synchronous_standby_names: ssn,
            max_slot_wal_keep_size: a
                .map(|a| a.max_slot_wal_keep_size.clone())
                .filter(|v| pgha_api::validate::valid_wal_size(v))
                .unwrap_or_else(|| pgha_api::DEFAULT_MAX_SLOT_WAL_KEEP_SIZE.to_string()),
        }
    } else if goal.is_standby() {
        let upstream = if goal.streams_from_upstream() {
            a.and_then(|a| a.upstream.as_ref())
                .map(|u| (u.host.clone(), u.port))
        } else {
            None
        };
        Role::Standby {
            upstream,
            slot: !goal.streams_without_slot(),
        }
    } else {
        Role::Stopped
    }
}

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
        let goal = self
            .state
            .assignment
            .as_ref()
            .map(|a| a.goal)
            .unwrap_or(NodeState::Init);
        if self.state.fenced && goal.is_writable() {
            NodeState::DemoteTimeout
        } else {
            goal
        }
    }

    /// `synchronous_standby_names` to apply. Until the controller has been reached since
    /// this agent started, a writable node with peers insists on one synchronous standby:
    /// after a reboot with the controller down it may serve its standby, but it cannot
    /// acknowledge writes that a node promoted meanwhile would not have.
    fn synchronous_standby_names(&self) -> String {
        let Some(a) = &self.state.assignment else {
            return String::new();
        };
        if !self.contacted_since_start && !a.peers.is_empty() {
            let names: Vec<String> = a
                .peers
                .iter()
                .map(|p| pgha_api::standby_application_name(p.node_id))
                .collect();
            return format!("ANY 1 ({})", names.join(", "));
        }
        a.synchronous_standby_names.clone()
    }

    fn wanted(&self, goal: NodeState) -> Wanted {
        let a = self.state.assignment.as_ref();
        Wanted {
            goal,
            has_upstream: a.is_some_and(|a| a.upstream.is_some()),
            synchronous_standby_names: self.synchronous_standby_names(),
            slots: a
                .map(|a| {
                    a.peers
                        .iter()
                        .filter(|p| p.slot)
                        .map(|p| pgha_api::replication_slot_name(p.node_id))
                        .collect()
                })
                .unwrap_or_default(),
            // Not in the middle of a promotion (fast_forward, prepare_promotion,
            // stop_replication): a restart there would only delay the failover.
            restart_allowed: matches!(goal, NodeState::Catchingup | NodeState::Secondary)
                || a.is_some_and(|a| a.peers.is_empty() && goal.is_writable()),
        }
    }

    /// Tracks when a standby was last heard from: a streaming standby whose reply
    /// timestamp moved since the previous tick (values compared, no clocks across hosts).
    fn track_standbys(&mut self, l: &Local) {
        // After a restart with the controller down, standbys need time to reconnect to
        // a Postgres that just came up: their lease counts from then. (Only then: once
        // the controller was reached, its view of our lease must stay conservative.)
        if l.ready && !self.was_ready && !self.contacted_since_start {
            self.last_standby_seen = Instant::now();
        }
        self.was_ready = l.ready;
        let mut seen = HashMap::new();
        for s in &l.standbys {
            if s.obs.state != "streaming" {
                continue;
            }
            let prev = self.standby_replies.get(&s.obs.application_name);
            if prev != Some(&s.reply_time) {
                self.last_standby_seen = Instant::now();
            }
            seen.insert(s.obs.application_name.clone(), s.reply_time.clone());
        }
        self.standby_replies = seen;
        if l.wal_receiver_streaming {
            self.last_streaming = Some(Instant::now());
        }
        if let Some(sender) = &l.wal_receiver_sender {
            self.streamed_from.insert(sender.clone(), Instant::now());
        }
        self.streamed_from
            .retain(|_, t| t.elapsed() < Duration::from_secs(3600));
    }

    /// Lease left before this node fences itself, for writable nodes with peers.
    fn lease_remaining_ms(&self) -> Option<u64> {
        let goal = self.effective_goal();
        let has_peers = self
            .state
            .assignment
            .as_ref()
            .is_some_and(|a| !a.peers.is_empty());
        if !goal.is_writable() || !has_peers {
            return None;
        }
        let since = self
            .last_controller_contact
            .elapsed()
            .min(self.last_standby_seen.elapsed())
            .as_millis() as u64;
        Some(self.timings().lease_ms.saturating_sub(since))
    }

    /// Refreshes what the HTTP endpoint serves.
    fn publish(&self, l: &Local) {
        let snap = crate::http::Snapshot {
            node: self.cfg.name.clone(),
            formation: self.cfg.formation.clone(),
            local: l.clone(),
            goal: self.effective_goal(),
            reported: self.reported,
            fenced: self.state.fenced,
            lease_remaining_ms: self.lease_remaining_ms(),
            last_report_ok: self.last_report_ok,
            primary_lsn: self.state.assignment.as_ref().and_then(|a| a.primary_lsn),
        };
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snap);
    }

    /// Hands the watchdog the lease's current deadline (none when this node holds no
    /// lease: not writable, no peers, or already fenced).
    fn arm_watchdog(&self) {
        let deadline = match self.lease_remaining_ms() {
            Some(ms) if !self.state.fenced => {
                Some(tokio::time::Instant::now() + Duration::from_millis(ms))
            }
            _ => None,
        };
        self.watchdog.arm(deadline);
    }

    fn check_lease(&mut self, goal: NodeState) -> anyhow::Result<()> {
        if self.watchdog.take_fired() && !self.state.fenced {
            self.state.fenced = true;
            self.state.save(&self.cfg)?;
        }
        let has_peers = self
            .state
            .assignment
            .as_ref()
            .is_some_and(|a| !a.peers.is_empty());
        if self.state.fenced || !has_peers {
            return Ok(());
        }
        let lease = self.timings().lease_ms;
        let since_ctl = self.last_controller_contact.elapsed().as_millis() as u64;
        let since_sb = self.last_standby_seen.elapsed().as_millis() as u64;
        if plan::should_fence(goal, since_ctl, since_sb, lease) {
            tracing::warn!(
                since_controller_ms = since_ctl,
                since_standby_ms = since_sb,
                "lease expired: fencing (stopping Postgres) until the controller confirms our role"
            );
            self.state.fenced = true;
            self.state.save(&self.cfg)?;
        }
        Ok(())
    }

    async fn reload(&self) -> anyhow::Result<()> {
        let c = observe::local_client(&self.cfg).await?;
        c.execute("SELECT pg_reload_conf()", &[]).await?;
        Ok(())
    }

    async fn execute(&mut self, step: &Step, goal: NodeState) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        match step {
            Step::Reached | Step::Wait(_) => Ok(()),
            Step::Blocked(why) => anyhow::bail!("cannot reach {goal}: {why}"),
            Step::Initdb => {
                prepare_dir(&cfg.pgdata, self.who)?;
                tracing::info!(pgdata = %cfg.pgdata.display(), "initdb");
                pg::initdb(cfg).await?;
                self.after_new_pgdata(goal).await
            }
            Step::BaseBackup => {
                let up = self.upstream()?;
                let tmp = sibling(&cfg.pgdata, "basebackup-tmp");
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp)
                        .with_context(|| format!("removing {}", tmp.display()))?;
                }
                prepare_dir(&tmp, self.who)?;
                tracing::info!(upstream = %format!("{}:{}", up.0, up.1), "pg_basebackup");
                pg::basebackup(cfg, &tmp, &up.0, up.1).await?;
                if cfg.pgdata.exists() {
                    // Only an empty directory can be here (initialized is false).
                    std::fs::remove_dir(&cfg.pgdata).with_context(|| {
                        format!(
                            "{} is not empty; refusing to replace it",
                            cfg.pgdata.display()
                        )
                    })?;
                }
                std::fs::rename(&tmp, &cfg.pgdata).with_context(|| {
                    format!("moving the base backup to {}", cfg.pgdata.display())
                })?;
                self.after_new_pgdata(goal).await
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
                self.start_attempts = 0;
                self.after_new_pgdata(goal).await
            }
            Step::Start => {
                // A standby that cannot start (its data does not fit the upstream's
                // timeline) is rebuilt from a fresh base backup; a primary never is.
                if self.start_attempts >= MAX_START_ATTEMPTS && goal.is_standby() {
                    self.start_attempts = 0;
                    return self.move_aside(
                        "start-failed",
                        &format!(
                            "Postgres failed to start {MAX_START_ATTEMPTS} times as a standby"
                        ),
                    );
                }
                self.start_attempts += 1;
                self.apply_conf(goal)?;
                tracing::info!(attempt = self.start_attempts, "starting Postgres");
                pg::start(cfg).await?;
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
            Step::Promote => {
                tracing::info!("promoting");
                let c = observe::local_client(cfg).await?;
                c.execute("SELECT pg_promote(true, 60)", &[]).await?;
                // Record the new timeline in pg_control now, so that pg_rewind of the
                // old primary against us finds it.
                // Bounded: the watchdog fences a stuck writable node, but a step that
                // never ends would keep it from reporting at all.
                tokio::time::timeout(Duration::from_secs(60), c.batch_execute("CHECKPOINT"))
                    .await
                    .context("CHECKPOINT after promotion did not finish within 60 s")??;
                Ok(())
            }
            Step::SetupPrimary => self.setup_primary().await,
        }
    }

    /// The primary invalidated this node's slot (the WAL it needs is gone): a standby
    /// stops, moves PGDATA aside and takes a fresh base backup, once per epoch the
    /// controller sets. Returns true when it acted.
    async fn rebuild_if_asked(&mut self, l: &Local) -> anyhow::Result<bool> {
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
                    self.move_aside(
                        "slot-invalidated",
                        "the primary invalidated this standby's replication slot",
                    )?;
                }
            }
        }
        self.state.rebuilt_epoch = epoch;
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

    async fn after_new_pgdata(&mut self, goal: NodeState) -> anyhow::Result<()> {
        if self.cfg.ssl_self_signed {
            ensure_certificate(&self.cfg, self.who).await?;
        }
        if let Ok(c) = pg::controldata(&self.cfg).await {
            self.hot_standby_floors = c.hot_standby_floors;
        }
        self.apply_conf(goal)?;
        pg::start(&self.cfg).await?;
        Ok(())
    }

    fn upstream(&self) -> anyhow::Result<(String, u16)> {
        self.state
            .assignment
            .as_ref()
            .and_then(|a| a.upstream.as_ref())
            .map(|u| (u.host.clone(), u.port))
            .context("no upstream node in the assignment")
    }

    fn apply_conf(&self, goal: NodeState) -> anyhow::Result<bool> {
        let a = self.state.assignment.as_ref();
        let role = role_for(goal, a, self.synchronous_standby_names());
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
            self.who,
        )?)
    }

    async fn setup_primary(&self) -> anyhow::Result<()> {
        let c = observe::local_client(&self.cfg).await?;
        // The agent's own catalog writes never wait for a synchronous standby: the one
        // listed may be the one that just died (the reload that drops it from
        // synchronous_standby_names can come after this step), and a commit waiting on
        // it would hold this loop until the lease fences the primary.
        c.batch_execute("SET synchronous_commit TO local").await?;
        let user = pgha_api::REPLICATION_USER;
        let exists = c
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
            .await?
            .is_some();
        if !exists {
            // A SCRAM verifier, never the password itself, goes into the SQL text (which
            // the server may log): it holds only base64, '$' and ':'.
            let verifier = scram_verifier(&self.cfg.replication_password);
            c.batch_execute(&format!(
                "CREATE ROLE {user} WITH LOGIN REPLICATION PASSWORD {}",
                quote_literal(&verifier)
            ))
            .await
            .context("creating the replication role")?;
            c.batch_execute(&format!(
                "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {user};
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {user};
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {user};
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {user};
                 GRANT pg_checkpoint TO {user};"
            ))
            .await
            .context("granting the replication role what pg_rewind needs")?;
        }
        let exists = c
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&self.cfg.dbname],
            )
            .await?
            .is_some();
        if !exists {
            let db = quote_ident(&self.cfg.dbname);
            let owner = quote_ident(&self.cfg.username);
            c.batch_execute(&format!("CREATE DATABASE {db} OWNER {owner}"))
                .await
                .with_context(|| format!("creating database {}", self.cfg.dbname))?;
        }
        let want = self.wanted(NodeState::Primary).slots;
        // Slots of nodes that cannot stream, and invalidated ones (their standby is
        // rebuilt and takes a fresh slot), unless a standby streams through them now.
        c.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name LIKE 'pgha_slot_%' AND NOT active \
               AND (NOT (slot_name = ANY($1)) OR wal_status = 'lost')",
            &[&want],
        )
        .await
        .context("dropping replication slots")?;
        for slot in &want {
            c.execute(
                "SELECT pg_create_physical_replication_slot($1, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[slot],
            )
            .await
            .with_context(|| format!("creating replication slot {slot}"))?;
        }
        Ok(())
    }

    fn observation(&self, l: &Local) -> PgObservation {
        let prepared_for = match &self.state.assignment {
            Some(a) if l.ready && l.in_recovery == Some(false) => a
                .peers
                .iter()
                .filter(|p| {
                    l.slots
                        .contains(&pgha_api::replication_slot_name(p.node_id))
                })
                .map(|p| p.node_id)
                .collect(),
            _ => vec![],
        };
        PgObservation {
            running: l.ready,
            initialized: l.initialized,
            in_recovery: l.in_recovery,
            timeline: l.timeline,
            lsn: l.lsn,
            system_identifier: l.control.as_ref().and_then(|c| c.system_identifier.clone()),
            standbys: l.standbys.iter().map(|s| s.obs.clone()).collect(),
            upstream_streaming: l.wal_receiver_streaming,
            upstream_lost_ms_ago: if l.wal_receiver_streaming {
                None
            } else {
                self.last_streaming
                    .map(|t| t.elapsed().as_millis() as u64)
                    .or(Some(self.started.elapsed().as_millis() as u64))
            },
            prepared_for,
            pending_restart: l.pending_restart.clone(),
            lost_slots: self
                .lost_slots
                .iter()
                .chain(&l.lost_slots)
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            streamed_from: Some(pgha_api::StreamHistory {
                watching_ms: self.started.elapsed().as_millis() as u64,
                contacts: self
                    .streamed_from
                    .iter()
                    .map(|((host, port), t)| pgha_api::StreamedFrom {
                        host: host.clone(),
                        port: *port,
                        ms_ago: t.elapsed().as_millis() as u64,
                    })
                    .collect(),
            }),
        }
    }

    async fn report(&mut self, l: &Local) -> anyhow::Result<()> {
        let r = NodeReport {
            node_id: self.cfg.node_id,
            formation: self.cfg.formation.clone(),
            reported_state: self.reported,
            term: self.state.max_term,
            pg: self.observation(l),
            fenced: self.state.fenced,
            last_error: self.last_error.clone(),
            applied_generation: self.applied_generation,
        };
        let sent = Instant::now();
        self.last_report = Some(sent);
        let res = self.client.report(&r).await;
        if res.is_ok() {
            self.lost_slots.clear();
        }
        let a = match res {
            Err(e)
                if e.code() == Some(pgha_api::routes::ErrorCode::UnknownNode)
                    && self.effective_goal() == NodeState::Dropped =>
            {
                self.removed = true;
                return Ok(());
            }
            res => res?,
        };
        self.last_report_ok = Some(Instant::now());
        let Some(renewed) = crate::lease::renewal(sent, a.term, self.state.max_term) else {
            tracing::warn!(
                term = a.term,
                max_term = self.state.max_term,
                "refusing an assignment from an older term (the lease is not renewed)"
            );
            return Ok(());
        };
        self.last_controller_contact = renewed;
        self.contacted_since_start = true;
        let mut changed = self.state.assignment.as_ref() != Some(&a);
        if self.state.fenced && a.goal.is_writable() {
            tracing::info!("controller confirms our role: lifting the fence");
            self.state.fenced = false;
            changed = true;
        }
        if self.state.assignment.as_ref().map(|x| x.goal) != Some(a.goal) {
            tracing::info!(goal = %a.goal, term = a.term, "new assignment");
        }
        self.state.max_term = a.term;
        self.state.assignment = Some(a);
        if changed {
            self.state.save(&self.cfg)?;
        }
        self.arm_watchdog();
        Ok(())
    }

    async fn tick(&mut self) -> anyhow::Result<Duration> {
        let l = observe::observe(&self.cfg).await;
        if l.ready {
            self.start_attempts = 0;
        }
        if let Some(c) = &l.control {
            self.hot_standby_floors = c.hot_standby_floors.clone();
        }
        self.track_standbys(&l);
        self.lost_slots.extend(l.lost_slots.iter().cloned());
        if self.rebuild_if_asked(&l).await? {
            return Ok(Duration::from_millis(50));
        }
        let goal = self.effective_goal();
        self.check_lease(goal)?;
        self.arm_watchdog();
        let goal = self.effective_goal();
        let step = plan::next_step(&self.wanted(goal), &l);
        let mut acted = false;
        match &step {
            Step::Reached | Step::Wait(_) => {
                if l.initialized
                    && !matches!(goal, NodeState::Init | NodeState::WaitStandby)
                    && !goal.is_stopped()
                    && self.apply_conf(goal)?
                    && l.ready
                {
                    self.reload().await?;
                    acted = true;
                }
            }
            _ => acted = true,
        }
        let result = if acted && !matches!(step, Step::Reached | Step::Wait(_)) {
            tracing::debug!(?step, %goal, "step");
            self.execute(&step, goal).await
        } else {
            Ok(())
        };
        match &step {
            Step::Wait(why) => {
                let since = match self.waiting {
                    Some((w, t)) if w == *why => t,
                    _ => Instant::now(),
                };
                if since.elapsed() > Duration::from_secs(10) && self.last_error.is_none() {
                    let msg = format!("stuck for {} s: {why}", since.elapsed().as_secs());
                    tracing::warn!(%goal, "{msg}");
                    self.last_error = Some(msg);
                }
                self.waiting = Some((why, since));
            }
            _ => self.waiting = None,
        }
        let prev = self.reported;
        match &result {
            Ok(()) => {
                if matches!(step, Step::Reached | Step::Wait(_)) && !acted {
                    // The configuration of this assignment was already in force when
                    // this tick observed Postgres (so a pending restart would show).
                    self.applied_generation = self
                        .state
                        .assignment
                        .as_ref()
                        .map(|a| a.generation)
                        .unwrap_or(0);
                }
                if step == Step::Reached && !acted {
                    self.reported = goal;
                    self.last_error = None;
                    if !l.setting_errors.is_empty() {
                        // Reported, not retried: Postgres keeps the previous value until
                        // the formation file changes again.
                        let errs: Vec<String> = l
                            .setting_errors
                            .iter()
                            .map(|(n, e)| format!("{n}: {e}"))
                            .collect();
                        self.last_error =
                            Some(format!("Postgres rejected settings: {}", errs.join("; ")));
                    }
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(%goal, "{msg}");
                self.last_error = Some(msg);
            }
        }
        if self.reported != prev {
            tracing::info!(state = %self.reported, "reached");
            self.state.reported = Some(self.reported);
            self.state.save(&self.cfg)?;
        }
        self.publish(&l);
        let fast = self.state.assignment.as_ref().is_some_and(|a| a.fast_poll)
            || acted
            || self.reported != goal;
        let interval = Duration::from_millis(self.timings().report_interval_ms);
        let due = self.last_report.is_none_or(|t| t.elapsed() >= interval);
        if fast || due || self.reported != prev {
            let l = if acted {
                observe::observe(&self.cfg).await
            } else {
                l
            };
            if let Err(e) = self.report(&l).await {
                tracing::warn!("report failed: {e:#}");
            }
        }
        Ok(if fast {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(200)
        })
    }
}

fn sibling(pgdata: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = pgdata.as_os_str().to_owned();
    s.push(format!(".{suffix}"));
    s.into()
}

/// A SCRAM-SHA-256 verifier of `password` (Postgres's stored form), made here so that the
/// password never travels in SQL.
fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Creates a directory for Postgres: owned by its OS user, mode 0700 (never through a
/// link: see [`crate::files`]).
fn prepare_dir(dir: &std::path::Path, who: Option<RunAs>) -> anyhow::Result<()> {
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
    crate::files::chmod_nofollow(&key, 0o600)?;
    Ok(())
}

/// Serves the health endpoints and `/metrics`; a port that cannot be bound is logged and
/// skipped (health checks must never take the database down).
async fn serve_http(cfg: &AgentConfig, snapshot: crate::http::SharedSnapshot) {
    let host = match cfg.hostname.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => ip.to_string(),
        _ => "0.0.0.0".to_string(),
    };
    let addr = format!("{host}:{}", cfg.http_port);
    match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => {
            tracing::info!(%addr, "health endpoints and /metrics listening");
            // Bounded (connections, header and connection timeouts): health checkers and
            // scrapers must never take the descriptors the agent reports and fences with.
            tokio::spawn(pgha_api::server::serve(
                listener,
                crate::http::router(snapshot),
                pgha_api::server::Limits {
                    max_connections: 64,
                    header_read_timeout: Duration::from_secs(5),
                    max_connection_age: Duration::from_secs(300),
                },
                std::future::pending::<()>(),
            ));
        }
        Err(e) => tracing::error!(%addr, "cannot listen for health checks: {e}"),
    }
}

/// Runs the agent until `shutdown` resolves. Postgres is left running when the agent
/// stops: restarting the agent (upgrade, crash) never interrupts the database.
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

pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Exit> {
    let who = pg::run_as(&cfg)?;
    let state = AgentState::load(&cfg)?;
    // 0700: the directory holds the Unix socket (local connections are trusted) and
    // the replication password.
    prepare_dir(&cfg.state_dir(), who)?;
    pg::write_passfile(&cfg, who)?;
    let client = MonitorClient::new(&cfg.monitor, Duration::from_millis(1000))?;
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
    let mut agent = Agent {
        watchdog,
        lost_slots: Default::default(),
        cfg,
        who,
        state,
        client,
        started: now,
        last_controller_contact: now,
        contacted_since_start: false,
        last_standby_seen: now,
        standby_replies: HashMap::new(),
        last_streaming: None,
        streamed_from: HashMap::new(),
        last_report: None,
        last_error: None,
        reported,
        waiting: None,
        start_attempts: 0,
        snapshot: Default::default(),
        last_report_ok: None,
        was_ready: false,
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
