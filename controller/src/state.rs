//! The controller's live state: the durable records plus what agents and probes observed,
//! and the glue that turns them into a planner view and applies a plan.

use crate::metrics::{Metrics, labels};
use crate::planner::{self, BlockReason, FormationView, NodeView, Plan};
use crate::store::{DurableState, FormationRecord, NodeRecord, Store, StoreError};
use pgha_api::{
    Assignment, Event, FormationStatus, Health, NodeId, NodeReport, NodeState, NodeStatus,
    PeerNode, PgObservation,
};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// How many events are kept in memory for `show events` (all are on disk).
const EVENTS_IN_MEMORY: usize = 10_000;

/// What the controller observed of one node since it started (not persisted: after a
/// restart the controller waits for fresh reports, DESIGN §5 rule 5).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub last_report_ms: Option<u64>,
    pub pg: PgObservation,
    pub fenced: bool,
    pub last_error: Option<String>,
    pub pg_down_since_ms: Option<u64>,
    pub upstream_lost_at_ms: Option<u64>,
    /// Where the node streamed from, in controller time.
    pub streamed_from_at: Option<planner::StreamLog>,
    pub last_probe: Option<(u64, bool)>,
    pub last_probe_ok_ms: Option<u64>,
    pub applied_generation: u64,
}

/// A promotion in progress, for the failover metrics.
#[derive(Debug, Clone)]
pub struct PromotionTrack {
    pub switchover: bool,
    /// `reason` label of a failover: primary_failed, or operator_allow_data_loss.
    pub reason: &'static str,
    pub candidate: NodeId,
    /// When the old primary was last heard from (failover) or the request came.
    pub failed_since_ms: u64,
    pub started_ms: u64,
    pub fenced_ms: Option<u64>,
}

pub struct ControllerState {
    /// The durable records in force. Changed only under the lock and followed by
    /// [`ControllerState::save`] before the lock is released: a failed save puts back
    /// the last saved copy, so nothing is published (no term, goal or node id) that
    /// the store does not hold.
    pub durable: DurableState,
    /// What the store last confirmed.
    saved: DurableState,
    pub observed: HashMap<NodeId, Observed>,
    pub events: VecDeque<Event>,
    pub next_event_id: u64,
    pub waiting: HashMap<String, Option<String>>,
    pub started_ms: u64,
    pub metrics: Metrics,
    /// Why a needed failover is not happening, per formation.
    pub blocked: HashMap<String, Option<BlockReason>>,
    pub promotions: HashMap<String, PromotionTrack>,
    /// Reports refused for coming from an address that may not speak for the node
    /// (recorded once each as an event).
    pub refused_peers: std::collections::HashSet<(NodeId, std::net::IpAddr)>,
    /// Errors of each rejected formation file, as last reported.
    pub config_errors: BTreeMap<String, Vec<String>>,
    store: Box<dyn Store>,
}

impl ControllerState {
    pub fn open(store: Box<dyn Store>, started_ms: u64) -> Result<Self, StoreError> {
        let durable = store.load()?;
        let all: Vec<Event> = store.load_events()?;
        let next_event_id = all.last().map(|e| e.id + 1).unwrap_or(1);
        let skip = all.len().saturating_sub(EVENTS_IN_MEMORY);
        Ok(ControllerState {
            saved: durable.clone(),
            durable,
            observed: HashMap::new(),
            events: all.into_iter().skip(skip).collect(),
            next_event_id,
            waiting: HashMap::new(),
            started_ms,
            metrics: Metrics::default(),
            blocked: HashMap::new(),
            promotions: HashMap::new(),
            config_errors: BTreeMap::new(),
            refused_peers: Default::default(),
            store,
        })
    }

    /// Persists the durable records, or puts back the last saved copy when the store
    /// fails (disk full, EIO): memory is never ahead of disk once the lock is released.
    pub fn save(&mut self) -> Result<(), StoreError> {
        if self.durable == self.saved {
            return Ok(());
        }
        match off_async_workers(|| self.store.save(&self.durable)) {
            Ok(()) => {
                self.saved = self.durable.clone();
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "the controller store refused a write, nothing of it is in force: {e}"
                );
                self.durable = self.saved.clone();
                Err(e)
            }
        }
    }

    /// Records an event durably and in memory.
    pub fn record(&mut self, mut ev: Event) -> Result<(), StoreError> {
        ev.id = self.next_event_id;
        self.next_event_id += 1;
        tracing::info!(formation = %ev.formation, node = ev.node_name.as_deref().unwrap_or("-"), rule = %ev.rule, "{}", ev.description);
        off_async_workers(|| self.store.append_events(std::slice::from_ref(&ev)))?;
        self.events.push_back(ev);
        while self.events.len() > EVENTS_IN_MEMORY {
            self.events.pop_front();
        }
        Ok(())
    }

    /// An event, stamped with wall time (`_now_ms` is the planner's monotonic now: events
    /// are read beside logs, durations never use their stamp).
    pub fn event(
        &self,
        formation: &str,
        node: Option<&NodeRecord>,
        rule: &str,
        description: String,
        _now_ms: u64,
    ) -> Event {
        Event {
            id: 0,
            // Events are read beside logs: wall time (durations never use it).
            time_ms: crate::clock::wall_ms(),
            formation: formation.to_string(),
            node_id: node.map(|n| n.id),
            node_name: node.map(|n| n.name.clone()),
            reported_state: node.map(|n| n.reported),
            assigned_state: node.map(|n| n.goal),
            rule: rule.to_string(),
            description,
            inputs: None,
        }
    }

    pub fn formation_of(&self, node_id: NodeId) -> Option<&FormationRecord> {
        self.durable
            .formations
            .values()
            .find(|f| f.nodes.contains_key(&node_id))
    }

    /// The planner's view of one formation at `now_ms`.
    pub fn view(&self, formation: &str, now_ms: u64) -> Option<FormationView> {
        let f = self.durable.formations.get(formation)?;
        let nodes = f
            .nodes
            .values()
            .map(|n| {
                let o = self.observed.get(&n.id).cloned().unwrap_or_default();
                NodeView {
                    id: n.id,
                    name: n.name.clone(),
                    goal: n.goal,
                    reported: n.reported,
                    candidate_priority: n.candidate_priority,
                    replication_quorum: n.replication_quorum,
                    last_report_ms: o.last_report_ms,
                    pg: o.pg,
                    pg_down_since_ms: o.pg_down_since_ms,
                    upstream_lost_at_ms: o.upstream_lost_at_ms,
                    host: n.host.clone(),
                    port: n.port,
                    streamed_from_at: o.streamed_from_at.clone(),
                    last_probe: o.last_probe,
                    last_probe_ok_ms: o.last_probe_ok_ms,
                    applied_generation: o.applied_generation,
                    declared: !n.drop_requested
                        && f.spec.as_ref().is_none_or(|s| {
                            !s.declared_nodes_only() || s.nodes.iter().any(|d| d.name == n.name)
                        }),
                    maintenance: n.operator_maintenance
                        || f.spec.as_ref().is_some_and(|s| {
                            s.nodes.iter().any(|d| d.name == n.name && d.maintenance)
                        }),
                }
            })
            .collect();
        Some(FormationView {
            name: f.name.clone(),
            term: f.term,
            number_sync_standbys: f.number_sync_standbys,
            timings: f.timings,
            controller_started_ms: self.started_ms,
            now_ms,
            nodes,
            generation: f.generation,
            rolling_restart_generation: f.rolling_restart_generation,
            allow_data_loss: f.data_loss_allowed_term == Some(f.term),
            sync_floor_lsn: f.sync_floor_lsn,
            desired_primary: f.spec.as_ref().and_then(|s| s.primary.clone()),
            desired_primary_generation: f.desired_primary_generation,
        })
    }

    /// Persists and records a plan: the term first, then goals, then events.
    pub fn apply_plan(
        &mut self,
        formation: &str,
        plan: &Plan,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.waiting
            .insert(formation.to_string(), plan.waiting.clone());
        let was_blocked = self.blocked.insert(formation.to_string(), plan.blocked);
        if plan.blocked.is_some() && was_blocked.flatten() != plan.blocked {
            let reason = plan.blocked.map(|r| r.as_str()).unwrap_or_default();
            let why = plan.waiting.clone().unwrap_or_default();
            let mut ev = self.event(
                formation,
                None,
                "failover_blocked",
                format!("{why} (reason: {reason})"),
                now_ms,
            );
            ev.inputs = self.view(formation, now_ms).map(|v| decision_inputs(&v));
            self.record(ev)?;
        }
        if plan.decisions.is_empty()
            && plan.new_term.is_none()
            && plan.remove.is_empty()
            && plan.desired_primary_generation.is_none()
        {
            return Ok(());
        }
        let Some(f) = self.durable.formations.get_mut(formation) else {
            return Ok(());
        };
        if let Some(t) = plan.new_term {
            f.term = f.term.max(t);
        }
        if let Some(g) = plan.rolling_restart_generation {
            f.rolling_restart_generation = g;
        }
        if let Some(g) = plan.desired_primary_generation {
            f.desired_primary_generation = g;
        }
        let removed: Vec<NodeRecord> = plan
            .remove
            .iter()
            .filter_map(|id| f.nodes.remove(id))
            .collect();
        for d in &plan.decisions {
            if let Some(n) = f.nodes.get_mut(&d.node_id) {
                n.goal = d.goal;
            }
        }
        self.save()?;
        let inputs = self.view(formation, now_ms).map(|v| decision_inputs(&v));
        for n in &removed {
            self.observed.remove(&n.id);
            let ev = self.event(
                formation,
                Some(n),
                "node_removed",
                format!(
                    "{} ({}:{}) left the formation; its PGDATA stays on its VM",
                    n.name, n.host, n.port
                ),
                now_ms,
            );
            self.record(ev)?;
        }
        for d in &plan.decisions {
            let node = self.durable.formations[formation]
                .nodes
                .get(&d.node_id)
                .cloned();
            self.track_promotion(formation, d, now_ms);
            let mut ev = self.event(
                formation,
                node.as_ref(),
                d.rule,
                d.description.clone(),
                now_ms,
            );
            ev.inputs = inputs.clone();
            self.record(ev)?;
        }
        Ok(())
    }

    /// Lifts the data-loss guard for `term` (persisted by the caller's next save); a
    /// promotion already in progress goes on under the override and is counted so.
    pub fn allow_data_loss(&mut self, formation: &str, term: u64) {
        if let Some(f) = self.durable.formations.get_mut(formation) {
            f.data_loss_allowed_term = Some(term);
        }
        if let Some(t) = self.promotions.get_mut(formation) {
            t.reason = "operator_allow_data_loss";
        }
    }

    /// Failover and switchover metrics follow the decisions of a promotion.
    fn track_promotion(&mut self, formation: &str, d: &planner::Decision, now_ms: u64) {
        let fl = |extra: &[(&str, &str)]| {
            let mut l = labels(&[("formation", formation)]);
            l.extend(labels(extra));
            l
        };
        match d.rule {
            "failover_promote" | "switchover_promote" => {
                let switchover = d.rule == "switchover_promote";
                let view = self.view(formation, now_ms);
                let reason = if view.as_ref().is_some_and(|v| v.allow_data_loss) {
                    "operator_allow_data_loss"
                } else {
                    "primary_failed"
                };
                let old_last = view
                    .and_then(|v| {
                        v.nodes
                            .iter()
                            .find(|n| n.goal == NodeState::Draining)
                            .and_then(|n| n.last_report_ms)
                    })
                    .unwrap_or(now_ms);
                if switchover {
                    self.metrics
                        .switchovers
                        .get_or_create(&fl(&[("result", "started")]))
                        .inc();
                } else {
                    let l = fl(&[("reason", reason), ("result", "started")]);
                    self.metrics.failovers.get_or_create(&l).inc();
                }
                self.promotions.insert(
                    formation.to_string(),
                    PromotionTrack {
                        switchover,
                        reason,
                        candidate: d.node_id,
                        failed_since_ms: if switchover {
                            now_ms
                        } else {
                            old_last.min(now_ms)
                        },
                        started_ms: now_ms,
                        fenced_ms: None,
                    },
                );
            }
            "stop_replication_to_wait_primary" => {
                if let Some(t) = self.promotions.get_mut(formation) {
                    t.fenced_ms = Some(now_ms);
                }
            }
            "promotion_reelected" if d.goal.is_standby() && d.goal != NodeState::Secondary => {
                if let Some(t) = self.promotions.get_mut(formation) {
                    t.candidate = d.node_id;
                }
            }
            "promotion_aborted" => {
                if let Some(t) = self.promotions.remove(formation) {
                    if t.switchover {
                        let l = fl(&[("result", "aborted")]);
                        self.metrics.switchovers.get_or_create(&l).inc();
                    } else {
                        let l = fl(&[("reason", t.reason), ("result", "aborted")]);
                        self.metrics.failovers.get_or_create(&l).inc();
                    }
                }
            }
            _ => {}
        }
    }

    /// A promoted node reported writable: the promotion is done.
    fn finish_promotion(&mut self, formation: &str, node: NodeId, now_ms: u64) {
        if self.promotions.get(formation).map(|t| t.candidate) != Some(node) {
            return;
        }
        let Some(t) = self.promotions.remove(formation) else {
            return;
        };
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
        let fl = labels(&[("formation", formation)]);
        let with = |extra: &[(&str, &str)]| {
            let mut l = fl.clone();
            l.extend(labels(extra));
            l
        };
        if t.switchover {
            let l = with(&[("result", "succeeded")]);
            self.metrics.switchovers.get_or_create(&l).inc();
            return;
        }
        let l = with(&[("reason", t.reason), ("result", "succeeded")]);
        self.metrics.failovers.get_or_create(&l).inc();
        self.metrics
            .failover_duration
            .get_or_create(&fl)
            .observe(secs(t.started_ms, now_ms));
        let fenced = t.fenced_ms.unwrap_or(now_ms);
        for (phase, a, b) in [
            ("detection", t.failed_since_ms, t.started_ms),
            ("fencing", t.started_ms, fenced),
            ("promotion", fenced, now_ms),
        ] {
            let l = with(&[("phase", phase)]);
            self.metrics
                .failover_phase
                .get_or_create(&l)
                .observe(secs(a, b));
        }
    }

    /// Takes in a scan of the formations directory: accepted files become the desired
    /// state of their formation (a new generation when anything changed), rejected files
    /// are reported once per distinct error and leave the last good version in force,
    /// formations whose file disappeared are left running and marked orphaned.
    pub fn apply_desired(
        &mut self,
        scan: crate::desired::Scan,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut changed = false;
        let mut events = vec![];
        for (file, errs) in &scan.rejected {
            let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            if self.config_errors.get(file) == Some(&lines) {
                continue;
            }
            for l in &lines {
                tracing::error!(file = %file, "formation file rejected: {l}");
            }
            self.metrics
                .config_errors
                .get_or_create(&labels(&[("file", file)]))
                .inc();
            let formation = self
                .durable
                .formations
                .values()
                .find(|f| f.source_file.as_deref() == Some(file))
                .map(|f| f.name.clone())
                .unwrap_or_else(|| "-".into());
            let more = match lines.len() {
                0 | 1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            let first = lines.first().cloned().unwrap_or_default();
            events.push(self.event(
                &formation,
                None,
                "config_rejected",
                format!("{file} rejected, the last good version stays in force: {first}{more}"),
                now_ms,
            ));
            self.config_errors.insert(file.clone(), lines);
        }
        self.config_errors
            .retain(|f, _| scan.rejected.contains_key(f));
        for (name, (file, doc)) in &scan.formations {
            let rec = self
                .durable
                .formations
                .entry(name.clone())
                .or_insert_with(|| {
                    FormationRecord::new(name, doc.spec.dbname.as_deref().unwrap_or("postgres"))
                });
            // An accepted file sets the secret (a rejected one, or one whose secret file
            // cannot be read, keeps the last good secret: it never opens the formation).
            let secret = scan.secrets.get(name).cloned();
            if rec.join_secret != secret {
                rec.join_secret = secret;
                changed = true;
            }
            if rec.spec.as_ref() == Some(&doc.spec)
                && rec.source_file.as_deref() == Some(file.as_str())
                && !rec.orphaned
            {
                continue;
            }
            let notes = apply_spec(rec, &doc.spec);
            rec.spec = Some(doc.spec.clone());
            rec.source_file = Some(file.clone());
            rec.orphaned = false;
            rec.generation += 1;
            let generation = rec.generation;
            changed = true;
            let what = if notes.is_empty() {
                String::new()
            } else {
                format!(": {}", notes.join("; "))
            };
            events.push(self.event(
                name,
                None,
                "desired_state",
                format!("generation {generation} from {file}{what}"),
                now_ms,
            ));
        }
        for f in self.durable.formations.values_mut() {
            let Some(file) = f.source_file.clone() else {
                continue;
            };
            let gone = !scan.formations.contains_key(&f.name) && !scan.rejected.contains_key(&file);
            if gone && !f.orphaned {
                f.orphaned = true;
                changed = true;
                events.push(Event {
                    id: 0,
                    time_ms: crate::clock::wall_ms(),
                    formation: f.name.clone(),
                    node_id: None,
                    node_name: None,
                    reported_state: None,
                    assigned_state: None,
                    rule: "formation_orphaned".into(),
                    description: format!(
                        "{file} was removed: the formation keeps running as it is (orphaned); nothing is destroyed"
                    ),
                    inputs: None,
                });
            }
        }
        if changed {
            self.save()?;
        }
        for ev in events {
            self.record(ev)?;
        }
        Ok(())
    }

    /// Runs the planner for one formation and applies the result.
    pub fn reconcile(&mut self, formation: &str, now_ms: u64) -> Result<Plan, StoreError> {
        let started = std::time::Instant::now();
        let Some(view) = self.view(formation, now_ms) else {
            return Ok(Plan::default());
        };
        let plan = planner::plan(&view);
        let res = self.apply_plan(formation, &plan, now_ms);
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
        o.last_error = r.last_error.clone();
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
        o.pg = r.pg.clone();
        let formation = r.formation.clone();
        if !newly_lost.is_empty() {
            self.slots_invalidated(&formation, &newly_lost, now_ms)?;
        }
        let mut term_moved = None;
        let changed = {
            let Some(f) = self.durable.formations.get_mut(&formation) else {
                return Ok(());
            };
            // An agent that saw a later term than ours (the store was restored from an
            // older copy): move past it before planning, so no term number is issued
            // twice for different promotions.
            if r.term > f.term {
                term_moved = Some((f.term, r.term));
                f.term = r.term;
            }
            let Some(n) = f.nodes.get_mut(&r.node_id) else {
                return Ok(());
            };
            if n.reported != r.reported_state {
                n.reported = r.reported_state;
                let n = n.clone();
                if n.reported == NodeState::Primary && n.goal == NodeState::Primary {
                    // Everything written before synchronous replication was in force
                    // may have been acknowledged without a standby: a failover needs it.
                    f.sync_floor_lsn = r.pg.lsn.unwrap_or_default();
                }
                Some(n)
            } else {
                None
            }
        };
        if let Some((ours, theirs)) = term_moved {
            self.save()?;
            let ev = self.event(
                &formation,
                None,
                "term_catch_up",
                format!(
                    "node {} reported term {theirs}, later than the stored term {ours} (was the controller's store restored?): moved to term {theirs}",
                    r.node_id
                ),
                now_ms,
            );
            self.record(ev)?;
        }
        if let Some(n) = changed {
            self.save()?;
            if n.reported.is_writable() {
                self.finish_promotion(&formation, n.id, now_ms);
            }
            let ev = self.event(
                &formation,
                Some(&n),
                "report",
                format!("{} reached {}", n.name, n.reported),
                now_ms,
            );
            self.record(ev)?;
        }
        Ok(())
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
                n.rebuild_epoch += 1;
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
                .and_then(|f| f.spec.as_ref())
                .and_then(|s| s.postgresql.max_slot_wal_keep_size.clone())
                .unwrap_or_else(|| pgha_api::DEFAULT_MAX_SLOT_WAL_KEEP_SIZE.to_string());
            let ev = self.event(
                formation,
                Some(&n),
                "slot_invalidated",
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

    /// The assignment to send back to a node.
    pub fn assignment(&self, formation: &str, node_id: NodeId, now_ms: u64) -> Option<Assignment> {
        let f = self.durable.formations.get(formation)?;
        let n = f.nodes.get(&node_id)?;
        let view = self.view(formation, now_ms)?;
        let keeps_slot = |id: NodeId| view.nodes.iter().any(|v| v.id == id && view.keeps_slot(v));
        let peer = |r: &NodeRecord| PeerNode {
            node_id: r.id,
            name: r.name.clone(),
            host: r.host.clone(),
            port: r.port,
            slot: keeps_slot(r.id),
        };
        let upstream = view
            .nodes
            .iter()
            .find(|v| v.id == node_id)
            .and_then(|v| view.upstream_of(v))
            .and_then(|u| f.nodes.get(&u.id))
            .map(peer);
        let ssn = view
            .nodes
            .iter()
            .find(|v| v.id == node_id)
            .map(|v| view.synchronous_standby_names(v))
            .unwrap_or_default();
        Some(Assignment {
            node_id,
            goal: n.goal,
            term: f.term,
            upstream,
            peers: f
                .nodes
                .values()
                .filter(|o| o.id != n.id)
                .map(peer)
                .collect(),
            synchronous_standby_names: ssn,
            dbname: f.dbname.clone(),
            timings: f.timings,
            // Also while this node waits on another's step (a demoted or new node waits
            // for the primary to make its slot and pg_hba entry): the decision that
            // follows comes from the primary's report, and this node should hear of it
            // at once, not at its next report interval.
            fast_poll: f.nodes.values().any(|o| o.goal != o.reported)
                || matches!(n.goal, NodeState::Demoted | NodeState::WaitStandby),
            primary_lsn: view
                .nodes
                .iter()
                .find(|v| v.goal.is_writable())
                .and_then(|v| v.pg.lsn),
            parameters: f
                .spec
                .as_ref()
                .map(|s| {
                    s.postgresql
                        .parameters
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            generation: f.generation,
            max_slot_wal_keep_size: f
                .spec
                .as_ref()
                .and_then(|s| s.postgresql.max_slot_wal_keep_size.clone())
                .unwrap_or_else(|| pgha_api::DEFAULT_MAX_SLOT_WAL_KEEP_SIZE.to_string()),
            rebuild_epoch: n.rebuild_epoch,
        })
    }

    pub fn health(&self, node_id: NodeId, view: &FormationView) -> Health {
        let Some(n) = view.nodes.iter().find(|n| n.id == node_id) else {
            return Health::Unknown;
        };
        if n.last_report_ms.is_none() && n.last_probe.is_none() {
            return Health::Unknown;
        }
        let probe_ok = matches!(n.last_probe, Some((_, true)));
        let down = view.is_failed(n)
            || (!view.is_reporting(n) && !probe_ok)
            || (view.is_reporting(n) && !n.pg.running);
        if down { Health::Bad } else { Health::Good }
    }

    pub fn status(&self, formation: &str, now_ms: u64) -> Option<FormationStatus> {
        let f = self.durable.formations.get(formation)?;
        let view = self.view(formation, now_ms)?;
        let nodes =
            f.nodes
                .values()
                .map(|n| {
                    let o = self.observed.get(&n.id).cloned().unwrap_or_default();
                    NodeStatus {
                        node_id: n.id,
                        name: n.name.clone(),
                        host: n.host.clone(),
                        port: n.port,
                        reported_state: n.reported,
                        assigned_state: n.goal,
                        timeline: o.pg.timeline,
                        lsn: o.pg.lsn,
                        health: self.health(n.id, &view),
                        pg_running: if o.last_report_ms.is_some_and(|t| {
                            now_ms.saturating_sub(t) < f.timings.failure_timeout_ms
                        }) {
                            o.pg.running
                        } else {
                            matches!(o.last_probe, Some((_, true)))
                        },
                        candidate_priority: n.candidate_priority,
                        replication_quorum: n.replication_quorum,
                        report_age_ms: o.last_report_ms.map(|t| now_ms.saturating_sub(t)),
                        fenced: o.fenced,
                        last_error: o.last_error.clone(),
                        applied_generation: o.applied_generation,
                        pending_restart: o.pg.pending_restart.clone(),
                    }
                })
                .collect();
        let summary = self
            .waiting
            .get(formation)
            .cloned()
            .flatten()
            .unwrap_or_default();
        Some(FormationStatus {
            name: f.name.clone(),
            dbname: f.dbname.clone(),
            term: f.term,
            number_sync_standbys: f.number_sync_standbys,
            nodes,
            summary,
            generation: f.generation,
            source_file: f.source_file.clone(),
            orphaned: f.orphaned,
            config_errors: f
                .source_file
                .as_ref()
                .and_then(|file| self.config_errors.get(file))
                .cloned()
                .unwrap_or_default(),
            spec: f.spec.clone(),
        })
    }
}

/// Runs blocking store I/O (an fsync can take long on a busy disk) without holding up
/// an async worker: on a multi-threaded runtime the worker's other tasks move elsewhere
/// meanwhile (`block_in_place`); outside a runtime, or on a current-thread one, it just
/// runs.
pub fn off_async_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// What the planner looked at, recorded with each decision's event: every node's goal,
/// report, LSN, health and priority, and the term.
pub fn decision_inputs(v: &FormationView) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = v
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name,
                "assigned": n.goal,
                "reported": n.reported,
                "lsn": n.pg.lsn,
                "timeline": n.pg.timeline,
                "pg_running": n.pg.running,
                "report_age_ms": n.last_report_ms.map(|t| v.now_ms.saturating_sub(t)),
                "probe_ok": n.last_probe.map(|(_, ok)| ok),
                "failed": v.is_failed(n),
                "candidate_priority": n.candidate_priority,
                "replication_quorum": n.replication_quorum,
            })
        })
        .collect();
    serde_json::json!({ "term": v.term, "nodes": nodes })
}

/// Applies an accepted desired spec to a formation's record; returns what changed.
fn apply_spec(rec: &mut FormationRecord, spec: &pgha_api::formation::FormationSpec) -> Vec<String> {
    let mut notes = vec![];
    if let Some(db) = &spec.dbname
        && *db != rec.dbname
    {
        if rec.nodes.is_empty() {
            rec.dbname = db.clone();
            notes.push(format!("dbname {db}"));
        } else {
            notes.push(format!(
                "dbname stays {} (a running formation's database is not renamed; {db} ignored)",
                rec.dbname
            ));
        }
    }
    if rec.number_sync_standbys != spec.number_sync_standbys {
        notes.push(format!(
            "numberSyncStandbys {} -> {}",
            rec.number_sync_standbys, spec.number_sync_standbys
        ));
        rec.number_sync_standbys = spec.number_sync_standbys;
    }
    let t = &spec.timings;
    let timings = pgha_api::Timings {
        report_interval_ms: t.report_interval_ms,
        failure_timeout_ms: t.failure_timeout_ms,
        lease_ms: t.lease_ms,
        ..rec.timings
    };
    if timings != rec.timings {
        notes.push("timings".into());
        rec.timings = timings;
    }
    for n in rec.nodes.values_mut() {
        let Some(d) = spec.nodes.iter().find(|d| d.name == n.name) else {
            continue;
        };
        let prio = d.candidate_priority.min(100) as u8;
        if n.candidate_priority != prio {
            notes.push(format!(
                "{} candidatePriority {} -> {prio}",
                n.name, n.candidate_priority
            ));
            n.candidate_priority = prio;
        }
        if n.replication_quorum != d.replication_quorum {
            notes.push(format!(
                "{} replicationQuorum {}",
                n.name, d.replication_quorum
            ));
            n.replication_quorum = d.replication_quorum;
        }
    }
    let old_params = rec.spec.as_ref().map(|s| &s.postgresql.parameters);
    if old_params.is_some_and(|p| *p != spec.postgresql.parameters)
        || (old_params.is_none() && !spec.postgresql.parameters.is_empty())
    {
        let names: Vec<String> = spec.postgresql.parameters.keys().cloned().collect();
        notes.push(format!("postgresql parameters: {}", names.join(", ")));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Scan;
    use crate::store::FileStore;
    use pgha_api::validate::parse_formation;

    fn state(dir: &std::path::Path) -> ControllerState {
        ControllerState::open(Box::new(FileStore::new(dir)), 1000).unwrap()
    }

    fn scan_of(files: &[(&str, &str)]) -> Scan {
        let mut scan = Scan::default();
        for (file, text) in files {
            match parse_formation(file, text.as_bytes()) {
                Ok(doc) => {
                    scan.formations
                        .insert(doc.metadata.name.clone(), (file.to_string(), doc));
                }
                Err(e) => {
                    scan.rejected.insert(file.to_string(), e);
                }
            }
        }
        scan
    }

    const GOOD: &str = "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: orders\nspec:\n  dbname: orders\n  numberSyncStandbys: 0\n  admission:\n    open: true\n";

    #[test]
    fn accepted_rejected_and_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        st.apply_desired(scan_of(&[("orders.yaml", GOOD)]), 2000)
            .unwrap();
        assert_eq!(st.durable.formations["orders"].generation, 1);
        // The same file again: no new generation, no event.
        let events = st.events.len();
        st.apply_desired(scan_of(&[("orders.yaml", GOOD)]), 2100)
            .unwrap();
        assert_eq!(st.durable.formations["orders"].generation, 1);
        assert_eq!(st.events.len(), events);
        // A broken version: rejected once (one event however often it is seen), the last
        // good version stays in force.
        let broken = scan_of(&[("orders.yaml", "spec: [")]);
        st.apply_desired(broken, 2200).unwrap();
        st.apply_desired(scan_of(&[("orders.yaml", "spec: [")]), 2300)
            .unwrap();
        let f = &st.durable.formations["orders"];
        assert_eq!(f.generation, 1);
        assert_eq!(f.spec.as_ref().unwrap().dbname.as_deref(), Some("orders"));
        let rejected: Vec<_> = st
            .events
            .iter()
            .filter(|e| e.rule == "config_rejected")
            .collect();
        assert_eq!(rejected.len(), 1);
        assert!(
            rejected[0].description.contains("orders.yaml:1:"),
            "{}",
            rejected[0].description
        );
        assert!(!f.orphaned, "a rejected file must not orphan its formation");
        // The file removed: the formation stays, orphaned, and says so once.
        st.apply_desired(Scan::default(), 2400).unwrap();
        st.apply_desired(Scan::default(), 2500).unwrap();
        assert!(st.durable.formations["orders"].orphaned);
        assert_eq!(
            st.events
                .iter()
                .filter(|e| e.rule == "formation_orphaned")
                .count(),
            1
        );
        // Everything survives a restart of the controller.
        let reopened = state(dir.path());
        assert!(reopened.durable.formations["orders"].orphaned);
        assert_eq!(reopened.durable.formations["orders"].generation, 1);
        // The file back: a new generation, no longer orphaned.
        st.apply_desired(scan_of(&[("orders.yaml", GOOD)]), 2600)
            .unwrap();
        assert!(!st.durable.formations["orders"].orphaned);
        assert_eq!(st.durable.formations["orders"].generation, 2);
    }

    /// Admission fails closed: the secret persists with the last good spec, so neither a
    /// restart nor a rejected, removed or secret-less file opens the formation.
    #[test]
    fn admission_never_opens_by_itself() {
        use crate::store::AdmissionRule;
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("orders.secret");
        std::fs::write(&secret_file, "s3cret\n").unwrap();
        let formations = dir.path().join("formations");
        std::fs::create_dir(&formations).unwrap();
        let with_secret = GOOD.replace(
            "    open: true\n",
            &format!("    joinSecretFile: {}\n", secret_file.display()),
        );
        let mut st = state(dir.path());
        let rule = |st: &ControllerState| match st.durable.formations["orders"].admission() {
            AdmissionRule::Open => "open".to_string(),
            AdmissionRule::Secret(s) => s.to_string(),
            AdmissionRule::Closed => "closed".to_string(),
        };
        std::fs::write(formations.join("orders.yaml"), &with_secret).unwrap();
        st.apply_desired(crate::desired::scan(&formations), 2000)
            .unwrap();
        assert_eq!(rule(&st), "s3cret");
        // The secret file becomes unreadable: the file is rejected, the secret stays.
        std::fs::remove_file(&secret_file).unwrap();
        st.apply_desired(crate::desired::scan(&formations), 2100)
            .unwrap();
        assert_eq!(rule(&st), "s3cret");
        // A file that names no secret and does not say open is rejected too.
        let bare = GOOD.replace("  admission:\n    open: true\n", "");
        std::fs::write(formations.join("orders.yaml"), &bare).unwrap();
        st.apply_desired(crate::desired::scan(&formations), 2200)
            .unwrap();
        assert_eq!(rule(&st), "s3cret");
        // After a restart (the secret is no longer in memory only) and with the file gone.
        std::fs::remove_file(formations.join("orders.yaml")).unwrap();
        let mut reopened = state(dir.path());
        reopened
            .apply_desired(crate::desired::scan(&formations), 2300)
            .unwrap();
        assert_eq!(rule(&reopened), "s3cret");
        // Only a file that says so opens it.
        std::fs::write(formations.join("orders.yaml"), GOOD).unwrap();
        reopened
            .apply_desired(crate::desired::scan(&formations), 2400)
            .unwrap();
        assert_eq!(rule(&reopened), "open");
        // A formation record without any accepted spec admits no one.
        let rec = crate::store::FormationRecord::new("x", "db");
        assert_eq!(rec.admission(), AdmissionRule::Closed);
    }

    /// A store that refuses writes while `fail` is set (disk full, EIO).
    struct FlakyStore {
        inner: FileStore,
        fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Store for FlakyStore {
        fn load(&self) -> Result<DurableState, StoreError> {
            self.inner.load()
        }
        fn save(&mut self, state: &DurableState) -> Result<(), StoreError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Io {
                    path: "state.json".into(),
                    source: std::io::Error::other("No space left on device"),
                });
            }
            self.inner.save(state)
        }
        fn append_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
            self.inner.append_events(events)
        }
        fn load_events(&self) -> Result<Vec<Event>, StoreError> {
            self.inner.load_events()
        }
    }

    fn report(node_id: NodeId, reported: NodeState, term: u64) -> NodeReport {
        NodeReport {
            node_id,
            formation: "orders".into(),
            reported_state: reported,
            term,
            pg: PgObservation::default(),
            fenced: false,
            last_error: None,
            applied_generation: 0,
        }
    }

    fn one_node_formation(store: Box<dyn Store>) -> ControllerState {
        let mut st = ControllerState::open(store, 1000).unwrap();
        st.apply_desired(scan_of(&[("orders.yaml", GOOD)]), 1000)
            .unwrap();
        let f = st.durable.formations.get_mut("orders").unwrap();
        f.nodes.insert(
            1,
            NodeRecord {
                id: 1,
                name: "node_a".into(),
                host: "10.0.0.1".into(),
                port: 5432,
                goal: NodeState::Single,
                reported: NodeState::Init,
                candidate_priority: 50,
                replication_quorum: true,
                operator_maintenance: false,
                drop_requested: false,
                rebuild_epoch: 0,
            },
        );
        st.durable.next_node_id = 2;
        st.save().unwrap();
        st
    }

    /// A failed save leaves memory equal to what the store holds: no reported state,
    /// term or goal is in force that a restart would not find.
    #[test]
    fn a_failed_save_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut st = one_node_formation(Box::new(FlakyStore {
            inner: FileStore::new(dir.path()),
            fail: fail.clone(),
        }));
        let snapshot = st.durable.clone();
        let events = st.events.len();
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(
            st.take_report(&report(1, NodeState::Single, 1), 2000)
                .is_err()
        );
        assert_eq!(st.durable, snapshot);
        let plan = Plan {
            decisions: vec![planner::Decision {
                node_id: 1,
                goal: NodeState::DemoteTimeout,
                rule: "test",
                description: "test".into(),
            }],
            new_term: Some(9),
            ..Plan::default()
        };
        assert!(st.apply_plan("orders", &plan, 2000).is_err());
        assert_eq!(st.durable, snapshot);
        assert_eq!(st.assignment("orders", 1, 2000).unwrap().term, 1);
        assert_eq!(st.events.len(), events, "no event for what was not stored");
        // The disk is back: the same report goes through.
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        st.take_report(&report(1, NodeState::Single, 1), 2100)
            .unwrap();
        assert_eq!(
            st.durable.formations["orders"].nodes[&1].reported,
            NodeState::Single
        );
        assert_eq!(state(dir.path()).durable, st.durable);
    }

    /// An agent that saw a later term than the store holds (restored from an older
    /// copy) moves the formation past it before anything is planned.
    #[test]
    fn a_later_term_reported_by_an_agent_is_never_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
        st.take_report(&report(1, NodeState::Single, 7), 2000)
            .unwrap();
        assert_eq!(st.durable.formations["orders"].term, 7);
        assert!(st.events.iter().any(|e| e.rule == "term_catch_up"));
        assert_eq!(state(dir.path()).durable.formations["orders"].term, 7);
    }

    /// An NTP step of the wall clock does not age fresh reports: the planner's now is
    /// monotonic. (Stamped with the stepped wall clock, as before, the primary looked
    /// failed the moment the clock jumped.)
    #[test]
    fn a_wall_clock_jump_after_fresh_reports_fails_nothing_over() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::clock::Clock::anchored_at(crate::clock::wall_ms());
        let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
        {
            let f = st.durable.formations.get_mut("orders").unwrap();
            let a = f.nodes.get_mut(&1).unwrap();
            a.goal = NodeState::Primary;
            a.reported = NodeState::Primary;
            let mut b = a.clone();
            b.id = 2;
            b.name = "node_b".into();
            b.host = "10.0.0.2".into();
            b.goal = NodeState::Secondary;
            b.reported = NodeState::Secondary;
            f.nodes.insert(2, b);
        }
        st.save().unwrap();
        let t0 = clock.now_ms();
        let mut up = report(1, NodeState::Primary, 1);
        up.pg.running = true;
        let mut sb = report(2, NodeState::Secondary, 1);
        sb.pg.running = true;
        sb.pg.upstream_streaming = true;
        st.take_report(&up, t0).unwrap();
        st.take_report(&sb, t0).unwrap();
        // The wall clock steps 60 s forward; the controller's clock does not follow.
        let stepped_wall = crate::clock::wall_ms() + 60_000;
        let now = clock.now_ms();
        assert!(
            now < t0 + 5_000,
            "the monotonic clock moved with the wall clock"
        );
        let plan = st.reconcile("orders", now).unwrap();
        assert!(plan.decisions.is_empty(), "{:?}", plan.decisions);
        let view = st.view("orders", now).unwrap();
        assert!(!view.is_failed(&view.nodes[0]));
        // What a wall-clock now would have judged.
        let stepped = st.view("orders", stepped_wall).unwrap();
        assert!(stepped.is_failed(&stepped.nodes[0]));
    }

    /// A slot the primary's Postgres invalidated: its node is asked to rebuild once (an
    /// event and a metric), however often the primary reports it before dropping it.
    #[test]
    fn an_invalidated_slot_rebuilds_its_node_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
        {
            let f = st.durable.formations.get_mut("orders").unwrap();
            let mut b = f.nodes[&1].clone();
            b.id = 2;
            b.name = "node_b".into();
            b.goal = NodeState::Secondary;
            f.nodes.insert(2, b);
        }
        st.save().unwrap();
        let mut r = report(1, NodeState::Single, 1);
        r.pg.lost_slots = vec![pgha_api::replication_slot_name(2)];
        st.take_report(&r, 2000).unwrap();
        st.take_report(&r, 3000).unwrap();
        assert_eq!(st.durable.formations["orders"].nodes[&2].rebuild_epoch, 1);
        assert_eq!(st.assignment("orders", 2, 3000).unwrap().rebuild_epoch, 1);
        let evs = st
            .events
            .iter()
            .filter(|e| e.rule == "slot_invalidated")
            .count();
        assert_eq!(evs, 1);
        let text = crate::metrics::render(&st, 3000);
        assert!(
            text.contains(
                "pgha_replication_slots_invalidated_total{formation=\"orders\",node=\"node_b\"} 1"
            ),
            "{text}"
        );
        // The primary keeps a slot for a streaming peer, not for one in maintenance.
        let slot_of_b_with = |st: &mut ControllerState, goal: NodeState| {
            let b = st.durable.formations.get_mut("orders").unwrap();
            b.nodes.get_mut(&2).unwrap().goal = goal;
            st.assignment("orders", 1, 3000).unwrap().peers[0].slot
        };
        assert!(slot_of_b_with(&mut st, NodeState::Secondary));
        assert!(!slot_of_b_with(&mut st, NodeState::Maintenance));
        assert!(slot_of_b_with(&mut st, NodeState::Secondary));
        // Dropped and made anew, then lost again: a second rebuild.
        r.pg.lost_slots.clear();
        st.take_report(&r, 4000).unwrap();
        r.pg.lost_slots = vec![pgha_api::replication_slot_name(2)];
        st.take_report(&r, 5000).unwrap();
        assert_eq!(st.durable.formations["orders"].nodes[&2].rebuild_epoch, 2);
    }
}
