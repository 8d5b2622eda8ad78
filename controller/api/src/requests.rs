//! Requests and answers of the API's actions (registration, switchover, forced
//! failover), and the error body every failed call returns.

use crate::{NodeId, NodeState, routes};
use serde::{Deserialize, Serialize};

/// `POST /v1/nodes`: an agent asks to join a formation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub formation: String,
    /// Requested node name; the controller picks `node_<id>` when absent.
    pub name: Option<String>,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub candidate_priority: u8,
    pub replication_quorum: bool,
    /// The PostgreSQL majors installed on the node: a node without the formation's is
    /// refused. Empty: not said (an agent older than this field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installs: Vec<crate::PgMajor>,
}

impl RegisterRequest {
    /// Node `name` at `host:port` asking to join `formation` for database `dbname`, with
    /// the defaults of `create postgres` (priority 50, in the quorum, majors not said).
    pub fn new(formation: &str, name: &str, host: &str, port: u16, dbname: &str) -> Self {
        RegisterRequest {
            formation: formation.to_string(),
            name: Some(name.to_string()),
            host: host.to_string(),
            port,
            dbname: dbname.to_string(),
            candidate_priority: 50,
            replication_quorum: true,
            installs: vec![],
        }
    }
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
    /// This node's own credential: its reports are accepted with it, and only for it.
    /// Handed out once; the controller keeps only its SHA-256. Never logged.
    #[serde(default)]
    pub node_token: String,
    /// The major the node must run (the formation's, or the file's before it has a
    /// primary); None: not decided yet (the first node of a formation that declares
    /// none picks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<crate::PgMajor>,
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
#[serde(deny_unknown_fields)]
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

/// `POST /v1/formations/{name}/backups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupStart {
    pub kind: crate::BackupKind,
}
