//! Read models: the planner's view, the assignment sent to a node, the formation's
//! status for `show state` and metrics.

use super::{ControllerState, FormationRecord, FormationView, NodeRecord, NodeView};
use pgha_api::Assignment;
use pgha_api::FormationStatus;
use pgha_api::Health;
use pgha_api::NodeId;
use pgha_api::NodeState;
use pgha_api::NodeStatus;
use pgha_api::PeerNode;

impl ControllerState {
    /// The planner's view of one formation at `now_ms`.
    pub fn view(&self, formation: &str, now_ms: u64) -> Option<FormationView> {
        let f = self.durable.formations.get(formation)?;
        let nodes = f
            .nodes
            .values()
            .map(|n| {
                let mut o = self.observed.get(&n.id).cloned().unwrap_or_default();
                // A capped claim: the planner sees the cap, and the claim beside it.
                let claimed_lsn = match o.claim_cap {
                    Some((cap, _)) if o.pg.lsn.is_some_and(|l| l > cap) => o.pg.lsn.replace(cap),
                    _ => None,
                };
                NodeView {
                    id: n.id,
                    name: n.name.clone(),
                    goal: n.intent.goal,
                    reported: n.observed.reported,
                    candidate_priority: f.candidate_priority(n),
                    replication_quorum: f.replication_quorum(n),
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
                    declared: f.keeps(n),
                    maintenance: f.in_maintenance(n),
                    promotion_refused: o.promotion_refused_term == Some(f.intent.term),
                    replicate_from: f.replicate_from(n),
                    progress_at_ms: o.progress_at_ms,
                    claimed_lsn,
                }
            })
            .collect();
        Some(FormationView {
            name: f.name.clone(),
            term: f.intent.term,
            number_sync_standbys: f.number_sync_standbys(),
            timings: f.timings(),
            controller_started_ms: self.started_ms,
            now_ms,
            nodes,
            generation: f.desired.generation,
            rolling_restart_generation: f.intent.rolling_restart_generation,
            allow_data_loss: f.intent.data_loss_allowed_term == Some(f.intent.term),
            sync_floor_lsn: f.observed.sync_floor_lsn,
            desired_primary: f.spec().and_then(|s| s.primary.clone()),
            declared_major: f.declared_major(),
            backup_declared: f.backup().is_some(),
            desired_primary_generation: f.intent.desired_primary_generation,
            paused: f.paused(),
            flapping: f.flapping(crate::clock::wall_ms()),
        })
    }

    /// The `/metrics` page: every formation's status and blocked reason, and the counters.
    pub fn metrics_page(&self, now_ms: u64) -> String {
        for name in self.durable.formations.keys() {
            self.metrics.start_at_zero(name);
        }
        let readings: Vec<crate::metrics::FormationReading> = self
            .durable
            .formations
            .keys()
            .filter_map(|name| {
                Some(crate::metrics::FormationReading {
                    status: self.status(name, now_ms)?,
                    blocked: self.blocked.get(name).copied().flatten(),
                })
            })
            .collect();
        crate::metrics::render(&readings, &self.metrics)
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
            goal: n.intent.goal,
            term: f.intent.term,
            upstream,
            upstream_slot: view
                .nodes
                .iter()
                .find(|v| v.id == node_id)
                .is_none_or(|v| view.cascade_upstream(v).is_none()),
            peers: f
                .nodes
                .values()
                .filter(|o| o.id != n.id)
                .map(peer)
                .collect(),
            synchronous_standby_names: ssn,
            dbname: f.dbname.clone(),
            timings: f.timings(),
            // Also while this node waits on another's step (a demoted or new node waits
            // for the primary to make its slot and pg_hba entry): the decision that
            // follows comes from the primary's report, and this node should hear of it
            // at once, not at its next report interval.
            fast_poll: f.nodes.values().any(|o| o.goal() != o.reported())
                || matches!(n.intent.goal, NodeState::Demoted | NodeState::WaitStandby),
            primary_lsn: view
                .nodes
                .iter()
                .find(|v| v.goal.is_writable())
                .and_then(|v| v.pg.lsn),
            parameters: f
                .spec()
                .map(|s| {
                    s.postgresql
                        .parameters
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            generation: f.desired.generation,
            max_slot_wal_keep_size: f.max_slot_wal_keep_size(),
            rebuild_epoch: n.intent.rebuild_epoch,
            node_token: None,
            restart_epoch: n.intent.restart_epoch,
            no_load_balance: f.no_load_balance(n),
            backup: f.backup().filter(|_| view.backup_refusal().is_none()),
            backup_request: n.intent.backup_request,
            permanent_slots: permanent_slots(f, &view),
            standby_of: f.standby_of().and_then(pgha_api::StandbySource::from_spec),
            major: view.wanted_major(),
            synchronized_standby_slots: if n.intent.goal.is_writable() {
                view.failover_candidate_slots()
            } else {
                vec![]
            },
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
                        reported_state: n.observed.reported,
                        assigned_state: n.intent.goal,
                        timeline: o.pg.timeline,
                        lsn: o.pg.lsn,
                        major: o.pg.major,
                        health: self.health(n.id, &view),
                        pg_running: if o.last_report_ms.is_some_and(|t| {
                            now_ms.saturating_sub(t) < f.timings().failure_timeout_ms
                        }) {
                            o.pg.running
                        } else {
                            matches!(o.last_probe, Some((_, true)))
                        },
                        candidate_priority: f.candidate_priority(n),
                        replication_quorum: f.replication_quorum(n),
                        report_age_ms: o.last_report_ms.map(|t| now_ms.saturating_sub(t)),
                        fenced: o.fenced,
                        last_error: o.last_error.clone(),
                        disk: o.pg.disk,
                        archive: o.pg.archive.clone(),
                        applied_generation: o.applied_generation,
                        pending_restart: o.pg.pending_restart.clone(),
                        auth_method: o.auth_method.clone(),
                        rebuilding: n.intent.rebuild_epoch > o.rebuilt_epoch,
                        restarting: n.intent.restart_epoch > o.restarted_epoch,
                        restart_scheduled_ms: n.intent.restart_at_ms,
                        // The logical slots' state files stay between the agents and
                        // the controller: never in status output.
                        permanent_slots: o
                            .pg
                            .permanent_slots
                            .iter()
                            .cloned()
                            .map(|mut s| {
                                if let Some(l) = s.logical.as_mut() {
                                    l.state = None;
                                }
                                s
                            })
                            .collect(),
                        in_recovery: o.pg.in_recovery,
                        upstream: view
                            .nodes
                            .iter()
                            .find(|v| v.id == n.id)
                            .and_then(|v| view.upstream_of(v))
                            .map(|u| u.name.clone()),
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
            term: f.intent.term,
            number_sync_standbys: f.number_sync_standbys(),
            nodes,
            summary,
            generation: f.desired.generation,
            source_file: f.desired.source_file.clone(),
            orphaned: f.desired.orphaned,
            config_errors: f
                .desired
                .source_file
                .as_ref()
                .and_then(|file| self.config_errors.get(file))
                .cloned()
                .unwrap_or_default(),
            spec: f.desired.spec.clone(),
            paused: f.paused(),
            leader: self.leader_url.clone(),
            standby_of: f.standby_of().map(|s| s.hosts.join(",")),
            promoted_over_file: f.promoted_over_the_file(),
        })
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

/// The file's permanent slots, each with the position the primary reports for it (none
/// while no node is writable or the primary has not made it yet); a logical one with
/// the primary's consumer position and slot state file, from which a standby makes its
/// copy.
fn permanent_slots(f: &FormationRecord, view: &FormationView) -> Vec<pgha_api::SlotPosition> {
    let primary = view.nodes.iter().find(|v| v.goal.is_writable());
    f.permanent_slots()
        .into_iter()
        .map(|(name, spec)| {
            let at_primary =
                primary.and_then(|p| p.pg.permanent_slots.iter().find(|s| s.name == name));
            let primary_logical = at_primary.and_then(|s| s.logical.as_ref());
            let logical = match (spec.kind, spec.database, spec.plugin) {
                (pgha_api::formation::SlotKind::Logical, Some(database), Some(plugin)) => {
                    // A slot of the same name made for another database or plugin is
                    // not the file's: no standby copies it.
                    let same =
                        primary_logical.filter(|l| l.database == database && l.plugin == plugin);
                    Some(pgha_api::LogicalSlot {
                        confirmed_flush_lsn: same.and_then(|l| l.confirmed_flush_lsn),
                        state: same.and_then(|l| l.state.clone()),
                        synced: false,
                        database,
                        plugin,
                    })
                }
                _ => None,
            };
            pgha_api::SlotPosition {
                restart_lsn: at_primary.and_then(|s| s.restart_lsn),
                wal_status: at_primary.and_then(|s| s.wal_status),
                logical,
                name,
            }
        })
        .collect()
}
