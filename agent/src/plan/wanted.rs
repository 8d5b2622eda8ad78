//! What an assignment asks of this node, as plain functions of the assignment and the
//! agent's own safety state: the goal after the fence, `synchronous_standby_names`, the
//! [`Wanted`] the step planner works toward, and the [`Role`] the configuration files
//! render. No I/O: table tests below.

use super::Wanted;
use pgha_api::{Assignment, NodeState};

/// The Postgres role a node plays, as far as its configuration goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary {
        synchronous_standby_names: String,
        /// WAL kept at most for a standby's slot (`max_slot_wal_keep_size`).
        max_slot_wal_keep_size: String,
    },
    /// A standby; `upstream` None means replication is cut (stop_replication). `slot`
    /// says whether to stream through this node's replication slot on the upstream
    /// (not when the upstream is another standby, in fast_forward).
    Standby {
        upstream: Option<(String, u16)>,
        slot: bool,
        /// WAL kept at most for the slots of standbys that cascade from this one.
        max_slot_wal_keep_size: String,
    },
    /// A standby formation's leader: a standby of the source formation's nodes,
    /// through the source's `slot` when the file names one.
    StandbyOf {
        hosts: Vec<(String, u16)>,
        slot: Option<String>,
        /// WAL kept at most for the slots of the formation's other nodes.
        max_slot_wal_keep_size: String,
    },
    /// Stopped states: configuration left as it is.
    Stopped,
}

/// How the file's logical slots reach the standbys, by the major's capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalSlots {
    /// The file names no logical slot.
    None,
    /// PostgreSQL 15 and 16: a standby loads a copy of the primary's slot state file
    /// at a restart and advances it (`permanent_slot_actions`).
    Copied,
    /// 17 and later: Postgres's own failover slots. The primary makes them with
    /// `failover`, standbys that stream from it through a slot keep synced copies
    /// (`sync_replication_slots`), and `standby_slots` (the primary's only) are the
    /// standbys a consumer waits for (`synchronized_standby_slots`).
    Failover { standby_slots: Vec<String> },
}

/// [`LogicalSlots`] for the assignment on a node running `major`.
pub fn logical_slots(a: Option<&Assignment>, major: Option<pgha_api::PgMajor>) -> LogicalSlots {
    let Some(a) = a.filter(|a| a.permanent_slots.iter().any(|s| s.logical.is_some())) else {
        return LogicalSlots::None;
    };
    if major.is_some_and(|m| m.failover_slots()) {
        LogicalSlots::Failover {
            standby_slots: a.synchronized_standby_slots.clone(),
        }
    } else {
        LogicalSlots::Copied
    }
}

/// The goal after local safety overrides: a fenced node stays stopped.
pub fn effective_goal(a: Option<&Assignment>, fenced: bool) -> NodeState {
    let goal = a.map(|a| a.goal).unwrap_or(NodeState::Init);
    if fenced && goal.is_writable() {
        NodeState::DemoteTimeout
    } else {
        goal
    }
}

/// `synchronous_standby_names` to apply. Until the controller has been reached since
/// this agent started, a writable node with peers insists on every peer as a
/// synchronous standby: after a reboot with the controller down it may serve while all
/// of them stream from it, but it cannot acknowledge a write while any node is
/// elsewhere, and a node the controller promoted meanwhile (unseen by it) is. With one
/// standby of several (`ANY 1`, as it was), a standby cut from the controller that
/// reconnected to it after the controller had counted it gone made writes durable on
/// both primaries (found by the planner's property test once a standby cut from the
/// controller kept its old upstream, issue 27).
pub fn synchronous_standby_names(a: Option<&Assignment>, contacted_since_start: bool) -> String {
    let Some(a) = a else {
        return String::new();
    };
    if !contacted_since_start && !a.peers.is_empty() {
        let names: Vec<String> = a
            .peers
            .iter()
            .map(|p| pgha_api::standby_application_name(p.node_id))
            .collect();
        return format!("FIRST {} ({})", names.len(), names.join(", "));
    }
    a.synchronous_standby_names.clone()
}

/// What the step planner works toward for `goal`.
pub fn wanted(goal: NodeState, a: Option<&Assignment>, ssn: String) -> Wanted {
    let standby_leader = goal.is_writable() && a.is_some_and(|a| a.standby_of.is_some());
    Wanted {
        goal,
        has_upstream: a.is_some_and(|a| a.upstream.is_some()) || standby_leader,
        synchronous_standby_names: ssn,
        slots: a
            .map(|a| {
                a.peers
                    .iter()
                    .filter(|p| p.slot)
                    .map(|p| pgha_api::replication_slot_name(p.node_id))
                    .collect()
            })
            .unwrap_or_default(),
        permanent_slots: a.map(|a| a.permanent_slots.clone()).unwrap_or_default(),
        standby_leader,
        // Not in the middle of a promotion (fast_forward, prepare_promotion,
        // stop_replication): a restart there would only delay the failover.
        // A standby formation's leader writes nothing: its restart costs no writes.
        restart_allowed: matches!(goal, NodeState::Catchingup | NodeState::Secondary)
            || a.is_some_and(|a| a.peers.is_empty() && goal.is_writable())
            || standby_leader,
        // The agent narrows it (see `Agent::wanted`): the assignment does not say.
        slot_copy_restart_allowed: true,
        major: a.and_then(|a| a.major),
    }
}

/// `max_slot_wal_keep_size` of the assignment, or the default where it is missing or a
/// size Postgres would refuse. Every role gets it: a standby (or a standby formation's
/// leader) keeps slots for the nodes that cascade from it, and a dead one's slot must
/// not fill its disk either.
fn max_slot_wal_keep_size(a: Option<&Assignment>) -> String {
    a.map(|a| a.max_slot_wal_keep_size.clone())
        .filter(|v| pgha_api::validate::valid_wal_size(v))
        .unwrap_or_else(|| pgha_api::DEFAULT_MAX_SLOT_WAL_KEEP_SIZE.to_string())
}

/// The role the configuration files render for `goal`.
pub fn role_for(goal: NodeState, a: Option<&Assignment>, ssn: String) -> Role {
    if let (true, Some(src)) = (goal.is_writable(), a.and_then(|a| a.standby_of.as_ref())) {
        Role::StandbyOf {
            hosts: src.hosts.clone(),
            slot: src.slot.clone(),
            max_slot_wal_keep_size: max_slot_wal_keep_size(a),
        }
    } else if goal.is_writable() {
        Role::Primary {
            synchronous_standby_names: ssn,
            max_slot_wal_keep_size: max_slot_wal_keep_size(a),
        }
    } else if goal.is_standby() {
        let upstream = if goal.streams_from_upstream() {
            a.and_then(|a| a.upstream.as_ref())
                .map(|u| (u.host.clone(), u.port))
        } else {
            None
        };
        Role::Standby {
            upstream,
            slot: !goal.streams_without_slot() && a.is_none_or(|a| a.upstream_slot),
            max_slot_wal_keep_size: max_slot_wal_keep_size(a),
        }
    } else {
        Role::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeState::*;
    use pgha_api::{PeerNode, Timings};

    fn peer(id: u64, slot: bool) -> PeerNode {
        PeerNode {
            node_id: id,
            name: format!("node_{id}"),
            host: "10.0.0.9".into(),
            port: 5432,
            slot,
        }
    }

    fn assignment(goal: NodeState, peers: Vec<PeerNode>, upstream: Option<PeerNode>) -> Assignment {
        Assignment {
            upstream_slot: true,
            backup: None,
            backup_request: None,
            permanent_slots: vec![],
            node_id: 1,
            goal,
            term: 1,
            upstream,
            peers,
            synchronous_standby_names: "ANY 1 (pgha_standby_2)".into(),
            dbname: "appdb".into(),
            timings: Timings::default(),
            fast_poll: false,
            primary_lsn: None,
            parameters: Default::default(),
            generation: 1,
            max_slot_wal_keep_size: "8GB".into(),
            rebuild_epoch: 0,
            node_token: None,
            restart_epoch: 0,
            no_load_balance: false,
            standby_of: None,
            synchronized_standby_slots: vec![],
            major: None,
        }
    }

    #[test]
    fn a_fenced_node_never_runs_writable() {
        for (goal, fenced, want) in [
            (Primary, false, Primary),
            (Primary, true, DemoteTimeout),
            (WaitPrimary, true, DemoteTimeout),
            (Single, true, DemoteTimeout),
            (Secondary, true, Secondary),
            (Catchingup, false, Catchingup),
        ] {
            let a = assignment(goal, vec![], None);
            assert_eq!(
                effective_goal(Some(&a), fenced),
                want,
                "{goal} fenced={fenced}"
            );
        }
        assert_eq!(effective_goal(None, true), Init);
    }

    #[test]
    fn synchronous_standby_names_before_and_after_the_controller_is_reached() {
        let with_peers = assignment(Primary, vec![peer(2, true), peer(3, true)], None);
        let alone = assignment(Single, vec![], None);
        let ssn = |a: &Assignment, contacted| synchronous_standby_names(Some(a), contacted);
        // Not reached since start, with peers: every peer synchronous, whatever it says.
        let pgha = |id| pgha_api::standby_application_name(id);
        assert_eq!(
            ssn(&with_peers, false),
            format!("FIRST 2 ({}, {})", pgha(2), pgha(3))
        );
        assert_eq!(ssn(&with_peers, true), "ANY 1 (pgha_standby_2)");
        assert_eq!(ssn(&alone, false), "ANY 1 (pgha_standby_2)");
        assert_eq!(synchronous_standby_names(None, false), "");
    }

    #[test]
    fn wanted_slots_and_when_a_restart_is_allowed() {
        let a = assignment(Primary, vec![peer(2, true), peer(3, false)], None);
        let w = wanted(Primary, Some(&a), String::new());
        assert_eq!(w.slots, vec![pgha_api::replication_slot_name(2)]);
        assert!(
            !w.restart_allowed,
            "a primary with peers switches over first"
        );
        assert!(!w.has_upstream);
        let alone = assignment(Single, vec![], None);
        assert!(wanted(Single, Some(&alone), String::new()).restart_allowed);
        for (goal, allowed) in [
            (Secondary, true),
            (Catchingup, true),
            (FastForward, false),
            (PreparePromotion, false),
            (StopReplication, false),
        ] {
            let a = assignment(goal, vec![peer(2, false)], Some(peer(2, false)));
            let w = wanted(goal, Some(&a), String::new());
            assert_eq!(w.restart_allowed, allowed, "{goal}");
            assert!(w.has_upstream);
        }
    }

    #[test]
    fn role_follows_the_goal() {
        let up = peer(2, false);
        let a = assignment(Secondary, vec![up.clone()], Some(up.clone()));
        let upstream = Some((up.host.clone(), up.port));
        assert_eq!(
            role_for(Secondary, Some(&a), String::new()),
            Role::Standby {
                upstream: upstream.clone(),
                slot: true,
                max_slot_wal_keep_size: "8GB".into()
            }
        );
        assert_eq!(
            role_for(FastForward, Some(&a), String::new()),
            Role::Standby {
                upstream,
                slot: false,
                max_slot_wal_keep_size: "8GB".into()
            },
            "fast_forward streams from another standby, without a slot"
        );
        assert_eq!(
            role_for(StopReplication, Some(&a), String::new()),
            Role::Standby {
                upstream: None,
                slot: !StopReplication.streams_without_slot(),
                max_slot_wal_keep_size: "8GB".into()
            },
            "stop_replication cuts replication"
        );
        let mut bad = assignment(Primary, vec![], None);
        bad.max_slot_wal_keep_size = "lots".into();
        assert_eq!(
            role_for(Primary, Some(&bad), "x".into()),
            Role::Primary {
                synchronous_standby_names: "x".into(),
                max_slot_wal_keep_size: pgha_api::DEFAULT_MAX_SLOT_WAL_KEEP_SIZE.into()
            },
            "a size Postgres would refuse never reaches postgresql.conf"
        );
        assert_eq!(role_for(Demoted, Some(&a), String::new()), Role::Stopped);
    }
}
