//! Why something happened: every planner decision and every controller event names one
//! rule. Metrics and promotion tracking match on the variant, never on its spelling; the
//! spelling (`as_str`) is what events and logs carry on the wire.

/// A rule of the planner or an event of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    // Decisions of the planner.
    CatchingupToSecondary,
    DemotedToCatchingup,
    FailoverDrainPrimary,
    FailoverPromote,
    FastForward,
    FastForwardDone,
    LastNodeToSingle,
    MaintenanceEnd,
    MaintenanceStart,
    OldPrimaryDemoted,
    PreparePromotionToStopReplication,
    PrimaryToWaitPrimary,
    PromotionAborted,
    PromotionReelected,
    PromotionRefused,
    SingleToWaitPrimary,
    StopReplicationToWaitPrimary,
    SwitchoverDrainPrimary,
    SwitchoverPromote,
    UndeclaredNodeDropped,
    UnhealthySecondary,
    WaitPrimaryToPrimary,
    WaitStandbyToCatchingup,
    // Events of the controller.
    Register,
    Report,
    ReportRefused,
    TermCatchUp,
    ClaimCapped,
    SlotInvalidated,
    PermanentSlotAtRisk,
    PermanentSlotLost,
    DiskLow,
    DiskRecovered,
    NodeRemoved,
    FailoverBlocked,
    DesiredState,
    ConfigRejected,
    FormationOrphaned,
    OperatorSwitchover,
    OperatorFailoverAllowDataLoss,
    OperatorMaintenance,
    OperatorDrop,
    AuthRefused,
    NodeCredentialIssued,
    OperatorPause,
    OperatorPromoteFormation,
    ReplicationPasswordRead,
    OperatorReinit,
    OperatorRestart,
    OperatorBackup,
    ScheduledBackup,
    BackupSucceeded,
    BackupFailed,
    ArchiveFailing,
    ArchiveRecovered,
}

impl Rule {
    pub const ALL: &'static [Rule] = &[
        Rule::CatchingupToSecondary,
        Rule::DemotedToCatchingup,
        Rule::FailoverDrainPrimary,
        Rule::FailoverPromote,
        Rule::FastForward,
        Rule::FastForwardDone,
        Rule::LastNodeToSingle,
        Rule::MaintenanceEnd,
        Rule::MaintenanceStart,
        Rule::OldPrimaryDemoted,
        Rule::PreparePromotionToStopReplication,
        Rule::PrimaryToWaitPrimary,
        Rule::PromotionAborted,
        Rule::PromotionReelected,
        Rule::PromotionRefused,
        Rule::SingleToWaitPrimary,
        Rule::StopReplicationToWaitPrimary,
        Rule::SwitchoverDrainPrimary,
        Rule::SwitchoverPromote,
        Rule::UndeclaredNodeDropped,
        Rule::UnhealthySecondary,
        Rule::WaitPrimaryToPrimary,
        Rule::WaitStandbyToCatchingup,
        Rule::Register,
        Rule::Report,
        Rule::ReportRefused,
        Rule::TermCatchUp,
        Rule::ClaimCapped,
        Rule::SlotInvalidated,
        Rule::PermanentSlotAtRisk,
        Rule::PermanentSlotLost,
        Rule::DiskLow,
        Rule::DiskRecovered,
        Rule::NodeRemoved,
        Rule::FailoverBlocked,
        Rule::DesiredState,
        Rule::ConfigRejected,
        Rule::FormationOrphaned,
        Rule::OperatorSwitchover,
        Rule::OperatorFailoverAllowDataLoss,
        Rule::OperatorMaintenance,
        Rule::OperatorDrop,
        Rule::AuthRefused,
        Rule::NodeCredentialIssued,
        Rule::OperatorPause,
        Rule::OperatorPromoteFormation,
        Rule::ReplicationPasswordRead,
        Rule::OperatorReinit,
        Rule::OperatorRestart,
        Rule::OperatorBackup,
        Rule::ScheduledBackup,
        Rule::BackupSucceeded,
        Rule::BackupFailed,
        Rule::ArchiveFailing,
        Rule::ArchiveRecovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::CatchingupToSecondary => "catchingup_to_secondary",
            Rule::DemotedToCatchingup => "demoted_to_catchingup",
            Rule::FailoverDrainPrimary => "failover_drain_primary",
            Rule::FailoverPromote => "failover_promote",
            Rule::FastForward => "fast_forward",
            Rule::FastForwardDone => "fast_forward_done",
            Rule::LastNodeToSingle => "last_node_to_single",
            Rule::MaintenanceEnd => "maintenance_end",
            Rule::MaintenanceStart => "maintenance_start",
            Rule::OldPrimaryDemoted => "old_primary_demoted",
            Rule::PreparePromotionToStopReplication => "prepare_promotion_to_stop_replication",
            Rule::PrimaryToWaitPrimary => "primary_to_wait_primary",
            Rule::PromotionAborted => "promotion_aborted",
            Rule::PromotionReelected => "promotion_reelected",
            Rule::PromotionRefused => "promotion_refused",
            Rule::SingleToWaitPrimary => "single_to_wait_primary",
            Rule::StopReplicationToWaitPrimary => "stop_replication_to_wait_primary",
            Rule::SwitchoverDrainPrimary => "switchover_drain_primary",
            Rule::SwitchoverPromote => "switchover_promote",
            Rule::UndeclaredNodeDropped => "undeclared_node_dropped",
            Rule::UnhealthySecondary => "unhealthy_secondary",
            Rule::WaitPrimaryToPrimary => "wait_primary_to_primary",
            Rule::WaitStandbyToCatchingup => "wait_standby_to_catchingup",
            Rule::Register => "register",
            Rule::Report => "report",
            Rule::ReportRefused => "report_refused",
            Rule::TermCatchUp => "term_catch_up",
            Rule::ClaimCapped => "claim_capped",
            Rule::SlotInvalidated => "slot_invalidated",
            Rule::PermanentSlotAtRisk => "permanent_slot_at_risk",
            Rule::PermanentSlotLost => "permanent_slot_lost",
            Rule::DiskLow => "disk_low",
            Rule::DiskRecovered => "disk_recovered",
            Rule::NodeRemoved => "node_removed",
            Rule::FailoverBlocked => "failover_blocked",
            Rule::DesiredState => "desired_state",
            Rule::ConfigRejected => "config_rejected",
            Rule::FormationOrphaned => "formation_orphaned",
            Rule::OperatorSwitchover => "operator_switchover",
            Rule::OperatorFailoverAllowDataLoss => "operator_failover_allow_data_loss",
            Rule::OperatorMaintenance => "operator_maintenance",
            Rule::OperatorDrop => "operator_drop",
            Rule::AuthRefused => "auth_refused",
            Rule::NodeCredentialIssued => "node_credential_issued",
            Rule::OperatorPause => "operator_pause",
            Rule::OperatorPromoteFormation => "operator_promote_formation",
            Rule::ReplicationPasswordRead => "replication_password_read",
            Rule::OperatorReinit => "operator_reinit",
            Rule::OperatorRestart => "operator_restart",
            Rule::OperatorBackup => "operator_backup",
            Rule::ScheduledBackup => "scheduled_backup",
            Rule::BackupSucceeded => "backup_succeeded",
            Rule::BackupFailed => "backup_failed",
            Rule::ArchiveFailing => "archive_failing",
            Rule::ArchiveRecovered => "archive_recovered",
        }
    }

    /// A decision that starts a promotion (a failover's or a switchover's).
    pub fn starts_promotion(self) -> bool {
        matches!(self, Rule::FailoverPromote | Rule::SwitchoverPromote)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tests and readers compare with the spelling on the wire.
impl PartialEq<&str> for Rule {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_its_own_snake_case_spelling() {
        let mut seen = std::collections::HashSet::new();
        for r in Rule::ALL {
            let s = r.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert_eq!(format!("{r:?}").to_lowercase(), s.replace('_', ""));
        }
    }
}
