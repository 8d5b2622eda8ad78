//! Backups: `pgha backup` and the file's schedule ask the primary for a backup (a
//! request on its node record, carried out once by its agent), and `pgha show backups`
//! reads the repository as the primary's agent last read it.

use super::operator::Ask;
use super::{ActionError, ControllerState, NodeRecord, Refusal, Rule};
use pgha_api::routes::ErrorCode;
use pgha_api::{BackupKind, BackupRequest, BackupsStatus, JobState};

/// A scheduled backup that failed is asked again no sooner than this.
const SCHEDULE_RETRY_MS: u64 = 10 * 60 * 1000;

fn refused<T>(message: String) -> Result<T, ActionError> {
    Err(ActionError::Refused(Refusal {
        code: ErrorCode::BackupRefused,
        message,
    }))
}

impl ControllerState {
    /// `pgha backup`: asks the primary for a backup of `kind`. Refused without a
    /// `backup` section, without a running primary, or while a backup is under way.
    pub fn request_backup(
        &mut self,
        formation: &str,
        kind: BackupKind,
        actor: &str,
        now_ms: u64,
    ) -> Result<BackupsStatus, ActionError> {
        self.ask_backup(formation, kind, Rule::OperatorBackup, actor, now_ms)?;
        Ok(self.backups_status(formation).unwrap_or_default())
    }

    fn ask_backup(
        &mut self,
        formation: &str,
        kind: BackupKind,
        rule: Rule,
        actor: &str,
        now_ms: u64,
    ) -> Result<(), ActionError> {
        let f = self.formation(formation)?;
        if f.backup().is_none() {
            return refused(format!(
                "formation {formation:?} has no backup section in its file: add spec.backup (a repository) first"
            ));
        }
        if let Some(why) = self
            .view(formation, now_ms)
            .and_then(|v| v.backup_refusal())
        {
            return refused(why);
        }
        if let Some((node, id)) = self.backup_under_way(formation, now_ms) {
            return refused(format!(
                "backup {id} is still under way on {node}: wait for it (pgha show backups)"
            ));
        }
        let primary = f.nodes.values().find(|n| {
            n.goal().is_writable()
                && n.reported() == n.goal()
                && self.observed.get(&n.id).is_some_and(|o| o.pg.running)
        });
        let Some(primary) = primary else {
            return refused(format!(
                "formation {formation:?} has no running primary to back up"
            ));
        };
        let node = primary.name.clone();
        let id = f
            .nodes
            .values()
            .filter_map(|n| n.intent.backup_request.map(|r| r.id))
            .max()
            .unwrap_or(0)
            + 1;
        let ask = Ask {
            rule,
            what: format!("{kind} backup {id} asked of {node} (the primary)"),
            actor,
        };
        self.change_node(formation, &node, ask, now_ms, |n| {
            n.intent.backup_request = Some(BackupRequest { id, kind })
        })
    }

    /// The node whose asked backup has not ended, and the request's id.
    fn backup_under_way(&self, formation: &str, now_ms: u64) -> Option<(String, u64)> {
        let f = self.durable.formations.get(formation)?;
        f.nodes.values().find_map(|n| {
            let req = n.intent.backup_request?;
            let job = self.observed.get(&n.id).and_then(|o| o.backup_job.as_ref());
            let ended = job.is_some_and(|j| j.id >= req.id && j.state != JobState::Running);
            // A node that stopped reporting (a minute without a report, where reports
            // come every interval) will not run it: not under way.
            let reporting = self.observed.get(&n.id).is_some_and(|o| {
                o.pg.running
                    && o.last_report_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) <= 60_000)
            });
            (!ended && reporting).then(|| (n.name.clone(), req.id))
        })
    }

    /// `pgha show backups`.
    pub fn backups_status(&self, formation: &str) -> Option<BackupsStatus> {
        let f = self.durable.formations.get(formation)?;
        // The primary's reading first: it is the node that reads the repository.
        let mut nodes: Vec<&NodeRecord> = f.nodes.values().collect();
        nodes.sort_by_key(|n| !n.goal().is_writable());
        let backups = nodes
            .iter()
            .find_map(|n| self.observed.get(&n.id).and_then(|o| o.backups.clone()))
            .unwrap_or_default();
        let latest = f
            .nodes
            .values()
            .filter_map(|n| n.intent.backup_request.map(|r| (n, r)))
            .max_by_key(|(_, r)| r.id);
        let (mut job, mut requested) = (None, None);
        if let Some((n, req)) = latest {
            match self
                .observed
                .get(&n.id)
                .and_then(|o| o.backup_job.clone())
                .filter(|j| j.id == req.id)
            {
                Some(j) => job = Some((n.name.clone(), j)),
                None => requested = Some((n.name.clone(), req)),
            }
        }
        Some(BackupsStatus {
            formation: formation.to_string(),
            settings: f.backup(),
            backups,
            job,
            requested,
        })
    }

    /// The file's schedule: asks the primary for a full (or differential) backup once
    /// the last one of that kind is older than the schedule says. Waits until the
    /// primary has read the repository, and after a failed scheduled backup.
    pub fn take_scheduled_backups(&mut self, formation: &str, now_ms: u64) {
        let Some(f) = self.durable.formations.get(formation) else {
            return;
        };
        let Some(schedule) = f
            .spec()
            .and_then(|s| s.backup.as_ref())
            .map(|b| b.schedule.clone())
        else {
            return;
        };
        if schedule.full_every.is_none() && schedule.diff_every.is_none() {
            return;
        }
        if self
            .scheduled_backup_at
            .get(formation)
            .is_some_and(|t| now_ms.saturating_sub(*t) < SCHEDULE_RETRY_MS)
        {
            return;
        }
        let Some(status) = self.backups_status(formation) else {
            return;
        };
        let primary_read = f.nodes.values().any(|n| {
            n.goal().is_writable()
                && self
                    .observed
                    .get(&n.id)
                    .is_some_and(|o| o.backups.is_some())
        });
        if !primary_read || status.requested.is_some() {
            return;
        }
        let Some(kind) = schedule.due(&status.backups, now_ms / 1000) else {
            return;
        };
        // Refusals (a backup under way, no primary now) are asked again next tick.
        if self
            .ask_backup(formation, kind, Rule::ScheduledBackup, "schedule", now_ms)
            .is_ok()
        {
            self.scheduled_backup_at
                .insert(formation.to_string(), now_ms);
        }
    }
}
