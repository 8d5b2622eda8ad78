//! The formation file: the desired topology of one formation, kept in Git as YAML.
//!
//! ```yaml
//! # yaml-language-server: $schema=../schemas/formation.schema.json
//! apiVersion: pgha/v1
//! kind: Formation
//! metadata:
//!   name: default
//! spec:
//!   dbname: appdb
//!   nodes:
//!     - name: node_a
//!       host: 10.0.1.4
//!       port: 5432
//! ```
//!
//! The doc comments of these types are the format's reference: `schemas/formation.schema.json`
//! is generated from them (`cargo run -p pgha-api --bin gen-schema`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only `apiVersion` this version of pgha reads.
pub const API_VERSION: &str = "pgha/v1";

/// Most nodes a formation holds: the primary streams to every standby itself (no
/// cascading), and agents size `max_wal_senders` (24) for 8 standbys streaming plus
/// several base backups at once.
pub const MAX_NODES: usize = 9;

/// One formation: a primary and its standbys serving one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "pgha Formation")]
pub struct FormationDoc {
    /// Always `pgha/v1`.
    pub api_version: String,
    /// Always `Formation`.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: FormationSpec,
}

/// Identity of the formation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Formation name: 1-63 lowercase letters, digits, `_` or `-`, starting with a letter.
    /// Nodes join it with `pgha create postgres --formation NAME`.
    pub name: String,
}

/// What the formation should look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FormationSpec {
    /// The application database, created on the first primary. When absent, the first
    /// node's `--dbname` sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    /// How many standbys must confirm each commit (`ANY k` in
    /// `synchronous_standby_names`). 0: one standby confirms while one is healthy, and
    /// writes go on without it when none is (availability first). k >= 1: writes block
    /// rather than be confirmed by fewer than k standbys (durability first). Must leave
    /// one quorum node for the primary: k <= quorum nodes - 1.
    #[serde(default)]
    pub number_sync_standbys: u32,
    /// The node that should be primary: the file's form of `pgha perform promotion`.
    /// When the file sets or changes it, the controller switches over to that node as
    /// soon as it is a healthy, caught-up secondary; once per change of the file, so a
    /// later failover is not undone by itself (no automatic failback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Paused: the controller assigns nothing new and fails nothing over; every node
    /// keeps its role and Postgres runs on (`pgha pause` does the same from the CLI).
    /// Set back to false, the formation is reconciled again (a healthy primary stays).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// A standby formation, for disaster recovery: its leader is a standby of another
    /// formation (another region, another monitor), and its other nodes cascade from
    /// the leader. Nothing is writable until it is promoted: `pgha formation promote`,
    /// or this section removed from the file. Added to a running formation, its primary
    /// is rewound onto the source and follows it (a demotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_of: Option<StandbyOf>,
    /// Who may join, and how a node proves it belongs.
    #[serde(default)]
    pub admission: Admission,
    /// Failure detection and fencing timings.
    #[serde(default)]
    pub timings: TimingsSpec,
    /// At most this many automatic failovers in a window: past it, a needed failover
    /// waits and says why (an operator's forced failover is not counted nor held).
    #[serde(default)]
    pub anti_flapping: AntiFlapping,
    /// Postgres settings applied to every node.
    #[serde(default)]
    pub postgresql: PostgresSpec,
    /// Continuous archiving and backups with pgBackRest (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup::BackupSpec>,
    /// Permanent replication slots, by name: kept on every node (a standby's copy
    /// advanced to the primary's position), so that a consumer outside the formation
    /// (`pg_receivewal`, a standby in another region, a backup tool) finds its slot on
    /// whichever node is promoted, and the WAL it still needs.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub slots: std::collections::BTreeMap<String, SlotSpec>,
    /// The nodes, at most 9. With `admission.declaredNodesOnly` (the default when any node is listed)
    /// only these may register, each from its declared host and port.
    #[serde(default)]
    #[schemars(length(max = 9))]
    pub nodes: Vec<NodeSpec>,
}

/// The source of a standby formation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StandbyOf {
    /// The source formation's nodes, each `host:port`. The leader streams from one of
    /// them that is a standby when one answers (it never holds WAL the source could
    /// lose in a failover), else from the source's primary; it follows the source's
    /// failovers by itself (`recovery_target_timeline = latest`).
    #[schemars(length(min = 1, max = 9))]
    pub hosts: Vec<String>,
    /// A permanent physical slot declared in the source formation's file to stream
    /// through: the source keeps the WAL this formation still needs, on whichever of
    /// its nodes serves it. None: no slot (`wal_keep_size` and the backup repository
    /// must cover a disconnection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// A file of this monitor's secrets directory (`<monitor dir>/secrets`, by its bare
    /// name or an absolute path into it, 0600) holding the source formation's
    /// replication password
    /// (`pgha show replication-password --formation SOURCE` prints it, on the source's
    /// monitor). A new standby formation takes it as its own, so that its leader
    /// authenticates to the source and its standbys to the leader (whose replication
    /// role comes from the source). Needed unless both formations use `--auth trust`.
    /// Never put the password itself in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

/// One permanent replication slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlotSpec {
    /// `physical` or `logical`. A logical slot needs `database` and `plugin`; declaring
    /// one sets `wal_level = logical` on every node (a restart, rolled as for any
    /// setting that needs one).
    #[serde(rename = "type")]
    pub kind: SlotKind,
    /// The database a logical slot decodes (it must exist on the primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The output plugin of a logical slot (`pgoutput`, `test_decoding`, `wal2json`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    Physical,
    Logical,
}

/// Admission of nodes into the formation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admission {
    /// Only nodes listed in `spec.nodes` may register (by name, from their host:port).
    /// Default: true when `spec.nodes` lists any node, false when it is empty.
    #[serde(default)]
    pub declared_nodes_only: Option<bool>,
    /// The file holding the join secret a node must present (the monitor URL that `pgha
    /// show uri` prints carries it): a file of the monitor's secrets directory
    /// (`<monitor dir>/secrets`), by its bare name or an absolute path into it, 0600, of
    /// the monitor's user. Never put the secret itself here.
    #[serde(default)]
    pub join_secret_file: Option<String>,
    /// Admit any node and any operator that reaches the monitor, with no join secret.
    /// Only for a lab or a network you fully trust: `show state` says so. A formation is
    /// open only when its file says `open: true`; without it, a `joinSecretFile` is
    /// required.
    #[serde(default)]
    pub open: bool,
    /// Rejected: secrets never go inline in a file kept in Git.
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub join_secret: Option<serde_json::Value>,
}

/// Timings, in milliseconds. Every timing trades detection speed against false
/// failovers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimingsSpec {
    /// How often an agent reports while nothing changes (100-60000).
    #[serde(default = "default_report_interval")]
    pub report_interval_ms: u64,
    /// A node with neither a report nor a successful probe for this long is failed
    /// (1000-600000).
    #[serde(default = "default_failure_timeout")]
    pub failure_timeout_ms: u64,
    /// A primary that lost the monitor and every standby for this long stops Postgres
    /// (1000-600000).
    #[serde(default = "default_lease")]
    pub lease_ms: u64,
}

/// The anti-flapping limit of automatic failovers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AntiFlapping {
    /// Automatic failovers allowed per window; 0: no limit.
    #[serde(default = "default_max_failovers")]
    pub max_failovers: u32,
    /// The window, in seconds (1-86400).
    #[serde(default = "default_flap_window")]
    pub window_seconds: u64,
}

fn default_max_failovers() -> u32 {
    1
}
fn default_flap_window() -> u64 {
    300
}

impl Default for AntiFlapping {
    fn default() -> Self {
        AntiFlapping {
            max_failovers: default_max_failovers(),
            window_seconds: default_flap_window(),
        }
    }
}

fn default_report_interval() -> u64 {
    1000
}
fn default_failure_timeout() -> u64 {
    3000
}
fn default_lease() -> u64 {
    3000
}

impl Default for TimingsSpec {
    fn default() -> Self {
        TimingsSpec {
            report_interval_ms: default_report_interval(),
            failure_timeout_ms: default_failure_timeout(),
            lease_ms: default_lease(),
        }
    }
}

/// Postgres configuration shared by every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresSpec {
    /// The PostgreSQL major the formation runs (15, 16, 17 or 18). A new node's data
    /// directory is made with that major's install, and a node without one is refused at
    /// registration. Default: the major of the formation's first node. Changing it on a
    /// running formation does not upgrade it: the formation stays on the major its
    /// primary runs, and `show state` says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<crate::PgMajor>,
    /// `name: value` settings written into every node's configuration. Settings that
    /// take effect on reload are applied at once; the others are reported as pending a
    /// restart. Settings pgha manages itself (ports, replication, `synchronous_*`,
    /// `primary_*`) are refused.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParameterValue>,
    /// The most WAL a primary keeps for a standby's replication slot (`max_slot_wal_keep_size`,
    /// e.g. `8GB`; `-1` for no limit). A standby that falls further behind (or is dead) has
    /// its slot invalidated and is rebuilt from a fresh base backup, instead of filling the
    /// primary's disk. Default 8GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slot_wal_keep_size: Option<String>,
}

/// A setting's value, as YAML writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParameterValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for ParameterValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParameterValue::Bool(b) => write!(f, "{}", if *b { "on" } else { "off" }),
            ParameterValue::Int(i) => write!(f, "{i}"),
            ParameterValue::Float(x) => write!(f, "{x}"),
            ParameterValue::Text(s) => f.write_str(s),
        }
    }
}

/// One declared node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name, as given to `pgha create postgres --name`.
    pub name: String,
    /// Host name or address the node registers from and peers reach it at.
    pub host: String,
    /// Postgres port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// 0-100: the highest-priority healthy candidate wins a failover; 0 never is
    /// promoted.
    #[serde(default = "default_priority")]
    pub candidate_priority: u32,
    /// Takes part in synchronous replication (counts for `numberSyncStandbys`).
    #[serde(default = "default_true")]
    pub replication_quorum: bool,
    /// Take the node out of service: its Postgres is stopped and kept stopped, it is no
    /// failover candidate and no synchronous standby. A primary first hands over to a
    /// candidate (refused while there is none). Set back to false to bring it back.
    #[serde(default)]
    pub maintenance: bool,
    /// Keep the node out of read load balancing (Patroni's `noloadbalance` tag): its
    /// `/replica` health endpoint answers 503 whatever its state. It still replicates,
    /// counts for synchronous replication and may be promoted.
    #[serde(default)]
    pub no_load_balance: bool,
    /// A cascading standby: stream from this other declared node while it is a healthy
    /// secondary (from the primary otherwise, e.g. while it is down or once it is the
    /// primary), to spare the primary's network. Such a node is never a synchronous
    /// standby (Postgres counts only standbys streaming from the primary itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_from: Option<String>,
}

fn default_port() -> u16 {
    5432
}
fn default_priority() -> u32 {
    50
}
fn default_true() -> bool {
    true
}

impl FormationSpec {
    /// Whether registration is limited to declared nodes.
    pub fn declared_nodes_only(&self) -> bool {
        self.admission
            .declared_nodes_only
            .unwrap_or(!self.nodes.is_empty())
    }
}

/// The JSON Schema of the formation file.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(FormationDoc)
}

/// The schema as committed in `schemas/formation.schema.json`.
pub fn schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}
