//! `pgha formation ...`: work with formation files.

use crate::MonitorArgs;
use clap::Subcommand;
use pgha_api::FormationStatus;
use pgha_api::formation::FormationSpec;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum FormationCmd {
    /// Check formation files: every error at once as `file:line:col: field: what`,
    /// exit 1 when any file is invalid.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// What the monitor would change if the files in DIR were applied now: per
    /// formation and node, current vs desired.
    Diff {
        /// Directory of formation files (a Git checkout).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Monitor URL, e.g. https://monitor:5440#sha256=... (`pgha show uri` prints it).
        #[arg(long, env = "PGHA_MONITOR")]
        monitor: Option<String>,
    },
    /// Writes a new join secret into the file the formation names
    /// (`admission.joinSecretFile`), on the monitor VM. Nodes that already joined go on
    /// with their own credentials; new nodes need the new join URL (`pgha show uri
    /// --dir`). The monitor reads it at its next resync (10 s) or on SIGHUP.
    RotateSecret {
        /// The monitor's directory.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
        formation: String,
    },
    /// Promote a standby formation (`standbyOf` in its file): its leader stops following
    /// the source and becomes writable, its standbys follow it. Remove `standbyOf` from
    /// the file next (until then `show state` reminds you). Waits until it is writable.
    Promote {
        #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
        formation: String,
        /// Seconds to wait for the promoted leader.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        monitor: MonitorArgs,
    },
}

pub async fn run(cmd: FormationCmd) -> anyhow::Result<()> {
    match cmd {
        FormationCmd::Validate { files } => validate(&files),
        FormationCmd::Diff { dir, monitor } => {
            let monitor = MonitorArgs {
                monitor,
                ..MonitorArgs::default()
            };
            diff(&dir, &monitor).await
        }
        FormationCmd::RotateSecret { dir, formation } => rotate_secret(&dir, &formation),
        FormationCmd::Promote {
            formation,
            timeout,
            monitor,
        } => promote(&formation, timeout, &monitor).await,
    }
}

async fn promote(formation: &str, timeout: u64, monitor: &MonitorArgs) -> anyhow::Result<()> {
    let client = monitor.operator_client()?;
    client.promote_formation(formation).await?;
    eprintln!("standby formation {formation:?} promoted: waiting for its leader to be writable");
    let t0 = std::time::Instant::now();
    loop {
        let st: FormationStatus = client.state(formation).await?;
        if let Some(n) = st
            .nodes
            .iter()
            .find(|n| n.assigned_state.is_writable() && n.reported_state == n.assigned_state)
            .filter(|n| n.in_recovery == Some(false))
        {
            eprintln!(
                "{} is writable ({:.1} s); now remove standbyOf from the formation's file",
                n.name,
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if t0.elapsed().as_secs() >= timeout {
            anyhow::bail!(
                "no writable leader in formation {formation:?} after {timeout} s: see `pgha show state --formation {formation}` and `pgha show events`"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn rotate_secret(dir: &std::path::Path, formation: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = pgha_controller::MonitorConfig::load(dir)?;
    let fdir = cfg.formations_dir.clone().context(
        "this monitor reads no formation files: its formations have no join secret file",
    )?;
    let secrets = cfg.secrets_dir();
    let scan = pgha_controller::desired::scan(&fdir, Some(&secrets));
    let Some((file, doc)) = scan.formations.get(formation) else {
        match scan.rejected.keys().next() {
            Some(f) => anyhow::bail!(
                "formation {formation:?}: no accepted file in {} ({f} is rejected: `pgha formation validate` says why)",
                fdir.display()
            ),
            None => anyhow::bail!("formation {formation:?}: no file in {}", fdir.display()),
        }
    };
    let Some(secret_file) = &doc.spec.admission.join_secret_file else {
        anyhow::bail!(
            "{file}: formation {formation:?} names no joinSecretFile (admission open?): nothing to rotate"
        );
    };
    // Only ever a file of the monitor's secrets directory (the scan above accepted it).
    let secret_file = pgha_controller::desired::secret_file(&secrets, secret_file)
        .map_err(|e| anyhow::anyhow!("{file}: joinSecretFile {secret_file:?}: {e}"))?;
    let new = pgha_controller::records::random_secret()?;
    // Replaced atomically (0600): the monitor never reads half a secret.
    pgha_controller::desired::write_secret(&secret_file, &new)
        .map_err(|e| anyhow::anyhow!("{}: {e}", secret_file.display()))?;
    eprintln!(
        "new join secret for {formation:?} in {}: the monitor uses it within 10 s; nodes that joined keep running, new ones join with the URL `pgha show uri --dir {}` prints",
        secret_file.display(),
        dir.display()
    );
    Ok(())
}

fn validate(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut bad = 0;
    for f in files {
        let name = f.display().to_string();
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => {
                println!("{name}: cannot read: {e}");
                bad += 1;
                continue;
            }
        };
        match pgha_api::validate::parse_formation(&name, &bytes) {
            Ok(doc) => eprintln!(
                "{name}: ok (formation {:?}, {} nodes)",
                doc.metadata.name,
                doc.spec.nodes.len()
            ),
            Err(errs) => {
                bad += 1;
                for e in errs {
                    println!("{e}");
                }
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} files invalid", files.len());
    }
    Ok(())
}

/// Differences between what runs and a desired spec, one line each.
pub fn differences(current: &FormationStatus, want: &FormationSpec) -> Vec<String> {
    let mut out = vec![];
    if let Some(db) = &want.dbname
        && *db != current.dbname
    {
        let note = if current.nodes.is_empty() {
            ""
        } else {
            " (refused: the formation has nodes)"
        };
        out.push(format!("dbname: {} -> {db}{note}", current.dbname));
    }
    if current.number_sync_standbys != want.number_sync_standbys {
        out.push(format!(
            "numberSyncStandbys: {} -> {}",
            current.number_sync_standbys, want.number_sync_standbys
        ));
    }
    let have = current
        .spec
        .as_ref()
        .map(|s| s.postgresql.parameters.clone())
        .unwrap_or_default();
    for (k, v) in &want.postgresql.parameters {
        match have.get(k) {
            None => out.push(format!("parameter {k}: (unset) -> {v}")),
            Some(old) if old != v => out.push(format!("parameter {k}: {old} -> {v}")),
            _ => {}
        }
    }
    for (k, v) in &have {
        if !want.postgresql.parameters.contains_key(k) {
            out.push(format!("parameter {k}: {v} -> (unset)"));
        }
    }
    if current.spec.as_ref().map(|s| &s.timings) != Some(&want.timings) {
        out.push(format!(
            "timings: report {} ms, failure timeout {} ms, lease {} ms",
            want.timings.report_interval_ms, want.timings.failure_timeout_ms, want.timings.lease_ms
        ));
    }
    for d in &want.nodes {
        match current.nodes.iter().find(|n| n.name == d.name) {
            None => out.push(format!(
                "node {}: declared, not registered yet ({}:{})",
                d.name, d.host, d.port
            )),
            Some(n) => {
                if u32::from(n.candidate_priority) != d.candidate_priority {
                    out.push(format!(
                        "node {}: candidatePriority {} -> {}",
                        d.name, n.candidate_priority, d.candidate_priority
                    ));
                }
                if n.replication_quorum != d.replication_quorum {
                    out.push(format!(
                        "node {}: replicationQuorum {} -> {}",
                        d.name, n.replication_quorum, d.replication_quorum
                    ));
                }
                if n.host != d.host || n.port != d.port {
                    out.push(format!(
                        "node {}: registered at {}:{}, declared at {}:{}",
                        d.name, n.host, n.port, d.host, d.port
                    ));
                }
            }
        }
    }
    if want.declared_nodes_only() {
        for n in &current.nodes {
            if !want.nodes.iter().any(|d| d.name == n.name) {
                out.push(format!(
                    "node {}: registered but not declared (left running; remove it with care)",
                    n.name
                ));
            }
        }
    }
    out
}

async fn diff(dir: &std::path::Path, monitor: &MonitorArgs) -> anyhow::Result<()> {
    // Secrets live on the monitor, not beside a checkout: the files are judged alone.
    let scan = pgha_controller::desired::scan(dir, None);
    if scan.formations.is_empty() && scan.rejected.is_empty() {
        anyhow::bail!("no formation files (*.yaml) in {}", dir.display());
    }
    let client = monitor.client()?;
    for errs in scan.rejected.values() {
        for e in errs {
            println!("{e}");
        }
    }
    for (name, (file, doc)) in &scan.formations {
        match client.state(name).await {
            Ok(current) => {
                let lines = differences(&current, &doc.spec);
                if lines.is_empty() {
                    println!("formation {name} ({file}): no change");
                } else {
                    println!("formation {name} ({file}):");
                    for l in lines {
                        println!("  {l}");
                    }
                }
            }
            Err(e) if e.code() == Some(pgha_api::routes::ErrorCode::UnknownFormation) => {
                println!(
                    "formation {name} ({file}): new, {} nodes declared",
                    doc.spec.nodes.len()
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !scan.rejected.is_empty() {
        anyhow::bail!("{} files invalid", scan.rejected.len());
    }
    Ok(())
}
