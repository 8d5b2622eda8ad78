//! Who is calling, and whether they may: every request's bearer token is matched to one
//! principal (the operator, the read-only credential, a formation's join secret, a
//! node's own credential), and each route's [`Access`] says which principals pass.
//! Refusals are answered 401 (no or unknown credential) or 403 (a known credential
//! whose scope does not cover the call), counted, and recorded as an event (once a
//! minute per address, route and answer, so a flood cannot fill the event log).

use super::operator::ActionError;
use super::{ControllerState, Refusal, Rule, labels};
use crate::admission;
use crate::records::AdmissionRule;
use pgha_api::NodeId;
use pgha_api::routes::{Access, ErrorCode};
use std::net::IpAddr;

/// How often the same refusal (address, route, answer) is recorded as an event.
const REFUSAL_EVENT_EVERY_MS: u64 = 60_000;

/// Refusal events recorded per minute from every address together: past it, refusals
/// are only counted (`pgha_api_refused_total`), and one event says how many were not
/// recorded. Many addresses (or a spoofing network) cannot rotate the audit trail away.
const REFUSAL_EVENTS_PER_MINUTE: u32 = 30;

/// Addresses remembered for [`REFUSAL_EVENT_EVERY_MS`] before old ones are pruned.
const REFUSALS_REMEMBERED: usize = 4096;

/// The longest text an event keeps of a refusal (it may quote what a client sent).
pub const EVENT_TEXT_MAX: usize = 512;

/// `s` cut to at most `max` bytes (on a character boundary) with control characters
/// escaped: what a client sent never writes a line of its own into a log or a table.
pub fn event_text(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let piece = if c.is_control() {
            c.escape_default().to_string()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// The budget of refusal events: those recorded in the current minute, and those not.
#[derive(Debug, Default)]
pub struct RefusalBudget {
    minute_start_ms: u64,
    recorded: u32,
    skipped: u64,
}

/// Who a request speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator's credential: every action, every formation.
    Operator,
    /// The read-only credential.
    Reader,
    /// A formation's join secret: registration into that formation only.
    Joiner(String),
    /// A node's own credential: its reports, and reads of its formation.
    Node { id: NodeId, formation: String },
}

impl Principal {
    /// Who, as events name them.
    pub fn actor(&self, st: &ControllerState) -> String {
        match self {
            Principal::Operator => "operator".into(),
            Principal::Reader => "read credential".into(),
            Principal::Joiner(f) => format!("join secret of {f}"),
            Principal::Node { id, formation } => {
                let name = st
                    .durable
                    .formations
                    .get(formation)
                    .and_then(|f| f.nodes.get(id))
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| format!("node {id}"));
                format!("node {name}")
            }
        }
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl ControllerState {
    /// The principal a presented token stands for, if any.
    pub fn identify(&self, presented: &str) -> Option<Principal> {
        if presented.is_empty() {
            return None;
        }
        let hash = pgha_api::tls::sha256_hex(presented.as_bytes());
        let is = |h: &Option<String>| h.as_deref().is_some_and(|h| same(h, &hash));
        if is(&self.credentials.operator) {
            return Some(Principal::Operator);
        }
        if is(&self.credentials.read) {
            return Some(Principal::Reader);
        }
        for f in self.durable.formations.values() {
            if let Some(n) = f.nodes.values().find(|n| is(&n.credential)) {
                return Some(Principal::Node {
                    id: n.id,
                    formation: f.name.clone(),
                });
            }
        }
        self.durable
            .formations
            .values()
            .find(|f| {
                matches!(f.admission(), AdmissionRule::Secret(s)
                    if crate::records::join_secret_matches(s, presented))
            })
            .map(|f| Principal::Joiner(f.name.clone()))
    }

    /// Checks a request against its route's access: returns its principal (None only
    /// where the handler decides: registration into an open formation), or the refusal,
    /// recorded. `formation` is the one the path names, if any.
    pub fn authenticate(
        &mut self,
        access: Access,
        presented: Option<&str>,
        formation: Option<&str>,
        peer: IpAddr,
        route: &str,
        now_ms: u64,
    ) -> Result<Option<Principal>, ActionError> {
        if access == Access::Public {
            return Ok(None);
        }
        let principal = match presented {
            Some(p) => match self.identify(p) {
                Some(x) => Some(x),
                None => {
                    return Err(self.refuse(
                        ErrorCode::Unauthenticated,
                        "the credential presented is not one of this monitor's (a rotated join secret or credential?): use the URL `pgha show uri --dir` prints on the monitor VM".into(),
                        formation,
                        peer,
                        route,
                        now_ms,
                    ));
                }
            },
            None => None,
        };
        let allowed = match (&access, &principal) {
            // Registration and reports are decided with their body (formation, node).
            // Without a credential, only while some formation admits anyone: otherwise
            // refused here, before a byte of the body is read.
            (Access::Register | Access::Report, None) => self
                .durable
                .formations
                .values()
                .any(|f| f.admission() == crate::records::AdmissionRule::Open),
            (Access::Register | Access::Report, Some(_)) => true,
            (_, Some(Principal::Operator)) => true,
            (Access::Read, Some(Principal::Reader)) => true,
            // A node reads its own formation only: not the monitor's whole /metrics,
            // /v1/info or every formation's events.
            (Access::Read, Some(Principal::Node { formation: own, .. })) => {
                formation.is_some_and(|f| f == own)
            }
            _ => false,
        };
        if allowed {
            return Ok(principal);
        }
        let need = match access {
            Access::Operate => "the operator's credential",
            _ => "a read credential (or the operator's)",
        };
        Err(match principal {
            None => self.refuse(
                ErrorCode::Unauthenticated,
                format!("{route} needs {need}: use the URL `pgha show uri --dir` prints on the monitor VM"),
                formation,
                peer,
                route,
                now_ms,
            ),
            Some(p) => {
                let who = p.actor(self);
                self.refuse(
                    ErrorCode::Forbidden,
                    format!("{route} needs {need}; the {who} does not cover it"),
                    formation,
                    peer,
                    route,
                    now_ms,
                )
            }
        })
    }

    /// A refusal: counted, recorded as an event (at most once a minute per address,
    /// route and answer), and returned for the caller to answer with.
    pub fn refuse(
        &mut self,
        code: ErrorCode,
        message: String,
        formation: Option<&str>,
        peer: IpAddr,
        route: &str,
        now_ms: u64,
    ) -> ActionError {
        let status = if code == ErrorCode::Unauthenticated {
            "401"
        } else {
            "403"
        };
        self.metrics
            .api_refused
            .get_or_create(&labels(&[("route", route), ("status", status)]))
            .inc();
        // A formation that is not a name (a path segment or a body field of up to a few
        // hundred kilobytes) is not repeated into the event.
        let formation = formation.filter(|f| pgha_api::validate::valid_identifier(f));
        if self.refusals_recorded.len() > REFUSALS_REMEMBERED {
            self.refusals_recorded
                .retain(|_, t| now_ms.saturating_sub(*t) < REFUSAL_EVENT_EVERY_MS);
        }
        let key = (peer, route.to_string(), code);
        let last = self.refusals_recorded.get(&key).copied();
        if last.is_none_or(|t| now_ms.saturating_sub(t) >= REFUSAL_EVENT_EVERY_MS) {
            self.refusals_recorded.insert(key, now_ms);
            let b = &mut self.refusal_budget;
            let mut not_recorded = None;
            if now_ms.saturating_sub(b.minute_start_ms) >= 60_000 {
                not_recorded = (b.skipped > 0).then_some(b.skipped);
                *b = RefusalBudget {
                    minute_start_ms: now_ms,
                    ..Default::default()
                };
            }
            if b.recorded >= REFUSAL_EVENTS_PER_MINUTE {
                b.skipped += 1;
            } else {
                b.recorded += 1;
                let mut events = vec![];
                if let Some(n) = not_recorded {
                    events.push(self.event(
                        "-",
                        None,
                        Rule::AuthRefused,
                        format!(
                            "{n} more refusals in the last minute were not recorded (at most {REFUSAL_EVENTS_PER_MINUTE} a minute): see pgha_api_refused_total"
                        ),
                        now_ms,
                    ));
                }
                let mut ev = self.event(
                    formation.unwrap_or("-"),
                    None,
                    Rule::AuthRefused,
                    event_text(
                        &format!("{route} refused ({status}): {message}"),
                        EVENT_TEXT_MAX,
                    ),
                    now_ms,
                );
                ev.actor = Some(format!("address {peer}"));
                events.push(ev);
                for ev in events {
                    // A follower records nothing (its store refuses): the log line is all.
                    if let Err(e) = self.record(ev)
                        && !matches!(e, crate::store::StoreError::NotLeader)
                    {
                        tracing::error!("recording a refusal failed: {e}");
                    }
                }
            }
        }
        ActionError::Refused(Refusal { code, message })
    }

    /// Whether `principal`, calling from `peer`, may report for node `r.node_id`: only
    /// the node's own credential may (a node registered before nodes had one reports
    /// once with the join secret, the operator's credential, or nothing when admission
    /// is open, and is then given one: the answer is `true`), and only from an address
    /// that may speak for it. A refusal is counted and recorded as any other.
    pub(super) fn authorize_report(
        &mut self,
        r: &pgha_api::NodeReport,
        principal: Option<&Principal>,
        peer: IpAddr,
        now_ms: u64,
    ) -> Result<bool, ActionError> {
        let route = pgha_api::routes::REPORT;
        // Not a name: refused before anything of it reaches an event or a log.
        if !pgha_api::validate::valid_identifier(&r.formation) {
            return Err(ActionError::Refused(Refusal {
                code: ErrorCode::InvalidName,
                message: "the report's formation is not a formation name".into(),
            }));
        }
        let issue_credential = match principal {
            Some(Principal::Node { id, formation }) => {
                if *id != r.node_id || *formation != r.formation {
                    let who = principal.map(|p| p.actor(self)).unwrap_or_default();
                    return Err(self.refuse(
                        ErrorCode::Forbidden,
                        format!(
                            "the credential of {who} reports for that node only, not for node {} of formation {:?}",
                            r.node_id, r.formation
                        ),
                        Some(&r.formation),
                        peer,
                        route,
                        now_ms,
                    ));
                }
                false
            }
            // Only a node without a credential of its own may still report with its
            // formation's join secret (or the operator's, or none when admission is
            // open): once, to be given one.
            Some(Principal::Joiner(f)) if *f == r.formation => true,
            Some(Principal::Operator) => true,
            None => self
                .durable
                .formations
                .get(&r.formation)
                .is_some_and(|f| f.admission() == AdmissionRule::Open),
            Some(_) => false,
        };
        if issue_credential {
            if self.formation_of(r.node_id).map(|f| f.name.as_str()) != Some(r.formation.as_str()) {
                // An admitted agent with an id this store never issued (it was restored
                // from an older copy): that id is never handed out again.
                if r.node_id >= self.durable.next_node_id && self.formation_of(r.node_id).is_none()
                {
                    self.durable.next_node_id = r.node_id.saturating_add(1);
                    self.save()?;
                }
                return Err(ActionError::Refused(Refusal {
                    code: ErrorCode::UnknownNode,
                    message: format!(
                        "node {} is not registered in formation {:?} on this monitor",
                        r.node_id, r.formation
                    ),
                }));
            }
            let has_own = self
                .formation_of(r.node_id)
                .and_then(|f| f.nodes.get(&r.node_id))
                .is_some_and(|n| n.credential.is_some());
            if has_own {
                let code = match principal {
                    None => ErrorCode::Unauthenticated,
                    Some(_) => ErrorCode::Forbidden,
                };
                return Err(self.refuse(
                    code,
                    format!(
                        "node {} has a credential of its own: its reports must carry it",
                        r.node_id
                    ),
                    Some(&r.formation),
                    peer,
                    route,
                    now_ms,
                ));
            }
        } else if !matches!(principal, Some(Principal::Node { .. })) {
            let code = match principal {
                None => ErrorCode::Unauthenticated,
                Some(_) => ErrorCode::Forbidden,
            };
            return Err(self.refuse(
                code,
                "reports carry the node's own credential".into(),
                Some(&r.formation),
                peer,
                route,
                now_ms,
            ));
        }
        if let Some(f) = self.formation_of(r.node_id)
            && let Some(n) = f.nodes.get(&r.node_id)
            && let Some(host) = admission::declared_host(f, &n.name)
            && !admission::peer_may_speak_for(host, peer)
        {
            let (name, host) = (n.name.clone(), host.to_string());
            // One event per node and address, not one per second.
            if self.refused_peers.insert((r.node_id, peer)) {
                let ev = self.event(
                    &r.formation,
                    None,
                    Rule::ReportRefused,
                    format!("a report for {name} (declared at {host}) came from {peer}: refused"),
                    now_ms,
                );
                self.record(ev)?;
            }
            return Err(ActionError::Refused(Refusal {
                code: ErrorCode::AddressMismatch,
                message: format!(
                    "node {name} is declared at {host}; reports for it come from there only"
                ),
            }));
        }
        Ok(issue_credential)
    }

    /// A credential for a node registered before nodes had their own: stored (as its
    /// SHA-256) before it is handed out.
    pub(super) fn issue_node_credential(
        &mut self,
        formation: &str,
        node_id: NodeId,
        now_ms: u64,
    ) -> Result<String, ActionError> {
        let token =
            crate::records::random_secret().map_err(|e| ActionError::Internal(e.to_string()))?;
        let Some(n) = self
            .durable
            .formations
            .get_mut(formation)
            .and_then(|f| f.nodes.get_mut(&node_id))
        else {
            return Err(ActionError::Internal("node vanished".into()));
        };
        n.credential = Some(pgha_api::tls::sha256_hex(token.as_bytes()));
        let rec = n.clone();
        self.save()?;
        let ev = self.event(
            formation,
            Some(&rec),
            Rule::NodeCredentialIssued,
            format!(
                "{} registered before nodes had their own credential: it has one now, and its reports must carry it",
                rec.name
            ),
            now_ms,
        );
        self.record(ev)?;
        Ok(token)
    }
}
