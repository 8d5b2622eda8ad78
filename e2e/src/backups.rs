//! The harness's side of backups: a pgBackRest repository on local disk that every
//! node reaches at the same path (as an NFS mount would be), and pgBackRest run by hand
//! on a node with the configuration its agent wrote.

use crate::Cluster;
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::Command;

/// The stanza of the default formation (its name).
pub const STANZA: &str = "default";

impl Cluster {
    /// An empty repository directory in the test's directory, owned by the Postgres
    /// OS user when the test runs as root.
    pub fn backup_repository(&self) -> anyhow::Result<PathBuf> {
        let repo = self.path().join("backups");
        std::fs::create_dir_all(&repo)?;
        if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")?
                .context("no postgres OS user (scripts/setup.sh installs it)")?;
            nix::unistd::chown(&repo, Some(u.uid), Some(u.gid))?;
        }
        Ok(repo)
    }

    /// `pgbackrest ARGS…` on node `i` with its agent's configuration, as the Postgres OS
    /// user; stdout, or an error with pgBackRest's stderr.
    pub fn pgbackrest(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let conf = pgha_agent::config::state_dir(&self.nodes[i].pgdata).join("pgbackrest.conf");
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "/usr/bin/pgbackrest"]);
            c
        } else {
            Command::new("/usr/bin/pgbackrest")
        };
        let out = cmd
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--stanza={STANZA}"))
            .args(args)
            .current_dir("/")
            .output()?;
        if !out.status.success() {
            bail!(
                "pgbackrest {} on {}: {}{}",
                args.join(" "),
                self.nodes[i].name,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
