//! The formation file as the source of truth, on a running formation: a reload-only
//! setting and a candidate priority converge on every node; a restart-only setting is
//! reported as pending; a broken file is rejected (event, metric, show state) while the
//! running formation stays as it was; an undeclared node is refused and nothing of it
//! is stored.

use pgha_api::NodeState::*;
use pgha_e2e::wait::{eventually, eventually_async, until};
use pgha_e2e::{Cluster, scenario};
use std::ops::ControlFlow::{Break, Continue};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn formation_yaml(c: &Cluster, params: &str, b_priority: u32) -> String {
    format!(
        "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  postgresql:\n    parameters:\n{params}  nodes:\n    - name: node_a\n      host: 127.0.0.1\n      port: {}\n    - name: node_b\n      host: 127.0.0.1\n      port: {}\n      candidatePriority: {b_priority}\n",
        c.nodes[0].port, c.nodes[1].port
    )
}

/// Waits until every node applied the formation's current generation; returns it and
/// how long that took.
fn wait_applied(c: &Cluster, after: u64) -> anyhow::Result<(u64, Duration)> {
    let t0 = Instant::now();
    eventually(Duration::from_secs(30), "the generation applied", || {
        let st = c.state()?;
        let applied = st
            .nodes
            .iter()
            .all(|n| n.applied_generation == st.generation);
        Ok(if st.generation > after && applied {
            Break((st.generation, t0.elapsed()))
        } else {
            Continue(format!(
                "generation {}: {:?}",
                st.generation,
                st.nodes
                    .iter()
                    .map(|n| (&n.name, n.applied_generation, &n.last_error))
                    .collect::<Vec<_>>()
            ))
        })
    })
}

async fn setting(c: &Cluster, i: usize, name: &str) -> anyhow::Result<String> {
    let db = c.connect_node(i).await?;
    Ok(db.query_one(&format!("SHOW {name}"), &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formation_file_changes_converge_and_bad_files_change_nothing() {
    scenario(async |c| {
        c.bootstrap_two()?;
        let g0 = c.state()?.generation;

        // A reload-only setting reaches every node.
        c.write_formation(
            "default.yaml",
            &formation_yaml(c, "      work_mem: 12MB\n", 50),
        )?;
        let (g1, took) = wait_applied(c, g0)?;
        println!("reload-only setting applied on every node in {took:?}");
        anyhow::ensure!(setting(c, 0, "work_mem").await? == "12MB");
        anyhow::ensure!(setting(c, 1, "work_mem").await? == "12MB");

        // A candidate priority flows to the node record.
        c.write_formation(
            "default.yaml",
            &formation_yaml(c, "      work_mem: 12MB\n", 0),
        )?;
        let (g2, took) = wait_applied(c, g1)?;
        println!("priority change applied in {took:?}");
        let st = c.state()?;
        let b = st.nodes.iter().find(|n| n.name == "node_b").unwrap();
        anyhow::ensure!(
            b.candidate_priority == 0,
            "priority not applied: {}",
            b.candidate_priority
        );

        // A setting that needs a restart rolls out: the standby restarts, then the
        // primary hands over in a switchover and restarts as a standby. No write is lost.
        let probe = pgha_e2e::WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(20, T).await?;
        let term = c.state()?.term;
        c.write_formation(
            "default.yaml",
            &formation_yaml(c, "      work_mem: 12MB\n      max_connections: 150\n", 50),
        )?;
        let (g3, _) = wait_applied(c, g2)?;
        let t0 = Instant::now();
        let st = eventually_async(Duration::from_secs(60), "the rolling restart", async || {
            let a = setting(c, 0, "max_connections").await.unwrap_or_default();
            let b = setting(c, 1, "max_connections").await.unwrap_or_default();
            let st = c.state()?;
            let pending = st.nodes.iter().any(|n| !n.pending_restart.is_empty());
            let steady = st
                .nodes
                .iter()
                .all(|n| n.reported_state == n.assigned_state)
                && st.nodes.iter().any(|n| n.assigned_state == Primary);
            Ok(if a == "150" && b == "150" && !pending && steady {
                Break(st)
            } else {
                Continue(format!("{a}/{b}, {}", st.summary))
            })
        })
        .await?;
        anyhow::ensure!(
            st.term == term + 1,
            "expected exactly one switchover, term {term} -> {}",
            st.term
        );
        println!("restart-only setting rolled out in {:?}", t0.elapsed());
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;

        // A broken file: rejected, visible, and the formation is untouched.
        c.write_formation(
            "default.yaml",
            "apiVersion: pgha/v1\nkind: Formation\nspec: [\n",
        )?;
        let st = eventually(Duration::from_secs(15), "the broken file reported", || {
            let st = c.state()?;
            Ok(if st.config_errors.is_empty() {
                Continue(st.summary)
            } else {
                Break(st)
            })
        })?;
        println!("config errors: {:?}", st.config_errors);
        anyhow::ensure!(st.generation == g3, "a broken file changed the generation");
        anyhow::ensure!(
            st.config_errors[0].starts_with("default.yaml:"),
            "{:?}",
            st.config_errors
        );
        anyhow::ensure!(setting(c, 0, "work_mem").await? == "12MB");
        let out = c.pgha_ok(&["show", "state", "--monitor", &c.monitor_url])?;
        anyhow::ensure!(
            out.contains("rejected (last good version in force): default.yaml:"),
            "{out}"
        );
        let events = c.pgha_ok(&[
            "show",
            "events",
            "--count",
            "30",
            "--monitor",
            &c.monitor_url,
        ])?;
        anyhow::ensure!(events.contains("config_rejected"), "{events}");
        let metrics = c.monitor_get("/metrics").await?;
        anyhow::ensure!(
            metrics.contains(r#"pgha_config_errors_total{file="default.yaml"} 1"#),
            "{metrics}"
        );
        let log = std::fs::read_to_string(c.path().join("monitor.log"))?;
        anyhow::ensure!(
            log.contains("formation file rejected: default.yaml:"),
            "not in the log"
        );

        // An undeclared node is refused; nothing of it is stored.
        let (ok, _, err) = c.pgha(&[
            "create",
            "postgres",
            "--pgdata",
            &c.path().join("node_x").display().to_string(),
            "--pgport",
            &pgha_e2e::free_port().to_string(),
            "--hostname",
            "127.0.0.1",
            "--dbname",
            "appdb",
            "--monitor",
            &c.join_url,
            "--name",
            "node_x",
        ])?;
        // The last good file declares node_a and node_b only.
        anyhow::ensure!(
            !ok && err.contains("not declared"),
            "undeclared node admitted: {err}"
        );
        anyhow::ensure!(c.state()?.nodes.len() == 2);
        anyhow::ensure!(!c.path().join("node_x.pgha").exists());

        // Fixed again: accepted, errors gone.
        c.write_formation(
            "default.yaml",
            &formation_yaml(c, "      work_mem: 16MB\n", 50),
        )?;
        wait_applied(c, g3)?;
        anyhow::ensure!(c.state()?.config_errors.is_empty());
        anyhow::ensure!(setting(c, 1, "work_mem").await? == "16MB");
        // The rolling restart made node_b primary; max_connections went back to its
        // default, a decrease a standby cannot take before its primary: node_a stays
        // startable (it keeps the primary's value) and node_b reports the restart it needs.
        c.wait_for(&[("node_b", Primary), ("node_a", Secondary)], T)?;
        let out = eventually(Duration::from_secs(20), "the decrease reported", || {
            let out = c.pgha_ok(&["show", "state", "--monitor", &c.monitor_url])?;
            Ok(
                if out.contains("node_b: pending restart for max_connections") {
                    Break(out)
                } else {
                    Continue(out)
                },
            )
        })?;
        println!("{out}");
        Ok(())
    })
    .await;
}

/// A formation with a join secret admits only nodes presenting it; the URL that `show
/// uri --dir` prints on the monitor carries it; the secret never shows in logs or events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_secret_admits_only_nodes_that_present_it() {
    scenario(async |c| {
        let secret_file = c.write_secret("gitops.secret", "s3cret-for-the-test")?;
        c.write_formation(
            "default.yaml",
            &format!(
                "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  admission:\n    joinSecretFile: {secret_file}\n"
            ),
        )?;
        let join_url = eventually(Duration::from_secs(5), "a join URL", || {
            let out = c.pgha_ok(&["show", "uri", "--json", "--dir", &c.monitor_dir().display().to_string()])?;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
            Ok(match rows.iter().find(|r| r["type"] == "join") {
                Some(r) => Break(r["uri"].as_str().unwrap_or_default().to_string()),
                None => Continue(out),
            })
        })?;
        anyhow::ensure!(join_url.contains("s3cret-for-the-test@"), "{join_url}");
        // Once the monitor loaded the file, the plain URL is refused.
        eventually(Duration::from_secs(15), "the formation file loaded", || {
            let g = c.state()?.generation;
            Ok(until(g >= 2, || format!("generation {g}")))
        })?;
        let (ok, _, err) = c.pgha(&[
            "create", "postgres", "--pgdata", &c.path().join("node_x").display().to_string(),
            "--pgport", &pgha_e2e::free_port().to_string(), "--hostname", "127.0.0.1",
            "--dbname", "appdb", "--monitor", &c.monitor_url, "--name", "node_x",
        ])?;
        anyhow::ensure!(!ok && err.contains("join secret"), "admitted without the secret: {err}");
        // With the join URL, a node registers and runs.
        c.join_url = join_url.clone();
        c.add_node("node_a")?;
        c.wait_for(&[("node_a", Single)], T)?;
        for log in ["monitor.log", "node_a.log"] {
            let text = std::fs::read_to_string(c.path().join(log))?;
            anyhow::ensure!(!text.contains("s3cret-for-the-test"), "the secret leaked into {log}");
        }
        let events = c.pgha_ok(&["show", "events", "--json", "--count", "100", "--monitor", &c.monitor_url])?;
        anyhow::ensure!(!events.contains("s3cret-for-the-test"), "the secret leaked into events");
        Ok(())
    })
    .await;
}

/// A node removed from the formation file is drained and dropped: its Postgres stops,
/// its PGDATA stays, its agent exits with 121, and the primary goes on alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_from_the_file_is_dropped() {
    scenario(async |c| {
        c.bootstrap_two()?;
        let node = |name: &str, port: u16| {
            format!("    - name: {name}\n      host: 127.0.0.1\n      port: {port}\n")
        };
        let head = "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  nodes:\n";
        c.write_formation(
            "default.yaml",
            &format!("{head}{}{}", node("node_a", c.nodes[0].port), node("node_b", c.nodes[1].port)),
        )?;
        let probe = pgha_e2e::WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(20, T).await?;
        c.write_formation("default.yaml", &format!("{head}{}", node("node_a", c.nodes[0].port)))?;
        eventually(Duration::from_secs(30), "node_b dropped", || {
            let st = c.state()?;
            Ok(until(st.nodes.len() == 1, || {
                format!("{:?}", st.nodes.iter().map(|n| (&n.name, n.assigned_state)).collect::<Vec<_>>())
            }))
        })?;
        // The last node left runs as single (no replication to wait for).
        c.wait_for(&[("node_a", Single)], T)?;
        // The agent exits with 121; Postgres is stopped; PGDATA stays.
        let mut agent = c.nodes[1].agent.take().expect("agent running");
        let status = eventually(Duration::from_secs(15), "the agent's exit", || {
            Ok(match agent.try_wait()? {
                Some(s) => Break(s),
                None => Continue("running".into()),
            })
        })?;
        anyhow::ensure!(status.code() == Some(121), "agent exited with {status:?}");
        anyhow::ensure!(c.nodes[1].pgdata.join("PG_VERSION").exists(), "PGDATA was removed");
        anyhow::ensure!(c.nodes[1].postmaster_pid().is_none(), "Postgres still runs");
        probe.wait_for_more(20, T).await?;
        probe.finish_without_loss().await?;
        let events = c.pgha_ok(&["show", "events", "--count", "30", "--monitor", &c.monitor_url])?;
        anyhow::ensure!(events.contains("node_removed"), "{events}");
        Ok(())
    })
    .await;
}

/// `maintenance: true` on the standby takes it out (Postgres stopped, the primary stops
/// waiting for it, writes go on); set back to false, it rejoins as a secondary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_from_the_file_takes_a_standby_out_and_back() {
    scenario(async |c| {
        c.bootstrap_two()?;
        let yaml = |maint: bool| {
            format!(
                "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  nodes:\n    - name: node_a\n      host: 127.0.0.1\n      port: {}\n    - name: node_b\n      host: 127.0.0.1\n      port: {}\n      maintenance: {maint}\n",
                c.nodes[0].port, c.nodes[1].port
            )
        };
        let probe = pgha_e2e::WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(20, T).await?;
        c.write_formation("default.yaml", &yaml(true))?;
        c.wait_for(&[("node_a", WaitPrimary), ("node_b", Maintenance)], T)?;
        anyhow::ensure!(c.nodes[1].postmaster_pid().is_none(), "Postgres of node_b still runs");
        probe.wait_for_more(50, T).await?;
        c.write_formation("default.yaml", &yaml(false))?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        let report = probe.finish_without_loss().await?;
        println!("longest write gap: {:?}", report.max_gap);
        Ok(())
    })
    .await;
}

/// `noLoadBalance: true` on the standby (Patroni's `noloadbalance` tag): its `/replica`
/// answers 503 while it keeps streaming and `/read-only` still answers 200; set back to
/// false, `/replica` answers 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_load_balance_takes_a_standby_out_of_replica_checks_only() {
    scenario(async |c| {
        c.bootstrap_two()?;
        let yaml = |nlb: bool| {
            format!(
                "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  nodes:\n    - name: node_a\n      host: 127.0.0.1\n      port: {}\n    - name: node_b\n      host: 127.0.0.1\n      port: {}\n      noLoadBalance: {nlb}\n",
                c.nodes[0].port, c.nodes[1].port
            )
        };
        let b = c.index("node_b");
        let wait_replica = async |want: u16| -> anyhow::Result<()> {
            eventually_async(T, &format!("/replica of node_b answering {want}"), async || {
                let got = c.agent_get(b, "/replica").await?.0;
                Ok(until(got == want, || got.to_string()))
            })
            .await
        };
        wait_replica(200).await?;
        c.write_formation("default.yaml", &yaml(true))?;
        wait_replica(503).await?;
        anyhow::ensure!(c.agent_get(b, "/read-only").await?.0 == 200);
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        c.write_formation("default.yaml", &yaml(false))?;
        wait_replica(200).await?;
        Ok(())
    })
    .await;
}

/// With `--auth scram-sha-256`, the standby's base backup, streaming and pg_rewind
/// connections authenticate with SCRAM against a verifier the agent computed: the
/// replication password itself never reaches Postgres in SQL, nor its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_replication_runs_on_a_verifier_not_a_password() {
    scenario(async |c| {
        c.add_node_with("node_a", &["--auth", "scram-sha-256"])?;
        c.wait_for(&[("node_a", Single)], T)?;
        c.add_node_with("node_b", &["--auth", "scram-sha-256"])?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        // Local connections go through the Unix socket beside PGDATA (trusted).
        let socket_dir = format!("{}.pgha", c.nodes[0].pgdata.display());
        let db = pgha_e2e::probe::connect_one(
            &socket_dir,
            c.nodes[0].port,
            "postgres",
            Duration::from_secs(3),
        )
        .await?;
        let stored: String = db
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'pgha_replicator'",
                &[],
            )
            .await?
            .get(0);
        anyhow::ensure!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
        let streaming: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await?
            .get(0);
        anyhow::ensure!(streaming == 1, "{streaming} standbys streaming");
        let password = pgha_agent::AgentConfig::load(&c.nodes[0].pgdata)?.replication_password;
        anyhow::ensure!(password.len() >= 16, "no replication password");
        for i in 0..2 {
            let log = std::fs::read_to_string(format!(
                "{}.pgha/postgres.log",
                c.nodes[i].pgdata.display()
            ))?;
            anyhow::ensure!(
                !log.contains(&password),
                "the password is in a Postgres log"
            );
        }
        Ok(())
    })
    .await;
}
