//! The day-2 verbs on a node or a formation: maintenance, drop, reinit, restart, pause
//! and resume, each followed to its end (`wait_formation`).

use crate::{MonitorArgs, wait_formation};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum MaintenanceCmd {
    /// A node's maintenance (a primary hands over first: needs --allow-failover).
    Maintenance(MaintenanceArgs),
}

#[derive(Subcommand)]
pub enum DropCmd {
    /// Drain and drop a node.
    Node(NodeArgs),
}

#[derive(Args)]
pub struct RestartArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Restart at this UTC time (e.g. "2026-12-03 22:00") instead of now; the command
    /// returns at once and `show state` says when.
    #[arg(long, value_parser = crate::time::parse_utc)]
    scheduled: Option<u64>,
}

#[derive(Args)]
pub struct MaintenanceArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Allow maintenance of the primary: it hands over to a candidate first (without
    /// it, maintenance of the primary is refused).
    #[arg(long)]
    allow_failover: bool,
}

#[derive(Args)]
pub struct NodeArgs {
    /// The node, by the name `show state` lists.
    #[arg(long)]
    name: String,
    /// The node's formation.
    #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
    formation: String,
    #[command(flatten)]
    monitor: MonitorArgs,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

pub async fn maintenance(m: MaintenanceArgs, enable: bool) -> anyhow::Result<()> {
    use pgha_api::NodeState;
    let a = m.node;
    let client = a.monitor.operator_client()?;
    let name = a.name.clone();
    if enable {
        client
            .enable_maintenance(&a.formation, &a.name, m.allow_failover)
            .await?;
        wait_formation(&client, &a.formation, a.timeout, |st| {
            st.nodes.iter().any(|n| {
                n.name == name
                    && n.assigned_state == NodeState::Maintenance
                    && n.reported_state == NodeState::Maintenance
            })
        })
        .await?;
        eprintln!("{name} is in maintenance");
    } else {
        client.disable_maintenance(&a.formation, &a.name).await?;
        wait_formation(&client, &a.formation, a.timeout, |st| {
            st.nodes.iter().any(|n| {
                n.name == name
                    && n.assigned_state == NodeState::Secondary
                    && n.reported_state == NodeState::Secondary
            })
        })
        .await?;
        eprintln!("{name} is back as a secondary");
    }
    Ok(())
}

#[derive(Args)]
pub struct PauseArgs {
    #[arg(long, default_value = pgha_api::DEFAULT_FORMATION)]
    formation: String,
    #[command(flatten)]
    monitor: MonitorArgs,
}

pub async fn set_paused(a: PauseArgs, on: bool) -> anyhow::Result<()> {
    let client = a.monitor.operator_client()?;
    let v = client.set_paused(&a.formation, on).await?;
    let paused = v["paused"].as_bool().unwrap_or(on);
    match (on, paused) {
        (true, _) => eprintln!(
            "formation {:?} paused: nothing is assigned or failed over until `pgha resume`",
            a.formation
        ),
        (false, false) => eprintln!("formation {:?} resumed", a.formation),
        (false, true) => anyhow::bail!(
            "formation {:?} stays paused: its file says `paused: true`",
            a.formation
        ),
    }
    Ok(())
}

pub async fn reinit(a: NodeArgs) -> anyhow::Result<()> {
    let client = a.monitor.operator_client()?;
    client.reinit(&a.formation, &a.name).await?;
    eprintln!(
        "{} moves its data aside and takes a fresh base backup",
        a.name
    );
    let name = a.name.clone();
    wait_formation(&client, &a.formation, a.timeout, |st| {
        // Done: the agent carried out the rebuild (it reports the epoch once its data
        // is moved aside) and its new Postgres is up, healthy, in its assigned state.
        st.nodes.iter().any(|n| {
            n.name == name
                && !n.rebuilding
                && n.pg_running
                && n.health == pgha_api::Health::Good
                && n.reported_state == n.assigned_state
                && n.assigned_state.is_standby()
        })
    })
    .await?;
    eprintln!("{name} rebuilt and back as a standby");
    Ok(())
}

pub async fn restart(r: RestartArgs) -> anyhow::Result<()> {
    let a = r.node;
    let client = a.monitor.operator_client()?;
    client.restart(&a.formation, &a.name, r.scheduled).await?;
    if let Some(at) = r.scheduled {
        eprintln!(
            "{} restarts its Postgres at {} UTC (pgha show state says so until then)",
            a.name,
            crate::time::format_time(at).trim_end_matches(".000")
        );
        return Ok(());
    }
    eprintln!("{} restarts its Postgres", a.name);
    let name = a.name.clone();
    wait_formation(&client, &a.formation, a.timeout, |st| {
        st.nodes.iter().any(|n| {
            n.name == name
                && !n.restarting
                && n.pg_running
                && n.health == pgha_api::Health::Good
                && n.reported_state == n.assigned_state
        })
    })
    .await?;
    eprintln!("{name} restarted");
    Ok(())
}

pub async fn drop_node(a: NodeArgs) -> anyhow::Result<()> {
    let client = a.monitor.operator_client()?;
    client.drop_node(&a.formation, &a.name).await?;
    let name = a.name.clone();
    wait_formation(&client, &a.formation, a.timeout, |st| {
        !st.nodes.iter().any(|n| n.name == name)
    })
    .await?;
    eprintln!("{name} left the formation (its PGDATA stays on its VM)");
    Ok(())
}
