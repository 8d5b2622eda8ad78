//! `pgha perform`: switchover, promotion of a chosen node, and a forced failover, each
//! followed to its end.

use crate::{MonitorArgs, wait_formation};
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Subcommand)]
pub enum PerformCmd {
    /// Planned switchover: the primary hands over to its best secondary. Waits until done.
    Switchover(SwitchoverArgs),
    /// Planned switchover to a chosen node. Waits until done.
    Promotion(PromotionArgs),
    /// Force a failover that the data-loss guard blocks (the primary and quorum
    /// standbys that may hold its last commits are gone). Waits until a primary runs.
    Failover(FailoverArgs),
}

#[derive(Args)]
pub struct FailoverArgs {
    /// Required: you accept that commits the failed nodes acknowledged may be lost, and
    /// you checked that the nodes that do not report are down (not merely cut off from
    /// the monitor), since pgha cannot ask them.
    #[arg(long)]
    allow_data_loss: bool,
    /// Why (recorded in the formation's events).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    switchover: SwitchoverArgs,
}

#[derive(Args)]
pub struct PromotionArgs {
    /// The node to promote.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    switchover: SwitchoverArgs,
}

#[derive(Args)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    monitor: MonitorArgs,
    #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
    formation: String,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// Runs a `perform` verb.
pub async fn run(cmd: PerformCmd) -> anyhow::Result<()> {
    match cmd {
        PerformCmd::Switchover(a) => switchover(a, None).await,
        PerformCmd::Promotion(a) => switchover(a.switchover, Some(&a.name)).await,
        PerformCmd::Failover(a) => forced_failover(a).await,
    }
}

/// Waits for a switchover to finish, printing each state change.
async fn switchover(args: SwitchoverArgs, target: Option<&str>) -> anyhow::Result<()> {
    let client = args.monitor.operator_client()?;
    let t0 = std::time::Instant::now();
    // A standby still replaying a burst of writes (or a formation still settling) is a
    // passing refusal: wait for it, within the timeout, rather than fail at once.
    let mut said = String::new();
    let started = loop {
        match client.switchover(&args.formation, target).await {
            Ok(s) => break s,
            Err(e)
                if e.code() == Some(pgha_api::routes::ErrorCode::SwitchoverRefused)
                    && t0.elapsed() < Duration::from_secs(args.timeout.min(30))
                    && (e.to_string().contains("caught-up")
                        || e.to_string().contains("no stable primary")) =>
            {
                if said != e.to_string() {
                    eprintln!("waiting: {e}");
                    said = e.to_string();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    eprintln!(
        "switchover started (term {}): node {} -> node {}",
        started.term, started.from_node, started.to_node
    );
    let stable = |st: &pgha_api::FormationStatus, id, s| {
        st.nodes
            .iter()
            .any(|n| n.node_id == id && n.reported_state == s && n.assigned_state == s)
    };
    let remaining = args.timeout.saturating_sub(t0.elapsed().as_secs());
    wait_formation(&client, &args.formation, remaining, |st| {
        stable(st, started.to_node, pgha_api::NodeState::Primary)
            && stable(st, started.from_node, pgha_api::NodeState::Secondary)
    })
    .await
    .map_err(|e| anyhow::anyhow!("switchover: {e}"))?;
    eprintln!(
        "switchover done in {:.1}s: node {} is primary, node {} is secondary",
        t0.elapsed().as_secs_f64(),
        started.to_node,
        started.from_node
    );
    Ok(())
}

/// Forces a failover the data-loss guard blocks, then waits until a primary runs.
async fn forced_failover(a: FailoverArgs) -> anyhow::Result<()> {
    if !a.allow_data_loss {
        anyhow::bail!(
            "pgha fails over by itself whenever no acknowledged commit can be lost; \
             forcing one that may lose commits needs --allow-data-loss --reason TEXT"
        );
    }
    let reason = match a.reason.as_deref().map(str::trim) {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => anyhow::bail!("--reason TEXT is required: it is recorded in the events"),
    };
    let args = a.switchover;
    let client = args.monitor.operator_client()?;
    let t0 = std::time::Instant::now();
    let started = client
        .forced_failover(
            &args.formation,
            &pgha_api::ForcedFailoverRequest {
                allow_data_loss: true,
                reason,
            },
        )
        .await?;
    match started.to_node {
        Some(n) => eprintln!(
            "failover forced (term {}): promoting node {n}",
            started.term
        ),
        None => eprintln!(
            "failover forced (term {}): the promotion in progress goes on without the data-loss guard",
            started.term
        ),
    }
    wait_formation(&client, &args.formation, args.timeout, |st| {
        st.nodes
            .iter()
            .any(|n| n.assigned_state.is_writable() && n.reported_state == n.assigned_state)
    })
    .await
    .map_err(|e| anyhow::anyhow!("failover: {e}"))?;
    eprintln!(
        "failover done in {:.1}s (recorded in pgha show events)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
