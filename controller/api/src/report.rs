//! What an agent sends: `POST /v1/report` carries a [`NodeReport`] of its node and of
//! the Postgres beside it.

use crate::{Lsn, NodeId, NodeState};
use serde::{Deserialize, Serialize};

/// One standby as the primary sees it in `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyObservation {
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
    pub flush_lsn: Option<Lsn>,
}

/// What an agent observed of its local Postgres.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgObservation {
    /// The postmaster is running and accepts connections.
    pub running: bool,
    /// PGDATA holds an initialised cluster.
    pub initialized: bool,
    pub in_recovery: Option<bool>,
    pub timeline: Option<u32>,
    /// Current WAL position: insert LSN on a primary, received/replayed on a standby.
    pub lsn: Option<Lsn>,
    pub system_identifier: Option<String>,
    /// The major of the data directory (its `PG_VERSION`); None before initdb or a base
    /// backup, or from an agent that does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<crate::PgMajor>,
    /// The version of the node's pgBackRest (`2.45`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgbackrest: Option<String>,
    /// Standbys streaming from this node (primary view).
    pub standbys: Vec<StandbyObservation>,
    /// This node's WAL receiver is streaming from its upstream.
    pub upstream_streaming: bool,
    /// Milliseconds since this node last streamed from its upstream (None: never seen since
    /// the agent started).
    pub upstream_lost_ms_ago: Option<u64>,
    /// Node ids for which this node has a replication slot and pg_hba entries ready.
    pub prepared_for: Vec<NodeId>,
    /// Settings changed but waiting for a Postgres restart.
    #[serde(default)]
    pub pending_restart: Vec<String>,
    /// Each address this node's WAL receiver streamed from since the agent started (last
    /// hour), and how long ago (0: now). The controller's lease check uses it to tell
    /// streaming from an old primary (which keeps its lease alive) from streaming from a
    /// standby (fast_forward). None from an agent that does not track it.
    #[serde(default)]
    pub streamed_from: Option<StreamHistory>,
    /// On a primary: its replication slots that Postgres invalidated (`wal_status`
    /// `lost`: past `max_slot_wal_keep_size`).
    #[serde(default)]
    pub lost_slots: Vec<String>,
    /// The filesystem of PGDATA: bytes free (for an unprivileged user, as Postgres
    /// sees it) and its size. None from an agent that does not say.
    #[serde(default)]
    pub disk: Option<DiskSpace>,
    /// WAL archiving, on a primary whose `archive_mode` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::ArchiveStatus>,
    /// The physical replication slots on this node that pgha does not name for a node
    /// (the file's permanent slots among them), with their positions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permanent_slots: Vec<SlotPosition>,
}

/// A replication slot and how far its consumer got (`restart_lsn`: the WAL it still
/// needs; None until it reserved any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotPosition {
    pub name: String,
    pub restart_lsn: Option<Lsn>,
    /// Postgres' `wal_status` of the slot, where the node reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_status: Option<SlotWalStatus>,
    /// A logical slot's database, plugin and consumer position (None: physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical: Option<LogicalSlot>,
}

/// What a logical slot adds to a physical one. PostgreSQL 15 cannot create a logical
/// slot on a standby: a standby gets the primary's slot state file (`state`), loads it
/// at a restart, and then advances its copy to `confirmed_flush_lsn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalSlot {
    pub database: String,
    pub plugin: String,
    /// How far its consumer confirmed (`confirmed_flush_lsn`): a copy is never advanced
    /// past it, so the consumer misses nothing when a copy's node is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_flush_lsn: Option<Lsn>,
    /// The primary's `pg_replslot/<name>/state` file, in hex (a few hundred bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// PostgreSQL 17 and later: a standby's slot kept by Postgres's own slot
    /// synchronization (`synced`), which only that worker moves or drops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synced: bool,
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex; None when `s` is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl SlotPosition {
    pub fn lost(&self) -> bool {
        self.wal_status == Some(SlotWalStatus::Lost)
    }
}

/// `pg_replication_slots.wal_status`: whether the WAL a slot needs is still kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotWalStatus {
    /// Within `max_wal_size`.
    Reserved,
    /// Beyond `max_wal_size`, kept for the slot (within `max_slot_wal_keep_size`).
    Extended,
    /// Beyond `max_slot_wal_keep_size`: removed at the next checkpoint unless the
    /// consumer catches up.
    Unreserved,
    /// Removed: the slot is invalidated and its consumer cannot continue from it.
    Lost,
}

impl SlotWalStatus {
    /// Postgres' word for it; None for one this version does not know.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reserved" => Some(Self::Reserved),
            "extended" => Some(Self::Extended),
            "unreserved" => Some(Self::Unreserved),
            "lost" => Some(Self::Lost),
            _ => None,
        }
    }
}

/// Free and total bytes of a filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpace {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl DiskSpace {
    /// Less than 2% free (at least one WAL segment, 16 MiB, counts as low on a small
    /// disk): writes are about to fail, or already do.
    pub fn is_low(&self) -> bool {
        self.free_bytes < (self.total_bytes / 50).max(16 << 20)
    }
}

/// Where a standby's WAL receiver streamed from, as far as its agent watched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHistory {
    /// How long the agent has been watching (ms): before that, anything may have been.
    pub watching_ms: u64,
    pub contacts: Vec<StreamedFrom>,
}

/// One upstream a standby streamed from, as its WAL receiver names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamedFrom {
    pub host: String,
    pub port: u16,
    pub ms_ago: u64,
}

/// `POST /v1/report`: sent by every agent every report interval and after each change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub node_id: NodeId,
    pub formation: String,
    /// The state the agent has reached (not the one it is trying to reach).
    pub reported_state: NodeState,
    /// The highest term the agent has seen.
    pub term: u64,
    pub pg: PgObservation,
    /// The agent stopped Postgres because its lease ran out.
    pub fenced: bool,
    /// Last error the agent hit while applying its assignment, if any.
    pub last_error: Option<String>,
    /// The term whose promotion of this node its pre-promote hook refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_refused_term: Option<u64>,
    /// Generation of the desired state whose settings are in force on this node.
    #[serde(default)]
    pub applied_generation: u64,
    /// How this node's Postgres authenticates peers and clients (`trust`,
    /// `scram-sha-256`): `show state` warns about `trust`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    /// The last rebuild epoch this node carried out (the assignment's `rebuild_epoch`).
    #[serde(default)]
    pub rebuilt_epoch: u64,
    /// The last restart epoch this node carried out (the assignment's `restart_epoch`).
    #[serde(default)]
    pub restarted_epoch: u64,
    /// This node's last backup job (running or ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_job: Option<crate::BackupJob>,
    /// The repository's backups, as this node last read them (a primary, after each
    /// backup and every few minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<Vec<crate::BackupInfo>>,
}

impl NodeReport {
    /// A report of `node_id` in `formation` that has reached `reported_state` in `term`,
    /// with nothing observed yet (tests and simulations fill in what they need).
    pub fn new(node_id: NodeId, formation: &str, reported_state: NodeState, term: u64) -> Self {
        NodeReport {
            node_id,
            formation: formation.to_string(),
            reported_state,
            term,
            pg: PgObservation::default(),
            fenced: false,
            last_error: None,
            promotion_refused_term: None,
            applied_generation: 0,
            auth_method: None,
            rebuilt_epoch: 0,
            restarted_epoch: 0,
            backup_job: None,
            backups: None,
        }
    }
}

#[cfg(test)]
mod disk_tests {
    use super::DiskSpace;

    #[test]
    fn low_is_under_two_percent_or_one_wal_segment() {
        let d = |free: u64, total: u64| DiskSpace {
            free_bytes: free,
            total_bytes: total,
        };
        assert!(d(0, 300 << 20).is_low());
        assert!(d(10 << 20, 300 << 20).is_low());
        assert!(!d(100 << 20, 300 << 20).is_low());
        assert!(d(1 << 30, 100 << 30).is_low());
        assert!(!d(3 << 30, 100 << 30).is_low());
    }
}
