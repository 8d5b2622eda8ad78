//! Planned changes: switchovers (to the best or a chosen node), the formation file's
//! `primary`, maintenance, drops, and rolling restarts for settings that need one.

use super::{CATCHUP_THRESHOLD_BYTES, FormationView, NodeView, Plan, Rule};
use pgha_api::NodeId;
use pgha_api::NodeState;
/// Starts a switchover: the healthy primary drains, the best secondary is promoted.
/// Refuses with a one-line reason when the formation is not ready for one.
pub fn plan_switchover(f: &FormationView) -> Result<(Plan, NodeId, NodeId), String> {
    plan_switchover_to(f, None)
}

/// A switchover to a chosen node (`pgha perform promotion --name N`), or to the best
/// candidate when `target` is None.
pub fn plan_switchover_to(
    f: &FormationView,
    target: Option<&str>,
) -> Result<(Plan, NodeId, NodeId), String> {
    if let Some(t) = target {
        let n = f
            .nodes
            .iter()
            .find(|n| n.name == t)
            .ok_or_else(|| format!("no node {t:?} in formation {:?}", f.name))?;
        if n.goal.is_writable() {
            return Err(format!("{t} is already the primary"));
        }
        if n.candidate_priority == 0 {
            return Err(format!(
                "{t} has candidate priority 0 and is never promoted"
            ));
        }
    }
    if f.promoting().is_some() || f.demoting().is_some() {
        return Err("a failover or switchover is already in progress".into());
    }
    let pr = f
        .stable_writable()
        .ok_or("no stable primary: wait until show state lists a primary")?;
    if pr.goal != NodeState::Primary {
        return Err(format!(
            "{} is {}, not primary: switchover needs a caught-up synchronous secondary",
            pr.name, pr.goal
        ));
    }
    if !f.is_healthy(pr) {
        return Err(format!("primary {} is not healthy", pr.name));
    }
    let primary_lsn = pr.pg.lsn.unwrap_or_default();
    let mut candidates: Vec<&NodeView> = f
        .healthy_quorum_secondaries()
        .into_iter()
        .filter(|n| n.candidate_priority > 0 && f.is_healthy(n))
        .filter(|n| {
            n.pg.lsn
                .is_some_and(|l| primary_lsn.bytes_ahead_of(l) <= CATCHUP_THRESHOLD_BYTES)
        })
        .collect();
    candidates.sort_by_key(|n| {
        (
            std::cmp::Reverse(n.candidate_priority),
            std::cmp::Reverse(n.pg.lsn.unwrap_or_default()),
            n.id,
        )
    });
    if let Some(t) = target {
        candidates.retain(|n| n.name == t);
        if candidates.is_empty() {
            return Err(format!(
                "{t} is not a healthy, caught-up secondary: wait until show state lists it as secondary"
            ));
        }
    }
    let winner = candidates
        .first()
        .ok_or("no healthy, caught-up secondary with candidate priority > 0")?;
    let mut p = Plan {
        new_term: Some(super::next_term(f.term).ok_or(super::TERM_EXHAUSTED)?),
        ..Plan::default()
    };
    let why = format!("switchover requested: {} -> {}", pr.name, winner.name);
    p.assign(
        pr,
        NodeState::Draining,
        Rule::SwitchoverDrainPrimary,
        why.clone(),
    );
    p.assign(
        winner,
        NodeState::PreparePromotion,
        Rule::SwitchoverPromote,
        why,
    );
    Ok((p, pr.id, winner.id))
}

/// `spec.primary` in the formation file: a switchover to the named node once it is a
/// healthy caught-up secondary, once per generation of the file.
pub(super) fn plan_desired_primary(f: &FormationView, p: &mut Plan) {
    let Some(want) = f.desired_primary.as_deref() else {
        return;
    };
    if f.desired_primary_generation >= f.generation
        || f.promoting().is_some()
        || f.demoting().is_some()
    {
        return;
    }
    let Some(pr) = f.stable_writable() else {
        return;
    };
    if pr.name == want {
        p.desired_primary_generation = Some(f.generation);
        return;
    }
    if !f.nodes.iter().any(|n| n.name == want) {
        p.wait(format!(
            "the formation file names {want} as primary; it has not joined yet"
        ));
        return;
    }
    match plan_switchover_to(f, Some(want)) {
        Ok((plan, _, _)) => {
            for d in plan.decisions {
                let why = format!(
                    "the formation file names {want} as primary: {}",
                    d.description
                );
                let node = f.nodes.iter().find(|n| n.id == d.node_id);
                if let Some(node) = node {
                    p.assign(node, d.goal, d.rule, why);
                }
            }
            p.new_term = plan.new_term;
            p.desired_primary_generation = Some(f.generation);
        }
        Err(why) => p.wait(format!(
            "the formation file names {want} as primary; not yet: {why}"
        )),
    }
}

/// A switchover that has to come first (the primary's maintenance, its drop, a rolling
/// restart): the switchover's plan, each decision's description after `why`; or why no
/// switchover can happen now.
fn hand_over_first(f: &FormationView, why: &str) -> Result<Plan, String> {
    let (mut plan, _, _) = plan_switchover(f)?;
    for d in &mut plan.decisions {
        d.description = format!("{why}{}", d.description);
    }
    Ok(plan)
}

/// Maintenance from the formation file: a standby stops and stays out of service; a
/// primary hands over first (only when a candidate exists); back out, a node rejoins as
/// a standby (catchingup).
pub(super) fn plan_maintenance(f: &FormationView, p: &mut Plan) {
    if f.promoting().is_some() || f.demoting().is_some() {
        return;
    }
    for n in &f.nodes {
        match (n.maintenance, n.goal) {
            (true, NodeState::Secondary | NodeState::Catchingup | NodeState::WaitStandby) => p
                .assign(
                    n,
                    NodeState::Maintenance,
                    Rule::MaintenanceStart,
                    format!(
                        "{} enters maintenance: Postgres stopped, out of service",
                        n.name
                    ),
                ),
            (true, g) if g.is_writable() && f.nodes.len() > 1 => match hand_over_first(
                f,
                &format!("{} enters maintenance: hand over first; ", n.name),
            ) {
                Ok(plan) if p.decisions.is_empty() => {
                    *p = plan;
                    return;
                }
                Ok(_) => {}
                Err(why) => p.wait(format!(
                    "maintenance of primary {} refused: no candidate to hand over to ({why})",
                    n.name
                )),
            },
            (false, NodeState::Maintenance) => {
                if f.stable_writable().is_some() {
                    p.assign(
                        n,
                        NodeState::Catchingup,
                        Rule::MaintenanceEnd,
                        format!("{} leaves maintenance: rejoin as a standby", n.name),
                    );
                } else {
                    p.wait(format!(
                        "{} leaves maintenance once there is a primary to follow",
                        n.name
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Nodes removed from the formation file are drained and dropped: a standby stops
/// Postgres (its PGDATA stays on disk) and leaves the formation; a primary first hands
/// over in a switchover. A node that is gone while being dropped is removed at once.
pub(super) fn plan_drop(f: &FormationView, p: &mut Plan) {
    if f.promoting().is_some() || f.demoting().is_some() {
        return;
    }
    for n in &f.nodes {
        if n.goal == NodeState::Dropped {
            if (n.reported == NodeState::Dropped && !n.pg.running) || f.is_failed(n) {
                p.remove.push(n.id);
            }
            continue;
        }
        if n.declared {
            continue;
        }
        if n.goal.is_writable() {
            if f.nodes.len() == 1 {
                p.assign(
                    n,
                    NodeState::Dropped,
                    Rule::UndeclaredNodeDropped,
                    format!("{} is no longer in the formation file: dropped", n.name),
                );
                continue;
            }
            match hand_over_first(
                f,
                &format!(
                    "{} is no longer in the formation file: hand over before dropping it; ",
                    n.name
                ),
            ) {
                Ok(plan) if p.decisions.is_empty() => {
                    *p = plan;
                    return;
                }
                Ok(_) => {}
                Err(why) => p.wait(format!(
                    "{} is no longer in the formation file but cannot hand over ({why})",
                    n.name
                )),
            }
            continue;
        }
        p.assign(
            n,
            NodeState::Dropped,
            Rule::UndeclaredNodeDropped,
            format!(
                "{} is no longer in the formation file: stopped and dropped (PGDATA kept)",
                n.name
            ),
        );
    }
}

/// Settings that need a restart reach a primary last: its standbys restart themselves
/// (agent side); once they all run the new settings, the primary hands over to one of
/// them in a switchover and restarts as a standby.
pub(super) fn plan_rolling_restart(f: &FormationView, p: &mut Plan) {
    let Some(pr) = f.stable_writable() else {
        return;
    };
    if pr.goal != NodeState::Primary || pr.pg.pending_restart.is_empty() {
        return;
    }
    let others: Vec<&NodeView> = f.nodes.iter().filter(|n| n.id != pr.id).collect();
    // Every node must run the current settings first: a standby that has not applied
    // them yet would need its own restart after becoming primary.
    let ready = f.nodes.iter().all(|n| n.applied_generation >= f.generation)
        && others.iter().all(|n| {
            n.goal == NodeState::Secondary
                && n.reported == NodeState::Secondary
                && f.is_healthy(n)
                && n.pg.pending_restart.is_empty()
        });
    if f.rolling_restart_generation >= f.generation {
        // One switchover per generation: what is still pending after it (a decrease of
        // a setting a standby may not run below its primary) needs a restart in place.
        p.wait(format!(
            "{} needs a restart for {}: restart it when writes may pause",
            pr.name,
            pr.pg.pending_restart.join(", ")
        ));
        return;
    }
    if !ready {
        p.wait(format!(
            "{} waits for a restart ({}) until its standbys run the new settings",
            pr.name,
            pr.pg.pending_restart.join(", ")
        ));
        return;
    }
    match hand_over_first(
        f,
        &format!("rolling restart for {}: ", pr.pg.pending_restart.join(", ")),
    ) {
        Ok(mut plan) => {
            plan.rolling_restart_generation = Some(f.generation);
            *p = plan;
        }
        Err(why) => p.wait(format!(
            "{} needs a restart for {} but cannot hand over ({why}): restart it when writes may pause",
            pr.name,
            pr.pg.pending_restart.join(", ")
        )),
    }
}
