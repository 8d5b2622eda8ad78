//! File writes of an agent that runs as root inside directories the Postgres OS user owns
//! (PGDATA, the state directory beside it, their parent). Whoever is that user can plant
//! a symbolic link where the agent is about to write, so nothing here follows one:
//! - files are read and created with `O_NOFOLLOW`, temp files with `O_EXCL` after the
//!   old name is unlinked (which removes a link, not its target);
//! - ownership and mode are set on the open descriptor (`fchown`, `fchmod`), never by
//!   path;
//! - a replaced file is renamed over the old name (a link there is replaced, not
//!   followed), then the file and its directory are fsynced, so what the agent relies
//!   on after a crash (pg_hba.conf, the fenced flag, the highest term) is on disk.

use crate::pg::RunAs;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An I/O failure with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct FileError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| {
        // ELOOP from O_NOFOLLOW (ENOTDIR with O_DIRECTORY): say what it is.
        let errno = source.raw_os_error();
        let link = errno == Some(nix::libc::ELOOP)
            || (errno == Some(nix::libc::ENOTDIR)
                && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()));
        let source = if link {
            io::Error::other("is a symbolic link; pgha does not follow links here")
        } else {
            source
        };
        FileError {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads a file unless it is a symbolic link; `Ok(None)` when it does not exist.
pub fn read_nofollow(path: &Path) -> Result<Option<String>, FileError> {
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err("reading", path)(e)),
    };
    let mut s = String::new();
    f.read_to_string(&mut s).map_err(err("reading", path))?;
    Ok(Some(s))
}

/// Replaces `path` with `bytes` (mode `mode`, owned by `who` when given) without
/// following a link at either the temp name or the final name, and makes it durable.
pub fn replace(path: &Path, bytes: &[u8], mode: u32, who: Option<RunAs>) -> Result<(), FileError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".pgha-tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("removing", &tmp)(e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err("creating", &tmp))?;
    // The umask may have narrowed the mode: set it on the descriptor.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err("chmod", &tmp))?;
    if let Some(r) = who {
        std::os::unix::fs::fchown(&f, Some(r.uid), Some(r.gid)).map_err(err("chown", &tmp))?;
    }
    f.write_all(bytes).map_err(err("writing", &tmp))?;
    f.sync_all().map_err(err("fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err("replacing", path))?;
    sync_parent(path)
}

/// fsyncs the directory holding `path`, so a rename in it survives a crash.
pub fn sync_parent(path: &Path) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync", dir))
}

/// Makes `dir` (and missing parents) a directory for Postgres: mode 0700, owned by
/// `who`. A symbolic link at `dir` is refused rather than followed: the mode and owner
/// are set on the opened directory itself.
pub fn prepare_dir(dir: &Path, who: Option<RunAs>) -> Result<(), FileError> {
    std::fs::create_dir_all(dir).map_err(err("creating", dir))?;
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_DIRECTORY)
        .open(dir)
        .map_err(err("opening", dir))?;
    d.set_permissions(std::fs::Permissions::from_mode(0o700))
        .map_err(err("chmod 700", dir))?;
    if let Some(r) = who {
        std::os::unix::fs::fchown(&d, Some(r.uid), Some(r.gid)).map_err(err("chown", dir))?;
    }
    Ok(())
}

/// Sets the mode of a file that must not be a link.
pub fn chmod_nofollow(path: &Path, mode: u32) -> Result<(), FileError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(err("opening", path))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err("chmod", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn nobody() -> Option<RunAs> {
        nix::unistd::geteuid().is_root().then_some(RunAs {
            uid: 65534,
            gid: 65534,
        })
    }

    /// Links planted (as root here; by the Postgres user in an attack) at the file and
    /// at its temp name: the files they point to are neither read, written nor chowned.
    #[test]
    fn planted_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        let cron = outside.path().join("cron");
        std::fs::write(&secret, "root:secret\n").unwrap();
        std::fs::write(&cron, "untouched\n").unwrap();
        let owner = |p: &Path| std::fs::metadata(p).unwrap().uid();
        let (secret_uid, cron_uid) = (owner(&secret), owner(&cron));

        let hba = dir.path().join("pg_hba.conf");
        std::os::unix::fs::symlink(&secret, &hba).unwrap();
        std::os::unix::fs::symlink(&cron, dir.path().join("pg_hba.conf.pgha-tmp")).unwrap();
        let e = read_nofollow(&hba).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        replace(
            &hba,
            b"host all all 10.0.0.1/32 scram-sha-256\n",
            0o600,
            nobody(),
        )
        .unwrap();

        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root:secret\n");
        assert_eq!(std::fs::read_to_string(&cron).unwrap(), "untouched\n");
        assert_eq!(owner(&secret), secret_uid);
        assert_eq!(owner(&cron), cron_uid);
        // The link itself was replaced by a plain file with the content.
        assert!(!std::fs::symlink_metadata(&hba).unwrap().is_symlink());
        assert_eq!(
            read_nofollow(&hba).unwrap().as_deref(),
            Some("host all all 10.0.0.1/32 scram-sha-256\n")
        );
        if let Some(r) = nobody() {
            assert_eq!(owner(&hba), r.uid);
        }
        assert_eq!(std::fs::metadata(&hba).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_linked_directory_is_refused_not_chmodded() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("main.basebackup-tmp");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let e = prepare_dir(&link, nobody()).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let meta = std::fs::metadata(outside.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o755);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        // A real directory is made 0700.
        let real = dir.path().join("pgdata");
        prepare_dir(&real, nobody()).unwrap();
        assert_eq!(std::fs::metadata(&real).unwrap().mode() & 0o777, 0o700);
        let e = chmod_nofollow(&link, 0o600).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }
}
