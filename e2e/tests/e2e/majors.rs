//! The PostgreSQL major as part of the desired state: the formation file's
//! `spec.postgresql.version` picks which of a node's installs makes its data
//! directory; a node without that major, a directory that is no install, and an install
//! without SSL asked for `--ssl-self-signed` are refused before anything is stored; a
//! file that later names another major changes nothing and says why.

use pgha_api::NodeState::*;
use pgha_e2e::{Cluster, TEST_INSTALLS, scenario};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const PG15: &str = "/usr/lib/postgresql/15/bin";

fn formation(version: u32) -> String {
    format!(
        "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: default\nspec:\n  dbname: appdb\n  postgresql:\n    version: {version}\n"
    )
}

fn pg_version(c: &Cluster, i: usize) -> anyhow::Result<String> {
    Ok(
        std::fs::read_to_string(c.nodes[i].pgdata.join("PG_VERSION"))?
            .trim()
            .to_string(),
    )
}

/// The refusal of `create postgres --name name extra…`, and that nothing of the node
/// was kept: no config beside its PGDATA, no node in the formation.
fn refused(c: &mut Cluster, name: &str, extra: &[&str]) -> anyhow::Result<String> {
    let err = match c.add_node_with(name, extra) {
        Ok(_) => anyhow::bail!("{name} with {extra:?} was created"),
        Err(e) => format!("{e:#}"),
    };
    let config = pgha_agent::AgentConfig::config_path(&c.path().join(name));
    anyhow::ensure!(!config.exists(), "{} was written", config.display());
    anyhow::ensure!(
        c.state()?.nodes.iter().all(|n| n.name != name),
        "{name} was registered"
    );
    Ok(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_formation_file_picks_the_major_and_a_node_without_it_is_refused() {
    scenario(async |c| {
        let pg16 = format!("{TEST_INSTALLS}/pginstall/bin");
        c.write_formation("default.yaml", &formation(16))?;
        c.wait_until_in("default", "declaring PostgreSQL 16", T, |st| {
            st.spec
                .as_ref()
                .is_some_and(|s| s.postgresql.version == Some(pgha_api::PgMajor(16)))
        })?;

        // Bad input, each refused by name before anything is stored.
        let err = refused(c, "node_x", &["--pg-bin-dir", PG15])?;
        anyhow::ensure!(
            err.contains("runs PostgreSQL 16") && err.contains("PostgreSQL 15 only"),
            "{err}"
        );
        let err = refused(c, "node_y", &["--pg-bin-dir", "/tmp"])?;
        anyhow::ensure!(
            err.contains("--pg-bin-dir /tmp: initdb is not there"),
            "{err}"
        );
        let err = refused(c, "node_z", &["--pg-bin-dir", &pg16, "--ssl-self-signed"])?;
        anyhow::ensure!(
            err.contains("built without SSL") && err.contains("PostgreSQL 16"),
            "{err}"
        );

        // Nodes with both majors installed make their data with the file's.
        for name in ["node_a", "node_b"] {
            c.add_node_with(name, &["--pg-bin-dir", PG15, "--pg-bin-dir", &pg16])?;
        }
        let before = c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        for i in 0..2 {
            anyhow::ensure!(pg_version(c, i)? == "16", "node {i} is not on 16");
        }
        anyhow::ensure!(
            before
                .nodes
                .iter()
                .all(|n| n.major == Some(pgha_api::PgMajor(16))),
            "show state gives each node's major"
        );

        // The file now names 18: an upgrade this version does not do; said, not acted on.
        c.write_formation("default.yaml", &formation(18))?;
        let st = c.wait_until_in("default", "saying the major differs", T, |st| {
            st.summary.contains("declares PostgreSQL 18")
        })?;
        anyhow::ensure!(
            st.summary.contains("primary runs PostgreSQL 16"),
            "{}",
            st.summary
        );
        anyhow::ensure!(st.term == before.term, "the term moved");
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        for i in 0..2 {
            anyhow::ensure!(pg_version(c, i)? == "16", "node {i} changed major");
        }
        Ok(())
    })
    .await;
}

/// Debian 12's pgBackRest 2.45 backs up PostgreSQL up to 15: a backup section on a 16
/// formation is not put in force (no archive command that would fail on every segment
/// and keep all WAL), `show state` names the node, both versions and the major, and a
/// backup asked by hand is refused with the same words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_section_on_a_major_pgbackrest_does_not_back_up_is_refused() {
    scenario(async |c| {
        let pg16 = format!("{TEST_INSTALLS}/pginstall/bin");
        let pgbackrest = std::process::Command::new("/usr/bin/pgbackrest")
            .arg("version")
            .output()?;
        let version = String::from_utf8_lossy(&pgbackrest.stdout)
            .trim()
            .to_string();
        anyhow::ensure!(
            version == "pgBackRest 2.45",
            "this test knows Debian 12's pgBackRest 2.45, not {version:?}"
        );
        c.declare_backups("")?;
        c.add_node_with("node_a", &["--pg-bin-dir", &pg16])?;
        c.wait_for(&[("node_a", Single)], T)?;
        let st = c.wait_until_in("default", "refusing the backup section", T, |st| {
            st.summary.contains("spec.backup is not in force")
        })?;
        anyhow::ensure!(
            st.summary.contains("node_a has pgBackRest 2.45")
                && st.summary.contains("runs PostgreSQL 16"),
            "{}",
            st.summary
        );
        let db = c.connect_node(0).await?;
        let mode: String = db.query_one("SHOW archive_mode", &[]).await?.get(0);
        anyhow::ensure!(mode == "off", "archive_mode is {mode}");
        let (ok, _, err) = c.pgha(&["backup", "--monitor", &c.join_url])?;
        anyhow::ensure!(!ok && err.contains("pgBackRest 2.45"), "{err}");
        Ok(())
    })
    .await;
}
