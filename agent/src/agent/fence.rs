//! The primary's lease on this node: when it has run out (fence), and the deadline the
//! watchdog enforces while the loop is busy in a step.

use super::Agent;
use crate::plan;
use pgha_api::NodeState;
use std::time::Duration;

impl Agent {
    /// Lease left before this node fences itself, for writable nodes with peers.
    pub(super) fn lease_remaining_ms(&self) -> Option<u64> {
        let goal = self.effective_goal();
        let a = self.state.assignment.as_ref();
        let has_peers = a.is_some_and(|a| !a.peers.is_empty());
        let standby_leader = a.is_some_and(|a| a.standby_of.is_some());
        if !plan::holds_lease(goal, has_peers, standby_leader) {
            return None;
        }
        let since = self
            .last_controller_contact
            .elapsed()
            .min(self.lease.last_standby_seen.elapsed())
            .as_millis() as u64;
        Some(self.timings().lease_ms.saturating_sub(since))
    }

    /// Hands the watchdog the lease's current deadline (none when this node holds no
    /// lease: not writable, no peers, or already fenced).
    pub(super) fn arm_watchdog(&self) {
        let deadline = match self.lease_remaining_ms() {
            Some(ms) if !self.state.fenced => {
                Some(tokio::time::Instant::now() + Duration::from_millis(ms))
            }
            _ => None,
        };
        self.watchdog.arm(deadline);
    }

    pub(super) fn check_lease(&mut self, goal: NodeState) -> anyhow::Result<()> {
        let a = self.state.assignment.as_ref();
        let has_peers = a.is_some_and(|a| !a.peers.is_empty());
        // A standby formation's leader is read-only: nothing to fence.
        let standby_leader = a.is_some_and(|a| a.standby_of.is_some());
        let fired = self.watchdog.take_fired();
        if standby_leader {
            return Ok(());
        }
        if fired && !self.state.fenced {
            self.state.fenced = true;
            self.state.save(&self.cfg)?;
        }
        if self.state.fenced || !has_peers {
            return Ok(());
        }
        let lease = self.timings().lease_ms;
        let since_ctl = self.last_controller_contact.elapsed().as_millis() as u64;
        let since_sb = self.lease.last_standby_seen.elapsed().as_millis() as u64;
        if plan::should_fence(goal, since_ctl, since_sb, lease) {
            tracing::warn!(
                since_controller_ms = since_ctl,
                since_standby_ms = since_sb,
                "lease expired: fencing (stopping Postgres) until the controller confirms our role"
            );
            self.state.fenced = true;
            self.state.save(&self.cfg)?;
        }
        Ok(())
    }
}
