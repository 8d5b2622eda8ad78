//! `pgha-bench --controllers [--runs N]`: a group of three controllers on a real
//! three-member etcd, and a formation of two nodes with the write probe. Each run:
//!
//! 1. kill -9 of the leading controller in steady state: how long until a follower
//!    leads (answers as leader), and the write gap meanwhile (none is expected: the
//!    data plane does not need the controller);
//! 2. kill -9 of the leading controller and of the primary's VM at the same moment: the
//!    write gap until the new leader has failed the primary over, and the time until
//!    the formation is primary + secondary again.
//!
//! Between runs the killed controller and VM come back (as a follower and a standby).

use super::{T, healthy, median, secs};
use pgha_e2e::{Cluster, WriteProbe};
use std::time::{Duration, Instant};

pub fn run(runs: usize) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(measure(runs))
}

async fn measure(runs: usize) -> anyhow::Result<()> {
    eprintln!("starting three controllers on a three-member etcd, and two nodes");
    let mut c = Cluster::start_group(3)?;
    let r = async {
        c.bootstrap_two()?;
        let probe = WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(20, T).await?;
        let (mut leads, mut quiet_gaps) = (vec![], vec![]);
        let (mut gaps, mut backs, mut new_leads) = (vec![], vec![], vec![]);
        for run in 0..runs {
            // 1. The leader alone.
            let leader = c.wait_for_leader(None, T).await?;
            let t = Instant::now();
            c.kill_controller(leader);
            let next = c.wait_for_leader(Some(leader), T).await?;
            let lead = t.elapsed();
            probe.wait_for_more(20, T).await?;
            let gap = probe.gap_around(t, Instant::now());
            eprintln!(
                "  run {}/{runs}: controller {leader} killed: controller {next} leads after {}, write gap {}",
                run + 1,
                secs(lead),
                secs(gap)
            );
            leads.push(lead);
            quiet_gaps.push(gap);
            c.start_controller(leader)?;
            tokio::time::sleep(Duration::from_secs(2)).await;

            // 2. The leader and the primary's VM at the same moment.
            let leader = c.wait_for_leader(None, T).await?;
            let primary = healthy(&c, None)?;
            let name = c.nodes[primary].name.clone();
            let t = Instant::now();
            c.kill_controller(leader);
            c.kill_vm(primary)?;
            let next = c.wait_for_leader(Some(leader), T).await?;
            let new_lead = t.elapsed();
            let new = c.wait_new_primary(&[&name], T)?;
            probe.wait_for_more(10, T).await?;
            let gap = probe.gap_around(t, Instant::now());
            c.start_controller(leader)?;
            c.start_agent(primary)?;
            healthy(&c, None)?;
            let back = t.elapsed();
            eprintln!(
                "  run {}/{runs}: controller {leader} and {name}'s VM killed: controller {next} leads after {}, {new} promoted, write gap {}, back to primary+secondary in {}",
                run + 1,
                secs(new_lead),
                secs(gap),
                secs(back)
            );
            new_leads.push(new_lead);
            gaps.push(gap);
            backs.push(back);
        }
        let report = probe.finish().await?;
        let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
        println!(
            "scenario                          | runs | new leader median |   max | write gap median |   max | back median |   max | lost"
        );
        println!(
            "leader killed                     | {runs:>4} | {:>17} | {:>5} | {:>16} | {:>5} |           - |     - | {:>4}",
            secs(median(&leads)),
            secs(max(&leads)),
            secs(median(&quiet_gaps)),
            secs(max(&quiet_gaps)),
            report.lost.len()
        );
        println!(
            "leader and primary VM killed      | {runs:>4} | {:>17} | {:>5} | {:>16} | {:>5} | {:>11} | {:>5} | {:>4}",
            secs(median(&new_leads)),
            secs(max(&new_leads)),
            secs(median(&gaps)),
            secs(max(&gaps)),
            secs(median(&backs)),
            secs(max(&backs)),
            report.lost.len()
        );
        println!(
            "write probe: {} acknowledged, {} lost",
            report.acked,
            report.lost.len()
        );
        anyhow::ensure!(report.lost.is_empty(), "lost writes: {:?}", report.lost);
        Ok(())
    }
    .await;
    if r.is_err() {
        c.dump_logs();
    }
    r
}
