//! Failover and switchover metrics follow the decisions of a promotion.

use super::{ControllerState, FormationView, Rule, labels, planner};
use pgha_api::NodeId;
use pgha_api::NodeState;

/// Why a failover happened: the `reason` label of the failover metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverReason {
    PrimaryFailed,
    /// `pgha perform failover --allow-data-loss`.
    OperatorAllowDataLoss,
}

impl FailoverReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverReason::PrimaryFailed => "primary_failed",
            FailoverReason::OperatorAllowDataLoss => "operator_allow_data_loss",
        }
    }
}

/// A promotion in progress, for the failover metrics.
#[derive(Debug, Clone)]
pub struct PromotionTrack {
    pub switchover: bool,
    /// Why, when it is a failover.
    pub reason: FailoverReason,
    pub candidate: NodeId,
    /// When the old primary was last heard from (failover) or the request came.
    pub failed_since_ms: u64,
    pub started_ms: u64,
    pub fenced_ms: Option<u64>,
}

impl ControllerState {
    /// Failover and switchover metrics follow the decisions of a promotion.
    pub(super) fn track_promotion(
        &mut self,
        view: &FormationView,
        d: &planner::Decision,
        allow_data_loss: bool,
        now_ms: u64,
    ) {
        let formation = view.name.as_str();
        let fl = |extra: &[(&str, &str)]| {
            let mut l = labels(&[("formation", formation)]);
            l.extend(labels(extra));
            l
        };
        match d.rule {
            Rule::FailoverPromote | Rule::SwitchoverPromote => {
                let switchover = d.rule == Rule::SwitchoverPromote;
                let reason = if allow_data_loss {
                    FailoverReason::OperatorAllowDataLoss
                } else {
                    FailoverReason::PrimaryFailed
                };
                // The old primary, as the planner saw it (draining, or still assigned
                // writable when this plan drains it).
                let old_last = view
                    .nodes
                    .iter()
                    .find(|n| n.goal == NodeState::Draining || n.goal.is_writable())
                    .and_then(|n| n.last_report_ms)
                    .unwrap_or(now_ms);
                if switchover {
                    self.metrics
                        .switchovers
                        .get_or_create(&fl(&[("result", "started")]))
                        .inc();
                } else {
                    let l = fl(&[("reason", reason.as_str()), ("result", "started")]);
                    self.metrics.failovers.get_or_create(&l).inc();
                }
                self.promotions.insert(
                    formation.to_string(),
                    PromotionTrack {
                        switchover,
                        reason,
                        candidate: d.node_id,
                        failed_since_ms: if switchover {
                            now_ms
                        } else {
                            old_last.min(now_ms)
                        },
                        started_ms: now_ms,
                        fenced_ms: None,
                    },
                );
            }
            Rule::StopReplicationToWaitPrimary => {
                if let Some(t) = self.promotions.get_mut(formation) {
                    t.fenced_ms = Some(now_ms);
                }
            }
            Rule::PromotionReelected if d.goal.is_standby() && d.goal != NodeState::Secondary => {
                if let Some(t) = self.promotions.get_mut(formation) {
                    t.candidate = d.node_id;
                }
            }
            Rule::PromotionAborted => {
                if let Some(t) = self.promotions.remove(formation) {
                    if t.switchover {
                        let l = fl(&[("result", "aborted")]);
                        self.metrics.switchovers.get_or_create(&l).inc();
                    } else {
                        let l = fl(&[("reason", t.reason.as_str()), ("result", "aborted")]);
                        self.metrics.failovers.get_or_create(&l).inc();
                    }
                }
            }
            _ => {}
        }
    }

    /// A promoted node reported writable: the promotion is done.
    pub(super) fn finish_promotion(&mut self, formation: &str, node: NodeId, now_ms: u64) {
        if self.promotions.get(formation).map(|t| t.candidate) != Some(node) {
            return;
        }
        let Some(t) = self.promotions.remove(formation) else {
            return;
        };
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
        let fl = labels(&[("formation", formation)]);
        let with = |extra: &[(&str, &str)]| {
            let mut l = fl.clone();
            l.extend(labels(extra));
            l
        };
        if t.switchover {
            let l = with(&[("result", "succeeded")]);
            self.metrics.switchovers.get_or_create(&l).inc();
            return;
        }
        let l = with(&[("reason", t.reason.as_str()), ("result", "succeeded")]);
        self.metrics.failovers.get_or_create(&l).inc();
        self.metrics
            .failover_duration
            .get_or_create(&fl)
            .observe(secs(t.started_ms, now_ms));
        let fenced = t.fenced_ms.unwrap_or(now_ms);
        for (phase, a, b) in [
            ("detection", t.failed_since_ms, t.started_ms),
            ("fencing", t.started_ms, fenced),
            ("promotion", fenced, now_ms),
        ] {
            let l = with(&[("phase", phase)]);
            self.metrics
                .failover_phase
                .get_or_create(&l)
                .observe(secs(a, b));
        }
    }
}
