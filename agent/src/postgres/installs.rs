//! The PostgreSQL installs of a node, by major: found under `/usr/lib/postgresql/N/bin`
//! (the Debian and PGDG layout) or given with `--pg-bin-dir` (repeatable). A data
//! directory is only ever run by the install of its own major, and a new one is made
//! with the install of the major the formation runs.

use pgha_api::PgMajor;
use std::path::{Path, PathBuf};

/// The binaries pgha runs from an install.
pub const REQUIRED_BINARIES: [&str; 5] = [
    "initdb",
    "pg_ctl",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
];

/// One install: its major and its bin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub major: PgMajor,
    pub bin_dir: PathBuf,
}

/// Checks a bin directory and asks its `pg_ctl` for the major. The error says what is
/// wrong with it, for a message that names the flag or file it came from.
pub fn inspect(bin_dir: &Path) -> Result<Install, String> {
    for bin in REQUIRED_BINARIES {
        if !bin_dir.join(bin).exists() {
            return Err(format!(
                "{}: {bin} is not there (is it a Postgres bin directory?)",
                bin_dir.display()
            ));
        }
    }
    let out = std::process::Command::new(bin_dir.join("pg_ctl"))
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: running pg_ctl --version: {e}", bin_dir.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let major = PgMajor::from_version_output(&text).ok_or_else(|| {
        format!(
            "{}: pg_ctl --version said {:?}, not a PostgreSQL version",
            bin_dir.display(),
            text.trim()
        )
    })?;
    if !major.is_supported() {
        return Err(format!(
            "{}: PostgreSQL {major}; pgha runs PostgreSQL {} (install one of them, e.g. postgresql-15, and pass its bin directory)",
            bin_dir.display(),
            PgMajor::supported_list()
        ));
    }
    Ok(Install {
        major,
        bin_dir: bin_dir.to_path_buf(),
    })
}

/// The node's installs: the one in use (`pg_bin_dir`), the others its config names
/// (`pg_bin_dirs`), and those of the Debian layout. One that cannot be used is logged
/// and left out.
pub fn find(cfg: &crate::config::AgentConfig) -> Vec<Install> {
    let mut dirs = vec![cfg.pg_bin_dir.clone()];
    dirs.extend(cfg.pg_bin_dirs.iter().cloned());
    dirs.extend(debian_layout());
    let mut found: Vec<Install> = vec![];
    for d in dirs {
        if found.iter().any(|i| i.bin_dir == d) {
            continue;
        }
        match inspect(&d) {
            Ok(i) => found.push(i),
            Err(e) => tracing::error!("a PostgreSQL install is left out: {e}"),
        }
    }
    found
}

/// The installs under `/usr/lib/postgresql/*/bin` of supported majors, oldest first.
pub fn debian_layout() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return vec![];
    };
    let mut dirs: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (PgMajor(v).is_supported() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().map(|(_, p)| p).collect()
}

/// The install to run: the data directory's major when it has one (never another),
/// else the major the formation wants, else `current`. None: no install of that major.
pub fn choose<'a>(
    installs: &'a [Install],
    data: Option<PgMajor>,
    wanted: Option<PgMajor>,
    current: &Path,
) -> Option<&'a Install> {
    match data.or(wanted) {
        Some(m) => {
            // The current one first, when it is of that major (two installs of a major).
            installs
                .iter()
                .find(|i| i.major == m && i.bin_dir == current)
                .or_else(|| installs.iter().find(|i| i.major == m))
        }
        None => installs.iter().find(|i| i.bin_dir == current),
    }
}

/// Whether the install was built with OpenSSL (`pg_config --configure`); None when it
/// has no `pg_config` to ask.
pub fn has_openssl(bin_dir: &Path) -> Option<bool> {
    let out = std::process::Command::new(bin_dir.join("pg_config"))
        .arg("--configure")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.contains("--with-openssl") || text.contains("--with-ssl=openssl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(major: u32, dir: &str) -> Install {
        Install {
            major: PgMajor(major),
            bin_dir: dir.into(),
        }
    }

    #[test]
    fn the_data_directory_picks_the_install_then_the_formation_then_the_current() {
        let all = [
            install(15, "/a/15"),
            install(18, "/b/18"),
            install(18, "/c/18"),
        ];
        let pick = |data, wanted, current: &str| {
            choose(&all, data, wanted, Path::new(current)).map(|i| i.bin_dir.clone())
        };
        let m = |v| Some(PgMajor(v));
        // A data directory of 15 runs with 15 whatever the formation wants.
        assert_eq!(pick(m(15), m(18), "/b/18"), Some("/a/15".into()));
        // No data yet: the formation's major.
        assert_eq!(pick(None, m(18), "/a/15"), Some("/b/18".into()));
        // Of two installs of a major, the one in use stays.
        assert_eq!(pick(None, m(18), "/c/18"), Some("/c/18".into()));
        // Nothing said: the one in use.
        assert_eq!(pick(None, None, "/a/15"), Some("/a/15".into()));
        // No install of the major: none, never another major's.
        assert_eq!(pick(m(16), None, "/a/15"), None);
        assert_eq!(pick(None, m(16), "/a/15"), None);
    }

    #[test]
    fn a_directory_without_postgres_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = inspect(dir.path()).unwrap_err();
        assert!(e.contains("initdb is not there"), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
    }
}
