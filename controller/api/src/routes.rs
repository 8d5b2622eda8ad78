//! The controller API's paths and error codes, shared by the server (`pgha-controller`)
//! and its clients, so that no path is spelled twice and no error code is compared as
//! a string. Patterns use axum's `{param}` syntax; [`path`] fills them in.

use serde::{Deserialize, Serialize};

pub const HEALTHZ: &str = "/healthz";
pub const METRICS: &str = "/metrics";
pub const INFO: &str = "/v1/info";
/// `POST`: an agent registers a node.
pub const REGISTER: &str = "/v1/nodes";
/// `POST`: an agent's report; the answer is its assignment.
pub const REPORT: &str = "/v1/report";
/// `GET ?formation=&count=&since=`.
pub const EVENTS: &str = "/v1/events";
pub const FORMATION_STATE: &str = "/v1/formations/{name}/state";
pub const SWITCHOVER: &str = "/v1/formations/{name}/switchover";
pub const PROMOTION: &str = "/v1/formations/{name}/promotion/{node}";
/// `POST {allow_data_loss, reason}`.
pub const FAILOVER: &str = "/v1/formations/{name}/failover";
/// `POST` (`?allow_failover=`) enables, `DELETE` ends a node's maintenance.
pub const MAINTENANCE: &str = "/v1/formations/{name}/nodes/{node}/maintenance";
/// `DELETE`: drop a node.
pub const NODE: &str = "/v1/formations/{name}/nodes/{node}";
/// `POST`: rebuild a standby from a fresh base backup (`pgha reinit`).
pub const REINIT: &str = "/v1/formations/{name}/nodes/{node}/reinit";
/// `POST`: restart a node's Postgres (`pgha restart`).
pub const RESTART: &str = "/v1/formations/{name}/nodes/{node}/restart";
/// `GET`: the repository's backups and the last job (`pgha show backups`); `POST
/// {kind}`: take a backup on the primary (`pgha backup`).
pub const BACKUPS: &str = "/v1/formations/{name}/backups";
/// `POST` pauses the formation (no assignment, no failover), `DELETE` resumes it.
pub const PAUSE: &str = "/v1/formations/{name}/pause";
/// `POST` promotes a standby formation (`spec.standbyOf`): its leader stops following
/// the source and becomes writable.
pub const PROMOTE_FORMATION: &str = "/v1/formations/{name}/promote";
/// `GET`: the formation's replication password (operator only), for a standby
/// formation's `standbyOf.passwordFile` on another monitor.
pub const REPLICATION_PASSWORD: &str = "/v1/formations/{name}/replication-password";

/// Who may call a route. Every route the controller serves has an entry in [`ALL`]; the
/// server refuses a route without one (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness only.
    Public,
    /// The read credential, the operator's, or a node's (its own formation).
    Read,
    /// The formation's join secret (the body names the formation) or the operator's.
    Register,
    /// A node's own credential (the body names the node).
    Report,
    /// The operator's credential.
    Operate,
}

/// One route: method, path pattern, who may call it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

const fn route(method: &'static str, path: &'static str, access: Access) -> Route {
    Route {
        method,
        path,
        access,
    }
}

/// Every route of the controller API and who may call it.
pub const ALL: &[Route] = &[
    route("GET", HEALTHZ, Access::Public),
    route("GET", METRICS, Access::Read),
    route("GET", INFO, Access::Read),
    route("POST", REGISTER, Access::Register),
    route("POST", REPORT, Access::Report),
    route("GET", EVENTS, Access::Read),
    route("GET", FORMATION_STATE, Access::Read),
    route("POST", SWITCHOVER, Access::Operate),
    route("POST", PROMOTION, Access::Operate),
    route("POST", FAILOVER, Access::Operate),
    route("POST", MAINTENANCE, Access::Operate),
    route("DELETE", MAINTENANCE, Access::Operate),
    route("DELETE", NODE, Access::Operate),
    route("POST", REINIT, Access::Operate),
    route("POST", RESTART, Access::Operate),
    route("GET", BACKUPS, Access::Read),
    route("POST", BACKUPS, Access::Operate),
    route("POST", PAUSE, Access::Operate),
    route("DELETE", PAUSE, Access::Operate),
    route("POST", PROMOTE_FORMATION, Access::Operate),
    route("GET", REPLICATION_PASSWORD, Access::Operate),
];

/// Who may call `method` on the route `pattern`; None for a route without an entry.
pub fn access(method: &str, pattern: &str) -> Option<Access> {
    ALL.iter()
        .find(|r| r.method == method && r.path == pattern)
        .map(|r| r.access)
}

/// A route with its formation (and node) filled in. Names are validated identifiers
/// (letters, digits, `_`, `-`), which need no escaping in a path.
pub fn path(pattern: &str, formation: &str, node: Option<&str>) -> String {
    let p = pattern.replace("{name}", formation);
    match node {
        Some(n) => p.replace("{node}", n),
        None => p,
    }
}

/// Why the controller refused a request (the `code` of an [`crate::ApiError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    Internal,
    /// The store refused a write: nothing changed; try again.
    StoreUnavailable,
    /// The formation's join secret is missing or wrong (or none is in force).
    JoinSecret,
    /// The request body is not what the route takes (malformed or unknown JSON, too
    /// large, wrong content type).
    BadRequest,
    /// No credential, or one this monitor does not know (401).
    Unauthenticated,
    /// A credential this monitor knows, whose scope does not cover the request (403).
    Forbidden,
    UnknownFormation,
    UnknownNode,
    InvalidName,
    InvalidHost,
    FormationFull,
    NameTaken,
    AddressTaken,
    /// The request came from an address that may not speak for the node.
    AddressMismatch,
    NotDeclared,
    DbnameMismatch,
    /// The node has no install of the PostgreSQL major the formation runs.
    MajorMissing,
    SwitchoverRefused,
    FailoverRefused,
    AllowDataLossRequired,
    ReasonRequired,
    NeedsAllowFailover,
    NoCandidate,
    /// The formation is paused: nothing is switched or failed over until it resumes.
    Paused,
    /// The action is for a standby, and the node is the primary.
    NotAStandby,
    /// This controller is a follower (another one of the same etcd store leads): the
    /// request goes to the leader, whose URL the message names (503).
    NotLeader,
    /// A backup cannot be taken now: no `backup` section, no primary, or one running.
    BackupRefused,
    /// `pgha formation promote` of a formation that is no standby formation.
    NotAStandbyFormation,
    /// A code this client does not know (a newer controller).
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_travel_as_snake_case_and_unknown_ones_are_kept_apart() {
        let json = serde_json::to_string(&ErrorCode::StoreUnavailable).unwrap();
        assert_eq!(json, "\"store_unavailable\"");
        let back: ErrorCode = serde_json::from_str("\"no_such_code_yet\"").unwrap();
        assert_eq!(back, ErrorCode::Unknown);
        assert_eq!(
            path(PROMOTION, "orders", Some("node_b")),
            "/v1/formations/orders/promotion/node_b"
        );
        assert_eq!(
            path(SWITCHOVER, "orders", None),
            "/v1/formations/orders/switchover"
        );
    }
}
