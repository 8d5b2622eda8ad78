//! What the agent tells: its report to the controller (and the assignment it gets back),
//! and the snapshot its HTTP endpoint serves.

use super::{Agent, HEARTBEAT_AFTER, REPORT_TIMEOUT};
use crate::observe::Local;
use pgha_api::NodeState;
use pgha_api::{NodeReport, PgObservation};
use std::time::Instant;

impl Agent {
    /// Takes this tick's evidence for the lease (`lease::Evidence`).
    pub(super) fn track_standbys(&mut self, l: &Local) {
        let peers = self.state.assignment.as_ref().map(|a| a.peers.as_slice());
        self.lease.track(l, peers);
    }

    /// Whether the idle primary's heartbeat is due: a writable node with standbys whose
    /// insert position has not moved for half a second.
    pub(super) fn heartbeat_due(&self, l: &Local) -> bool {
        l.ready
            && l.in_recovery == Some(false)
            && !l.standbys.is_empty()
            && !self.state.fenced
            && self.effective_goal().is_writable()
            && self
                .lease
                .wal_marks
                .last_moved()
                .is_none_or(|t| t.elapsed() >= HEARTBEAT_AFTER)
            && self
                .last_heartbeat
                .is_none_or(|t| t.elapsed() >= HEARTBEAT_AFTER)
    }

    /// Refreshes what the HTTP endpoint serves.
    pub(super) fn publish(&self, l: &Local) {
        let snap = crate::http::Snapshot {
            node: self.cfg.name.clone(),
            formation: self.cfg.formation.clone(),
            local: l.clone(),
            goal: self.effective_goal(),
            reported: self.reported,
            fenced: self.state.fenced,
            lease_remaining_ms: self.lease_remaining_ms(),
            last_report_ok: self.last_report_ok,
            primary_lsn: self.state.assignment.as_ref().and_then(|a| a.primary_lsn),
            no_load_balance: self
                .state
                .assignment
                .as_ref()
                .is_some_and(|a| a.no_load_balance),
        };
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snap);
    }

    pub(super) fn observation(&self, l: &Local) -> PgObservation {
        let prepared_for = match &self.state.assignment {
            // A standby formation's leader prepares its slots while in recovery.
            Some(a) if l.ready && (l.in_recovery == Some(false) || a.standby_of.is_some()) => a
                .peers
                .iter()
                .filter(|p| {
                    l.slots
                        .contains(&pgha_api::replication_slot_name(p.node_id))
                })
                .map(|p| p.node_id)
                .collect(),
            _ => vec![],
        };
        PgObservation {
            running: l.ready,
            initialized: l.initialized,
            in_recovery: l.in_recovery,
            timeline: l.timeline,
            lsn: l.lsn,
            system_identifier: l.control.as_ref().and_then(|c| c.system_identifier.clone()),
            major: l.major,
            pgbackrest: self.pgbackrest.clone(),
            standbys: l.standbys.iter().map(|s| s.obs.clone()).collect(),
            upstream_streaming: l.receiver_live(),
            upstream_lost_ms_ago: if l.receiver_live() {
                None
            } else {
                self.lease
                    .last_streaming
                    .map(|t| t.elapsed().as_millis() as u64)
                    .or(Some(self.started.elapsed().as_millis() as u64))
            },
            prepared_for,
            pending_restart: l.pending_restart.clone(),
            disk: l.disk,
            archive: l.archive.clone().map(|mut a| {
                if a.failing() {
                    a.error = crate::backup::last_archive_error(&self.cfg);
                }
                a
            }),
            permanent_slots: l.permanent_slots.clone(),
            lost_slots: self
                .lost_slots
                .iter()
                .chain(&l.lost_slots)
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            streamed_from: Some(pgha_api::StreamHistory {
                watching_ms: self.started.elapsed().as_millis() as u64,
                contacts: self
                    .lease
                    .streamed_from
                    .iter()
                    .map(|((host, port), t)| pgha_api::StreamedFrom {
                        host: host.clone(),
                        port: *port,
                        ms_ago: t.elapsed().as_millis() as u64,
                    })
                    .collect(),
            }),
        }
    }

    pub(super) async fn report(&mut self, l: &Local) -> anyhow::Result<()> {
        let r = NodeReport {
            node_id: self.cfg.node_id,
            formation: self.cfg.formation.clone(),
            reported_state: self.reported,
            term: self.state.max_term,
            pg: self.observation(l),
            fenced: self.state.fenced,
            promotion_refused_term: self.pre_promote.refused.as_ref().map(|(t, _)| *t),
            last_error: self
                .last_error
                .clone()
                .or_else(|| {
                    let refused = self.pre_promote.refused.as_ref();
                    refused
                        .filter(|(t, _)| *t == self.state.max_term)
                        .map(|(_, why)| why.clone())
                })
                .or_else(|| {
                    self.hooks
                        .last_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                }),
            applied_generation: self.applied_generation,
            auth_method: Some(self.cfg.auth.hba_name().to_string()),
            rebuilt_epoch: self.state.rebuilt_epoch,
            restarted_epoch: self.state.restarted_epoch,
            backup_job: self.backups.last_job.clone(),
            backups: self.backups.backups.clone(),
        };
        let sent = Instant::now();
        let senders_at_send = self.lease.senders_now();
        self.last_report = Some(sent);
        self.reported_upstream_live = Some(r.pg.upstream_streaming);
        let res = self.client.report(&r).await;
        if res.is_ok() {
            self.lost_slots.clear();
        }
        let a = match res {
            // Dropped, the node's record and its credential are gone from the monitor.
            Err(e)
                if matches!(
                    e.code(),
                    Some(
                        pgha_api::routes::ErrorCode::UnknownNode
                            | pgha_api::routes::ErrorCode::Unauthenticated
                    )
                ) && self.effective_goal() == NodeState::Dropped =>
            {
                self.removed = true;
                return Ok(());
            }
            res => res?,
        };
        self.last_report_ok = Some(Instant::now());
        let mut a = a;
        if let Some(token) = a.node_token.take() {
            self.take_credential(&token)?;
        }
        let Some(renewed) = crate::lease::renewal(sent, a.term, self.state.max_term) else {
            tracing::warn!(
                term = a.term,
                max_term = self.state.max_term,
                "refusing an assignment from an older term (the lease is not renewed)"
            );
            return Ok(());
        };
        self.last_controller_contact = renewed;
        self.lease.answered(senders_at_send);
        self.contacted_since_start = true;
        let kept = self
            .lease
            .persisted(crate::observe::postmaster_identity(&self.cfg.pgdata));
        let mut changed =
            self.state.assignment.as_ref() != Some(&a) || self.state.lease_senders != kept;
        self.state.lease_senders = kept;
        if self.state.fenced && a.goal.is_writable() {
            tracing::info!("controller confirms our role: lifting the fence");
            self.state.fenced = false;
            changed = true;
        }
        if self.state.assignment.as_ref().map(|x| x.goal) != Some(a.goal) {
            tracing::info!(goal = %a.goal, term = a.term, "new assignment");
        }
        self.state.max_term = a.term;
        self.state.assignment = Some(a);
        if changed {
            self.state.save(&self.cfg)?;
        }
        self.arm_watchdog();
        Ok(())
    }

    /// The node's own credential, handed out in an answer (a node registered before
    /// nodes had one): kept in the config, and from now on the only one presented.
    fn take_credential(&mut self, token: &str) -> anyhow::Result<()> {
        let mut cfg = self.cfg.clone();
        cfg.node_token = Some(token.to_string());
        // The join secret the URL carried is no longer needed: the config drops it.
        cfg.monitor = pgha_api::client::split_secret(&cfg.monitor).0;
        cfg.save()?;
        self.client = cfg.monitor_client(REPORT_TIMEOUT)?;
        self.cfg = cfg;
        tracing::info!(
            "the monitor gave this node its own credential; reports carry it from now on"
        );
        Ok(())
    }
}
