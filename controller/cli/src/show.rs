//! `pgha show ...`: read commands, each with `--json`.

use crate::MonitorArgs;
use crate::table;
use crate::time::format_time;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ShowCmd {
    /// Nodes of a formation with their reported and assigned states.
    State(StateArgs),
    /// The monitor's URL and the formation's connection string.
    Uri(UriArgs),
    /// Recent events of the monitor.
    Events(EventsArgs),
    /// A systemd unit that runs this monitor or node.
    Systemd(SystemdArgs),
    /// A formation's desired state (from its file) and what runs.
    Formation(FormationArgs),
    /// Every promotion the monitor recorded: when, which node, the rule that fired, the
    /// timeline and WAL position it was promoted from, and why.
    History(StateArgs),
    /// The formation as a tree: the primary, the standbys streaming from it (and from
    /// them), with each standby's lag.
    Topology(StateArgs),
    /// The backups in the formation's pgBackRest repository, and the last backup job.
    Backups(StateArgs),
    /// The formation's replication password (operator credential), for a standby
    /// formation's `standbyOf.passwordFile` on another monitor. Printed alone on
    /// stdout: redirect it into a file readable by the monitor's user only.
    ReplicationPassword(StateArgs),
}

#[derive(Args)]
pub struct FormationArgs {
    #[command(flatten)]
    monitor: MonitorArgs,
    /// Formation name.
    #[arg(default_value = pgha_api::DEFAULT_FORMATION)]
    name: String,
    #[arg(long, conflicts_with = "yaml")]
    json: bool,
    #[arg(long)]
    yaml: bool,
}

#[derive(Args)]
pub struct StateArgs {
    #[command(flatten)]
    monitor: MonitorArgs,
    #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
    formation: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct UriArgs {
    #[command(flatten)]
    monitor: MonitorArgs,
    /// Print only this formation's URI (`monitor` prints the monitor's URL).
    #[arg(long)]
    formation: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    monitor: MonitorArgs,
    #[arg(long)]
    formation: Option<String>,
    #[arg(long, default_value_t = 10)]
    count: usize,
    #[arg(long)]
    json: bool,
    /// Keep printing new events as they happen.
    #[arg(long)]
    follow: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct SystemdArgs {
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    pgdata: Option<PathBuf>,
}

pub async fn run(cmd: ShowCmd) -> anyhow::Result<()> {
    match cmd {
        ShowCmd::State(a) => state(a).await,
        ShowCmd::Uri(a) => uri(a).await,
        ShowCmd::Events(a) => events(a).await,
        ShowCmd::Systemd(a) => systemd(a),
        ShowCmd::Formation(a) => formation(a).await,
        ShowCmd::History(a) => history(a).await,
        ShowCmd::Topology(a) => topology(a).await,
        ShowCmd::Backups(a) => crate::backup::show_backups(a.monitor, &a.formation, a.json).await,
        ShowCmd::ReplicationPassword(a) => {
            let client = a.monitor.operator_client()?;
            let password = client.replication_password(&a.formation).await?;
            if a.json {
                return json(&serde_json::json!({
                    "formation": a.formation,
                    "replication_password": password
                }));
            }
            println!("{password}");
            Ok(())
        }
    }
}

/// One promotion, as `show history` prints it.
#[derive(serde::Serialize)]
struct Promotion {
    time_ms: u64,
    node: String,
    rule: String,
    /// Timeline and WAL position the node had when it was chosen.
    from_timeline: Option<u32>,
    from_lsn: Option<pgha_api::Lsn>,
    /// The timeline it writes on once promoted.
    new_timeline: Option<u32>,
    why: String,
}

/// The decisions that promote a node, with what the planner saw of it.
fn promotions(events: &[pgha_api::Event]) -> Vec<Promotion> {
    events
        .iter()
        .filter(|e| e.rule == "failover_promote" || e.rule == "switchover_promote")
        .map(|e| {
            let node = e.node_name.clone().unwrap_or_default();
            let seen = e.inputs.as_ref().and_then(|i| {
                i["nodes"]
                    .as_array()?
                    .iter()
                    .find(|n| n["name"] == node.as_str())
                    .cloned()
            });
            let from_timeline = seen
                .as_ref()
                .and_then(|n| n["timeline"].as_u64())
                .map(|t| t as u32);
            let from_lsn = seen
                .as_ref()
                .and_then(|n| serde_json::from_value(n["lsn"].clone()).ok());
            Promotion {
                time_ms: e.time_ms,
                node,
                rule: e.rule.clone(),
                from_timeline,
                from_lsn,
                new_timeline: from_timeline.map(|t| t + 1),
                why: e.description.clone(),
            }
        })
        .collect()
}

async fn history(a: StateArgs) -> anyhow::Result<()> {
    let client = a.monitor.client()?;
    let events = client.events(Some(&a.formation), 10_000, None).await?;
    let list = promotions(&events);
    if a.json {
        return json(&list);
    }
    if list.is_empty() {
        println!("no promotion recorded for formation {:?}", a.formation);
        return Ok(());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            vec![
                format_time(p.time_ms),
                p.node.clone(),
                p.rule.clone(),
                format!(
                    "{}: {}",
                    opt(p.from_timeline.map(|t| t.to_string())),
                    opt(p.from_lsn.map(|l| l.to_string()))
                ),
                opt(p.new_timeline.map(|t| t.to_string())),
                p.why.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["Time", "Node", "Rule", "From TLI: LSN", "New TLI", "Why"],
            &rows
        )
    );
    Ok(())
}

/// The tree of who streams from whom, as lines.
fn topology_lines(st: &pgha_api::FormationStatus) -> Vec<String> {
    let primary_lsn = st
        .nodes
        .iter()
        .find(|n| n.assigned_state.is_writable())
        .and_then(|n| n.lsn);
    let describe = |n: &pgha_api::NodeStatus| {
        let lag = match (n.assigned_state.is_writable(), primary_lsn, n.lsn) {
            (false, Some(p), Some(x)) => format!(", {} bytes behind", p.bytes_ahead_of(x)),
            _ => String::new(),
        };
        format!(
            "{} ({}:{}) {} [{}]{lag}",
            n.name,
            n.host,
            n.port,
            n.assigned_state,
            n.connection()
        )
    };
    fn walk(
        st: &pgha_api::FormationStatus,
        name: &str,
        depth: usize,
        out: &mut Vec<String>,
        describe: &dyn Fn(&pgha_api::NodeStatus) -> String,
    ) {
        for n in st
            .nodes
            .iter()
            .filter(|n| n.upstream.as_deref() == Some(name))
        {
            out.push(format!("{}└─ {}", "   ".repeat(depth), describe(n)));
            if depth < st.nodes.len() {
                walk(st, &n.name, depth + 1, out, describe);
            }
        }
    }
    let mut out = vec![];
    let roots: Vec<&pgha_api::NodeStatus> = st
        .nodes
        .iter()
        .filter(|n| n.upstream.is_none() && n.assigned_state.is_writable())
        .collect();
    for r in &roots {
        out.push(describe(r));
        walk(st, &r.name, 0, &mut out, &describe);
    }
    let placed = |n: &&pgha_api::NodeStatus| n.assigned_state.is_writable() || n.upstream.is_some();
    let others: Vec<String> = st
        .nodes
        .iter()
        .filter(|n| !placed(n))
        .map(|n| format!("   {}", describe(n)))
        .collect();
    if !others.is_empty() {
        out.push("not streaming:".into());
        out.extend(others);
    }
    out
}

async fn topology(a: StateArgs) -> anyhow::Result<()> {
    let st = a.monitor.client()?.state(&a.formation).await?;
    if a.json {
        let v: Vec<serde_json::Value> = st
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name, "assigned_state": n.assigned_state,
                    "upstream": n.upstream, "lsn": n.lsn,
                })
            })
            .collect();
        return json(&v);
    }
    for l in topology_lines(&st) {
        println!("{l}");
    }
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn state(a: StateArgs) -> anyhow::Result<()> {
    let st = a.monitor.client()?.state(&a.formation).await?;
    if a.json {
        return json(&st);
    }
    let rows: Vec<Vec<String>> = st
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.node_id.to_string(),
                format!("{}:{}", n.host, n.port),
                format!(
                    "{}: {}",
                    n.timeline
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    n.lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
                ),
                n.connection(),
                n.reported_state.to_string(),
                n.assigned_state.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "Name",
                "Node",
                "Host:Port",
                "TLI: LSN",
                "Connection",
                "Reported State",
                "Assigned State"
            ],
            &rows
        )
    );
    if !st.summary.is_empty() {
        println!("\n{}", st.summary);
    }
    if st.paused {
        println!("PAUSED: nothing is assigned or failed over until `pgha resume`");
    }
    if let Some(src) = &st.standby_of {
        println!(
            "STANDBY FORMATION: its leader follows {src}; read-only until `pgha formation promote --formation {}`",
            st.name
        );
    }
    if st.promoted_over_file {
        println!(
            "WARNING: promoted by `pgha formation promote` while its file still says standbyOf: remove standbyOf from the file"
        );
    }
    if let Some(leader) = &st.leader {
        println!(
            "Controller: {} leads (etcd store)",
            pgha_api::tls::split_pin(leader)
                .map(|(b, _)| b)
                .unwrap_or_else(|_| leader.clone())
        );
    }
    if let Some(w) = trust_warning(&st) {
        println!("{w}");
    }
    for (name, d) in st.low_disk_nodes() {
        println!(
            "WARNING: {name}: the filesystem of PGDATA is nearly full ({} MiB free of {} MiB)",
            d.free_bytes >> 20,
            d.total_bytes >> 20
        );
    }
    for (name, a) in st.archive_failing_nodes() {
        println!(
            "WARNING: {name}: archiving WAL to the backup repository fails ({} failures, segment {}): PGDATA keeps the WAL until it works{}",
            a.failed_count,
            a.last_failed_wal.as_deref().unwrap_or("?"),
            a.error
                .as_deref()
                .map(|e| format!("; pgBackRest: {e}"))
                .unwrap_or_default()
        );
    }
    for n in &st.nodes {
        if let Some(at) = n.restart_scheduled_ms {
            println!(
                "{}: Postgres restart scheduled at {} UTC",
                n.name,
                format_time(at).trim_end_matches(".000")
            );
        }
    }
    for line in observed_vs_desired(&st) {
        println!("{line}");
    }
    for n in st.nodes.iter().filter(|n| n.last_error.is_some()) {
        println!(
            "{}: {}",
            n.name,
            n.last_error.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

async fn uri(a: UriArgs) -> anyhow::Result<()> {
    let client = a.monitor.client()?;
    let info = client.info().await?;
    let mut rows = vec![(
        "monitor".to_string(),
        "monitor".to_string(),
        info.url.clone(),
    )];
    for f in &info.formations {
        let st = client.state(f).await?;
        rows.push(("formation".into(), f.clone(), st.uri(None, &info.sslmode)));
    }
    // On the monitor VM (--dir), the credentials are readable: the monitor row carries
    // the operator's (every action, as pg_autoctl's monitor URI carries its
    // credentials), a read row the read-only one, and each formation's join row its join
    // secret (`create postgres --monitor <join URL>` registers with it, nothing more).
    if let Some(dir) = &a.monitor.dir {
        let cfg = pgha_controller::MonitorConfig::load(dir)?;
        rows[0].2 = crate::operator_url(dir)?;
        let read =
            pgha_controller::credentials::read_token(dir, pgha_controller::credentials::READ)?;
        rows.insert(
            1,
            (
                "monitor".into(),
                "read".into(),
                crate::with_credential(&info.url, "read", &read),
            ),
        );
        if let Some(fdir) = &cfg.formations_dir {
            let scan = pgha_controller::desired::scan(fdir, Some(&cfg.secrets_dir()));
            for (name, secret) in &scan.secrets {
                rows.push((
                    "join".into(),
                    name.clone(),
                    crate::with_credential(&info.url, "pgha", secret),
                ));
            }
        }
    }
    if let Some(f) = &a.formation {
        let row = rows
            .iter()
            .find(|(kind, name, _)| name == f && kind != "join")
            .ok_or_else(|| anyhow::anyhow!("formation {f:?} does not exist on {}", info.url))?;
        println!("{}", row.2);
        return Ok(());
    }
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(t, n, u)| serde_json::json!({"type": t, "name": n, "uri": u}))
            .collect();
        return json(&v);
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(t, n, u)| vec![t, n, u]).collect();
    print!(
        "{}",
        table::render(&["Type", "Name", "Connection String"], &rows)
    );
    Ok(())
}

const EVENT_HEADERS: [&str; 6] = [
    "Event Time",
    "Node",
    "Current State",
    "Assigned State",
    "Rule",
    "Comment",
];

fn event_row(e: &pgha_api::Event) -> Vec<String> {
    let state =
        |s: Option<pgha_api::NodeState>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    vec![
        format_time(e.time_ms),
        e.node_name.clone().unwrap_or_else(|| "-".into()),
        state(e.reported_state),
        state(e.assigned_state),
        e.rule.clone(),
        e.description.clone(),
    ]
}

async fn events(a: EventsArgs) -> anyhow::Result<()> {
    let client = a.monitor.client()?;
    let evs = client.events(a.formation.as_deref(), a.count, None).await?;
    if !a.follow {
        if a.json {
            return json(&evs);
        }
        let rows: Vec<Vec<String>> = evs.iter().map(event_row).collect();
        print!("{}", table::render(&EVENT_HEADERS, &rows));
        return Ok(());
    }
    // --follow: one line per event as it comes (JSON lines with --json), until ^C.
    let mut last = evs.last().map(|e| e.id);
    let print = |e: &pgha_api::Event| -> anyhow::Result<()> {
        if a.json {
            println!("{}", serde_json::to_string(e)?);
        } else {
            println!("{}", event_row(e).join(" | "));
        }
        Ok(())
    };
    for e in &evs {
        print(e)?;
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        match client
            .events(a.formation.as_deref(), 1000, last.or(Some(0)))
            .await
        {
            Ok(new) => {
                for e in &new {
                    print(e)?;
                }
                if let Some(e) = new.last() {
                    last = Some(e.id);
                }
            }
            Err(e) => eprintln!("waiting for the monitor: {e}"),
        }
    }
}

fn systemd(a: SystemdArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    // The monitor needs no root: it runs as the user that owns its directory (its
    // store, credentials, secrets and TLS key are that user's 0600 files). The agent
    // runs as root: it starts Postgres as the data directory's owner, and writes
    // pg_hba.conf and its own state beside the data directory.
    let mut user = String::new();
    let (what, flag, path) = match (&a.dir, &a.pgdata) {
        (Some(d), _) => {
            pgha_controller::MonitorConfig::load(d)?;
            let d = d.canonicalize()?;
            user = monitor_user(&d)?;
            ("monitor", "--dir", d)
        }
        (_, Some(p)) => {
            pgha_agent::AgentConfig::load(p)?;
            (
                "node agent",
                "--pgdata",
                p.canonicalize().unwrap_or(p.clone()),
            )
        }
        _ => anyhow::bail!("pass --dir (monitor) or --pgdata (node)"),
    };
    print!(
        "[Unit]
Description=pgha {what} for {path}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
{user}ExecStart={exe} run {flag} {path}
Restart=always
RestartSec=1s
# 121: the node was dropped from its formation; do not restart it.
RestartPreventExitStatus=121
# Postgres runs detached from the agent: stopping or restarting the agent (an upgrade, a
# crash) leaves the database serving, so only the agent process is signalled here.
KillMode=process
TimeoutStopSec=10s
# The monitor keeps a connection open per agent (it raises its soft limit itself, up to
# this hard one).
LimitNOFILE=16384

[Install]
WantedBy=multi-user.target
",
        exe = exe.display(),
        path = path.display()
    );
    Ok(())
}

/// The `User=` line of the monitor's unit: the owner of its directory, which must not
/// be root (a monitor that reads files named by Git-edited formations runs with no
/// more rights than its own files need).
fn monitor_user(dir: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(dir)?.uid();
    if uid == 0 {
        return Ok(format!(
            "# The monitor needs no root. {dir} is root's: give it a user of its own, then\n\
             # uncomment the line below:\n\
             #   useradd --system --home-dir {dir} pgha && chown -R pgha: {dir}\n\
             #User=pgha\n",
            dir = dir.display()
        ));
    }
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    Ok(format!("User={name}\n"))
}

async fn formation(a: FormationArgs) -> anyhow::Result<()> {
    let st = a.monitor.client()?.state(&a.name).await?;
    if a.json {
        return json(&st);
    }
    if a.yaml {
        print!(
            "{}",
            pgha_api::validate::to_yaml(&st).map_err(|e| anyhow::anyhow!("{e}"))?
        );
        return Ok(());
    }
    println!(
        "formation {} (database {}, term {}, generation {}, from {})",
        st.name,
        st.dbname,
        st.term,
        st.generation,
        st.source_file.as_deref().unwrap_or("registrations only")
    );
    if let Some(spec) = &st.spec {
        println!(
            "desired: numberSyncStandbys {}, {} nodes declared{}, {} parameters",
            spec.number_sync_standbys,
            spec.nodes.len(),
            if spec.declared_nodes_only() {
                " (declared only)"
            } else {
                " (any node with the join secret)"
            },
            spec.postgresql.parameters.len()
        );
        if let Some(w) = trust_warning(&st) {
            println!("{w}");
        }
        if spec.admission.open {
            println!(
                "WARNING: admission is open (admission.open: true): anyone who reaches the monitor may join this formation and act on it; name a joinSecretFile instead"
            );
        }
        let diffs = crate::formation::differences(&st, spec);
        for d in diffs {
            println!("  not yet: {d}");
        }
    }
    let rows: Vec<Vec<String>> = st
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                format!("{}:{}", n.host, n.port),
                n.candidate_priority.to_string(),
                n.replication_quorum.to_string(),
                n.assigned_state.to_string(),
                format!("{}/{}", n.applied_generation, st.generation),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "Name",
                "Host:Port",
                "Priority",
                "Quorum",
                "Assigned State",
                "Generation"
            ],
            &rows
        )
    );
    for line in observed_vs_desired(&st) {
        println!("{line}");
    }
    Ok(())
}

/// Lines saying where observed differs from desired: nodes behind the formation's
/// generation (and why), settings pending a restart, a rejected or removed file.
pub fn observed_vs_desired(st: &pgha_api::FormationStatus) -> Vec<String> {
    let mut out = vec![];
    if st.orphaned {
        out.push(format!(
            "formation file {} was removed: running as it is, not reconciled",
            st.source_file.as_deref().unwrap_or("?")
        ));
    }
    for e in &st.config_errors {
        out.push(format!("rejected (last good version in force): {e}"));
    }
    for n in &st.nodes {
        if st.generation > 0 && n.applied_generation < st.generation {
            let why = if n.report_age_ms.is_none_or(|ms| ms > 5000) {
                "its agent does not report".to_string()
            } else if let Some(e) = &n.last_error {
                e.clone()
            } else {
                "applying".to_string()
            };
            out.push(format!(
                "{}: at generation {} of {} ({why})",
                n.name, n.applied_generation, st.generation
            ));
        }
        if !n.pending_restart.is_empty() {
            out.push(format!(
                "{}: pending restart for {}",
                n.name,
                n.pending_restart.join(", ")
            ));
        }
    }
    out
}

/// A warning when nodes accept connections without a password.
fn trust_warning(st: &pgha_api::FormationStatus) -> Option<String> {
    let nodes = st.trusting_nodes();
    (!nodes.is_empty()).then(|| {
        format!(
            "WARNING: {} run with --auth trust: anyone who reaches Postgres there connects without a password (not for production; use scram-sha-256)",
            nodes.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use pgha_api::NodeState;

    fn node(
        name: &str,
        state: NodeState,
        upstream: Option<&str>,
        lsn: u64,
    ) -> pgha_api::NodeStatus {
        serde_json::from_value(serde_json::json!({
            "node_id": 1, "name": name, "host": "10.0.0.1", "port": 5432,
            "reported_state": state, "assigned_state": state, "timeline": 1,
            "lsn": pgha_api::Lsn(lsn), "health": "good", "pg_running": true,
            "candidate_priority": 50, "replication_quorum": true, "report_age_ms": 10,
            "fenced": false, "last_error": null, "applied_generation": 1,
            "pending_restart": [], "upstream": upstream,
        }))
        .unwrap()
    }

    #[test]
    fn topology_is_a_tree_with_lag() {
        let st: pgha_api::FormationStatus = serde_json::from_value(serde_json::json!({
            "name": "default", "dbname": "appdb", "term": 2, "number_sync_standbys": 0,
            "nodes": [], "summary": "", "generation": 1,
        }))
        .unwrap();
        let st = pgha_api::FormationStatus {
            nodes: vec![
                node("node_a", NodeState::Primary, None, 5000),
                node("node_b", NodeState::Secondary, Some("node_a"), 4000),
                node("node_c", NodeState::FastForward, Some("node_b"), 3000),
                node("node_d", NodeState::Maintenance, None, 1000),
            ],
            ..st
        };
        let lines = super::topology_lines(&st);
        assert!(
            lines[0].starts_with("node_a (10.0.0.1:5432) primary"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("└─ node_b") && lines[1].ends_with("1000 bytes behind"),
            "{lines:?}"
        );
        assert!(lines[2].starts_with("   └─ node_c"), "{lines:?}");
        assert_eq!(lines[3], "not streaming:");
        assert!(lines[4].contains("node_d"), "{lines:?}");
    }

    #[test]
    fn history_reads_promotions_from_events() {
        let ev = |rule: &str, node: &str| pgha_api::Event {
            id: 1,
            time_ms: 1_796_000_000_000,
            formation: "default".into(),
            node_id: Some(2),
            node_name: Some(node.into()),
            reported_state: None,
            assigned_state: None,
            rule: rule.into(),
            description: "why".into(),
            inputs: Some(serde_json::json!({"term": 1, "nodes": [
                {"name": "node_b", "timeline": 3, "lsn": "0/3000060"},
            ]})),
            actor: None,
        };
        let list = super::promotions(&[
            ev("report", "node_b"),
            ev("failover_promote", "node_b"),
            ev("switchover_promote", "node_c"),
        ]);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].from_timeline, Some(3));
        assert_eq!(list[0].new_timeline, Some(4));
        assert_eq!(
            list[0].from_lsn.map(|l| l.to_string()).as_deref(),
            Some("0/3000060")
        );
        assert_eq!(list[1].from_timeline, None, "node_c was not in the inputs");
    }
}
