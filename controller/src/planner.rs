//! The pure planner: `plan(formation view, now) -> decisions`.
//!
//! No I/O, no clock reads, no randomness: everything it needs is in [`FormationView`],
//! including `now`. The controller's I/O shell builds the view from its store and the
//! agents' reports, applies the returned [`Plan`] (persisting the term before anyone is
//! told), and records the events. State names and most rules follow pg_auto_failover
//! (reference study §2.3); rule ids are stable strings that show up in events.
//!
//! Safety rules enforced here (DESIGN §5):
//! - at most one node has a writable goal at any time, and a standby gets one only
//!   through `stop_replication` after the old primary acknowledged its demotion or its
//!   lease certainly ran out ([`lease_certainly_expired`]);
//! - a fresh controller declares nobody failed during its warm-up window;
//! - failover from `wait_primary` (asynchronous) only to a standby holding every LSN the
//!   primary last reported, so no write the controller knows of is lost.

use pgha_api::{Lsn, NodeId, NodeState, PgObservation, Timings};

/// A standby is "caught up" when at most this many bytes behind (pg_auto_failover's 16 MB).
pub const CATCHUP_THRESHOLD_BYTES: u64 = 16 * 1024 * 1024;

/// What the controller knows about one node at planning time.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    pub name: String,
    pub goal: NodeState,
    /// Last state the agent reported reaching (`init` before any report).
    pub reported: NodeState,
    pub candidate_priority: u8,
    pub replication_quorum: bool,
    /// Controller time of the last report since the controller started.
    pub last_report_ms: Option<u64>,
    /// Last reported observation of the node's Postgres.
    pub pg: PgObservation,
    /// Controller time since which the agent has reported Postgres down (None: running).
    pub pg_down_since_ms: Option<u64>,
    /// Controller time (conservative estimate) at which the node last streamed from its
    /// upstream; None when streaming now or unknown.
    pub upstream_lost_at_ms: Option<u64>,
    /// The node's address (as standbys name it in their WAL receivers).
    pub host: String,
    pub port: u16,
    /// Where the node streamed from; None when its agent does not say (then
    /// `upstream_lost_at_ms` counts for every address).
    pub streamed_from_at: Option<StreamLog>,
    /// Result and time of the controller's last SQL probe of the node.
    pub last_probe: Option<(u64, bool)>,
    /// Controller time of the last successful probe.
    pub last_probe_ok_ms: Option<u64>,
    /// Generation of the desired state whose settings the node has in force.
    pub applied_generation: u64,
    /// The formation file (when it lists its nodes) still declares this node.
    pub declared: bool,
    /// The formation file asks for this node to be in maintenance.
    pub maintenance: bool,
}

/// Where a standby's WAL receiver streamed from, in controller time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamLog {
    /// Since when its agent has been watching (before that it may have streamed from
    /// anywhere).
    pub watching_since_ms: u64,
    /// (host, port, last seen streaming from there).
    pub contacts: Vec<(String, u16, u64)>,
}

/// Everything the planner looks at for one formation.
#[derive(Debug, Clone, PartialEq)]
pub struct FormationView {
    pub name: String,
    pub term: u64,
    pub number_sync_standbys: u32,
    pub timings: Timings,
    /// When this controller process started (for the warm-up rule).
    pub controller_started_ms: u64,
    pub now_ms: u64,
    pub nodes: Vec<NodeView>,
    /// Generation of the desired state (formation file).
    pub generation: u64,
    /// Last generation for which a rolling-restart switchover was done.
    pub rolling_restart_generation: u64,
    /// An operator allowed this term's failover to lose data (`pgha perform failover
    /// --allow-data-loss`): the data-loss guard is lifted, and nodes that do not report
    /// are taken as down for the old primary's lease.
    pub allow_data_loss: bool,
    /// WAL position of the writable node when it last turned synchronous: writes up to
    /// there may have been acknowledged without a standby (in wait_primary, or in an
    /// earlier term by a primary that is gone), so a failover needs them too.
    pub sync_floor_lsn: Lsn,
    /// The node the formation file names as primary (`spec.primary`).
    pub desired_primary: Option<String>,
    /// Last generation whose `spec.primary` was carried out (or already held).
    pub desired_primary_generation: u64,
}

/// One change of a node's assigned state, with the rule that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub node_id: NodeId,
    pub goal: NodeState,
    pub rule: &'static str,
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
}

/// Why a failover that is needed does not happen (the `reason` of
/// `pgha_failover_blocked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockReason {
    /// No healthy secondary to promote.
    NoCandidate,
    /// Every healthy secondary has candidate priority 0.
    PriorityZero,
    /// The candidates lack WAL the primary acknowledged or reported.
    Lagging,
    /// A quorum standby that may hold acknowledged commits does not report.
    QuorumNotReporting,
    /// The controller just started and waits one failure timeout before judging.
    WarmingUp,
}

impl BlockReason {
    pub const ALL: [BlockReason; 5] = [
        BlockReason::NoCandidate,
        BlockReason::PriorityZero,
        BlockReason::Lagging,
        BlockReason::QuorumNotReporting,
        BlockReason::WarmingUp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::NoCandidate => "no_candidate",
            BlockReason::PriorityZero => "priority_zero",
            BlockReason::Lagging => "lag",
            BlockReason::QuorumNotReporting => "quorum",
            BlockReason::WarmingUp => "controller_warming_up",
        }
    }
}

impl Plan {
    fn assign(&mut self, node: &NodeView, goal: NodeState, rule: &'static str, why: String) {
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

impl FormationView {
    fn warming_up(&self) -> bool {
        self.now_ms < self.controller_started_ms + self.timings.failure_timeout_ms
    }

    /// The agent reported within the failure timeout.
    pub fn is_reporting(&self, n: &NodeView) -> bool {
        n.last_report_ms
            .is_some_and(|t| self.now_ms.saturating_sub(t) < self.timings.failure_timeout_ms)
    }

    /// Postgres answered the controller's last probe, recently.
    fn probe_ok(&self, n: &NodeView) -> bool {
        matches!(n.last_probe, Some((_, true)))
            && n.last_probe_ok_ms
                .is_some_and(|t| self.now_ms.saturating_sub(t) < self.timings.failure_timeout_ms)
    }

    /// Healthy enough to be promoted or to count as a synchronous standby: a live agent
    /// reporting a running Postgres.
    pub fn is_healthy(&self, n: &NodeView) -> bool {
        self.is_reporting(n) && n.pg.running
    }

    /// Failed: its Postgres is down for longer than we restart in place, or neither its
    /// agent nor its Postgres answered for the failure timeout. Never during warm-up.
    pub fn is_failed(&self, n: &NodeView) -> bool {
        if self.warming_up() {
            return false;
        }
        if self.is_reporting(n) {
            return n
                .pg_down_since_ms
                .is_some_and(|t| self.now_ms.saturating_sub(t) >= self.timings.restart_grace_ms);
        }
        !self.probe_ok(n)
    }

    /// A node stable in one of the writable states (goal and report agree).
    fn stable_writable(&self) -> Option<&NodeView> {
        self.nodes
            .iter()
            .find(|n| n.goal.is_writable() && n.reported == n.goal)
    }

    fn writable_goal(&self) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.goal.is_writable())
    }

    /// The old primary of a promotion in progress (a `demoted` node is done with it).
    fn demoting(&self) -> Option<&NodeView> {
        self.nodes
            .iter()
            .find(|n| matches!(n.goal, NodeState::Draining | NodeState::DemoteTimeout))
    }

    fn promoting(&self) -> Option<&NodeView> {
        self.nodes.iter().find(|n| {
            matches!(
                n.goal,
                NodeState::FastForward | NodeState::PreparePromotion | NodeState::StopReplication
            )
        })
    }

    /// Standbys that hold data and report a running Postgres, in a state a failover may
    /// promote or copy WAL from.
    fn live_standbys(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes.iter().filter(|n| {
            matches!(
                n.goal,
                NodeState::Secondary | NodeState::FastForward | NodeState::PreparePromotion
            ) && n.reported == n.goal
                && self.is_healthy(n)
        })
    }

    /// The most advanced live standby other than `except` (ties: lowest id). A failover
    /// candidate that lacks WAL this one has streams it from here first (fast_forward).
    fn most_advanced_standby(&self, except: NodeId) -> Option<&NodeView> {
        self.live_standbys()
            .filter(|n| n.id != except && n.pg.lsn.is_some())
            .max_by_key(|n| (n.pg.lsn, std::cmp::Reverse(n.id)))
    }

    /// The old primary acknowledged its demotion: its agent reports it stopped Postgres.
    fn acked_demotion(&self, old: &NodeView) -> bool {
        self.is_reporting(old)
            && matches!(
                old.reported,
                NodeState::Draining | NodeState::DemoteTimeout | NodeState::Demoted
            )
            && !old.pg.running
    }

    /// The old primary has certainly fenced itself: it has not heard from the controller
    /// for its lease (plus margin), and no other node has streamed from it for as long.
    /// A primary fences when it loses both (agent side), so past this point it accepts no
    /// write. A node that does not report might still be streaming from the old primary
    /// (the two could be cut off together), so it holds the promotion; nodes that never
    /// held data (init, wait_standby) cannot stream.
    pub fn lease_certainly_expired(&self, old: &NodeView) -> bool {
        let wait = self.timings.lease_ms + self.timings.lease_margin_ms;
        let last_ack = old.last_report_ms.unwrap_or(self.controller_started_ms);
        let controller_lease_over = self.now_ms >= last_ack + wait;
        let standbys_gone = self.nodes.iter().filter(|n| n.id != old.id).all(|n| {
            matches!(n.reported, NodeState::Init | NodeState::WaitStandby)
                // Out of service and acknowledged so: its Postgres is stopped.
                || (matches!(n.goal, NodeState::Maintenance | NodeState::Dropped)
                    && n.reported == n.goal)
                // An older primary: since it was writable it was told to stop and
                // nothing else, so it cannot be streaming from `old`.
                || matches!(
                    n.goal,
                    NodeState::Demoted | NodeState::Draining | NodeState::DemoteTimeout
                )
                || (self.is_reporting(n) && self.stopped_streaming_from(n, old, wait))
                // The operator declared the silent nodes down (--allow-data-loss).
                || (self.allow_data_loss && !self.is_reporting(n) && self.is_failed(n))
        });
        controller_lease_over && standbys_gone
    }

    /// `n` has not streamed from `old` for `wait` ms. Streaming from another address (a
    /// standby it fast-forwards from) sends no reply to `old` and does not count.
    fn stopped_streaming_from(&self, n: &NodeView, old: &NodeView, wait: u64) -> bool {
        match &n.streamed_from_at {
            Some(log) => {
                let last = log
                    .contacts
                    .iter()
                    .filter(|(h, p, _)| *h == old.host && *p == old.port)
                    .map(|(_, _, t)| *t)
                    .max()
                    .unwrap_or(log.watching_since_ms);
                self.now_ms >= last + wait
            }
            None => {
                !n.pg.upstream_streaming
                    && n.upstream_lost_at_ms
                        .is_some_and(|t| self.now_ms >= t + wait)
            }
        }
    }

    /// The node a standby streams from: the writable node; during a promotion only the
    /// candidate keeps streaming from the old primary (to get its last WAL), the other
    /// standbys cut replication so the old primary's lease can run out.
    pub fn upstream_of(&self, n: &NodeView) -> Option<&NodeView> {
        if !n.goal.streams_from_upstream() {
            return None;
        }
        if n.goal == NodeState::FastForward {
            return self
                .most_advanced_standby(n.id)
                .filter(|s| s.pg.lsn > n.pg.lsn);
        }
        if let Some(w) = self.writable_goal().filter(|w| w.id != n.id) {
            return Some(w);
        }
        if n.goal == NodeState::PreparePromotion {
            return self
                .demoting()
                .filter(|o| matches!(o.goal, NodeState::Draining | NodeState::DemoteTimeout));
        }
        None
    }

    /// Standbys that may take part in synchronous replication right now.
    fn healthy_quorum_secondaries(&self) -> Vec<&NodeView> {
        self.nodes
            .iter()
            .filter(|n| {
                n.goal == NodeState::Secondary
                    && n.reported == NodeState::Secondary
                    && n.replication_quorum
                    && !self.is_failed(n)
            })
            .collect()
    }

    /// `synchronous_standby_names` for the writable node, from its goal and the standbys.
    pub fn synchronous_standby_names(&self, primary: &NodeView) -> String {
        if primary.goal != NodeState::Primary {
            return String::new();
        }
        let quorum = |states: &[NodeState]| {
            self.nodes
                .iter()
                .filter(|n| n.id != primary.id && n.replication_quorum && states.contains(&n.goal))
                .collect::<Vec<&NodeView>>()
        };
        let mut members = quorum(&[NodeState::Secondary]);
        if self.number_sync_standbys > 0 && members.len() < self.number_sync_standbys as usize {
            // Fewer secondaries than the file asks to confirm each commit: writes block
            // rather than go on with less durability, until standbys come back.
            members.extend(quorum(&[NodeState::Catchingup, NodeState::Maintenance]));
        }
        if members.is_empty() {
            return String::new();
        }
        members.sort_by_key(|n| (std::cmp::Reverse(n.candidate_priority), n.id));
        let names: Vec<String> = members
            .iter()
            .map(|n| pgha_api::standby_application_name(n.id))
            .collect();
        let k = self.number_sync_standbys.max(1);
        format!("ANY {k} ({})", names.join(", "))
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
    p
}

/// `spec.primary` in the formation file: a switchover to the named node once it is a
/// healthy caught-up secondary, once per generation of the file.
fn plan_desired_primary(f: &FormationView, p: &mut Plan) {
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

/// Maintenance from the formation file: a standby stops and stays out of service; a
/// primary hands over first (only when a candidate exists); back out, a node rejoins as
/// a standby (catchingup).
fn plan_maintenance(f: &FormationView, p: &mut Plan) {
    if f.promoting().is_some() || f.demoting().is_some() {
        return;
    }
    for n in &f.nodes {
        match (n.maintenance, n.goal) {
            (true, NodeState::Secondary | NodeState::Catchingup | NodeState::WaitStandby) => p
                .assign(
                    n,
                    NodeState::Maintenance,
                    "maintenance_start",
                    format!(
                        "{} enters maintenance: Postgres stopped, out of service",
                        n.name
                    ),
                ),
            (true, g) if g.is_writable() && f.nodes.len() > 1 => match plan_switchover(f) {
                Ok((mut plan, _, _)) if p.decisions.is_empty() => {
                    for d in &mut plan.decisions {
                        d.description = format!(
                            "{} enters maintenance: hand over first; {}",
                            n.name, d.description
                        );
                    }
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
                        "maintenance_end",
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
fn plan_drop(f: &FormationView, p: &mut Plan) {
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
                    "undeclared_node_dropped",
                    format!("{} is no longer in the formation file: dropped", n.name),
                );
                continue;
            }
            match plan_switchover(f) {
                Ok((plan, _, _)) if p.decisions.is_empty() => {
                    let mut plan = plan;
                    for d in &mut plan.decisions {
                        d.description = format!(
                            "{} is no longer in the formation file: hand over before dropping it; {}",
                            n.name, d.description
                        );
                    }
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
            "undeclared_node_dropped",
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
fn plan_rolling_restart(f: &FormationView, p: &mut Plan) {
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
    match plan_switchover(f) {
        Ok((mut plan, _, _)) => {
            for d in &mut plan.decisions {
                d.description = format!(
                    "rolling restart for {}: {}",
                    pr.pg.pending_restart.join(", "),
                    d.description
                );
            }
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
            "single_to_wait_primary",
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
                        "wait_standby_to_catchingup",
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
                if !f.is_healthy(n) {
                    continue;
                }
                let same_tli = n.pg.timeline.is_some() && n.pg.timeline == pr.pg.timeline;
                let lag = match (pr.pg.lsn, n.pg.lsn) {
                    (Some(a), Some(b)) => Some(a.bytes_ahead_of(b)),
                    _ => None,
                };
                match lag {
                    Some(lag) if same_tli && lag <= CATCHUP_THRESHOLD_BYTES => p.assign(
                        n,
                        NodeState::Secondary,
                        "catchingup_to_secondary",
                        format!("caught up with {} ({lag} bytes behind)", pr.name),
                    ),
                    _ => p.wait(format!("{} is catching up with {}", n.name, pr.name)),
                }
            }
            (NodeState::Secondary, _) if f.is_failed(n) => p.assign(
                n,
                NodeState::Catchingup,
                "unhealthy_secondary",
                format!("secondary failed: {}", describe_failure(f, n)),
            ),
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
    if f.is_failed(pr) {
        plan_failover(f, pr, p);
        return;
    }
    if pr.reported != pr.goal {
        return;
    }
    if f.nodes.len() == 1 && pr.goal != NodeState::Single {
        p.assign(
            pr,
            NodeState::Single,
            "last_node_to_single",
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
            "wait_primary_to_primary",
            format!(
                "{} is a healthy quorum secondary: enable synchronous replication",
                quorum[0].name
            ),
        ),
        NodeState::Primary if quorum.is_empty() && f.number_sync_standbys == 0 => p.assign(
            pr,
            NodeState::WaitPrimary,
            "primary_to_wait_primary",
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
        return Err((BlockReason::NoCandidate, "no healthy secondary".into()));
    }
    let mut candidates: Vec<&NodeView> = healthy
        .iter()
        .copied()
        .filter(|n| n.candidate_priority > 0)
        .collect();
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

fn plan_failover(f: &FormationView, pr: &NodeView, p: &mut Plan) {
    if !matches!(pr.goal, NodeState::Primary | NodeState::WaitPrimary) {
        p.wait(format!(
            "{} is {} and failed; no standby to fail over to",
            pr.name, pr.goal
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
    p.new_term = Some(f.term + 1);
    p.assign(
        pr,
        NodeState::Draining,
        "failover_drain_primary",
        why.clone(),
    );
    p.assign(e.winner, e.winner_goal(), "failover_promote", why);
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
        new_term: Some(f.term + 1),
        ..Plan::default()
    };
    let why = format!("switchover requested: {} -> {}", pr.name, winner.name);
    p.assign(
        pr,
        NodeState::Draining,
        "switchover_drain_primary",
        why.clone(),
    );
    p.assign(
        winner,
        NodeState::PreparePromotion,
        "switchover_promote",
        why,
    );
    Ok((p, pr.id, winner.id))
}

/// Gives the primary role back to the old primary when the promotion cannot finish
/// safely (the candidate failed, or lacks WAL the old primary has). The candidate was
/// never writable, so this is always safe.
fn abort_promotion(f: &FormationView, old: &NodeView, cand: &NodeView, why: String, p: &mut Plan) {
    p.new_term = Some(f.term + 1);
    let why = format!(
        "promotion of {} aborted: {why}; {} stays primary",
        cand.name, old.name
    );
    p.assign(
        old,
        NodeState::WaitPrimary,
        "promotion_aborted",
        why.clone(),
    );
    p.assign(cand, NodeState::Catchingup, "promotion_aborted", why);
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
                "promotion_reelected",
                why.clone(),
            );
            p.assign(e.winner, e.winner_goal(), "promotion_reelected", why);
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

fn plan_promotion(f: &FormationView, p: &mut Plan) {
    let Some(cand) = f.promoting() else { return };
    let old = f.demoting();
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
        (NodeState::PreparePromotion, NodeState::PreparePromotion) => match old {
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
                        "prepare_promotion_to_stop_replication",
                        format!(
                            "{} stopped at {final_lsn} and {} has it all",
                            old.name, cand.name
                        ),
                    );
                } else if settled {
                    abort_promotion(
                        f,
                        old,
                        cand,
                        format!(
                            "it stopped at {} and {} has up to {final_lsn}",
                            cand.pg.lsn.unwrap_or_default(),
                            old.name
                        ),
                        p,
                    );
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
                        "prepare_promotion_to_stop_replication",
                        format!(
                            "{} is failed: cut replication and wait for its lease",
                            old.name
                        ),
                    ),
                    Some(s) => p.assign(
                        cand,
                        NodeState::FastForward,
                        "fast_forward",
                        format!(
                            "{} has WAL up to {} that {} lacks: stream it first",
                            s.name,
                            s.pg.lsn.unwrap_or_default(),
                            cand.name
                        ),
                    ),
                });
            }
            Some(old) => p.wait(format!("waiting for {} to stop Postgres", old.name)),
            None => p.assign(
                cand,
                NodeState::StopReplication,
                "prepare_promotion_to_stop_replication",
                "no old primary left".into(),
            ),
        },
        (NodeState::FastForward, NodeState::FastForward) => match old {
            Some(old) if f.is_failed(old) => reelect_or(f, old, cand, p, |e, p| match e.source {
                None => p.assign(
                    cand,
                    NodeState::PreparePromotion,
                    "fast_forward_done",
                    format!(
                        "{} has all the WAL the live standbys have ({})",
                        cand.name,
                        cand.pg.lsn.unwrap_or_default()
                    ),
                ),
                Some(s) => p.wait(format!(
                    "{} streams the WAL it lacks from {} ({} bytes to go)",
                    cand.name,
                    s.name,
                    s.pg.lsn
                        .unwrap_or_default()
                        .bytes_ahead_of(cand.pg.lsn.unwrap_or_default())
                )),
            }),
            // The old primary is back (or never left): the usual hand-over takes the
            // WAL it has, or gives it its role back.
            _ => p.assign(
                cand,
                NodeState::PreparePromotion,
                "fast_forward_done",
                "the old primary answers again: take its last WAL from it".into(),
            ),
        },
        (NodeState::StopReplication, NodeState::StopReplication) => {
            let fenced = match old {
                None => Some("no old primary left".to_string()),
                Some(old) if f.acked_demotion(old) => {
                    Some(format!("{} acknowledged its demotion", old.name))
                }
                Some(old) if f.lease_certainly_expired(old) => Some(format!(
                    "the lease of {} certainly ran out (no report for {} ms)",
                    old.name,
                    f.now_ms
                        .saturating_sub(old.last_report_ms.unwrap_or(f.controller_started_ms))
                )),
                Some(old) => {
                    p.wait(format!(
                        "waiting for {} to acknowledge demotion or its lease to run out",
                        old.name
                    ));
                    None
                }
            };
            if let Some(why) = fenced {
                if let Some(old) = old {
                    p.assign(old, NodeState::Demoted, "old_primary_demoted", why.clone());
                }
                p.assign(
                    cand,
                    NodeState::WaitPrimary,
                    "stop_replication_to_wait_primary",
                    format!("{why}: {} is the primary now", cand.name),
                );
            }
        }
        _ => p.wait(format!("{} is reaching {}", cand.name, cand.goal)),
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
                    "demoted_to_catchingup",
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
