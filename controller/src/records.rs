//! The controller's durable records, split by who may change each part:
//!
//! - **desired**: only the formation file or an operator (`spec`, the node's own
//!   registration, maintenance and drop requests);
//! - **intent**: only the planner's decisions (term, goals, the generations carried out);
//! - **observed**: only what agents reported (the last reported state, the sync floor).
//!
//! Nothing is copied from one part to another: the values the planner uses (a node's
//! candidate priority, the formation's timings) are resolved from the desired part when
//! the planner's view is built ([`FormationRecord::candidate_priority`] and friends), so
//! the file is the one source of truth for what it declares.
//!
//! On disk the three parts are flattened into one JSON object per record, as before the
//! split: a store written by an earlier version loads unchanged.

use pgha_api::formation::{FormationSpec, NodeSpec};
use pgha_api::{Lsn, NodeId, NodeState, Timings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format of the durable state this version writes. A store written in a later
/// format is refused at start, never half-applied; 0 is a store from before formats.
pub const STORE_FORMAT: u32 = 1;

/// Everything the controller must not forget across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DurableState {
    /// [`STORE_FORMAT`] of the version that wrote it (0 when the file has none); in
    /// memory always this version's.
    #[serde(default)]
    pub format: u32,
    pub next_node_id: NodeId,
    pub formations: BTreeMap<String, FormationRecord>,
}

/// One formation's durable record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormationRecord {
    pub name: String,
    /// The database the formation serves: set once, by the file or the first node.
    pub dbname: String,
    /// Password of the replication role, made at the first registration and handed to
    /// every node that registers.
    #[serde(default)]
    pub replication_password: String,
    #[serde(flatten)]
    pub desired: FormationDesired,
    #[serde(flatten)]
    pub intent: FormationIntent,
    #[serde(flatten)]
    pub observed: FormationObserved,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
}

/// What the formation file says (last good version) and where it came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FormationDesired {
    /// Last good desired state from the formation file.
    #[serde(default)]
    pub spec: Option<FormationSpec>,
    /// Bumped by every accepted change of the formation file.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub source_file: Option<String>,
    /// The formation file was removed: left running, not reconciled from YAML.
    #[serde(default)]
    pub orphaned: bool,
    /// The join secret last read from the file that the accepted spec names. Kept with
    /// the last good spec, so a restart with the file rejected, removed or unreadable
    /// still admits no one without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_secret: Option<String>,
    /// Paused by an operator (`pgha pause`), besides the file's `paused`.
    #[serde(default)]
    pub operator_paused: bool,
    /// `pgha formation promote`: the file's `standbyOf` this formation was promoted
    /// from. It overrides the file only while the file still says that same source
    /// (removing the section, or naming another source, ends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<pgha_api::formation::StandbyOf>,
}

/// What the planner decided for the formation as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormationIntent {
    pub term: u64,
    /// Last generation a rolling-restart switchover was done for.
    #[serde(default)]
    pub rolling_restart_generation: u64,
    /// Last generation whose `spec.primary` was carried out (or already held).
    #[serde(default)]
    pub desired_primary_generation: u64,
    /// The term whose failover an operator allowed to lose data
    /// (`pgha perform failover --allow-data-loss`); it lapses with the next term.
    #[serde(default)]
    pub data_loss_allowed_term: Option<u64>,
    /// When the last automatic failovers started, in wall-clock ms (the monotonic clock
    /// restarts with the controller; minutes-long windows tolerate a clock step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_wall_ms: Vec<u64>,
}

impl Default for FormationIntent {
    fn default() -> Self {
        FormationIntent {
            term: 1,
            rolling_restart_generation: 0,
            desired_primary_generation: 0,
            data_loss_allowed_term: None,
            failover_wall_ms: vec![],
        }
    }
}

/// What agents reported that must outlive a controller restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FormationObserved {
    /// WAL position of the primary when it last turned synchronous (reported
    /// `primary`): what it wrote before may have been acknowledged without a standby.
    #[serde(default)]
    pub sync_floor_lsn: Lsn,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    pub host: String,
    pub port: u16,
    /// SHA-256 (hex) of the node's own credential, which its reports must carry. None
    /// for a node registered before nodes had one: it is given one with its next report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(flatten)]
    pub desired: NodeDesired,
    #[serde(flatten)]
    pub intent: NodeIntent,
    #[serde(flatten)]
    pub observed: NodeObserved,
}

/// What the node asked for when it registered, and what operators asked of it. The
/// formation file's entry for the node, when there is one, overrides the registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDesired {
    /// As registered (`create postgres --candidate-priority`).
    pub candidate_priority: u8,
    /// As registered (`create postgres --replication-quorum`).
    pub replication_quorum: bool,
    /// Put in maintenance by an operator (`pgha enable maintenance`), besides the file.
    #[serde(default)]
    pub operator_maintenance: bool,
    /// An operator asked to drop it (`pgha drop node`).
    #[serde(default)]
    pub drop_requested: bool,
}

/// What the planner assigned the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeIntent {
    pub goal: NodeState,
    /// Bumped each time the primary's slot for this node was invalidated: the node
    /// rebuilds from a fresh base backup once per bump.
    #[serde(default)]
    pub rebuild_epoch: u64,
    /// Bumped by each `pgha restart`: the node restarts its Postgres once per bump.
    #[serde(default)]
    pub restart_epoch: u64,
    /// `pgha restart --scheduled`: when (unix ms) to bump `restart_epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at_ms: Option<u64>,
    /// The last backup asked of this node (`pgha backup`, or the schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_request: Option<pgha_api::BackupRequest>,
}

/// What the node last reported (kept so `show state` reads right after a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeObserved {
    pub reported: NodeState,
}

impl NodeRecord {
    /// A node just admitted, assigned `goal`.
    pub fn registered(
        id: NodeId,
        name: String,
        host: String,
        port: u16,
        desired: NodeDesired,
        goal: NodeState,
    ) -> Self {
        NodeRecord {
            id,
            name,
            host,
            port,
            credential: None,
            desired,
            intent: NodeIntent {
                goal,
                rebuild_epoch: 0,
                restart_epoch: 0,
                restart_at_ms: None,
                backup_request: None,
            },
            observed: NodeObserved {
                reported: NodeState::Init,
            },
        }
    }

    /// A node for tests: priority 50, in the quorum, no operator flags.
    #[cfg(test)]
    pub fn for_test(
        id: NodeId,
        name: &str,
        port: u16,
        goal: NodeState,
        reported: NodeState,
    ) -> Self {
        let mut n = NodeRecord::registered(
            id,
            name.into(),
            "10.0.0.1".into(),
            port,
            NodeDesired {
                candidate_priority: 50,
                replication_quorum: true,
                operator_maintenance: false,
                drop_requested: false,
            },
            goal,
        );
        n.observed.reported = reported;
        n
    }

    pub fn goal(&self) -> NodeState {
        self.intent.goal
    }

    pub fn reported(&self) -> NodeState {
        self.observed.reported
    }
}

impl Default for DurableState {
    fn default() -> Self {
        DurableState {
            format: STORE_FORMAT,
            next_node_id: 0,
            formations: BTreeMap::new(),
        }
    }
}

/// How a join secret is kept in the store: its SHA-256 (`sha256:<hex>`), so that
/// whoever reads the store (an etcd backup, a copy of `state.json`) cannot join with it.
/// The secret itself lives only in its file on the monitor. (The replication password
/// stays in the clear: the controller hands it to every node that registers.)
pub fn stored_join_secret(secret: &str) -> String {
    format!(
        "{JOIN_SECRET_HASH}{}",
        pgha_api::tls::sha256_hex(secret.as_bytes())
    )
}

const JOIN_SECRET_HASH: &str = "sha256:";

/// Whether `presented` is the join secret kept as `stored` (hashed, or in the clear by a
/// version before hashing), compared without an early exit.
pub fn join_secret_matches(stored: &str, presented: &str) -> bool {
    let (want, got) = match stored.strip_prefix(JOIN_SECRET_HASH) {
        Some(hash) => (
            hash.to_string(),
            pgha_api::tls::sha256_hex(presented.as_bytes()),
        ),
        None => (stored.to_string(), presented.to_string()),
    };
    !want.is_empty()
        && want.len() == got.len()
        && want
            .bytes()
            .zip(got.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Who a formation admits, from its last good spec and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmissionRule<'a> {
    /// `admission.open: true`: anyone who reaches the monitor.
    Open,
    /// Only requests presenting this secret (as the store keeps it: see
    /// [`join_secret_matches`]).
    Secret(&'a str),
    /// Nothing usable is in force (no accepted file, or its secret was never read):
    /// nobody is admitted.
    Closed,
}

impl FormationRecord {
    pub fn new(name: &str, dbname: &str) -> Self {
        FormationRecord {
            name: name.to_string(),
            dbname: dbname.to_string(),
            // Made at the first registration (which can fail with the reason).
            replication_password: String::new(),
            desired: FormationDesired::default(),
            intent: FormationIntent::default(),
            observed: FormationObserved::default(),
            nodes: BTreeMap::new(),
        }
    }

    pub fn term(&self) -> u64 {
        self.intent.term
    }

    pub fn spec(&self) -> Option<&FormationSpec> {
        self.desired.spec.as_ref()
    }

    pub fn admission(&self) -> AdmissionRule<'_> {
        match (&self.desired.spec, &self.desired.join_secret) {
            (Some(spec), _) if spec.admission.open => AdmissionRule::Open,
            (_, Some(s)) if !s.is_empty() => AdmissionRule::Secret(s),
            _ => AdmissionRule::Closed,
        }
    }

    /// The file's entry for a node, if the file declares it.
    pub fn declared(&self, node_name: &str) -> Option<&NodeSpec> {
        self.spec()?.nodes.iter().find(|d| d.name == node_name)
    }

    pub fn number_sync_standbys(&self) -> u32 {
        self.spec().map_or(0, |s| s.number_sync_standbys)
    }

    pub fn timings(&self) -> Timings {
        match self.spec() {
            Some(s) => Timings {
                report_interval_ms: s.timings.report_interval_ms,
                failure_timeout_ms: s.timings.failure_timeout_ms,
                lease_ms: s.timings.lease_ms,
                ..Timings::default()
            },
            None => Timings::default(),
        }
    }

    /// The node's candidate priority: the file's when it declares the node, else the
    /// registration's.
    pub fn candidate_priority(&self, n: &NodeRecord) -> u8 {
        self.declared(&n.name)
            .map_or(n.desired.candidate_priority, |d| {
                d.candidate_priority.min(100) as u8
            })
    }

    /// Whether the file keeps the node out of read load balancing.
    pub fn no_load_balance(&self, n: &NodeRecord) -> bool {
        self.declared(&n.name).is_some_and(|d| d.no_load_balance)
    }

    /// The node this one streams from while that node is a healthy secondary (the
    /// file's `replicateFrom`).
    pub fn replicate_from(&self, n: &NodeRecord) -> Option<NodeId> {
        let up = self.declared(&n.name)?.replicate_from.as_deref()?;
        self.nodes.values().find(|m| m.name == up).map(|m| m.id)
    }

    /// The node's replication quorum: the file's when it declares the node, else the
    /// registration's; never for a cascading standby (`replicateFrom`).
    pub fn replication_quorum(&self, n: &NodeRecord) -> bool {
        self.declared(&n.name)
            .map_or(n.desired.replication_quorum, |d| {
                d.replication_quorum && d.replicate_from.is_none()
            })
    }

    /// Automatic failovers against the file's anti-flapping limit, at wall time `now`.
    pub fn flapping(&self, now_wall_ms: u64) -> crate::planner::Flapping {
        let limit = self
            .spec()
            .map(|s| s.anti_flapping.clone())
            .unwrap_or_default();
        let window_ms = limit.window_seconds.saturating_mul(1000);
        let recent: Vec<u64> = self
            .intent
            .failover_wall_ms
            .iter()
            .copied()
            .filter(|t| now_wall_ms.saturating_sub(*t) < window_ms)
            .collect();
        crate::planner::Flapping {
            max_failovers: limit.max_failovers,
            window_ms,
            recent: recent.len() as u32,
            next_allowed_in_ms: recent
                .iter()
                .min()
                .map(|oldest| (oldest + window_ms).saturating_sub(now_wall_ms))
                .unwrap_or(0),
        }
    }

    /// The source this formation follows as a standby formation: the file's
    /// `standbyOf`, unless an operator promoted the formation from that same source.
    pub fn standby_of(&self) -> Option<&pgha_api::formation::StandbyOf> {
        let file = self.spec()?.standby_of.as_ref()?;
        (self.desired.promoted_from.as_ref() != Some(file)).then_some(file)
    }

    /// Promoted by an operator while the file still says `standbyOf`.
    pub fn promoted_over_the_file(&self) -> bool {
        self.spec().and_then(|s| s.standby_of.as_ref()).is_some() && self.standby_of().is_none()
    }

    /// Paused by an operator or by the file.
    pub fn paused(&self) -> bool {
        self.desired.operator_paused || self.spec().is_some_and(|s| s.paused)
    }

    /// In maintenance by the operator or by the file.
    pub fn in_maintenance(&self, n: &NodeRecord) -> bool {
        n.desired.operator_maintenance || self.declared(&n.name).is_some_and(|d| d.maintenance)
    }

    /// Still wanted in the formation: not dropped, and declared by a file that admits
    /// declared nodes only.
    pub fn keeps(&self, n: &NodeRecord) -> bool {
        !n.desired.drop_requested
            && self
                .spec()
                .is_none_or(|s| !s.declared_nodes_only() || self.declared(&n.name).is_some())
    }

    /// The file's backup settings, as the agents apply them.
    pub fn backup(&self) -> Option<pgha_api::BackupSettings> {
        self.spec()
            .and_then(|s| s.backup.as_ref())
            .map(|b| b.settings(&self.name))
    }

    /// The file's permanent slots, by name.
    pub fn permanent_slots(&self) -> Vec<(String, pgha_api::formation::SlotSpec)> {
        self.spec()
            .map(|s| s.slots.clone().into_iter().collect())
            .unwrap_or_default()
    }

    /// The major the file declares (`spec.postgresql.version`).
    pub fn declared_major(&self) -> Option<pgha_api::PgMajor> {
        self.spec().and_then(|s| s.postgresql.version)
    }

    /// `maxSlotWalKeepSize` in force.
    pub fn max_slot_wal_keep_size(&self) -> String {
        self.spec()
            .and_then(|s| s.postgresql.max_slot_wal_keep_size.clone())
            .unwrap_or_else(|| pgha_api::DEFAULT_MAX_SLOT_WAL_KEEP_SIZE.to_string())
    }
}

/// 32 hex characters from the kernel's random source; an error (never a weak secret)
/// when it cannot be read.
pub fn random_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| std::io::Error::other(format!("reading /dev/urandom for a secret: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written before the split (one flat object per record) loads unchanged,
    /// and is written back in the same shape.
    #[test]
    fn records_written_before_the_split_load_unchanged() {
        let old = r#"{
          "next_node_id": 3,
          "formations": {
            "default": {
              "name": "default", "dbname": "appdb", "term": 4,
              "number_sync_standbys": 1,
              "timings": {"report_interval_ms": 1000, "failure_timeout_ms": 3000,
                          "lease_ms": 3000, "lease_margin_ms": 500, "restart_grace_ms": 5000},
              "replication_password": "pw",
              "nodes": {"1": {"id": 1, "name": "node_1", "host": "10.0.0.1", "port": 5432,
                              "goal": "primary", "reported": "primary",
                              "candidate_priority": 50, "replication_quorum": true,
                              "rebuild_epoch": 2}},
              "generation": 7, "source_file": "default.yaml",
              "data_loss_allowed_term": 3, "sync_floor_lsn": "0/3000060",
              "desired_primary_generation": 5
            }
          }
        }"#;
        let st: DurableState = serde_json::from_str(old).unwrap();
        let f = &st.formations["default"];
        assert_eq!(f.intent.term, 4);
        assert_eq!(f.intent.data_loss_allowed_term, Some(3));
        assert_eq!(f.intent.desired_primary_generation, 5);
        assert_eq!(f.desired.generation, 7);
        assert_eq!(f.observed.sync_floor_lsn.to_string(), "0/3000060");
        let n = &f.nodes[&1];
        assert_eq!(n.goal(), NodeState::Primary);
        assert_eq!(n.intent.rebuild_epoch, 2);
        assert_eq!(n.desired.candidate_priority, 50);
        let back: DurableState =
            serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back, st);
        let flat = serde_json::to_value(&st).unwrap();
        assert_eq!(flat["formations"]["default"]["term"], 4);
        assert_eq!(
            flat["formations"]["default"]["nodes"]["1"]["goal"],
            "primary"
        );
    }

    #[test]
    fn the_file_overrides_what_a_node_registered_with() {
        let spec: FormationSpec = serde_yaml_ng_spec(
            "numberSyncStandbys: 1\ntimings: {leaseMs: 9000}\nadmission: {open: true}\n\
             nodes: [{name: a, host: 10.0.0.1, candidatePriority: 0, replicationQuorum: false, maintenance: true}, {name: c, host: 10.0.0.3}, {name: d, host: 10.0.0.4}]",
        );
        let mut f = FormationRecord::new("x", "db");
        let node = |name: &str| {
            NodeRecord::registered(
                1,
                name.into(),
                "10.0.0.1".into(),
                5432,
                NodeDesired {
                    candidate_priority: 70,
                    replication_quorum: true,
                    operator_maintenance: false,
                    drop_requested: false,
                },
                NodeState::Init,
            )
        };
        assert_eq!(f.timings(), Timings::default());
        assert_eq!(f.candidate_priority(&node("a")), 70);
        f.desired.spec = Some(spec);
        assert_eq!(f.number_sync_standbys(), 1);
        assert_eq!(f.timings().lease_ms, 9000);
        assert_eq!(
            f.timings().restart_grace_ms,
            Timings::default().restart_grace_ms
        );
        assert_eq!(f.candidate_priority(&node("a")), 0);
        assert!(!f.replication_quorum(&node("a")));
        assert!(f.in_maintenance(&node("a")));
        assert_eq!(f.candidate_priority(&node("b")), 70);
        assert!(f.replication_quorum(&node("b")));
        assert!(!f.in_maintenance(&node("b")));
    }

    fn serde_yaml_ng_spec(spec: &str) -> FormationSpec {
        let text = format!(
            "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: x\nspec:\n  {}\n",
            spec.replace('\n', "\n  ")
        );
        pgha_api::validate::parse_formation("x.yaml", text.as_bytes())
            .unwrap()
            .spec
    }
}
