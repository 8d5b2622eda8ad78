//! Planner tests: one table case per rule, then property tests that drive a simulated
//! formation (agents that reach their goals, crash, freeze or get cut off, a primary
//! that fences itself by lease, WAL that advances and is acknowledged synchronously)
//! through random event sequences and check the safety rules of docs/src/design.md §5.

use super::*;
use NodeState::*;
use pgha_api::{Lsn, PgObservation, Timings};

mod elections;
mod operator;
mod properties;
mod rules;

const START: u64 = 1_000_000;

fn node(id: NodeId, goal: NodeState) -> NodeView {
    NodeView {
        id,
        name: format!("node_{id}"),
        goal,
        reported: goal,
        candidate_priority: 50,
        replication_quorum: true,
        last_report_ms: Some(START + 10_000),
        pg: PgObservation {
            running: !goal.is_stopped(),
            initialized: true,
            in_recovery: Some(goal.is_standby()),
            timeline: Some(1),
            lsn: Some(Lsn(1000)),
            prepared_for: vec![],
            upstream_streaming: goal.streams_from_upstream(),
            ..PgObservation::default()
        },
        pg_down_since_ms: None,
        upstream_lost_at_ms: None,
        host: "127.0.0.1".into(),
        port: 5400 + id as u16,
        streamed_from_at: None,
        last_probe: Some((START + 10_000, true)),
        last_probe_ok_ms: Some(START + 10_000),
        applied_generation: 0,
        declared: true,
        maintenance: false,
        promotion_refused: false,
        replicate_from: None,
        progress_at_ms: Some(START),
        claimed_lsn: None,
    }
}

fn formation(nodes: Vec<NodeView>) -> FormationView {
    FormationView {
        name: "default".into(),
        term: 3,
        number_sync_standbys: 0,
        timings: Timings::default(),
        controller_started_ms: START,
        now_ms: START + 10_000,
        nodes,
        generation: 0,
        rolling_restart_generation: 0,
        allow_data_loss: false,
        sync_floor_lsn: Lsn(0),
        desired_primary: None,
        desired_primary_generation: 0,
        declared_major: None,
        backup_declared: false,
        paused: false,
        flapping: Flapping::default(),
    }
}

/// Node 1 primary, nodes 2 and 3 secondaries.
fn three_nodes() -> FormationView {
    formation(vec![
        node(1, Primary),
        node(2, Secondary),
        node(3, Secondary),
    ])
}

fn goal_of(p: &Plan, id: NodeId) -> Option<NodeState> {
    p.decisions.iter().find(|d| d.node_id == id).map(|d| d.goal)
}

/// Node `i` stops reporting and answering probes `ago` ms before `now`; whoever streamed
/// from it no longer does (a dead node feeds nobody).
fn fail(f: &mut FormationView, i: usize, now: u64, ago: u64) {
    let id = f.nodes[i].id;
    for j in 0..f.nodes.len() {
        if j != i && f.upstream_of(&f.nodes[j]).is_some_and(|u| u.id == id) {
            f.nodes[j].pg.upstream_streaming = false;
        }
    }
    let n = &mut f.nodes[i];
    n.last_report_ms = Some(now - ago);
    n.last_probe = Some((now, false));
    n.last_probe_ok_ms = Some(now - ago);
}

/// Applies a plan's goals to the view, as the controller would persist them.
fn apply_goals(f: &mut FormationView, p: &Plan) {
    if let Some(t) = p.new_term {
        f.term = t;
    }
    for d in &p.decisions {
        let n = f.nodes.iter_mut().find(|n| n.id == d.node_id).unwrap();
        n.goal = d.goal;
    }
}

/// Every node reports it reached its goal; standbys stream from their upstream.
fn reach_goals(f: &mut FormationView) {
    for i in 0..f.nodes.len() {
        let g = f.nodes[i].goal;
        f.nodes[i].reported = g;
        let up = f.upstream_of(&f.nodes[i]).map(|u| u.id);
        let n = &mut f.nodes[i];
        n.pg.upstream_streaming = up.is_some();
        if up.is_none() && g.is_standby() {
            n.upstream_lost_at_ms.get_or_insert(f.now_ms);
        }
    }
}
