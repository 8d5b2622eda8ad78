//! A standby formation for disaster recovery (`spec.standbyOf`): its leader is a
//! standby of another formation, its other nodes cascade from the leader; promoted on
//! purpose with `pgha formation promote`.

use pgha_api::NodeState::*;
use pgha_e2e::scenario;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

/// Formation `dr` follows formation `default` (node_a primary, node_b standby): dr_a
/// copies the source and streams from a standby of it, dr_b cascades from dr_a. The
/// source's primary VM is lost; the source fails over and `dr` follows the new
/// timeline with no rebuild. Then `pgha formation promote` makes dr_a writable, and
/// dr_b follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_formation_follows_its_source_across_a_failover_then_is_promoted() {
    scenario(async |c| {
        c.write_formation(
            "default.yaml",
            "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  nodes: []\n",
        )?;
        c.add_node("node_a")?;
        c.wait_for(&[("node_a", Single)], T)?;
        c.add_node("node_b")?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        let probe = c.write_probe().await?;
        standby_formation(c, "dr", &[0, 1], "")?;
        c.add_node_with("dr_a", &["--formation", "dr"])?;
        let leader_ready = |st: &pgha_api::FormationStatus| {
            st.nodes.iter().any(|n| {
                n.name == "dr_a"
                    && n.assigned_state.is_writable()
                    && n.reported_state == n.assigned_state
                    && n.in_recovery == Some(true)
            })
        };
        let st = c.wait_until_in("dr", "led by dr_a as a standby of the source", T, leader_ready)?;
        anyhow::ensure!(st.standby_of.is_some(), "show state does not say standby formation");
        c.add_node_with("dr_b", &["--formation", "dr"])?;
        c.wait_until_in("dr", "dr_b a secondary", T, |st| {
            leader_ready(st)
                && st.nodes.iter().any(|n| {
                    n.name == "dr_b" && n.assigned_state == Secondary && n.reported_state == Secondary
                })
        })?;
        let (dr_a, dr_b) = (c.index("dr_a"), c.index("dr_b"));
        let sender = async |i: usize| -> anyhow::Result<Option<i32>> {
            let db = c.connect_node(i).await?;
            Ok(db
                .query_opt("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'", &[])
                .await?
                .map(|r| r.get(0)))
        };
        anyhow::ensure!(
            sender(dr_b).await? == Some(c.nodes[dr_a].port as i32),
            "dr_b does not stream from dr_a"
        );
        anyhow::ensure!(
            sender(dr_a).await? == Some(c.nodes[1].port as i32),
            "dr_a does not stream from node_b, the source's standby: {:?}",
            sender(dr_a).await?
        );
        // The newest acknowledged write reaches the end of the chain.
        let lag = arrives(c, dr_b, probe.acked_ids(), "dr_b").await?;
        println!("a write on the source reached dr_b (source standby -> dr_a -> dr_b) in {} ms", lag.as_millis());
        // The source loses its primary's VM and fails over: dr follows.
        c.kill_vm(0)?;
        let t_cut = Instant::now();
        let new = c.wait_new_primary(&["node_a"], T)?;
        anyhow::ensure!(new == "node_b", "{new} promoted");
        probe.wait_for_more(30, T).await?;
        arrives(c, dr_b, probe.acked_ids(), "dr_b after the source's failover").await?;
        println!(
            "dr_b had a write of the source's new timeline {} ms after the source's primary was lost",
            t_cut.elapsed().as_millis()
        );
        let st = c.state_of("dr")?;
        anyhow::ensure!(
            st.nodes.iter().all(|n| !n.rebuilding),
            "a dr node was rebuilt: {st:?}"
        );
        // dr loses its leader's VM: dr_b leads and follows the source in its place.
        c.kill_vm(dr_a)?;
        let t0 = Instant::now();
        c.wait_until_in("dr", "led by dr_b", T, |st| {
            st.nodes.iter().any(|n| {
                n.name == "dr_b"
                    && n.assigned_state.is_writable()
                    && n.reported_state == n.assigned_state
                    && n.in_recovery == Some(true)
            })
        })?;
        probe.wait_for_more(30, T).await?;
        arrives(c, dr_b, probe.acked_ids(), "dr_b as dr's leader").await?;
        println!(
            "dr_b leads dr and has the source's newest write {} ms after dr_a's VM was lost",
            t0.elapsed().as_millis()
        );
        let report = probe.finish_without_loss().await?;
        // Promoted on purpose: dr_b becomes writable; dr_a, back, follows it.
        let t0 = Instant::now();
        let m = c.join_url.clone();
        c.pgha_ok(&["formation", "promote", "--formation", "dr", "--monitor", &m])?;
        let took = t0.elapsed();
        let b = c.connect_node(dr_b).await?;
        b.execute("INSERT INTO write_probe (id) VALUES ($1)", &[&-1i64])
            .await?;
        println!(
            "pgha formation promote: dr_b writable in {:.2} s (timeline {}); the source lost nothing ({} writes)",
            took.as_secs_f64(),
            b.query_one(
                "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
                &[]
            )
                .await?
                .get::<_, i32>(0),
            report.acked
        );
        let st = c.state_of("dr")?;
        anyhow::ensure!(st.standby_of.is_none() && st.promoted_over_file, "{st:?}");
        c.start_agent(dr_a)?;
        arrives(c, dr_a, vec![-1], "dr_a, back as dr_b's standby").await?;
        // The old source is demoted into a standby formation of dr: its primary is
        // stopped, rewound onto dr and follows it.
        standby_formation(c, "default", &[dr_a, dr_b], "")?;
        let t0 = Instant::now();
        c.wait_until_in("default", "led by node_b as a standby of dr", T, |st| {
            st.standby_of.is_some()
                && st.nodes.iter().any(|n| {
                    n.name == "node_b"
                        && n.in_recovery == Some(true)
                        && n.pg_running
                        && n.reported_state == n.assigned_state
                })
        })?;
        b.execute("INSERT INTO write_probe (id) VALUES ($1)", &[&-2i64])
            .await?;
        arrives(c, 1, vec![-2], "node_b after its demotion").await?;
        println!(
            "formation default demoted: node_b rewound onto dr and follows it ({:.1} s)",
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    })
    .await;
}

/// How long until the last of `acked` is on node `i`.
async fn arrives(
    c: &pgha_e2e::Cluster,
    i: usize,
    acked: Vec<i64>,
    what: &str,
) -> anyhow::Result<Duration> {
    let id = *acked.last().unwrap_or(&0);
    let t0 = Instant::now();
    loop {
        if let Ok(db) = c.connect_node(i).await
            && let Ok(r) = db
                .query_one("SELECT count(*) FROM write_probe WHERE id = $1", &[&id])
                .await
            && r.get::<_, i64>(0) == 1
        {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(t0.elapsed() < T, "write {id} never reached {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `scram-sha-256` the standby formation takes the source's replication password
/// (`standbyOf.passwordFile`, from `pgha show replication-password` on the source):
/// dr_a's base backup and stream from the source, and dr_b's from dr_a (whose
/// replication role comes from the source), authenticate with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_formation_with_scram_authenticates_with_the_sources_password() {
    scenario(async |c| {
        let scram = ["--auth", "scram-sha-256"];
        c.add_node_with("node_a", &scram)?;
        c.wait_for(&[("node_a", Single)], T)?;
        c.add_node_with("node_b", &scram)?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        let m = c.join_url.clone();
        let password = c.pgha_ok(&[
            "show",
            "replication-password",
            "--formation",
            "default",
            "--monitor",
            &m,
        ])?;
        anyhow::ensure!(password.trim().len() >= 16, "no password printed");
        let file = c.write_secret("source-replication-password", &password)?;
        standby_formation(c, "dr", &[0, 1], &format!("    passwordFile: {file}\n"))?;
        c.add_node_with("dr_a", &["--formation", "dr", scram[0], scram[1]])?;
        c.add_node_with("dr_b", &["--formation", "dr", scram[0], scram[1]])?;
        c.wait_until_in("dr", "dr_a leading, dr_b streaming from it", T, |st| {
            st.nodes.iter().any(|n| {
                n.name == "dr_a"
                    && n.assigned_state.is_writable()
                    && n.reported_state == n.assigned_state
                    && n.in_recovery == Some(true)
            }) && st.nodes.iter().any(|n| {
                n.name == "dr_b"
                    && n.reported_state == Secondary
                    && n.upstream.as_deref() == Some("dr_a")
            })
        })?;
        // A write on the source reaches dr_b (through the Unix sockets: trusted).
        let socket = |i: usize| format!("{}.pgha", c.nodes[i].pgdata.display());
        let connect = async |i: usize| {
            pgha_e2e::probe::connect_one(
                &socket(i),
                c.nodes[i].port,
                "appdb",
                Duration::from_secs(3),
            )
            .await
        };
        connect(0)
            .await?
            .batch_execute("CREATE TABLE dr_check (x int); INSERT INTO dr_check VALUES (42)")
            .await?;
        let t0 = Instant::now();
        loop {
            if let Ok(db) = connect(3).await
                && let Ok(r) = db.query_one("SELECT count(*) FROM dr_check", &[]).await
                && r.get::<_, i64>(0) == 1
            {
                break;
            }
            anyhow::ensure!(t0.elapsed() < T, "the source's write never reached dr_b");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "scram: the source's write reached dr_b in {} ms",
            t0.elapsed().as_millis()
        );
        Ok(())
    })
    .await;
}

/// Writes formation `name`'s file as a standby formation of nodes `sources` (with
/// `extra` lines under `standbyOf`), and waits until the monitor has it.
fn standby_formation(
    c: &pgha_e2e::Cluster,
    name: &str,
    sources: &[usize],
    extra: &str,
) -> anyhow::Result<()> {
    let hosts: Vec<String> = sources
        .iter()
        .map(|&i| format!("\"{}:{}\"", c.nodes[i].host, c.nodes[i].port))
        .collect();
    c.write_formation(
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: {name}\nspec:\n  standbyOf:\n    hosts: [{}]\n{extra}  nodes: []\n",
            hosts.join(", ")
        ),
    )?;
    c.wait_until_in(name, "loaded from its file", T, |st| {
        st.standby_of.is_some()
    })?;
    Ok(())
}
