//! Read models the CLI prints: a formation's status (`show state`), its events
//! (`show events`), and the monitor's connection details (`show uri`).

use crate::{Lsn, NodeId, NodeState, formation};
use serde::{Deserialize, Serialize};

/// Health of a node as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Unknown,
    Good,
    Bad,
}

/// One node in `show state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub reported_state: NodeState,
    pub assigned_state: NodeState,
    pub timeline: Option<u32>,
    pub lsn: Option<Lsn>,
    pub health: Health,
    /// Postgres running according to the agent's last report.
    pub pg_running: bool,
    pub candidate_priority: u8,
    pub replication_quorum: bool,
    /// Milliseconds since the last report (None: no report since the controller started).
    pub report_age_ms: Option<u64>,
    pub fenced: bool,
    pub last_error: Option<String>,
    /// PGDATA's filesystem, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<crate::report::DiskSpace>,
    /// WAL archiving, on a primary with a backup repository, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::ArchiveStatus>,
    /// Generation of the desired state applied on the node.
    #[serde(default)]
    pub applied_generation: u64,
    /// Settings waiting for a Postgres restart.
    #[serde(default)]
    pub pending_restart: Vec<String>,
    /// How its Postgres authenticates (`trust`, `scram-sha-256`), as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    /// The node it streams from (None for the primary, and for a standby whose
    /// replication is cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Asked to rebuild from a fresh base backup (`pgha reinit`, or its slot was
    /// invalidated) and not done yet.
    #[serde(default)]
    pub rebuilding: bool,
    /// Asked to restart its Postgres (`pgha restart`) and not done yet.
    #[serde(default)]
    pub restarting: bool,
    /// `pgha restart --scheduled`: when (unix ms) its Postgres restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_scheduled_ms: Option<u64>,
    /// Its physical slots other than pgha's own (the file's permanent slots), with
    /// their positions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permanent_slots: Vec<crate::SlotPosition>,
    /// The PostgreSQL major of its data directory, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<crate::PgMajor>,
    /// Postgres is in recovery, as last reported (a standby formation's leader is,
    /// though its state is writable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_recovery: Option<bool>,
}

impl NodeStatus {
    /// `read-write` or `read-only` as pg_autoctl prints it, `!` when the node is unhealthy.
    pub fn connection(&self) -> String {
        let kind = if self.reported_state.is_writable()
            && self.pg_running
            && self.in_recovery != Some(true)
        {
            "read-write"
        } else {
            "read-only"
        };
        match self.health {
            Health::Good => kind.to_string(),
            Health::Bad => format!("{kind} !"),
            Health::Unknown => format!("{kind} ?"),
        }
    }
}

/// A formation as `show state` and `show uri` need it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormationStatus {
    pub name: String,
    pub dbname: String,
    pub term: u64,
    pub number_sync_standbys: u32,
    pub nodes: Vec<NodeStatus>,
    /// One line on what the formation is doing or waiting for, when not steady.
    pub summary: String,
    /// Generation of the desired state (bumped by every accepted change of its file).
    #[serde(default)]
    pub generation: u64,
    /// The formation file it comes from.
    #[serde(default)]
    pub source_file: Option<String>,
    /// Its file was removed: nodes keep running, nothing is reconciled from YAML.
    #[serde(default)]
    pub orphaned: bool,
    /// Errors of the formation file's last rejected version (the last good one is in force).
    #[serde(default)]
    pub config_errors: Vec<String>,
    /// The desired state in force.
    #[serde(default)]
    pub spec: Option<formation::FormationSpec>,
    /// Paused (by `pgha pause` or the file): nothing is assigned or failed over.
    #[serde(default)]
    pub paused: bool,
    /// With several controllers on one etcd store: the URL of the one that leads (and
    /// answered). None with a single controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// A standby formation: the source's nodes its leader follows (`standbyOf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_of: Option<String>,
    /// Promoted by `pgha formation promote` while its file still says `standbyOf`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promoted_over_file: bool,
}

impl FormationStatus {
    /// The nodes whose Postgres trusts every connection (`--auth trust`).
    /// Nodes whose PGDATA filesystem is nearly or wholly full, with what is free.
    pub fn low_disk_nodes(&self) -> Vec<(&str, crate::report::DiskSpace)> {
        self.nodes
            .iter()
            .filter_map(|n| n.disk.filter(|d| d.is_low()).map(|d| (n.name.as_str(), d)))
            .collect()
    }

    /// Nodes whose WAL archiving fails, with its status.
    pub fn archive_failing_nodes(&self) -> Vec<(&str, &crate::ArchiveStatus)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                n.archive
                    .as_ref()
                    .filter(|a| a.failing())
                    .map(|a| (n.name.as_str(), a))
            })
            .collect()
    }

    pub fn trusting_nodes(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.auth_method.as_deref() == Some("trust"))
            .map(|n| n.name.as_str())
            .collect()
    }

    /// libpq multi-host URI with `target_session_attrs=read-write`.
    pub fn uri(&self, username: Option<&str>, sslmode: &str) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:{}", uri_host(&n.host), n.port))
            .collect();
        let user = username.map(|u| format!("{u}@")).unwrap_or_default();
        format!(
            "postgres://{user}{}/{}?target_session_attrs=read-write&sslmode={sslmode}",
            hosts.join(","),
            self.dbname
        )
    }
}

fn uri_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// One entry of the controller's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub formation: String,
    pub node_id: Option<NodeId>,
    pub node_name: Option<String>,
    pub reported_state: Option<NodeState>,
    pub assigned_state: Option<NodeState>,
    /// The planner rule (or operator action) behind the event.
    pub rule: String,
    pub description: String,
    /// What the planner looked at when it decided (nodes' states, LSNs, health,
    /// priorities, term); absent on reports and operator events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Value>,
    /// Who made the call behind it (`operator`, `node node_a`, `join secret of
    /// default`, an address refused); absent on the controller's own decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// The controller's connection details, as `show uri` prints them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorInfo {
    pub url: String,
    pub formations: Vec<String>,
    pub sslmode: String,
    pub username: Option<String>,
}
