//! What operators and the file ask for: switchover, promotion of a chosen node,
//! rolling restart, maintenance, drops.

use super::*;

#[test]
fn switchover_needs_a_synchronous_primary_and_a_candidate() {
    let f = formation(vec![node(1, Primary), node(2, Secondary)]);
    let (p, from, to) = plan_switchover(&f).unwrap();
    assert_eq!((from, to), (1, 2));
    assert_eq!(goal_of(&p, 1), Some(Draining));
    assert_eq!(goal_of(&p, 2), Some(PreparePromotion));
    assert_eq!(p.new_term, Some(4));

    let f = formation(vec![node(1, WaitPrimary), node(2, Catchingup)]);
    assert!(plan_switchover(&f).unwrap_err().contains("not primary"));
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[1].candidate_priority = 0;
    assert!(
        plan_switchover(&f)
            .unwrap_err()
            .contains("candidate priority")
    );
    let f = formation(vec![node(1, Draining), node(2, PreparePromotion)]);
    assert!(plan_switchover(&f).unwrap_err().contains("in progress"));
}

#[test]
fn a_primary_pending_restart_switches_over_once_its_standbys_restarted() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.generation = 1;
    f.nodes[0].applied_generation = 1;
    f.nodes[1].applied_generation = 1;
    f.nodes[0].pg.pending_restart = vec!["max_connections".into()];
    f.nodes[1].pg.pending_restart = vec!["max_connections".into()];
    let p = plan(&f);
    assert!(p.decisions.is_empty());
    assert!(p.waiting.unwrap().contains("waits for a restart"));
    f.nodes[1].pg.pending_restart.clear();
    // Not before every node applied the current generation.
    f.generation = 2;
    f.nodes[0].applied_generation = 2;
    f.nodes[1].applied_generation = 1;
    assert!(plan(&f).decisions.is_empty());
    f.nodes[1].applied_generation = 2;
    let p = plan(&f);
    assert_eq!(goal_of(&p, 1), Some(Draining));
    assert_eq!(p.rolling_restart_generation, Some(2));
    // Once per generation: after it, what stays pending is reported, not switched again.
    let mut after = f.clone();
    after.rolling_restart_generation = 2;
    let p2 = plan(&after);
    assert!(p2.decisions.is_empty());
    assert!(
        p2.waiting
            .unwrap()
            .contains("restart it when writes may pause")
    );
    assert_eq!(goal_of(&p, 2), Some(PreparePromotion));
    assert!(
        p.decisions[0]
            .description
            .starts_with("rolling restart for max_connections")
    );
}

#[test]
fn nodes_removed_from_the_file_are_dropped_a_primary_after_handing_over() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[1].declared = false;
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(Dropped));
    // Once it stopped and said so, it leaves the formation.
    f.nodes[1].goal = Dropped;
    f.nodes[1].reported = Dropped;
    f.nodes[1].pg.running = false;
    assert_eq!(plan(&f).remove, vec![2]);
    // An undeclared primary hands over first.
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[0].declared = false;
    let p = plan(&f);
    assert_eq!(goal_of(&p, 1), Some(Draining));
    assert_eq!(goal_of(&p, 2), Some(PreparePromotion));
}

#[test]
fn maintenance_takes_a_standby_out_and_a_primary_only_after_handing_over() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[1].maintenance = true;
    assert_eq!(goal_of(&plan(&f), 2), Some(Maintenance));
    // Out of service: the primary stops waiting for it.
    f.nodes[1].goal = Maintenance;
    f.nodes[1].reported = Maintenance;
    f.nodes[1].pg.running = false;
    assert_eq!(goal_of(&plan(&f), 1), Some(WaitPrimary));
    // Back: it rejoins as a standby.
    f.nodes[1].maintenance = false;
    assert_eq!(goal_of(&plan(&f), 2), Some(Catchingup));
    // A primary hands over first, and only to a candidate.
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[0].maintenance = true;
    assert_eq!(goal_of(&plan(&f), 1), Some(Draining));
    f.nodes[1].candidate_priority = 0;
    let p = plan(&f);
    assert!(p.decisions.is_empty());
    assert!(
        p.waiting
            .unwrap()
            .contains("maintenance of primary node_1 refused")
    );
}

#[test]
fn promotion_of_a_chosen_node() {
    let f = three_nodes();
    let (p, from, to) = plan_switchover_to(&f, Some("node_3")).unwrap();
    assert_eq!((from, to), (1, 3));
    assert_eq!(goal_of(&p, 3), Some(PreparePromotion));
    assert!(
        plan_switchover_to(&f, Some("node_1"))
            .unwrap_err()
            .contains("already the primary")
    );
    assert!(
        plan_switchover_to(&f, Some("node_9"))
            .unwrap_err()
            .contains("no node")
    );
    let mut f = f;
    f.nodes[2].candidate_priority = 0;
    assert!(
        plan_switchover_to(&f, Some("node_3"))
            .unwrap_err()
            .contains("priority 0")
    );
    f.nodes[1].goal = Catchingup;
    assert!(
        plan_switchover_to(&f, Some("node_2"))
            .unwrap_err()
            .contains("not a healthy")
    );
}

#[test]
fn a_plan_applied_yields_no_new_decisions() {
    let mut f = formation(vec![node(1, Single), node(2, WaitStandby)]);
    let p = plan(&f);
    for d in &p.decisions {
        let n = f.nodes.iter_mut().find(|n| n.id == d.node_id).unwrap();
        n.goal = d.goal;
    }
    assert!(plan(&f).decisions.is_empty());
}

/// A paused formation gets no decision, not even a failover of a dead primary; resumed,
/// the same view fails over.
#[test]
fn a_paused_formation_is_assigned_nothing() {
    let mut f = three_nodes();
    let now = f.now_ms;
    fail(&mut f, 0, now, 60_000);
    f.paused = true;
    let p = plan(&f);
    assert!(p.decisions.is_empty() && p.new_term.is_none(), "{p:?}");
    assert!(p.waiting.as_deref().is_some_and(|w| w.contains("paused")));
    f.paused = false;
    assert!(
        goal_of(&plan(&f), 1).is_some(),
        "resumed, the dead primary is drained"
    );
}
