//! Node states, with pg_auto_failover's names and meaning so `show state` reads the same.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The state of one node: what an agent reports it reached, or what the controller assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Registered; Postgres not set up yet.
    Init,
    /// The only node: plain read-write Postgres, no replication.
    Single,
    /// Writable primary without a synchronous standby (writes never block on replication).
    WaitPrimary,
    /// Writable primary with synchronous replication to its quorum standbys.
    Primary,
    /// Old primary being stopped at the start of a switchover or failover.
    Draining,
    /// Old primary told to stop while it may be unreachable; the controller waits for its
    /// acknowledgement or for its lease to run out.
    DemoteTimeout,
    /// Old primary fenced: Postgres stopped and kept stopped until told to rejoin.
    Demoted,
    /// New node waiting for the primary to open pg_hba and a replication slot for it.
    WaitStandby,
    /// Standby being built (base backup or rewind) or streaming but not yet caught up.
    Catchingup,
    /// Hot standby, caught up, a failover candidate.
    Secondary,
    /// Chosen standby that lacks WAL another standby has: it streams the missing WAL
    /// from that standby (pg_auto_failover's `fast_forward`) before its promotion.
    FastForward,
    /// Chosen standby, about to be promoted; still a standby.
    PreparePromotion,
    /// Chosen standby with its replication cut, waiting until the old primary is fenced.
    StopReplication,
    /// Node being removed from the formation.
    Dropped,
    /// Node taken out of service by an operator: Postgres stopped and kept stopped, not
    /// a failover candidate, not counted for synchronous replication.
    Maintenance,
}

pub const ALL_STATES: [NodeState; 15] = [
    NodeState::Init,
    NodeState::Single,
    NodeState::WaitPrimary,
    NodeState::Primary,
    NodeState::Draining,
    NodeState::DemoteTimeout,
    NodeState::Demoted,
    NodeState::WaitStandby,
    NodeState::Catchingup,
    NodeState::Secondary,
    NodeState::FastForward,
    NodeState::PreparePromotion,
    NodeState::StopReplication,
    NodeState::Dropped,
    NodeState::Maintenance,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown node state {0:?}")]
pub struct StateParseError(String);

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Init => "init",
            NodeState::Single => "single",
            NodeState::WaitPrimary => "wait_primary",
            NodeState::Primary => "primary",
            NodeState::Draining => "draining",
            NodeState::DemoteTimeout => "demote_timeout",
            NodeState::Demoted => "demoted",
            NodeState::WaitStandby => "wait_standby",
            NodeState::Catchingup => "catchingup",
            NodeState::Secondary => "secondary",
            NodeState::FastForward => "fast_forward",
            NodeState::PreparePromotion => "prepare_promotion",
            NodeState::StopReplication => "stop_replication",
            NodeState::Dropped => "dropped",
            NodeState::Maintenance => "maintenance",
        }
    }

    /// States in which Postgres accepts writes.
    pub fn is_writable(self) -> bool {
        matches!(
            self,
            NodeState::Single | NodeState::WaitPrimary | NodeState::Primary
        )
    }

    /// States in which the agent keeps Postgres stopped.
    pub fn is_stopped(self) -> bool {
        matches!(
            self,
            NodeState::Draining
                | NodeState::DemoteTimeout
                | NodeState::Demoted
                | NodeState::Dropped
                | NodeState::Maintenance
        )
    }

    /// States in which Postgres runs as a standby (in recovery).
    pub fn is_standby(self) -> bool {
        matches!(
            self,
            NodeState::Catchingup
                | NodeState::Secondary
                | NodeState::FastForward
                | NodeState::PreparePromotion
                | NodeState::StopReplication
        )
    }

    /// States in which the standby streams from the primary.
    pub fn streams_from_upstream(self) -> bool {
        matches!(
            self,
            NodeState::Catchingup
                | NodeState::Secondary
                | NodeState::FastForward
                | NodeState::PreparePromotion
        )
    }

    /// Streaming states whose upstream is another standby, reached without a
    /// replication slot (the upstream keeps slots only for its role as a primary).
    pub fn streams_without_slot(self) -> bool {
        self == NodeState::FastForward
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = StateParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_STATES
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StateParseError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for st in ALL_STATES {
            assert_eq!(st.as_str().parse::<NodeState>().unwrap(), st);
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        assert!("primaryy".parse::<NodeState>().is_err());
    }

    #[test]
    fn state_classes_do_not_overlap() {
        for st in ALL_STATES {
            let classes = [st.is_writable(), st.is_stopped(), st.is_standby()];
            assert!(classes.iter().filter(|c| **c).count() <= 1, "{st}");
        }
    }
}
