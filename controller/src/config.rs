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
    /// TLS of the API. None only for a monitor created with `--no-ssl` (plain HTTP,
    /// warned about at every start), or by a version before TLS.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

/// The monitor's TLS identity on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM chain the API serves: its certificate, then the CA's.
    pub chain: PathBuf,
    /// PEM private key (mode 0600).
    pub key: PathBuf,
    /// The CA certificate (PEM): what clients trust, by the fingerprint URLs carry.
    pub ca: PathBuf,
    /// SHA-256 of the CA certificate's DER bytes.
    pub ca_fingerprint: String,
}

impl MonitorConfig {
    /// The URL nodes and operators reach the API at: `https://host:port#sha256=<CA
    /// fingerprint>` (the fragment pins the CA; it never leaves the client), or
    /// `http://host:port` for a `--no-ssl` monitor.
    pub fn url(&self) -> String {
        let port = self.listen.rsplit(':').next().unwrap_or("5440");
        let host = match self.hostname.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]", self.hostname),
            Err(_) => self.hostname.clone(),
        };
        match &self.tls {
            Some(t) => format!("https://{host}:{port}#sha256={}", t.ca_fingerprint),
            None => format!("http://{host}:{port}"),
        }
    }

    /// The TLS configuration the API serves with, from the files the config names.
    pub fn server_tls(&self) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
        let Some(t) = &self.tls else {
            return Ok(None);
        };
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let cfg = pgha_api::tls::server_config(&read(&t.chain)?, &read(&t.key)?)
            .map_err(|e| anyhow::anyhow!("{} / {}: {e}", t.chain.display(), t.key.display()))?;
        Ok(Some(std::sync::Arc::new(cfg)))
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
