//! `pgha-bench --nemesis NAME|all [--runs N]`: network faults between VMs, measured.
//!
//! Each nemesis gets a fresh two-node formation on a multi-host network (one network
//! namespace per node, one for the controller, one for the client: `pgha_e2e::net`),
//! three clients writing through the formation URI (the history checker), and `runs`
//! rounds of: fault, hold (or wait for the failover it must cause), heal, wait until
//! the formation is one primary + secondaries again. Printed per nemesis: write gap
//! (longest time without an acknowledged write from the fault to recovery) median and
//! max, time back to primary + secondary, false failovers (a new term where none may
//! happen), lost acknowledged writes and split-brain windows (the history checker's).

use super::{T, healthy, median, secs};
use pgha_e2e::Cluster;
use pgha_e2e::history::HistoryProbe;
use std::time::{Duration, Instant};

/// One fault, applied to a formation whose primary is node `p` (the other is `s`).
#[derive(Clone, Copy)]
struct Nemesis {
    name: &'static str,
    /// The fault ends in a failover (else any new term is a false failover).
    fails_over: bool,
    /// How long the fault lasts when it must not fail anything over.
    hold: Duration,
}

const NEMESES: &[Nemesis] = &[
    Nemesis {
        name: "isolate-primary",
        fails_over: true,
        hold: Duration::ZERO,
    },
    Nemesis {
        name: "freeze-primary",
        fails_over: true,
        hold: Duration::ZERO,
    },
    Nemesis {
        name: "cut-controller-primary",
        fails_over: false,
        hold: Duration::from_secs(10),
    },
    Nemesis {
        name: "one-way-primary-controller",
        fails_over: false,
        hold: Duration::from_secs(10),
    },
    Nemesis {
        name: "cut-primary-standby",
        fails_over: false,
        hold: Duration::from_secs(10),
    },
    Nemesis {
        name: "isolate-standby",
        fails_over: false,
        hold: Duration::from_secs(10),
    },
    Nemesis {
        name: "isolate-controller",
        fails_over: false,
        hold: Duration::from_secs(10),
    },
    Nemesis {
        name: "slow-links",
        fails_over: false,
        hold: Duration::from_secs(30),
    },
    Nemesis {
        name: "blip",
        fails_over: false,
        hold: Duration::from_secs(5),
    },
];

/// What one nemesis did over its runs.
struct Outcome {
    name: &'static str,
    gaps: Vec<Duration>,
    back: Vec<Duration>,
    false_failovers: usize,
    lost: usize,
    split_brain: usize,
    verdict: String,
}

pub fn run(which: &str, runs: usize) -> anyhow::Result<()> {
    if let Some(why) = pgha_e2e::net::unavailable() {
        anyhow::bail!("--nemesis {why}");
    }
    let chosen: Vec<Nemesis> = NEMESES
        .iter()
        .copied()
        .filter(|n| which == "all" || n.name == which)
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = NEMESES.iter().map(|n| n.name).collect();
        anyhow::bail!(
            "--nemesis {which}: no such nemesis; one of: {}, all",
            names.join(", ")
        );
    }
    let mut out = vec![];
    for n in chosen {
        eprintln!("== {} ({runs} runs)", n.name);
        // Its own thread: the thread enters the network's client namespace.
        let r = std::thread::spawn(move || one(n, runs))
            .join()
            .map_err(|_| anyhow::anyhow!("{}: the run panicked", n.name))??;
        out.push(r);
    }
    println!(
        "\n{:<27} | {:>4} | {:>10} | {:>8} | {:>11} | {:>9} | {:>6} | {:>4} | {:>11}",
        "nemesis",
        "runs",
        "gap median",
        "gap max",
        "back median",
        "back max",
        "false",
        "lost",
        "split brain"
    );
    println!("{}", "-".repeat(113));
    for o in &out {
        println!(
            "{:<27} | {:>4} | {:>10} | {:>8} | {:>11} | {:>9} | {:>6} | {:>4} | {:>11}",
            o.name,
            o.gaps.len(),
            secs(median(&o.gaps)),
            secs(o.gaps.iter().max().copied().unwrap_or_default()),
            secs(median(&o.back)),
            secs(o.back.iter().max().copied().unwrap_or_default()),
            o.false_failovers,
            o.lost,
            o.split_brain
        );
    }
    println!(
        "\n(false: failovers where none may happen; lost: acknowledged writes missing; split brain: overlapping write windows of two nodes)"
    );
    for o in &out {
        println!("{}: {}", o.name, o.verdict);
    }
    anyhow::ensure!(
        out.iter()
            .all(|o| o.lost == 0 && o.split_brain == 0 && o.false_failovers == 0),
        "a nemesis lost writes, split the brain or failed over for nothing (see above)"
    );
    Ok(())
}

/// One nemesis: a fresh formation, `runs` rounds, the history judged at the end.
fn one(n: Nemesis, runs: usize) -> anyhow::Result<Outcome> {
    let (net, rt) = pgha_e2e::enter_multi_host(2)?;
    let mut c = Cluster::start_on(net)?;
    let r = rt.block_on(rounds(&mut c, n, runs));
    if r.is_err() {
        c.dump_logs();
    }
    r
}

async fn rounds(c: &mut Cluster, n: Nemesis, runs: usize) -> anyhow::Result<Outcome> {
    c.bootstrap_two()?;
    let h = HistoryProbe::start(&c.uri()?, 3, Duration::from_millis(20)).await?;
    h.wait_for_more(30, T).await?;
    let mut o = Outcome {
        name: n.name,
        gaps: vec![],
        back: vec![],
        false_failovers: 0,
        lost: 0,
        split_brain: 0,
        verdict: String::new(),
    };
    for run in 0..runs {
        let p = healthy(c, None)?;
        let s = 1 - p;
        let term = c.state()?.term;
        let host = |i: usize| c.nodes[i].net_host.clone().unwrap_or_default();
        let (hp, hs) = (host(p), host(s));
        let net = c.net.as_ref().expect("a multi-host cluster");
        let t = Instant::now();
        match n.name {
            "isolate-primary" => net.isolate(&hp)?,
            "freeze-primary" => c.freeze_vm(p, true)?,
            "cut-controller-primary" => net.cut("ctl", &hp)?,
            "one-way-primary-controller" => net.cut_one_way(&hp, "ctl")?,
            "cut-primary-standby" => net.cut(&hp, &hs)?,
            "isolate-standby" => net.isolate(&hs)?,
            "isolate-controller" => net.isolate("ctl")?,
            "slow-links" => {
                net.slow_and_lossy()?;
            }
            // A short cut of one link, a different one each run.
            "blip" => {
                let links = [("ctl", hp.as_str()), ("ctl", hs.as_str()), (&hp, &hs)];
                let (a, b) = links[run % links.len()];
                net.cut(a, b)?;
            }
            other => anyhow::bail!("no nemesis {other}"),
        }
        if n.fails_over {
            let old = c.nodes[p].name.clone();
            c.wait_new_primary(&[&old], T)?;
            h.wait_for_more(10, T).await?;
        } else {
            tokio::time::sleep(n.hold).await;
        }
        net.heal()?;
        if n.name == "freeze-primary" {
            c.freeze_vm(p, false)?;
        }
        healthy(c, None)?;
        let back = t.elapsed();
        h.wait_for_more(10, T).await?;
        let gap = h.gap_around(t, Instant::now());
        let new_term = c.state()?.term;
        let false_failover = !n.fails_over && new_term != term;
        eprintln!(
            "  {} {:>2}/{runs}: write gap {}, back in {}{}",
            n.name,
            run + 1,
            secs(gap),
            secs(back),
            if false_failover {
                " FALSE FAILOVER"
            } else {
                ""
            }
        );
        o.gaps.push(gap);
        o.back.push(back);
        o.false_failovers += false_failover as usize;
    }
    let dir = std::env::temp_dir();
    let v = h.finish(&dir).await?;
    o.lost = v.lost.len();
    o.split_brain = v.split_brain.len();
    o.verdict = v.line();
    Ok(o)
}
