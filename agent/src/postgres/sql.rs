//! All the SQL the agent runs, with the escaping helpers it needs. Values go as bind
//! parameters wherever Postgres takes them; the few places that need text (role and
//! database names, the SCRAM verifier) go through [`quote_ident`] and [`quote_literal`].

use crate::config::AgentConfig;
use crate::observation::{Local, LocalStandby};
use anyhow::Context;
use pgha_api::StandbyObservation;
use std::time::Duration;
use tokio_postgres::Client;

/// A string literal (standard_conforming_strings, on since Postgres 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A quoted identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A SCRAM-SHA-256 verifier of `password` (Postgres's stored form), made here so that the
/// password never travels in SQL.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// The idle primary's heartbeat: one tiny committed transaction, flushed here without
/// waiting for a synchronous standby, so that a standby has new WAL to acknowledge (see
/// `lease::WalMarks`). Costs one transaction id.
pub async fn heartbeat(c: &Client) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(
        "BEGIN READ WRITE; SET LOCAL synchronous_commit TO local; \
         SELECT pg_current_xact_id(); COMMIT",
    )
    .await
}

/// Fills in what SQL tells of the local Postgres (recovery, settings, WAL position,
/// standbys, slots).
pub async fn read_local(
    c: &Client,
    cfg: &AgentConfig,
    l: &mut Local,
) -> Result<(), tokio_postgres::Error> {
    read_settings(c, cfg, l).await?;
    if l.in_recovery == Some(true) {
        read_standby_position(c, l).await?;
    } else {
        read_primary_position(c, l).await?;
    }
    read_slots(c, l).await
}

/// Recovery, the settings in force or pending, and whether pgha's role and database exist.
async fn read_settings(
    c: &Client,
    cfg: &AgentConfig,
    l: &mut Local,
) -> Result<(), tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT pg_is_in_recovery(), \
                    current_setting('synchronous_standby_names'), \
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1), \
                    EXISTS (SELECT 1 FROM pg_database WHERE datname = $2), \
                    ARRAY(SELECT name::text FROM pg_settings WHERE pending_restart ORDER BY 1), \
                    ARRAY(SELECT coalesce(name, '?') || ': ' || error FROM pg_file_settings \
                          WHERE error IS NOT NULL \
                          AND error <> 'setting could not be applied' ORDER BY 1), \
                    current_setting('wal_level') = 'logical'",
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
    l.wal_level_logical = row.get(6);
    Ok(())
}

/// A standby's WAL position, timeline and WAL receiver.
async fn read_standby_position(c: &Client, l: &mut Local) -> Result<(), tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text, \
                    w.received_tli, w.sender_host, w.sender_port, \
                    (SELECT timeline_id FROM pg_control_checkpoint()), \
                    (extract(epoch FROM clock_timestamp() - w.last_msg_receipt_time) * 1000)::float8, \
                    w.flushed_lsn::text, pg_last_wal_receive_lsn()::text, \
                    w.written_lsn::text \
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
    l.wal_receipt_age = row
        .get::<_, Option<f64>>(5)
        .map(|ms| Duration::from_millis(ms.max(0.0) as u64));
    l.wal_receiver_flushed = row.get::<_, Option<String>>(6).and_then(|s| s.parse().ok());
    l.wal_received = row.get::<_, Option<String>>(7).and_then(|s| s.parse().ok());
    l.wal_receiver_written = row.get::<_, Option<String>>(8).and_then(|s| s.parse().ok());
    Ok(())
}

/// A primary's WAL position and timeline, its WAL senders and its archiver.
async fn read_primary_position(c: &Client, l: &mut Local) -> Result<(), tokio_postgres::Error> {
    let before = std::time::Instant::now();
    let row = c
        .query_one(
            "SELECT pg_current_wal_flush_lsn()::text, \
                    ('x' || substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8))::bit(32)::int, \
                    pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await?;
    l.lsn = row.get::<_, String>(0).parse().ok();
    l.timeline = Some(row.get::<_, i32>(1) as u32);
    l.wal_insert = row
        .get::<_, String>(2)
        .parse()
        .ok()
        .map(|lsn| (before, lsn));
    let senders_read = std::time::Instant::now();
    let rows = c
        .query(
            "SELECT application_name, state, sync_state, flush_lsn::text, \
                    coalesce(extract(epoch FROM replay_lag), 0)::float8, pid, \
                    sent_lsn::text, write_lsn::text \
             FROM pg_stat_replication",
            &[],
        )
        .await?;
    let row = c
        .query_one(
            "SELECT current_setting('archive_mode') <> 'off', archived_count, last_archived_wal, \
                    extract(epoch FROM now() - last_archived_time)::float8, \
                    failed_count, last_failed_wal, \
                    extract(epoch FROM now() - last_failed_time)::float8 \
             FROM pg_stat_archiver",
            &[],
        )
        .await?;
    let secs = |i: usize| row.get::<_, Option<f64>>(i).map(|s| s.max(0.0) as u64);
    l.archive = row.get::<_, bool>(0).then(|| pgha_api::ArchiveStatus {
        archived_count: row.get::<_, i64>(1) as u64,
        last_archived_wal: row.get(2),
        last_archived_s_ago: secs(3),
        failed_count: row.get::<_, i64>(4) as u64,
        last_failed_wal: row.get(5),
        last_failed_s_ago: secs(6),
        error: None,
    });
    l.standbys = rows
        .iter()
        .map(|r| LocalStandby {
            obs: StandbyObservation {
                application_name: r.get(0),
                state: r.get::<_, Option<String>>(1).unwrap_or_default(),
                sync_state: r.get::<_, Option<String>>(2).unwrap_or_default(),
                flush_lsn: r.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
            },
            replay_lag_seconds: r.get(4),
            pid: r.get::<_, Option<i32>>(5).unwrap_or_default(),
            sent: r
                .get::<_, Option<String>>(6)
                .and_then(|s| s.parse().ok())
                .map(|lsn| (senders_read, lsn)),
            write_lsn: r.get::<_, Option<String>>(7).and_then(|s| s.parse().ok()),
        })
        .collect();
    Ok(())
}

/// pgha's replication slots, and every other (permanent) slot with its position.
async fn read_slots(c: &Client, l: &mut Local) -> Result<(), tokio_postgres::Error> {
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
    // `synced` exists from PostgreSQL 17 (failover slots) on.
    let synced = if l.major.is_some_and(|m| m.failover_slots()) {
        "synced"
    } else {
        "false"
    };
    let others = c
        .query(
            &format!(
                "SELECT slot_name::text, restart_lsn::text, wal_status::text, \
                        slot_type = 'logical', database::text, plugin::text, \
                        confirmed_flush_lsn::text, {synced} \
                 FROM pg_replication_slots \
                 WHERE NOT temporary AND slot_name NOT LIKE 'pgha\\_slot\\_%' ORDER BY 1"
            ),
            &[],
        )
        .await?;
    let lsn = |r: &tokio_postgres::Row, i: usize| {
        r.get::<_, Option<String>>(i)
            .and_then(|s| s.parse::<pgha_api::Lsn>().ok())
    };
    l.permanent_slots = others
        .iter()
        .map(|r| pgha_api::SlotPosition {
            name: r.get(0),
            restart_lsn: lsn(r, 1),
            wal_status: r
                .get::<_, Option<String>>(2)
                .and_then(|s| pgha_api::SlotWalStatus::parse(&s)),
            logical: r.get::<_, bool>(3).then(|| pgha_api::LogicalSlot {
                database: r.get::<_, Option<String>>(4).unwrap_or_default(),
                plugin: r.get::<_, Option<String>>(5).unwrap_or_default(),
                confirmed_flush_lsn: lsn(r, 6),
                state: None,
                synced: r.get::<_, Option<bool>>(7).unwrap_or(false),
            }),
        })
        .collect();
    Ok(())
}

/// Carries out what the planner chose for a permanent slot (see
/// `plan::permanent_slot_actions`), each guarded again in SQL: a physical slot made
/// (on a standby too: its WAL is kept from its last restartpoint) or advanced, never
/// past what this node replayed; a logical one made on the primary from inside its
/// database, a standby's copy advanced there. Slots the file no longer names are left
/// alone (drop them by hand: a consumer may still need one).
pub async fn permanent_slot_action(
    c: &Client,
    slot: &pgha_api::SlotPosition,
    action: &crate::plan::SlotAction,
    logical_db: Option<&Client>,
    major: Option<pgha_api::PgMajor>,
) -> anyhow::Result<()> {
    use crate::plan::SlotAction;
    let name = &slot.name;
    match (action, &slot.logical, logical_db) {
        (SlotAction::Create, None, _) => {
            create_physical_slot(c, name)
                .await
                .with_context(|| format!("creating permanent slot {name}"))?;
        }
        (SlotAction::Create, Some(l), Some(db)) => {
            // Making a logical slot waits for the transactions running then: bounded, so
            // that a long one delays the slot, not the agent's loop (tried again).
            db.batch_execute("SET statement_timeout = '1s'").await?;
            // 17 and later: a failover slot, which standbys keep synchronized.
            let create = if major.is_some_and(|m| m.failover_slots()) {
                "SELECT pg_create_logical_replication_slot($1, $2, false, false, true) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
            } else {
                "SELECT pg_create_logical_replication_slot($1, $2) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
            };
            db.execute(create, &[name, &l.plugin])
                .await
                .with_context(|| {
                    format!(
                        "creating logical slot {name} ({}) in database {:?}",
                        l.plugin, l.database
                    )
                })?;
        }
        (SlotAction::DropCopy, _, _) => {
            tracing::info!(slot = %name, "dropping this standby's copy of the slot (invalidated, or ahead of the primary's)");
            drop_copy(c, name).await?;
        }
        (SlotAction::Advance(to), None, _) => {
            c.execute(
                "SELECT pg_replication_slot_advance(slot_name, least($2::text::pg_lsn, pg_last_wal_replay_lsn())) \
                 FROM pg_replication_slots \
                 WHERE slot_name = $1 AND restart_lsn < least($2::text::pg_lsn, pg_last_wal_replay_lsn())",
                &[name, &to.to_string()],
            )
            .await
            .with_context(|| format!("advancing permanent slot {name} to {to}"))?;
        }
        (SlotAction::Advance(to), Some(_), Some(db)) => {
            // Decoding (fast-forward) reads the WAL in between: 16 MB per step keeps a
            // step short when a fresh copy starts far behind.
            db.batch_execute("SET statement_timeout = '2s'").await?;
            let r = db
                .execute(
                    "SELECT pg_replication_slot_advance(slot_name, \
                            least($2::text::pg_lsn, pg_last_wal_replay_lsn(), \
                                  confirmed_flush_lsn + 16777216)) \
                     FROM pg_replication_slots \
                     WHERE slot_name = $1 \
                       AND confirmed_flush_lsn < least($2::text::pg_lsn, pg_last_wal_replay_lsn())",
                    &[name, &to.to_string()],
                )
                .await;
            if let Err(e) = r {
                // The copy starts before the WAL this standby still has: it can never
                // follow; drop it, and a fresher one is copied at a later restart.
                if e.to_string().contains("has already been removed") {
                    tracing::warn!(slot = %name, "the copy needs WAL this standby removed: dropped, copied again later ({e})");
                    drop_copy(c, name).await?;
                }
                return Err(anyhow::Error::from(e)
                    .context(format!("advancing the copy of logical slot {name} to {to}")));
            }
        }
        (SlotAction::Create | SlotAction::Advance(_), Some(_), None) => {
            anyhow::bail!("logical slot {name}: no connection to its database")
        }
        (SlotAction::CopyAtRestart, _, _) => {}
    }
    Ok(())
}

/// Drops a standby's copy of a permanent slot (unless something streams from it).
async fn drop_copy(c: &Client, name: &str) -> anyhow::Result<()> {
    c.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = $1 AND NOT active",
        &[&name],
    )
    .await
    .with_context(|| format!("dropping this standby's copy of slot {name}"))?;
    Ok(())
}

/// Roles, database and replication slots of a primary: the replication role and the
/// database when missing, the slots in `slots` created, and the others dropped.
pub async fn setup_primary(c: &Client, cfg: &AgentConfig, slots: &[String]) -> anyhow::Result<()> {
    // The agent's own catalog writes never wait for a synchronous standby: the one
    // listed may be the one that just died (the reload that drops it from
    // synchronous_standby_names can come after this step), and a commit waiting on
    // it would hold this loop until the lease fences the primary.
    c.batch_execute("SET synchronous_commit TO local").await?;
    let user = pgha_api::REPLICATION_USER;
    let exists = c
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await?
        .is_some();
    if !exists {
        // A SCRAM verifier, never the password itself, goes into the SQL text (which
        // the server may log): it holds only base64, '$' and ':'.
        let verifier = scram_verifier(&cfg.replication_password);
        c.batch_execute(&format!(
            "CREATE ROLE {user} WITH LOGIN REPLICATION PASSWORD {}",
            quote_literal(&verifier)
        ))
        .await
        .context("creating the replication role")?;
        c.batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {user};
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {user};
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {user};
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {user};
             GRANT pg_checkpoint TO {user};"
        ))
        .await
        .context("granting the replication role what pg_rewind needs")?;
    }
    let exists = c
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&cfg.dbname],
        )
        .await?
        .is_some();
    if !exists {
        let db = quote_ident(&cfg.dbname);
        let owner = quote_ident(&cfg.username);
        c.batch_execute(&format!("CREATE DATABASE {db} OWNER {owner}"))
            .await
            .with_context(|| format!("creating database {}", cfg.dbname))?;
    }
    sync_node_slots(c, slots).await
}

/// The slots of the nodes that stream from here (`pgha_slot_<id>`): those in `slots`
/// made, the others dropped. Also on a standby formation's leader, in recovery.
pub async fn sync_node_slots(c: &Client, slots: &[String]) -> anyhow::Result<()> {
    // Slots of nodes that cannot stream, and invalidated ones (their standby is
    // rebuilt and takes a fresh slot), unless a standby streams through them now.
    c.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name LIKE 'pgha_slot_%' AND NOT active \
           AND (NOT (slot_name = ANY($1)) OR wal_status = 'lost')",
        &[&slots],
    )
    .await
    .context("dropping replication slots")?;
    for slot in slots {
        create_physical_slot(c, slot)
            .await
            .with_context(|| format!("creating replication slot {slot}"))?;
    }
    Ok(())
}

/// Makes physical slot `name` (reserving WAL at once) unless it exists.
async fn create_physical_slot(c: &Client, name: &str) -> Result<u64, tokio_postgres::Error> {
    c.execute(
        "SELECT pg_create_physical_replication_slot($1, true) \
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        &[&name],
    )
    .await
}

/// Gives the replication role this formation's password (a node restored from another
/// formation's backup has that formation's).
pub async fn set_replication_password(c: &Client, cfg: &AgentConfig) -> anyhow::Result<()> {
    c.batch_execute("SET synchronous_commit TO local").await?;
    let verifier = scram_verifier(&cfg.replication_password);
    c.batch_execute(&format!(
        "ALTER ROLE {} WITH PASSWORD {}",
        pgha_api::REPLICATION_USER,
        quote_literal(&verifier)
    ))
    .await
    .context("setting the replication role's password")
}

/// Promotes the local standby and records the new timeline in pg_control at once, so
/// that pg_rewind of the old primary against this node finds it.
pub async fn promote(c: &Client) -> anyhow::Result<()> {
    c.execute("SELECT pg_promote(true, 60)", &[]).await?;
    // Bounded: the watchdog fences a stuck writable node, but a step that never ends
    // would keep it from reporting at all.
    tokio::time::timeout(Duration::from_secs(60), c.batch_execute("CHECKPOINT"))
        .await
        .context("CHECKPOINT after promotion did not finish within 60 s")??;
    Ok(())
}

/// Makes Postgres read its configuration files again.
pub async fn reload(c: &Client) -> anyhow::Result<()> {
    c.execute("SELECT pg_reload_conf()", &[]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("my \"db\""), "\"my \"\"db\"\"\"");
        let v = scram_verifier("secret");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains('\''), "a verifier needs no escaping: {v}");
    }
}
