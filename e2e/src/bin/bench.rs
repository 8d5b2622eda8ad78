//! `pgha-bench`: measures what an application sees during switchovers and VM losses on
//! a two-node formation, with the write probe inserting through the formation URI.
//!
//!     cargo run -p pgha-e2e --bin pgha-bench -- [--switchovers 20] [--failovers 5]
//!
//! Prints per scenario: median and max write gap (last acknowledged write before the
//! event to the first after it), median and max time until the formation is back to
//! primary + secondary, and acknowledged writes lost (must be 0).

use anyhow::Context;
use pgha_api::NodeState::*;
use pgha_e2e::{Cluster, WriteProbe};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Scenario {
    name: &'static str,
    gaps: Vec<Duration>,
    recover: Vec<Duration>,
    lost: usize,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Index of the node that is primary now.
fn primary(c: &Cluster) -> anyhow::Result<usize> {
    let st = c.state()?;
    let name = st
        .nodes
        .iter()
        .find(|n| n.reported_state.is_writable() && n.assigned_state.is_writable())
        .context("no primary")?
        .name
        .clone();
    c.nodes
        .iter()
        .position(|n| n.name == name)
        .context("unknown node")
}

fn healthy(c: &Cluster, p: usize) -> anyhow::Result<()> {
    let (a, b) = (c.nodes[p].name.clone(), c.nodes[1 - p].name.clone());
    c.wait_for(&[(&a, Primary), (&b, Secondary)], T)?;
    Ok(())
}

async fn switchovers(c: &mut Cluster, probe: &WriteProbe, n: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario {
        name: "switchover",
        ..Default::default()
    };
    for i in 0..n {
        let old = primary(c)?;
        let t = Instant::now();
        c.pgha_ok(&["perform", "switchover", "--monitor", &c.monitor_url])?;
        healthy(c, 1 - old)?;
        let back = t.elapsed();
        probe.wait_for_more(10, T).await?;
        let gap = probe.gap_around(t, Instant::now());
        let lost = probe.lost_so_far().await?.len();
        eprintln!(
            "  switchover {:>2}/{n}: write gap {}, back to primary+secondary in {}, lost {lost}",
            i + 1,
            secs(gap),
            secs(back)
        );
        s.gaps.push(gap);
        s.recover.push(back);
        s.lost = lost;
    }
    Ok(s)
}

async fn vm_losses(
    c: &mut Cluster,
    probe: &WriteProbe,
    n: usize,
    freeze: bool,
) -> anyhow::Result<Scenario> {
    let name = if freeze {
        "vm loss (SIGSTOP)"
    } else {
        "vm loss (kill -9)"
    };
    let mut s = Scenario {
        name,
        ..Default::default()
    };
    for i in 0..n {
        let old = primary(c)?;
        let survivor = c.nodes[1 - old].name.clone();
        let t = Instant::now();
        if freeze {
            c.freeze_vm(old, true)?;
        } else {
            c.kill_vm(old)?;
        }
        c.wait_for(&[(&survivor, WaitPrimary)], T)?;
        probe.wait_for_more(10, T).await?;
        let gap = probe.gap_around(t, Instant::now());
        // The VM comes back.
        if freeze {
            c.freeze_vm(old, false)?;
        } else {
            c.start_agent(old)?;
        }
        healthy(c, 1 - old)?;
        let back = t.elapsed();
        let lost = probe.lost_so_far().await?.len();
        eprintln!(
            "  {name} {:>2}/{n}: write gap {}, back to primary+secondary in {}, lost {lost}",
            i + 1,
            secs(gap),
            secs(back)
        );
        s.gaps.push(gap);
        s.recover.push(back);
        s.lost = lost;
    }
    Ok(s)
}

/// Formation file changes: time from the file written to every node having applied it.
async fn gitops(c: &mut Cluster, n: usize) -> anyhow::Result<Vec<(String, Vec<Duration>)>> {
    let yaml = |work_mem: usize, prio: u32| {
        format!(
            "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  postgresql:\n    parameters:\n      work_mem: {work_mem}kB\n  nodes:\n    - name: node_a\n      host: 127.0.0.1\n      port: {}\n    - name: node_b\n      host: 127.0.0.1\n      port: {}\n      candidatePriority: {prio}\n",
            c.nodes[0].port, c.nodes[1].port
        )
    };
    let mut param = vec![];
    let mut prio = vec![];
    for i in 0..n {
        // A reload-only setting: in force on both nodes (SHOW answers the new value).
        let kb = 5000 + i;
        let t = Instant::now();
        c.write_formation("default.yaml", &yaml(kb, 50))?;
        for node in 0..2 {
            loop {
                let db = c.connect_node(node).await?;
                let v: String = db.query_one("SHOW work_mem", &[]).await?.get(0);
                if v == format!("{kb}kB") {
                    break;
                }
                anyhow::ensure!(t.elapsed() < T, "work_mem never applied on node {node}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        param.push(t.elapsed());
        // A candidate priority: the monitor's record shows it.
        let want = 40 + (i % 2) as u8;
        let t = Instant::now();
        c.write_formation("default.yaml", &yaml(kb, want as u32))?;
        loop {
            let st = c.state()?;
            if st
                .nodes
                .iter()
                .any(|n| n.name == "node_b" && n.candidate_priority == want)
            {
                break;
            }
            anyhow::ensure!(t.elapsed() < T, "priority never applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        prio.push(t.elapsed());
        eprintln!(
            "  formation file {:>2}/{n}: setting in force on both nodes after {}, priority after {}",
            i + 1,
            secs(param[i]),
            secs(prio[i])
        );
    }
    Ok(vec![
        ("reload-only setting".into(), param),
        ("candidate priority".into(), prio),
    ])
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n_switch = arg("--switchovers", 20);
    let n_fail = arg("--failovers", 5);
    let n_gitops = arg("--gitops", 5);
    let mut c = Cluster::start()?;
    let res = async {
        c.add_node("node_a")?;
        c.wait_for(&[("node_a", Single)], T)?;
        c.add_node("node_b")?;
        healthy(&c, 0)?;
        let probe = WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(50, T).await?;
        eprintln!(
            "formation ready; write probe inserting every 10 ms through {}",
            c.uri()?
        );
        let mut out = vec![switchovers(&mut c, &probe, n_switch).await?];
        out.push(vm_losses(&mut c, &probe, n_fail, false).await?);
        out.push(vm_losses(&mut c, &probe, n_fail, true).await?);
        let report = probe.finish().await?;
        let files = gitops(&mut c, n_gitops).await?;
        Ok::<_, anyhow::Error>((out, report, files))
    }
    .await;
    let (scenarios, report, files) = match res {
        Ok(x) => x,
        Err(e) => {
            c.dump_logs();
            return Err(e);
        }
    };
    println!();
    println!(
        "{:<20} | {:>4} | {:>10} | {:>8} | {:>13} | {:>11} | {:>14}",
        "scenario", "runs", "gap median", "gap max", "back median", "back max", "lost acked"
    );
    println!("{}", "-".repeat(96));
    for s in &scenarios {
        println!(
            "{:<20} | {:>4} | {:>10} | {:>8} | {:>13} | {:>11} | {:>14}",
            s.name,
            s.gaps.len(),
            secs(median(&s.gaps)),
            secs(s.gaps.iter().max().copied().unwrap_or_default()),
            secs(median(&s.recover)),
            secs(s.recover.iter().max().copied().unwrap_or_default()),
            s.lost
        );
    }
    println!(
        "\nwrite probe: {} writes acknowledged of {} attempted, {} lost",
        report.acked,
        report.attempts,
        report.lost.len()
    );
    if !files.is_empty() && !files[0].1.is_empty() {
        println!(
            "\n{:<22} | {:>4} | {:>8} | {:>8}",
            "formation file change", "runs", "median", "max"
        );
        println!("{}", "-".repeat(50));
        for (name, v) in &files {
            println!(
                "{:<22} | {:>4} | {:>8} | {:>8}",
                name,
                v.len(),
                secs(median(v)),
                secs(v.iter().max().copied().unwrap_or_default())
            );
        }
    }
    anyhow::ensure!(
        report.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        report.lost
    );
    Ok(())
}
