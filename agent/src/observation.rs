//! The plain data of one observation of the local Postgres: what [`crate::observe`]
//! fills in each tick and the pure planner ([`crate::plan`]) reads. No I/O here.

use crate::postgres::bin as pg;
use pgha_api::{Lsn, StandbyObservation};

/// A standby streaming from this node, from `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalStandby {
    pub obs: StandbyObservation,
    /// The WAL sender's process id: one connection of the standby (a reconnection
    /// gets another).
    pub pid: i32,
    /// `replay_lag` in seconds (0 when idle).
    pub replay_lag_seconds: f64,
    /// What its WAL sender had sent (`sent_lsn`), with a moment before it was read.
    pub sent: Option<(std::time::Instant, Lsn)>,
    /// What the standby wrote (`write_lsn`, from its last reply).
    pub write_lsn: Option<Lsn>,
}

/// A WAL receiver that shows `streaming` with its last message older than this is not
/// running its loop (a frozen process, a write stuck on a hung disk): a working one
/// gives up by itself after `wal_receiver_timeout` (2 s) of silence, and a live primary
/// sends at least every half second (its WAL, its idle heartbeat) and answers the
/// receiver's ping after 1 s.
pub const RECEIVER_STALLED: std::time::Duration = std::time::Duration::from_secs(3);

/// What the agent saw of its Postgres this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Local {
    pub initialized: bool,
    pub postmaster_running: bool,
    /// Accepting connections and answered our queries.
    pub ready: bool,
    pub standby_signal: bool,
    /// This node was restored to a point in time and has not finished: Postgres
    /// promotes itself at the recovery target.
    pub point_in_time_recovery: bool,
    /// A backup_label is present (fresh base backup or rewind not yet started).
    pub backup_label: bool,
    pub in_recovery: Option<bool>,
    pub timeline: Option<u32>,
    pub lsn: Option<Lsn>,
    pub standbys: Vec<LocalStandby>,
    /// WAL receiver streaming.
    pub wal_receiver_streaming: bool,
    /// Host and port the WAL receiver streams from (when streaming).
    pub wal_receiver_sender: Option<(String, u16)>,
    /// Age of the WAL receiver's last message from its upstream, and what it had
    /// flushed then (read together; when streaming).
    pub wal_receipt_age: Option<std::time::Duration>,
    pub wal_receiver_flushed: Option<Lsn>,
    /// `written_lsn` of the WAL receiver, read with them.
    pub wal_receiver_written: Option<Lsn>,
    /// `pg_last_wal_receive_lsn()`: what streaming brought, also after the receiver
    /// stopped (on a standby).
    pub wal_received: Option<Lsn>,
    /// `pg_current_wal_insert_lsn()` on a primary, with a moment before it was read
    /// (so the position was still at most this then).
    pub wal_insert: Option<(std::time::Instant, Lsn)>,
    pub synchronous_standby_names: Option<String>,
    /// pgha's replication slots that still hold WAL (not invalidated).
    pub slots: Vec<String>,
    /// pgha's slots a standby is streaming through right now (never dropped).
    pub active_slots: Vec<String>,
    /// pgha's slots Postgres invalidated (`wal_status = 'lost'`): their WAL is gone.
    pub lost_slots: Vec<String>,
    /// The other slots (the file's permanent ones among them), with their positions;
    /// on a primary, a logical one with its state file.
    pub permanent_slots: Vec<pgha_api::SlotPosition>,
    /// `wal_level` is `logical` (a logical slot can be made).
    pub wal_level_logical: bool,
    /// Where the oldest WAL segment kept in `pg_wal` starts.
    pub oldest_wal: Option<Lsn>,
    pub replicator_exists: bool,
    pub dbname_exists: bool,
    /// From pg_controldata when stopped.
    pub control: Option<pg::ControlData>,
    /// Settings changed in the files but waiting for a restart.
    pub pending_restart: Vec<String>,
    /// Settings Postgres rejected when reading its configuration: (name, error).
    pub setting_errors: Vec<(String, String)>,
    /// PGDATA's filesystem (None when it cannot be read).
    pub disk: Option<pgha_api::DiskSpace>,
    /// The data directory's major (`PG_VERSION`).
    pub major: Option<pgha_api::PgMajor>,
    /// The major of the Postgres binaries the agent runs (`pg_bin_dir`), found at its
    /// start.
    pub binaries_major: Option<pgha_api::PgMajor>,
    /// `pg_stat_archiver`, on a primary whose `archive_mode` is on.
    pub archive: Option<pgha_api::ArchiveStatus>,
}

impl Local {
    /// The WAL receiver streams and receives: `streaming`, and heard from its upstream
    /// within [`RECEIVER_STALLED`]. What the agent reports as `upstream_streaming`, so a
    /// stuck receiver is parked like a cut one (a synchronous primary stops waiting for
    /// it) instead of holding the primary's writes for as long as it is stuck.
    pub fn receiver_live(&self) -> bool {
        self.wal_receiver_streaming && self.wal_receipt_age.is_none_or(|a| a < RECEIVER_STALLED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_receiver_silent_past_its_own_timeout_is_stalled() {
        let at = |streaming: bool, age_ms: Option<u64>| Local {
            wal_receiver_streaming: streaming,
            wal_receipt_age: age_ms.map(Duration::from_millis),
            ..Local::default()
        };
        assert!(at(true, Some(200)).receiver_live());
        assert!(at(true, None).receiver_live(), "nothing received yet");
        assert!(at(true, Some(2900)).receiver_live());
        assert!(!at(true, Some(3000)).receiver_live(), "frozen or stuck");
        assert!(!at(false, Some(100)).receiver_live());
    }
}
