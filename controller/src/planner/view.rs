//! What the planner sees: one formation's nodes as the controller knows them, and the
//! judgements every rule shares (reporting, healthy, failed, the old primary's lease,
//! who streams from whom, `synchronous_standby_names`).

use pgha_api::Lsn;
use pgha_api::NodeId;
use pgha_api::NodeState;
use pgha_api::PgObservation;
use pgha_api::Timings;
/// A standby is "caught up" when at most this many bytes behind (pg_auto_failover's 16 MB).
pub const CATCHUP_THRESHOLD_BYTES: u64 = 16 * 1024 * 1024;

/// A standby's report says it streams "now" from an upstream it last received from
/// within this long before the report was sent. Agents date a contact by the WAL
/// receiver's last receipt: a live primary sends within ~0.5 s (its WAL, or its idle
/// heartbeat) and answers the receiver's ping after 1 s of silence at the latest.
pub const STREAMING_NOW_MS: u64 = 2000;
/// How long a candidate in fast_forward may stream from a standby and receive nothing
/// before that standby's claim beyond what the primary confirmed is taken as false.
pub const FAST_FORWARD_STALL_MS: u64 = 15_000;

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
    /// Its pre-promote hook refused its promotion in the current term.
    pub promotion_refused: bool,
    /// The file's `replicateFrom`: the standby it streams from while that one is a
    /// healthy secondary.
    pub replicate_from: Option<NodeId>,
    /// Controller time at which the node's reported LSN or state last changed.
    pub progress_at_ms: Option<u64>,
    /// The LSN the node claims when the controller capped it (`pg.lsn` holds the cap):
    /// a candidate streaming from it received nothing of what it claimed beyond that
    /// (see [`FormationView::stalled_claim_cap`]).
    pub claimed_lsn: Option<Lsn>,
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

/// Automatic failovers in the anti-flapping window, and the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flapping {
    /// Allowed per window; 0: no limit.
    pub max_failovers: u32,
    pub window_ms: u64,
    /// Automatic failovers started within the window.
    pub recent: u32,
    /// When the oldest of them leaves the window.
    pub next_allowed_in_ms: u64,
}

impl Flapping {
    pub fn exhausted(&self) -> bool {
        self.max_failovers > 0 && self.recent >= self.max_failovers
    }
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
    /// The major the formation file declares (`spec.postgresql.version`).
    pub declared_major: Option<pgha_api::PgMajor>,
    /// The formation file has a backup section.
    pub backup_declared: bool,
    /// The node the formation file names as primary (`spec.primary`).
    pub desired_primary: Option<String>,
    /// Last generation whose `spec.primary` was carried out (or already held).
    pub desired_primary_generation: u64,
    /// Paused: the planner assigns nothing.
    pub paused: bool,
    /// Automatic failovers against the anti-flapping limit.
    pub flapping: Flapping,
}

impl FormationView {
    pub(super) fn warming_up(&self) -> bool {
        self.now_ms < self.controller_started_ms + self.timings.failure_timeout_ms
    }

    /// The agent reported within the failure timeout.
    pub fn is_reporting(&self, n: &NodeView) -> bool {
        n.last_report_ms
            .is_some_and(|t| self.now_ms.saturating_sub(t) < self.timings.failure_timeout_ms)
    }

    /// The agent reported within two report intervals: alive now, not merely not yet
    /// judged failed (what a rule acting on a standby's word needs, so that a primary
    /// that died a moment ago is not mistaken for a link cut).
    pub fn reported_lately(&self, n: &NodeView) -> bool {
        n.last_report_ms
            .is_some_and(|t| self.now_ms.saturating_sub(t) <= 2 * self.timings.report_interval_ms)
    }

    /// Postgres answered the controller's last probe, recently.
    pub(super) fn probe_ok(&self, n: &NodeView) -> bool {
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

    /// The primary is failed and no standby streams from it: a failover is needed.
    ///
    /// A primary a standby still streams from is alive, whatever the controller's own
    /// link to it says: cut off from the controller alone it keeps serving (and does not
    /// fence itself, since its standby streams), so failing it over would only trade a
    /// working primary for a write outage. Once a promotion is under way this no longer
    /// counts (the candidate streams from the old primary on purpose, for its last WAL),
    /// nor when the primary's own agent reports its Postgres down.
    pub fn primary_failed(&self, pr: &NodeView) -> bool {
        self.is_failed(pr) && (self.is_reporting(pr) || self.streaming_from(pr).is_none())
    }

    /// A node whose last report (a fresh one) says it was streaming from `old` when it
    /// was sent.
    pub fn streaming_from(&self, old: &NodeView) -> Option<&NodeView> {
        self.nodes
            .iter()
            .find(|n| n.id != old.id && self.is_reporting(n) && self.streams_now_from(n, old))
    }

    /// `n`'s last report says it was streaming from `up` when it was sent.
    pub fn streams_now_from(&self, n: &NodeView, up: &NodeView) -> bool {
        n.last_report_ms
            .is_some_and(|sent| match &n.streamed_from_at {
                Some(log) => log.contacts.iter().any(|(h, p, t)| {
                    *h == up.host && *p == up.port && t + STREAMING_NOW_MS >= sent
                }),
                // An agent that does not say from where: its upstream by the plan.
                None => {
                    n.pg.upstream_streaming && self.upstream_of(n).is_some_and(|u| u.id == up.id)
                }
            })
    }

    /// The position up to which the primary (the one being replaced, or the writable
    /// node) last said standby `n` had flushed: what `n` certainly received.
    pub fn confirmed_lsn(&self, n: &NodeView) -> Option<Lsn> {
        let name = pgha_api::standby_application_name(n.id);
        self.demoting()
            .or(self.writable_goal())
            .filter(|p| p.id != n.id)?
            .pg
            .standbys
            .iter()
            .filter(|s| s.application_name == name)
            .filter_map(|s| s.flush_lsn)
            .max()
    }

    /// The cap for the claim of standby `s`, when candidate `cand` (in fast_forward)
    /// has streamed from `s` for [`FAST_FORWARD_STALL_MS`] and received nothing while
    /// `s` claims WAL beyond what `cand` has and beyond what the primary confirmed `s`
    /// received. A standby that answers a stream sends the WAL it has, so only a false
    /// claim (a compromised node's: the second security review, item 4) stalls a
    /// connected candidate. A source the candidate does not reach is waited for, never
    /// capped: its unconfirmed WAL may hold acknowledged commits.
    pub fn stalled_claim_cap(&self, cand: &NodeView, s: &NodeView) -> Option<Lsn> {
        let stalled = cand.goal == NodeState::FastForward
            && cand.reported == NodeState::FastForward
            && self.is_reporting(cand)
            && cand.pg.upstream_streaming
            && self.streams_now_from(cand, s)
            && cand
                .progress_at_ms
                .is_some_and(|t| self.now_ms >= t + FAST_FORWARD_STALL_MS);
        let cap = self
            .confirmed_lsn(s)
            .unwrap_or_default()
            .max(cand.pg.lsn.unwrap_or_default());
        (stalled && s.pg.lsn.is_some_and(|l| l > cap)).then_some(cap)
    }

    /// A node stable in one of the writable states (goal and report agree).
    pub(super) fn stable_writable(&self) -> Option<&NodeView> {
        self.nodes
            .iter()
            .find(|n| n.goal.is_writable() && n.reported == n.goal)
    }

    pub(super) fn writable_goal(&self) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.goal.is_writable())
    }

    /// The old primary of a promotion in progress (a `demoted` node is done with it).
    pub(super) fn demoting(&self) -> Option<&NodeView> {
        self.nodes
            .iter()
            .find(|n| matches!(n.goal, NodeState::Draining | NodeState::DemoteTimeout))
    }

    pub(super) fn promoting(&self) -> Option<&NodeView> {
        self.nodes.iter().find(|n| {
            matches!(
                n.goal,
                NodeState::FastForward | NodeState::PreparePromotion | NodeState::StopReplication
            )
        })
    }

    /// Standbys that hold data and report a running Postgres, in a state a failover may
    /// promote or copy WAL from.
    pub(super) fn live_standbys(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes.iter().filter(|n| {
            self.on_formation_major(n)
                && matches!(
                    n.goal,
                    NodeState::Secondary
                        | NodeState::FastForward
                        | NodeState::PreparePromotion
                        | NodeState::StopReplication
                )
                && n.reported == n.goal
                && self.is_healthy(n)
        })
    }

    /// The primary's replication slots of the standbys a failover may promote (live,
    /// candidate priority above 0, streaming from it through a slot): on a major with
    /// failover slots, a logical consumer receives a change only once they all have it
    /// (`synchronized_standby_slots`). One that fails drops out after the failure
    /// timeout, so a dead standby stalls consumers for that long at most.
    pub fn failover_candidate_slots(&self) -> Vec<String> {
        let Some(pr) = self.writable_goal() else {
            return vec![];
        };
        self.live_standbys()
            .filter(|n| n.id != pr.id && n.candidate_priority > 0 && self.keeps_slot(n))
            .map(|n| pgha_api::replication_slot_name(n.id))
            .collect()
    }

    /// Whether the primary keeps a replication slot for `n`: only for a node that
    /// streams or is about to. Not one in maintenance, dropped, or failed (unless it is
    /// still joining: its base backup, which sends no report while it runs, streams
    /// through the slot). A dead node's slot would otherwise keep WAL until the
    /// primary's disk is full.
    ///
    /// A node whose agent reports keeps its slot even with its Postgres down: an old
    /// primary waiting in `demoted` (say, until its full disk is freed) needs the slot
    /// to rejoin, and `maxSlotWalKeepSize` bounds what the slot holds meanwhile.
    pub fn keeps_slot(&self, n: &NodeView) -> bool {
        // A cascading standby streams through no slot of the primary (one it did not
        // use would hold WAL until invalidated, and then rebuild the node).
        !matches!(n.goal, NodeState::Maintenance | NodeState::Dropped)
            && self.cascade_upstream(n).is_none()
            && (!self.is_failed(n)
                || self.is_reporting(n)
                || matches!(n.reported, NodeState::Init | NodeState::WaitStandby))
    }

    /// The most advanced standby other than `except` that a failover candidate may take
    /// WAL from (ties: lowest id). A candidate that lacks WAL this one has streams it
    /// from here first (fast_forward).
    pub(super) fn most_advanced_standby(&self, except: NodeId) -> Option<&NodeView> {
        self.wal_sources()
            .filter(|n| n.id != except && n.pg.lsn.is_some())
            .max_by_key(|n| (n.pg.lsn, std::cmp::Reverse(n.id)))
    }

    /// Standbys whose WAL a promotion may use: the live standbys, and healthy standbys
    /// parked in catchingup on the timeline of the primary being replaced. Those streamed
    /// from it (a catchingup node reached that state only once rewound onto it), so
    /// their WAL is a prefix of its history; a candidate may fast-forward from them even
    /// though they are not candidates themselves. Without them, a failover whose only
    /// copy of the last acknowledged writes sits on a catchingup standby waits for ever.
    pub(super) fn wal_sources(&self) -> impl Iterator<Item = &NodeView> {
        let timeline = self
            .demoting()
            .or(self.writable_goal())
            .and_then(|o| o.pg.timeline);
        let live: Vec<NodeId> = self.live_standbys().map(|n| n.id).collect();
        self.nodes.iter().filter(move |n| {
            live.contains(&n.id)
                || (n.goal == NodeState::Catchingup
                    && self.on_formation_major(n)
                    && n.reported == NodeState::Catchingup
                    && self.is_healthy(n)
                    && timeline.is_some()
                    && n.pg.timeline == timeline)
        })
    }

    /// The formation's PostgreSQL major: the one its writable node (or the node being
    /// demoted) runs, as last reported. None before any node said.
    pub fn formation_major(&self) -> Option<pgha_api::PgMajor> {
        self.writable_goal()
            .or(self.demoting())
            .and_then(|n| n.pg.major)
    }

    /// The major a node joining the formation must run: its primary's, or before there
    /// is one, the file's (`spec.postgresql.version`), or before that, none said.
    pub fn wanted_major(&self) -> Option<pgha_api::PgMajor> {
        self.formation_major().or(self.declared_major)
    }

    /// The file declares another major than the formation's primary runs: said, never
    /// acted on (moving a formation to another major is an upgrade, not a setting).
    pub fn declared_major_differs(&self) -> Option<(pgha_api::PgMajor, pgha_api::PgMajor)> {
        match (self.declared_major, self.formation_major()) {
            (Some(d), Some(r)) if d != r => Some((d, r)),
            _ => None,
        }
    }

    /// Why the file's backup section cannot be in force: a node's pgBackRest does not
    /// back up the formation's major. Backups and WAL archiving are then off (an
    /// archive command that always fails would keep every WAL segment until the disk
    /// is full), and this says which node, which pgBackRest and which major.
    pub fn backup_refusal(&self) -> Option<String> {
        if !self.backup_declared {
            return None;
        }
        let major = self.formation_major()?;
        self.nodes.iter().find_map(|n| {
            let v = n.pg.pgbackrest.as_deref()?;
            let max = pgha_api::backup::pgbackrest_max_major(v)?;
            (max < major).then(|| {
                format!(
                    "spec.backup is not in force: {} has pgBackRest {v}, which backs up PostgreSQL up to {max}, and the formation runs PostgreSQL {major}; backups and WAL archiving are off until every node has a pgBackRest that supports PostgreSQL {major}",
                    n.name
                )
            })
        })
    }

    /// Whether `n` runs the formation's major (or either is not known yet). A node on
    /// another major can neither stream from the primary nor be promoted in its place:
    /// it is never a candidate, a WAL source or an upstream.
    pub fn on_formation_major(&self, n: &NodeView) -> bool {
        match (self.formation_major(), n.pg.major) {
            (Some(f), Some(m)) => f == m,
            _ => true,
        }
    }

    /// Nodes that would be standbys but run another major than the formation's.
    pub fn on_other_majors(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes
            .iter()
            .filter(|n| !n.goal.is_writable() && !self.on_formation_major(n))
    }

    /// The old primary acknowledged its demotion: its agent reports it stopped Postgres.
    pub(super) fn acked_demotion(&self, old: &NodeView) -> bool {
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
        // The controller's own evidence besides the nodes' word: a primary whose Postgres
        // answered our probe within the window is reachable and may still be writable,
        // whatever a (possibly spoofed or stale) standby report says.
        let probe_silent = old.last_probe_ok_ms.is_none_or(|t| self.now_ms >= t + wait);
        controller_lease_over && standbys_gone && probe_silent
    }

    /// `n` has not streamed from `old` for `wait` ms. Streaming from another address (a
    /// standby it fast-forwards from) sends no reply to `old` and does not count.
    pub(super) fn stopped_streaming_from(&self, n: &NodeView, old: &NodeView, wait: u64) -> bool {
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

    /// How long ago `n` stopped streaming from `pr`, when `pr` is the last upstream it
    /// streamed from. None when it streamed from another node since (after a failover
    /// it has not yet found the new primary: not a cut link), when it never streamed
    /// from `pr`, or when its agent does not say where it streamed from.
    pub fn stopped_streaming_from_for(&self, n: &NodeView, pr: &NodeView) -> Option<u64> {
        let log = n.streamed_from_at.as_ref()?;
        let (host, port, t) = log.contacts.iter().max_by_key(|(_, _, t)| *t)?;
        (*host == pr.host && *port == pr.port).then(|| self.now_ms.saturating_sub(*t))
    }

    /// The standby a cascading standby (`replicateFrom`) streams from now: only while
    /// both are plain standbys and that one is a healthy, reporting secondary with a
    /// primary to stream from itself; otherwise (a failover, its upstream down or
    /// promoted) the node streams from the primary like any other.
    pub fn cascade_upstream(&self, n: &NodeView) -> Option<&NodeView> {
        if !matches!(n.goal, NodeState::Secondary | NodeState::Catchingup) {
            return None;
        }
        let up_id = n.replicate_from.filter(|id| *id != n.id)?;
        let up = self.nodes.iter().find(|u| u.id == up_id)?;
        let healthy = up.goal == NodeState::Secondary
            && self.on_formation_major(up)
            && up.reported == NodeState::Secondary
            && !self.is_failed(up)
            && self.is_reporting(up)
            && up.pg.upstream_streaming;
        (healthy && self.writable_goal().is_some()).then_some(up)
    }

    /// The node a standby streams from: the writable node; during a promotion only the
    /// candidate keeps streaming from the old primary (to get its last WAL), the other
    /// standbys cut replication so the old primary's lease can run out.
    pub fn upstream_of(&self, n: &NodeView) -> Option<&NodeView> {
        // A node on another major streams from no one (it could not).
        if !n.goal.streams_from_upstream() || !self.on_formation_major(n) {
            return None;
        }
        if n.goal == NodeState::FastForward {
            return self
                .most_advanced_standby(n.id)
                .filter(|s| s.pg.lsn > n.pg.lsn);
        }
        if let Some(up) = self.cascade_upstream(n) {
            return Some(up);
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
    pub(super) fn healthy_quorum_secondaries(&self) -> Vec<&NodeView> {
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
                .filter(|n| {
                    n.id != primary.id
                        && n.replication_quorum
                        && self.on_formation_major(n)
                        && states.contains(&n.goal)
                })
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
