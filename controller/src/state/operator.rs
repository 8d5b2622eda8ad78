//! Registration and operator actions, the same way into the state as reports: each is
//! one method that checks and writes under the lock its caller holds, so nothing can
//! change between the check and the write. `http` only maps requests and errors.

use super::{
    ControllerState, FormationRecord, NodeRecord, NodeView, Principal, Rule, StoreError,
    decision_inputs, labels, planner,
};
use crate::admission;
pub use crate::admission::Refusal;
use crate::records::{AdmissionRule, NodeDesired, random_secret};
use pgha_api::routes::{self, ErrorCode};
use pgha_api::{
    ForcedFailoverRequest, ForcedFailoverStarted, RegisterRequest, RegisterResponse,
    SwitchoverStarted,
};
use std::net::IpAddr;

/// Why an action did not happen.
#[derive(Debug)]
pub enum ActionError {
    /// Refused by a rule: nothing changed.
    Refused(Refusal),
    /// The store refused the write: nothing of it is in force.
    Store(StoreError),
    /// Something that should not happen (a random source that cannot be read).
    Internal(String),
}

impl From<Refusal> for ActionError {
    fn from(r: Refusal) -> Self {
        ActionError::Refused(r)
    }
}

impl From<StoreError> for ActionError {
    fn from(e: StoreError) -> Self {
        ActionError::Store(e)
    }
}

/// What an operator asked of a node, for its event.
pub(super) struct Ask<'a> {
    pub(super) rule: Rule,
    pub(super) what: String,
    pub(super) actor: &'a str,
}

fn refused<T>(code: ErrorCode, message: String) -> Result<T, ActionError> {
    Err(ActionError::Refused(Refusal { code, message }))
}

pub fn unknown_formation(name: &str) -> ActionError {
    ActionError::Refused(Refusal {
        code: ErrorCode::UnknownFormation,
        message: format!("formation {name:?} does not exist on this monitor"),
    })
}

impl ControllerState {
    pub(super) fn formation(&self, name: &str) -> Result<&FormationRecord, ActionError> {
        self.durable
            .formations
            .get(name)
            .ok_or_else(|| unknown_formation(name))
    }

    fn node_named(&self, formation: &str, node: &str) -> Result<&NodeRecord, ActionError> {
        self.formation(formation)?
            .nodes
            .values()
            .find(|n| n.name == node)
            .ok_or_else(|| {
                ActionError::Refused(Refusal {
                    code: ErrorCode::UnknownNode,
                    message: format!("no node {node:?} in formation {formation:?}"),
                })
            })
    }

    /// Admits a node: the operator's credential, the formation's join secret, or nothing
    /// for a formation whose file says `admission: open: true`. It gets a new id, its
    /// first goal, the formation's replication password and its own credential (kept
    /// here only as a SHA-256). Nothing of a refused node is stored.
    pub fn register(
        &mut self,
        req: &RegisterRequest,
        principal: Option<&Principal>,
        peer: IpAddr,
        now_ms: u64,
    ) -> Result<RegisterResponse, ActionError> {
        // Not a name: refused before anything of it reaches an event or a log.
        if !pgha_api::validate::valid_identifier(&req.formation) {
            return Err(ActionError::Refused(Refusal {
                code: ErrorCode::InvalidName,
                message:
                    "formation: 1-63 lower-case letters, digits, '_' or '-', starting with a letter"
                        .into(),
            }));
        }
        let admission = self
            .durable
            .formations
            .get(&req.formation)
            .map(|f| f.admission());
        let admitted = match principal {
            Some(Principal::Operator) => true,
            Some(Principal::Joiner(f)) => *f == req.formation,
            None => matches!(admission, Some(AdmissionRule::Open)),
            Some(_) => false,
        };
        if !admitted {
            let f = &req.formation;
            let (code, message) = match (principal, admission) {
                (None, Some(AdmissionRule::Closed)) => (
                    ErrorCode::Unauthenticated,
                    format!(
                        "formation {f:?} has no join secret in force (its file names none that could be read, and it is not `admission: open: true`): only the operator's credential registers"
                    ),
                ),
                (None, _) => (
                    ErrorCode::Unauthenticated,
                    format!(
                        "registering into formation {f:?} needs its join secret (or the operator's credential): use the URL `pgha show uri --dir <monitor dir>` prints on the monitor VM"
                    ),
                ),
                (Some(p), _) => (
                    ErrorCode::Forbidden,
                    format!(
                        "the {} may not register nodes into formation {f:?}: that takes its join secret",
                        p.actor(self)
                    ),
                ),
            };
            return Err(self.refuse(code, message, Some(f), peer, routes::REGISTER, now_ms));
        }
        let actor =
            principal.map_or_else(|| "anyone (admission open)".to_string(), |p| p.actor(self));
        let f = self.formation(&req.formation)?;
        admission::admit_registration(f, req, peer)?;
        let view = self.view(&req.formation, now_ms);
        let major = view.as_ref().and_then(|v| v.wanted_major());
        admission::admit_major(&req.formation, req, major)?;
        let others: Vec<NodeView> = view.map(|v| v.nodes).unwrap_or_default();
        let goal = planner::initial_state(&others);
        // Made before anything changes, so a failure here leaves nothing half-done.
        let new_password = match f.replication_password.is_empty() {
            true => Some(random_secret().map_err(|e| ActionError::Internal(e.to_string()))?),
            false => None,
        };
        let token = random_secret().map_err(|e| ActionError::Internal(e.to_string()))?;
        let id = self.durable.next_node_id.max(1);
        self.durable.next_node_id = id + 1;
        let name = req.name.clone().unwrap_or_else(|| format!("node_{id}"));
        // What the node asked for; the file's entry, when there is one, overrides it.
        let rec = NodeRecord::registered(
            id,
            name.clone(),
            req.host.clone(),
            req.port,
            NodeDesired {
                candidate_priority: req.candidate_priority.min(100),
                replication_quorum: req.replication_quorum,
                operator_maintenance: false,
                drop_requested: false,
            },
            goal,
        );
        let rec = NodeRecord {
            credential: Some(pgha_api::tls::sha256_hex(token.as_bytes())),
            ..rec
        };
        let Some(f) = self.durable.formations.get_mut(&req.formation) else {
            return Err(unknown_formation(&req.formation));
        };
        if f.nodes.is_empty() {
            f.dbname = req.dbname.clone();
        }
        if let Some(p) = new_password {
            f.replication_password = p;
        }
        let replication_password = f.replication_password.clone();
        f.nodes.insert(id, rec.clone());
        self.save()?;
        self.record_by(
            &req.formation,
            Some(&rec),
            Rule::Register,
            format!(
                "registered {name} ({}:{}) as node {id}, assigned {goal}",
                req.host, req.port
            ),
            actor,
            now_ms,
        )?;
        Ok(RegisterResponse {
            node_id: id,
            name,
            formation: req.formation.clone(),
            assigned_state: goal,
            replication_password,
            node_token: token,
            major,
        })
    }

    /// Refused while the formation is paused: it keeps its roles until it resumes.
    fn refuse_if_paused(&self, formation: &str, what: &str) -> Result<(), ActionError> {
        if self.formation(formation)?.paused() {
            return refused(
                ErrorCode::Paused,
                format!("formation {formation:?} is paused: no {what} until `pgha resume`"),
            );
        }
        Ok(())
    }

    /// The formation's replication password (made when its first node joins, or taken
    /// from `standbyOf.passwordFile`).
    /// [`Self::replication_password`] for `actor` at `peer`, recorded as an event (the
    /// password never is): who read a credential is an audit question.
    pub fn read_replication_password(
        &mut self,
        formation: &str,
        actor: String,
        peer: IpAddr,
        now_ms: u64,
    ) -> Result<String, ActionError> {
        let password = self.replication_password(formation)?;
        self.record_by(
            formation,
            None,
            Rule::ReplicationPasswordRead,
            format!("the replication password of formation {formation} was read"),
            format!("{actor} from address {peer}"),
            now_ms,
        )?;
        Ok(password)
    }

    pub fn replication_password(&self, formation: &str) -> Result<String, ActionError> {
        let Some(f) = self.durable.formations.get(formation) else {
            return Err(unknown_formation(formation));
        };
        if f.replication_password.is_empty() {
            return refused(
                ErrorCode::NotFound,
                format!(
                    "formation {formation:?} has no replication password yet: no node joined it"
                ),
            );
        }
        Ok(f.replication_password.clone())
    }

    /// `pgha formation promote`: the standby formation stops following its source and
    /// its leader becomes writable, although its file still says `standbyOf` (the
    /// operator removes it from the file next; `show state` says so meanwhile).
    pub fn promote_formation(
        &mut self,
        formation: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<pgha_api::formation::StandbyOf, ActionError> {
        self.formation(formation)?;
        let Some(f) = self.durable.formations.get_mut(formation) else {
            return Err(unknown_formation(formation));
        };
        let Some(from) = f.standby_of().cloned() else {
            return refused(
                ErrorCode::NotAStandbyFormation,
                format!(
                    "formation {formation:?} is not a standby formation (its file has no standbyOf, or it was promoted already)"
                ),
            );
        };
        f.desired.promoted_from = Some(from.clone());
        self.save()?;
        let what = format!(
            "operator promoted standby formation {formation:?}: it no longer follows {} and its leader becomes writable; remove standbyOf from its file",
            from.hosts.join(",")
        );
        self.record_by(
            formation,
            None,
            Rule::OperatorPromoteFormation,
            what,
            actor.to_string(),
            now_ms,
        )?;
        Ok(from)
    }

    /// `pgha pause` (on) or `pgha resume` (off). A formation the file pauses stays
    /// paused until the file says otherwise.
    pub fn set_paused(
        &mut self,
        formation: &str,
        on: bool,
        actor: &str,
        now_ms: u64,
    ) -> Result<bool, ActionError> {
        self.formation(formation)?;
        let Some(f) = self.durable.formations.get_mut(formation) else {
            return Err(unknown_formation(formation));
        };
        f.desired.operator_paused = on;
        let by_file = f.spec().is_some_and(|s| s.paused);
        let paused = f.paused();
        self.save()?;
        let what = match (on, by_file) {
            (true, _) => {
                "operator paused the formation: nothing is assigned or failed over until it resumes"
                    .to_string()
            }
            (false, false) => "operator resumed the formation".to_string(),
            (false, true) => {
                "operator resumed the formation, but its file says paused: it stays paused"
                    .to_string()
            }
        };
        self.record_by(
            formation,
            None,
            Rule::OperatorPause,
            what,
            actor.to_string(),
            now_ms,
        )?;
        Ok(paused)
    }

    /// `pgha perform switchover` (no target) or `pgha perform promotion` (a target).
    pub fn switchover(
        &mut self,
        formation: &str,
        target: Option<&str>,
        actor: &str,
        now_ms: u64,
    ) -> Result<SwitchoverStarted, ActionError> {
        self.refuse_if_paused(formation, "switchover")?;
        let view = self
            .view(formation, now_ms)
            .ok_or_else(|| unknown_formation(formation))?;
        let (plan, from, to) = match planner::plan_switchover_to(&view, target) {
            Ok(x) => x,
            Err(why) => {
                let l = labels(&[("formation", formation), ("result", "refused")]);
                self.metrics.switchovers.get_or_create(&l).inc();
                return refused(ErrorCode::SwitchoverRefused, why);
            }
        };
        self.record_by(
            formation,
            None,
            Rule::OperatorSwitchover,
            match target {
                Some(t) => format!("operator asked to promote {t} (node {from} -> node {to})"),
                None => format!("operator asked for a switchover (node {from} -> node {to})"),
            },
            actor.to_string(),
            now_ms,
        )?;
        self.apply_plan(&view, &plan, now_ms)?;
        Ok(SwitchoverStarted {
            from_node: from,
            to_node: to,
            term: self.durable.formations[formation].term(),
        })
    }

    /// `pgha perform failover --allow-data-loss --reason R`.
    pub fn forced_failover(
        &mut self,
        formation: &str,
        req: &ForcedFailoverRequest,
        actor: &str,
        now_ms: u64,
    ) -> Result<ForcedFailoverStarted, ActionError> {
        if !req.allow_data_loss {
            return refused(
                ErrorCode::AllowDataLossRequired,
                "failover without data loss runs by itself; a forced failover must say allow_data_loss".into(),
            );
        }
        if req.reason.trim().is_empty() {
            return refused(
                ErrorCode::ReasonRequired,
                "a forced failover needs the operator's reason (it is recorded as an event)".into(),
            );
        }
        self.refuse_if_paused(formation, "failover")?;
        let view = self
            .view(formation, now_ms)
            .ok_or_else(|| unknown_formation(formation))?;
        let (plan, term) = match planner::plan_forced_failover(&view) {
            Ok(x) => x,
            Err(why) => return refused(ErrorCode::FailoverRefused, why),
        };
        self.allow_data_loss(formation, term);
        let mut ev = self.event(
            formation,
            None,
            Rule::OperatorFailoverAllowDataLoss,
            format!(
                "operator forced a failover that may lose acknowledged commits (term {term}): {}",
                req.reason.trim()
            ),
            now_ms,
        );
        ev.inputs = Some(decision_inputs(&view));
        ev.actor = Some(actor.to_string());
        // Persists the override (and the plan's term and goals, if any) before the
        // event says it happened.
        self.save()?;
        self.record(ev)?;
        self.apply_plan(&view, &plan, now_ms)?;
        let to_node = plan
            .decisions
            .iter()
            .find(|d| d.goal.is_standby())
            .map(|d| d.node_id);
        Ok(ForcedFailoverStarted { term, to_node })
    }

    /// `pgha enable|disable maintenance`. The primary goes into maintenance only with
    /// `allow_failover`, and only when a switchover could hand over now: a flag left
    /// waiting would take the primary out of service whenever a candidate shows up later.
    pub fn set_maintenance(
        &mut self,
        formation: &str,
        node: &str,
        on: bool,
        allow_failover: bool,
        actor: &str,
        now_ms: u64,
    ) -> Result<(), ActionError> {
        let is_primary = self.node_named(formation, node)?.goal().is_writable();
        if on && is_primary {
            if !allow_failover {
                return refused(
                    ErrorCode::NeedsAllowFailover,
                    format!(
                        "{node} is the primary: maintenance hands over first; pass --allow-failover"
                    ),
                );
            }
            let view = self
                .view(formation, now_ms)
                .ok_or_else(|| unknown_formation(formation))?;
            if let Err(why) = planner::plan_switchover(&view) {
                return refused(
                    ErrorCode::NoCandidate,
                    format!("{node} is the primary and cannot hand over: {why}"),
                );
            }
        }
        let what = match on {
            true => format!("operator asked for maintenance of {node}"),
            false => format!("operator ended the maintenance of {node}"),
        };
        let ask = Ask {
            rule: Rule::OperatorMaintenance,
            what,
            actor,
        };
        self.change_node(formation, node, ask, now_ms, |n| {
            n.desired.operator_maintenance = on
        })
    }

    /// `pgha reinit --name N`: the standby moves its data aside and takes a fresh base
    /// backup (pg_rewind cannot repair damaged data). Not the primary: switch over first.
    pub fn reinit(
        &mut self,
        formation: &str,
        node: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<(), ActionError> {
        self.refuse_if_paused(formation, "reinit")?;
        let n = self.node_named(formation, node)?;
        if n.goal().is_writable() {
            return refused(
                ErrorCode::NotAStandby,
                format!(
                    "{node} is the primary: switch over first (`pgha perform promotion` of another node), then reinit it"
                ),
            );
        }
        let ask = Ask {
            rule: Rule::OperatorReinit,
            what: format!("operator asked to rebuild {node} from a fresh base backup"),
            actor,
        };
        self.change_node(formation, node, ask, now_ms, |n| {
            n.intent.rebuild_epoch += 1
        })
    }

    /// `pgha restart --name N`: the node restarts its Postgres (for a setting the file
    /// does not carry, or a stuck process). A primary with standbys is refused: it
    /// would stop writes; switch over first (a lone primary restarts in place).
    pub fn restart(
        &mut self,
        formation: &str,
        node: &str,
        at_ms: Option<u64>,
        actor: &str,
        now_ms: u64,
    ) -> Result<(), ActionError> {
        self.refuse_if_paused(formation, "restart")?;
        self.refuse_restart_of_primary(formation, node)?;
        let at = at_ms.filter(|at| *at > now_ms);
        let what = match at {
            Some(at) => {
                format!("operator scheduled a restart of the Postgres of {node} at {at} (unix ms)")
            }
            None => format!("operator asked to restart the Postgres of {node}"),
        };
        let ask = Ask {
            rule: Rule::OperatorRestart,
            what,
            actor,
        };
        self.change_node(formation, node, ask, now_ms, |n| match at {
            Some(at) => n.intent.restart_at_ms = Some(at),
            None => {
                n.intent.restart_at_ms = None;
                n.intent.restart_epoch += 1
            }
        })
    }

    /// A primary with standbys is not restarted: it would stop writes.
    fn refuse_restart_of_primary(&self, formation: &str, node: &str) -> Result<(), ActionError> {
        let has_peers = self.formation(formation)?.nodes.len() > 1;
        let n = self.node_named(formation, node)?;
        if n.goal().is_writable() && has_peers {
            return refused(
                ErrorCode::NotAStandby,
                format!(
                    "{node} is the primary: its restart would stop writes; switch over first (`pgha perform promotion` of another node)"
                ),
            );
        }
        Ok(())
    }

    /// Restarts scheduled by `pgha restart --scheduled` whose time came: asked of the
    /// node now (or skipped, with an event, when it became the primary meanwhile).
    pub fn take_scheduled_restarts(
        &mut self,
        formation: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(f) = self.durable.formations.get(formation) else {
            return Ok(());
        };
        let due: Vec<String> = f
            .nodes
            .values()
            .filter(|n| n.intent.restart_at_ms.is_some_and(|t| t <= now_ms))
            .map(|n| n.name.clone())
            .collect();
        for node in due {
            let refusal = match self.refuse_restart_of_primary(formation, &node) {
                Ok(()) => None,
                Err(ActionError::Refused(r)) => Some(r.message),
                Err(_) => Some("the node is gone".to_string()),
            };
            let what = match &refusal {
                None => format!("scheduled restart of the Postgres of {node}"),
                Some(why) => format!("scheduled restart of {node} skipped: {why}"),
            };
            let ask = Ask {
                rule: Rule::OperatorRestart,
                what,
                actor: "schedule",
            };
            let go = refusal.is_none();
            let res = self.change_node(formation, &node, ask, now_ms, |n| {
                n.intent.restart_at_ms = None;
                if go {
                    n.intent.restart_epoch += 1;
                }
            });
            match res {
                Ok(()) | Err(ActionError::Refused(_)) => {}
                Err(ActionError::Store(e)) => return Err(e),
                Err(ActionError::Internal(e)) => tracing::error!("scheduled restart: {e}"),
            }
        }
        Ok(())
    }

    /// `pgha drop node`: the planner takes it out of the formation.
    pub fn drop_node(
        &mut self,
        formation: &str,
        node: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<(), ActionError> {
        let what = format!("operator asked to drop {node}");
        let ask = Ask {
            rule: Rule::OperatorDrop,
            what,
            actor,
        };
        self.change_node(formation, node, ask, now_ms, |n| {
            n.desired.drop_requested = true
        })
    }

    /// Changes what an operator asked of a node (a flag, an epoch to act on), saves, and
    /// records what was asked and by whom.
    pub(super) fn change_node(
        &mut self,
        formation: &str,
        node: &str,
        ask: Ask<'_>,
        now_ms: u64,
        change: impl FnOnce(&mut NodeRecord),
    ) -> Result<(), ActionError> {
        let id = self.node_named(formation, node)?.id;
        let Some(n) = self
            .durable
            .formations
            .get_mut(formation)
            .and_then(|f| f.nodes.get_mut(&id))
        else {
            return Err(unknown_formation(formation));
        };
        change(n);
        let rec = n.clone();
        self.save()?;
        self.record_by(
            formation,
            Some(&rec),
            ask.rule,
            ask.what,
            ask.actor.to_string(),
            now_ms,
        )?;
        Ok(())
    }
}
