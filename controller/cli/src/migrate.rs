//! `pgha migrate --dir D --etcd-endpoints ...`: moves a stopped monitor's state from its
//! directory (the file store) into etcd, so that more controllers can join it
//! (`create monitor --store etcd --copy-from D`). Nodes keep their URLs, ids, tokens
//! and roles: the state moves whole, and the data plane runs on meanwhile.

use crate::create::{EtcdArgs, absolute, etcd_store};
use anyhow::{Context, bail};
use clap::Args;
use pgha_controller::MonitorConfig;
use pgha_controller::config::StoreConfig;
use pgha_controller::store::{FileStore, Store};
use std::path::PathBuf;

#[derive(Args)]
pub struct MigrateArgs {
    /// The monitor's directory (the monitor must be stopped).
    #[arg(long)]
    dir: PathBuf,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// HOST:PORT of every controller the group will have, this one first (URLs name
    /// them all); the default keeps this one alone until others are added.
    #[arg(long, value_delimiter = ',')]
    controllers: Vec<String>,
}

pub async fn run(a: MigrateArgs) -> anyhow::Result<()> {
    let dir = absolute(&a.dir)?;
    let mut cfg = MonitorConfig::load(&dir)?;
    if cfg.store != StoreConfig::File {
        bail!(
            "{}: this monitor keeps its state in etcd already",
            MonitorConfig::path(&dir).display()
        );
    }
    // Held until the config names etcd: a monitor started meanwhile is refused.
    let _lock = FileStore::lock(&dir).context(
        "the monitor must be stopped while its state moves (systemctl stop, or end `pgha run`)",
    )?;
    let file = FileStore::new(&dir);
    let state = file.load()?;
    let events = file.load_events()?;
    let store = etcd_store(&a.etcd, false)?;
    #[cfg(feature = "etcd")]
    {
        let StoreConfig::Etcd(settings) = &store else {
            unreachable!("etcd_store returns an etcd store")
        };
        pgha_controller::store::etcd::Etcd::connect(settings)?.import(&state, &events)?;
    }
    let nodes: usize = state.formations.values().map(|f| f.nodes.len()).sum();
    // The file state stays beside, renamed, so nobody mistakes it for the live one.
    let old = dir.join("state.json");
    if old.exists() {
        let kept = dir.join("state.json.migrated-to-etcd");
        std::fs::rename(&old, &kept)
            .with_context(|| format!("renaming {} to {}", old.display(), kept.display()))?;
    }
    cfg.store = store;
    if !a.controllers.is_empty() {
        cfg.controllers = a.controllers.clone();
    }
    cfg.save()?;
    eprintln!(
        "moved {} formation(s), {nodes} node(s) and {} event(s) into etcd at {} (prefix {})",
        state.formations.len(),
        events
            .len()
            .min(pgha_controller::store::etcd::EVENTS_KEPT as usize),
        a.etcd.endpoints_text(),
        a.etcd.prefix()
    );
    eprintln!(
        "start it again with `pgha run --dir {}`; add controllers with `pgha create monitor --store etcd --copy-from {} ...`",
        dir.display(),
        dir.display()
    );
    Ok(())
}
