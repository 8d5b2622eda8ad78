//! `pgha-scale`: how many formations one controller carries. A real controller (`pgha
//! run`, HTTPS, the file store or a three-member etcd) and, in this process, N
//! formations × M simulated agents speaking the real agent protocol (register, then a
//! report every second, each answered with the node's assignment, which the simulated
//! node reaches at once), each with a fake Postgres that answers the controller's probes
//! as a real one refusing the login would. After the formations settle, a fraction of
//! them lose their primary (no more reports, probes refused) and the bench measures
//! what the controller does, while the controller's CPU and memory are sampled.
//!
//! ```text
//! cargo run --release -p pgha-e2e --bin pgha-scale -- --formations 500 --nodes 2 \
//!     [--store file|etcd] [--seconds 60] [--fail 0.1] [--stuck 1]
//! ```
//!
//! `--stuck K`: the first K formations' fake Postgres accept and never answer (each
//! probe runs into its timeout): their slowness must not reach the other formations.

use pgha_api::client::MonitorClient;
use pgha_api::{
    Lsn, NodeId, NodeReport, NodeState, PgObservation, RegisterRequest, StreamHistory, StreamedFrom,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many formations, of how many nodes, for how long (see the module's documentation).
#[derive(clap::Parser)]
#[command(
    name = "pgha-scale",
    about = "How many formations one controller carries"
)]
struct Args {
    #[arg(long, default_value_t = 100)]
    formations: usize,
    /// Nodes per formation (at least 2: a primary and a standby).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// How long the formations run before the failures.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The fraction of formations whose primary is lost.
    #[arg(long, default_value_t = 0.1)]
    fail: f64,
    /// Formations whose fake Postgres accepts and never answers.
    #[arg(long, default_value_t = 1)]
    stuck: usize,
    /// The controller's store.
    #[arg(long, value_parser = ["file", "etcd"], default_value = "file")]
    store: String,
}

/// One formation's shared simulation state.
#[derive(Default)]
struct FormationSim {
    name: String,
    /// The WAL position the current primary reached (standbys replay up to it).
    primary_lsn: AtomicU64,
    nodes: Mutex<Vec<Arc<SimNode>>>,
    /// When its primary was failed on purpose.
    failed_at: Mutex<Option<Instant>>,
    /// Failure → a standby assigned a promotion step (the decision).
    decided: Mutex<Option<Duration>>,
    /// Failure → a standby assigned a writable state.
    promoted: Mutex<Option<Duration>>,
}

/// One simulated VM: agent and Postgres.
struct SimNode {
    id: NodeId,
    port: u16,
    formation: Arc<FormationSim>,
    client: MonitorClient,
    alive: AtomicBool,
    st: Mutex<NodeSim>,
    /// The fake Postgres's accept loop (aborted when the VM dies: probes are refused).
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Clone)]
struct NodeSim {
    goal: NodeState,
    term: u64,
    generation: u64,
    rebuild_epoch: u64,
    restart_epoch: u64,
    upstream_port: Option<u16>,
    lsn: u64,
    /// When this node last streamed from its upstream.
    streamed_at: Instant,
}

/// Everything measured, shared by the agent tasks.
#[derive(Default)]
struct Measures {
    on: AtomicBool,
    latencies_us: Mutex<Vec<u64>>,
    errors: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

/// A fake Postgres: answers each startup message with a FATAL login refusal (SQLSTATE
/// 28000), which the controller's probe counts as a running postmaster; or, `hang`,
/// accepts and never answers.
async fn fake_postgres(listener: tokio::net::TcpListener, hang: bool) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if hang {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).await.is_err() {
                return;
            }
            let n = u32::from_be_bytes(len).saturating_sub(4) as usize;
            let mut rest = vec![0u8; n.min(10_000)];
            if s.read_exact(&mut rest).await.is_err() {
                return;
            }
            let fields = b"SFATAL\0VFATAL\0C28000\0Mpgha-scale: a simulated node\0\0";
            let mut msg = vec![b'E'];
            msg.extend(((fields.len() + 4) as u32).to_be_bytes());
            msg.extend(fields);
            let _ = s.write_all(&msg).await;
        });
    }
}

impl SimNode {
    /// The report of a node that reached its goal at once.
    fn report(&self, formation: &FormationSim, started: Instant) -> NodeReport {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        let reached = st.goal;
        let writable = reached.is_writable();
        let upstream_alive = st.upstream_port.is_some_and(|p| {
            formation
                .nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|n| n.port == p && n.alive.load(Ordering::Relaxed))
        });
        let streaming = reached.streams_from_upstream() && upstream_alive;
        if writable {
            st.lsn = formation.primary_lsn.fetch_add(1000, Ordering::Relaxed) + 1000;
        } else if streaming {
            st.lsn = formation.primary_lsn.load(Ordering::Relaxed);
            st.streamed_at = Instant::now();
        }
        let lost_ms = st.streamed_at.elapsed().as_millis() as u64;
        let peers: Vec<NodeId> = formation
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != self.id)
            .collect();
        NodeReport {
            node_id: self.id,
            formation: formation.name.clone(),
            reported_state: reached,
            term: st.term,
            pg: PgObservation {
                running: !reached.is_stopped(),
                initialized: true,
                in_recovery: Some(!writable),
                timeline: Some(1),
                lsn: Some(Lsn(st.lsn)),
                system_identifier: Some(format!("sim-{}", formation.name)),
                major: Some(pgha_api::PgMajor(15)),
                pgbackrest: None,
                standbys: vec![],
                upstream_streaming: streaming,
                upstream_lost_ms_ago: st.upstream_port.map(|_| lost_ms),
                prepared_for: if writable { peers } else { vec![] },
                pending_restart: vec![],
                disk: None,
                archive: None,
                permanent_slots: vec![],
                streamed_from: Some(StreamHistory {
                    watching_ms: started.elapsed().as_millis() as u64,
                    contacts: st
                        .upstream_port
                        .map(|port| StreamedFrom {
                            host: "127.0.0.1".into(),
                            port,
                            ms_ago: lost_ms,
                        })
                        .into_iter()
                        .collect(),
                }),
                lost_slots: vec![],
            },
            fenced: false,
            last_error: None,
            promotion_refused_term: None,
            applied_generation: st.generation,
            auth_method: Some("scram-sha-256".into()),
            rebuilt_epoch: st.rebuild_epoch,
            restarted_epoch: st.restart_epoch,
            backup_job: None,
            backups: None,
        }
    }
}

/// One node's agent: a report every second (at once again after an assignment
/// changed), while its VM is alive.
async fn agent(node: Arc<SimNode>, m: Arc<Measures>, started: Instant) {
    // Spread the first reports over a second, as agents started at different times.
    tokio::time::sleep(Duration::from_millis(node.id * 7 % 1000)).await;
    loop {
        if !node.alive.load(Ordering::Relaxed) {
            return;
        }
        let f = node.formation.clone();
        let report = node.report(&f, started);
        let t = Instant::now();
        let mut again = false;
        match node.client.report(&report).await {
            Ok(a) => {
                if m.on.load(Ordering::Relaxed) {
                    m.latencies_us
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(t.elapsed().as_micros() as u64);
                }
                let mut st = node.st.lock().unwrap_or_else(|e| e.into_inner());
                again = a.goal != st.goal;
                st.goal = a.goal;
                st.term = st.term.max(a.term);
                st.generation = a.generation;
                st.rebuild_epoch = a.rebuild_epoch;
                st.restart_epoch = a.restart_epoch;
                st.upstream_port = a.upstream.as_ref().map(|u| u.port);
                if let Some(failed) = *f.failed_at.lock().unwrap_or_else(|e| e.into_inner()) {
                    let since = failed.elapsed();
                    if a.goal != NodeState::Secondary {
                        f.decided
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(since);
                    }
                    if a.goal.is_writable() {
                        f.promoted
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(since);
                    }
                }
            }
            Err(e) => {
                if m.on.load(Ordering::Relaxed) {
                    m.errors.fetch_add(1, Ordering::Relaxed);
                    *m.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                }
            }
        }
        let pause = if again { 10 } else { 1000 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// The controller's CPU time (s) and resident memory (MiB), from /proc.
fn cpu_and_rss(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, rss_kb / 1024.0))
}

/// The sum of the controller's metric samples whose line starts with `name`.
async fn metric_sum(read: &MonitorClient, name: &str) -> f64 {
    let Ok((_, page)) = read.get_text("/metrics").await else {
        return 0.0;
    };
    page.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn pgha(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(pgha_e2e::pgha_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pgha {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    pgha_api::tls::install_default_provider();
    // A connection and a fake Postgres listener per node, and the probes' connections.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let args = <Args as clap::Parser>::parse();
    let (formations, per, seconds, fail, stuck, store) = (
        args.formations,
        args.nodes,
        args.seconds,
        args.fail,
        args.stuck,
        args.store,
    );
    // Never a figure from a stale binary: the pgha this runs is built first.
    pgha_e2e::build_pgha()?;
    anyhow::ensure!(per >= 2, "--nodes: at least 2 (a primary and a standby)");

    let dir = tempfile::Builder::new().prefix("pgha-scale-").tempdir()?;
    let mon = dir.path().join("monitor");
    let mon_s = mon.display().to_string();
    let port = pgha_e2e::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut create = vec![
        "create",
        "monitor",
        "--dir",
        &mon_s,
        "--hostname",
        "127.0.0.1",
        "--listen",
        &listen,
    ];
    let etcd = match store.as_str() {
        "etcd" => Some(pgha_e2e::etcd::EtcdCluster::start(
            &dir.path().join("etcd"),
            3,
        )?),
        _ => None,
    };
    let endpoints = etcd.as_ref().map(|e| e.endpoints()).unwrap_or_default();
    if etcd.is_some() {
        create.extend(["--store", "etcd", "--etcd-endpoints", &endpoints]);
    }
    pgha(&create)?;
    write_formations(&mon, formations)?;
    let log = std::fs::File::create(dir.path().join("monitor.log"))?;
    let mut controller = Command::new(pgha_e2e::pgha_bin())
        .args(["run", "--dir", &mon_s])
        .env("PGHA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let pid = controller.id();
    let result = run(&mon_s, pid, formations, per, seconds, fail, stuck, &store).await;
    let _ = controller.kill();
    let _ = controller.wait();
    let text = std::fs::read_to_string(dir.path().join("monitor.log")).unwrap_or_default();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    if !warnings.is_empty() {
        println!(
            "controller warnings: {} (last: {})",
            warnings.len(),
            warnings.last().unwrap_or(&"")
        );
    }
    if result.is_err() {
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            eprintln!("controller: {l}");
        }
    }
    drop(etcd);
    result
}

/// N formation files, each open to the default join secret.
fn write_formations(mon: &Path, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let name = format!("f{i:04}");
        std::fs::write(
            mon.join("formations").join(format!("{name}.yaml")),
            format!(
                "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: {name}\nspec:\n  numberSyncStandbys: 0\n  admission:\n    joinSecretFile: default.secret\n  nodes: []\n"
            ),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mon: &str,
    pid: u32,
    formations: usize,
    per: usize,
    seconds: u64,
    fail: f64,
    stuck: usize,
    store: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // `show uri` asks the controller: wait until it listens.
    let operator = loop {
        match pgha(&["show", "uri", "--formation", "monitor", "--dir", mon]) {
            Ok(url) => break url,
            Err(e) if started.elapsed() > Duration::from_secs(60) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let read_url = pgha(&["show", "uri", "--formation", "read", "--dir", mon])?;
    let read = MonitorClient::new(&read_url, Duration::from_secs(5))?;
    let t0 = Instant::now();
    loop {
        if let Ok(info) = read.info().await
            && info.formations.len() > formations
        {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "the controller did not load {formations} formation files within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "controller up with {formations} formations in {:.1}s; registering {} simulated nodes",
        t0.elapsed().as_secs_f64(),
        formations * per
    );
    let registrar = MonitorClient::new(&operator, Duration::from_secs(30))?;
    let m = Arc::new(Measures::default());
    let mut all: Vec<Arc<FormationSim>> = vec![];
    let t_reg = Instant::now();
    for i in 0..formations {
        let f = Arc::new(FormationSim {
            name: format!("f{i:04}"),
            primary_lsn: AtomicU64::new(0x300_0000),
            ..Default::default()
        });
        for k in 0..per {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let task = tokio::spawn(fake_postgres(listener, i < stuck));
            let r = registrar
                .register(&RegisterRequest {
                    formation: f.name.clone(),
                    name: Some(format!("n{k}")),
                    host: "127.0.0.1".into(),
                    port,
                    dbname: "postgres".into(),
                    candidate_priority: 50,
                    replication_quorum: true,
                    installs: vec![],
                })
                .await?;
            let client = MonitorClient::with_credential(
                &operator,
                Some(&r.node_token),
                Duration::from_secs(5),
            )?;
            let node = Arc::new(SimNode {
                id: r.node_id,
                port,
                formation: f.clone(),
                client,
                alive: AtomicBool::new(true),
                st: Mutex::new(NodeSim {
                    goal: r.assigned_state,
                    term: 0,
                    generation: 0,
                    rebuild_epoch: 0,
                    restart_epoch: 0,
                    upstream_port: None,
                    lsn: 0x300_0000,
                    streamed_at: Instant::now(),
                }),
                listener: Mutex::new(Some(task)),
            });
            f.nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(node.clone());
            tokio::spawn(agent(node, m.clone(), started));
        }
        all.push(f);
        if (i + 1) % 100 == 0 {
            eprintln!(
                "  {} formations registered ({:.1}s)",
                i + 1,
                t_reg.elapsed().as_secs_f64()
            );
        }
    }
    let registration = t_reg.elapsed();
    // Settled: every formation one primary and its secondaries.
    let settled = |f: &FormationSim| {
        let nodes = f.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let goals: Vec<NodeState> = nodes
            .iter()
            .map(|n| n.st.lock().unwrap_or_else(|e| e.into_inner()).goal)
            .collect();
        goals.iter().filter(|g| **g == NodeState::Primary).count() == 1
            && goals
                .iter()
                .all(|g| *g == NodeState::Primary || *g == NodeState::Secondary)
    };
    let t_settle = Instant::now();
    loop {
        let n = all.iter().filter(|f| settled(f)).count();
        if n == formations {
            break;
        }
        anyhow::ensure!(
            t_settle.elapsed() < Duration::from_secs(300),
            "only {n} of {formations} formations settled within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle = t_settle.elapsed();
    eprintln!(
        "registered in {:.1}s, every formation primary + secondary {:.1}s later; measuring {seconds}s",
        registration.as_secs_f64(),
        settle.as_secs_f64()
    );

    // The measured window: reports throughout, failures a third of the way in.
    m.on.store(true, Ordering::Relaxed);
    let writes0 = metric_sum(&read, "pgha_store_writes_total").await;
    let plans0 = metric_sum(&read, "pgha_reconcile_duration_seconds_count").await;
    let plan_s0 = metric_sum(&read, "pgha_reconcile_duration_seconds_sum").await;
    let (cpu0, _) = cpu_and_rss(pid).unwrap_or_default();
    let t_run = Instant::now();
    let to_fail: Vec<Arc<FormationSim>> = all
        .iter()
        .skip(stuck)
        .step_by(((1.0 / fail.max(0.001)).round() as usize).max(1))
        .cloned()
        .collect();
    let mut rss_peak: f64 = 0.0;
    let mut failed = 0;
    while t_run.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some((_, rss)) = cpu_and_rss(pid) {
            rss_peak = rss_peak.max(rss);
        }
        // Failures spread over the middle third.
        let due = if t_run.elapsed() < Duration::from_secs(seconds / 3) {
            0
        } else {
            let frac =
                (t_run.elapsed().as_secs_f64() - seconds as f64 / 3.0) / (seconds as f64 / 3.0);
            ((frac.min(1.0)) * to_fail.len() as f64).ceil() as usize
        };
        while failed < due {
            let f = &to_fail[failed];
            let primary = f
                .nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|n| n.st.lock().unwrap_or_else(|e| e.into_inner()).goal == NodeState::Primary)
                .cloned();
            if let Some(p) = primary {
                p.alive.store(false, Ordering::Relaxed);
                if let Some(t) = p.listener.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    t.abort();
                }
                *f.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            failed += 1;
        }
    }
    let elapsed = t_run.elapsed().as_secs_f64();
    m.on.store(false, Ordering::Relaxed);
    let (cpu1, _) = cpu_and_rss(pid).unwrap_or_default();
    let writes1 = metric_sum(&read, "pgha_store_writes_total").await;
    let plans = metric_sum(&read, "pgha_reconcile_duration_seconds_count").await - plans0;
    let plan_s = metric_sum(&read, "pgha_reconcile_duration_seconds_sum").await - plan_s0;

    let mut lat = m
        .latencies_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    lat.sort();
    let mut decided: Vec<u64> = vec![];
    let mut promoted: Vec<u64> = vec![];
    for f in &to_fail {
        if let Some(d) = *f.decided.lock().unwrap_or_else(|e| e.into_inner()) {
            decided.push(d.as_millis() as u64);
        }
        if let Some(d) = *f.promoted.lock().unwrap_or_else(|e| e.into_inner()) {
            promoted.push(d.as_millis() as u64);
        }
    }
    decided.sort();
    promoted.sort();
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    let secs = |ms: u64| format!("{:.2}s", ms as f64 / 1000.0);
    println!(
        "store | formations | nodes | reports/s | report p50 / p99 / max (ms) | errors | failures | decided p50 / p99 | promoted p50 / p99 | controller CPU | RSS peak | store writes/s"
    );
    println!(
        "{store:>5} | {formations:>10} | {:>5} | {:>9.0} | {:>6} / {:>6} / {:>7} | {:>6} | {:>3} of {:<3} | {} / {} | {} / {} | {:>5.0}% | {:>5.0} MiB | {:.1}",
        formations * per,
        lat.len() as f64 / elapsed,
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or(0)),
        m.errors.load(Ordering::Relaxed),
        promoted.len(),
        to_fail.len(),
        secs(pct(&decided, 0.5)),
        secs(pct(&decided, 0.99)),
        secs(pct(&promoted, 0.5)),
        secs(pct(&promoted, 0.99)),
        (cpu1 - cpu0) / elapsed * 100.0,
        rss_peak,
        (writes1 - writes0) / elapsed
    );
    println!(
        "reconciles: {:.0}/s, mean {:.0} us each (plan + staging its changes, under the state's lock: {:.0}% of the time)",
        plans / elapsed,
        plan_s / plans.max(1.0) * 1e6,
        plan_s / elapsed * 100.0
    );
    if let Some(e) = m
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        println!("last report error: {e}");
    }
    Ok(())
}
