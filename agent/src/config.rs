//! The agent's configuration and its persisted state, in a directory beside PGDATA
//! (`<pgdata>.pgha/`): `config.json` (written by `create postgres`) and `state.json`
//! (last assignment and highest term, so a restart with the controller down resumes the
//! last role, DESIGN §5 rule 4).

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
    pub pg_bin_dir: PathBuf,
    pub auth: AuthMethod,
    pub ssl_self_signed: bool,
    pub skip_pg_hba: bool,
    /// OS user that runs Postgres binaries when the agent runs as root.
    pub os_user: Option<String>,
    /// Port of the agent's own HTTP endpoint (0: none).
    #[serde(default)]
    pub http_port: u16,
    /// Password of the formation's replication role (from the monitor at registration).
    #[serde(default)]
    pub replication_password: String,
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
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: this PGDATA has no pgha node (run `pgha create postgres --pgdata {}` first)",
                path.display(),
                pgdata.display()
            )
        })?;
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
}

impl AgentState {
    pub fn path(cfg: &AgentConfig) -> PathBuf {
        cfg.state_dir().join("state.json")
    }

    pub fn load(cfg: &AgentConfig) -> anyhow::Result<Self> {
        let path = Self::path(cfg);
        match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("{}: invalid", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, cfg: &AgentConfig) -> anyhow::Result<()> {
        write_atomically(&Self::path(cfg), &serde_json::to_vec_pretty(self)?)
    }
}

/// Replaces a file atomically: temp file, fsync, rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // 0600: the config holds the replication password.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}
