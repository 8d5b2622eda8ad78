//! Backups with a real pgBackRest and a repository on local disk: archiving follows the
//! primary across a switchover and a failover, backups are taken on whichever node is
//! primary, and an archive that fails is an event, a metric and a `show state` line
//! until it works again.

use pgha_api::NodeState::*;
use pgha_e2e::{Cluster, scenario};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

/// The default formation with a backup section (nodes not declared: any may join).
fn with_backups(c: &Cluster) -> anyhow::Result<String> {
    let repo = c.backup_repository()?;
    Ok(format!(
        "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  backup:\n    repository: {}\n    retentionFull: 2\n",
        repo.display()
    ))
}

/// Writes the formation file with backups and waits until the monitor took it in.
fn declare_backups(c: &Cluster) -> anyhow::Result<()> {
    c.write_formation("default.yaml", &with_backups(c)?)?;
    let t0 = Instant::now();
    loop {
        let shown = c.pgha_ok(&["show", "backups", "--monitor", &c.monitor_url])?;
        if shown.contains("Repository") {
            return Ok(());
        }
        anyhow::ensure!(t0.elapsed() < T, "the backup section never took: {shown}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for `text` in the monitor's metrics page.
async fn wait_metric(c: &Cluster, text: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let m = c.monitor_get("/metrics").await?;
        if m.contains(text) {
            return Ok(());
        }
        anyhow::ensure!(t0.elapsed() < T, "no {text:?} in the metrics");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Forces the primary to finish its WAL segment (so the archiver has one to push).
async fn switch_wal(c: &Cluster, i: usize) -> anyhow::Result<String> {
    let db = c.connect_node(i).await?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS wal_filler (x int); INSERT INTO wal_filler VALUES (1)",
    )
    .await?;
    let row = db
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_archiving_follow_the_primary_across_switchover_and_failover() {
    scenario(async |c| {
        declare_backups(c)?;
        c.bootstrap_two()?;
        let m = c.join_url.clone();
        let probe = c.write_probe().await?;

        // A full backup on the primary, followed to its end by the CLI.
        let t0 = Instant::now();
        let out = c.pgha_ok(&["backup", "--type", "full", "--monitor", &m])?;
        println!("full backup in {:?}:\n{out}", t0.elapsed());
        anyhow::ensure!(out.contains("full"), "{out}");
        c.pgbackrest(0, &["check"])?;

        // Switchover: node_b archives from its first segment on the new timeline.
        c.pgha_ok(&["perform", "switchover", "--monitor", &m])?;
        c.wait_for(&[("node_b", Primary), ("node_a", Secondary)], T)?;
        probe.wait_for_more(20, T).await?;
        c.pgbackrest(1, &["check"])?;

        // Failover: node_b's VM dies, node_a takes over and archives.
        c.kill_vm(1)?;
        c.wait_for(&[("node_a", WaitPrimary)], T)?;
        probe.wait_for_more(20, T).await?;
        let t1 = Instant::now();
        c.pgbackrest(0, &["check"])?;
        println!(
            "archive check passed on the new primary {:?} after the failover",
            t1.elapsed()
        );
        let seg = switch_wal(c, 0).await?;
        let shown = c.pgbackrest(0, &["info"])?;
        println!("{shown}");

        // A differential backup on the new timeline, on the new primary.
        let out = c.pgha_ok(&["backup", "--type", "diff", "--monitor", &m])?;
        println!("{out}");
        let st = c.pgha_ok(&["show", "backups", "--json", "--monitor", &c.monitor_url])?;
        let v: serde_json::Value = serde_json::from_str(&st)?;
        let kinds: Vec<&str> = v["backups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["kind"].as_str())
            .collect();
        anyhow::ensure!(kinds == ["full", "diff"], "backups: {kinds:?}");
        wait_metric(
            c,
            "pgha_archive_failing{formation=\"default\",node=\"node_a\"} 0",
        )
        .await?;
        let metrics = c.monitor_get("/metrics").await?;
        anyhow::ensure!(
            metrics.contains(
                "pgha_archive_last_success_age_seconds{formation=\"default\",node=\"node_a\"}"
            ),
            "no archive age metric"
        );
        let events = c.pgha_ok(&[
            "show",
            "events",
            "--count",
            "100",
            "--monitor",
            &c.monitor_url,
        ])?;
        anyhow::ensure!(
            events.contains("operator_backup") && events.contains("backup_succeeded"),
            "{events}"
        );
        println!("last segment switched: {seg}");
        let r = probe.finish_without_loss().await?;
        println!("write probe: {r:?}");

        // Bad requests say why: a backup with no running primary's peer is fine, but
        // an unknown type is refused by the CLI.
        let (ok, _, err) = c.pgha(&["backup", "--type", "weekly", "--monitor", &m])?;
        anyhow::ensure!(!ok && err.contains("full, diff or incr"), "{err}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_archive_is_an_event_a_metric_and_a_warning_until_it_works() {
    scenario(async |c| {
        declare_backups(c)?;
        c.bootstrap_two()?;
        let m = c.join_url.clone();
        c.pgha_ok(&["backup", "--type", "full", "--monitor", &m])?;
        let archive = c.path().join("backups/archive").join(pgha_e2e::STANZA);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&archive)?.permissions().mode();
        // The repository turns unwritable (a full or read-only mount would do the same).
        std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o000))?;
        let t0 = Instant::now();
        let failed_seg = switch_wal(c, 0).await?;
        let res = async {
            wait_metric(
                c,
                "pgha_archive_failing{formation=\"default\",node=\"node_a\"} 1",
            )
            .await?;
            println!(
                "archive failure seen in the metrics {:?} after the segment switch",
                t0.elapsed()
            );
            let shown = c.pgha_ok(&["show", "state", "--monitor", &c.monitor_url])?;
            println!("{shown}");
            anyhow::ensure!(
                shown.contains("archiving WAL to the backup repository fails")
                    && shown.contains("pgBackRest:"),
                "{shown}"
            );
            let events = c.pgha_ok(&[
                "show",
                "events",
                "--count",
                "50",
                "--monitor",
                &c.monitor_url,
            ])?;
            anyhow::ensure!(events.contains("archive_failing"), "{events}");
            anyhow::Ok(())
        }
        .await;
        std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(mode))?;
        res?;
        let t1 = Instant::now();
        wait_metric(
            c,
            "pgha_archive_failing{formation=\"default\",node=\"node_a\"} 0",
        )
        .await?;
        println!(
            "archiving works again {:?} after the repository was fixed",
            t1.elapsed()
        );
        let events = c.pgha_ok(&[
            "show",
            "events",
            "--count",
            "50",
            "--monitor",
            &c.monitor_url,
        ])?;
        anyhow::ensure!(events.contains("archive_recovered"), "{events}");
        // No gap: the segment that failed is in the repository, and the archive checks.
        let found = walk_names(&archive)
            .iter()
            .any(|n| n.starts_with(&failed_seg));
        anyhow::ensure!(found, "segment {failed_seg} is not in the repository");
        c.pgbackrest(0, &["check"])?;
        Ok(())
    })
    .await;
}

/// File names under `dir`, recursively.
fn walk_names(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_names(&p));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}
