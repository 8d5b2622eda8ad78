//! Observing the local Postgres: files in PGDATA, postmaster.pid, and a few SQL queries
//! over the Unix socket in PGDATA.

use crate::config::AgentConfig;
pub use crate::observation::{Local, LocalStandby};
use crate::postgres::bin as pg;
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
    // A few hundred bytes; a link or a device there is not a postmaster.pid.
    let Ok(Some(bytes)) = crate::files::read_capped(&pgdata.join("postmaster.pid"), 4096) else {
        return Postmaster::Stopped;
    };
    let text = String::from_utf8_lossy(&bytes);
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
/// The postmaster `pm` and the processes it started (from /proc).
pub fn postgres_processes(pm: i32) -> Vec<i32> {
    let mut out = vec![pm];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Field 4 (after the parenthesised command) is the parent PID.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pm) {
            out.push(pid);
        }
    }
    out
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() && !is_zombie(pid)
}

/// Which postmaster runs: `<pid>:<start time>` from `postmaster.pid`, or None when
/// none does. A postmaster killed with SIGKILL leaves its file behind: the identity is
/// only taken while that process lives and is a Postgres (its PID may be another
/// program's after a reboot).
pub fn postmaster_identity(pgdata: &Path) -> Option<String> {
    let bytes = crate::files::read_capped(&pgdata.join("postmaster.pid"), 4096).ok()??;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let pid: i32 = lines.first()?.trim().parse().ok()?;
    let started: i64 = lines.get(2)?.trim().parse().ok()?;
    let alive =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() && !is_zombie(pid);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    (alive && comm.trim() == "postgres").then(|| format!("{pid}:{started}"))
}

pub fn postmaster_pid(pgdata: &Path) -> Option<i32> {
    let bytes = crate::files::read_capped(&pgdata.join("postmaster.pid"), 4096).ok()??;
    String::from_utf8_lossy(&bytes)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The agent's session with its Postgres: a new connection each time (so that a
/// postmaster that stopped accepting is seen: the connection fails or times out), kept
/// open until the next one. When every connection slot is taken (`too_many_connections`,
/// the superusers' reserved ones too, say by an application's pile of sessions behind
/// a synchronous commit), the postmaster did answer, and the kept session is used: an
/// exhausted Postgres is a busy one, not a down one, and its heartbeat goes on, so
/// neither a failover nor a fence follows from it.
async fn connect(
    cfg: &AgentConfig,
) -> Result<std::sync::Arc<tokio_postgres::Client>, tokio_postgres::Error> {
    type Kept = Option<(std::path::PathBuf, std::sync::Arc<tokio_postgres::Client>)>;
    static KEPT: tokio::sync::Mutex<Kept> = tokio::sync::Mutex::const_new(None);
    let mut kept = KEPT.lock().await;
    match connect_to(cfg, "postgres").await {
        Ok(c) => {
            let c = std::sync::Arc::new(c);
            *kept = Some((cfg.state_dir(), c.clone()));
            Ok(c)
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS) => {
            match kept.as_ref() {
                Some((dir, c)) if *dir == cfg.state_dir() && !c.is_closed() => {
                    if warn_due() {
                        tracing::warn!(
                            "every connection slot of Postgres is taken ({e}): reading it through the agent's kept session"
                        );
                    }
                    Ok(c.clone())
                }
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

async fn connect_to(
    cfg: &AgentConfig,
    dbname: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut c = tokio_postgres::Config::new();
    c.host_path(cfg.state_dir())
        .port(cfg.pgport)
        .user(&cfg.username)
        .dbname(dbname)
        .application_name("pgha_agent")
        .connect_timeout(Duration::from_secs(2));
    let (client, conn) = c.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A connection to the local Postgres, for the agent's SQL steps (see [`connect`]).
pub async fn local_client(
    cfg: &AgentConfig,
) -> anyhow::Result<std::sync::Arc<tokio_postgres::Client>> {
    Ok(connect(cfg).await?)
}

/// A connection to one database of the local Postgres (a logical slot is made and
/// advanced from inside its database).
pub async fn local_client_to(
    cfg: &AgentConfig,
    dbname: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    connect_to(cfg, dbname)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to database {dbname:?}: {e}"))
}

/// Free and total bytes of the filesystem holding `dir` (or its nearest existing
/// parent, before initdb). Free counts what an unprivileged user may use, as Postgres.
pub fn disk_space(dir: &Path) -> Option<pgha_api::DiskSpace> {
    let at = dir.ancestors().find(|d| d.exists())?;
    let st = nix::sys::statvfs::statvfs(at).ok()?;
    let frag = st.fragment_size() as u64;
    Some(pgha_api::DiskSpace {
        free_bytes: st.blocks_available() as u64 * frag,
        total_bytes: st.blocks() as u64 * frag,
    })
}

pub async fn observe(cfg: &AgentConfig) -> Local {
    let pgdata = &cfg.pgdata;
    let mut l = Local {
        disk: disk_space(pgdata),
        initialized: pgdata.join("PG_VERSION").exists(),
        standby_signal: pgdata.join("standby.signal").exists(),
        point_in_time_recovery: crate::backup::pitr_marker(cfg).exists(),
        backup_label: pgdata.join("backup_label").exists(),
        ..Local::default()
    };
    if !l.initialized {
        return l;
    }
    l.major = crate::files::read_capped(&pgdata.join("PG_VERSION"), 16)
        .ok()
        .flatten()
        .and_then(|b| pgha_api::PgMajor::from_pg_version_file(&String::from_utf8_lossy(&b)));
    l.oldest_wal = oldest_wal(pgdata);
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
    match tokio::time::timeout(Duration::from_secs(3), read_local(cfg, &mut l)).await {
        Ok(Ok(())) => l.ready = true,
        // A postmaster that says it is ready but does not answer our queries is taken
        // as down: say why, at most every 10 s.
        Ok(Err(e)) if warn_due() => tracing::warn!("local Postgres query failed: {e}"),
        Ok(Err(e)) => tracing::debug!("local Postgres query failed: {e}"),
        Err(_) => tracing::warn!("local Postgres did not answer within 3 s"),
    }
    l
}

/// Whether a repeated warning may be logged now (at most every 10 s per agent).
fn warn_due() -> bool {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
        return false;
    }
    *last = Some(std::time::Instant::now());
    true
}

async fn read_local(cfg: &AgentConfig, l: &mut Local) -> Result<(), tokio_postgres::Error> {
    let c = connect(cfg).await?;
    crate::postgres::sql::read_local(&c, cfg, l).await?;
    if l.in_recovery == Some(false) {
        crate::postgres::slots::read_state_files(&cfg.pgdata, &mut l.permanent_slots);
    }
    Ok(())
}

/// Where the oldest WAL segment in `pg_wal` starts: a slot copy needing older WAL
/// could never be advanced here. A segment is named timeline, log and segment number
/// (8 hex digits each); its size is the segment size.
pub fn oldest_wal(pgdata: &Path) -> Option<pgha_api::Lsn> {
    let dir = pgdata.join("pg_wal");
    let oldest = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .min_by(|a, b| a[8..].cmp(&b[8..]))?;
    let size = std::fs::metadata(dir.join(&oldest)).ok()?.len();
    let log = u64::from_str_radix(&oldest[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&oldest[16..24], 16).ok()?;
    (size.is_power_of_two() && size >= 1 << 20).then(|| pgha_api::Lsn((log << 32) + seg * size))
}

#[cfg(test)]
mod tests {
    /// A postmaster.pid left by a killed postmaster, or naming a process that is no
    /// Postgres, identifies no running postmaster.
    #[test]
    fn a_stale_postmaster_pid_identifies_no_postmaster() {
        let dir = tempfile::tempdir().unwrap();
        let write = |pid: i32| {
            std::fs::write(
                dir.path().join("postmaster.pid"),
                format!("{pid}\n/data\n1765000000\n5432\n/tmp\n*\n  1 2\nready\n"),
            )
            .unwrap()
        };
        assert_eq!(postmaster_identity(dir.path()), None, "no file");
        write(std::process::id() as i32);
        assert_eq!(
            postmaster_identity(dir.path()),
            None,
            "alive, but not a Postgres"
        );
        write(i32::MAX - 7);
        assert_eq!(postmaster_identity(dir.path()), None, "no such process");
    }

    use super::*;

    #[test]
    fn the_oldest_wal_segment_gives_where_kept_wal_starts() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        assert_eq!(oldest_wal(dir.path()), None);
        for name in [
            "000000020000000100000004",
            "000000010000000100000003",
            "00000001.history",
        ] {
            let f = std::fs::File::create(wal.join(name)).unwrap();
            f.set_len(16 << 20).unwrap();
        }
        assert_eq!(oldest_wal(dir.path()), Some("1/3000000".parse().unwrap()));
    }
}
