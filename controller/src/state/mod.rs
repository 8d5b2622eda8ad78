//! The controller's live state: the durable records plus what agents and probes observed,
//! and the one way everything changes it. Every change (a report, a file scan, an
//! operator action, a registration) is a `ControllerState` method that checks and
//! writes under the one lock the caller holds, then saves before it returns (or stages
//! the change, and the answer waits until it is stored: [`commit`]):
//!
//! - [`commit`]: how the durable records reach the store, and when an answer may go;
//! - [`reconcile`]: reports in, the planner over one view, the plan applied;
//! - [`operator`]: registration and operator actions (switchover, forced failover,
//!   maintenance, drop), refused with a typed [`Refusal`];
//! - [`gitops`]: the formation files' desired state;
//! - [`read`]: read models (planner view, assignment, status);
//! - [`promotion`]: failover and switchover metrics.

mod auth;
mod backup;
mod commit;
mod gitops;
mod operator;
mod promotion;
mod read;
mod reconcile;
#[cfg(test)]
mod tests;

pub use auth::Principal;
pub use commit::{Commit, Ticket};
pub use operator::{ActionError, Refusal, unknown_formation};
pub use promotion::PromotionTrack;
pub use read::decision_inputs;

use crate::metrics::{Metrics, labels};
use crate::planner::{self, BlockReason, FormationView, NodeView, Plan};
use crate::records::{DurableState, FormationRecord, NodeRecord};
use crate::rule::Rule;
use crate::store::{Store, StoreError};
use pgha_api::{Event, NodeId, PgObservation};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// How many events are kept in memory for `show events` (all are on disk).
pub const EVENTS_IN_MEMORY: usize = 10_000;

/// What the controller observed of one node since it started (not persisted: after a
/// restart the controller waits for fresh reports, docs/src/design.md §5 rule 5).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub last_report_ms: Option<u64>,
    pub pg: PgObservation,
    pub fenced: bool,
    pub last_error: Option<String>,
    pub pg_down_since_ms: Option<u64>,
    pub upstream_lost_at_ms: Option<u64>,
    /// Where the node streamed from, in controller time.
    pub streamed_from_at: Option<planner::StreamLog>,
    pub last_probe: Option<(u64, bool)>,
    pub last_probe_ok_ms: Option<u64>,
    pub applied_generation: u64,
    pub auth_method: Option<String>,
    pub rebuilt_epoch: u64,
    pub restarted_epoch: u64,
    /// The term whose promotion of the node its pre-promote hook refused.
    pub promotion_refused_term: Option<u64>,
    /// The node's last backup job, and the repository's backups as it last read them.
    pub backup_job: Option<pgha_api::BackupJob>,
    pub backups: Option<Vec<pgha_api::BackupInfo>>,
    /// The state the node last reported, and when its LSN or that state last changed.
    pub reported: Option<pgha_api::NodeState>,
    pub progress_at_ms: Option<u64>,
    /// A cap on the LSN the node claims, and the timeline it was claimed on: set when a
    /// candidate streaming from it received nothing of its claim (the planner's
    /// `capped_claims`); lifted when it reports an LSN at or below the cap or another
    /// timeline. Not persisted: a restarted controller finds a false claim again.
    pub claim_cap: Option<(pgha_api::Lsn, Option<u32>)>,
}

pub struct ControllerState {
    /// The durable records in force. Changed only under the lock and followed by
    /// [`ControllerState::save`] before the lock is released; nothing is published (no
    /// term, goal or node id) that the store does not hold (see [`commit`]).
    pub durable: DurableState,
    /// What the store last confirmed.
    saved: DurableState,
    pub observed: HashMap<NodeId, Observed>,
    pub events: VecDeque<Event>,
    pub next_event_id: u64,
    pub waiting: HashMap<String, Option<String>>,
    pub started_ms: u64,
    pub metrics: Metrics,
    /// Why a needed failover is not happening, per formation.
    pub blocked: HashMap<String, Option<BlockReason>>,
    pub promotions: HashMap<String, PromotionTrack>,
    /// Reports refused for coming from an address that may not speak for the node
    /// (recorded once each as an event).
    pub refused_peers: std::collections::HashSet<(NodeId, std::net::IpAddr)>,
    /// Errors of each rejected formation file, as last reported.
    pub config_errors: BTreeMap<String, Vec<String>>,
    /// The operator's and the read-only credential (their SHA-256).
    pub credentials: crate::credentials::MonitorCredentials,
    /// When each refusal (address, route, answer) was last recorded as an event.
    refusals_recorded: HashMap<(std::net::IpAddr, String, pgha_api::routes::ErrorCode), u64>,
    /// Refusal events recorded this minute, from every address (`auth::RefusalBudget`).
    refusal_budget: auth::RefusalBudget,
    /// This controller's URL while it leads a group on a shared store (None alone).
    pub leader_url: Option<String>,
    /// When the schedule last asked each formation's primary for a backup.
    scheduled_backup_at: HashMap<String, u64>,
    commit: Commit,
}

impl ControllerState {
    pub fn open(store: Box<dyn Store>, started_ms: u64) -> Result<Self, StoreError> {
        let durable = store.load()?;
        let all: Vec<Event> = store.load_events()?;
        let next_event_id = all.last().map(|e| e.id + 1).unwrap_or(1);
        let skip = all.len().saturating_sub(EVENTS_IN_MEMORY);
        let commit = Commit::new(store, &durable);
        Ok(ControllerState {
            saved: durable.clone(),
            durable,
            observed: HashMap::new(),
            events: all.into_iter().skip(skip).collect(),
            next_event_id,
            waiting: HashMap::new(),
            started_ms,
            metrics: Metrics::default(),
            blocked: HashMap::new(),
            promotions: HashMap::new(),
            config_errors: BTreeMap::new(),
            refused_peers: Default::default(),
            credentials: Default::default(),
            refusals_recorded: HashMap::new(),
            refusal_budget: Default::default(),
            leader_url: None,
            scheduled_backup_at: HashMap::new(),
            commit,
        })
    }

    /// Records an event durably and in memory.
    pub fn record(&mut self, ev: Event) -> Result<(), StoreError> {
        self.record_all(vec![ev])
    }

    /// An event, stamped with wall time (`_now_ms` is the planner's monotonic now: events
    /// are read beside logs, durations never use their stamp).
    pub fn event(
        &self,
        formation: &str,
        node: Option<&NodeRecord>,
        rule: Rule,
        description: String,
        _now_ms: u64,
    ) -> Event {
        Event {
            id: 0,
            // Events are read beside logs: wall time (durations never use it).
            time_ms: crate::clock::wall_ms(),
            formation: formation.to_string(),
            node_id: node.map(|n| n.id),
            node_name: node.map(|n| n.name.clone()),
            reported_state: node.map(|n| n.reported()),
            assigned_state: node.map(|n| n.goal()),
            rule: rule.as_str().to_string(),
            description,
            inputs: None,
            actor: None,
        }
    }

    /// Records an event that `actor` caused (the operator, a node, an address).
    pub fn record_by(
        &mut self,
        formation: &str,
        node: Option<&NodeRecord>,
        rule: Rule,
        description: String,
        actor: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut ev = self.event(formation, node, rule, description, now_ms);
        ev.actor = Some(actor);
        self.record(ev)
    }

    pub fn formation_of(&self, node_id: NodeId) -> Option<&FormationRecord> {
        self.durable
            .formations
            .values()
            .find(|f| f.nodes.contains_key(&node_id))
    }
}

/// Runs blocking store I/O (an fsync can take long on a busy disk) without holding up
/// an async worker: on a multi-threaded runtime the worker's other tasks move elsewhere
/// meanwhile (`block_in_place`); outside a runtime, or on a current-thread one, it just
/// runs.
pub fn off_async_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
