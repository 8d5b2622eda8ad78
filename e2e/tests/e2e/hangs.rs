//! A primary that hangs in part: its postmaster and agent stopped (SIGSTOP), its WAL
//! sender and backends running on, as when the postmaster hangs on a stuck disk or in
//! the kernel. No new connection is accepted, so every client that reconnects is
//! refused: it must be failed over, and its open sessions must not acknowledge a write
//! after the standby's promotion (the second security review found this case never
//! failed over: the standby dated its contact by keepalives, which the WAL sender kept
//! sending).

use pgha_api::NodeState::*;
use pgha_e2e::{Cluster, WriteProbe, scenario};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

/// Writes resume within this of a single fault (the bench measures the real figure).
const AVAILABLE_WITHIN: Duration = Duration::from_secs(20);

/// How the primary hangs.
#[derive(Clone, Copy, PartialEq)]
enum Hang {
    /// Postmaster and agent stopped.
    PostmasterAndAgent,
    /// Postmaster and agent stopped, and the controller restarted meanwhile.
    WithControllerRestart,
    /// The postmaster alone: the agent sees it and fences it.
    PostmasterUnderLiveAgent,
}

async fn partial_freeze(c: &mut Cluster, hang: Hang) -> anyhow::Result<()> {
    let restart_controller = hang == Hang::WithControllerRestart;
    let agent_too = hang != Hang::PostmasterUnderLiveAgent;
    c.bootstrap_two()?;
    let uri = c.uri()?;
    let setup = pgha_e2e::probe::connect_read_write(&uri, Duration::from_secs(3)).await?;
    setup
        .batch_execute("CREATE TABLE hang_probe (id int PRIMARY KEY)")
        .await?;
    // A client beside node_a, connected before the hang: its session outlives it.
    let beside = c.connect_node(0).await?;
    beside
        .batch_execute("INSERT INTO hang_probe VALUES (1)")
        .await?;
    let postmaster = c.nodes[0].postmaster_pid();
    let t0 = Instant::now();
    c.freeze_postmaster(0, true, agent_too)?;
    if restart_controller {
        c.kill_monitor();
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.start_monitor()?;
    }
    let r = async {
        c.wait_for(&[("node_b", WaitPrimary)], T)?;
        let promoted = t0.elapsed();
        // Writes through the formation URI work again.
        let probe = WriteProbe::start(&uri, Duration::from_millis(20)).await?;
        probe.wait_for_more(10, T).await?;
        let resumed = t0.elapsed();
        println!(
            "{} of the primary stopped at 0{}: node_b promoted after {:.2}s, writes through the URI after {:.2}s",
            if agent_too { "postmaster and agent" } else { "postmaster" },
            if restart_controller { ", controller restarted" } else { "" },
            promoted.as_secs_f64(),
            resumed.as_secs_f64()
        );
        anyhow::ensure!(
            resumed < AVAILABLE_WITHIN,
            "writes resumed only after {resumed:?}"
        );
        // The old primary's open session must not acknowledge a write now.
        let late = tokio::time::timeout(
            Duration::from_secs(3),
            beside.batch_execute("INSERT INTO hang_probe VALUES (2)"),
        )
        .await;
        anyhow::ensure!(
            !matches!(late, Ok(Ok(()))),
            "node_a acknowledged a write after node_b's promotion: split brain"
        );
        if !agent_too {
            // The live agent fenced it: the hung postmaster is gone, not just waited on.
            let pm = postmaster.expect("a postmaster ran");
            anyhow::ensure!(
                !pgha_agent::observe::process_alive(pm),
                "the hung postmaster {pm} still runs after node_b's promotion"
            );
        }
        Ok::<_, anyhow::Error>(probe)
    }
    .await;
    // Thawed whatever happened: node_a fences (its lease ran out), rejoins, and the
    // write it held was never acknowledged anywhere.
    c.freeze_postmaster(0, false, agent_too)?;
    let probe = r?;
    c.wait_for(&[("node_a", Secondary), ("node_b", Primary)], T)?;
    let b = c.connect_node(1).await?;
    let ids: Vec<i32> = b
        .query("SELECT id FROM hang_probe ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    anyhow::ensure!(ids == vec![1], "rows on the new primary: {ids:?}");
    probe.finish_without_loss().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_postmaster_and_agent_hang_is_failed_over() {
    scenario(async |c| partial_freeze(c, Hang::PostmasterAndAgent).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_is_failed_over_across_a_controller_restart() {
    scenario(async |c| partial_freeze(c, Hang::WithControllerRestart).await).await;
}

/// What a hung postmaster under a live agent does (the choice, in docs/src/known-gaps.md): the
/// agent reports Postgres down, the controller fails it over after its restart grace,
/// and the agent stops it at once, killing the postmaster and its sessions when even an
/// immediate shutdown does not end them, so no open session commits after the
/// promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_postmaster_under_a_live_agent_is_failed_over_and_killed() {
    scenario(async |c| partial_freeze(c, Hang::PostmasterUnderLiveAgent).await).await;
}
