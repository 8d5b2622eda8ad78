//! The pure planner: `plan(formation view, now) -> decisions`.
//!
//! No I/O, no clock reads, no randomness: everything it needs is in [`FormationView`],
//! including `now`. The controller's I/O shell builds the view from its store and the
//! agents' reports, applies the returned [`Plan`] (persisting the term before anyone is
//! told), and records the events. State names and most rules follow pg_auto_failover
//! (reference study §2.3); rule ids are stable strings that show up in events.
//!
//! Safety rules enforced here (docs/src/design.md §5):
//! - at most one node has a writable goal at any time, and a standby gets one only
//!   through `stop_replication` after the old primary acknowledged its demotion or its
//!   lease certainly ran out ([`FormationView::lease_certainly_expired`]);
//! - a fresh controller declares nobody failed during its warm-up window;
//! - no promotion of a node that may lack an acknowledged commit: a live standby must
//!   hold what the quorum standbys report and what the primary had when it turned
//!   synchronous (from `wait_primary`: what it last reported), all quorum standbys must
//!   report, and the winner first streams what it lacks from that standby (fast_forward),
//!   unless an operator lifts the guard for one term (`allow_data_loss`).
//!
//! Modules: `view` (what the planner sees and the judgements rules share), `failover`
//! (election, forced failover, promotion), `operator` (switchover, the file's primary,
//! maintenance, drop, rolling restart); this file holds the plan and the steady-state
//! rules (bootstrap, standbys, primary, rejoin).

pub use crate::rule::Rule;
use pgha_api::{NodeId, NodeState};

mod failover;
mod operator;
mod view;

pub use failover::plan_forced_failover;
use failover::{plan_failover, plan_promotion};
use operator::{plan_desired_primary, plan_drop, plan_maintenance, plan_rolling_restart};
pub use operator::{plan_switchover, plan_switchover_to};
pub use view::{CATCHUP_THRESHOLD_BYTES, Flapping, FormationView, NodeView, StreamLog};

/// One change of a node's assigned state, with the rule that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub node_id: NodeId,
    pub goal: NodeState,
    pub rule: Rule,
    pub description: String,
}

/// The planner's output for one formation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// Set when a promotion starts: the new term, to persist before anyone is told.
    pub new_term: Option<u64>,
    /// Why the formation is not steady, when it is waiting for something (one line).
    pub waiting: Option<String>,
    /// Set while a needed failover is not happening, with the reason.
    pub blocked: Option<BlockReason>,
    /// Set when a rolling-restart switchover starts: the generation it serves.
    pub rolling_restart_generation: Option<u64>,
    /// Set when the file's `spec.primary` is carried out (or already held): its
    /// generation.
    pub desired_primary_generation: Option<u64>,
    /// Nodes to remove from the formation (dropped, or gone while being dropped).
    pub remove: Vec<NodeId>,
    /// Claims of standbys to cap from now on (node, cap, why): see
    /// [`FormationView::stalled_claim_cap`].
    pub capped_claims: Vec<(NodeId, pgha_api::Lsn, String)>,
}

/// Why a failover that is needed does not happen (the `reason` of
/// `pgha_failover_blocked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockReason {
    /// No healthy secondary to promote.
    NoCandidate,
    /// The anti-flapping limit of automatic failovers in a window is reached.
    TooManyFailovers,
    /// Every healthy secondary has candidate priority 0.
    PriorityZero,
    /// The candidates lack WAL the primary acknowledged or reported.
    Lagging,
    /// A quorum standby that may hold acknowledged commits does not report.
    QuorumNotReporting,
    /// The controller just started and waits one failure timeout before judging.
    WarmingUp,
    /// The formation's term is at its largest value: no promotion can be fenced.
    TermExhausted,
    /// The only standbys run another PostgreSQL major than the primary did.
    VersionSkew,
}

impl BlockReason {
    pub const ALL: [BlockReason; 8] = [
        BlockReason::NoCandidate,
        BlockReason::PriorityZero,
        BlockReason::Lagging,
        BlockReason::QuorumNotReporting,
        BlockReason::WarmingUp,
        BlockReason::TooManyFailovers,
        BlockReason::TermExhausted,
        BlockReason::VersionSkew,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::NoCandidate => "no_candidate",
            BlockReason::PriorityZero => "priority_zero",
            BlockReason::Lagging => "lag",
            BlockReason::QuorumNotReporting => "quorum",
            BlockReason::WarmingUp => "controller_warming_up",
            BlockReason::TooManyFailovers => "too_many_failovers",
            BlockReason::TermExhausted => "term_exhausted",
            BlockReason::VersionSkew => "version_skew",
        }
    }
}

/// The term a new promotion takes: one past the formation's, or None when the term
/// cannot grow (it would wrap to 0, and every agent would refuse every later order).
pub fn next_term(term: u64) -> Option<u64> {
    term.checked_add(1)
}

/// What a plan says when [`next_term`] has none.
pub const TERM_EXHAUSTED: &str = "the formation's term is at its largest value, so no promotion can be ordered (a node reported a term no controller issued?): see `pgha show events` for the node that moved it";

impl Plan {
    fn assign(&mut self, node: &NodeView, goal: NodeState, rule: Rule, why: String) {
        if node.goal != goal && !self.decisions.iter().any(|d| d.node_id == node.id) {
            self.decisions.push(Decision {
                node_id: node.id,
                goal,
                rule,
                description: why,
            });
        }
    }

    fn wait(&mut self, why: String) {
        if self.waiting.is_none() {
            self.waiting = Some(why);
        }
    }
}

fn describe_failure(f: &FormationView, n: &NodeView) -> String {
    let report = match n.last_report_ms {
        Some(t) => format!("no report for {} ms", f.now_ms.saturating_sub(t)),
        None => "no report since the controller started".to_string(),
    };
    if f.is_reporting(n) {
        return "its agent reports Postgres down beyond the restart grace".to_string();
    }
    let probe = match n.last_probe {
        Some((_, false)) => "probe failing",
        Some((_, true)) => "probe stale",
        None => "never probed",
    };
    format!("{report}, {probe}")
}

/// Plans the next assignments of one formation. Level-triggered: calling it again with
/// the same view returns the same plan, and a plan that was applied yields no decisions.
pub fn plan(f: &FormationView) -> Plan {
    let mut p = Plan::default();
    if f.paused {
        // Nothing new is assigned and nothing fails over; nodes keep their roles.
        p.waiting = Some("paused: nothing is assigned or failed over until it resumes".into());
        return p;
    }
    plan_bootstrap(f, &mut p);
    plan_standbys(f, &mut p);
    plan_primary(f, &mut p);
    plan_promotion(f, &mut p);
    plan_rejoin(f, &mut p);
    plan_drop(f, &mut p);
    plan_maintenance(f, &mut p);
    if p.decisions.is_empty() {
        plan_desired_primary(f, &mut p);
    }
    if p.decisions.is_empty() {
        plan_rolling_restart(f, &mut p);
    }
    if let Some(why) = f.backup_refusal() {
        p.wait(why);
    }
    if let Some((declared, running)) = f.declared_major_differs() {
        p.wait(format!(
            "the formation file declares PostgreSQL {declared} (spec.postgresql.version) but its primary runs PostgreSQL {running}: changing the major of a running formation is an upgrade, which this version of pgha does not do; the formation stays on {running} (set the version back to {running})"
        ));
    }
    for n in f.on_other_majors() {
        p.wait(format!(
            "{} runs PostgreSQL {}, the formation {}: it is never elected nor streamed from (give it a data directory of the formation's major)",
            n.name,
            n.pg.major.map(|m| m.to_string()).unwrap_or_default(),
            f.formation_major().map(|m| m.to_string()).unwrap_or_default()
        ));
    }
    for n in f.nodes.iter() {
        if let Some(claim) = n.claimed_lsn {
            p.wait(format!(
                "{} claims WAL up to {claim} but counts as {}: a candidate streaming from it received nothing more (see its claim_capped event)",
                n.name,
                n.pg.lsn.unwrap_or_default()
            ));
        }
    }
    p
}

/// The initial goal of a node that registers into a formation with `others` in it.
pub fn initial_state(others: &[NodeView]) -> NodeState {
    if others.is_empty() {
        NodeState::Single
    } else {
        NodeState::WaitStandby
    }
}

fn plan_bootstrap(f: &FormationView, p: &mut Plan) {
    // R-single-to-wait-primary: a lone primary opens replication for a joining standby.
    let Some(primary) = f.stable_writable() else {
        return;
    };
    if primary.goal == NodeState::Single && f.nodes.iter().any(|n| n.goal == NodeState::WaitStandby)
    {
        p.assign(
            primary,
            NodeState::WaitPrimary,
            Rule::SingleToWaitPrimary,
            "a standby is joining: open pg_hba and a replication slot for it".into(),
        );
    }
}

fn plan_standbys(f: &FormationView, p: &mut Plan) {
    let primary = f.stable_writable();
    for n in &f.nodes {
        match (n.goal, n.reported) {
            (NodeState::WaitStandby, NodeState::WaitStandby) => {
                let Some(pr) = primary else { continue };
                if pr.goal == NodeState::Single {
                    continue;
                }
                if pr.pg.prepared_for.contains(&n.id) {
                    p.assign(
                        n,
                        NodeState::Catchingup,
                        Rule::WaitStandbyToCatchingup,
                        format!("primary {} is ready for it: base backup", pr.name),
                    );
                } else {
                    p.wait(format!(
                        "{} waits for {} to open pg_hba and a slot",
                        n.name, pr.name
                    ));
                }
            }
            (NodeState::Catchingup, NodeState::Catchingup) => {
                let Some(pr) = primary else { continue };
                // A node on another major cannot stream from the primary: it never
                // becomes a secondary (plan() says why).
                if !f.is_healthy(n) || !f.on_formation_major(n) {
                    continue;
                }
                let same_tli = n.pg.timeline.is_some() && n.pg.timeline == pr.pg.timeline;
                let lag = match (pr.pg.lsn, n.pg.lsn) {
                    (Some(a), Some(b)) => Some(a.bytes_ahead_of(b)),
                    _ => None,
                };
                match lag {
                    // Streaming too: a standby cut off from the primary is close behind
                    // only because nothing could be written without it.
                    Some(lag)
                        if same_tli
                            && lag <= CATCHUP_THRESHOLD_BYTES
                            && n.pg.upstream_streaming =>
                    {
                        p.assign(
                            n,
                            NodeState::Secondary,
                            Rule::CatchingupToSecondary,
                            format!("caught up with {} ({lag} bytes behind)", pr.name),
                        )
                    }
                    _ => p.wait(format!("{} is catching up with {}", n.name, pr.name)),
                }
            }
            (NodeState::Secondary, _) if f.is_failed(n) => p.assign(
                n,
                NodeState::Catchingup,
                Rule::UnhealthySecondary,
                format!("secondary failed: {}", describe_failure(f, n)),
            ),
            // Alive but cut off from the primary (both still reach the controller): a
            // synchronous primary would wait for it for ever. pg_auto_failover reads the
            // same from the primary's pg_stat_replication. Only once the primary went on
            // reporting for the failure timeout after the standby last heard from it: a
            // primary that died (its standbys' last receipts are about its last report)
            // is failed over first, and this standby stays a candidate, even if its
            // receiver had stalled a moment before.
            (NodeState::Secondary, NodeState::Secondary)
                if f.is_reporting(n)
                    && !n.pg.upstream_streaming
                    && let Some(pr) =
                        primary.filter(|pr| pr.id != n.id && f.reported_lately(pr))
                    && let Some(lost_ms) = f.stopped_streaming_from_for(n, pr)
                    && lost_ms >= f.timings.failure_timeout_ms
                    && pr.last_report_ms.is_some_and(|r| {
                        r + lost_ms >= f.now_ms + f.timings.failure_timeout_ms
                    }) =>
            {
                p.assign(
                    n,
                    NodeState::Catchingup,
                    Rule::UnhealthySecondary,
                    format!(
                        "secondary stopped streaming from {} {lost_ms} ms ago",
                        pr.name
                    ),
                )
            }
            _ => {}
        }
    }
}

fn plan_primary(f: &FormationView, p: &mut Plan) {
    let Some(pr) = f.writable_goal() else { return };
    if f.warming_up() && !f.is_reporting(pr) && f.nodes.len() > 1 {
        p.blocked = Some(BlockReason::WarmingUp);
        p.wait(format!(
            "{} has not reported since the controller started; judging it after the warm-up",
            pr.name
        ));
        return;
    }
    if f.primary_failed(pr) {
        plan_failover(f, pr, p);
        return;
    }
    if let Some(s) = f
        .streaming_from(pr)
        .filter(|_| f.is_failed(pr) && !f.is_reporting(pr))
    {
        p.wait(format!(
            "{} does not answer the controller, but {} streams from it: no failover while it serves",
            pr.name, s.name
        ));
    }
    if pr.reported != pr.goal {
        return;
    }
    if f.nodes.len() == 1 && pr.goal != NodeState::Single {
        p.assign(
            pr,
            NodeState::Single,
            Rule::LastNodeToSingle,
            format!(
                "{} is the only node left: no replication to wait for",
                pr.name
            ),
        );
        return;
    }
    let quorum = f.healthy_quorum_secondaries();
    match pr.goal {
        NodeState::WaitPrimary if !quorum.is_empty() => p.assign(
            pr,
            NodeState::Primary,
            Rule::WaitPrimaryToPrimary,
            format!(
                "{} is a healthy quorum secondary: enable synchronous replication",
                quorum[0].name
            ),
        ),
        NodeState::Primary if quorum.is_empty() && f.number_sync_standbys == 0 => p.assign(
            pr,
            NodeState::WaitPrimary,
            Rule::PrimaryToWaitPrimary,
            "no healthy quorum secondary left: disable synchronous replication so writes continue"
                .into(),
        ),
        NodeState::Primary if quorum.is_empty() => p.wait(format!(
            "writes on {} block: number_sync_standbys={} and no healthy quorum secondary",
            pr.name, f.number_sync_standbys
        )),
        _ => {}
    }
}

fn plan_rejoin(f: &FormationView, p: &mut Plan) {
    let Some(pr) = f.stable_writable() else {
        return;
    };
    if pr.goal == NodeState::Single {
        return;
    }
    for n in &f.nodes {
        if n.goal == NodeState::Demoted && n.reported == NodeState::Demoted && f.is_reporting(n) {
            if pr.pg.prepared_for.contains(&n.id) {
                p.assign(
                    n,
                    NodeState::Catchingup,
                    Rule::DemotedToCatchingup,
                    format!("rejoin as a standby of {} (pg_rewind)", pr.name),
                );
            } else {
                p.wait(format!("{} waits for {} to open a slot", n.name, pr.name));
            }
        }
    }
}

#[cfg(test)]
mod tests;
