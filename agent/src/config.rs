//! The agent's configuration and its persisted state, in a directory beside PGDATA
//! (`<pgdata>.pgha/`): `config.json` (written by `create postgres`) and `state.json`
//! (last assignment and highest term, so a restart with the controller down resumes the
//! last role, docs/src/design.md §5 rule 4).

use anyhow::Context;
use pgha_api::{Assignment, NodeId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    Trust,
    ScramSha256,
}

impl AuthMethod {
    pub fn hba_name(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub pgdata: PathBuf,
    pub pgport: u16,
    /// How peers and clients reach this node.
    pub hostname: String,
    pub dbname: String,
    /// Postgres superuser created by initdb; also the application user in the tutorial.
    pub username: String,
    pub monitor: String,
    pub formation: String,
    pub name: String,
    pub node_id: NodeId,
    /// The bin directory of the PostgreSQL install in use.
    pub pg_bin_dir: PathBuf,
    /// Other installs (`create postgres --pg-bin-dir`, repeated); those under
    /// `/usr/lib/postgresql/N/bin` are found without being named. The agent runs the
    /// one of its data directory's major (`crate::postgres::installs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pg_bin_dirs: Vec<PathBuf>,
    pub auth: AuthMethod,
    pub ssl_self_signed: bool,
    pub skip_pg_hba: bool,
    /// OS user that runs Postgres binaries when the agent runs as root.
    pub os_user: Option<String>,
    /// Port of the agent's own HTTP endpoint (0: none).
    #[serde(default)]
    pub http_port: u16,
    /// Address `/metrics` listens on instead of `http_port` (e.g. a management network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Networks the health endpoints answer (`10.0.0.0/24`, an address; empty: all),
    /// e.g. the load balancers' subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_allow: Vec<String>,
    /// Command run when this node's role changes (`crate::hooks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_role_change: Option<PathBuf>,
    /// Commands run when the agent saw Postgres start or stop (`crate::hooks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_start: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_stop: Option<PathBuf>,
    /// Command that may refuse this node's promotion (`crate::hooks::PrePromote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promote: Option<PathBuf>,
    /// Password of the formation's replication role (from the monitor at registration).
    #[serde(default)]
    pub replication_password: String,
    /// This node's own credential (from the monitor at registration): its reports carry
    /// it, and `monitor` then holds no secret. None for a node registered before nodes
    /// had one, until its first report is answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_token: Option<String>,
    /// Build this node (a formation's first) from another formation's backups instead
    /// of initdb (`create postgres --restore-from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreFrom>,
}

/// Where a point-in-time recovery reads from, and up to when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreFrom {
    /// The pgBackRest stanza of the source formation (in this formation's repository).
    pub stanza: String,
    /// `recovery_target_time`; None: replay every archived WAL segment.
    pub target_time: Option<String>,
}

impl AgentConfig {
    /// The client this node reports with: its own credential, or (before it has one)
    /// the secret its monitor URL carries.
    pub fn monitor_client(
        &self,
        timeout: std::time::Duration,
    ) -> Result<pgha_api::client::MonitorClient, pgha_api::client::ClientError> {
        pgha_api::client::MonitorClient::with_credential(
            &self.monitor,
            self.node_token.as_deref(),
            timeout,
        )
    }
}

/// Directory beside PGDATA holding the agent's files.
pub fn state_dir(pgdata: &Path) -> PathBuf {
    let mut s = pgdata.as_os_str().to_owned();
    s.push(".pgha");
    PathBuf::from(s)
}

impl AgentConfig {
    pub fn config_path(pgdata: &Path) -> PathBuf {
        state_dir(pgdata).join("config.json")
    }

    pub fn load(pgdata: &Path) -> anyhow::Result<Self> {
        let path = Self::config_path(pgdata);
        if std::fs::symlink_metadata(&path).is_err() {
            anyhow::bail!(
                "{}: this PGDATA has no pgha node (run `pgha create postgres --pgdata {}` first)",
                path.display(),
                pgdata.display()
            );
        }
        let bytes = read_config(&path).with_context(|| path.display().to_string())?;
        serde_json::from_slice(&bytes).with_context(|| format!("{}: invalid", path.display()))
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let dir = state_dir(&self.pgdata);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomically(
            &Self::config_path(&self.pgdata),
            &serde_json::to_vec_pretty(self)?,
        )
    }

    pub fn state_dir(&self) -> PathBuf {
        state_dir(&self.pgdata)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.pg_bin_dir.join(name)
    }

    /// libpq password file for the replication role.
    pub fn passfile(&self) -> PathBuf {
        self.state_dir().join("pgpass")
    }

    pub fn log_file(&self) -> PathBuf {
        self.state_dir().join("postgres.log")
    }
}

/// What the agent remembers across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub assignment: Option<Assignment>,
    /// Highest term seen; older assignments are refused.
    pub max_term: u64,
    /// The agent fenced Postgres (lease ran out) and keeps it stopped until the controller
    /// confirms the role again.
    pub fenced: bool,
    /// Last state reported as reached.
    #[serde(default)]
    pub reported: Option<pgha_api::NodeState>,
    /// The controller's rebuild epoch last carried out (PGDATA moved aside for a fresh
    /// base backup after the primary invalidated this node's slot).
    #[serde(default)]
    pub rebuilt_epoch: u64,
    /// The last restart epoch carried out (`pgha restart`).
    #[serde(default)]
    pub restarted_epoch: u64,
    /// The last backup request taken up (run, or refused here).
    #[serde(default)]
    pub backup_done_id: u64,
    /// The WAL senders that renew this primary's lease (see `lease::LeaseSenders`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_senders: Option<crate::lease::LeaseSenders>,
}

impl AgentState {
    pub fn path(cfg: &AgentConfig) -> PathBuf {
        cfg.state_dir().join("state.json")
    }

    pub fn load(cfg: &AgentConfig) -> anyhow::Result<Self> {
        let path = Self::path(cfg);
        // Never through a link, never more than a state file holds.
        match crate::files::read_capped(&path, 16 << 20)? {
            Some(b) => {
                serde_json::from_slice(&b).with_context(|| format!("{}: invalid", path.display()))
            }
            None => Ok(AgentState::default()),
        }
    }

    pub fn save(&self, cfg: &AgentConfig) -> anyhow::Result<()> {
        write_atomically(&Self::path(cfg), &serde_json::to_vec_pretty(self)?)
    }
}

/// Replaces a file atomically and durably (temp file, fsync, rename, fsync of the
/// directory), mode 0600 (the config holds the replication password), never through a
/// link planted in the Postgres-owned state directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::files::replace(path, bytes, 0o600, None)?;
    Ok(())
}

/// Reads the agent's config. Running as root, it must be a plain file owned by root:
/// the state directory belongs to the Postgres OS user, and a config written by that
/// user could name the OS user and binaries that root runs.
fn read_config(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let euid = nix::unistd::geteuid();
    let owner = f.metadata()?.uid();
    if euid.is_root() && owner != 0 {
        anyhow::bail!(
            "owned by uid {owner}, not root: refusing it (whoever owns it could choose what root runs); `chown root {}` if you wrote it yourself",
            path.display()
        );
    }
    let mut bytes = vec![];
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}
