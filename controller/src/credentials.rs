//! The monitor's own credentials, besides each formation's join secret and each node's
//! own token: the operator's (every action, every formation) and a read-only one (state,
//! events, metrics). Each is a random token in `<dir>/credentials/<name>.token`, mode
//! 0600, made by `create monitor` (or at the first start of a monitor made before
//! them). The controller keeps only their SHA-256, read again on SIGHUP and at every
//! resync of the formation files: rotating one is writing a new token into its file.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// The operator's credential: every action.
pub const OPERATOR: &str = "operator";
/// The read-only credential: state, events, info, metrics.
pub const READ: &str = "read";

pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join("credentials").join(format!("{name}.token"))
}

/// Makes the operator and read tokens that are missing.
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    for name in [OPERATOR, READ] {
        let p = path(dir, name);
        if p.exists() {
            continue;
        }
        let parent = p.parent().expect("a token file has a directory");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        writeln!(f, "{}", crate::records::random_secret()?)
            .with_context(|| format!("writing {}", p.display()))?;
        f.sync_all()?;
    }
    Ok(())
}

/// The token in a credential file (its first line).
pub fn read_token(dir: &Path, name: &str) -> anyhow::Result<String> {
    let p = path(dir, name);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    anyhow::ensure!(
        token.len() >= 16,
        "{}: too short to be a credential",
        p.display()
    );
    Ok(token)
}

/// SHA-256 of the monitor's credentials, as the controller checks them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitorCredentials {
    pub operator: Option<String>,
    pub read: Option<String>,
}

impl MonitorCredentials {
    /// Reads both files; one that cannot be read is logged and admits nobody.
    pub fn load(dir: &Path) -> Self {
        let get = |name| match read_token(dir, name) {
            Ok(t) => Some(pgha_api::tls::sha256_hex(t.as_bytes())),
            Err(e) => {
                tracing::error!("the {name} credential admits nobody: {e:#}");
                None
            }
        };
        MonitorCredentials {
            operator: get(OPERATOR),
            read: get(READ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path()).unwrap();
        let op = read_token(dir.path(), OPERATOR).unwrap();
        let rd = read_token(dir.path(), READ).unwrap();
        assert_ne!(op, rd);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(dir.path(), OPERATOR))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the operator token is readable by others");
        ensure(dir.path()).unwrap();
        assert_eq!(read_token(dir.path(), OPERATOR).unwrap(), op, "made twice");
        let creds = MonitorCredentials::load(dir.path());
        assert_eq!(
            creds.operator,
            Some(pgha_api::tls::sha256_hex(op.as_bytes()))
        );
        std::fs::write(path(dir.path(), READ), "short\n").unwrap();
        assert_eq!(MonitorCredentials::load(dir.path()).read, None);
    }
}
