//! The desired state: formation files in the formations directory, read whole at every
//! reload (a file change seen by the watcher, SIGHUP, or the periodic resync). Each file
//! is accepted whole or not at all; a rejected file leaves the last good version of its
//! formation in force.

use pgha_api::formation::FormationDoc;
use pgha_api::validate::{ConfigError, parse_formation};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one pass over the directory found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Valid formations by name, with the file they came from.
    pub formations: BTreeMap<String, (String, FormationDoc)>,
    /// Join secrets read from the files that `admission.joinSecretFile` names.
    pub secrets: BTreeMap<String, String>,
    /// Source replication passwords read from the files `standbyOf.passwordFile` names.
    pub source_passwords: BTreeMap<String, String>,
    /// Rejected files with every error.
    pub rejected: BTreeMap<String, Vec<ConfigError>>,
}

/// Reads every `*.yaml` / `*.yml` in `dir` (hidden and temporary files skipped), with
/// the secrets they name read from `secrets` (the monitor's secrets directory, see
/// [`secret_file`]). Without one (`pgha formation diff` on a machine that is not the
/// monitor), secrets are not read and the files are judged on their own.
pub fn scan(dir: &Path, secrets: Option<&Path>) -> Scan {
    let mut out = Scan::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    files.sort();
    for path in files {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                out.rejected.insert(
                    file.clone(),
                    vec![ConfigError {
                        file,
                        line: 1,
                        column: 1,
                        field: "(file)".into(),
                        message: format!("cannot read: {e}"),
                    }],
                );
                continue;
            }
        };
        match parse_formation(&file, &bytes) {
            Ok(doc) => {
                let name = doc.metadata.name.clone();
                let secret_files = [
                    (
                        doc.spec.admission.join_secret_file.as_ref(),
                        "joinSecretFile",
                        "spec.admission.joinSecretFile",
                        "the join secret",
                    ),
                    (
                        doc.spec
                            .standby_of
                            .as_ref()
                            .and_then(|s| s.password_file.as_ref()),
                        "passwordFile",
                        "spec.standbyOf.passwordFile",
                        "the source's replication password",
                    ),
                ];
                let mut unreadable = None;
                let mut read = [None, None];
                for (i, (path, key, field, what)) in secret_files.into_iter().enumerate() {
                    let (Some(path), Some(secrets)) = (path, secrets) else {
                        continue;
                    };
                    match secret_file(secrets, path).and_then(|p| read_secret(&p)) {
                        Ok(s) => read[i] = Some(s),
                        Err(why) => {
                            let (line, column) = locate_key(&bytes, key);
                            unreadable = Some(ConfigError {
                                file: file.clone(),
                                line,
                                column,
                                field: field.into(),
                                message: format!("cannot take {what} from {path}: {why}"),
                            });
                            break;
                        }
                    }
                }
                if let Some(e) = unreadable {
                    out.rejected.insert(file.clone(), vec![e]);
                    continue;
                }
                let [secret, source_password] = read;
                if let Some(s) = secret {
                    out.secrets.insert(name.clone(), s);
                }
                if let Some(p) = source_password {
                    out.source_passwords.insert(name.clone(), p);
                }
                if let Some((other, _)) = out.formations.get(&name) {
                    out.rejected.insert(
                        file.clone(),
                        vec![ConfigError {
                            file: file.clone(),
                            line: 1,
                            column: 1,
                            field: "metadata.name".into(),
                            message: format!("formation {name:?} is already defined in {other}"),
                        }],
                    );
                } else {
                    out.formations.insert(name, (file, doc));
                }
            }
            Err(errs) => {
                out.rejected.insert(file, errs);
            }
        }
    }
    out
}

/// The file a formation names for a secret, inside the monitor's secrets directory: a
/// bare name is taken there, an absolute path must lie directly in it. Nothing else: a
/// Git editor of formation files must not be able to hand out, or have `rotate-secret`
/// overwrite, any other file of the monitor (its credentials, its TLS key, /etc/shadow).
pub fn secret_file(secrets: &Path, named: &str) -> Result<PathBuf, String> {
    pgha_api::validate::check_secret_file_name(named)?;
    let path = Path::new(named);
    if path.is_absolute() {
        if path.parent() != Some(secrets) {
            return Err(format!(
                "only files directly in the monitor's secrets directory {} are read",
                secrets.display()
            ));
        }
        Ok(path.to_path_buf())
    } else {
        Ok(secrets.join(path))
    }
}

/// Longest secret file read (a password is one short line).
const SECRET_FILE_MAX: u64 = 1024;

/// Reads a secret: without following a link, from a regular file of this process's user
/// that no one else may read or write (0600 or stricter), holding one line of a
/// password's characters. A credential, a key or a config file fails one of these.
pub fn read_secret(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dmeta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if !dmeta.is_dir() || dmeta.uid() != me || dmeta.mode() & 0o022 != 0 {
        return Err(format!(
            "the secrets directory {} must be a directory of the monitor's user (uid {me}), writable by no one else, not a link",
            dir.display()
        ));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        // No link is followed, and a FIFO does not hold the scan.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => "it is a symbolic link: name the file itself".to_string(),
            _ => e.to_string(),
        })?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not by the monitor's user (uid {me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "mode {:o}: others may read or write it (chmod 600)",
            meta.mode() & 0o777
        ));
    }
    if meta.len() > SECRET_FILE_MAX {
        return Err(format!(
            "{} bytes: a secret is one line of at most {SECRET_FILE_MAX}",
            meta.len()
        ));
    }
    let mut text = String::new();
    f.take(SECRET_FILE_MAX)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    if secret.is_empty() {
        return Err("the file is empty".into());
    }
    if let Some(bad) = secret.chars().find(|c| !is_password_char(*c)) {
        return Err(format!(
            "holds {bad:?}: a secret is one line of letters, digits and punctuation (no spaces, quotes or backslashes)"
        ));
    }
    Ok(secret.to_string())
}

fn is_password_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\' | '`')
}

/// Writes a secret file: 0600, atomically, never through a link.
pub fn write_secret(path: &Path, secret: &str) -> Result<(), String> {
    crate::store::write_file_atomically(path, format!("{secret}\n").as_bytes())
        .map_err(|e| e.to_string())
}

fn locate_key(bytes: &[u8], key: &str) -> (u32, u32) {
    String::from_utf8_lossy(bytes)
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            l.find(&format!("{key}:"))
                .map(|c| (i as u32 + 1, c as u32 + 1))
        })
        .unwrap_or((1, 1))
}

/// Sends a unit on `tx` whenever something in `dir` changes. The watcher lives as long as
/// the returned handle.
pub fn watch(
    dir: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.try_send(());
        }
    })?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
}

/// How often formations are re-read even without a change notification.
pub const RESYNC: Duration = Duration::from_secs(10);

/// The file `create monitor` writes: the formation the tutorial's nodes join with its
/// join secret.
pub fn default_formation_yaml(name: &str, secret_file: &str) -> String {
    format!(
        "# Written by `pgha create monitor`. Edit it (or replace it from Git): the monitor\n\
         # reloads it when it changes. With no nodes listed, any node that presents the\n\
         # join secret may join: `pgha show uri --dir <monitor dir>` prints the URL with it.\n\
         apiVersion: pgha/v1\n\
         kind: Formation\n\
         metadata:\n  name: {name}\n\
         spec:\n  numberSyncStandbys: 0\n  admission:\n    joinSecretFile: {secret_file}\n  nodes: []\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A monitor directory with its operator token, a TLS key and a good secret.
    fn monitor() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
        let formations = dir.path().join("formations");
        std::fs::create_dir(&formations).unwrap();
        std::fs::create_dir(dir.path().join("credentials")).unwrap();
        write_secret(
            &dir.path().join("credentials/operator.token"),
            "operator-token-123",
        )
        .unwrap();
        write_secret(&secrets.join("good.secret"), "good-secret").unwrap();
        (dir, secrets, formations)
    }

    fn formation(formations: &Path, join: &str, password: &str) {
        std::fs::write(
            formations.join("orders.yaml"),
            format!(
                "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: orders\nspec:\n  admission:\n    joinSecretFile: {join}\n  standbyOf:\n    hosts: [\"10.1.0.5:5432\"]\n    passwordFile: {password}\n"
            ),
        )
        .unwrap();
    }

    /// What a formation file may name as a secret: only files of the secrets
    /// directory, never the monitor's credentials or any other file (the review's
    /// reproduction: `passwordFile` naming `credentials/operator.token` handed the
    /// operator's token to whoever registered).
    #[test]
    fn only_files_of_the_secrets_directory_are_read() {
        let (dir, secrets, formations) = monitor();
        let token = dir.path().join("credentials/operator.token");
        let outside = [
            token.display().to_string(),
            format!("{}/../credentials/operator.token", secrets.display()),
            "../credentials/operator.token".into(),
            "/etc/shadow".into(),
            "/etc/passwd".into(),
        ];
        for bad in &outside {
            formation(&formations, "good.secret", bad);
            let found = scan(&formations, Some(&secrets));
            let errs = &found.rejected["orders.yaml"];
            assert_eq!(
                errs[0].field, "spec.standbyOf.passwordFile",
                "{bad}: {errs:?}"
            );
            assert!(found.source_passwords.is_empty(), "{bad}");
            assert!(found.secrets.is_empty(), "{bad}");
        }
        // By bare name and by absolute path into the directory: read.
        formation(
            &formations,
            "good.secret",
            &secrets.join("good.secret").display().to_string(),
        );
        let found = scan(&formations, Some(&secrets));
        assert!(found.rejected.is_empty(), "{:?}", found.rejected);
        assert_eq!(found.secrets["orders"], "good-secret");
        assert_eq!(found.source_passwords["orders"], "good-secret");
    }

    #[test]
    fn a_link_a_readable_file_or_a_key_is_not_a_secret() {
        let (dir, secrets, formations) = monitor();
        // A link inside the directory to the operator's token.
        std::os::unix::fs::symlink(
            dir.path().join("credentials/operator.token"),
            secrets.join("link.secret"),
        )
        .unwrap();
        // Readable by others.
        std::fs::write(secrets.join("open.secret"), "open-secret\n").unwrap();
        std::fs::set_permissions(
            secrets.join("open.secret"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        // A PEM key: several lines, spaces.
        write_secret(
            &secrets.join("key.secret"),
            "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
        )
        .unwrap();
        std::fs::create_dir(secrets.join("dir.secret")).unwrap();
        for (name, why) in [
            ("link.secret", "symbolic link"),
            ("open.secret", "chmod 600"),
            ("key.secret", "one line"),
            ("dir.secret", "not a regular file"),
            ("missing.secret", "No such file"),
        ] {
            formation(&formations, name, "good.secret");
            let found = scan(&formations, Some(&secrets));
            let e = &found.rejected["orders.yaml"][0];
            assert_eq!(e.field, "spec.admission.joinSecretFile");
            assert_eq!((e.line, e.column), (7, 5), "{e}");
            assert!(e.message.contains(why), "{name}: {e}");
        }
        // A secrets directory others may write to is refused whole.
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o777)).unwrap();
        formation(&formations, "good.secret", "good.secret");
        let found = scan(&formations, Some(&secrets));
        assert!(
            found.rejected["orders.yaml"][0]
                .message
                .contains("writable by no one else"),
            "{:?}",
            found.rejected
        );
    }

    /// Without a secrets directory (`formation diff` away from the monitor) the files
    /// are judged alone; a name that leaves the directory is refused all the same.
    #[test]
    fn without_a_secrets_directory_only_the_names_are_checked() {
        let (_dir, _secrets, formations) = monitor();
        formation(&formations, "good.secret", "good.secret");
        let found = scan(&formations, None);
        assert!(found.rejected.is_empty() && found.secrets.is_empty());
        formation(&formations, "good.secret", "../x");
        let found = scan(&formations, None);
        assert_eq!(
            found.rejected["orders.yaml"][0].field,
            "spec.standbyOf.passwordFile"
        );
    }
}
