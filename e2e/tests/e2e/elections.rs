//! Elections with three and four nodes, after pg_auto_failover's own multi-standby
//! suites (reference study §7.2): candidate priorities, fast-forward of a lagging
//! candidate from a priority-0 standby, cascading failures, writes that block with
//! `numberSyncStandbys: 1`, a primary and its quorum standby lost together (blocked,
//! then `--allow-data-loss`), maintenance, and drops down to a single node. A write
//! probe runs throughout; no acknowledged write may be lost unless an operator said so.

use pgha_api::NodeState::*;
use pgha_e2e::{Cluster, WriteProbe, scenario};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

/// Node `name` with a candidate priority.
fn add(c: &mut Cluster, name: &str, priority: u8) -> anyhow::Result<usize> {
    c.add_node_with(name, &["--candidate-priority", &priority.to_string()])
}

/// Starts nodes with the given priorities, the first one primary, and waits until all
/// others are secondaries.
fn formation(c: &mut Cluster, nodes: &[(&str, u8)]) -> anyhow::Result<()> {
    add(c, nodes[0].0, nodes[0].1)?;
    c.wait_for(&[(nodes[0].0, Single)], T)?;
    for (name, prio) in &nodes[1..] {
        add(c, name, *prio)?;
    }
    let want: Vec<(&str, pgha_api::NodeState)> = nodes
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, if i == 0 { Primary } else { Secondary }))
        .collect();
    c.wait_for(&want, T)?;
    Ok(())
}

fn show_state(c: &Cluster) -> anyhow::Result<String> {
    c.pgha_ok(&["show", "state", "--monitor", &c.monitor_url])
}

/// Kills the primary's VM and waits for a new primary among the others; prints the
/// write gap.
async fn fail_primary(
    c: &mut Cluster,
    probe: &WriteProbe,
    primary: &str,
    down: &[&str],
) -> anyhow::Result<String> {
    let i = c.index(primary);
    let t = Instant::now();
    c.kill_vm(i)?;
    let mut not = down.to_vec();
    not.push(primary);
    let new = c.wait_new_primary(&not, T)?;
    probe.wait_for_more(10, T).await?;
    println!(
        "{primary} lost: {new} promoted, write gap {:?}",
        probe.gap_around(t, Instant::now())
    );
    Ok(new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_candidate_fast_forwards_from_a_priority_zero_standby() {
    scenario(async |c| {
        formation(c, &[("node_a", 90), ("node_b", 90), ("node_c", 0)])?;
        let probe = c.write_probe().await?;

        // node_b stops receiving WAL; node_c acknowledges the commits meanwhile.
        let b = c.index("node_b");
        let receiver = c.stall_wal_receiver(b).await?;
        // A few writes, well within the 3 s after which its agent would call the
        // receiver stuck and the controller park node_b (it would be no candidate).
        probe.wait_for_more(30, T).await?;
        let (pos_b, pos_c) = (
            c.wal_position(b).await?,
            c.wal_position(c.index("node_c")).await?,
        );
        println!("node_b stalled at {pos_b}, node_c at {pos_c}");
        anyhow::ensure!(pos_b < pos_c, "node_b is not behind node_c");

        // The primary is lost; node_b's receiver ends without the WAL left in its socket.
        let t = Instant::now();
        c.kill_vm(c.index("node_a"))?;
        c.end_stalled_wal_receiver(receiver);
        let new = c.wait_new_primary(&["node_a"], T)?;
        anyhow::ensure!(new == "node_b", "{new} promoted instead of node_b (90)");
        probe.wait_for_more(20, T).await?;
        println!(
            "node_b fast-forwarded and promoted: write gap {:?}",
            probe.gap_around(t, Instant::now())
        );
        let events = c.events().await?;
        let ff = events
            .iter()
            .find(|e| e.assigned_state == Some(FastForward))
            .ok_or_else(|| anyhow::anyhow!("no fast_forward event"))?;
        println!("{}: {}", ff.rule, ff.description);
        anyhow::ensure!(ff.description.contains("node_c"), "{}", ff.description);
        anyhow::ensure!(
            !events
                .iter()
                .any(|e| e.node_name.as_deref() == Some("node_c")
                    && e.assigned_state.is_some_and(|s| s.is_writable())),
            "priority-0 node_c was promoted"
        );
        c.wait_for(&[("node_b", Primary), ("node_c", Secondary)], T)?;
        println!("{}", show_state(c)?);
        let report = probe.finish_without_loss().await?;
        println!("{} writes acknowledged, 0 lost", report.acked);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_90_90_70_0_and_cascading_failures() {
    scenario(async |c| {
        formation(
            c,
            &[
                ("node_a", 90),
                ("node_b", 90),
                ("node_c", 70),
                ("node_d", 0),
            ],
        )?;
        let probe = c.write_probe().await?;

        // A dies: the other priority-90 node wins.
        let p1 = fail_primary(c, &probe, "node_a", &[]).await?;
        anyhow::ensure!(p1 == "node_b", "{p1} promoted, node_b (90) expected");
        // B dies before A is back: C (70) wins over D (0); A, an old primary that
        // never streamed from B, does not hold the failover.
        let p2 = fail_primary(c, &probe, "node_b", &["node_a"]).await?;
        anyhow::ensure!(p2 == "node_c", "{p2} promoted, node_c (70) expected");
        // Both old primaries come back and rejoin as standbys of C.
        c.start_agent(c.index("node_a"))?;
        c.start_agent(c.index("node_b"))?;
        c.wait_for(
            &[
                ("node_c", Primary),
                ("node_a", Secondary),
                ("node_b", Secondary),
                ("node_d", Secondary),
            ],
            T,
        )?;
        probe.wait_for_more(20, T).await?;
        // C dies: a priority-90 node takes over again; then it dies too, with C back.
        let p3 = fail_primary(c, &probe, "node_c", &[]).await?;
        anyhow::ensure!(p3 == "node_a" || p3 == "node_b", "{p3} promoted");
        c.start_agent(c.index("node_c"))?;
        let other90 = if p3 == "node_a" { "node_b" } else { "node_a" };
        c.wait_for(
            &[(&p3, Primary), ("node_c", Secondary), (other90, Secondary)],
            T,
        )?;
        let p4 = fail_primary(c, &probe, &p3, &[]).await?;
        anyhow::ensure!(p4 == other90, "{p4} promoted, {other90} (90) expected");
        c.start_agent(c.index(&p3))?;
        c.wait_for(
            &[
                (&p4, Primary),
                (&p3, Secondary),
                ("node_c", Secondary),
                ("node_d", Secondary),
            ],
            T,
        )?;
        println!("{}", show_state(c)?);
        let events = c.events().await?;
        anyhow::ensure!(
            !events
                .iter()
                .any(|e| e.node_name.as_deref() == Some("node_d")
                    && e.assigned_state.is_some_and(|s| s.is_writable())),
            "priority-0 node_d was promoted"
        );
        let report = probe.finish_without_loss().await?;
        println!(
            "{} writes acknowledged over 4 failovers, 0 lost",
            report.acked
        );
        // Standbys followed each new primary and old primaries rejoined (pg_rewind)
        // without another base backup.
        for n in ["node_a", "node_b", "node_c", "node_d"] {
            let log = std::fs::read_to_string(c.path().join(format!("{n}.log")))?;
            let backups = log.matches("pg_basebackup upstream=").count();
            let rewinds = log.matches("pg_rewind upstream=").count();
            println!("{n}: {backups} base backup(s), {rewinds} rewind(s)");
            // node_a was created by initdb, the others by one base backup each.
            let want = if n == "node_a" { 0 } else { 1 };
            anyhow::ensure!(backups == want, "{n} took {backups} base backups");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_sync_standby_required_writes_block_until_the_file_says_zero() {
    scenario(async |c| {
        formation(c, &[("node_a", 50), ("node_b", 50), ("node_c", 50)])?;
        c.set_number_sync_standbys(1)?;
        let t0 = Instant::now();
        while c.state()?.number_sync_standbys != 1 {
            anyhow::ensure!(t0.elapsed() < T, "numberSyncStandbys 1 not applied");
            std::thread::sleep(Duration::from_millis(100));
        }
        let probe = c.write_probe().await?;

        // Both standbys are lost: the primary stays synchronous and writes block.
        c.kill_vm(c.index("node_b"))?;
        c.kill_vm(c.index("node_c"))?;
        let t0 = Instant::now();
        loop {
            let st = c.state()?;
            if st.summary.contains("writes on node_a block") {
                println!("show state says: {}", st.summary);
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < T,
                "no blocked writes reported: {}",
                st.summary
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let before = probe.acked();
        std::thread::sleep(Duration::from_secs(3));
        anyhow::ensure!(
            probe.acked() == before,
            "{} writes acknowledged without a synchronous standby",
            probe.acked() - before
        );
        let st = c.wait_for(&[("node_a", Primary)], T)?;
        anyhow::ensure!(
            st.nodes
                .iter()
                .all(|n| !n.assigned_state.is_writable() || n.name == "node_a")
        );
        println!("{}", show_state(c)?);

        // The operator accepts asynchronous writes: the primary turns wait_primary.
        c.set_number_sync_standbys(0)?;
        c.wait_for(&[("node_a", WaitPrimary)], T)?;
        probe.wait_for_more(20, T).await?;
        println!("writes resumed with numberSyncStandbys: 0");

        c.start_agent(c.index("node_b"))?;
        c.start_agent(c.index("node_c"))?;
        c.wait_for(
            &[
                ("node_a", Primary),
                ("node_b", Secondary),
                ("node_c", Secondary),
            ],
            T,
        )?;
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_quorum_standby_lost_together_need_allow_data_loss() {
    scenario(async |c| {
        formation(c, &[("node_a", 50), ("node_b", 50), ("node_c", 50)])?;
        let probe = c.write_probe().await?;

        c.kill_vm(c.index("node_a"))?;
        c.kill_vm(c.index("node_b"))?;
        // node_b may hold commits node_c lacks: no automatic promotion.
        let t0 = Instant::now();
        let blocked = loop {
            let st = c.state()?;
            // "failover blocked", or "promotion of node_c blocked" when node_a's loss
            // was seen a moment before node_b's.
            if st.summary.contains("blocked") {
                break st.summary;
            }
            anyhow::ensure!(t0.elapsed() < T, "failover not blocked: {}", st.summary);
            std::thread::sleep(Duration::from_millis(200));
        };
        println!("{blocked}");
        anyhow::ensure!(
            blocked.contains("may hold acknowledged commits"),
            "{blocked}"
        );
        std::thread::sleep(Duration::from_secs(3));
        let st = c.state()?;
        anyhow::ensure!(
            !st.nodes
                .iter()
                .any(|n| n.name == "node_c" && n.assigned_state.is_writable()),
            "node_c promoted although node_b may hold acknowledged commits"
        );
        let metrics = c.monitor_get("/metrics").await?;
        anyhow::ensure!(
            metrics.contains("pgha_failover_blocked{formation=\"default\",reason=\"quorum\"} 1"),
            "blocked metric missing"
        );

        // Operator actions need the operator's credential (the read one is refused).
        let (ok, _, err) = c.pgha(&[
            "perform",
            "failover",
            "--allow-data-loss",
            "--reason",
            "no secret",
            "--monitor",
            &c.monitor_url,
        ])?;
        anyhow::ensure!(!ok && err.contains("operator's credential"), "{err}");
        // The operator's forms: refused without the flag or without a reason.
        let m = c.join_url.clone();
        let (ok, _, err) = c.pgha(&["perform", "failover", "--monitor", &m])?;
        anyhow::ensure!(!ok && err.contains("--allow-data-loss"), "{err}");
        let (ok, _, err) =
            c.pgha(&["perform", "failover", "--allow-data-loss", "--monitor", &m])?;
        anyhow::ensure!(!ok && err.contains("--reason"), "{err}");
        let out = c.pgha(&[
            "perform",
            "failover",
            "--allow-data-loss",
            "--reason",
            "VMs of node_a and node_b lost with their disks (ticket 4711)",
            "--monitor",
            &m,
        ])?;
        anyhow::ensure!(out.0, "forced failover failed: {}", out.2);
        println!("{}", out.2);
        c.wait_for(&[("node_c", WaitPrimary)], T)?;
        probe.wait_for_more(20, T).await?;
        let events = c.events().await?;
        let forced = events
            .iter()
            .find(|e| e.rule == "operator_failover_allow_data_loss")
            .ok_or_else(|| anyhow::anyhow!("no event of the forced failover"))?;
        println!("event: {}", forced.description);
        let metrics = c.monitor_get("/metrics").await?;
        anyhow::ensure!(
            metrics.contains(
                "pgha_failovers_total{formation=\"default\",reason=\"operator_allow_data_loss\",result=\"succeeded\"} 1"
            ),
            "forced failover not counted by its reason"
        );
        anyhow::ensure!(forced.description.contains("ticket 4711"));

        // The lost nodes come back and rejoin the new primary.
        c.start_agent(c.index("node_a"))?;
        c.start_agent(c.index("node_b"))?;
        c.wait_for(
            &[
                ("node_c", Primary),
                ("node_a", Secondary),
                ("node_b", Secondary),
            ],
            T,
        )?;
        probe.wait_for_more(20, T).await?;
        let report = probe.finish().await?;
        println!(
            "{} writes acknowledged; {} lost (allowed by the operator)",
            report.acked,
            report.lost.len()
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_of_standbys_and_primary_then_drops_down_to_single() {
    scenario(async |c| {
        formation(c, &[("node_a", 50), ("node_b", 50), ("node_c", 50)])?;
        let probe = c.write_probe().await?;
        let m = c.join_url.clone();

        // One standby, then both: writes go on (numberSyncStandbys 0), the primary
        // turns asynchronous once no quorum standby is left.
        c.pgha_ok(&["enable", "maintenance", "--name", "node_b", "--monitor", &m])?;
        c.wait_for(&[("node_a", Primary), ("node_b", Maintenance)], T)?;
        probe.wait_for_more(20, T).await?;
        c.pgha_ok(&["enable", "maintenance", "--name", "node_c", "--monitor", &m])?;
        c.wait_for(
            &[
                ("node_a", WaitPrimary),
                ("node_b", Maintenance),
                ("node_c", Maintenance),
            ],
            T,
        )?;
        probe.wait_for_more(20, T).await?;
        // The primary has no candidate to hand over to: refused, even when allowed.
        let (ok, _, err) = c.pgha(&[
            "enable",
            "maintenance",
            "--name",
            "node_a",
            "--allow-failover",
            "--timeout",
            "10",
            "--monitor",
            &m,
        ])?;
        println!("primary maintenance without a candidate: {}", err.trim());
        anyhow::ensure!(
            !ok,
            "maintenance of the primary accepted without a candidate"
        );
        let st = c.state()?;
        anyhow::ensure!(
            st.nodes
                .iter()
                .any(|n| n.name == "node_a" && n.assigned_state == WaitPrimary),
            "node_a left its role"
        );
        probe.wait_for_more(10, T).await?;
        c.pgha_ok(&[
            "disable",
            "maintenance",
            "--name",
            "node_b",
            "--monitor",
            &m,
        ])?;
        c.pgha_ok(&[
            "disable",
            "maintenance",
            "--name",
            "node_c",
            "--monitor",
            &m,
        ])?;
        c.wait_for(
            &[
                ("node_a", Primary),
                ("node_b", Secondary),
                ("node_c", Secondary),
            ],
            T,
        )?;

        // Drop a standby, then the primary (it hands over first): the survivor is single.
        c.pgha_ok(&["drop", "node", "--name", "node_c", "--monitor", &m])?;
        probe.wait_for_more(20, T).await?;
        c.pgha_ok(&["drop", "node", "--name", "node_a", "--monitor", &m])?;
        let st = c.wait_for(&[("node_b", Single)], T)?;
        anyhow::ensure!(st.nodes.len() == 1, "{} nodes left", st.nodes.len());
        probe.wait_for_more(20, T).await?;
        println!("{}", show_state(c)?);
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_nodes_fail_over_and_a_tenth_is_refused() {
    scenario(async |c| {
        let names: Vec<String> = (1..=9).map(|i| format!("node_{i}")).collect();
        let nodes: Vec<(&str, u8)> = names.iter().map(|n| (n.as_str(), 50)).collect();
        formation(c, &nodes)?;
        // The primary's synchronous_standby_names lists all 8 (reloaded just after the
        // last standby turned secondary).
        let db = c.connect_node(0).await?;
        let t0 = Instant::now();
        loop {
            let ssn: String = db
                .query_one("SHOW synchronous_standby_names", &[])
                .await?
                .get(0);
            if ssn.starts_with("ANY 1 (") && ssn.matches("pgha_standby_").count() == 8 {
                println!("synchronous_standby_names on node_1: {ssn}");
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "{ssn}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let probe = c.write_probe().await?;
        let new = fail_primary(c, &probe, "node_1", &[]).await?;
        let want: Vec<(&str, pgha_api::NodeState)> = names[1..]
            .iter()
            .map(|n| (n.as_str(), if *n == new { Primary } else { Secondary }))
            .collect();
        c.wait_for(&want, T)?;
        // A tenth node is refused before anything of it is created.
        let (ok, _, err) = c.pgha(&[
            "create",
            "postgres",
            "--pgdata",
            &c.path().join("node_10").display().to_string(),
            "--pgport",
            &pgha_e2e::free_port().to_string(),
            "--hostname",
            "127.0.0.1",
            "--monitor",
            &c.join_url,
            "--name",
            "node_10",
            "--auth",
            "trust",
            "--no-ssl",
        ])?;
        println!("tenth node: {}", err.trim());
        anyhow::ensure!(
            !ok && err.contains("at most") || err.contains("most a formation holds"),
            "{err}"
        );
        anyhow::ensure!(!c.path().join("node_10").join("PG_VERSION").exists());
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}

/// A formation file declaring the cluster's nodes, naming `primary` when given.
fn declared(c: &Cluster, primary: Option<&str>) -> String {
    let nodes: String = c
        .nodes
        .iter()
        .map(|n| {
            format!(
                "    - name: {}\n      host: 127.0.0.1\n      port: {}\n",
                n.name, n.port
            )
        })
        .collect();
    let primary = primary
        .map(|p| format!("  primary: {p}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n{primary}  nodes:\n{nodes}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_formation_file_names_the_primary() {
    scenario(async |c| {
        formation(c, &[("node_a", 50), ("node_b", 50), ("node_c", 50)])?;
        let probe = c.write_probe().await?;
        let t = Instant::now();
        c.write_formation("default.yaml", &declared(c, Some("node_c")))?;
        c.wait_for(
            &[
                ("node_c", Primary),
                ("node_a", Secondary),
                ("node_b", Secondary),
            ],
            T,
        )?;
        probe.wait_for_more(20, T).await?;
        println!(
            "spec.primary: node_c -> primary in {:?}, write gap {:?}",
            t.elapsed(),
            probe.gap_around(t, Instant::now())
        );
        // Once per change of the file: a failover is not undone by itself.
        let p = fail_primary(c, &probe, "node_c", &[]).await?;
        c.start_agent(c.index("node_c"))?;
        c.wait_for(&[(&p, Primary), ("node_c", Secondary)], T)?;
        std::thread::sleep(Duration::from_secs(2));
        c.wait_for(&[(&p, Primary), ("node_c", Secondary)], T)?;
        // A new change of the file is carried out again.
        let next = if p == "node_a" { "node_b" } else { "node_a" };
        c.write_formation("default.yaml", &declared(c, Some(next)))?;
        c.wait_for(&[(next, Primary)], T)?;
        let events = c.events().await?;
        let why = format!("the formation file names {next} as primary");
        anyhow::ensure!(events.iter().any(|e| e.description.contains(&why)));
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;
        Ok(())
    })
    .await;
}
