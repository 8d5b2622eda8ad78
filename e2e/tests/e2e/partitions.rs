//! The faults VMs have, on a multi-host network (one network namespace per node, one
//! for the controller, one for the client): partitions, one-way links, slow links. The
//! history checker runs through each (several clients writing through the formation
//! URI) and judges the history after healing: nothing acknowledged lost, no split brain.

use anyhow::Context;
use pgha_api::NodeState::*;
use pgha_e2e::history::{HistoryProbe, Verdict};
use pgha_e2e::{Cluster, net_scenario};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);
/// How long writes may stop when a primary is lost (issue 27: every wait above is 120 s,
/// so a failover slowing from 4 s to 100 s would pass). A bound, not a benchmark: the
/// measured gap is about 4 s (pgha-bench prints it); this catches a regression by an
/// order of magnitude without failing on a busy machine.
const WRITES_RESUME_WITHIN: Duration = Duration::from_secs(20);

/// Three clients of the URI, and one pinned client per node writing from inside its
/// host (issue 27: they reach a cut-off primary, so a split brain would be seen); one
/// write each every 20 ms.
async fn history(c: &Cluster) -> anyhow::Result<HistoryProbe> {
    let h = HistoryProbe::start_with(
        &c.uri()?,
        3,
        c.pinned_clients(false),
        Duration::from_millis(20),
    )
    .await?;
    h.wait_for_more(30, T).await?;
    Ok(h)
}

/// Stops the clients, checks the history, prints the verdict; an error unless clean.
async fn verdict(h: HistoryProbe) -> anyhow::Result<Verdict> {
    let dir = std::env::var("PGHA_E2E_KEEP_LOGS").unwrap_or_else(|_| "/tmp".into());
    let v = h.finish(std::path::Path::new(&dir)).await?;
    println!("{}", v.line());
    v.ensure_clean()?;
    Ok(v)
}

#[test]
fn the_primary_isolated_from_everyone_is_replaced_and_rejoins() {
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        let net = c.net.as_ref().expect("multi-host");
        let t0 = Instant::now();
        net.isolate("n1")?;
        c.wait_for(&[("node_b", WaitPrimary)], T)?;
        let promoted = t0.elapsed();
        h.wait_for_more(30, T).await?;
        let gap = h.gap_around(t0, Instant::now());
        println!(
            "isolated at 0, node_b promoted after {:.2}s, write gap {:.2}s",
            promoted.as_secs_f64(),
            gap.as_secs_f64()
        );
        anyhow::ensure!(gap < WRITES_RESUME_WITHIN, "writes stopped for {gap:?}");
        net.heal()?;
        c.wait_for(&[("node_a", Secondary), ("node_b", Primary)], T)?;
        h.wait_for_more(30, T).await?;
        verdict(h).await?;
        Ok(())
    });
}

/// The primary's term and writes survive a fault that must not fail anything over:
/// watched for `d` (no second writer, no new term), writes acknowledged during it.
async fn no_failover_through(c: &Cluster, h: &HistoryProbe, d: Duration) -> anyhow::Result<()> {
    c.watch_no_failover(d).await?;
    h.wait_for_more(30, T).await?;
    Ok(())
}

/// Heals, waits for node_a primary and node_b secondary again, judges the history.
async fn heal_and_judge(c: &Cluster, h: HistoryProbe) -> anyhow::Result<Verdict> {
    c.net.as_ref().expect("multi-host").heal()?;
    c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
    h.wait_for_more(30, T).await?;
    verdict(h).await
}

#[test]
fn the_controller_cut_from_the_primary_fails_nothing_over() {
    // The standby still streams from the primary and still reaches the controller: the
    // primary is alive, so nothing may be promoted.
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        c.net.as_ref().expect("multi-host").cut("ctl", "n1")?;
        no_failover_through(c, &h, Duration::from_secs(15)).await?;
        heal_and_judge(c, h).await?;
        Ok(())
    });
}

#[test]
fn the_primary_one_way_cut_to_the_controller_fails_nothing_over() {
    // What the primary sends the controller is lost (its reports, its answers to the
    // probes); what the controller sends arrives.
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        c.net
            .as_ref()
            .expect("multi-host")
            .cut_one_way("n1", "ctl")?;
        no_failover_through(c, &h, Duration::from_secs(15)).await?;
        heal_and_judge(c, h).await?;
        Ok(())
    });
}

#[test]
fn the_primary_cut_from_its_standby_keeps_writing_alone() {
    // Both still see the controller: the primary stops waiting for its synchronous
    // standby (wait_primary) and writes go on; after healing the standby catches up.
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        let t0 = Instant::now();
        c.net.as_ref().expect("multi-host").cut("n1", "n2")?;
        c.wait_for(&[("node_a", WaitPrimary)], T)?;
        no_failover_through(c, &h, Duration::from_secs(10)).await?;
        println!(
            "write gap while the standby was cut off: {:.2}s",
            h.gap_around(t0, Instant::now()).as_secs_f64()
        );
        heal_and_judge(c, h).await?;
        Ok(())
    });
}

#[test]
fn an_isolated_standby_costs_no_writes() {
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        let t0 = Instant::now();
        c.net.as_ref().expect("multi-host").isolate("n2")?;
        c.wait_for(&[("node_a", WaitPrimary)], T)?;
        no_failover_through(c, &h, Duration::from_secs(10)).await?;
        println!(
            "write gap while the standby was isolated: {:.2}s",
            h.gap_around(t0, Instant::now()).as_secs_f64()
        );
        heal_and_judge(c, h).await?;
        Ok(())
    });
}

#[test]
fn an_isolated_controller_changes_nothing() {
    // docs/src/design.md §5 rule 4: the primary keeps serving while its standby streams from it.
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        let before = c.state()?;
        c.net.as_ref().expect("multi-host").isolate("ctl")?;
        no_failover_through(c, &h, Duration::from_secs(15)).await?;
        heal_and_judge(c, h).await?;
        anyhow::ensure!(
            c.state()?.term == before.term,
            "the term changed: a failover happened"
        );
        Ok(())
    });
}

#[test]
fn a_frozen_primary_never_writes_after_thawing() {
    // SIGSTOP of the primary's agent and every Postgres process (a VM paused by its
    // hypervisor) past its lease: node_b is promoted; thawed, node_a must not
    // acknowledge a single write (the checker sees a split brain if it did) and rejoins.
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        let t0 = Instant::now();
        c.freeze_vm(0, true)?;
        c.wait_for(&[("node_b", WaitPrimary)], T)?;
        let promoted = t0.elapsed();
        h.wait_for_more(30, T).await?;
        c.freeze_vm(0, false)?;
        c.wait_for(&[("node_a", Secondary), ("node_b", Primary)], T)?;
        println!(
            "frozen at 0, node_b promoted after {:.2}s, write gap {:.2}s",
            promoted.as_secs_f64(),
            h.gap_around(t0, t0 + promoted).as_secs_f64()
        );
        h.wait_for_more(30, T).await?;
        verdict(h).await?;
        Ok(())
    });
}

#[test]
fn slow_and_lossy_links_cause_no_failover() {
    // Every link slow and lossy for a minute (see `Net::slow_and_lossy` for what this
    // kernel allows).
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        let net = c.net.as_ref().expect("multi-host");
        println!("links: {}", net.slow_and_lossy()?);
        let r = no_failover_through(c, &h, Duration::from_secs(60)).await;
        net.heal()?;
        r?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        verdict(h).await?;
        Ok(())
    });
}

#[test]
fn three_nodes_the_isolated_primary_is_replaced_by_the_standby_with_its_writes() {
    net_scenario(3, async |c| {
        c.bootstrap_three()?;
        let h = history(c).await?;
        let t0 = Instant::now();
        c.net.as_ref().expect("multi-host").isolate("n1")?;
        let new = c.wait_new_primary(&["node_a"], T)?;
        println!(
            "isolated at 0, {new} promoted after {:.2}s",
            t0.elapsed().as_secs_f64()
        );
        h.wait_for_more(30, T).await?;
        let gap = h.gap_around(t0, Instant::now());
        anyhow::ensure!(gap < WRITES_RESUME_WITHIN, "writes stopped for {gap:?}");
        c.net.as_ref().expect("multi-host").heal()?;
        c.wait_for(&[("node_a", Secondary)], T)?;
        h.wait_for_more(30, T).await?;
        verdict(h).await?;
        Ok(())
    });
}

#[test]
fn three_nodes_the_primary_cut_from_one_standby_keeps_its_quorum() {
    // node_c still streams: the primary keeps a synchronous standby, writes never stop
    // for long, and nothing fails over.
    net_scenario(3, async |c| {
        c.bootstrap_three()?;
        let h = history(c).await?;
        let t0 = Instant::now();
        c.net.as_ref().expect("multi-host").cut("n1", "n2")?;
        no_failover_through(c, &h, Duration::from_secs(15)).await?;
        println!(
            "write gap with node_b cut off: {:.2}s",
            h.gap_around(t0, Instant::now()).as_secs_f64()
        );
        c.net.as_ref().expect("multi-host").heal()?;
        c.wait_for(
            &[
                ("node_a", Primary),
                ("node_b", Secondary),
                ("node_c", Secondary),
            ],
            T,
        )?;
        verdict(h).await?;
        Ok(())
    });
}

/// Polls the state until `pred` holds for some node's assigned state; returns at once
/// when the controller cannot be reached (the caller kills it anyway).
fn until_assigned(c: &Cluster, pred: impl Fn(&str, NodeState) -> bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        if let Ok(st) = c.state()
            && st.nodes.iter().any(|n| pred(&n.name, n.assigned_state))
        {
            return Ok(());
        }
        anyhow::ensure!(t0.elapsed() < T, "the phase never came");
        std::thread::sleep(Duration::from_millis(30));
    }
}

use pgha_api::NodeState;

/// A phase of a failover: its name, and when a node's assigned state shows it.
type Phase = (&'static str, fn(&str, NodeState) -> bool);

#[test]
fn the_controller_killed_in_each_phase_of_a_failover_and_a_switchover() {
    // kill -9 of the controller (file store, restarted at once) while the primary is
    // isolated: before it decided anything (detection), while the candidate waits for
    // the old primary's lease (fencing), just after it assigned the promotion; then in
    // a switchover, while the old primary drains. Each ends with one primary, the old
    // one rejoining, and the history clean.
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        let phases: [Phase; 3] = [
            ("detection", |_, _| true),
            ("fencing", |_, s| s == StopReplication),
            ("promotion", |_, s| s == WaitPrimary),
        ];
        for (phase, pred) in phases {
            let st = c.state()?;
            let old = st
                .nodes
                .iter()
                .find(|n| n.assigned_state == Primary)
                .map(|n| n.name.clone())
                .ok_or_else(|| anyhow::anyhow!("no primary: {}", st.summary))?;
            let i = c.index(&old);
            let host = c.nodes[i].net_host.clone().unwrap_or_default();
            let t0 = Instant::now();
            c.net.as_ref().expect("multi-host").isolate(&host)?;
            if phase == "detection" {
                std::thread::sleep(Duration::from_millis(1500));
            }
            until_assigned(c, |n, s| n != old && pred(n, s))?;
            c.kill_monitor();
            c.start_monitor()?;
            let new = c.wait_new_primary(&[&old], T)?;
            println!(
                "{phase}: controller killed and restarted; {new} primary after {:.2}s",
                t0.elapsed().as_secs_f64()
            );
            c.net.as_ref().expect("multi-host").heal()?;
            c.wait_for(&[(old.as_str(), Secondary), (new.as_str(), Primary)], T)?;
            h.wait_for_more(30, T).await?;
        }
        // A switchover, the controller killed while the old primary drains.
        let old = c
            .state()?
            .nodes
            .iter()
            .find(|n| n.assigned_state == Primary)
            .map(|n| n.name.clone())
            .ok_or_else(|| anyhow::anyhow!("no primary"))?;
        // The API call returns once the switchover is started (the CLI waits for its end).
        pgha_api::client::MonitorClient::new(&c.join_url, Duration::from_secs(5))?
            .switchover("default", None)
            .await?;
        until_assigned(c, |n, s| n == old && s == Draining)?;
        c.kill_monitor();
        c.start_monitor()?;
        let st = c.wait_for(&[(old.as_str(), Secondary)], T)?;
        println!(
            "switchover: controller killed while {old} drained; {}",
            st.summary
        );
        h.wait_for_more(30, T).await?;
        verdict(h).await?;
        Ok(())
    });
}

/// Issue 27: the fence, seen from where it matters. A pinned client in node_a's own host
/// commits with `synchronous_commit = local`, so once node_a is cut from everyone only
/// its fence stops it from acknowledging writes (its synchronous standby cannot). None
/// of node_a's acknowledgements may come after node_b's first, and the last comes within
/// its lease (plus a report interval) of the cut. Without the agent's fence, node_a
/// acknowledges for as long as it is cut off, and this test fails.
#[test]
fn an_isolated_primary_fences_before_the_new_one_takes_writes() {
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = HistoryProbe::start_with(
            &c.uri()?,
            2,
            c.pinned_clients(true),
            Duration::from_millis(20),
        )
        .await?;
        h.wait_for_more(30, T).await?;
        let net = c.net.as_ref().expect("multi-host");
        let cut = Instant::now();
        net.isolate("n1")?;
        c.wait_for(&[("node_b", WaitPrimary)], T)?;
        h.wait_for_more(30, T).await?;
        let addr = |i: usize| format!("{}:{}", c.nodes[i].host, c.nodes[i].port);
        let (_, last_a) = h.acks_of(&addr(0)).context("node_a acknowledged nothing")?;
        let (first_b, _) = h.acks_of(&addr(1)).context("node_b acknowledged nothing")?;
        let secs = |t: Instant| t.saturating_duration_since(cut).as_secs_f64();
        println!(
            "cut at 0: node_a acknowledged its last write at {:.2}s, node_b its first at {:.2}s",
            secs(last_a),
            secs(first_b)
        );
        anyhow::ensure!(last_a < first_b, "node_a acknowledged after node_b began");
        anyhow::ensure!(
            first_b.saturating_duration_since(cut) < WRITES_RESUME_WITHIN,
            "node_b took its first write {:.2}s after the cut",
            secs(first_b)
        );
        let lease = pgha_api::Timings::default().lease_ms;
        anyhow::ensure!(
            last_a.saturating_duration_since(cut) < Duration::from_millis(lease + 1500),
            "node_a acknowledged writes {:.2}s after the cut (lease {lease} ms): no fence",
            secs(last_a)
        );
        net.heal()?;
        c.wait_for(&[("node_a", Secondary), ("node_b", Primary)], T)?;
        h.wait_for_more(30, T).await?;
        verdict(h).await?;
        Ok(())
    });
}

/// Issue 27, faults combined: the primary frozen past its lease (node_b promoted), then
/// thawed while still cut from the controller and from node_b, so nothing tells it of
/// node_b: its own lease check must stop it. Its pinned client writes to it from inside
/// its host all along: node_a acknowledges nothing after it thawed (a durable commit
/// there waits for node_b, which follows it no more), its Postgres is stopped within
/// seconds, and once healed it rejoins with nothing lost.
#[test]
fn a_frozen_primary_thawed_while_cut_off_fences_itself() {
    net_scenario(2, async |c| {
        c.bootstrap_two()?;
        let h = history(c).await?;
        c.freeze_vm(0, true)?;
        c.wait_for(&[("node_b", WaitPrimary)], T)?;
        h.wait_for_more(30, T).await?;
        let net = c.net.as_ref().expect("multi-host");
        net.isolate("n1")?;
        let thawed = Instant::now();
        c.freeze_vm(0, false)?;
        let stopped = pgha_e2e::wait::eventually(T, "node_a's Postgres stopped", || {
            let pid = c.nodes[0].postmaster_pid();
            Ok(pgha_e2e::wait::until(pid.is_none(), || {
                format!("postmaster {pid:?}")
            }))
        });
        let fenced_after = thawed.elapsed();
        stopped?;
        // node_a alone a while longer, its pinned client still writing.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let addr = format!("{}:{}", c.nodes[0].host, c.nodes[0].port);
        let last_a = h.acks_of(&addr).map(|(_, last)| last);
        println!(
            "thawed cut off at 0: node_a's Postgres stopped after {:.2}s; its last acknowledgement {}",
            fenced_after.as_secs_f64(),
            match last_a {
                Some(t) if t > thawed =>
                    format!("{:.2}s after the thaw", (t - thawed).as_secs_f64()),
                Some(t) => format!("{:.2}s before the thaw", (thawed - t).as_secs_f64()),
                None => "never".into(),
            }
        );
        anyhow::ensure!(
            last_a.is_none_or(|t| t < thawed),
            "node_a acknowledged a write after it thawed"
        );
        net.heal()?;
        c.wait_for(&[("node_a", Secondary), ("node_b", Primary)], T)?;
        h.wait_for_more(30, T).await?;
        verdict(h).await?;
        Ok(())
    });
}
