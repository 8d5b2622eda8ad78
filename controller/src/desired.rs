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

/// Reads every `*.yaml` / `*.yml` in `dir` (hidden and temporary files skipped).
pub fn scan(dir: &Path) -> Scan {
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
                    let Some(path) = path else { continue };
                    match std::fs::read_to_string(path) {
                        Ok(s) if !s.trim().is_empty() => read[i] = Some(s.trim().to_string()),
                        res => {
                            let why = match res {
                                Err(e) => e.to_string(),
                                Ok(_) => "the file is empty".into(),
                            };
                            let (line, column) = locate_key(&bytes, key);
                            unreadable = Some(ConfigError {
                                file: file.clone(),
                                line,
                                column,
                                field: field.into(),
                                message: format!("cannot read {what} from {path}: {why}"),
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
pub fn default_formation_yaml(name: &str, secret_file: &Path) -> String {
    format!(
        "# Written by `pgha create monitor`. Edit it (or replace it from Git): the monitor\n\
         # reloads it when it changes. With no nodes listed, any node that presents the\n\
         # join secret may join: `pgha show uri --dir <monitor dir>` prints the URL with it.\n\
         apiVersion: pgha/v1\n\
         kind: Formation\n\
         metadata:\n  name: {name}\n\
         spec:\n  numberSyncStandbys: 0\n  admission:\n    joinSecretFile: {}\n  nodes: []\n",
        secret_file.display()
    )
}
