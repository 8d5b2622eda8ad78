//! One table case per rule of a steady formation: joining, catching up, synchronous
//! replication, the failure timeout, and why a failover is blocked.

use super::*;

#[test]
fn lone_primary_opens_replication_for_a_joining_standby() {
    let mut b = node(2, WaitStandby);
    b.pg = PgObservation::default();
    let p = plan(&formation(vec![node(1, Single), b]));
    assert_eq!(goal_of(&p, 1), Some(WaitPrimary));
    assert_eq!(p.decisions[0].rule, "single_to_wait_primary");
}

#[test]
fn standby_starts_its_base_backup_once_the_primary_prepared_a_slot() {
    let mut a = node(1, WaitPrimary);
    let b = node(2, WaitStandby);
    let p = plan(&formation(vec![a.clone(), b.clone()]));
    assert_eq!(goal_of(&p, 2), None);
    assert!(p.waiting.unwrap().contains("open pg_hba"));
    a.pg.prepared_for = vec![2];
    let p = plan(&formation(vec![a, b]));
    assert_eq!(goal_of(&p, 2), Some(Catchingup));
}

#[test]
fn catching_up_standby_becomes_secondary_only_when_close_and_on_the_same_timeline() {
    let a = node(1, WaitPrimary);
    let mut b = node(2, Catchingup);
    assert_eq!(
        goal_of(&plan(&formation(vec![a.clone(), b.clone()])), 2),
        Some(Secondary)
    );
    b.pg.lsn = Some(Lsn(0));
    let mut far = a.clone();
    far.pg.lsn = Some(Lsn(CATCHUP_THRESHOLD_BYTES + 1));
    assert_eq!(goal_of(&plan(&formation(vec![far, b.clone()])), 2), None);
    b.pg.lsn = Some(Lsn(1000));
    b.pg.timeline = Some(2);
    assert_eq!(goal_of(&plan(&formation(vec![a, b])), 2), None);
}

#[test]
fn primary_turns_synchronous_with_a_healthy_secondary_and_back_when_it_fails() {
    let p = plan(&formation(vec![node(1, WaitPrimary), node(2, Secondary)]));
    assert_eq!(goal_of(&p, 1), Some(Primary));

    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    let now = f.now_ms;
    fail(&mut f, 1, now, 5000);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(Catchingup));
    assert_eq!(goal_of(&p, 1), Some(WaitPrimary));
}

#[test]
fn with_number_sync_standbys_writes_block_rather_than_lose_durability() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.number_sync_standbys = 1;
    let now = f.now_ms;
    fail(&mut f, 1, now, 5000);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 1), None);
    assert!(p.waiting.unwrap().contains("writes on node_1 block"));
}

#[test]
fn with_number_sync_standbys_failed_standbys_stay_listed_so_writes_block() {
    let mut f = formation(vec![
        node(1, Primary),
        node(2, Catchingup),
        node(3, Catchingup),
    ]);
    f.number_sync_standbys = 1;
    assert_eq!(
        f.synchronous_standby_names(&f.nodes[0]),
        "ANY 1 (pgha_standby_2, pgha_standby_3)"
    );
    f.number_sync_standbys = 0;
    assert_eq!(f.synchronous_standby_names(&f.nodes[0]), "");
}

#[test]
fn synchronous_standby_names_lists_quorum_secondaries() {
    let f = formation(vec![node(1, Primary), node(2, Secondary)]);
    assert_eq!(
        f.synchronous_standby_names(&f.nodes[0]),
        "ANY 1 (pgha_standby_2)"
    );
    let f = formation(vec![node(1, WaitPrimary), node(2, Secondary)]);
    assert_eq!(f.synchronous_standby_names(&f.nodes[0]), "");
    let mut b = node(2, Secondary);
    b.replication_quorum = false;
    let f = formation(vec![node(1, Primary), b]);
    assert_eq!(f.synchronous_standby_names(&f.nodes[0]), "");
}

#[test]
fn failed_primary_is_drained_and_the_secondary_promoted_in_a_new_term() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    let now = f.now_ms;
    fail(&mut f, 0, now, 3500);
    let p = plan(&f);
    assert_eq!(goal_of(&p, 1), Some(Draining));
    assert_eq!(goal_of(&p, 2), Some(PreparePromotion));
    assert_eq!(p.new_term, Some(4));
}

#[test]
fn no_failover_before_the_failure_timeout() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    let now = f.now_ms;
    fail(&mut f, 0, now, 2000);
    assert!(plan(&f).decisions.is_empty());
}

#[test]
fn a_fresh_controller_does_not_act_on_ignorance() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[0].last_report_ms = None;
    f.nodes[0].last_probe = None;
    f.nodes[0].last_probe_ok_ms = None;
    // Dead: its standby does not stream from it either.
    f.nodes[1].pg.upstream_streaming = false;
    f.now_ms = START + 1000;
    assert!(plan(&f).decisions.is_empty());
    f.now_ms = START + 3500;
    f.nodes[1].last_report_ms = Some(START + 3400);
    assert_eq!(goal_of(&plan(&f), 2), Some(PreparePromotion));
}

#[test]
fn a_dead_agent_with_a_live_postgres_is_not_a_failure() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[0].last_report_ms = Some(f.now_ms - 60_000);
    assert!(plan(&f).decisions.is_empty());
}

#[test]
fn a_crashed_postgres_under_a_live_agent_gets_the_restart_grace() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[0].pg.running = false;
    f.nodes[0].pg_down_since_ms = Some(f.now_ms - 2000);
    f.nodes[0].last_probe = Some((f.now_ms, false));
    assert!(plan(&f).decisions.is_empty());
    f.nodes[0].pg_down_since_ms = Some(f.now_ms - 6000);
    assert_eq!(goal_of(&plan(&f), 2), Some(PreparePromotion));
}

#[test]
fn priority_zero_is_never_promoted() {
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.nodes[1].candidate_priority = 0;
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    let p = plan(&f);
    assert!(p.decisions.is_empty());
    assert_eq!(p.blocked, Some(BlockReason::PriorityZero));
    assert!(p.waiting.unwrap().contains("candidate priority 0"));
}

#[test]
fn blocked_failovers_name_their_reason() {
    // No secondary at all.
    let mut f = formation(vec![node(1, Primary), node(2, Catchingup)]);
    let now = f.now_ms;
    fail(&mut f, 0, now, 5000);
    assert_eq!(plan(&f).blocked, Some(BlockReason::NoCandidate));
    // Asynchronous primary ahead of its only standby.
    let mut f = formation(vec![node(1, WaitPrimary), node(2, Secondary)]);
    fail(&mut f, 0, now, 5000);
    f.nodes[0].pg.lsn = Some(Lsn(9000));
    assert_eq!(plan(&f).blocked, Some(BlockReason::Lagging));
    // A quorum standby that does not report.
    let mut f = three_nodes();
    fail(&mut f, 0, now, 5000);
    fail(&mut f, 2, now, 5000);
    assert_eq!(plan(&f).blocked, Some(BlockReason::QuorumNotReporting));
    // A fresh controller that has not heard from the primary yet.
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    f.now_ms = START + 1000;
    f.nodes[0].last_report_ms = None;
    assert_eq!(plan(&f).blocked, Some(BlockReason::WarmingUp));
    // A healthy formation is not blocked.
    assert_eq!(
        plan(&formation(vec![node(1, Primary), node(2, Secondary)])).blocked,
        None
    );
}

#[test]
fn a_secondary_cut_off_from_the_primary_is_parked_in_catchingup() {
    // Both report; node 2 last streamed from node 1 (the primary) 4 s ago.
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    let now = f.now_ms;
    let primary = ("127.0.0.1".to_string(), f.nodes[0].port);
    f.nodes[1].pg.upstream_streaming = false;
    f.nodes[1].streamed_from_at = Some(StreamLog {
        watching_since_ms: START,
        contacts: vec![(primary.0.clone(), primary.1, now - 4000)],
    });
    let p = plan(&f);
    assert_eq!(goal_of(&p, 2), Some(Catchingup), "{p:?}");
    assert!(p.decisions[0].description.contains("stopped streaming"));
    // 2 s ago: not yet.
    f.nodes[1].streamed_from_at.as_mut().unwrap().contacts[0].2 = now - 2000;
    assert_eq!(goal_of(&plan(&f), 2), None);
    // 4 s ago, but the primary's last report (1.5 s ago, still "lately") came only
    // 2.5 s after that: it died or is dying. No parking: the standby stays a failover
    // candidate, even though its receiver had stalled a moment before.
    f.nodes[1].streamed_from_at.as_mut().unwrap().contacts[0].2 = now - 4000;
    f.nodes[0].last_report_ms = Some(now - 1500);
    assert_eq!(goal_of(&plan(&f), 2), None);
    f.nodes[0].last_report_ms = Some(now);
    // After a failover its last upstream was another node: it has not found the new
    // primary yet, which is no cut link.
    f.nodes[1].streamed_from_at = Some(StreamLog {
        watching_since_ms: START,
        contacts: vec![
            (primary.0.clone(), primary.1, now - 60_000),
            ("127.0.0.1".into(), 5499, now - 4000),
        ],
    });
    assert_eq!(goal_of(&plan(&f), 2), None);
    // Back in catchingup, it returns to secondary only once it streams again.
    f.nodes[1].goal = Catchingup;
    f.nodes[1].reported = Catchingup;
    assert_eq!(goal_of(&plan(&f), 2), None);
    f.nodes[1].pg.upstream_streaming = true;
    assert_eq!(goal_of(&plan(&f), 2), Some(Secondary));
}

#[test]
fn a_primary_a_standby_still_streams_from_is_not_failed_over() {
    // The controller lost node 1 (no report, no probe) but node 2 streamed from it when
    // it last reported: the primary serves, cut off from the controller alone.
    let mut f = formation(vec![node(1, Primary), node(2, Secondary)]);
    let now = f.now_ms;
    let port = f.nodes[0].port;
    f.nodes[0].last_report_ms = Some(now - 5000);
    f.nodes[0].last_probe = Some((now, false));
    f.nodes[0].last_probe_ok_ms = Some(now - 5000);
    f.nodes[1].streamed_from_at = Some(StreamLog {
        watching_since_ms: START,
        contacts: vec![("127.0.0.1".into(), port, now - 300)],
    });
    f.nodes[1].last_report_ms = Some(now - 300);
    let p = plan(&f);
    assert!(p.decisions.is_empty(), "{p:?}");
    assert!(p.waiting.unwrap().contains("streams from it"));
    // The standby stops streaming: now it is a failover.
    f.nodes[1].streamed_from_at.as_mut().unwrap().contacts[0].2 = now - 4000;
    f.nodes[1].pg.upstream_streaming = false;
    assert_eq!(goal_of(&plan(&f), 2), Some(PreparePromotion));
}

#[test]
fn a_demoted_node_that_reports_keeps_its_slot_however_long_its_postgres_is_down() {
    // An old primary that waited in demoted (its disk was full) must find a slot when it
    // rejoins; a node that does not report at all loses its slot.
    let mut f = formation(vec![node(1, Demoted), node(2, WaitPrimary)]);
    f.nodes[0].pg.running = false;
    f.nodes[0].pg_down_since_ms = Some(f.now_ms - 60_000);
    assert!(f.is_failed(&f.nodes[0]));
    assert!(f.keeps_slot(&f.nodes[0]));
    f.nodes[0].last_report_ms = Some(f.now_ms - 60_000);
    f.nodes[0].last_probe = Some((f.now_ms, false));
    assert!(!f.keeps_slot(&f.nodes[0]));
}

/// `replicateFrom`: node 3 streams from node 2 while node 2 is a healthy secondary, and
/// the primary keeps no slot for it; with node 2 failed, node 3 streams from the
/// primary again, through its slot.
#[test]
fn a_cascading_standby_streams_from_its_standby_while_that_one_is_healthy() {
    let mut f = three_nodes();
    f.nodes[2].replicate_from = Some(2);
    assert_eq!(f.upstream_of(&f.nodes[2]).map(|u| u.id), Some(2));
    assert!(!f.keeps_slot(&f.nodes[2]));
    assert_eq!(f.upstream_of(&f.nodes[1]).map(|u| u.id), Some(1));
    // Node 2 not streaming itself: node 3 goes to the primary.
    f.nodes[1].pg.upstream_streaming = false;
    assert_eq!(f.upstream_of(&f.nodes[2]).map(|u| u.id), Some(1));
    f.nodes[1].pg.upstream_streaming = true;
    let now = f.now_ms;
    fail(&mut f, 1, now, 10_000);
    assert_eq!(f.upstream_of(&f.nodes[2]).map(|u| u.id), Some(1));
    assert!(f.keeps_slot(&f.nodes[2]));
}
