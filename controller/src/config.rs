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
    /// Where the durable state lives: this directory (the default) or etcd.
    #[serde(default)]
    pub store: StoreConfig,
    /// `host:port` of every controller sharing the store (this one included), in the
    /// order URLs list them; empty for a single controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<String>,
}

/// The store a controller keeps its state in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// `state.json` and `events.jsonl` in the monitor's directory.
    #[default]
    File,
    /// An etcd cluster, shared by several controllers of which one leads.
    Etcd(EtcdSettings),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// Client URLs of the etcd members (`http://host:2379`, or `https://` with
    /// `ca_file`).
    pub endpoints: Vec<String>,
    /// Key prefix of everything this controller group keeps (one group per prefix).
    pub prefix: String,
    /// CA certificate (PEM) the etcd members' certificates chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// etcd user (its password in `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// A client certificate (PEM, its chain) and its key, for etcd's
    /// `--client-cert-auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `http://` endpoints off loopback are accepted (`--etcd-insecure`): every record,
    /// and the password, then cross the network in clear.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Seconds the leader's lease lasts without a keep-alive: how long the group is
    /// without a leader when the leader's VM dies.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_s: u64,
}

pub const DEFAULT_LEASE_TTL_S: u64 = 5;

impl EtcdSettings {
    /// Refuses plain-HTTP endpoints that leave this machine unless `insecure`: the
    /// group's whole state (and the etcd password) would cross the network in clear.
    /// An endpoint on loopback never does.
    pub fn check_transport(&self) -> Result<(), String> {
        if self.insecure {
            return Ok(());
        }
        for e in &self.endpoints {
            let Some(rest) = e.strip_prefix("http://") else {
                continue;
            };
            let host = rest.split('/').next().unwrap_or_default();
            let host = match host.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => host,
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(format!(
                    "etcd endpoint {e} is plain HTTP: the controllers' state and the etcd password would cross the network in clear; use https:// (with --etcd-ca-file, and --etcd-cert-file/--etcd-key-file for client certificates), or say --etcd-insecure"
                ));
            }
        }
        Ok(())
    }
}

fn default_lease_ttl() -> u64 {
    DEFAULT_LEASE_TTL_S
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
    ///
    /// With several controllers on one store, the URL names them all
    /// (`https://h1:5440,h2:5440,h3:5440#sha256=...`) and clients find the leader.
    pub fn url(&self) -> String {
        let hosts = match self.controllers.is_empty() {
            true => self.own_host_port(),
            false => self.controllers.join(","),
        };
        self.url_of(&hosts)
    }

    /// This controller's own URL (the one its leader key advertises).
    pub fn own_url(&self) -> String {
        self.url_of(&self.own_host_port())
    }

    fn own_host_port(&self) -> String {
        let port = self.listen.rsplit(':').next().unwrap_or("5440");
        let host = match self.hostname.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]", self.hostname),
            Err(_) => self.hostname.clone(),
        };
        format!("{host}:{port}")
    }

    fn url_of(&self, hosts: &str) -> String {
        match &self.tls {
            Some(t) => format!("https://{hosts}#sha256={}", t.ca_fingerprint),
            None => format!("http://{hosts}"),
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

    /// The monitor's secrets directory: the only place formation files may name a
    /// secret from (`joinSecretFile`, `standbyOf.passwordFile`). Monitors made before
    /// it was called so keep theirs, `join-secrets`.
    pub fn secrets_dir(&self) -> PathBuf {
        secrets_dir(&self.dir)
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

/// [`MonitorConfig::secrets_dir`] of the monitor in `dir`.
pub fn secrets_dir(dir: &Path) -> PathBuf {
    let legacy = dir.join("join-secrets");
    let current = dir.join(SECRETS_DIR);
    if !current.exists() && legacy.is_dir() {
        legacy
    } else {
        current
    }
}

/// Name of the secrets directory inside the monitor's directory.
pub const SECRETS_DIR: &str = "secrets";

#[cfg(test)]
mod tests {
    use super::*;

    /// The second review: etcd was reached in clear with a password.
    #[test]
    fn plain_http_to_etcd_off_loopback_needs_insecure() {
        let with = |endpoints: &[&str], insecure: bool| EtcdSettings {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            prefix: "/pgha/".into(),
            ca_file: None,
            user: None,
            password_file: None,
            cert_file: None,
            key_file: None,
            insecure,
            lease_ttl_s: 5,
        };
        for ok in [
            &["https://10.0.0.5:2379"][..],
            &[
                "http://127.0.0.1:2379",
                "http://[::1]:2379",
                "http://localhost:2379",
            ],
        ] {
            assert!(with(ok, false).check_transport().is_ok(), "{ok:?}");
        }
        let e = with(&["https://10.0.0.5:2379", "http://10.0.0.6:2379"], false)
            .check_transport()
            .unwrap_err();
        assert!(
            e.contains("http://10.0.0.6:2379") && e.contains("--etcd-insecure"),
            "{e}"
        );
        assert!(
            with(&["http://10.0.0.6:2379"], true)
                .check_transport()
                .is_ok()
        );
    }
}
