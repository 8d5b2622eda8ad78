//! The agent's pure planner: `(assigned state, local observation) -> next step`.
//!
//! One step per tick; the I/O shell runs it and observes again, so every step is
//! idempotent by construction (check before act). The agent reports a state as reached
//! only when this returns [`Step::Reached`].

mod wanted;

pub use wanted::{
    LogicalSlots, Role, effective_goal, logical_slots, role_for, synchronous_standby_names, wanted,
};

use crate::observation::Local;
use pgha_api::NodeState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The local Postgres is in the assigned state.
    Reached,
    /// Nothing to do but wait (Postgres starting, a reload taking effect…).
    Wait(&'static str),
    /// The assignment cannot be applied here; said in the report.
    Blocked(&'static str),
    Initdb,
    /// Base backup from the upstream, then start as a standby.
    BaseBackup,
    /// pg_rewind onto the upstream, then start as a standby.
    Rewind,
    Start,
    Stop,
    /// A postmaster that runs but does not answer (hung: a stuck disk, a stopped
    /// process) must stop: no clean shutdown can go through it, so at once, and its
    /// processes killed when even that does not end them (see `pg::stop_unresponsive`).
    StopUnresponsive,
    Promote,
    /// Roles, database and replication slots of a primary.
    SetupPrimary,
    /// The replication slots of the nodes that cascade from a standby formation's
    /// leader.
    SyncNodeSlots,
    /// The file's permanent slots: made where missing, advanced on a standby.
    SyncPermanentSlots(Vec<(String, SlotAction)>),
    /// A standby misses a copy of a logical slot: stop, so that the next start loads
    /// the primary's slot state file (PostgreSQL 15 reads slots only at its start).
    RestartForSlotCopies(Vec<String>),
    /// PGDATA holds a cluster of another major than the binaries the agent runs: it is
    /// never started with them (Postgres would refuse, or worse, after a half-done
    /// upgrade).
    WrongMajor {
        data: pgha_api::PgMajor,
        binaries: pgha_api::PgMajor,
    },
    /// No data directory yet, and no install of the major the formation runs: none is
    /// made with another major's (its base backup or initdb would give a node that can
    /// never stream from the primary nor replace it).
    NoInstallOf {
        wanted: pgha_api::PgMajor,
        binaries: pgha_api::PgMajor,
    },
}

/// What one of the file's permanent slots needs on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    /// Make it: a physical slot anywhere, a logical one on the primary.
    Create,
    /// Drop this standby's copy: Postgres invalidated it, or (logical) it is ahead of
    /// what the consumer confirmed on the primary (left from this node's own time as
    /// primary), and a promotion would skip changes the consumer never saw.
    DropCopy,
    /// Move this standby's copy forward, towards `to`.
    Advance(pgha_api::Lsn),
    /// A logical copy is missing on this standby: it comes at a restart.
    CopyAtRestart,
}

/// What the assignment asks of the local Postgres, beyond the goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub goal: NodeState,
    pub has_upstream: bool,
    pub synchronous_standby_names: String,
    /// Replication slots a primary keeps (one per peer).
    pub slots: Vec<String>,
    /// The file's permanent slots, with the primary's position of each.
    pub permanent_slots: Vec<pgha_api::SlotPosition>,
    /// Settings waiting for a restart may be applied by restarting here: on a standby,
    /// or on a primary without peers (with peers, the controller switches over first).
    pub restart_allowed: bool,
    /// A writable goal in a standby formation: lead it as a standby of the source,
    /// never promote.
    pub standby_leader: bool,
    /// A restart to load logical slot copies may happen now (not one in the last
    /// minutes: a copy Postgres would not keep must not restart it in a loop).
    pub slot_copy_restart_allowed: bool,
    /// The major the formation runs (the assignment's), when said.
    pub major: Option<pgha_api::PgMajor>,
}

pub fn next_step(w: &Wanted, l: &Local) -> Step {
    let g = w.goal;
    if let (Some(data), Some(binaries)) = (l.major, l.binaries_major)
        && data != binaries
        && !l.postmaster_running
        && !g.is_stopped()
    {
        return Step::WrongMajor { data, binaries };
    }
    if l.major.is_none()
        && !l.postmaster_running
        && !g.is_stopped()
        && let (Some(wanted), Some(binaries)) = (w.major, l.binaries_major)
        && wanted != binaries
    {
        return Step::NoInstallOf { wanted, binaries };
    }
    if g.is_stopped() {
        return match (l.postmaster_running, l.ready) {
            (true, true) => Step::Stop,
            (true, false) => Step::StopUnresponsive,
            (false, _) => Step::Reached,
        };
    }
    if g.is_writable() && w.standby_leader {
        return standby_leader_step(w, l);
    }
    if g.is_writable() {
        if !l.initialized {
            return if g == NodeState::Single {
                Step::Initdb
            } else {
                Step::Blocked("no PGDATA here: only a single node may be created by initdb")
            };
        }
        if !l.postmaster_running {
            return Step::Start;
        }
        if !l.ready {
            return Step::Wait("Postgres is starting");
        }
        if l.in_recovery == Some(true) {
            return if l.point_in_time_recovery {
                // Postgres promotes itself at the recovery target.
                Step::Wait("point-in-time recovery replays WAL from the backup repository")
            } else {
                Step::Promote
            };
        }
        if !l.replicator_exists || !l.dbname_exists || slots_to_change(w, l) {
            return Step::SetupPrimary;
        }
        let actions = permanent_slot_actions(w, l, false);
        if !actions.is_empty() {
            return Step::SyncPermanentSlots(actions);
        }
        if l.synchronous_standby_names.as_deref() != Some(w.synchronous_standby_names.as_str()) {
            return Step::Wait("synchronous_standby_names reload pending");
        }
        if w.restart_allowed && !l.pending_restart.is_empty() {
            return Step::Stop;
        }
        return Step::Reached;
    }
    if g.is_standby() {
        let needs_upstream = g != NodeState::StopReplication;
        if !l.initialized {
            return match (needs_upstream, w.has_upstream) {
                (true, true) => Step::BaseBackup,
                (true, false) => Step::Wait("no upstream to copy from yet"),
                (false, _) => Step::Blocked("no PGDATA to promote"),
            };
        }
        if l.ready && l.in_recovery == Some(false) {
            // A primary that must become a standby: stop it, then rewind.
            return Step::Stop;
        }
        if !l.postmaster_running {
            let was_primary = l.control.as_ref().is_some_and(|c| c.was_primary());
            if was_primary && !l.backup_label {
                return if w.has_upstream {
                    Step::Rewind
                } else {
                    Step::Wait("no upstream to rewind onto yet")
                };
            }
            return Step::Start;
        }
        if !l.ready {
            return Step::Wait("Postgres is starting");
        }
        if g == NodeState::StopReplication && l.wal_receiver_streaming {
            return Step::Wait("replication is being cut");
        }
        if w.restart_allowed && !l.pending_restart.is_empty() && g.streams_from_upstream() {
            // Restart to apply settings that need it (the next tick starts it again).
            return Step::Stop;
        }
        let (copies, actions): (Vec<_>, Vec<_>) = permanent_slot_actions(w, l, true)
            .into_iter()
            .partition(|(_, a)| *a == SlotAction::CopyAtRestart);
        if !actions.is_empty() {
            return Step::SyncPermanentSlots(actions);
        }
        if !copies.is_empty()
            && w.restart_allowed
            && w.slot_copy_restart_allowed
            && g.streams_from_upstream()
        {
            return Step::RestartForSlotCopies(copies.into_iter().map(|(n, _)| n).collect());
        }
        return Step::Reached;
    }
    // init, wait_standby: nothing to do on this side.
    Step::Reached
}

/// A standby formation's leader: a standby of the source (a copy of it taken first; a
/// primary demoted into a standby formation is stopped and rewound onto the source),
/// keeping the slots of the nodes that cascade from it. Never promoted.
fn standby_leader_step(w: &Wanted, l: &Local) -> Step {
    if !l.initialized {
        return Step::BaseBackup;
    }
    if l.ready && l.in_recovery == Some(false) {
        return Step::Stop;
    }
    if !l.postmaster_running {
        let was_primary = l.control.as_ref().is_some_and(|c| c.was_primary());
        return if was_primary && !l.backup_label {
            Step::Rewind
        } else {
            Step::Start
        };
    }
    if !l.ready {
        return Step::Wait("Postgres is starting");
    }
    if slots_to_change(w, l) {
        return Step::SyncNodeSlots;
    }
    if w.restart_allowed && !l.pending_restart.is_empty() {
        return Step::Stop;
    }
    Step::Reached
}

/// What a node does when the controller asks it to rebuild (the primary invalidated its
/// slot): a plain standby moves its data aside for a fresh base backup; a node promoted
/// meanwhile has nothing to rebuild; one mid-promotion or stopped waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// Nothing asked, or already done for this epoch.
    No,
    /// Stop Postgres and move PGDATA aside, then record the epoch.
    MoveAside,
    /// Record the epoch without touching the data.
    Skip,
    /// Not now: ask again at a later tick.
    Later,
}

pub fn rebuild(goal: NodeState, asked_epoch: u64, done_epoch: u64) -> Rebuild {
    if asked_epoch <= done_epoch {
        return Rebuild::No;
    }
    match goal {
        NodeState::Secondary | NodeState::Catchingup => Rebuild::MoveAside,
        g if g.is_writable() => Rebuild::Skip,
        _ => Rebuild::Later,
    }
}

/// The primary's slots differ from what it should keep: a wanted slot is missing, or an
/// unwanted or invalidated one can be dropped (one a standby streams through right now
/// is left until it disconnects).
pub fn slots_to_change(w: &Wanted, l: &Local) -> bool {
    let missing = w.slots.iter().any(|s| !l.slots.contains(s));
    let droppable = l
        .slots
        .iter()
        .filter(|s| !w.slots.contains(s))
        .chain(&l.lost_slots)
        .any(|s| !l.active_slots.contains(s));
    missing || droppable
}

/// What each of the file's permanent slots needs here. A physical one is made where
/// missing and, on a standby, advanced to the primary's position where this node has
/// replayed further. A logical one is made on the primary (once `wal_level` is
/// `logical`); a standby copies the primary's at a restart, then follows what the
/// consumer confirmed on the primary, never past it.
pub fn permanent_slot_actions(w: &Wanted, l: &Local, standby: bool) -> Vec<(String, SlotAction)> {
    w.permanent_slots
        .iter()
        .filter_map(|want| {
            let have = l.permanent_slots.iter().find(|s| s.name == want.name);
            let action = match &want.logical {
                None => physical_slot_action(want, have, l, standby),
                Some(logical) => logical_slot_action(want, logical, have, l, standby),
            }?;
            Some((want.name.clone(), action))
        })
        .collect()
}

fn physical_slot_action(
    want: &pgha_api::SlotPosition,
    have: Option<&pgha_api::SlotPosition>,
    l: &Local,
    standby: bool,
) -> Option<SlotAction> {
    match have {
        None => Some(SlotAction::Create),
        // A standby's copy that Postgres invalidated is made again while the primary's
        // slot is valid (it can follow the primary's position again); the primary's
        // own is left for the operator (its consumer must start over).
        Some(have) if have.lost() => {
            (standby && !want.lost() && want.restart_lsn.is_some()).then_some(SlotAction::DropCopy)
        }
        Some(have) => {
            let reachable = want.restart_lsn.min(l.lsn)?;
            (standby && have.restart_lsn.is_none_or(|h| h < reachable))
                .then_some(SlotAction::Advance(reachable))
        }
    }
}

fn logical_slot_action(
    want: &pgha_api::SlotPosition,
    logical: &pgha_api::LogicalSlot,
    have: Option<&pgha_api::SlotPosition>,
    l: &Local,
    standby: bool,
) -> Option<SlotAction> {
    if !standby {
        return (have.is_none() && l.wal_level_logical).then_some(SlotAction::Create);
    }
    if l.major.is_some_and(|m| m.failover_slots()) {
        // Postgres's slot synchronization makes and moves the standby's copy; one
        // that it does not keep (this node's own, from when it was primary) is dropped
        // so that it can. A synced one is at most where the consumer confirmed.
        return have
            .filter(|h| h.logical.as_ref().is_some_and(|l| !l.synced))
            .map(|_| SlotAction::DropCopy);
    }
    let Some(have) = have else {
        return copy_can_follow(logical, l.oldest_wal).then_some(SlotAction::CopyAtRestart);
    };
    let confirmed = logical.confirmed_flush_lsn?;
    let have_confirmed = have.logical.as_ref().and_then(|h| h.confirmed_flush_lsn);
    if have.lost() {
        return (!want.lost()).then_some(SlotAction::DropCopy);
    }
    if have.logical.is_none() || have_confirmed.is_some_and(|h| h > confirmed) {
        return Some(SlotAction::DropCopy);
    }
    let reachable = confirmed.min(l.lsn?);
    have_confirmed
        .is_none_or(|h| h < reachable)
        .then_some(SlotAction::Advance(reachable))
}

/// A copy made from the primary's slot state file can be advanced here: it needs no
/// WAL older than what this node keeps (a fresh base backup starts after a slot whose
/// consumer has not moved lately; the copy waits until it has).
pub fn copy_can_follow(logical: &pgha_api::LogicalSlot, oldest_wal: Option<pgha_api::Lsn>) -> bool {
    crate::postgres::slots::state_restart_lsn(logical)
        .is_some_and(|needs| oldest_wal.is_none_or(|kept| needs >= kept))
}

/// Whether this node holds a primary's lease, which it must renew or fence: a writable
/// goal with peers. A standby formation's leader holds none, whatever its goal: it is
/// read-only (a standby of its source), so there is nothing to fence, and stopping it
/// when its controller cannot be reached would cut the disaster-recovery copy exactly
/// when the other site is in trouble.
pub fn holds_lease(goal: NodeState, has_peers: bool, standby_leader: bool) -> bool {
    goal.is_writable() && has_peers && !standby_leader
}

/// A writable node fences itself when it has heard from neither the controller nor any
/// standby for longer than its lease (docs/src/design.md §5 rule 2), in every writable state.
pub fn should_fence(
    goal: NodeState,
    ms_since_controller: u64,
    ms_since_standby: u64,
    lease_ms: u64,
) -> bool {
    goal.is_writable() && ms_since_controller > lease_ms && ms_since_standby > lease_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::bin::ControlData;
    use pgha_api::Lsn;

    /// Issue 26: a data directory is never started with another major's binaries.
    #[test]
    fn a_data_directory_of_another_major_is_never_started() {
        use pgha_api::PgMajor;
        let mut l = stopped("shut down");
        l.major = Some(PgMajor(15));
        l.binaries_major = Some(PgMajor(18));
        for goal in [NodeState::Single, NodeState::Primary, NodeState::Secondary] {
            assert_eq!(
                next_step(&wanted(goal), &l),
                Step::WrongMajor {
                    data: PgMajor(15),
                    binaries: PgMajor(18)
                },
                "{goal}"
            );
        }
        // No data directory yet: made only with the formation's major.
        let mut empty = stopped("shut down");
        empty.major = None;
        empty.binaries_major = Some(PgMajor(15));
        let mut w = wanted(NodeState::WaitStandby);
        w.major = Some(PgMajor(18));
        assert_eq!(
            next_step(&w, &empty),
            Step::NoInstallOf {
                wanted: PgMajor(18),
                binaries: PgMajor(15)
            }
        );
        w.major = Some(PgMajor(15));
        assert!(!matches!(next_step(&w, &empty), Step::NoInstallOf { .. }));
        // Stopped goals stay stopped; the same majors start.
        assert_eq!(next_step(&wanted(NodeState::Demoted), &l), Step::Reached);
        l.binaries_major = Some(PgMajor(15));
        assert_ne!(
            next_step(&wanted(NodeState::Single), &l),
            Step::WrongMajor {
                data: PgMajor(15),
                binaries: PgMajor(15)
            }
        );
    }

    /// The second review: a standby formation's leader was stopped whenever its
    /// controller was unreachable (the watchdog was armed for any writable goal).
    #[test]
    fn a_standby_formations_leader_holds_no_lease() {
        for goal in [
            NodeState::Single,
            NodeState::WaitPrimary,
            NodeState::Primary,
        ] {
            assert!(holds_lease(goal, true, false), "{goal}");
            assert!(!holds_lease(goal, true, true), "{goal}: standby leader");
            assert!(!holds_lease(goal, false, false), "{goal}: alone");
        }
        assert!(!holds_lease(NodeState::Secondary, true, false));
    }

    fn wanted(goal: NodeState) -> Wanted {
        Wanted {
            goal,
            has_upstream: true,
            synchronous_standby_names: String::new(),
            slots: vec![],
            permanent_slots: vec![],
            restart_allowed: true,
            slot_copy_restart_allowed: true,
            standby_leader: false,
            major: None,
        }
    }

    #[test]
    fn permanent_slots_are_made_everywhere_and_advanced_only_on_a_standby() {
        use pgha_api::SlotPosition;
        let at = |lsn: u64| SlotPosition {
            name: "archiver".into(),
            restart_lsn: Some(Lsn(lsn)),
            wal_status: Some(pgha_api::SlotWalStatus::Reserved),
            logical: None,
        };
        let act = |w: &Wanted, l: &Local, standby: bool| {
            permanent_slot_actions(w, l, standby)
                .into_iter()
                .map(|(_, a)| a)
                .collect::<Vec<_>>()
        };
        let mut w = wanted(NodeState::Secondary);
        w.permanent_slots = vec![at(5000)];
        let mut l = Local {
            lsn: Some(Lsn(9000)),
            ..Local::default()
        };
        assert_eq!(act(&w, &l, true), [SlotAction::Create], "missing");
        l.permanent_slots = vec![at(1000)];
        assert_eq!(
            act(&w, &l, true),
            [SlotAction::Advance(Lsn(5000))],
            "behind the primary's"
        );
        assert!(
            act(&w, &l, false).is_empty(),
            "a primary's own slot moves with its consumer only"
        );
        l.permanent_slots = vec![at(5000)];
        assert!(act(&w, &l, true).is_empty(), "caught up");
        l.permanent_slots = vec![at(3000)];
        l.lsn = Some(Lsn(3000));
        assert!(
            act(&w, &l, true).is_empty(),
            "never past what this node replayed"
        );
        // A copy Postgres invalidated is made again on a standby while the primary's
        // slot is valid; never on the primary, nor when the primary's is lost too.
        let lost = SlotPosition {
            restart_lsn: None,
            wal_status: Some(pgha_api::SlotWalStatus::Lost),
            ..at(0)
        };
        l.permanent_slots = vec![lost.clone()];
        assert_eq!(act(&w, &l, true), [SlotAction::DropCopy], "lost copy");
        assert!(act(&w, &l, false).is_empty(), "the primary's own");
        w.permanent_slots = vec![lost];
        assert!(act(&w, &l, true).is_empty(), "lost on the primary");
        w.permanent_slots = vec![at(5000)];
        w.permanent_slots[0].restart_lsn = None;
        l.permanent_slots = vec![];
        assert_eq!(
            act(&w, &l, false),
            [SlotAction::Create],
            "made even before the primary reports a position"
        );
    }

    /// The file's logical slot `cdc` as a node reports it: its consumer's position, the
    /// primary's state file (one whose restart_lsn is 0/100) or none, synced or not.
    fn logical_slot(confirmed: Option<u64>, state: bool, synced: bool) -> pgha_api::SlotPosition {
        pgha_api::SlotPosition {
            name: "cdc".into(),
            restart_lsn: Some(Lsn(100)),
            wal_status: Some(pgha_api::SlotWalStatus::Reserved),
            logical: Some(pgha_api::LogicalSlot {
                database: "app".into(),
                plugin: "pgoutput".into(),
                confirmed_flush_lsn: confirmed.map(Lsn),
                state: state.then(|| {
                    let mut f = vec![0u8; 104];
                    f[..4].copy_from_slice(&0x0105_1CA1u32.to_le_bytes());
                    f[96..104].copy_from_slice(&0x100u64.to_le_bytes());
                    pgha_api::to_hex(&f)
                }),
                synced,
            }),
        }
    }

    /// Issue 26: on 17 and later a standby leaves its logical slots to Postgres's own
    /// synchronization: no copy, no restart, no advance; only a slot the worker does not
    /// keep (this node's own from its primary days) is dropped so that it can.
    #[test]
    fn on_failover_slot_majors_a_standby_leaves_logical_slots_to_postgres() {
        use pgha_api::PgMajor;
        let slot = |confirmed: u64, synced: bool| logical_slot(Some(confirmed), false, synced);
        let mut w = wanted(NodeState::Secondary);
        w.permanent_slots = vec![slot(5000, false)];
        let mut l = running_primary();
        l.in_recovery = Some(true);
        l.major = Some(PgMajor(18));
        assert!(
            permanent_slot_actions(&w, &l, true).is_empty(),
            "missing: synced later"
        );
        l.permanent_slots = vec![slot(3000, true)];
        assert!(
            permanent_slot_actions(&w, &l, true).is_empty(),
            "synced: left alone"
        );
        l.permanent_slots = vec![slot(7000, true)];
        assert!(
            permanent_slot_actions(&w, &l, true).is_empty(),
            "synced ahead: the consumer's own"
        );
        l.permanent_slots = vec![slot(7000, false)];
        assert_eq!(
            permanent_slot_actions(&w, &l, true),
            [("cdc".to_string(), SlotAction::DropCopy)],
            "its own slot, not synchronized"
        );
        // The primary makes it, once.
        let mut p = running_primary();
        p.major = Some(PgMajor(18));
        p.wal_level_logical = true;
        assert_eq!(
            permanent_slot_actions(&w, &p, false),
            [("cdc".to_string(), SlotAction::Create)]
        );
        // On 16, the copy path as before.
        l.major = Some(PgMajor(16));
        l.permanent_slots = vec![];
        w.permanent_slots = vec![slot(5000, false)];
        assert!(
            permanent_slot_actions(&w, &l, true).is_empty(),
            "no state file: no copy"
        );
    }

    #[test]
    fn a_logical_slot_is_copied_at_a_restart_and_never_ahead_of_its_consumer() {
        let logical = |confirmed: Option<u64>, state: bool| logical_slot(confirmed, state, false);
        let mut w = wanted(NodeState::Secondary);
        w.slot_copy_restart_allowed = true;
        w.permanent_slots = vec![logical(Some(5000), true)];
        let mut l = running_primary();
        l.in_recovery = Some(true);
        l.wal_receiver_streaming = true;
        l.lsn = Some(Lsn(9000));
        // Missing on a standby: a restart loads the primary's state file, once the
        // primary sent one, and not again within minutes.
        assert_eq!(
            next_step(&w, &l),
            Step::RestartForSlotCopies(vec!["cdc".into()])
        );
        w.slot_copy_restart_allowed = false;
        assert_eq!(next_step(&w, &l), Step::Reached);
        w.slot_copy_restart_allowed = true;
        l.oldest_wal = Some(Lsn(0x1000));
        assert_eq!(
            next_step(&w, &l),
            Step::Reached,
            "the copy would need WAL this standby no longer keeps"
        );
        l.oldest_wal = Some(Lsn(0x100));
        assert_eq!(
            next_step(&w, &l),
            Step::RestartForSlotCopies(vec!["cdc".into()])
        );
        w.permanent_slots = vec![logical(Some(5000), false)];
        assert_eq!(next_step(&w, &l), Step::Reached, "no state file yet");
        // A copy follows what the consumer confirmed, never past what was replayed.
        w.permanent_slots = vec![logical(Some(5000), true)];
        l.permanent_slots = vec![logical(Some(1000), false)];
        assert_eq!(
            next_step(&w, &l),
            Step::SyncPermanentSlots(vec![("cdc".into(), SlotAction::Advance(Lsn(5000)))])
        );
        l.lsn = Some(Lsn(3000));
        assert_eq!(
            next_step(&w, &l),
            Step::SyncPermanentSlots(vec![("cdc".into(), SlotAction::Advance(Lsn(3000)))])
        );
        l.permanent_slots = vec![logical(Some(3000), false)];
        assert_eq!(next_step(&w, &l), Step::Reached);
        // A copy ahead of the consumer (this node was primary) goes, to be copied again.
        l.lsn = Some(Lsn(9000));
        l.permanent_slots = vec![logical(Some(7000), false)];
        assert_eq!(
            next_step(&w, &l),
            Step::SyncPermanentSlots(vec![("cdc".into(), SlotAction::DropCopy)])
        );
        // The primary makes it once wal_level is logical, and never moves its own.
        let mut p = running_primary();
        let mut w = wanted(NodeState::Primary);
        w.permanent_slots = vec![logical(None, false)];
        assert_eq!(next_step(&w, &p), Step::Reached, "wal_level is replica");
        p.wal_level_logical = true;
        assert_eq!(
            next_step(&w, &p),
            Step::SyncPermanentSlots(vec![("cdc".into(), SlotAction::Create)])
        );
        p.permanent_slots = vec![logical(Some(10), true)];
        w.permanent_slots = vec![logical(Some(5000), true)];
        assert_eq!(next_step(&w, &p), Step::Reached);
    }

    fn running_primary() -> Local {
        Local {
            initialized: true,
            postmaster_running: true,
            ready: true,
            in_recovery: Some(false),
            synchronous_standby_names: Some(String::new()),
            replicator_exists: true,
            dbname_exists: true,
            ..Local::default()
        }
    }

    fn stopped(state: &str) -> Local {
        Local {
            initialized: true,
            control: Some(ControlData {
                state: state.into(),
                ..ControlData::default()
            }),
            ..Local::default()
        }
    }

    #[test]
    fn a_standby_formations_leader_copies_and_follows_its_source_never_promoting() {
        for goal in [
            NodeState::Single,
            NodeState::WaitPrimary,
            NodeState::Primary,
        ] {
            let mut w = wanted(goal);
            w.standby_leader = true;
            w.slots = vec!["pgha_slot_3".into()];
            assert_eq!(next_step(&w, &Local::default()), Step::BaseBackup, "{goal}");
            // A primary demoted into a standby formation: stopped, then rewound.
            assert_eq!(next_step(&w, &running_primary()), Step::Stop, "{goal}");
            assert_eq!(next_step(&w, &stopped("shut down")), Step::Rewind, "{goal}");
            assert_eq!(
                next_step(&w, &stopped("shut down in recovery")),
                Step::Start,
                "{goal}"
            );
            let mut l = running_primary();
            l.in_recovery = Some(true);
            l.replicator_exists = false;
            assert_eq!(next_step(&w, &l), Step::SyncNodeSlots, "{goal}");
            l.slots = w.slots.clone();
            assert_eq!(
                next_step(&w, &l),
                Step::Reached,
                "in recovery, and stays so"
            );
            l.pending_restart = vec!["max_connections".into()];
            assert_eq!(next_step(&w, &l), Step::Stop, "restarts cost no writes");
            // Promoted (the assignment no longer says standbyOf): the usual path.
            w.standby_leader = false;
            l.pending_restart.clear();
            assert_eq!(next_step(&w, &l), Step::Promote, "{goal}");
        }
    }

    #[test]
    fn single_bootstraps_with_initdb_then_start_then_setup() {
        let w = wanted(NodeState::Single);
        assert_eq!(next_step(&w, &Local::default()), Step::Initdb);
        assert_eq!(next_step(&w, &stopped("shut down")), Step::Start);
        let mut l = running_primary();
        l.replicator_exists = false;
        assert_eq!(next_step(&w, &l), Step::SetupPrimary);
        assert_eq!(next_step(&w, &running_primary()), Step::Reached);
    }

    #[test]
    fn a_point_in_time_recovery_is_left_to_promote_itself() {
        let w = wanted(NodeState::Single);
        let mut l = running_primary();
        l.in_recovery = Some(true);
        assert_eq!(next_step(&w, &l), Step::Promote);
        l.point_in_time_recovery = true;
        assert!(matches!(next_step(&w, &l), Step::Wait(_)));
    }

    #[test]
    fn primary_waits_for_its_sync_names_and_slots() {
        let mut w = wanted(NodeState::Primary);
        w.synchronous_standby_names = "ANY 1 (pgha_standby_2)".into();
        w.slots = vec!["pgha_slot_2".into()];
        let mut l = running_primary();
        assert_eq!(next_step(&w, &l), Step::SetupPrimary);
        l.slots = vec!["pgha_slot_2".into()];
        assert!(matches!(next_step(&w, &l), Step::Wait(_)));
        l.synchronous_standby_names = Some("ANY 1 (pgha_standby_2)".into());
        assert_eq!(next_step(&w, &l), Step::Reached);
    }

    #[test]
    fn wait_primary_is_never_created_by_initdb() {
        assert!(matches!(
            next_step(&wanted(NodeState::WaitPrimary), &Local::default()),
            Step::Blocked(_)
        ));
    }

    #[test]
    fn standby_promoted_when_assigned_writable() {
        let mut l = running_primary();
        l.in_recovery = Some(true);
        assert_eq!(
            next_step(&wanted(NodeState::WaitPrimary), &l),
            Step::Promote
        );
    }

    #[test]
    fn new_standby_takes_a_base_backup_only_with_an_upstream() {
        assert_eq!(
            next_step(&wanted(NodeState::Catchingup), &Local::default()),
            Step::BaseBackup
        );
        let mut w = wanted(NodeState::Catchingup);
        w.has_upstream = false;
        assert!(matches!(next_step(&w, &Local::default()), Step::Wait(_)));
    }

    #[test]
    fn old_primary_is_stopped_then_rewound() {
        let w = wanted(NodeState::Catchingup);
        assert_eq!(next_step(&w, &running_primary()), Step::Stop);
        assert_eq!(next_step(&w, &stopped("shut down")), Step::Rewind);
        assert_eq!(next_step(&w, &stopped("in production")), Step::Rewind);
        let mut fresh_backup = stopped("in production");
        fresh_backup.backup_label = true;
        assert_eq!(next_step(&w, &fresh_backup), Step::Start);
        assert_eq!(
            next_step(&w, &stopped("shut down in recovery")),
            Step::Start
        );
    }

    #[test]
    fn stopped_states_stop_postgres() {
        for g in [
            NodeState::Draining,
            NodeState::Demoted,
            NodeState::DemoteTimeout,
        ] {
            assert_eq!(next_step(&wanted(g), &running_primary()), Step::Stop);
            assert_eq!(next_step(&wanted(g), &stopped("shut down")), Step::Reached);
        }
    }

    #[test]
    fn stop_replication_reached_once_the_receiver_is_gone() {
        let mut l = running_primary();
        l.in_recovery = Some(true);
        l.wal_receiver_streaming = true;
        let w = wanted(NodeState::StopReplication);
        assert!(matches!(next_step(&w, &l), Step::Wait(_)));
        l.wal_receiver_streaming = false;
        assert_eq!(next_step(&w, &l), Step::Reached);
    }

    #[test]
    fn pending_restart_restarts_standbys_and_lone_primaries_only_when_allowed() {
        let mut l = running_primary();
        l.in_recovery = Some(true);
        l.pending_restart = vec!["max_connections".into()];
        assert_eq!(next_step(&wanted(NodeState::Secondary), &l), Step::Stop);
        let mut w = wanted(NodeState::Secondary);
        w.restart_allowed = false;
        assert_eq!(next_step(&w, &l), Step::Reached);
        let mut p = running_primary();
        p.pending_restart = vec!["max_connections".into()];
        assert_eq!(next_step(&wanted(NodeState::Single), &p), Step::Stop);
        let mut w = wanted(NodeState::Primary);
        w.restart_allowed = false;
        assert_eq!(next_step(&w, &p), Step::Reached);
    }

    #[test]
    fn a_rebuild_is_done_once_and_only_by_a_plain_standby() {
        assert_eq!(rebuild(NodeState::Secondary, 1, 0), Rebuild::MoveAside);
        assert_eq!(rebuild(NodeState::Catchingup, 2, 1), Rebuild::MoveAside);
        assert_eq!(rebuild(NodeState::Secondary, 1, 1), Rebuild::No);
        assert_eq!(rebuild(NodeState::Primary, 1, 0), Rebuild::Skip);
        assert_eq!(rebuild(NodeState::PreparePromotion, 1, 0), Rebuild::Later);
        assert_eq!(rebuild(NodeState::Maintenance, 1, 0), Rebuild::Later);
    }

    #[test]
    fn slots_follow_the_peers_that_stream_and_invalidated_ones_go() {
        let mut w = wanted(NodeState::Primary);
        w.slots = vec!["pgha_slot_2".into(), "pgha_slot_3".into()];
        let mut l = Local {
            slots: vec!["pgha_slot_2".into(), "pgha_slot_3".into()],
            ..Local::default()
        };
        assert!(!slots_to_change(&w, &l));
        // A peer that can no longer stream (maintenance, failed): its slot goes.
        w.slots = vec!["pgha_slot_2".into()];
        assert!(slots_to_change(&w, &l));
        // ... unless a standby streams through it right now.
        l.active_slots = vec!["pgha_slot_3".into()];
        assert!(!slots_to_change(&w, &l));
        // An invalidated slot is dropped (and made anew when wanted).
        l.active_slots.clear();
        l.slots = vec![];
        l.lost_slots = vec!["pgha_slot_2".into()];
        assert!(slots_to_change(&w, &l));
        // A missing wanted slot is made.
        l.lost_slots.clear();
        assert!(slots_to_change(&w, &l));
    }

    #[test]
    fn fencing_needs_both_controller_and_standbys_lost_and_a_writable_goal() {
        assert!(should_fence(NodeState::Primary, 4000, 4000, 3000));
        assert!(should_fence(NodeState::WaitPrimary, 4000, 4000, 3000));
        assert!(should_fence(NodeState::Single, 4000, 4000, 3000));
        assert!(!should_fence(NodeState::Primary, 4000, 100, 3000));
        assert!(!should_fence(NodeState::Primary, 100, 4000, 3000));
        assert!(!should_fence(NodeState::Secondary, 9000, 9000, 3000));
    }

    /// Every state the controller can assign is reachable by the agent from every shape
    /// the local Postgres can be in: no (current, assigned) pair gets stuck (the
    /// pg_auto_failover "does not know how to reach state X from Y" class of bug).
    #[test]
    fn every_assignable_state_is_reachable_from_every_local_shape() {
        let shapes: Vec<(&str, Local)> = vec![
            ("no PGDATA", Local::default()),
            ("stopped primary", stopped("shut down")),
            ("crashed primary", stopped("in production")),
            ("stopped standby", {
                let mut l = stopped("shut down in recovery");
                l.standby_signal = true;
                l
            }),
            ("running primary", running_primary()),
            ("running standby", {
                let mut l = running_primary();
                l.in_recovery = Some(true);
                l.standby_signal = true;
                l.wal_receiver_streaming = true;
                l
            }),
        ];
        let slots = vec!["pgha_slot_2".to_string()];
        for goal in pgha_api::ALL_STATES {
            for (name, start) in &shapes {
                let w = Wanted {
                    goal,
                    has_upstream: true,
                    synchronous_standby_names: "ANY 1 (pgha_standby_2)".into(),
                    slots: slots.clone(),
                    permanent_slots: vec![],
                    restart_allowed: true,
                    slot_copy_restart_allowed: true,
                    standby_leader: false,
                    major: None,
                };
                // A primary is never created from nothing but by initdb for `single`, and
                // a promotion needs data: those are the only refusals allowed.
                let uninit = !start.initialized;
                let refused_ok = uninit
                    && (matches!(goal, NodeState::WaitPrimary | NodeState::Primary)
                        || goal == NodeState::StopReplication);
                let mut l = start.clone();
                let mut steps = vec![];
                let reached = loop {
                    let step = next_step(&w, &l);
                    if step == Step::Reached {
                        break true;
                    }
                    if matches!(
                        step,
                        Step::Blocked(_) | Step::WrongMajor { .. } | Step::NoInstallOf { .. }
                    ) || steps.len() > 10
                    {
                        break false;
                    }
                    steps.push(step.clone());
                    l = simulate(&w, &l, &step);
                };
                assert!(
                    reached || refused_ok,
                    "cannot reach {goal} from {name}: steps {steps:?}"
                );
            }
        }
    }

    /// What a step does to the local Postgres (the effects the I/O shell produces).
    fn simulate(w: &Wanted, l: &Local, step: &Step) -> Local {
        let mut n = l.clone();
        let running = |standby: bool| {
            let mut r = running_primary();
            r.in_recovery = Some(standby);
            r.standby_signal = standby;
            r.wal_receiver_streaming = standby && w.goal.streams_from_upstream();
            r
        };
        match step {
            Step::Initdb => n = stopped("shut down"),
            Step::BaseBackup | Step::Rewind => n = running(true),
            // Configuration is written before a start: standby goals get standby.signal.
            Step::Start => n = running(l.standby_signal || w.goal.is_standby()),
            Step::Stop | Step::StopUnresponsive => {
                n = if l.in_recovery == Some(true) {
                    let mut s = stopped("shut down in recovery");
                    s.standby_signal = true;
                    s
                } else {
                    stopped("shut down")
                };
                n.pending_restart.clear();
            }
            Step::Promote => n = running(false),
            Step::SyncNodeSlots => n.slots = w.slots.clone(),
            Step::SetupPrimary => {
                n.replicator_exists = true;
                n.dbname_exists = true;
                n.slots = w.slots.clone();
            }
            Step::SyncPermanentSlots(_) => n.permanent_slots = w.permanent_slots.clone(),
            Step::RestartForSlotCopies(_) => {
                n = stopped("shut down in recovery");
                n.standby_signal = true;
                n.permanent_slots = w.permanent_slots.clone();
            }
            Step::Wait(_) => {
                // A reload takes effect; a cut receiver stops.
                n.synchronous_standby_names = Some(w.synchronous_standby_names.clone());
                if w.goal == NodeState::StopReplication {
                    n.wal_receiver_streaming = false;
                }
                if !n.ready && n.postmaster_running {
                    n.ready = true;
                }
            }
            Step::Reached
            | Step::Blocked(_)
            | Step::WrongMajor { .. }
            | Step::NoInstallOf { .. } => {}
        }
        n
    }
}
