//! One pass of the agent loop, in named phases: observe, rebuild when asked, fence when
//! the lease ran out, choose and take one step, note the outcome, report when due.

use super::Agent;
use crate::observe;
use crate::observe::Local;
use crate::plan;
use crate::plan::Step;
use pgha_api::NodeState;
use std::time::Duration;
use std::time::Instant;

/// Pause after a pass that acted or is waiting on the controller, and after a quiet one.
const FAST_PAUSE: Duration = Duration::from_millis(50);
const QUIET_PAUSE: Duration = Duration::from_millis(200);

impl Agent {
    /// One pass; returns how long to sleep before the next.
    pub(super) async fn tick(&mut self) -> anyhow::Result<Duration> {
        let l = self.observe().await;
        if self.heartbeat_due(&l) {
            self.heartbeat().await;
        }
        if self.rebuild_if_asked(&l).await? || self.restart_if_asked(&l).await? {
            return Ok(FAST_PAUSE);
        }
        if self.finish_point_in_time_recovery(&l).await? {
            return Ok(FAST_PAUSE);
        }
        self.check_lease(self.effective_goal())?;
        self.arm_watchdog();
        let goal = self.effective_goal();
        let mut step = plan::next_step(&self.wanted(goal), &l);
        if goal == NodeState::PreparePromotion
            && let Some(term) = self.state.assignment.as_ref().map(|a| a.term)
            && let Some(why) = self
                .pre_promote
                .gate(&self.cfg.formation, &self.cfg.name, term)
                .await
        {
            step = Step::Wait(why);
        }
        let (acted, result) = self.take_step(&step, goal, &l).await?;
        self.note_wait(&step, goal);
        let prev = self.reported;
        self.note_outcome(&step, acted, result, goal, &l);
        if self.reported != prev {
            tracing::info!(state = %self.reported, "reached");
            self.hooks
                .state_changed(&self.cfg.formation, &self.cfg.name, prev, self.reported);
            self.state.reported = Some(self.reported);
            self.state.save(&self.cfg)?;
        }
        self.backup_duties(&l).await?;
        self.publish(&l);
        let fast = self.state.assignment.as_ref().is_some_and(|a| a.fast_poll)
            || acted
            || self.reported != goal;
        let upstream_changed = self
            .reported_upstream_live
            .is_some_and(|was| was != l.receiver_live());
        self.report_if_due(l, acted, fast || self.reported != prev || upstream_changed)
            .await;
        Ok(if fast { FAST_PAUSE } else { QUIET_PAUSE })
    }

    /// Runs the install of the data directory's major, or before there is data, of the
    /// major the formation runs (`crate::postgres::installs::choose`). With none of that
    /// major, the one in use stays and the step planner refuses to make or start data
    /// with it.
    fn choose_install(&mut self, data: Option<pgha_api::PgMajor>) {
        let wanted = self.state.assignment.as_ref().and_then(|a| a.major);
        let Some(i) =
            crate::postgres::installs::choose(&self.installs, data, wanted, &self.cfg.pg_bin_dir)
        else {
            return;
        };
        if i.bin_dir != self.cfg.pg_bin_dir {
            tracing::info!(
                major = %i.major,
                bin_dir = %i.bin_dir.display(),
                "running the install of PostgreSQL {}", i.major
            );
            self.cfg.pg_bin_dir = i.bin_dir.clone();
        }
        self.binaries_major = Some(i.major);
    }

    /// The idle primary's heartbeat (see `lease::WalMarks`). A failure (a read-only or
    /// full Postgres) only means its standbys renew no lease until it writes again.
    async fn heartbeat(&mut self) {
        self.last_heartbeat = Some(Instant::now());
        let r = match observe::local_client(&self.cfg).await {
            Ok(c) => crate::postgres::sql::heartbeat(&c)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::debug!("heartbeat transaction failed: {e:#}");
        }
    }

    /// Observes Postgres and remembers what later reports need (standbys heard from,
    /// invalidated slots, the primary's hot-standby settings).
    async fn observe(&mut self) -> Local {
        let mut l = observe::observe(&self.cfg).await;
        self.choose_install(l.major);
        l.binaries_major = self.binaries_major;
        // The start and stop hooks: a change seen while the agent runs (not the state
        // it found at its own start).
        let role = match l.in_recovery {
            Some(true) => "standby",
            Some(false) => "primary",
            None => crate::hooks::role(self.reported),
        };
        let now = (l.ready, role);
        if let Some((was, was_role)) = self.pg_was_running
            && was != l.ready
            && (l.ready || !l.postmaster_running)
        {
            let role = if l.ready { role } else { was_role };
            self.hooks
                .postgres_changed(&self.cfg.formation, &self.cfg.name, l.ready, role);
        }
        if l.ready || !l.postmaster_running {
            self.pg_was_running = Some(now);
        }
        if l.ready {
            self.retries.start_attempts = 0;
        }
        if let Some(c) = &l.control {
            self.hot_standby_floors = c.hot_standby_floors.clone();
        }
        self.track_standbys(&l);
        self.lost_slots.extend(l.lost_slots.iter().cloned());
        l
    }

    /// Takes `step`. With nothing to do, the settings of the assignment are still
    /// written and reloaded when they changed. Returns whether it acted, and how the
    /// step went (an error of the step is noted, not returned; only a failed reload is).
    async fn take_step(
        &mut self,
        step: &Step,
        goal: NodeState,
        l: &Local,
    ) -> anyhow::Result<(bool, anyhow::Result<()>)> {
        if !matches!(step, Step::Reached | Step::Wait(_)) {
            tracing::debug!(?step, %goal, "step");
            return Ok((true, self.execute(step, goal).await));
        }
        let settings_changed = l.initialized
            && !matches!(goal, NodeState::Init | NodeState::WaitStandby)
            && !goal.is_stopped()
            && self.apply_conf(goal)?;
        if settings_changed && l.ready {
            self.reload().await?;
            return Ok((true, Ok(())));
        }
        Ok((false, Ok(())))
    }

    /// pgBackRest's share of the pass: its configuration, the stanza and asked backups
    /// on the primary (in the background).
    async fn backup_duties(&mut self, l: &Local) -> anyhow::Result<()> {
        let a = self.state.assignment.as_ref();
        let now = crate::backup::Now {
            settings: a.and_then(|a| a.backup.as_ref()),
            request: a.and_then(|a| a.backup_request),
            done_id: self.state.backup_done_id,
            is_primary: self.reported.is_writable() && l.ready && l.in_recovery == Some(false),
        };
        if let Some(id) = self.backups.tick(&self.cfg, self.who, now).await {
            self.state.backup_done_id = id;
            self.state.save(&self.cfg)?;
        }
        Ok(())
    }

    /// A wait that lasts is said in the report (once, as the last error).
    fn note_wait(&mut self, step: &Step, goal: NodeState) {
        let Step::Wait(why) = step else {
            self.waiting = None;
            return;
        };
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

    /// What the pass achieved: the state reached (only when there was nothing left to
    /// do), the generation whose settings are in force, or the error to report.
    fn note_outcome(
        &mut self,
        step: &Step,
        acted: bool,
        result: anyhow::Result<()>,
        goal: NodeState,
        l: &Local,
    ) {
        if let Err(e) = result {
            let msg = format!("{e:#}");
            tracing::error!(%goal, "{msg}");
            self.last_error = Some(msg);
            return;
        }
        if acted {
            return;
        }
        // The configuration of this assignment was already in force when this pass
        // observed Postgres (so a pending restart would show).
        self.applied_generation = self
            .state
            .assignment
            .as_ref()
            .map(|a| a.generation)
            .unwrap_or(0);
        if *step != Step::Reached {
            return;
        }
        self.reported = goal;
        self.last_error = None;
        if !l.setting_errors.is_empty() {
            // Reported, not retried: Postgres keeps the previous value until the
            // formation file changes again.
            let errs: Vec<String> = l
                .setting_errors
                .iter()
                .map(|(n, e)| format!("{n}: {e}"))
                .collect();
            self.last_error = Some(format!("Postgres rejected settings: {}", errs.join("; ")));
        }
    }

    /// Reports when something changed or is in flight (`urgent`), or at the report
    /// interval; after acting, from a fresh observation.
    async fn report_if_due(&mut self, l: Local, acted: bool, urgent: bool) {
        let interval = Duration::from_millis(self.timings().report_interval_ms);
        let due = self.last_report.is_none_or(|t| t.elapsed() >= interval);
        if !(urgent || due) {
            return;
        }
        let l = if acted {
            observe::observe(&self.cfg).await
        } else {
            l
        };
        if let Err(e) = self.report(&l).await {
            tracing::warn!("report failed: {e:#}");
        }
    }
}
