//! Observing the local Postgres: files in PGDATA, postmaster.pid, and a few SQL queries
//! over the Unix socket in PGDATA.

use crate::config::AgentConfig;
use crate::pg;
use pgha_api::{Lsn, StandbyObservation};
use std::path::Path;
use std::time::Duration;

/// Whether the postmaster runs and whether it accepts connections, from postmaster.pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Postmaster {
    Stopped,
    /// Running but not accepting connections yet (starting, stopping, recovering).
    NotReady,
    Ready,
}

/// Reads `postmaster.pid`: line 1 is the PID, line 8 the status (`ready`, `standby`, …).
pub fn postmaster(pgdata: &Path) -> Postmaster {
    let Ok(text) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else {
        return Postmaster::Stopped;
    };
    let lines: Vec<&str> = text.lines().collect();
    let Some(pid) = lines.first().and_then(|l| l.trim().parse::<i32>().ok()) else {
        return Postmaster::NotReady;
    };
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    if !alive || is_zombie(pid) {
        return Postmaster::Stopped;
    }
    match lines.get(7).map(|s| s.trim()) {
        Some("ready") | Some("standby") => Postmaster::Ready,
        _ => Postmaster::NotReady,
    }
}

/// A killed postmaster stays a zombie until its parent (often init) reaps it: it is
/// gone all the same.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(false)
}

/// The postmaster's PID, for tests and the e2e harness.
pub fn postmaster_pid(pgdata: &Path) -> Option<i32> {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A standby streaming from this node, from `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalStandby {
    pub obs: StandbyObservation,
    /// The standby's last reply timestamp, as text (compared, never interpreted).
    pub reply_time: Option<String>,
    /// `replay_lag` in seconds (0 when idle).
    pub replay_lag_seconds: f64,
}

/// What the agent saw of its Postgres this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Local {
    pub initialized: bool,
    pub postmaster_running: bool,
    /// Accepting connections and answered our queries.
    pub ready: bool,
    pub standby_signal: bool,
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
    pub synchronous_standby_names: Option<String>,
    /// pgha's replication slots that still hold WAL (not invalidated).
    pub slots: Vec<String>,
    /// pgha's slots a standby is streaming through right now (never dropped).
    pub active_slots: Vec<String>,
    /// pgha's slots Postgres invalidated (`wal_status = 'lost'`): their WAL is gone.
    pub lost_slots: Vec<String>,
    pub replicator_exists: bool,
    pub dbname_exists: bool,
    /// From pg_controldata when stopped.
    pub control: Option<pg::ControlData>,
    /// Settings changed in the files but waiting for a restart.
    pub pending_restart: Vec<String>,
    /// Settings Postgres rejected when reading its configuration: (name, error).
    pub setting_errors: Vec<(String, String)>,
}

async fn connect(cfg: &AgentConfig) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut c = tokio_postgres::Config::new();
    c.host_path(cfg.state_dir())
        .port(cfg.pgport)
        .user(&cfg.username)
        .dbname("postgres")
        .application_name("pgha_agent")
        .connect_timeout(Duration::from_secs(2));
    let (client, conn) = c.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A connection to the local Postgres, for the agent's SQL steps.
pub async fn local_client(cfg: &AgentConfig) -> anyhow::Result<tokio_postgres::Client> {
    Ok(connect(cfg).await?)
}

pub async fn observe(cfg: &AgentConfig) -> Local {
    let pgdata = &cfg.pgdata;
    let mut l = Local {
        initialized: pgdata.join("PG_VERSION").exists(),
        standby_signal: pgdata.join("standby.signal").exists(),
        backup_label: pgdata.join("backup_label").exists(),
        ..Local::default()
    };
    if !l.initialized {
        return l;
    }
    match postmaster(pgdata) {
        Postmaster::Stopped => {
            l.control = pg::controldata(cfg).await.ok();
            if let Some(c) = &l.control {
                l.timeline = c.timeline;
                l.lsn = c.checkpoint_lsn;
            }
            return l;
        }
        Postmaster::NotReady => {
            l.postmaster_running = true;
            return l;
        }
        Postmaster::Ready => l.postmaster_running = true,
    }
    match tokio::time::timeout(Duration::from_secs(3), query(cfg, &mut l)).await {
        Ok(Ok(())) => l.ready = true,
        Ok(Err(e)) => tracing::debug!("local Postgres query failed: {e}"),
        Err(_) => tracing::warn!("local Postgres did not answer within 3 s"),
    }
    l
}

async fn query(cfg: &AgentConfig, l: &mut Local) -> Result<(), tokio_postgres::Error> {
    let c = connect(cfg).await?;
    let row = c
        .query_one(
            "SELECT pg_is_in_recovery(), \
                    current_setting('synchronous_standby_names'), \
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1), \
                    EXISTS (SELECT 1 FROM pg_database WHERE datname = $2), \
                    ARRAY(SELECT name::text FROM pg_settings WHERE pending_restart ORDER BY 1), \
                    ARRAY(SELECT coalesce(name, '?') || ': ' || error FROM pg_file_settings \
                          WHERE error IS NOT NULL \
                          AND error <> 'setting could not be applied' ORDER BY 1)",
            &[&pgha_api::REPLICATION_USER, &cfg.dbname],
        )
        .await?;
    let in_recovery: bool = row.get(0);
    l.in_recovery = Some(in_recovery);
    l.synchronous_standby_names = Some(row.get(1));
    l.replicator_exists = row.get(2);
    l.dbname_exists = row.get(3);
    l.pending_restart = row.get(4);
    l.setting_errors = row
        .get::<_, Vec<String>>(5)
        .into_iter()
        .map(|e| match e.split_once(": ") {
            Some((n, m)) => (n.to_string(), m.to_string()),
            None => (String::new(), e),
        })
        .collect();
    if in_recovery {
        let row = c
            .query_one(
                "SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text, \
                        w.received_tli, w.sender_host, w.sender_port, \
                        (SELECT timeline_id FROM pg_control_checkpoint()) \
                 FROM (SELECT 1) AS one \
                 LEFT JOIN pg_stat_wal_receiver w ON w.status = 'streaming'",
                &[],
            )
            .await?;
        l.lsn = row.get::<_, Option<String>>(0).and_then(|s| s.parse().ok());
        let streaming_tli: Option<i32> = row.get(1);
        l.wal_receiver_streaming = streaming_tli.is_some();
        l.wal_receiver_sender = match (
            row.get::<_, Option<String>>(2),
            row.get::<_, Option<i32>>(3),
        ) {
            (Some(h), Some(p)) if l.wal_receiver_streaming => Some((h, p as u16)),
            _ => None,
        };
        l.timeline = streaming_tli
            .or(row.get::<_, Option<i32>>(4))
            .map(|t| t as u32);
    } else {
        let row = c
            .query_one(
                "SELECT pg_current_wal_flush_lsn()::text, \
                        ('x' || substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8))::bit(32)::int",
                &[],
            )
            .await?;
        l.lsn = row.get::<_, String>(0).parse().ok();
        l.timeline = Some(row.get::<_, i32>(1) as u32);
        let rows = c
            .query(
                "SELECT application_name, state, sync_state, flush_lsn::text, reply_time::text, \
                        coalesce(extract(epoch FROM replay_lag), 0)::float8 \
                 FROM pg_stat_replication",
                &[],
            )
            .await?;
        l.standbys = rows
            .iter()
            .map(|r| LocalStandby {
                obs: StandbyObservation {
                    application_name: r.get(0),
                    state: r.get::<_, Option<String>>(1).unwrap_or_default(),
                    sync_state: r.get::<_, Option<String>>(2).unwrap_or_default(),
                    flush_lsn: r.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
                },
                reply_time: r.get(4),
                replay_lag_seconds: r.get(5),
            })
            .collect();
    }
    let slots = c
        .query(
            "SELECT slot_name::text, active, coalesce(wal_status, '') = 'lost' \
             FROM pg_replication_slots WHERE slot_name LIKE 'pgha_slot_%'",
            &[],
        )
        .await?;
    for r in slots {
        let (name, active, lost): (String, bool, bool) = (r.get(0), r.get(1), r.get(2));
        if active {
            l.active_slots.push(name.clone());
        }
        if lost {
            l.lost_slots.push(name);
        } else {
            l.slots.push(name);
        }
    }
    Ok(())
}
