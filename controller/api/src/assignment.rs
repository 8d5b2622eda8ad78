//! What the controller answers a report with: the node's [`Assignment`].

use crate::{Lsn, NodeId, NodeState, Timings};
use serde::{Deserialize, Serialize};

/// Another node of the formation, as an agent needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub node_id: NodeId,
    pub name: String,
    pub host: String,
    pub port: u16,
    /// A primary keeps a replication slot for this peer: it streams, or is about to
    /// (not in maintenance, not dropped, not failed, not a node that never started).
    #[serde(default = "default_true")]
    pub slot: bool,
}

fn default_true() -> bool {
    true
}

/// `max_slot_wal_keep_size` when the formation file sets none: a dead standby's slot
/// holds at most this much WAL on the primary before it is invalidated (and the standby
/// rebuilt), instead of filling the primary's disk.
pub const DEFAULT_MAX_SLOT_WAL_KEEP_SIZE: &str = "8GB";

/// The controller's answer to a report: the state this node must reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub node_id: NodeId,
    pub goal: NodeState,
    /// Formation term; agents refuse assignments from a term older than one they saw.
    pub term: u64,
    /// The node to stream from, for standby states.
    pub upstream: Option<PeerNode>,
    /// Stream through this node's replication slot on the upstream: false for a
    /// cascading standby (`replicateFrom`), whose upstream is another standby.
    #[serde(default = "default_true")]
    pub upstream_slot: bool,
    /// Every other node of the formation (for pg_hba and replication slots).
    pub peers: Vec<PeerNode>,
    /// Value for `synchronous_standby_names` when this node is writable.
    pub synchronous_standby_names: String,
    pub dbname: String,
    pub timings: Timings,
    /// Something in the formation is changing: report again soon rather than at the interval.
    pub fast_poll: bool,
    /// The primary's last reported WAL position (for a standby's lag).
    #[serde(default)]
    pub primary_lsn: Option<Lsn>,
    /// Postgres settings from the formation file (`postgresql.parameters`).
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, String>,
    /// Generation of the formation's desired state these settings come from.
    #[serde(default)]
    pub generation: u64,
    /// `max_slot_wal_keep_size` for the primary's slots.
    #[serde(default)]
    pub max_slot_wal_keep_size: String,
    /// Bumped by the controller each time this node's replication slot was invalidated
    /// (its WAL is gone): a standby rebuilds from a fresh base backup once per bump.
    #[serde(default)]
    pub rebuild_epoch: u64,
    /// Bumped by each `pgha restart` of this node: it restarts its Postgres once per
    /// bump.
    #[serde(default)]
    pub restart_epoch: u64,
    /// A credential for a node that registered before nodes had their own: handed out
    /// once, in the answer to its first report; the agent keeps it and reports with it
    /// from then on. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_token: Option<String>,
    /// The formation file keeps this node out of read load balancing: its `/replica`
    /// health endpoint answers 503.
    #[serde(default)]
    pub no_load_balance: bool,
    /// The formation's backup settings: archiving on a primary, WAL from the
    /// repository on a standby (None: the file has no `backup` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::BackupSettings>,
    /// A backup this node must take (the latest asked of it; done once per id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_request: Option<crate::BackupRequest>,
    /// The file's permanent slots, each with the primary's position of it: every node
    /// keeps one, a standby's advanced up to the primary's, so that a consumer finds
    /// its slot on whichever node is promoted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permanent_slots: Vec<crate::SlotPosition>,
    /// The formation is a standby of another: a writable goal here means "lead this
    /// formation as a standby of the source" (never promote); standbys cascade from
    /// the leader as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_of: Option<StandbySource>,
    /// For the primary: the replication slots of the standbys a failover may promote.
    /// On a major with failover slots, a logical slot's consumer receives a change only
    /// once these standbys have it (`synchronized_standby_slots`), so that no failover
    /// takes back what a consumer saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synchronized_standby_slots: Vec<String>,
    /// The major this node must run: a data directory is made only with that major's
    /// install. None: not decided yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<crate::PgMajor>,
}

/// Where a standby formation's leader streams from (`spec.standbyOf`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbySource {
    /// The source formation's nodes, (host, port).
    pub hosts: Vec<(String, u16)>,
    /// The slot on the source to stream through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

impl StandbySource {
    /// From the file's section; None when a host does not parse (the file is checked
    /// before it is loaded, so only for a section this version cannot read).
    pub fn from_spec(s: &crate::formation::StandbyOf) -> Option<StandbySource> {
        Some(StandbySource {
            hosts: s
                .hosts
                .iter()
                .map(|h| Self::parse_host_port(h).ok())
                .collect::<Option<_>>()?,
            slot: s.slot.clone(),
        })
    }

    /// `host:port` (an IPv6 address in brackets: `[::1]:5432`).
    pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
        let bad = || {
            format!("{s:?} is not host:port (e.g. 10.0.0.5:5432, [fd00::5]:5432, db1.example:5432)")
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        crate::host::Host::parse(host).map_err(|e| format!("{s:?}: {e}"))?;
        Ok((host.to_string(), port))
    }
}
