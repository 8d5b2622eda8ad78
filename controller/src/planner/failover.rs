//! Failover: the election (priorities, LSN, the data-loss guard, fast_forward), the
//! operator's forced failover, and the promotion that follows a failover or switchover
//! up to the new primary (or its abort).

use super::{BlockReason, FormationView, NodeView, Plan, Rule, describe_failure};
use pgha_api::NodeState;
/// The outcome of a failover election.
#[derive(Debug)]
struct Election<'a> {
    winner: &'a NodeView,
    /// A standby holding WAL the winner lacks: the winner streams it from there first
    /// (fast_forward), so nothing that survived on any live standby is lost.
    source: Option<&'a NodeView>,
}

impl<'a> Election<'a> {
    /// The state the winner is assigned next: fast_forward while it lacks WAL.
    fn winner_goal(&self) -> NodeState {
        if self.source.is_some() {
            NodeState::FastForward
        } else {
            NodeState::PreparePromotion
        }
    }
}

/// Elects the standby that replaces the failed primary `pr`, or says why none may.
/// `synchronous` says whether `pr` ran with synchronous replication (`primary`) when it
/// was last seen.
///
/// pg_auto_failover's rules: only candidates with priority > 0; the highest priority
/// wins, then the most advanced LSN, then the lowest id. The data-loss guard: some live
/// standby must hold every commit `pr` may have acknowledged (synchronous: the most
/// advanced of its quorum standbys, all of which must report; asynchronous: what `pr`
/// last reported). A winner behind the most advanced live standby fast-forwards from
/// it. With `allow_data_loss` the guard is lifted (never the priority rule).
fn elect<'a>(
    f: &'a FormationView,
    pr: &NodeView,
    synchronous: bool,
) -> Result<Election<'a>, (BlockReason, String)> {
    let healthy: Vec<&NodeView> = f.live_standbys().filter(|n| n.id != pr.id).collect();
    if healthy.is_empty() {
        let skewed: Vec<String> = f
            .on_other_majors()
            .filter(|n| n.id != pr.id)
            .map(|n| {
                format!(
                    "{} runs PostgreSQL {}",
                    n.name,
                    n.pg.major.map(|m| m.to_string()).unwrap_or_default()
                )
            })
            .collect();
        if !skewed.is_empty() {
            return Err((
                BlockReason::VersionSkew,
                format!(
                    "no standby runs the formation's PostgreSQL {} ({}): none can be promoted",
                    f.formation_major()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                    skewed.join(", ")
                ),
            ));
        }
        return Err((BlockReason::NoCandidate, "no healthy secondary".into()));
    }
    let mut candidates: Vec<&NodeView> = healthy
        .iter()
        .copied()
        .filter(|n| n.candidate_priority > 0 && !n.promotion_refused)
        .collect();
    let refused: Vec<&str> = f
        .nodes
        .iter()
        .filter(|n| n.promotion_refused)
        .map(|n| n.name.as_str())
        .collect();
    if candidates.is_empty() && !refused.is_empty() {
        return Err((
            BlockReason::NoCandidate,
            format!(
                "{} refused promotion (pre-promote hook) and no other node may be promoted",
                refused.join(", ")
            ),
        ));
    }
    if candidates.is_empty() {
        let names: Vec<&str> = healthy.iter().map(|n| n.name.as_str()).collect();
        return Err((
            BlockReason::PriorityZero,
            format!("{} has candidate priority 0", names.join(", ")),
        ));
    }
    candidates.sort_by_key(|n| {
        (
            std::cmp::Reverse(n.candidate_priority),
            std::cmp::Reverse(n.pg.lsn.unwrap_or_default()),
            n.id,
        )
    });
    let winner = candidates[0];
    let richest = f.most_advanced_standby(pr.id).unwrap_or(winner);
    let have = richest.pg.lsn.unwrap_or_default();
    let source = (richest.pg.lsn > winner.pg.lsn).then_some(richest);
    if f.allow_data_loss {
        return Ok(Election { winner, source });
    }
    let needed = if synchronous {
        // Synchronous replication acknowledged each commit once ANY k quorum standbys
        // had it: only the most advanced of them is sure to hold every one, and a quorum
        // standby that does not report (even one parked in catchingup since) may hold
        // commits the others lack.
        let quorum: Vec<&NodeView> = f
            .nodes
            .iter()
            .filter(|n| {
                n.id != pr.id
                    && n.replication_quorum
                    // A node on another major never streamed from `pr`: it acknowledged
                    // nothing.
                    && f.on_formation_major(n)
                    // Old primaries (demoted, or still being stopped) did not stream
                    // from `pr`: they rejoin through catchingup first.
                    && !matches!(
                        n.goal,
                        NodeState::Init
                            | NodeState::WaitStandby
                            | NodeState::Dropped
                            | NodeState::Maintenance
                            | NodeState::Demoted
                            | NodeState::Draining
                            | NodeState::DemoteTimeout
                    )
            })
            .collect();
        if let Some(silent) = quorum.iter().find(|n| !f.is_reporting(n)) {
            return Err((
                BlockReason::QuorumNotReporting,
                format!(
                    "quorum standby {} does not report its LSN and may hold acknowledged commits",
                    silent.name
                ),
            ));
        }
        quorum
            .iter()
            .filter_map(|n| n.pg.lsn)
            .max()
            .unwrap_or_default()
            .max(f.sync_floor_lsn)
    } else {
        // Asynchronous replication: only WAL the primary last reported is known of.
        pr.pg.lsn.unwrap_or_default()
    };
    if have < needed {
        return Err((
            BlockReason::Lagging,
            format!(
                "no live standby has all the WAL {} acknowledged or reported (up to {needed}; best {have})",
                pr.name
            ),
        ));
    }
    Ok(Election { winner, source })
}

fn describe_election(e: &Election) -> String {
    match e.source {
        Some(s) => format!(
            "promoting {} (lsn {}) after it streams the WAL up to {} from {}",
            e.winner.name,
            e.winner.pg.lsn.unwrap_or_default(),
            s.pg.lsn.unwrap_or_default(),
            s.name
        ),
        None => format!(
            "promoting {} (lsn {})",
            e.winner.name,
            e.winner.pg.lsn.unwrap_or_default()
        ),
    }
}

pub(super) fn plan_failover(f: &FormationView, pr: &NodeView, p: &mut Plan) {
    if !matches!(pr.goal, NodeState::Primary | NodeState::WaitPrimary) {
        p.wait(format!(
            "{} is {} and failed; no standby to fail over to",
            pr.name, pr.goal
        ));
        return;
    }
    // Anti-flapping: an operator's forced failover is neither counted nor held.
    if f.flapping.exhausted() && !f.allow_data_loss {
        p.blocked = Some(BlockReason::TooManyFailovers);
        p.wait(format!(
            "failover blocked: {} failed ({}); {} automatic failover(s) in the last {} s already (antiFlapping.maxFailovers {}): the next may start in {} s, or raise the limit in the formation file",
            pr.name,
            describe_failure(f, pr),
            f.flapping.recent,
            f.flapping.window_ms / 1000,
            f.flapping.max_failovers,
            f.flapping.next_allowed_in_ms.div_ceil(1000)
        ));
        return;
    }
    let e = match elect(f, pr, pr.goal == NodeState::Primary) {
        Ok(e) => e,
        Err((reason, why)) => {
            p.blocked = Some(reason);
            p.wait(format!(
                "failover blocked: {} failed ({}); {why}",
                pr.name,
                describe_failure(f, pr)
            ));
            return;
        }
    };
    let why = format!(
        "failover: {} failed ({}); {}{}",
        pr.name,
        describe_failure(f, pr),
        describe_election(&e),
        if f.allow_data_loss {
            " (data loss allowed by the operator)"
        } else {
            ""
        }
    );
    let Some(term) = super::next_term(f.term) else {
        p.blocked = Some(BlockReason::TermExhausted);
        p.wait(format!("failover blocked: {}", super::TERM_EXHAUSTED));
        return;
    };
    p.new_term = Some(term);
    p.assign(
        pr,
        NodeState::Draining,
        Rule::FailoverDrainPrimary,
        why.clone(),
    );
    p.assign(e.winner, e.winner_goal(), Rule::FailoverPromote, why);
}

/// `pgha perform failover --allow-data-loss`: a failover the data-loss guard blocks,
/// forced by an operator. Refused while the primary is healthy (that is a switchover)
/// and when no node may be promoted at all (priority 0 everywhere, none healthy). The
/// caller persists `allow_data_loss` for the term this returns, so the rest of the
/// promotion is planned under the same override.
pub fn plan_forced_failover(f: &FormationView) -> Result<(Plan, u64), String> {
    let mut g = f.clone();
    g.allow_data_loss = true;
    if let Some(cand) = g.promoting() {
        let old = g.demoting().ok_or_else(|| {
            format!(
                "{} is being promoted with no old primary left to wait for",
                cand.name
            )
        })?;
        if !g.is_failed(old) {
            return Err(format!(
                "a promotion of {} is in progress and {} is not failed",
                cand.name, old.name
            ));
        }
        // The promotion in progress goes on under the override, in this term.
        return Ok((Plan::default(), g.term));
    }
    let pr = g
        .writable_goal()
        .ok_or("no primary to fail over from: show state lists none")?;
    if !g.is_failed(pr) {
        return Err(format!(
            "primary {} is not failed (its agent or Postgres answers); use pgha perform switchover",
            pr.name
        ));
    }
    let mut p = Plan::default();
    plan_failover(&g, pr, &mut p);
    match p.new_term {
        Some(t) => Ok((p, t)),
        None => Err(p
            .waiting
            .unwrap_or_else(|| format!("no failover possible from {}", pr.name))),
    }
}

/// Gives the primary role back to the old primary when the promotion cannot finish
/// safely (the candidate failed, or lacks WAL the old primary has). The candidate was
/// never writable, so this is always safe.
/// Aborts a promotion whose candidate lacks the end of the WAL of an old primary that
/// acknowledged its demotion (that WAL may hold acknowledged commits).
fn abort_missing_final_wal(f: &FormationView, old: &NodeView, cand: &NodeView, p: &mut Plan) {
    let why = format!(
        "it stopped at {} and {} has up to {}",
        cand.pg.lsn.unwrap_or_default(),
        old.name,
        old.pg.lsn.unwrap_or_default()
    );
    abort_promotion(f, old, cand, why, p)
}

fn abort_promotion(f: &FormationView, old: &NodeView, cand: &NodeView, why: String, p: &mut Plan) {
    let Some(term) = super::next_term(f.term) else {
        p.blocked = Some(BlockReason::TermExhausted);
        p.wait(format!("abort blocked: {}", super::TERM_EXHAUSTED));
        return;
    };
    p.new_term = Some(term);
    let why = format!(
        "promotion of {} aborted: {why}; {} stays primary",
        cand.name, old.name
    );
    p.assign(
        old,
        NodeState::WaitPrimary,
        Rule::PromotionAborted,
        why.clone(),
    );
    p.assign(cand, NodeState::Catchingup, Rule::PromotionAborted, why);
}

/// Runs the failover election again for a promotion in progress from the failed `old`:
/// when `cand` still wins, `then` plans its next step; when another standby wins now, the
/// promotion moves to it; when nobody may be promoted, the promotion is blocked.
fn reelect_or(
    f: &FormationView,
    old: &NodeView,
    cand: &NodeView,
    p: &mut Plan,
    then: impl FnOnce(&Election, &mut Plan),
) {
    let sync = old.reported != NodeState::WaitPrimary;
    match elect(f, old, sync) {
        Ok(e) if e.winner.id == cand.id => then(&e, p),
        Ok(e) => {
            let why = format!(
                "{} failed mid-promotion and {} is a better candidate than {}: {}",
                old.name,
                e.winner.name,
                cand.name,
                describe_election(&e)
            );
            p.assign(
                cand,
                NodeState::Secondary,
                Rule::PromotionReelected,
                why.clone(),
            );
            p.assign(e.winner, e.winner_goal(), Rule::PromotionReelected, why);
        }
        Err((reason, why)) => {
            p.blocked = Some(reason);
            p.wait(format!(
                "promotion of {} blocked: {} failed; {why}",
                cand.name, old.name
            ))
        }
    }
}

pub(super) fn plan_promotion(f: &FormationView, p: &mut Plan) {
    let Some(cand) = f.promoting() else { return };
    let old = f.demoting();
    if cand.promotion_refused {
        // Its pre-promote hook said no: the old primary takes its role back when it is
        // there to (a switchover), else the next candidate is elected (or none is).
        match old {
            Some(old) if f.is_reporting(old) && old.pg.initialized => {
                abort_promotion(f, old, cand, "its pre-promote hook refused".into(), p)
            }
            Some(old) => reelect_or(f, old, cand, p, |_, p| {
                p.wait(format!("{} refused its promotion", cand.name))
            }),
            None => p.wait(format!(
                "{} refused its promotion and no old primary is left to take its role back",
                cand.name
            )),
        }
        return;
    }
    if f.is_failed(cand) {
        match old {
            Some(old) if f.is_reporting(old) && old.pg.initialized => abort_promotion(
                f,
                old,
                cand,
                format!("it failed ({})", describe_failure(f, cand)),
                p,
            ),
            _ => p.wait(format!(
                "{} failed during its promotion and the old primary is unreachable",
                cand.name
            )),
        }
        return;
    }
    match (cand.goal, cand.reported) {
        (NodeState::PreparePromotion, NodeState::PreparePromotion) => {
            prepare_promotion_reached(f, old, cand, p)
        }
        (NodeState::FastForward, NodeState::FastForward) => fast_forward_reached(f, old, cand, p),
        (NodeState::StopReplication, NodeState::StopReplication) => {
            stop_replication_reached(f, old, cand, p)
        }
        _ => p.wait(format!("{} is reaching {}", cand.name, cand.goal)),
    }
}

/// The candidate reached prepare_promotion: it stops replication once it has the old
/// primary's last WAL (or the old primary is failed and it is still the one to elect).
fn prepare_promotion_reached(
    f: &FormationView,
    old: Option<&NodeView>,
    cand: &NodeView,
    p: &mut Plan,
) {
    match old {
        Some(old) if f.acked_demotion(old) => {
            let final_lsn = old.pg.lsn.unwrap_or_default();
            // The old primary's shutdown sent its WAL before it stopped: a report of
            // the candidate's made well after that is final.
            let settled = old
                .pg_down_since_ms
                .is_some_and(|down| cand.last_report_ms.is_some_and(|r| r >= down + 1000));
            if cand.pg.lsn.is_some_and(|l| l >= final_lsn) {
                p.assign(
                    cand,
                    NodeState::StopReplication,
                    Rule::PreparePromotionToStopReplication,
                    format!(
                        "{} stopped at {final_lsn} and {} has it all",
                        old.name, cand.name
                    ),
                );
            } else if settled {
                abort_missing_final_wal(f, old, cand, p);
            } else {
                p.wait(format!(
                    "{} replays the last WAL of {} (up to {final_lsn})",
                    cand.name, old.name
                ));
            }
        }
        Some(old) if f.is_failed(old) => {
            // The old primary will not hand over its last WAL: the candidate must be
            // the one a failover would elect now, with all the WAL a live standby has.
            reelect_or(f, old, cand, p, |e, p| match e.source {
                None => p.assign(
                    cand,
                    NodeState::StopReplication,
                    Rule::PreparePromotionToStopReplication,
                    format!(
                        "{} is failed: cut replication and wait for its lease",
                        old.name
                    ),
                ),
                Some(s) => fast_forward(cand, s, p),
            });
        }
        Some(old) => p.wait(format!("waiting for {} to stop Postgres", old.name)),
        None => p.assign(
            cand,
            NodeState::StopReplication,
            Rule::PreparePromotionToStopReplication,
            "no old primary left".into(),
        ),
    }
}

/// The candidate reached fast_forward: it goes on once it has the WAL the live standbys
/// have (a claim it streams nothing of is capped, see `stalled_claim_cap`).
fn fast_forward_reached(f: &FormationView, old: Option<&NodeView>, cand: &NodeView, p: &mut Plan) {
    match old {
        Some(old) if f.is_failed(old) => reelect_or(f, old, cand, p, |e, p| {
            match e.source {
            None => p.assign(
                cand,
                NodeState::PreparePromotion,
                Rule::FastForwardDone,
                format!(
                    "{} has all the WAL the live standbys have ({})",
                    cand.name,
                    cand.pg.lsn.unwrap_or_default()
                ),
            ),
            Some(s) => match f.stalled_claim_cap(cand, s) {
                Some(cap) => {
                    let why = format!(
                        "{} streamed from {} for {} s and received nothing of the WAL {} claims up to {}; the primary confirmed {} received up to {}: its claim counts as {cap} from now on",
                        cand.name,
                        s.name,
                        super::view::FAST_FORWARD_STALL_MS / 1000,
                        s.name,
                        s.pg.lsn.unwrap_or_default(),
                        s.name,
                        f.confirmed_lsn(s).unwrap_or_default(),
                    );
                    p.capped_claims.push((s.id, cap, why.clone()));
                    p.wait(why);
                }
                None if !f.streams_now_from(cand, s) => p.wait(format!(
                    "{} does not stream from {} (which claims WAL up to {}, {} bytes more): waiting, since that WAL may hold acknowledged commits",
                    cand.name,
                    s.name,
                    s.pg.lsn.unwrap_or_default(),
                    s.pg.lsn
                        .unwrap_or_default()
                        .bytes_ahead_of(cand.pg.lsn.unwrap_or_default())
                )),
                None => p.wait(format!(
                    "{} streams the WAL it lacks from {} ({} bytes to go)",
                    cand.name,
                    s.name,
                    s.pg.lsn
                        .unwrap_or_default()
                        .bytes_ahead_of(cand.pg.lsn.unwrap_or_default())
                )),
            },
        }
        }),
        // The old primary is back (or never left): the usual hand-over takes the
        // WAL it has, or gives it its role back.
        _ => p.assign(
            cand,
            NodeState::PreparePromotion,
            Rule::FastForwardDone,
            "the old primary answers again: take its last WAL from it".into(),
        ),
    }
}

/// The candidate reached stop_replication: promoted once the old primary acknowledged
/// its demotion with nothing the candidate lacks, or its lease certainly ran out.
fn stop_replication_reached(
    f: &FormationView,
    old: Option<&NodeView>,
    cand: &NodeView,
    p: &mut Plan,
) {
    match old {
        None => promote(None, cand, "no old primary left".into(), p),
        Some(old) if f.acked_demotion(old) => {
            // The candidate was elected on reports that may predate the old
            // primary's last commits (it could have come back and stopped since, or
            // a quorum standby's report was stale): its stopped Postgres says where
            // it ended, and the candidate, streaming nothing now, must have it all.
            let final_lsn = old.pg.lsn.unwrap_or_default();
            if cand.pg.lsn.is_some_and(|l| l >= final_lsn) {
                promote(
                    Some(old),
                    cand,
                    format!("{} acknowledged its demotion", old.name),
                    p,
                )
            } else {
                abort_missing_final_wal(f, old, cand, p)
            }
        }
        Some(old) if f.lease_certainly_expired(old) => {
            // The old primary has accepted nothing since its lease ran out, and every
            // standby has reported since it stopped streaming from it: the election
            // runs again on those final reports (a quorum standby may have received
            // acknowledged commits after the reports the first election saw).
            let why = format!(
                "the lease of {} certainly ran out (no report for {} ms)",
                old.name,
                f.now_ms
                    .saturating_sub(old.last_report_ms.unwrap_or(f.controller_started_ms))
            );
            reelect_or(f, old, cand, p, |e, p| match e.source {
                None => promote(Some(old), cand, why, p),
                Some(s) => fast_forward(cand, s, p),
            })
        }
        Some(old) => p.wait(format!(
            "waiting for {} to acknowledge demotion or its lease to run out",
            old.name
        )),
    }
}

/// The old primary is fenced (`why`): the candidate is the primary now.
fn promote(old: Option<&NodeView>, cand: &NodeView, why: String, p: &mut Plan) {
    if let Some(old) = old {
        p.assign(
            old,
            NodeState::Demoted,
            Rule::OldPrimaryDemoted,
            why.clone(),
        );
    }
    p.assign(
        cand,
        NodeState::WaitPrimary,
        Rule::StopReplicationToWaitPrimary,
        format!("{why}: {} is the primary now", cand.name),
    );
}

/// The candidate lacks WAL standby `s` has: it streams it from there first.
fn fast_forward(cand: &NodeView, s: &NodeView, p: &mut Plan) {
    p.assign(
        cand,
        NodeState::FastForward,
        Rule::FastForward,
        format!(
            "{} has WAL up to {} that {} lacks: stream it first",
            s.name,
            s.pg.lsn.unwrap_or_default(),
            cand.name
        ),
    );
}
