//! Three nodes: bootstrap, a switchover, the primary's VM lost (the most advanced
//! standby is promoted, the other follows it without a base backup), and the old primary
//! rejoining. A write probe runs throughout; no acknowledged write may be lost.

use pgha_api::NodeState::*;
use pgha_e2e::scenario;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fail_over_and_rejoin() {
    scenario(async |c| {
        c.add_node("node_a")?;
        c.wait_for(&[("node_a", Single)], T)?;
        c.add_node("node_b")?;
        c.add_node("node_c")?;
        c.wait_for(
            &[
                ("node_a", Primary),
                ("node_b", Secondary),
                ("node_c", Secondary),
            ],
            T,
        )?;
        let st = c.state()?;
        println!(
            "{}",
            c.pgha_ok(&["show", "state", "--monitor", &c.monitor_url])?
        );
        anyhow::ensure!(st.nodes.len() == 3);
        // The replication role streams, rewinds and is probed without being a superuser
        // (the whole suite runs with it so).
        let db = c.connect_node(0).await?;
        let row = db
            .query_one(
                "SELECT rolsuper, rolreplication, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1",
                &[&pgha_api::REPLICATION_USER],
            )
            .await?;
        let (su, repl, cr, cd): (bool, bool, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
        anyhow::ensure!(
            !su && repl && !cr && !cd,
            "{}: superuser={su} replication={repl} createrole={cr} createdb={cd}",
            pgha_api::REPLICATION_USER
        );
        let probe = c.write_probe().await?;

        // Switchover to a standby.
        c.pgha_ok(&["perform", "switchover", "--monitor", &c.join_url])?;
        let st = c.state()?;
        let primary = st
            .nodes
            .iter()
            .find(|n| n.assigned_state == Primary)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        anyhow::ensure!(primary != "node_a", "switchover did not move the primary");
        probe.wait_for_more(20, T).await?;

        // The primary's VM is lost.
        let i = c.nodes.iter().position(|n| n.name == primary).unwrap();
        let t = Instant::now();
        c.kill_vm(i)?;
        let t0 = Instant::now();
        let new_primary = loop {
            let st = c.state()?;
            if let Some(n) = st.nodes.iter().find(|n| {
                n.name != primary
                    && n.assigned_state.is_writable()
                    && n.reported_state == n.assigned_state
            }) {
                break n.name.clone();
            }
            anyhow::ensure!(t0.elapsed() < T, "no new primary: {}", st.summary);
            std::thread::sleep(Duration::from_millis(100));
        };
        probe.wait_for_more(20, T).await?;
        println!(
            "failover to {new_primary}: write gap {:?}",
            probe.gap_around(t, Instant::now())
        );
        let other = ["node_a", "node_b", "node_c"]
            .into_iter()
            .find(|n| *n != primary && *n != new_primary)
            .unwrap();
        // The other standby follows the new primary (no base backup) and the formation
        // is synchronous again.
        c.wait_for(&[(&new_primary, Primary), (other, Secondary)], T)?;

        // The old primary comes back and rejoins.
        c.start_agent(i)?;
        c.wait_for(
            &[
                (&new_primary, Primary),
                (other, Secondary),
                (&primary, Secondary),
            ],
            T,
        )?;
        // A planned promotion of a chosen node.
        c.pgha_ok(&[
            "perform",
            "promotion",
            "--name",
            other,
            "--monitor",
            &c.join_url,
        ])?;
        c.wait_for(
            &[
                (other, Primary),
                (&new_primary, Secondary),
                (&primary, Secondary),
            ],
            T,
        )?;
        probe.wait_for_more(20, T).await?;

        // Maintenance from the CLI: a primary only with --allow-failover (it hands over).
        let m = &c.join_url;
        let (ok, _, err) = c.pgha(&["enable", "maintenance", "--name", other, "--monitor", m])?;
        anyhow::ensure!(!ok && err.contains("--allow-failover"), "{err}");
        c.pgha_ok(&[
            "enable",
            "maintenance",
            "--name",
            other,
            "--allow-failover",
            "--monitor",
            m,
        ])?;
        probe.wait_for_more(20, T).await?;
        c.pgha_ok(&["disable", "maintenance", "--name", other, "--monitor", m])?;
        // Drop a standby: the formation goes on with two nodes.
        c.pgha_ok(&["drop", "node", "--name", other, "--monitor", m])?;
        let st = c.state()?;
        anyhow::ensure!(
            st.nodes.len() == 2,
            "{:?}",
            st.nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
        );
        anyhow::ensure!(st.nodes.iter().any(|n| n.assigned_state == Primary));
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;
        let logs = std::fs::read_to_string(c.path().join(format!("{other}.log")))?;
        anyhow::ensure!(
            logs.matches("pg_basebackup").count() == 1,
            "{other} took another base backup to follow the new primary"
        );
        Ok(())
    })
    .await;
}

/// The WAL receiver's sender port on node `i` (None: not streaming).
async fn streams_from(c: &pgha_e2e::Cluster, i: usize) -> anyhow::Result<Option<i32>> {
    let db = c.connect_node(i).await?;
    let row = db
        .query_opt(
            "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &[],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

async fn wait_streams_from(
    c: &pgha_e2e::Cluster,
    i: usize,
    from: usize,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let want = c.nodes[from].port as i32;
    loop {
        let now = streams_from(c, i).await.ok().flatten();
        if now == Some(want) {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(
            t0.elapsed() < T,
            "{} streams from port {now:?}, not {} ({want})",
            c.nodes[i].name,
            c.nodes[from].name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `replicateFrom`: node_c streams from node_b (a cascading standby), and the primary
/// keeps no slot for it; with node_b's VM gone, node_c streams from the primary, and
/// no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascading_standby_streams_from_its_upstream_and_falls_back_to_the_primary() {
    scenario(async |c| {
        c.bootstrap_three()?;
        let node = |name: &str, port: u16, extra: &str| {
            format!("    - name: {name}\n      host: 127.0.0.1\n      port: {port}\n{extra}")
        };
        let yaml = format!(
            "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  nodes:\n{}{}{}",
            node("node_a", c.nodes[0].port, ""),
            node("node_b", c.nodes[1].port, ""),
            node("node_c", c.nodes[2].port, "      replicateFrom: node_b\n"),
        );
        c.write_formation("default.yaml", &yaml)?;
        let probe = c.write_probe().await?;
        let took = wait_streams_from(c, 2, 1).await?;
        println!("node_c streams from node_b {took:?} after the file said so");
        let a = c.connect_node(0).await?;
        let t0 = Instant::now();
        loop {
            let slots: Vec<String> = a
                .query("SELECT slot_name::text FROM pg_replication_slots", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !slots.iter().any(|s| s == "pgha_slot_3") {
                println!("slots on the primary: {slots:?}");
                break;
            }
            anyhow::ensure!(t0.elapsed() < T, "the primary keeps node_c's slot: {slots:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let b = c.connect_node(1).await?;
        let n: i64 = b
            .query_one("SELECT count(*) FROM pg_stat_replication", &[])
            .await?
            .get(0);
        anyhow::ensure!(n == 1, "node_b feeds {n} standbys");
        let st = c.state()?;
        let shown = c.pgha_ok(&["show", "topology", "--monitor", &c.monitor_url])?;
        println!("{shown}");
        anyhow::ensure!(
            st.nodes.iter().any(|n| n.name == "node_c" && n.upstream.as_deref() == Some("node_b")),
            "{:?}",
            st.nodes.iter().map(|n| (&n.name, &n.upstream)).collect::<Vec<_>>()
        );

        c.kill_vm(1)?;
        let took = wait_streams_from(c, 2, 0).await?;
        println!("node_b gone: node_c streams from node_a {took:?} later");
        probe.wait_for_more(20, T).await?;
        let r = probe.finish_without_loss().await?;
        println!("write probe: {r:?}");
        Ok(())
    })
    .await;
}
