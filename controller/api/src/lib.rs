//! The contract between the pgha controller, its agents and the CLI.
//!
//! Everything here is plain data with serde: node states, the agent's report, the
//! controller's assignment, and the read models (`FormationStatus`, `Event`) that the
//! CLI prints, the routes and error codes of the API. No I/O lives in this crate by
//! default, so every other crate can depend on it; two features add the I/O at the
//! boundary it describes: `server` (the bounded HTTP server) and `client` (the typed
//! API client).

#[cfg(feature = "client")]
pub mod client;
pub mod formation;
pub mod host;
mod lsn;
pub mod routes;
#[cfg(feature = "server")]
pub mod server;
mod state;
pub mod validate;

pub use lsn::{Lsn, LsnParseError};
pub use state::{ALL_STATES, NodeState, StateParseError};

use serde::{Deserialize, Serialize};

/// Identifier the controller gives a node at registration; never reused.
pub type NodeId = u64;

/// Name of the formation created by `pgha create monitor` and used when none is given.
pub const DEFAULT_FORMATION: &str = "default";

/// The Postgres role standbys and `pg_rewind` connect as.
pub const REPLICATION_USER: &str = "pgha_replicator";

/// `application_name` a standby uses, and the name `synchronous_standby_names` lists.
pub fn standby_application_name(node_id: NodeId) -> String {
    format!("pgha_standby_{node_id}")
}

/// Physical replication slot the primary keeps for a standby.
pub fn replication_slot_name(node_id: NodeId) -> String {
    format!("pgha_slot_{node_id}")
}

/// Timings of a formation, in milliseconds. Defaults follow DESIGN §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// How often an agent reports while nothing is changing.
    pub report_interval_ms: u64,
    /// A node with neither a report nor a successful probe for this long is failed.
    pub failure_timeout_ms: u64,
    /// A primary that lost both the controller and every standby for this long fences itself.
    pub lease_ms: u64,
    /// Extra wait on top of the lease before the controller trusts that a lost primary fenced.
    pub lease_margin_ms: u64,
    /// A Postgres that an agent reports down is restarted in place for this long before failover.
    pub restart_grace_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            report_interval_ms: 1000,
            failure_timeout_ms: 3000,
            lease_ms: 3000,
            lease_margin_ms: 500,
            restart_grace_ms: 5000,
        }
    }
}

/// `POST /v1/nodes`: an agent asks to join a formation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub formation: String,
    /// Requested node name; the controller picks `node_<id>` when absent.
    pub name: Option<String>,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub candidate_priority: u8,
    pub replication_quorum: bool,
}

/// The controller's answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub node_id: NodeId,
    pub name: String,
    pub formation: String,
    pub assigned_state: NodeState,
    /// Password of the replication role, shared by the formation's nodes (for
    /// `--auth scram-sha-256`). Never logged.
    pub replication_password: String,
}

/// One standby as the primary sees it in `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyObservation {
    pub application_name: String,
    pub state: String,
    pub sync_state: String,
    pub flush_lsn: Option<Lsn>,
}

/// What an agent observed of its local Postgres.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Where a standby's WAL receiver streamed from, as far as its agent watched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHistory {
    /// How long the agent has been watching (ms): before that, anything may have been.
    pub watching_ms: u64,
    pub contacts: Vec<StreamedFrom>,
}

/// One upstream a standby streamed from, as its WAL receiver names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamedFrom {
    pub host: String,
    pub port: u16,
    pub ms_ago: u64,
}

/// `POST /v1/report`: sent by every agent every report interval and after each change.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Generation of the desired state whose settings are in force on this node.
    #[serde(default)]
    pub applied_generation: u64,
}

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
}

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
    /// Generation of the desired state applied on the node.
    #[serde(default)]
    pub applied_generation: u64,
    /// Settings waiting for a Postgres restart.
    #[serde(default)]
    pub pending_restart: Vec<String>,
}

impl NodeStatus {
    /// `read-write` or `read-only` as pg_autoctl prints it, `!` when the node is unhealthy.
    pub fn connection(&self) -> String {
        let kind = if self.reported_state.is_writable() && self.pg_running {
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
}

impl FormationStatus {
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
}

/// The controller's connection details, as `show uri` prints them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorInfo {
    pub url: String,
    pub formations: Vec<String>,
    pub sslmode: String,
    pub username: Option<String>,
}

/// `POST /v1/formations/{name}/switchover` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchoverStarted {
    pub from_node: NodeId,
    pub to_node: NodeId,
    pub term: u64,
}

/// `POST /v1/formations/{name}/failover` request: a failover the data-loss guard
/// blocks, forced by an operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForcedFailoverRequest {
    /// Must be true: the operator accepts that acknowledged commits may be lost.
    pub allow_data_loss: bool,
    /// Why (recorded in the event).
    pub reason: String,
}

/// `POST /v1/formations/{name}/failover` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForcedFailoverStarted {
    /// The term the override applies to.
    pub term: u64,
    /// The node being promoted, when this request started the promotion (None when it
    /// lifted the guard of a promotion already in progress).
    pub to_node: Option<NodeId>,
}

/// Uniform error body of every failed API call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub code: routes::ErrorCode,
}
