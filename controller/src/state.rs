//! The controller's live state: the durable records plus what agents and probes observed,
//! and the glue that turns them into a planner view and applies a plan.

use crate::planner::{self, FormationView, NodeView, Plan};
use crate::store::{DurableState, FormationRecord, NodeRecord, Store, StoreError};
use pgha_api::{
    Assignment, Event, FormationStatus, Health, NodeId, NodeReport, NodeStatus, PeerNode,
    PgObservation,
};
use std::collections::{HashMap, VecDeque};

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
    pub last_probe: Option<(u64, bool)>,
    pub last_probe_ok_ms: Option<u64>,
}

/// Counters the metrics page exposes.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub failovers: HashMap<String, u64>,
    pub switchovers: HashMap<String, u64>,
    pub reconcile_errors: u64,
    pub reconciles: u64,
    pub reconcile_seconds_sum: f64,
}

pub struct ControllerState {
    pub durable: DurableState,
    pub observed: HashMap<NodeId, Observed>,
    pub events: VecDeque<Event>,
    pub next_event_id: u64,
    pub waiting: HashMap<String, Option<String>>,
    pub started_ms: u64,
    pub counters: Counters,
    store: Box<dyn Store>,
}

impl ControllerState {
    pub fn open(store: Box<dyn Store>, started_ms: u64) -> Result<Self, StoreError> {
        let durable = store.load()?;
        let all: Vec<Event> = store.load_events()?;
        let next_event_id = all.last().map(|e| e.id + 1).unwrap_or(1);
        let skip = all.len().saturating_sub(EVENTS_IN_MEMORY);
        Ok(ControllerState {
            durable,
            observed: HashMap::new(),
            events: all.into_iter().skip(skip).collect(),
            next_event_id,
            waiting: HashMap::new(),
            started_ms,
            counters: Counters::default(),
            store,
        })
    }

    pub fn save(&mut self) -> Result<(), StoreError> {
        self.store.save(&self.durable)
    }

    /// Records an event durably and in memory.
    pub fn record(&mut self, mut ev: Event) -> Result<(), StoreError> {
        ev.id = self.next_event_id;
        self.next_event_id += 1;
        tracing::info!(formation = %ev.formation, node = ?ev.node_name, rule = %ev.rule, "{}", ev.description);
        self.store.append_events(std::slice::from_ref(&ev))?;
        self.events.push_back(ev);
        while self.events.len() > EVENTS_IN_MEMORY {
            self.events.pop_front();
        }
        Ok(())
    }

    pub fn event(
        &self,
        formation: &str,
        node: Option<&NodeRecord>,
        rule: &str,
        description: String,
        now_ms: u64,
    ) -> Event {
        Event {
            id: 0,
            time_ms: now_ms,
            formation: formation.to_string(),
            node_id: node.map(|n| n.id),
            node_name: node.map(|n| n.name.clone()),
            reported_state: node.map(|n| n.reported),
            assigned_state: node.map(|n| n.goal),
            rule: rule.to_string(),
            description,
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
                    last_probe: o.last_probe,
                    last_probe_ok_ms: o.last_probe_ok_ms,
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
        if plan.decisions.is_empty() && plan.new_term.is_none() {
            return Ok(());
        }
        let Some(f) = self.durable.formations.get_mut(formation) else {
            return Ok(());
        };
        if let Some(t) = plan.new_term {
            f.term = f.term.max(t);
        }
        for d in &plan.decisions {
            if let Some(n) = f.nodes.get_mut(&d.node_id) {
                n.goal = d.goal;
            }
        }
        self.save()?;
        for d in &plan.decisions {
            let node = self.durable.formations[formation]
                .nodes
                .get(&d.node_id)
                .cloned();
            if d.rule == "failover_promote" {
                *self
                    .counters
                    .failovers
                    .entry("primary_failed".into())
                    .or_default() += 1;
            }
            let ev = self.event(
                formation,
                node.as_ref(),
                d.rule,
                d.description.clone(),
                now_ms,
            );
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
        self.counters.reconciles += 1;
        self.counters.reconcile_seconds_sum += started.elapsed().as_secs_f64();
        if res.is_err() {
            self.counters.reconcile_errors += 1;
        }
        res.map(|_| plan)
    }

    /// Takes in an agent's report: updates what we observed and the reported state.
    pub fn take_report(&mut self, r: &NodeReport, now_ms: u64) -> Result<(), StoreError> {
        let o = self.observed.entry(r.node_id).or_default();
        o.last_report_ms = Some(now_ms);
        o.fenced = r.fenced;
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
        o.pg = r.pg.clone();
        let formation = r.formation.clone();
        let changed = {
            let Some(n) = self
                .durable
                .formations
                .get_mut(&formation)
                .and_then(|f| f.nodes.get_mut(&r.node_id))
            else {
                return Ok(());
            };
            if n.reported != r.reported_state {
                n.reported = r.reported_state;
                Some(n.clone())
            } else {
                None
            }
        };
        if let Some(n) = changed {
            self.save()?;
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

    /// The assignment to send back to a node.
    pub fn assignment(&self, formation: &str, node_id: NodeId, now_ms: u64) -> Option<Assignment> {
        let f = self.durable.formations.get(formation)?;
        let n = f.nodes.get(&node_id)?;
        let view = self.view(formation, now_ms)?;
        let peer = |r: &NodeRecord| PeerNode {
            node_id: r.id,
            name: r.name.clone(),
            host: r.host.clone(),
            port: r.port,
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
            fast_poll: f.nodes.values().any(|o| o.goal != o.reported),
            primary_lsn: view
                .nodes
                .iter()
                .find(|v| v.goal.is_writable())
                .and_then(|v| v.pg.lsn),
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
        })
    }
}
