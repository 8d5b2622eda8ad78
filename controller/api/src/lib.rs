//! The contract between the pgha controller, its agents and the CLI.
//!
//! Everything here is plain data with serde, one module per boundary: the agent's
//! report (`report`), the controller's assignment (`assignment`), the read models the
//! CLI prints (`status`), the actions' requests and the error body (`requests`), the
//! routes and error codes (`routes`), the formation file (`formation`). All are
//! re-exported here. No I/O lives in this crate by
//! default, so every other crate can depend on it; two features add the I/O at the
//! boundary it describes: `server` (the bounded HTTP server) and `client` (the typed
//! API client).

mod assignment;
pub mod backup;
#[cfg(feature = "client")]
pub mod client;
pub mod formation;
pub mod host;
mod lsn;
mod major;
pub mod names;
mod report;
mod requests;
pub mod routes;
#[cfg(feature = "server")]
pub mod server;
mod state;
mod status;
#[cfg(feature = "tls")]
pub mod tls;
pub mod validate;

pub use lsn::{Lsn, LsnParseError};
pub use major::{PgMajor, SUPPORTED_MAJORS};
pub use state::{ALL_STATES, NodeState, StateParseError};

pub use assignment::*;
pub use backup::{
    ArchiveStatus, BackupInfo, BackupJob, BackupKind, BackupRequest, BackupSettings, BackupsStatus,
    JobState,
};
pub use report::*;
pub use requests::*;
pub use status::*;

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

/// Timings of a formation, in milliseconds. Defaults follow docs/src/design.md §6.
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
