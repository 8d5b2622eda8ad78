//! `pgha-bench --backups [--rows 1000000,10000000]`: what backups cost and save, on
//! loopback with a repository on local disk (pgBackRest's defaults: gz compression,
//! one process). Per table size: the full backup's time and throughput, a
//! point-in-time restore's (to the archive's end, until the new formation's node runs
//! as single), a new standby from the repository (join to secondary) against a plain
//! `pg_basebackup` of the same primary, and, after a failover, how long the new
//! primary takes to archive its first file.

use crate::T;
use pgha_api::NodeState::*;
use pgha_e2e::Cluster;
use std::process::Command;
use std::time::{Duration, Instant};

struct Row {
    rows: u64,
    db_mib: f64,
    backup: Duration,
    repo_mib: f64,
    restore: Duration,
    standby_repo: Duration,
    basebackup: Duration,
    archive_after_failover: Duration,
}

pub fn run(sizes: &[u64]) -> anyhow::Result<()> {
    let mut out = vec![];
    for &rows in sizes {
        eprintln!("== {rows} rows");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut c = Cluster::start()?;
        let r = rt.block_on(one(&mut c, rows));
        if r.is_err() {
            c.dump_logs();
        }
        out.push(r?);
    }
    println!(
        "\n{:>10} | {:>7} | {:>17} | {:>8} | {:>17} | {:>21} | {:>14} | {:>20}",
        "rows",
        "DB MiB",
        "full backup",
        "repo MiB",
        "PITR restore",
        "standby from repo",
        "pg_basebackup",
        "archive after failover"
    );
    let rate = |mib: f64, d: Duration| {
        format!(
            "{:.1} s, {:.0} MiB/s",
            d.as_secs_f64(),
            mib / d.as_secs_f64()
        )
    };
    for r in out {
        println!(
            "{:>10} | {:>7.0} | {:>17} | {:>8.0} | {:>17} | {:>21} | {:>14} | {:>20.2} s",
            r.rows,
            r.db_mib,
            rate(r.db_mib, r.backup),
            r.repo_mib,
            rate(r.db_mib, r.restore),
            format!("{:.1} s to secondary", r.standby_repo.as_secs_f64()),
            format!("{:.1} s (copy)", r.basebackup.as_secs_f64()),
            r.archive_after_failover.as_secs_f64()
        );
    }
    Ok(())
}

async fn one(c: &mut Cluster, rows: u64) -> anyhow::Result<Row> {
    c.declare_backups("")?;
    c.add_node("node_a")?;
    c.wait_for(&[("node_a", Single)], T)?;
    let db = c.connect_node(0).await?;
    let t0 = Instant::now();
    db.batch_execute(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, payload text); \
         INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {rows}) g; \
         CHECKPOINT"
    ))
    .await?;
    let size: i64 = db
        .query_one("SELECT pg_database_size('appdb')", &[])
        .await?
        .get(0);
    eprintln!("  loaded in {:.1} s", t0.elapsed().as_secs_f64());

    let m = c.join_url.clone();
    c.pgha_ok(&["backup", "--type", "full", "--monitor", &m])?;
    let shown = c.pgha_ok(&["show", "backups", "--json", "--monitor", &c.monitor_url])?;
    let v: serde_json::Value = serde_json::from_str(&shown)?;
    let job_ms = v["job"][1]["elapsed_ms"].as_u64().unwrap_or(0);
    let last = v["backups"]
        .as_array()
        .and_then(|b| b.last())
        .cloned()
        .unwrap_or_default();
    let db_mib = last["database_bytes"].as_u64().unwrap_or(size as u64) as f64 / 1048576.0;
    let repo_mib = last["repo_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0;
    let backup = Duration::from_millis(job_ms);
    eprintln!(
        "  full backup: {:.1} s, {db_mib:.0} MiB, {repo_mib:.0} MiB in the repository",
        backup.as_secs_f64()
    );

    // A plain pg_basebackup of the same primary, as a new standby without a repository
    // would take (the copy alone).
    let target = c.path().join("basebackup-bench");
    let t0 = Instant::now();
    let port = c.nodes[0].port.to_string();
    let mut cmd = if nix::unistd::geteuid().is_root() {
        std::fs::create_dir_all(&target)?;
        let u = nix::unistd::User::from_name("postgres")?
            .ok_or_else(|| anyhow::anyhow!("no postgres user"))?;
        nix::unistd::chown(&target, Some(u.uid), Some(u.gid))?;
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c.arg("/usr/lib/postgresql/15/bin/pg_basebackup");
        c
    } else {
        Command::new("/usr/lib/postgresql/15/bin/pg_basebackup")
    };
    let st = cmd
        .arg("-D")
        .arg(&target)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            pgha_api::REPLICATION_USER,
            "-X",
            "stream",
            "-c",
            "fast",
        ])
        .current_dir("/")
        .status()?;
    anyhow::ensure!(st.success(), "pg_basebackup failed");
    let basebackup = t0.elapsed();
    std::fs::remove_dir_all(&target)?;
    eprintln!("  pg_basebackup: {:.1} s", basebackup.as_secs_f64());

    // A new standby from the repository: join to secondary.
    c.switch_wal(0).await?;
    let t0 = Instant::now();
    c.add_node("node_b")?;
    c.wait_for(
        &[("node_a", Primary), ("node_b", Secondary)],
        Duration::from_secs(3600),
    )?;
    let standby_repo = t0.elapsed();
    eprintln!(
        "  standby from the repository: {:.1} s",
        standby_repo.as_secs_f64()
    );

    // Point-in-time recovery to the archive's end, as a new formation.
    c.switch_wal(0).await?;
    let t0 = Instant::now();
    c.restore_formation("restored", "default", None)?;
    let restore = t0.elapsed();
    eprintln!("  restore: {:.1} s", restore.as_secs_f64());

    // Failover: how long until the new primary has archived its first file (the new
    // timeline's history file).
    c.kill_vm(0)?;
    let st = c.wait_for(&[("node_b", WaitPrimary)], T)?;
    drop(st);
    let t0 = Instant::now();
    let b = c.connect_node(1).await?;
    loop {
        let n: i64 = b
            .query_one("SELECT archived_count FROM pg_stat_archiver", &[])
            .await?
            .get(0);
        if n > 0 {
            break;
        }
        anyhow::ensure!(t0.elapsed() < T, "the new primary archived nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let archive_after_failover = t0.elapsed();
    eprintln!(
        "  new primary archived its first file {:.2} s after it was writable",
        archive_after_failover.as_secs_f64()
    );
    Ok(Row {
        rows,
        db_mib,
        backup,
        repo_mib,
        restore,
        standby_repo,
        basebackup,
        archive_after_failover,
    })
}
