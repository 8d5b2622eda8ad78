//! Reports in, plans out: what an agent reported becomes observed state, the planner
//! runs once over the view, and its plan is persisted before anyone is told.

use super::operator::ActionError;
use super::{
    ControllerState, FormationView, NodeRecord, Plan, Principal, Rule, StoreError, decision_inputs,
    labels, planner, promotion,
};
use pgha_api::Assignment;
use pgha_api::NodeId;
use pgha_api::NodeReport;
use pgha_api::NodeState;
use pgha_api::PgObservation;

/// How far one report may move a formation's term forward (see `take_report`).
pub const TERM_CATCH_UP_MAX: u64 = 100;

impl ControllerState {
    /// An agent's report, from `peer`, speaking as `principal`: taken in only for the
    /// node whose own credential it carries (a node registered before nodes had one
    /// reports once with the join secret, and gets its credential in the answer), and
    /// only from an address that may speak for it; then the planner runs and the node
    /// gets its assignment.
    pub fn report(
        &mut self,
        r: &NodeReport,
        principal: Option<&Principal>,
        peer: std::net::IpAddr,
        now_ms: u64,
    ) -> Result<Assignment, ActionError> {
        let issue_credential = self.authorize_report(r, principal, peer, now_ms)?;
        let token = match issue_credential {
            true => Some(self.issue_node_credential(&r.formation, r.node_id, now_ms)?),
            false => None,
        };
        self.take_report(r, now_ms)?;
        self.reconcile(&r.formation, now_ms)?;
        let mut a = self
            .assignment(&r.formation, r.node_id, now_ms)
            .ok_or_else(|| ActionError::Internal("node vanished".into()))?;
        a.node_token = token;
        Ok(a)
    }

    /// Runs the planner for one formation and applies the result.
    pub fn reconcile(&mut self, formation: &str, now_ms: u64) -> Result<Plan, StoreError> {
        let started = std::time::Instant::now();
        let Some(view) = self.view(formation, now_ms) else {
            return Ok(Plan::default());
        };
        let plan = planner::plan(&view);
        let res = self.apply_plan(&view, &plan, now_ms);
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        if res.is_err() {
            self.metrics
                .reconcile_errors
                .get_or_create(&labels(&[("kind", "store")]))
                .inc();
        }
        res.map(|_| plan)
    }

    /// Takes in an agent's report: updates what we observed and the reported state.
    pub fn take_report(&mut self, r: &NodeReport, now_ms: u64) -> Result<(), StoreError> {
        let o = self.observed.entry(r.node_id).or_default();
        o.last_report_ms = Some(now_ms);
        o.fenced = r.fenced;
        o.applied_generation = r.applied_generation;
        o.auth_method = r.auth_method.clone();
        o.rebuilt_epoch = r.rebuilt_epoch;
        o.restarted_epoch = r.restarted_epoch;
        let job_ended = r.backup_job.as_ref().filter(|j| {
            j.state != pgha_api::JobState::Running && o.backup_job.as_ref() != Some(*j)
        });
        let job_ended = job_ended.cloned();
        o.backup_job = r.backup_job.clone();
        if r.backups.is_some() {
            o.backups = r.backups.clone();
        }
        o.last_error = r.last_error.clone();
        let newly_refused = r.promotion_refused_term.is_some()
            && r.promotion_refused_term != o.promotion_refused_term;
        o.promotion_refused_term = r.promotion_refused_term;
        if o.pg.lsn != r.pg.lsn || o.reported != Some(r.reported_state) {
            o.progress_at_ms = Some(now_ms);
        }
        o.reported = Some(r.reported_state);
        if o.claim_cap
            .is_some_and(|(cap, tl)| r.pg.timeline != tl || r.pg.lsn.is_none_or(|l| l <= cap))
        {
            o.claim_cap = None;
        }
        if r.pg.running {
            o.pg_down_since_ms = None;
        } else if o.pg_down_since_ms.is_none() {
            o.pg_down_since_ms = Some(now_ms);
        }
        o.upstream_lost_at_ms = if r.pg.upstream_streaming {
            None
        } else {
            // Conservative: the agent's "ago" is measured before the report was sent.
            Some(
                r.pg.upstream_lost_ms_ago
                    .map(|ago| now_ms.saturating_sub(ago))
                    .unwrap_or(self.started_ms.min(now_ms)),
            )
        };
        // Conservative as above: "ago" was measured before the report was sent.
        o.streamed_from_at = r.pg.streamed_from.as_ref().map(|h| planner::StreamLog {
            // The agent's watch started after its process did; the report's transit
            // only makes this earlier (conservative).
            watching_since_ms: now_ms.saturating_sub(h.watching_ms),
            contacts: h
                .contacts
                .iter()
                .map(|s| (s.host.clone(), s.port, now_ms.saturating_sub(s.ms_ago)))
                .collect(),
        });
        let newly_lost: Vec<String> =
            r.pg.lost_slots
                .iter()
                .filter(|s| !o.pg.lost_slots.contains(s))
                .cloned()
                .collect();
        let was_low = o.pg.disk.is_some_and(|d| d.is_low());
        let was_failing = o.pg.archive.as_ref().is_some_and(|a| a.failing());
        let slots_at_risk = permanent_slots_turned_at_risk(&o.pg, &r.pg);
        o.pg = r.pg.clone();
        let formation = r.formation.clone();
        if !newly_lost.is_empty() {
            self.slots_invalidated(&formation, &newly_lost, now_ms)?;
        }
        for (slot, status) in slots_at_risk {
            self.permanent_slot_at_risk(&formation, r.node_id, &slot, status, now_ms)?;
        }
        if let Some(d) = r.pg.disk
            && d.is_low() != was_low
        {
            self.disk_space_changed(&formation, r.node_id, d, now_ms)?;
        }
        if let Some(a) = &r.pg.archive
            && a.failing() != was_failing
        {
            self.archive_changed(&formation, r.node_id, a, now_ms)?;
        }
        if let Some(j) = job_ended {
            self.backup_ended(&formation, r.node_id, &j, now_ms)?;
        }
        if newly_refused {
            self.promotion_refused(&formation, r, now_ms)?;
        }
        let mut term_moved = None;
        let changed = {
            let Some(f) = self.durable.formations.get_mut(&formation) else {
                return Ok(());
            };
            let Some(n) = f.nodes.get_mut(&r.node_id) else {
                return Ok(());
            };
            // A member that saw a later term than ours (the store was restored from an
            // older copy): move past it before planning, so no term number is issued
            // twice for different promotions. By at most TERM_CATCH_UP_MAX a report: a
            // restore of any age is passed in a few reports, while one node cannot
            // drive the term to its end (every agent would then refuse every order).
            if r.term > f.intent.term {
                let to = r.term.min(f.intent.term.saturating_add(TERM_CATCH_UP_MAX));
                term_moved = Some((f.intent.term, r.term, to));
                f.intent.term = to;
            }
            if n.observed.reported != r.reported_state {
                n.observed.reported = r.reported_state;
                let n = n.clone();
                if n.observed.reported == NodeState::Primary && n.intent.goal == NodeState::Primary
                {
                    // Everything written before synchronous replication was in force
                    // may have been acknowledged without a standby: a failover needs it.
                    f.observed.sync_floor_lsn = r.pg.lsn.unwrap_or_default();
                }
                Some(n)
            } else {
                None
            }
        };
        if let Some((ours, theirs, to)) = term_moved {
            self.save()?;
            let bounded = if to < theirs {
                format!(" (at most {TERM_CATCH_UP_MAX} a report)")
            } else {
                String::new()
            };
            let ev = self.event(
                &formation,
                None,
                Rule::TermCatchUp,
                format!(
                    "node {} reported term {theirs}, later than the stored term {ours} (was the controller's store restored?): moved to term {to}{bounded}",
                    r.node_id
                ),
                now_ms,
            );
            self.record(ev)?;
        }
        if let Some(n) = changed {
            self.save()?;
            if n.observed.reported.is_writable() {
                self.finish_promotion(&formation, n.id, now_ms);
            }
            let mut ev = self.event(
                &formation,
                Some(&n),
                Rule::Report,
                format!("{} reached {}", n.name, n.observed.reported),
                now_ms,
            );
            ev.actor = Some(format!("node {}", n.name));
            self.record(ev)?;
        }
        Ok(())
    }

    /// An event when a node's pre-promote hook refused its promotion (with why).
    fn promotion_refused(
        &mut self,
        formation: &str,
        r: &NodeReport,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let text = format!(
            "{} refused its promotion in term {}: {}",
            self.node_name(formation, r.node_id),
            r.promotion_refused_term.unwrap_or_default(),
            r.last_error
                .as_deref()
                .unwrap_or("its pre-promote hook failed")
        );
        self.node_event(formation, r.node_id, Rule::PromotionRefused, text, now_ms)
    }

    /// Records an event about one node (nothing when it is gone).
    fn node_event(
        &mut self,
        formation: &str,
        node_id: NodeId,
        rule: Rule,
        text: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(n) = self
            .durable
            .formations
            .get(formation)
            .and_then(|f| f.nodes.get(&node_id))
            .cloned()
        else {
            return Ok(());
        };
        let ev = self.event(formation, Some(&n), rule, text, now_ms);
        self.record(ev)
    }

    /// A node's name, or its id when it is gone.
    fn node_name(&self, formation: &str, node_id: NodeId) -> String {
        self.durable
            .formations
            .get(formation)
            .and_then(|f| f.nodes.get(&node_id))
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("node {node_id}"))
    }

    /// An event when a permanent slot holds more WAL than `maxSlotWalKeepSize` allows
    /// (`unreserved`), or Postgres invalidated it (`lost`).
    fn permanent_slot_at_risk(
        &mut self,
        formation: &str,
        node_id: NodeId,
        slot: &str,
        status: pgha_api::SlotWalStatus,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let name = self.node_name(formation, node_id);
        let Some(f) = self.durable.formations.get(formation) else {
            return Ok(());
        };
        let limit = f.max_slot_wal_keep_size();
        let on_primary = f
            .nodes
            .get(&node_id)
            .is_some_and(|n| n.goal().is_writable());
        let (rule, text) = match (status, on_primary) {
            (pgha_api::SlotWalStatus::Lost, true) => (
                Rule::PermanentSlotLost,
                format!(
                    "{name}: Postgres invalidated permanent slot {slot}: its consumer fell more than maxSlotWalKeepSize ({limit}) behind and the WAL it needed is removed; the consumer must start over (from a new base backup), and the slot is made again once it is dropped by hand (SELECT pg_drop_replication_slot('{slot}'))"
                ),
            ),
            (pgha_api::SlotWalStatus::Lost, false) => (
                Rule::PermanentSlotLost,
                format!(
                    "{name}: Postgres invalidated this standby's copy of permanent slot {slot} (past maxSlotWalKeepSize {limit}); the agent makes it again at the primary's position while the primary's slot is valid"
                ),
            ),
            _ => (
                Rule::PermanentSlotAtRisk,
                format!(
                    "{name}: permanent slot {slot} holds more WAL than maxSlotWalKeepSize ({limit}) allows: Postgres invalidates it at its next checkpoint unless its consumer catches up"
                ),
            ),
        };
        self.node_event(formation, node_id, rule, text, now_ms)
    }

    /// An event when a node's PGDATA filesystem turns nearly full, or has room again.
    fn disk_space_changed(
        &mut self,
        formation: &str,
        node_id: NodeId,
        d: pgha_api::DiskSpace,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let name = self.node_name(formation, node_id);
        let mib = |b: u64| b >> 20;
        let (rule, text) = if d.is_low() {
            (
                Rule::DiskLow,
                format!(
                    "{}: the filesystem of PGDATA is nearly full ({} MiB free of {} MiB): writes fail once it is full, and Postgres stops when it cannot write WAL",
                    name,
                    mib(d.free_bytes),
                    mib(d.total_bytes)
                ),
            )
        } else {
            (
                Rule::DiskRecovered,
                format!(
                    "{}: the filesystem of PGDATA has room again ({} MiB free of {} MiB)",
                    name,
                    mib(d.free_bytes),
                    mib(d.total_bytes)
                ),
            )
        };
        self.node_event(formation, node_id, rule, text, now_ms)
    }

    /// An event when the primary's WAL archiving starts failing, or works again.
    fn archive_changed(
        &mut self,
        formation: &str,
        node_id: NodeId,
        a: &pgha_api::ArchiveStatus,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let name = self.node_name(formation, node_id);
        let (rule, text) = if a.failing() {
            (
                Rule::ArchiveFailing,
                format!(
                    "{name}: archiving WAL to the backup repository fails (segment {}, {} failures{}): Postgres keeps the WAL and retries, so PGDATA grows until it works, and a restore cannot reach past the last archived segment",
                    a.last_failed_wal.as_deref().unwrap_or("?"),
                    a.failed_count,
                    a.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            )
        } else {
            (
                Rule::ArchiveRecovered,
                format!(
                    "{name}: archiving works again (last archived {})",
                    a.last_archived_wal.as_deref().unwrap_or("?")
                ),
            )
        };
        self.node_event(formation, node_id, rule, text, now_ms)
    }

    /// An event when a node's backup job ends.
    fn backup_ended(
        &mut self,
        formation: &str,
        node_id: NodeId,
        j: &pgha_api::BackupJob,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let name = self.node_name(formation, node_id);
        if j.state == pgha_api::JobState::Succeeded {
            // The schedule may ask again as soon as the next one is due.
            self.scheduled_backup_at.remove(formation);
        }
        let secs = j.elapsed_ms as f64 / 1000.0;
        let (rule, text) = match j.state {
            pgha_api::JobState::Failed => (
                Rule::BackupFailed,
                format!(
                    "{name}: {} backup {} failed after {secs:.1} s: {}",
                    j.kind,
                    j.id,
                    j.message.as_deref().unwrap_or("no reason given")
                ),
            ),
            _ => (
                Rule::BackupSucceeded,
                format!("{name}: {} backup {} done in {secs:.1} s", j.kind, j.id),
            ),
        };
        self.node_event(formation, node_id, rule, text, now_ms)
    }

    /// The primary's Postgres invalidated these slots (past `max_slot_wal_keep_size`):
    /// their standbys lost the WAL they need and are rebuilt from a fresh base backup.
    fn slots_invalidated(
        &mut self,
        formation: &str,
        slots: &[String],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(f) = self.durable.formations.get_mut(formation) else {
            return Ok(());
        };
        let mut hit = vec![];
        for n in f.nodes.values_mut() {
            if slots.contains(&pgha_api::replication_slot_name(n.id)) {
                n.intent.rebuild_epoch += 1;
                hit.push(n.clone());
            }
        }
        if hit.is_empty() {
            return Ok(());
        }
        self.save()?;
        for n in hit {
            self.metrics
                .slots_invalidated
                .get_or_create(&labels(&[("formation", formation), ("node", &n.name)]))
                .inc();
            let max = self
                .durable
                .formations
                .get(formation)
                .map(|f| f.max_slot_wal_keep_size())
                .unwrap_or_default();
            let ev = self.event(
                formation,
                Some(&n),
                Rule::SlotInvalidated,
                format!(
                    "the primary dropped the WAL {} still needed (its slot passed maxSlotWalKeepSize {max}): {} is rebuilt from a fresh base backup",
                    n.name, n.name
                ),
                now_ms,
            );
            self.record(ev)?;
        }
        Ok(())
    }

    /// Applies a plan made from `view` as one transaction: the term, goals and removals
    /// are saved together, then its events (with the inputs the planner looked at) are
    /// written in one append. A failed save leaves nothing of the plan in force.
    pub fn apply_plan(
        &mut self,
        view: &FormationView,
        plan: &Plan,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let formation = view.name.as_str();
        let inputs = decision_inputs(view);
        let mut events = vec![];
        self.waiting
            .insert(formation.to_string(), plan.waiting.clone());
        let was_blocked = self.blocked.insert(formation.to_string(), plan.blocked);
        if plan.blocked.is_some() && was_blocked.flatten() != plan.blocked {
            let reason = plan.blocked.map(|r| r.as_str()).unwrap_or_default();
            let why = plan.waiting.clone().unwrap_or_default();
            let mut ev = self.event(
                formation,
                None,
                Rule::FailoverBlocked,
                format!("{why} (reason: {reason})"),
                now_ms,
            );
            ev.inputs = Some(inputs.clone());
            events.push(ev);
        }
        for (id, cap, why) in &plan.capped_claims {
            let Some(o) = self.observed.get_mut(id) else {
                continue;
            };
            if o.claim_cap.is_none() {
                o.claim_cap = Some((*cap, o.pg.timeline));
                let node = self
                    .durable
                    .formations
                    .get(formation)
                    .and_then(|f| f.nodes.get(id));
                let mut ev = self.event(formation, node, Rule::ClaimCapped, why.clone(), now_ms);
                ev.inputs = Some(inputs.clone());
                events.push(ev);
            }
        }
        let changes = !(plan.decisions.is_empty()
            && plan.new_term.is_none()
            && plan.remove.is_empty()
            && plan.desired_primary_generation.is_none());
        if changes && let Some(f) = self.durable.formations.get_mut(formation) {
            if let Some(t) = plan.new_term {
                f.intent.term = f.intent.term.max(t);
            }
            if let Some(g) = plan.rolling_restart_generation {
                f.intent.rolling_restart_generation = g;
            }
            if let Some(g) = plan.desired_primary_generation {
                f.intent.desired_primary_generation = g;
            }
            // An automatic failover starts: counted against the anti-flapping limit.
            if !view.allow_data_loss
                && plan
                    .decisions
                    .iter()
                    .any(|d| d.rule == Rule::FailoverPromote)
            {
                f.intent.failover_wall_ms.push(crate::clock::wall_ms());
                let excess = f.intent.failover_wall_ms.len().saturating_sub(16);
                f.intent.failover_wall_ms.drain(..excess);
            }
            let removed: Vec<NodeRecord> = plan
                .remove
                .iter()
                .filter_map(|id| f.nodes.remove(id))
                .collect();
            for d in &plan.decisions {
                if let Some(n) = f.nodes.get_mut(&d.node_id) {
                    n.intent.goal = d.goal;
                }
            }
            self.save()?;
            for n in &removed {
                self.observed.remove(&n.id);
                events.push(self.event(
                    formation,
                    Some(n),
                    Rule::NodeRemoved,
                    format!(
                        "{} ({}:{}) left the formation; its PGDATA stays on its VM",
                        n.name, n.host, n.port
                    ),
                    now_ms,
                ));
            }
            // Under the operator's override when it covers the term this plan leaves.
            let allow_data_loss = self
                .durable
                .formations
                .get(formation)
                .is_some_and(|f| f.intent.data_loss_allowed_term == Some(f.intent.term));
            for d in &plan.decisions {
                self.track_promotion(view, d, allow_data_loss, now_ms);
                let node = self.durable.formations[formation].nodes.get(&d.node_id);
                let mut ev = self.event(formation, node, d.rule, d.description.clone(), now_ms);
                ev.inputs = Some(inputs.clone());
                events.push(ev);
            }
        }
        self.record_all(events)
    }

    /// Lifts the data-loss guard for `term` (persisted by the caller's next save); a
    /// promotion already in progress goes on under the override and is counted so.
    pub fn allow_data_loss(&mut self, formation: &str, term: u64) {
        if let Some(f) = self.durable.formations.get_mut(formation) {
            f.intent.data_loss_allowed_term = Some(term);
        }
        if let Some(t) = self.promotions.get_mut(formation) {
            t.reason = promotion::FailoverReason::OperatorAllowDataLoss;
        }
    }
}

/// The permanent slots whose WAL a report says is past `max_slot_wal_keep_size`
/// (`unreserved`) or removed (`lost`), where the last report said otherwise.
fn permanent_slots_turned_at_risk(
    was: &PgObservation,
    now: &PgObservation,
) -> Vec<(String, pgha_api::SlotWalStatus)> {
    use pgha_api::SlotWalStatus::{Lost, Unreserved};
    now.permanent_slots
        .iter()
        .filter_map(|s| {
            let before = was
                .permanent_slots
                .iter()
                .find(|p| p.name == s.name)
                .and_then(|p| p.wal_status);
            match s.wal_status {
                Some(st @ (Unreserved | Lost)) if before != Some(st) => Some((s.name.clone(), st)),
                _ => None,
            }
        })
        .collect()
}
