//! `pgha-bench`: measures what an application sees during switchovers and VM losses,
//! with the write probe inserting through the formation URI.
//!
//!     cargo run -p pgha-e2e --bin pgha-bench -- [--nodes 2] [--switchovers 20]
//!         [--failovers 5] [--gitops 5] [--api-calls 200] [--no-ssl] [--hooks]
//!     cargo run -p pgha-e2e --bin pgha-bench -- --nemesis NAME|all [--runs 3]
//!     cargo run -p pgha-e2e --bin pgha-bench -- --backups [--rows 1000000,10000000]
//!     cargo run -p pgha-e2e --bin pgha-bench -- --controllers [--runs 5]
//!     cargo run -p pgha-e2e --bin pgha-bench -- --majors 15,16,18 [--switchovers 5 …]
//!
//! With `--nemesis`, network faults between VMs instead (see `nemesis.rs`: one network
//! namespace per host, needs root); with `--backups`, what pgBackRest backups cost and
//! save (see `backups.rs`); with `--controllers`, a group of three controllers on etcd
//! losing its leader (see `controllers.rs`); with `--majors`, the loopback scenarios
//! once per PostgreSQL major (the e2e harness's installs, `PGHA_E2E_MAJOR`), then one
//! table of them side by side.
//!
//! Prints per scenario: median and max write gap (last acknowledged write before the
//! event to the first after it), median and max time until the formation is back to
//! one primary + secondaries, and acknowledged writes lost (must be 0); and the API's
//! round trip (HTTPS by default, plain HTTP with `--no-ssl`): on a kept connection, as
//! agents report, and on a new connection each time (the TLS handshake included).
//! With `--hooks`, every node runs an `--on-role-change` and a `--pre-promote` hook (a
//! script that logs its arguments, as one moving a virtual IP would start): compare its
//! gaps with a run without, for what hooks cost a failover.

mod backups;
mod controllers;
mod nemesis;

use pgha_api::NodeState::*;
use pgha_e2e::{Cluster, WriteProbe};
use std::time::{Duration, Instant};

pub(crate) const T: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Scenario {
    name: &'static str,
    gaps: Vec<Duration>,
    recover: Vec<Duration>,
    lost: usize,
}

impl Scenario {
    /// One run's numbers, printed as they come.
    fn record(&mut self, run: usize, of: usize, gap: Duration, back: Duration, lost: usize) {
        eprintln!(
            "  {} {:>2}/{of}: write gap {}, back to primary+secondary in {}, lost {lost}",
            self.name,
            run + 1,
            secs(gap),
            secs(back)
        );
        self.gaps.push(gap);
        self.recover.push(back);
        self.lost = lost;
    }
}

pub(crate) fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Waits until the formation is one primary (not `not`) and every other node a
/// secondary; returns the primary's index.
pub(crate) fn healthy(c: &Cluster, not: Option<usize>) -> anyhow::Result<usize> {
    let t0 = Instant::now();
    loop {
        let st = c.state()?;
        let stable = |n: &pgha_api::NodeStatus, s| n.assigned_state == s && n.reported_state == s;
        let primaries: Vec<&str> = st
            .nodes
            .iter()
            .filter(|n| stable(n, Primary))
            .map(|n| n.name.as_str())
            .collect();
        if primaries.len() == 1
            && st
                .nodes
                .iter()
                .all(|n| n.name == primaries[0] || stable(n, Secondary))
        {
            let p = c.index(primaries[0]);
            if Some(p) != not {
                return Ok(p);
            }
        }
        anyhow::ensure!(t0.elapsed() < T, "formation not healthy: {}", st.summary);
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn switchovers(c: &mut Cluster, probe: &WriteProbe, n: usize) -> anyhow::Result<Scenario> {
    let mut s = Scenario {
        name: "switchover",
        ..Default::default()
    };
    for i in 0..n {
        let old = healthy(c, None)?;
        let t = Instant::now();
        c.pgha_ok(&["perform", "switchover", "--monitor", &c.join_url])?;
        healthy(c, Some(old))?;
        let back = t.elapsed();
        probe.wait_for_more(10, T).await?;
        let gap = probe.gap_around(t, Instant::now());
        let lost = probe.lost_so_far().await?.len();
        s.record(i, n, gap, back, lost);
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
        let old = healthy(c, None)?;
        let old_name = c.nodes[old].name.clone();
        let t = Instant::now();
        if freeze {
            c.freeze_vm(old, true)?;
        } else {
            c.kill_vm(old)?;
        }
        c.wait_new_primary(&[&old_name], T)?;
        probe.wait_for_more(10, T).await?;
        let gap = probe.gap_around(t, Instant::now());
        // The VM comes back.
        if freeze {
            c.freeze_vm(old, false)?;
        } else {
            c.start_agent(old)?;
        }
        healthy(c, Some(old))?;
        let back = t.elapsed();
        let lost = probe.lost_so_far().await?.len();
        s.record(i, n, gap, back, lost);
    }
    Ok(s)
}

/// Formation file changes: time from the file written to every node having applied it.
async fn gitops(c: &mut Cluster, n: usize) -> anyhow::Result<Vec<(String, Vec<Duration>)>> {
    // Every node declared; the last one's priority changes.
    let yaml = |work_mem: usize, prio: u32| {
        let last = c.nodes.len() - 1;
        let nodes: String = c
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let p = if i == last { prio } else { 50 };
                format!(
                    "    - name: {}\n      host: 127.0.0.1\n      port: {}\n      candidatePriority: {p}\n",
                    n.name, n.port
                )
            })
            .collect();
        format!(
            "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  postgresql:\n    parameters:\n      work_mem: {work_mem}kB\n  nodes:\n{nodes}"
        )
    };
    let last_name = c.nodes[c.nodes.len() - 1].name.clone();
    let mut param = vec![];
    let mut prio = vec![];
    for i in 0..n {
        // A reload-only setting: in force on every node (SHOW answers the new value).
        let kb = 5000 + i;
        let t = Instant::now();
        c.write_formation("default.yaml", &yaml(kb, 50))?;
        for node in 0..c.nodes.len() {
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
                .any(|n| n.name == last_name && n.candidate_priority == want)
            {
                break;
            }
            anyhow::ensure!(t.elapsed() < T, "priority never applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        prio.push(t.elapsed());
        eprintln!(
            "  formation file {:>2}/{n}: setting in force on every node after {}, priority after {}",
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

/// What to measure (see the module's documentation).
#[derive(clap::Parser)]
#[command(
    name = "pgha-bench",
    about = "Measures write gaps and recovery times on real Postgres"
)]
struct Args {
    /// Nodes of the loopback formation (2 to 9).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    #[arg(long, default_value_t = 20)]
    switchovers: usize,
    /// VM losses of each kind (kill -9, SIGSTOP).
    #[arg(long, default_value_t = 5)]
    failovers: usize,
    /// Formation file changes timed until in force.
    #[arg(long, default_value_t = 5)]
    gitops: usize,
    /// API round trips timed on a kept and on new connections.
    #[arg(long, default_value_t = 200)]
    api_calls: usize,
    /// The monitor's API over plain HTTP instead of HTTPS.
    #[arg(long)]
    no_ssl: bool,
    /// Every node runs an on-role-change and a pre-promote hook.
    #[arg(long)]
    hooks: bool,
    /// Network faults between VMs instead: one nemesis by name, or `all` (needs root).
    #[arg(long, value_name = "NAME|all")]
    nemesis: Option<String>,
    /// Runs of each nemesis (default 3) or of the controller group's scenarios (5).
    #[arg(long)]
    runs: Option<usize>,
    /// What pgBackRest backups cost and save instead.
    #[arg(long)]
    backups: bool,
    /// With --backups: database sizes, in rows.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_000u64, 10_000_000])]
    rows: Vec<u64>,
    /// A group of three controllers on etcd losing its leader instead.
    #[arg(long)]
    controllers: bool,
    /// The loopback scenarios once per PostgreSQL major (e.g. 15,16,18), side by side.
    #[arg(long, value_delimiter = ',')]
    majors: Vec<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    anyhow::ensure!(
        (2..=pgha_api::formation::MAX_NODES).contains(&args.nodes),
        "--nodes {}: a benchmark needs 2 to {} nodes",
        args.nodes,
        pgha_api::formation::MAX_NODES
    );
    // Never a figure from a stale binary: the pgha the harness runs is built first.
    pgha_e2e::build_pgha()?;
    if let Some(name) = &args.nemesis {
        return nemesis::run(name, args.runs.unwrap_or(3));
    }
    if args.controllers {
        return controllers::run(args.runs.unwrap_or(5));
    }
    if args.backups {
        return backups::run(&args.rows);
    }
    if !args.majors.is_empty() {
        return by_major(&args);
    }
    runtime()?.block_on(loopback(&args)).map(|_| ())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// The loopback scenarios on each major in turn (each on a fresh formation), then one
/// table with the majors side by side.
fn by_major(args: &Args) -> anyhow::Result<()> {
    let mut rows = vec![];
    for &m in &args.majors {
        eprintln!("== PostgreSQL {m}");
        // Set while no runtime (and no thread of it) exists: the harness reads it.
        // SAFETY: this process has one thread here (the last runtime was dropped).
        unsafe { std::env::set_var("PGHA_E2E_MAJOR", m.to_string()) };
        let scenarios = runtime()?.block_on(loopback(args))?;
        rows.push((m, scenarios));
    }
    println!(
        "
by PostgreSQL major: write gap median / max, acknowledged writes lost"
    );
    let names: Vec<&str> = rows
        .first()
        .map(|(_, s)| s.iter().map(|s| s.name).collect())
        .unwrap_or_default();
    print!("{:<6}", "major");
    for n in &names {
        print!(" | {n:>22}");
    }
    println!(" | {:>5}", "lost");
    println!("{}", "-".repeat(6 + names.len() * 25 + 8));
    for (m, scenarios) in &rows {
        print!("{m:<6}");
        for s in scenarios {
            let max = s.gaps.iter().max().copied().unwrap_or_default();
            print!(
                " | {:>22}",
                format!("{} / {}", secs(median(&s.gaps)), secs(max))
            );
        }
        println!(" | {:>5}", scenarios.iter().map(|s| s.lost).sum::<usize>());
    }
    Ok(())
}

/// Switchovers, VM losses and formation file changes on loopback; the scenarios'
/// numbers (also printed).
async fn loopback(args: &Args) -> anyhow::Result<Vec<Scenario>> {
    let (n_switch, n_fail, n_gitops, n_nodes) =
        (args.switchovers, args.failovers, args.gitops, args.nodes);
    let (no_ssl, n_api, hooks) = (args.no_ssl, args.api_calls, args.hooks);
    let mut c = Cluster::start_with(!no_ssl)?;
    let res = async {
        let hook = c.path().join("hook.sh");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\necho \"$(date +%s.%N) $*\" >> {}\n",
                c.path().join("hooks.log").display()
            ),
        )?;
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let hook = hook.display().to_string();
        let extra: Vec<&str> = if hooks {
            vec!["--on-role-change", &hook, "--pre-promote", &hook]
        } else {
            vec![]
        };
        c.add_node_with("node_a", &extra)?;
        c.wait_for(&[("node_a", Single)], T)?;
        for i in 1..n_nodes {
            c.add_node_with(&format!("node_{}", (b'a' + i as u8) as char), &extra)?;
        }
        healthy(&c, None)?;
        let probe = WriteProbe::start(&c.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(50, T).await?;
        eprintln!(
            "formation of {n_nodes} nodes ready; write probe inserting every 10 ms through {}",
            c.uri()?
        );
        let mut out = vec![switchovers(&mut c, &probe, n_switch).await?];
        out.push(vm_losses(&mut c, &probe, n_fail, false).await?);
        out.push(vm_losses(&mut c, &probe, n_fail, true).await?);
        let report = probe.finish().await?;
        if hooks {
            let ran = std::fs::read_to_string(c.path().join("hooks.log"))
                .unwrap_or_default()
                .lines()
                .count();
            anyhow::ensure!(ran > 0, "--hooks: no hook ran");
            println!("hooks: {ran} runs of the on_role_change and pre_promote hooks");
        }
        let files = gitops(&mut c, n_gitops).await?;
        let api = api_round_trips(&c, n_api).await?;
        Ok::<_, anyhow::Error>((out, report, files, api))
    }
    .await;
    let (scenarios, report, files, api) = match res {
        Ok(x) => x,
        Err(e) => {
            c.dump_logs();
            return Err(e);
        }
    };
    println!(
        "\n{n_nodes} nodes{}",
        if hooks {
            ", each with an on_role_change and a pre_promote hook"
        } else {
            ""
        }
    );
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
    if n_api > 0 {
        let scheme = if no_ssl { "HTTP (--no-ssl)" } else { "HTTPS" };
        println!(
            "\n{:<34} | {:>5} | {:>8} | {:>8} | {:>8}",
            format!("API round trip, {scheme}"),
            "calls",
            "median",
            "p99",
            "max"
        );
        println!("{}", "-".repeat(74));
        for (name, v) in &api {
            let mut v = v.clone();
            v.sort();
            let ms = |d: Duration| format!("{:.2}ms", d.as_secs_f64() * 1000.0);
            println!(
                "{:<34} | {:>5} | {:>8} | {:>8} | {:>8}",
                name,
                v.len(),
                ms(median(&v)),
                ms(v[(v.len() * 99 / 100).min(v.len() - 1)]),
                ms(*v.last().unwrap())
            );
        }
    }
    anyhow::ensure!(
        report.lost.is_empty(),
        "acknowledged writes lost: {:?}",
        report.lost
    );
    Ok(scenarios)
}

/// `GET` of the formation's state `n` times: on one kept connection, then on a new
/// connection each time.
async fn api_round_trips(c: &Cluster, n: usize) -> anyhow::Result<Vec<(String, Vec<Duration>)>> {
    if n == 0 {
        return Ok(vec![]);
    }
    let path = "/v1/formations/default/state";
    let timeout = Duration::from_secs(5);
    let kept = pgha_api::client::MonitorClient::new(&c.monitor_url, timeout)?;
    kept.get_text(path).await?;
    let mut on_kept = vec![];
    for _ in 0..n {
        let t = Instant::now();
        let (status, _) = kept.get_text(path).await?;
        anyhow::ensure!(status == 200, "GET {path}: {status}");
        on_kept.push(t.elapsed());
    }
    let mut on_new = vec![];
    for _ in 0..n {
        let t = Instant::now();
        let fresh = pgha_api::client::MonitorClient::new(&c.monitor_url, timeout)?;
        let (status, _) = fresh.get_text(path).await?;
        anyhow::ensure!(status == 200, "GET {path}: {status}");
        on_new.push(t.elapsed());
    }
    Ok(vec![
        ("kept connection (as agents report)".into(), on_kept),
        ("new connection each call".into(), on_new),
    ])
}
