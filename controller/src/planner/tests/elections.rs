//! Elections: priorities, fast-forward, forced failover with data loss, leases and the
//! old primary's last WAL, slots, rejoin.

use super::*;

#[test]
fn the_highest_priority_wins_and_fast_forwards_from_a_more_advanced_standby() {
    // pg_auto_failover's 90/90/70: node 3 (70) is the most advanced, node 2 (90) wins.
    let mut f = three_nodes();
    f.nodes[0].candidate_priority = 90;
    f.nodes[1].candidate_priority = 90;
    f.nodes[2].candidate_priority = 70;
    f.nodes[1].pg.lsn = Some(Lsn(1000));
    f.nodes[2].pg.lsn = Some(Lsn(5000));
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 1), Some(Draining));
    assert_eq!(goal_of(&p, 2), Some(FastForward), "{p:?}");
    assert!(p.decisions[1].description.contains("from node_3"), "{p:?}");
    apply_goals(&mut f, &p);
    reach_goals(&mut f);
    // It streams from node 3, not from the failed primary, and waits until it has it all.
    assert_eq!(f.upstream_of(&f.nodes[1]).map(|u| u.id), Some(3));
    assert_eq!(f.upstream_of(&f.nodes[2]).map(|u| u.id), None);
    let p = plan(&f);
    assert!(p.decisions.is_empty(), "{p:?}");
    assert!(p.waiting.unwrap().contains("4000 bytes to go"));
    f.nodes[1].pg.lsn = Some(Lsn(5000));
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(PreparePromotion), "{p:?}");
    apply_goals(&mut f, &p);
    reach_goals(&mut f);
    assert_eq!(goal_of(&plan(&f), 2), Some(StopReplication));
}

#[test]
fn a_priority_zero_standby_is_a_source_never_a_candidate() {
    let mut f = three_nodes();
    f.nodes[2].candidate_priority = 0;
    f.nodes[2].pg.lsn = Some(Lsn(9000));
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(FastForward));
    assert_eq!(goal_of(&p, 3), None);
    // The source dies mid-way: it is a quorum standby that may hold acknowledged
    // commits, so the promotion blocks rather than go on without them.
    apply_goals(&mut f, &p);
    reach_goals(&mut f);
    fail(&mut f, 2, now, 5000);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), None, "{p:?}");
    assert_eq!(p.blocked, Some(BlockReason::QuorumNotReporting));
    // Not a quorum member: what it had is lost, the candidate goes on.
    f.nodes[2].replication_quorum = false;
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(PreparePromotion), "{p:?}");
}

#[test]
fn a_candidate_overtaken_during_fast_forward_gives_way() {
    // Same priority: the most advanced wins, no fast-forward needed.
    let mut f = three_nodes();
    f.nodes[2].pg.lsn = Some(Lsn(3000));
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 3), Some(PreparePromotion));
    assert_eq!(goal_of(&p, 2), None);
    // Node 2 in fast_forward while node 3 (same priority) is ahead: re-elected.
    let mut f = formation(vec![
        node(1, Draining),
        node(2, FastForward),
        node(3, Secondary),
    ]);
    f.nodes[2].pg.lsn = Some(Lsn(3000));
    fail(&mut f, 0, now, 5000);
    f.nodes[0].reported = Primary;
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(Secondary), "{p:?}");
    assert_eq!(goal_of(&p, 3), Some(PreparePromotion));
}

#[test]
fn an_operator_may_allow_data_loss_when_the_guard_blocks() {
    // Primary and a quorum standby die together: node 3 may lack commits node 2 acked.
    let mut f = three_nodes();
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    fail(&mut f, 1, now, 5000);
    let p = plan(&f);
    assert_eq!(p.blocked, Some(BlockReason::QuorumNotReporting));
    assert_eq!(goal_of(&p, 3), None);
    let (p, term) = plan_forced_failover(&f).unwrap();
    assert_eq!(term, 4);
    assert_eq!(goal_of(&p, 3), Some(PreparePromotion));
    apply_goals(&mut f, &p);
    f.allow_data_loss = true;
    reach_goals(&mut f);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 3), Some(StopReplication), "{p:?}");
    apply_goals(&mut f, &p);
    reach_goals(&mut f);
    // The silent standby cannot say it stopped streaming from the old primary; the
    // operator's override takes it as down once the lease ran out.
    f.now_ms += f.timings.lease_ms + f.timings.lease_margin_ms;
    let (now, ago) = (
        f.now_ms,
        5000 + f.timings.lease_ms + f.timings.lease_margin_ms,
    );
    fail(&mut f, 0, now, ago);
    let (now, ago) = (
        f.now_ms,
        5000 + f.timings.lease_ms + f.timings.lease_margin_ms,
    );
    fail(&mut f, 1, now, ago);
    f.nodes[2].last_report_ms = Some(f.now_ms);
    f.nodes[2].last_probe_ok_ms = Some(f.now_ms);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 3), Some(WaitPrimary), "{p:?}");
    // Without the override the same view waits for the silent standby.
    f.allow_data_loss = false;
    assert_eq!(goal_of(&plan(&f), 3), None);
}

#[test]
fn a_forced_failover_is_refused_with_a_healthy_primary_or_no_candidate() {
    let f = formation(vec![node(1, Primary), node(2, Secondary)]);
    let err = plan_forced_failover(&f).unwrap_err();
    assert!(err.contains("not failed"), "{err}");
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[1].candidate_priority = 0;
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    let err = plan_forced_failover(&f).unwrap_err();
    assert!(err.contains("candidate priority 0"), "{err}");
}

#[test]
fn the_last_node_left_runs_as_single() {
    let f = formation(vec![node(2, WaitPrimary)]);
    assert_eq!(goal_of(&plan(&f), 2), Some(Single));
    let f = formation(vec![node(2, Primary)]);
    assert_eq!(goal_of(&plan(&f), 2), Some(Single));
}

#[test]
fn a_demoted_old_primary_does_not_hold_a_failover() {
    // Cascading failures: node 1 failed and was demoted, node 2 took over and failed
    // too. Node 1 never streamed from node 2, so its silence does not block node 3.
    let mut f = formation(vec![node(1, Demoted), node(2, Primary), node(3, Secondary)]);
    let now = f.now_ms;
    fail(&mut f, 0, now, 60_000);
    f.nodes[0].reported = Primary;
    fail(&mut f, 1, now, 5000);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 3), Some(PreparePromotion), "{p:?}");
    apply_goals(&mut f, &p);
    reach_goals(&mut f);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 3), Some(StopReplication), "{p:?}");
    apply_goals(&mut f, &p);
    reach_goals(&mut f);
    // Nor does it hold node 2's lease.
    f.now_ms += f.timings.lease_ms + f.timings.lease_margin_ms;
    f.nodes[2].last_report_ms = Some(f.now_ms);
    f.nodes[2].last_probe_ok_ms = Some(f.now_ms);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 3), Some(WaitPrimary), "{p:?}");
}

#[test]
fn the_primary_the_file_names_is_switched_to_once_per_generation() {
    let mut f = three_nodes();
    f.generation = 4;
    f.desired_primary = Some("node_3".into());
    let p = plan(&f);
    assert_eq!(goal_of(&p, 1), Some(Draining));
    assert_eq!(goal_of(&p, 3), Some(PreparePromotion));
    assert_eq!(p.new_term, Some(4));
    assert_eq!(p.desired_primary_generation, Some(4));
    assert!(
        p.decisions[1]
            .description
            .contains("names node_3 as primary")
    );
    // Carried out for this generation: a later failover is not undone.
    f.desired_primary_generation = 4;
    assert!(plan(&f).decisions.is_empty());
    // Already the primary: recorded, nothing to do.
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.generation = 2;
    f.desired_primary = Some("node_1".into());
    let p = plan(&f);
    assert!(p.decisions.is_empty());
    assert_eq!(p.desired_primary_generation, Some(2));
    // Not caught up yet: it waits (and says why), and does not record the generation.
    let mut f = formation(vec![node(1, WaitPrimary), node(2, Catchingup)]);
    f.nodes[0].pg.lsn = Some(Lsn(100 << 20));
    f.generation = 2;
    f.desired_primary = Some("node_2".into());
    let p = plan(&f);
    assert!(p.decisions.is_empty());
    assert_eq!(p.desired_primary_generation, None);
    assert!(p.waiting.is_some());
}

#[test]
fn async_primary_fails_over_only_to_a_standby_with_all_its_wal() {
    let mut f = formation(vec![node(1, WaitPrimary), node(2, Secondary)]);
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    f.nodes[0].pg.lsn = Some(Lsn(2000));
    assert!(plan(&f).decisions.is_empty());
    f.nodes[1].pg.lsn = Some(Lsn(2000));
    assert_eq!(goal_of(&plan(&f), 2), Some(PreparePromotion));
}

#[test]
fn switchover_waits_for_the_old_primary_final_wal_before_cutting_replication() {
    let mut old = node(1, Draining);
    old.pg.running = false;
    old.pg.lsn = Some(Lsn(5000));
    let cand = node(2, PreparePromotion);
    let p = plan(&formation(vec![old.clone(), cand.clone()]));
    assert_eq!(goal_of(&p, 2), None);
    assert!(p.waiting.unwrap().contains("replays the last WAL"));
    let mut cand = cand;
    cand.pg.lsn = Some(Lsn(5000));
    let p = plan(&formation(vec![old, cand]));
    assert_eq!(goal_of(&p, 2), Some(StopReplication));
}

#[test]
fn old_primary_that_is_still_running_holds_the_promotion() {
    let mut old = node(1, Draining);
    old.reported = Primary;
    let p = plan(&formation(vec![old, node(2, PreparePromotion)]));
    assert!(p.decisions.is_empty());
}

#[test]
fn promotion_of_a_cut_standby_waits_for_ack_or_certain_lease_expiry() {
    // Old primary failed: no ack possible.
    let mut f = formation(vec![node(1, Draining), node(2, StopReplication)]);
    f.nodes[0].reported = Primary;
    f.nodes[0].pg.running = true;
    let now = f.now_ms;
    fail(&mut f, 0, now, 3000);
    f.nodes[1].pg.upstream_streaming = false;
    f.nodes[1].upstream_lost_at_ms = Some(now - 3000);
    let p = plan(&f);
    assert!(
        p.decisions.is_empty(),
        "lease not yet certainly over: {p:?}"
    );
    // Past lease + margin for both the controller contact and the standby link.
    f.now_ms = now + 600;
    f.nodes[1].last_report_ms = Some(now + 600);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(WaitPrimary));
    assert_eq!(goal_of(&p, 1), Some(Demoted));
    // A standby still streaming from the old primary keeps its lease alive.
    f.nodes[1].pg.upstream_streaming = true;
    assert!(plan(&f).decisions.is_empty());
}

#[test]
fn streaming_from_a_standby_does_not_hold_the_old_primary_lease() {
    let mut f = formation(vec![
        node(1, Draining),
        node(2, StopReplication),
        node(3, Secondary),
    ]);
    let now = f.now_ms;
    let wait = f.timings.lease_ms + f.timings.lease_margin_ms;
    fail(&mut f, 0, now, wait + 1000);
    f.nodes[0].reported = Primary;
    let old = f.nodes[0].clone();
    let (h1, p1) = (old.host.clone(), old.port);
    let (h3, p3) = (f.nodes[2].host.clone(), f.nodes[2].port);
    // Node 2 streamed from node 3 (fast_forward) just now, from node 1 long ago; node 3
    // cut replication from node 1 long ago.
    f.nodes[1].pg.upstream_streaming = false;
    f.nodes[1].upstream_lost_at_ms = Some(now - 100);
    f.nodes[1].streamed_from_at = Some(StreamLog {
        watching_since_ms: now - 60_000,
        contacts: vec![(h3, p3, now - 100), (h1.clone(), p1, now - wait - 500)],
    });
    f.nodes[2].pg.upstream_streaming = false;
    f.nodes[2].upstream_lost_at_ms = Some(now - wait - 500);
    assert!(f.lease_certainly_expired(&old));
    // Without the per-address log, the recent streaming counts against the lease.
    let mut g = f.clone();
    g.nodes[1].streamed_from_at = None;
    assert!(!g.lease_certainly_expired(&old));
    // Streaming from the old primary recently does count.
    let mut g = f.clone();
    g.nodes[1].streamed_from_at.as_mut().unwrap().contacts[1].2 = now - 100;
    assert!(!g.lease_certainly_expired(&old));
    // An agent that has watched for less than the lease cannot vouch for the time
    // before it started.
    let mut g = f.clone();
    g.nodes[1].streamed_from_at = Some(StreamLog {
        watching_since_ms: now - 1000,
        contacts: vec![],
    });
    assert!(!g.lease_certainly_expired(&old));
}

#[test]
fn slots_are_kept_for_nodes_that_stream_or_are_joining() {
    let mut f = formation(vec![
        node(1, Primary),
        node(2, Secondary),
        node(3, Secondary),
    ]);
    let now = f.now_ms;
    assert!(f.keeps_slot(&f.nodes[1]));
    // Failed: no slot (its WAL would pile up on the primary)...
    fail(&mut f, 1, now, 60_000);
    assert!(!f.keeps_slot(&f.nodes[1]));
    // ... unless it is still taking its base backup (no reports meanwhile).
    f.nodes[1].reported = WaitStandby;
    assert!(f.keeps_slot(&f.nodes[1]));
    f.nodes[2].goal = Maintenance;
    assert!(!f.keeps_slot(&f.nodes[2]));
}

/// The standbys' word that they stopped streaming is not enough: a primary whose
/// Postgres answered the controller's own probe within the window may still be
/// writable (a spoofed or stale standby report cannot get a standby promoted).
#[test]
fn a_primary_the_controller_still_reaches_keeps_its_lease_whatever_standbys_say() {
    let mut f = formation(vec![node(1, Draining), node(2, StopReplication)]);
    let now = f.now_ms;
    let wait = f.timings.lease_ms + f.timings.lease_margin_ms;
    fail(&mut f, 0, now, wait + 1000);
    f.nodes[0].reported = Primary;
    f.nodes[1].pg.upstream_streaming = false;
    f.nodes[1].upstream_lost_at_ms = Some(now - wait - 500);
    f.nodes[1].streamed_from_at = None;
    let old = f.nodes[0].clone();
    assert!(f.lease_certainly_expired(&old));
    let mut g = f.clone();
    g.nodes[0].last_probe_ok_ms = Some(now - 200);
    let old = g.nodes[0].clone();
    assert!(!g.lease_certainly_expired(&old));
}

#[test]
fn acknowledged_demotion_promotes_at_once() {
    let mut old = node(1, Draining);
    old.pg.running = false;
    let p = plan(&formation(vec![old, node(2, StopReplication)]));
    assert_eq!(goal_of(&p, 2), Some(WaitPrimary));
    assert_eq!(goal_of(&p, 1), Some(Demoted));
}

#[test]
fn stop_replication_hands_the_role_back_when_the_old_primary_ended_past_the_candidate() {
    // The candidate was elected while the old primary was failed; the old primary came
    // back and stopped with WAL the candidate, streaming nothing now, will never get.
    let mut old = node(1, Draining);
    old.pg.running = false;
    old.pg.lsn = Some(Lsn(5000));
    let p = plan(&formation(vec![old, node(2, StopReplication)]));
    assert_eq!(goal_of(&p, 1), Some(WaitPrimary));
    assert_eq!(goal_of(&p, 2), Some(Catchingup));
    assert!(p.decisions[0].description.contains("aborted"), "{p:?}");
}

#[test]
fn stop_replication_fenced_by_lease_elects_again_on_the_reports_made_since() {
    // Node 3, a quorum standby, reported more WAL than the candidate after the first
    // election: the candidate fast-forwards from it before it is promoted.
    let mut f = formation(vec![
        node(1, Draining),
        node(2, StopReplication),
        node(3, Secondary),
    ]);
    f.nodes[0].reported = Primary;
    let now = f.now_ms;
    fail(&mut f, 0, now, 4000);
    for i in [1, 2] {
        f.nodes[i].pg.upstream_streaming = false;
        f.nodes[i].upstream_lost_at_ms = Some(now - 4000);
    }
    f.nodes[2].pg.lsn = Some(Lsn(2000));
    // At equal priority node 3 is the better candidate now.
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(Secondary), "{p:?}");
    assert_eq!(goal_of(&p, 3), Some(PreparePromotion), "{p:?}");
    f.nodes[1].candidate_priority = 90;
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(FastForward), "{p:?}");
    assert_eq!(goal_of(&p, 1), None, "nobody is promoted yet");
    // With the WAL streamed, the promotion goes on.
    f.nodes[1].pg.lsn = Some(Lsn(2000));
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(WaitPrimary), "{p:?}");
}

#[test]
fn demoted_node_rejoins_once_the_new_primary_has_its_slot() {
    let mut a = node(1, Demoted);
    a.pg.running = false;
    let mut b = node(2, WaitPrimary);
    assert_eq!(
        goal_of(&plan(&formation(vec![a.clone(), b.clone()])), 1),
        None
    );
    b.pg.prepared_for = vec![1];
    assert_eq!(goal_of(&plan(&formation(vec![a, b])), 1), Some(Catchingup));
}

/// Past the anti-flapping limit a needed failover waits and says why; an operator's
/// forced failover is not held; without a limit (0) it goes ahead.
#[test]
fn anti_flapping_holds_the_next_automatic_failover() {
    let mut f = three_nodes();
    let now = f.now_ms;
    fail(&mut f, 0, now, 60_000);
    f.flapping = Flapping {
        max_failovers: 1,
        window_ms: 300_000,
        recent: 1,
        next_allowed_in_ms: 120_000,
    };
    let p = plan(&f);
    assert!(p.decisions.is_empty(), "{p:?}");
    assert_eq!(p.blocked, Some(BlockReason::TooManyFailovers));
    let why = p.waiting.unwrap_or_default();
    assert!(
        why.contains("antiFlapping") && why.contains("120 s"),
        "{why}"
    );
    f.flapping.max_failovers = 0;
    assert_eq!(goal_of(&plan(&f), 1), Some(Draining));
    f.flapping.max_failovers = 1;
    f.allow_data_loss = true;
    assert_eq!(
        goal_of(&plan(&f), 1),
        Some(Draining),
        "forced by the operator"
    );
}

#[test]
fn a_refused_promotion_moves_to_the_next_candidate() {
    // Failover: the candidate's pre-promote hook refuses; the other standby is elected.
    let mut f = three_nodes();
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    let p = plan(&f);
    let first = [2, 3]
        .into_iter()
        .find(|&id| goal_of(&p, id) == Some(PreparePromotion))
        .expect("a candidate");
    apply_goals(&mut f, &p);
    f.nodes[(first - 1) as usize].promotion_refused = true;
    let p = plan(&f);
    let other = 5 - first;
    assert_eq!(goal_of(&p, first), Some(Secondary), "{p:?}");
    assert_eq!(goal_of(&p, other), Some(PreparePromotion), "{p:?}");
    // The other refuses too: blocked, and it says why.
    apply_goals(&mut f, &p);
    f.nodes[(other - 1) as usize].promotion_refused = true;
    let p = plan(&f);
    assert!(p.decisions.is_empty(), "{p:?}");
    assert_eq!(p.blocked, Some(BlockReason::NoCandidate));
    assert!(p.waiting.unwrap().contains("refused promotion"));
}

#[test]
fn a_refused_switchover_gives_the_old_primary_its_role_back() {
    let mut f = formation(vec![node(1, Draining), node(2, PreparePromotion)]);
    f.nodes[1].reported = Secondary;
    f.nodes[1].promotion_refused = true;
    let p = plan(&f);
    assert_eq!(goal_of(&p, 1), Some(WaitPrimary), "{p:?}");
    assert_eq!(goal_of(&p, 2), Some(Catchingup), "{p:?}");
    assert_eq!(p.new_term, Some(f.term + 1));
}

/// Issue 26: a node on another major than the primary's is never a candidate, a WAL
/// source nor an upstream; a failover whose only standbys run another major is blocked
/// and says why.
#[test]
fn a_standby_on_another_major_is_never_elected_nor_streamed_from() {
    use pgha_api::PgMajor;
    let mut f = three_nodes();
    for n in f.nodes.iter_mut() {
        n.pg.major = Some(PgMajor(15));
    }
    // node 2: highest priority and most advanced, but PostgreSQL 16.
    f.nodes[1].pg.major = Some(PgMajor(16));
    f.nodes[1].candidate_priority = 100;
    f.nodes[1].pg.lsn = Some(Lsn(9000));
    f.nodes[2].pg.lsn = Some(Lsn(2000));
    f.nodes[2].replicate_from = Some(2);
    assert_eq!(f.formation_major(), Some(PgMajor(15)));
    assert!(!f.on_formation_major(&f.nodes[1]));
    // Not an upstream for a cascading standby: node 3 streams from the primary.
    assert_eq!(f.upstream_of(&f.nodes[2]).map(|u| u.id), Some(1));
    let p = plan(&f);
    assert!(
        p.waiting
            .as_deref()
            .is_some_and(|w| w.contains("node_2 runs PostgreSQL 16")),
        "{p:?}"
    );
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 3), Some(PreparePromotion), "{p:?}");
    assert_eq!(goal_of(&p, 2), None, "{p:?}");
    // Without node 3, nothing may be promoted: blocked, with the reason.
    let mut f = two_nodes_failed_primary_with_standby_on(PgMajor(16));
    let p = plan(&f);
    assert_eq!(p.blocked, Some(BlockReason::VersionSkew), "{p:?}");
    assert!(p.decisions.iter().all(|d| d.node_id != 2), "{p:?}");
    assert!(
        p.waiting.unwrap().contains("node_2 runs PostgreSQL 16"),
        "the reason names the node and its major"
    );
    // The same standby on the primary's major is promoted.
    f.nodes[1].pg.major = Some(PgMajor(15));
    assert_ne!(plan(&f).blocked, Some(BlockReason::VersionSkew));
}

fn two_nodes_failed_primary_with_standby_on(major: pgha_api::PgMajor) -> FormationView {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[0].pg.major = Some(pgha_api::PgMajor(15));
    f.nodes[1].pg.major = Some(major);
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    f
}

/// Issue 26: a file that declares another major than the primary runs changes
/// nothing (that would be an upgrade) and says so; joining nodes are told the
/// primary's major, and before there is a primary, the file's.
#[test]
fn a_declared_major_other_than_the_primarys_is_said_and_not_acted_on() {
    use pgha_api::PgMajor;
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    for n in f.nodes.iter_mut() {
        n.pg.major = Some(PgMajor(15));
    }
    f.declared_major = Some(PgMajor(18));
    assert_eq!(f.wanted_major(), Some(PgMajor(15)));
    let p = plan(&f);
    assert!(p.decisions.is_empty(), "{p:?}");
    let why = p.waiting.unwrap_or_default();
    assert!(
        why.contains("declares PostgreSQL 18") && why.contains("primary runs PostgreSQL 15"),
        "{why}"
    );
    f.declared_major = Some(PgMajor(15));
    assert_eq!(plan(&f).waiting, None);
    // No node has said its major yet: the file's.
    let mut g = formation(vec![]);
    g.declared_major = Some(PgMajor(18));
    assert_eq!(g.wanted_major(), Some(PgMajor(18)));
}

/// Issue 26: a backup section on a major a node's pgBackRest does not back up is not
/// in force, and the plan says which node, which pgBackRest and which major.
#[test]
fn a_backup_section_beyond_a_nodes_pgbackrest_is_refused_by_name() {
    use pgha_api::PgMajor;
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.backup_declared = true;
    for n in f.nodes.iter_mut() {
        n.pg.major = Some(PgMajor(16));
        n.pg.pgbackrest = Some("2.54.1".into());
    }
    assert_eq!(f.backup_refusal(), None, "a newer pgBackRest is trusted");
    f.nodes[1].pg.pgbackrest = Some("2.45".into());
    let why = f.backup_refusal().unwrap_or_default();
    assert!(
        why.contains("node_2 has pgBackRest 2.45")
            && why.contains("up to 15")
            && why.contains("runs PostgreSQL 16"),
        "{why}"
    );
    assert_eq!(plan(&f).waiting, Some(why));
    for n in f.nodes.iter_mut() {
        n.pg.major = Some(PgMajor(15));
    }
    assert_eq!(f.backup_refusal(), None, "2.45 backs up 15");
    f.backup_declared = false;
    f.nodes[0].pg.major = Some(PgMajor(18));
    assert_eq!(
        f.backup_refusal(),
        None,
        "no backup section, nothing to refuse"
    );
}

/// Issue 26: the standbys a logical consumer waits for on 17 and later are those a
/// failover may promote: live, priority above 0, streaming from the primary through a
/// slot; a failed one drops out.
#[test]
fn a_logical_consumer_waits_for_the_standbys_a_failover_may_promote() {
    let mut f = three_nodes();
    assert_eq!(f.failover_candidate_slots(), ["pgha_slot_2", "pgha_slot_3"]);
    f.nodes[2].candidate_priority = 0;
    assert_eq!(f.failover_candidate_slots(), ["pgha_slot_2"]);
    let now = f.now_ms;
    fail(&mut f, 1, now, 5000);
    assert!(f.failover_candidate_slots().is_empty(), "{f:?}");
}

/// Node 1 (primary) failed mid-promotion; node 2 (the candidate, priority 90) is in
/// fast_forward from node 3 (priority 10), which claims WAL up to 5000 while the
/// primary last confirmed it had flushed 1000, as much as node 2 has. Node 2 streams
/// from node 3 and has received nothing for `stalled_ms`.
fn fast_forward_from_a_claim(stalled_ms: u64) -> FormationView {
    let mut f = formation(vec![
        node(1, Draining),
        node(2, FastForward),
        node(3, Secondary),
    ]);
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    f.nodes[0].reported = Primary;
    f.nodes[0].pg.standbys = [2, 3]
        .into_iter()
        .map(|id| pgha_api::StandbyObservation {
            application_name: pgha_api::standby_application_name(id),
            state: "streaming".into(),
            sync_state: "quorum".into(),
            flush_lsn: Some(Lsn(1000)),
        })
        .collect();
    f.nodes[1].candidate_priority = 90;
    f.nodes[2].candidate_priority = 10;
    f.nodes[2].pg.lsn = Some(Lsn(5000));
    f.nodes[1].progress_at_ms = Some(now - stalled_ms);
    f
}

/// The second security review, item 4: a standby's claimed LSN ranks it as the WAL
/// source a candidate fast-forwards from, so a false claim held every failover of the
/// formation in fast_forward for ever. A candidate that streams from the claimant and
/// receives nothing for 15 s caps the claim at what the primary confirmed; the
/// candidate then goes on with what it has.
#[test]
fn a_claim_a_streaming_candidate_never_receives_is_capped_at_what_the_primary_confirmed() {
    let f = fast_forward_from_a_claim(20_000);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), None, "{p:?}");
    assert_eq!(p.capped_claims.len(), 1, "{p:?}");
    assert_eq!((p.capped_claims[0].0, p.capped_claims[0].1), (3, Lsn(1000)));
    assert!(p.capped_claims[0].2.contains("received nothing"), "{p:?}");
    // The controller applies the cap: node 3 counts as at 1000, node 2 has it all.
    let mut f = f;
    f.nodes[2].claimed_lsn = f.nodes[2].pg.lsn.replace(Lsn(1000));
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(PreparePromotion), "{p:?}");
    assert!(p.capped_claims.is_empty());
    assert!(
        p.waiting
            .as_deref()
            .unwrap_or("")
            .contains("node_3 claims WAL up to"),
        "{p:?}"
    );
}

/// What keeps the cap from costing an honest standby's WAL: a candidate that received
/// WAL lately, one that does not reach the claimant (its WAL may hold acknowledged
/// commits: waited for), and a claim the primary confirmed are never capped.
#[test]
fn a_claim_is_not_capped_while_wal_arrives_unreached_or_confirmed() {
    let p = plan(&fast_forward_from_a_claim(5_000));
    assert!(p.capped_claims.is_empty(), "{p:?}");
    assert_eq!(goal_of(&p, 2), None);
    assert!(
        p.waiting.as_deref().unwrap_or("").contains("bytes to go"),
        "{p:?}"
    );

    let mut f = fast_forward_from_a_claim(60_000);
    f.nodes[1].pg.upstream_streaming = false;
    let p = plan(&f);
    assert!(p.capped_claims.is_empty(), "{p:?}");
    assert_eq!(goal_of(&p, 2), None);
    assert!(
        p.waiting
            .as_deref()
            .unwrap_or("")
            .contains("does not stream from"),
        "{p:?}"
    );

    let mut f = fast_forward_from_a_claim(60_000);
    for s in &mut f.nodes[0].pg.standbys {
        s.flush_lsn = Some(Lsn(5000));
    }
    let p = plan(&f);
    assert!(p.capped_claims.is_empty(), "{p:?}");
    assert_eq!(goal_of(&p, 2), None);
}
