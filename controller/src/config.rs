//! The monitor's own configuration, written by `pgha create monitor` into `--dir`.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "pgha-monitor.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub dir: PathBuf,
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Host name nodes and operators use to reach this monitor.
    pub hostname: String,
    /// `sslmode` printed in formation URIs (`require` with `--ssl-self-signed` nodes).
    pub sslmode: String,
    /// Directory of formation files (`*.yaml`), the desired state. None: formations
    /// come from node registration alone.
    #[serde(default)]
    pub formations_dir: Option<PathBuf>,
}

impl MonitorConfig {
    pub fn url(&self) -> String {
        let port = self.listen.rsplit(':').next().unwrap_or("5440");
        format!("http://{}:{port}", self.hostname)
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CONFIG_FILE)
    }

    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(dir);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: no monitor here (run `pgha create monitor --dir {}` first)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_slice(&bytes).with_context(|| format!("{}: invalid", path.display()))
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        crate::store::write_file_atomically(&Self::path(&self.dir), &bytes)?;
        Ok(())
    }
}
