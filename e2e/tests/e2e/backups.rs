//! Backups with a real pgBackRest and a repository on local disk: archiving follows the
//! primary across a switchover and a failover, backups are taken on whichever node is
//! primary, and an archive that fails is an event, a metric and a `show state` line
//! until it works again.

use anyhow::Context;
use pgha_api::NodeState::*;
use pgha_e2e::{Cluster, scenario};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_archiving_follow_the_primary_across_switchover_and_failover() {
    scenario(async |c| {
        c.declare_backups("")?;
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
        let seg = c.switch_wal(0).await?;
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

        // Point-in-time recovery to a second after the failover, while writes go on.
        probe.wait_for_more(20, T).await?;
        let target = c.db_now(0).await?;
        probe.wait_for_more(20, T).await?;
        let r = probe.finish_without_loss().await?;
        println!("write probe: {r:?}");
        c.switch_wal(0).await?;
        let t2 = Instant::now();
        let i = c.restore_formation("restored", "default", Some(&target))?;
        println!("point-in-time recovery to {target} in {:?}", t2.elapsed());
        let original = probe_rows(c, 0).await?;
        let restored: Vec<i64> = probe_rows(c, i)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let k = *restored.last().context("nothing restored")?;
        let prefix: Vec<i64> = original
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id <= k)
            .collect();
        anyhow::ensure!(
            restored == prefix,
            "the restore is not the original up to id {k}: {} rows vs {}",
            restored.len(),
            prefix.len()
        );
        let at = |id: i64| original.iter().find(|(x, _)| *x == id).map(|(_, t)| *t);
        let target_s = epoch_of(c, 0, &target).await?;
        anyhow::ensure!(
            at(k).is_some_and(|t| t <= target_s),
            "row {k} was written after the target"
        );
        let next = original
            .iter()
            .find(|(id, _)| *id > k)
            .context("no row after the target")?;
        anyhow::ensure!(
            next.1 > target_s - 1.0,
            "row {} (at {}) was lost: the target is {target_s}",
            next.0,
            next.1
        );
        println!(
            "restored {} writes up to id {k}; the first one after the target ({}) is not there",
            restored.len(),
            next.0
        );

        // Bad requests say why: an unknown formation, a second backup while one runs,
        // an unknown type.
        let (ok, _, err) = c.pgha(&["backup", "--formation", "nosuch", "--monitor", &m])?;
        anyhow::ensure!(!ok && err.contains("does not exist"), "{err}");
        let first = c.pgha_spawn(&["backup", "--type", "full", "--monitor", &m])?;
        let t0 = Instant::now();
        loop {
            let shown = c.pgha_ok(&["show", "backups", "--monitor", &c.monitor_url])?;
            if shown.contains("asked: full backup 3")
                || shown.contains("full backup 3 on node_a, running")
            {
                break;
            }
            anyhow::ensure!(t0.elapsed() < T, "backup 3 never started: {shown}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (ok, _, err) = c.pgha(&["backup", "--type", "incr", "--monitor", &m])?;
        anyhow::ensure!(!ok && err.contains("still under way"), "{err}");
        println!("{}", err.trim());
        let out = first.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (ok, _, err) = c.pgha(&["backup", "--type", "weekly", "--monitor", &m])?;
        anyhow::ensure!(!ok && err.contains("full, diff or incr"), "{err}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_archive_is_an_event_a_metric_and_a_warning_until_it_works() {
    scenario(async |c| {
        c.declare_backups("")?;
        c.bootstrap_two()?;
        let m = c.join_url.clone();
        c.pgha_ok(&["backup", "--type", "full", "--monitor", &m])?;
        let archive = c.path().join("backups/archive").join(pgha_e2e::STANZA);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&archive)?.permissions().mode();
        // The repository turns unwritable (a full or read-only mount would do the same).
        std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o000))?;
        let t0 = Instant::now();
        let failed_seg = c.switch_wal(0).await?;
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

async fn epoch_of(c: &Cluster, i: usize, time: &str) -> anyhow::Result<f64> {
    let db = c.connect_node(i).await?;
    let row = db
        .query_one(
            "SELECT extract(epoch FROM $1::text::timestamptz)::float8",
            &[&time],
        )
        .await?;
    Ok(row.get(0))
}

/// The write probe's rows on node `i`: id and when its transaction started.
async fn probe_rows(c: &Cluster, i: usize) -> anyhow::Result<Vec<(i64, f64)>> {
    let db = c.connect_node(i).await?;
    let rows = db
        .query(
            "SELECT id, extract(epoch FROM at)::float8 FROM write_probe ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
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

/// The DBA's mistake: a dropped table, restored to the second before the DROP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_table_comes_back_with_a_restore_to_just_before() {
    scenario(async |c| {
        // The schedule takes the first full backup by itself (there is none yet).
        c.declare_backups("    schedule:\n      fullEvery: 7d\n")?;
        c.add_node("node_a")?;
        c.wait_for(&[("node_a", Single)], T)?;
        let db = c.connect_node(0).await?;
        db.batch_execute(
            "CREATE TABLE foo (id int PRIMARY KEY, note text); \
             INSERT INTO foo SELECT g, 'row ' || g FROM generate_series(1, 10000) g",
        )
        .await?;
        let t0 = Instant::now();
        loop {
            let shown = c.pgha_ok(&["show", "backups", "--monitor", &c.monitor_url])?;
            if shown.contains("full backup 1 on node_a, succeeded") {
                println!("{shown}");
                break;
            }
            anyhow::ensure!(t0.elapsed() < T, "no scheduled backup: {shown}");
            std::thread::sleep(Duration::from_millis(300));
        }
        let events = c.pgha_ok(&[
            "show",
            "events",
            "--count",
            "50",
            "--monitor",
            &c.monitor_url,
        ])?;
        anyhow::ensure!(events.contains("scheduled_backup"), "{events}");
        // Taken once: the next full one is due in a week.
        std::thread::sleep(Duration::from_secs(2));
        let shown = c.pgha_ok(&["show", "backups", "--monitor", &c.monitor_url])?;
        anyhow::ensure!(shown.contains("full backup 1 on"), "{shown}");
        db.batch_execute(
            "INSERT INTO foo SELECT g, 'later ' || g FROM generate_series(10001, 12000) g",
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = c.db_now(0).await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        db.batch_execute("DROP TABLE foo").await?;
        // A restore from a formation the repository does not know says so (and is
        // tried again every 10 s, not in a loop).
        c.start_restore("bad", "nosuch", None)?;
        let n = c.wait_first_node("bad", "saying why", T, |n| {
            n["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("nosuch"))
        })?;
        println!("{}", n["last_error"]);
        let log = std::fs::read_to_string(c.path().join("bad_1.log"))?;
        let tries = log
            .matches("point-in-time recovery from the backup repository")
            .count();
        anyhow::ensure!(tries <= 2, "{tries} tries in a few seconds");

        // The WAL up to the target is not archived yet (the segment is not full): the
        // restore says so and waits, and goes on once the source archives it.
        let i = c.start_restore("rescue", "default", Some(&before))?;
        let n = c.wait_first_node("rescue", "waiting for the archive", T, |n| {
            n["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("archive ends before the target"))
        })?;
        println!("{}", n["last_error"]);
        c.switch_wal(0).await?;
        let t0 = Instant::now();
        c.wait_first_node("rescue", "single", T, |n| n["reported_state"] == "single")?;
        println!(
            "restored {:?} after the source archived its WAL",
            t0.elapsed()
        );
        let r = c.connect_node(i).await?;
        let n: i64 = r.query_one("SELECT count(*) FROM foo", &[]).await?.get(0);
        anyhow::ensure!(n == 12_000, "foo has {n} rows after the restore");
        // The restored node is a primary of its own formation: it takes writes, and
        // archives into its own stanza.
        r.batch_execute("INSERT INTO foo VALUES (12001, 'after the restore')")
            .await?;
        let shown = c.pgha_ok(&[
            "show",
            "state",
            "--formation",
            "rescue",
            "--monitor",
            &c.monitor_url,
        ])?;
        println!("{shown}");
        Ok(())
    })
    .await;
}

/// A new standby of a formation with backups is restored from the repository and
/// replays the archive: the primary serves it no base backup, only the WAL since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_standby_is_built_from_the_repository_not_copied_from_the_primary() {
    scenario(async |c| {
        c.declare_backups("")?;
        c.add_node("node_a")?;
        c.wait_for(&[("node_a", Single)], T)?;
        c.allow_client(0)?;
        let m = c.join_url.clone();
        let db = c.connect_node(0).await?;
        db.batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, pad text); \
             INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g",
        )
        .await?;
        c.pgha_ok(&["backup", "--monitor", &m])?;
        // Writes after the backup: the standby finds them in the archive.
        db.batch_execute(
            "INSERT INTO big SELECT g, 'after' FROM generate_series(200001, 210000) g",
        )
        .await?;
        c.switch_wal(0).await?;

        // Watch the primary's walsenders while node_b joins: a base backup would show
        // as a walsender in state `backup`.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watch = {
            let db = c.connect_node(0).await?;
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen: Vec<(String, String)> = vec![];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(rows) = db
                        .query(
                            "SELECT application_name, state FROM pg_stat_replication",
                            &[],
                        )
                        .await
                    {
                        for r in rows {
                            let seen_now = (r.get(0), r.get(1));
                            if !seen.contains(&seen_now) {
                                seen.push(seen_now);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            })
        };
        let t0 = Instant::now();
        c.add_node("node_b")?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        println!("node_b joined from the repository in {:?}", t0.elapsed());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = watch.await?;
        println!("walsenders seen on the primary while node_b joined: {seen:?}");
        anyhow::ensure!(
            seen.iter().all(|(_, state)| state != "backup"),
            "a base backup ran on the primary: {seen:?}"
        );
        let log = std::fs::read_to_string(c.path().join("node_b.log"))?;
        anyhow::ensure!(
            log.contains("restored from the backup repository") && !log.contains("pg_basebackup"),
            "node_b was not restored from the repository"
        );
        let b = c.connect_node(1).await?;
        let n: i64 = b.query_one("SELECT count(*) FROM big", &[]).await?.get(0);
        anyhow::ensure!(n == 210_000, "node_b has {n} rows");
        Ok(())
    })
    .await;
}

/// Backups added to a running formation: `archive_mode` needs a restart, which rolls by
/// itself (the standby, then the primary after one switchover); then archiving works
/// and nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_added_to_a_running_formation_roll_in_with_one_switchover() {
    scenario(async |c| {
        c.bootstrap_two()?;
        let probe = c.write_probe().await?;
        probe.wait_for_more(20, T).await?;
        let t0 = Instant::now();
        c.declare_backups("")?;
        loop {
            let mut on = 0;
            // (Each node restarts on the way: a refused connection is "not yet".)
            for i in 0..2 {
                if let Ok(db) = c.connect_node(i).await
                    && let Ok(row) = db.query_one("SHOW archive_mode", &[]).await
                {
                    on += (row.get::<_, String>(0) == "on") as usize;
                }
            }
            if on == 2 {
                break;
            }
            anyhow::ensure!(t0.elapsed() < T, "archive_mode is not on everywhere");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let st = c.wait_for(&[("node_b", Primary), ("node_a", Secondary)], T)?;
        println!(
            "archive_mode on both nodes {:?} after the file changed",
            t0.elapsed()
        );
        let primary = c.index(
            &st.nodes
                .iter()
                .find(|n| n.assigned_state == Primary)
                .map(|n| n.name.clone())
                .unwrap_or_default(),
        );
        // The stanza comes from the new primary's agent; check retries until it is there.
        let t1 = Instant::now();
        loop {
            match c.pgbackrest(primary, &["check"]) {
                Ok(_) => break,
                Err(e) if t1.elapsed() < T => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
        let r = probe.finish_without_loss().await?;
        println!("write probe: {r:?}");
        let events = c.pgha_ok(&[
            "show",
            "events",
            "--count",
            "80",
            "--monitor",
            &c.monitor_url,
        ])?;
        let switchovers = events.matches("switchover_promote").count();
        anyhow::ensure!(switchovers == 1, "{switchovers} switchovers:\n{events}");
        Ok(())
    })
    .await;
}

/// The second review: `archive_command` ran pgBackRest in Postgres's cleared
/// environment, so credentials given to the agents (`PGBACKREST_*`, as docs/src/security.md
/// says) never reached it: archiving failed and WAL filled the disk. An encrypted
/// repository needs such a credential on every push (`repo1-cipher-pass`, refused in a
/// formation file): with the passphrase only in the agents' environment, archiving and
/// a backup work, and the node's pgbackrest.conf that carries it is 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_repository_takes_its_passphrase_from_the_agents_environment() {
    scenario(async |c| {
        let passphrase = "a-passphrase-only-the-agents-know";
        c.env
            .push(("PGBACKREST_REPO1_CIPHER_PASS".into(), passphrase.into()));
        c.declare_backups("    options:\n      repo1-cipher-type: aes-256-cbc\n")?;
        c.bootstrap_two()?;
        let m = c.join_url.clone();
        c.pgha_ok(&["backup", "--type", "full", "--monitor", &m])?;
        // archive-push of a new segment (from archive_command) and a check.
        c.switch_wal(0).await?;
        c.pgbackrest(0, &["check"])?;
        let info = c.pgbackrest(0, &["info"])?;
        anyhow::ensure!(info.contains("full backup"), "{info}");
        anyhow::ensure!(info.contains("aes-256-cbc"), "not encrypted: {info}");
        use std::os::unix::fs::PermissionsExt;
        let conf = pgha_agent::config::state_dir(&c.nodes[0].pgdata).join("pgbackrest.conf");
        let mode = std::fs::metadata(&conf)?.permissions().mode() & 0o777;
        anyhow::ensure!(mode == 0o600, "pgbackrest.conf is {mode:o}");
        // Nothing of it in the monitor's view.
        let state = c.pgha_ok(&["show", "state", "--json", "--monitor", &c.monitor_url])?;
        anyhow::ensure!(
            !state.contains(passphrase),
            "the passphrase is in show state"
        );
        Ok(())
    })
    .await;
}

/// The second review (item 10): object-store credentials live only in the agents'
/// environment, and `archive_command` runs in a cleared one. Against an S3-compatible
/// server on loopback (moto's, over TLS with the test's own CA): with the keys only in
/// the agents' environment, the stanza is created, WAL is archived from
/// `archive_command` and a full backup lands in the bucket; the keys appear nowhere in
/// the monitor's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_repository_takes_its_keys_from_the_agents_environment() {
    scenario(async |c| {
        let s3 = pgha_e2e::s3::S3Server::start(&c.path().join("s3"))?;
        let secret = "s3-secret-only-the-agents-know";
        c.env
            .push(("PGBACKREST_REPO1_S3_KEY".into(), "AKIAPGHATEST".into()));
        c.env
            .push(("PGBACKREST_REPO1_S3_KEY_SECRET".into(), secret.into()));
        c.declare_backups(&format!(
            "    options:\n      repo1-type: s3\n      repo1-s3-bucket: {}\n      repo1-s3-endpoint: localhost\n      repo1-storage-port: {}\n      repo1-s3-region: us-east-1\n      repo1-s3-uri-style: path\n      repo1-storage-ca-file: {}\n",
            pgha_e2e::s3::BUCKET,
            s3.port,
            s3.ca_file.display()
        ))?;
        c.bootstrap_two()?;
        let m = c.join_url.clone();
        c.pgha_ok(&["backup", "--type", "full", "--monitor", &m])?;
        let segment = c.switch_wal(0).await?;
        c.pgbackrest(0, &["check"])?;
        let info = c.pgbackrest(0, &["info"])?;
        anyhow::ensure!(info.contains("full backup"), "{info}");
        let prefix = c.backup_repository()?.display().to_string();
        let keys = s3.list(prefix.trim_start_matches('/'))?;
        anyhow::ensure!(
            keys.iter().any(|k| k.contains("/archive/") && k.contains(&segment)),
            "segment {segment} not archived to the bucket: {keys:?}"
        );
        anyhow::ensure!(
            keys.iter().any(|k| k.contains("/backup/") && k.ends_with("backup.manifest")),
            "no backup in the bucket: {keys:?}"
        );
        let state = c.pgha_ok(&["show", "state", "--json", "--monitor", &c.monitor_url])?;
        anyhow::ensure!(!state.contains(secret), "the S3 secret is in show state");
        Ok(())
    })
    .await;
}
