//! The tutorial (`seed-azure-tutorial.rst`), end to end, with pgha: monitor, nodes A and
//! B, a million rows through the URI, a switchover, B's VM lost (kill -9 of agent and
//! postmaster), writes on the survivor, B back, two million rows on both nodes. A write
//! probe runs throughout and every acknowledged write must survive.

use pgha_api::NodeState::*;
use pgha_e2e::{Cluster, WriteProbe, probe};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

async fn count(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM foo", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_switchover_vm_loss_and_rejoin() {
    let mut c = Cluster::start().unwrap();
    let res = run(&mut c).await;
    if let Err(e) = &res {
        c.dump_logs();
        panic!("{e:#}");
    }
}

/// The same walk with the monitor as a group of three controllers on etcd (`create
/// monitor --store etcd`): nodes and the CLI use the group's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_on_three_controllers_over_etcd() {
    let mut c = Cluster::start_group(3).unwrap();
    let res = run(&mut c).await;
    if let Err(e) = &res {
        c.dump_logs();
        panic!("{e:#}");
    }
}

async fn run(c: &mut Cluster) -> anyhow::Result<()> {
    // As a newcomer runs it: `create postgres` with its default authentication, which
    // must be scram-sha-256 (the first security review made it so; `--auth trust` is
    // the tutorial's throwaway choice, not the default).
    c.auth_default = true;
    c.add_node("node_a")?;
    c.wait_for(&[("node_a", Single)], T)?;
    let hba = std::fs::read_to_string(c.nodes[0].pgdata.join("pg_hba.conf"))?;
    let cfg = pgha_agent::AgentConfig::load(&c.nodes[0].pgdata)?;
    anyhow::ensure!(
        cfg.auth.hba_name() == "scram-sha-256",
        "create postgres defaults to {} (pg_hba.conf:\n{hba})",
        cfg.auth.hba_name()
    );
    // The application role's password, set over the node's own Unix socket (local
    // connections are trusted), as a DBA does after `create postgres`.
    {
        let socket_dir = format!("{}.pgha", c.nodes[0].pgdata.display());
        let local = probe::connect_one(
            &socket_dir,
            c.nodes[0].port,
            "postgres",
            Duration::from_secs(3),
        )
        .await?;
        local
            .batch_execute("ALTER ROLE postgres PASSWORD 'tutorial-password'")
            .await?;
    }
    probe::use_password("tutorial-password");
    c.add_node("node_b")?;
    c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;

    let state = c.pgha_ok(&["show", "state", "--monitor", &c.monitor_url])?;
    println!("{state}");
    assert!(
        state.contains("read-write") && state.contains("read-only"),
        "{state}"
    );

    let uri = c.uri()?;
    assert!(uri.contains("target_session_attrs=read-write"), "{uri}");
    let db = probe::connect_read_write(&uri, Duration::from_secs(3)).await?;
    // The major under test (PGHA_E2E_MAJOR; Debian's 15 by default) is what runs.
    let version: String = db.query_one("SHOW server_version_num", &[]).await?.get(0);
    let want = std::env::var("PGHA_E2E_MAJOR").unwrap_or_else(|_| "15".into());
    anyhow::ensure!(
        version.starts_with(&want),
        "PostgreSQL {version} runs, PGHA_E2E_MAJOR={want}"
    );
    println!("PostgreSQL {version}");
    db.batch_execute("CREATE TABLE foo AS SELECT generate_series(1, 1000000) bar")
        .await?;
    drop(db);

    let probe = WriteProbe::start(&uri, Duration::from_millis(10)).await?;
    probe.wait_for_more(20, T).await?;

    // Switchover: B becomes primary.
    let t = Instant::now();
    let out = c.pgha(&["perform", "switchover", "--monitor", &c.join_url])?;
    assert!(out.0, "switchover failed: {}", out.2);
    c.wait_for(&[("node_b", Primary), ("node_a", Secondary)], T)?;
    probe.wait_for_more(20, T).await?;
    println!(
        "switchover write gap: {:?}",
        probe.gap_around(t, Instant::now())
    );
    let db = probe::connect_read_write(&uri, Duration::from_secs(3)).await?;
    assert_eq!(count(&db).await, 1_000_000);
    drop(db);

    // B's VM stops: agent and postmaster killed together.
    let t = Instant::now();
    c.kill_vm(1)?;
    c.wait_for(&[("node_a", WaitPrimary)], T)?;
    probe.wait_for_more(20, T).await?;
    println!(
        "failover write gap: {:?}",
        probe.gap_around(t, Instant::now())
    );

    let db = probe::connect_read_write(&uri, Duration::from_secs(3)).await?;
    db.batch_execute("INSERT INTO foo SELECT generate_series(1000001, 2000000)")
        .await?;
    drop(db);

    // B comes back and rejoins as a standby.
    c.start_agent(1)?;
    c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
    let report = probe.finish_without_loss().await?;
    assert!(report.acked > 60);

    // Every row on both nodes (wait for B to replay).
    let a = c.connect_node(0).await?;
    assert_eq!(count(&a).await, 2_000_000);
    let probe_rows: i64 = a
        .query_one("SELECT count(*) FROM write_probe", &[])
        .await?
        .get(0);
    let t0 = Instant::now();
    loop {
        let b = c.connect_node(1).await?;
        let n = count(&b).await;
        let p: i64 = b
            .query_one("SELECT count(*) FROM write_probe", &[])
            .await?
            .get(0);
        if n == 2_000_000 && p == probe_rows {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < T,
            "node_b has {n} rows of foo and {p} probe rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The README's first command runs `pgha demo`: it must work as a newcomer runs it
/// (the bare `create monitor` URL, the operator URL from `show uri`, a switchover).
#[test]
fn the_demo_runs_to_the_end() {
    // A base port whose neighbours the demo uses (monitor, +1, +2, +11, +12) are free.
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let base = (0..50)
        .map(|_| pgha_e2e::free_port())
        .find(|&b| b < 65_000 && [0, 1, 2, 11, 12].iter().all(|d| free(b + d)))
        .expect("a free port range");
    let dir = tempfile::Builder::new()
        .prefix("pgha-e2e-demo-")
        .tempdir()
        .expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let out = std::process::Command::new(pgha_e2e::pgha_bin())
        .args([
            "demo",
            "--rows",
            "1000",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir.path().join("demo"))
        .output()
        .expect("running pgha demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("demo done"),
        "pgha demo failed:\n{stdout}\n{stderr}"
    );
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("switchover done"), "{all}");
    assert!(all.contains("FROM foo on the new primary"), "{all}");
}
