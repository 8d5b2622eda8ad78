//! `pgha backup` (ask the primary for a backup and follow it to the end) and
//! `pgha show backups` (the repository, as the primary last read it).

use crate::MonitorArgs;
use crate::table;
use clap::Args;
use pgha_api::{BackupKind, BackupsStatus, JobState};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    monitor: MonitorArgs,
    #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
    formation: String,
    /// full, diff (changes since the last full) or incr (since the last backup).
    #[arg(long = "type", default_value = "full")]
    kind: BackupKind,
    /// Give up waiting after this many seconds (the backup goes on).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Print the repository's backups as JSON at the end.
    #[arg(long)]
    json: bool,
}

/// Asks for the backup, shows its progress, and fails with pgBackRest's reason.
pub async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let client = a.monitor.operator_client()?;
    let st = client.start_backup(&a.formation, a.kind).await?;
    let (node, id) = match (&st.requested, &st.job) {
        (Some((n, r)), _) => (n.clone(), r.id),
        (None, Some((n, j))) => (n.clone(), j.id),
        (None, None) => anyhow::bail!("the monitor took the request but names no job"),
    };
    eprintln!("{} backup {id} asked of {node} (the primary)", a.kind);
    let t0 = Instant::now();
    let mut said = String::new();
    loop {
        let st = client.backups(&a.formation).await?;
        let job = st.job.as_ref().filter(|(_, j)| j.id == id);
        let line = match job {
            None => "waiting for the agent to start it".to_string(),
            Some((n, j)) => match j.state {
                JobState::Running => format!("running on {n}"),
                JobState::Succeeded => {
                    eprintln!(
                        "{:>6.1}s  done on {n} in {:.1} s",
                        t0.elapsed().as_secs_f64(),
                        j.elapsed_ms as f64 / 1000.0
                    );
                    return finish(&client, &a, st).await;
                }
                JobState::Failed => anyhow::bail!(
                    "{} backup {id} failed on {n}: {}",
                    j.kind,
                    j.message.as_deref().unwrap_or("no reason given")
                ),
            },
        };
        if line != said {
            eprintln!("{:>6.1}s  {line}", t0.elapsed().as_secs_f64());
            said = line;
        }
        if t0.elapsed() > Duration::from_secs(a.timeout) {
            anyhow::bail!(
                "backup {id} not done within {} s; it goes on (pgha show backups)",
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// After the job: the list, once the primary has read the repository again.
async fn finish(
    client: &pgha_api::client::MonitorClient,
    a: &BackupArgs,
    mut st: BackupsStatus,
) -> anyhow::Result<()> {
    let before = st.backups.len();
    let t0 = Instant::now();
    while st.backups.len() == before && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        st = client.backups(&a.formation).await?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", render(&st));
    }
    Ok(())
}

pub async fn show_backups(monitor: MonitorArgs, formation: &str, json: bool) -> anyhow::Result<()> {
    let st = monitor.client()?.backups(formation).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", render(&st));
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

/// The table of `pgha show backups`.
pub fn render(st: &BackupsStatus) -> String {
    let Some(s) = &st.settings else {
        return format!(
            "formation {:?} has no backup section in its file (spec.backup)\n",
            st.formation
        );
    };
    let mut out = format!(
        "Repository {} (stanza {}), {} full backups kept\n",
        s.repository, s.stanza, s.retention_full
    );
    if st.backups.is_empty() {
        out.push_str("no backup yet (or the primary has not read the repository yet)\n");
    } else {
        let rows: Vec<Vec<String>> = st
            .backups
            .iter()
            .map(|b| {
                vec![
                    b.label.clone(),
                    b.kind.to_string(),
                    crate::time::format_time(b.stopped * 1000)
                        .trim_end_matches(".000")
                        .to_string(),
                    format!("{}", b.stopped.saturating_sub(b.started)),
                    mib(b.database_bytes),
                    mib(b.repo_bytes),
                    format!("{} .. {}", b.wal_start, b.wal_stop),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &[
                "Label",
                "Type",
                "Finished (UTC)",
                "Secs",
                "DB MiB",
                "Repo MiB",
                "WAL",
            ],
            &rows,
        ));
    }
    match (&st.requested, &st.job) {
        (Some((n, r)), _) => out.push_str(&format!(
            "asked: {} backup {} of {n}, not started yet\n",
            r.kind, r.id
        )),
        (None, Some((n, j))) => {
            let how = match j.state {
                JobState::Running => "running".to_string(),
                JobState::Succeeded => "succeeded".to_string(),
                JobState::Failed => format!(
                    "FAILED: {}",
                    j.message.as_deref().unwrap_or("no reason given")
                ),
            };
            out.push_str(&format!(
                "last job: {} backup {} on {n}, {how} ({:.1} s)\n",
                j.kind,
                j.id,
                j.elapsed_ms as f64 / 1000.0
            ));
        }
        _ => {}
    }
    out
}
