//! The harness's side of backups: a pgBackRest repository on local disk that every
//! node reaches at the same path (as an NFS mount would be), and pgBackRest run by hand
//! on a node with the configuration its agent wrote.

use crate::Cluster;
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

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

    /// Rewrites the default formation file with a backup section (`extra`: more lines
    /// in it) and waits until the monitor took it in. Nodes are not declared: any may
    /// join.
    pub fn declare_backups(&self, extra: &str) -> anyhow::Result<()> {
        let repo = self.backup_repository()?;
        self.write_formation(
            "default.yaml",
            &format!(
                "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  backup:\n    repository: {}\n    retentionFull: 2\n{extra}",
                repo.display()
            ),
        )?;
        let t0 = Instant::now();
        loop {
            let shown = self.pgha_ok(&["show", "backups", "--monitor", &self.monitor_url])?;
            if shown.contains("Repository") {
                return Ok(());
            }
            anyhow::ensure!(t0.elapsed() < T, "the backup section never took: {shown}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Makes node `i` (a primary) finish its WAL segment, so the archiver has one to
    /// push; the segment's name.
    pub async fn switch_wal(&self, i: usize) -> anyhow::Result<String> {
        let db = self.connect_node(i).await?;
        db.batch_execute(
            "CREATE TABLE IF NOT EXISTS wal_filler (x int); INSERT INTO wal_filler VALUES (1)",
        )
        .await?;
        let row = db
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Node `i`'s clock now, as a `--target-time`.
    pub async fn db_now(&self, i: usize) -> anyhow::Result<String> {
        let db = self.connect_node(i).await?;
        let row = db
            .query_one(
                "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// A new formation `name` whose first node is restored from `from`'s backups up to
    /// `target` (None: the archive's end); waits until it runs as single. Returns the
    /// node's index.
    pub fn restore_formation(
        &mut self,
        name: &str,
        from: &str,
        target: Option<&str>,
    ) -> anyhow::Result<usize> {
        let i = self.start_restore(name, from, target)?;
        self.wait_first_node(name, "single", T, |n| n["reported_state"] == "single")?;
        Ok(i)
    }

    /// The JSON (as `show state --json` has it) of formation `name`'s first node, once
    /// `done` holds for it.
    pub fn wait_first_node(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let t0 = Instant::now();
        loop {
            let st = self.pgha_ok(&[
                "show",
                "state",
                "--formation",
                name,
                "--json",
                "--monitor",
                &self.monitor_url,
            ])?;
            let v: serde_json::Value = serde_json::from_str(&st)?;
            if let Some(n) = v["nodes"].as_array().and_then(|a| a.first())
                && done(n)
            {
                return Ok(n.clone());
            }
            anyhow::ensure!(t0.elapsed() < timeout, "{name}: never {what}: {st}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `restore_formation` without the wait: the formation file (the same repository),
    /// then its first node with `--restore-from`.
    pub fn start_restore(
        &mut self,
        name: &str,
        from: &str,
        target: Option<&str>,
    ) -> anyhow::Result<usize> {
        let repo = self.backup_repository()?;
        self.write_formation(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: {name}\nspec:\n  dbname: appdb\n  backup:\n    repository: {}\n",
                repo.display()
            ),
        )?;
        let node = format!("{name}_1");
        let mut args = vec!["--formation", name, "--restore-from", from];
        if let Some(t) = target {
            args.extend(["--target-time", t]);
        }
        let t0 = Instant::now();
        loop {
            match self.add_node_with(&node, &args) {
                Ok(i) => return Ok(i),
                // The monitor reads the new file within a moment.
                Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                    eprintln!("not yet: {e:#}");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
