//! File writes of an agent that runs as root inside directories the Postgres OS user owns
//! (PGDATA, the state directory beside it, their parent). Whoever is that user can plant
//! a symbolic link where the agent is about to write, so nothing here follows one:
//! - files are read and created with `O_NOFOLLOW`, temp files with `O_EXCL` after the
//!   old name is unlinked (which removes a link, not its target);
//! - ownership and mode are set on the open descriptor (`fchown`, `fchmod`), never by
//!   path;
//! - a replaced file is renamed over the old name (a link there is replaced, not
//!   followed), then the file and its directory are fsynced, so what the agent relies
//!   on after a crash (pg_hba.conf, the fenced flag, the highest term) is on disk;
//! - `O_NOFOLLOW` guards the last component only: the Postgres user can also swap a
//!   directory above it (PGDATA for a link, `pg_replslot` for a link) between two of
//!   the agent's steps. So a file or directory that ends up the Postgres user's is
//!   written with this thread's filesystem identity switched to that user
//!   ([`as_fs_user`], Linux's per-thread `setfsuid`): every path is then resolved with
//!   that user's rights, and a swapped link leads only where that user could write
//!   anyway. Root resolves a path itself only where every ancestor is root's and
//!   writable by no one else ([`trusted_path`]).

use crate::os_user::RunAs;
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

/// Runs `f` with this thread's filesystem user and group switched to `who` (when this
/// process is root; otherwise `f` runs as it is), and switches back. The switch clears
/// root's capabilities over files for that time: a path is resolved, and a file created,
/// with `who`'s rights alone. `f` must not yield to another task (no `.await` runs on
/// this thread meanwhile): the identity belongs to the thread, not the task.
pub fn as_fs_user<T>(who: Option<RunAs>, f: impl FnOnce() -> T) -> T {
    use nix::unistd::{Gid, Uid, setfsgid, setfsuid};
    let Some(r) = who.filter(|_| nix::unistd::geteuid().is_root()) else {
        return f();
    };
    // Group first: once the user is not root, the group can no longer be changed.
    let old_gid = setfsgid(Gid::from_raw(r.gid));
    let old_uid = setfsuid(Uid::from_raw(r.uid));
    let out = f();
    setfsuid(old_uid);
    setfsgid(old_gid);
    out
}

/// Whether root may resolve `path` by itself: every existing directory on it, from `/`
/// down, is root's and writable by no one else (or sticky, as /tmp: there only root may
/// rename root's entries), and none is a link. Then no other user can swap a component.
pub fn trusted_path(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mut at = PathBuf::from("/");
    for c in path
        .components()
        .skip_while(|c| matches!(c, std::path::Component::RootDir))
    {
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(_) => return false,
        };
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.file_type().is_symlink() || meta.uid() != 0 || (meta.mode() & 0o022 != 0 && !sticky)
        {
            return false;
        }
        at.push(c);
        if std::fs::symlink_metadata(&at).is_err() {
            // The rest does not exist yet: made by root under a trusted directory.
            return true;
        }
    }
    true
}

/// Writes a file owned by `who` (0600) if its content differs, never through a link.
/// Returns true when written.
pub fn write_if_changed(path: &Path, content: &str, who: Option<RunAs>) -> Result<bool, FileError> {
    if read_nofollow(path)?.as_deref() == Some(content) {
        return Ok(false);
    }
    replace(path, content.as_bytes(), 0o600, who)?;
    Ok(true)
}

/// Reads at most `max` bytes of a regular file, never through a link at its name, never
/// blocking on a FIFO or reading a device forever; `Ok(None)` when it does not exist.
/// For the files a root agent reads in directories the Postgres user owns (slot state
/// files, `postmaster.pid`, its own state file, Postgres's log).
pub fn read_capped(path: &Path, max: u64) -> Result<Option<Vec<u8>>, FileError> {
    read_capped_from(path, max, None)
}

/// [`read_capped`] of the last `max` bytes when `tail`, or the first ones otherwise.
fn read_capped_from(path: &Path, max: u64, tail: Option<()>) -> Result<Option<Vec<u8>>, FileError> {
    use std::io::{Seek, SeekFrom};
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err("reading", path)(e)),
    };
    let meta = f.metadata().map_err(err("reading", path))?;
    if !meta.is_file() {
        return Err(err("reading", path)(io::Error::other("not a regular file")));
    }
    if tail.is_some() {
        f.seek(SeekFrom::Start(meta.len().saturating_sub(max)))
            .map_err(err("reading", path))?;
    }
    let mut out = vec![];
    f.take(max)
        .read_to_end(&mut out)
        .map_err(err("reading", path))?;
    Ok(Some(out))
}

/// The last `max` bytes of a regular file, as [`read_capped`] reads.
pub fn read_tail(path: &Path, max: u64) -> Result<Option<Vec<u8>>, FileError> {
    read_capped_from(path, max, Some(()))
}

/// Replaces `path` with `bytes` (mode `mode`, owned by `who` when given) without
/// following a link at either the temp name or the final name, and makes it durable.
/// With `who`, the whole write runs as that user ([`as_fs_user`]).
pub fn replace(path: &Path, bytes: &[u8], mode: u32, who: Option<RunAs>) -> Result<(), FileError> {
    as_fs_user(who, || replace_as_self(path, bytes, mode, who))
}

fn replace_as_self(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    who: Option<RunAs>,
) -> Result<(), FileError> {
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
    if let Some(r) = who
        && !nix::unistd::geteuid().is_root()
    {
        std::os::unix::fs::fchown(&f, Some(r.uid), Some(r.gid)).map_err(err("chown", &tmp))?;
    }
    f.write_all(bytes).map_err(err("writing", &tmp))?;
    fsync(&f, &tmp)?;
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
    let d = File::open(dir).map_err(err("fsync", dir))?;
    fsync(&d, dir)
}

#[cfg(test)]
thread_local! {
    /// What this thread fsynced, in order (the seam the durability tests read).
    static FSYNCED: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(vec![]) };
}

/// `fsync` of an open file or directory (its path for the error, and for the tests).
fn fsync(f: &File, path: &Path) -> Result<(), FileError> {
    #[cfg(test)]
    FSYNCED.with(|s| s.borrow_mut().push(path.to_path_buf()));
    f.sync_all().map_err(err("fsync", path))
}

/// Makes `dir` (and missing parents) a directory for Postgres: mode 0700, owned by
/// `who`. A symbolic link at `dir` is refused rather than followed: the mode and owner
/// are set on the opened directory itself. Root makes it only under a
/// [`trusted_path`] (then hands it to `who`); anywhere else it is made as `who`, who
/// must then be able to.
pub fn prepare_dir(dir: &Path, who: Option<RunAs>) -> Result<(), FileError> {
    if who.is_some() && !trusted_path(dir) {
        return as_fs_user(who, || prepare_dir_as_self(dir, None));
    }
    prepare_dir_as_self(dir, who)
}

fn prepare_dir_as_self(dir: &Path, who: Option<RunAs>) -> Result<(), FileError> {
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

/// Sets the mode of a file that must not be a link (as `who`, see [`as_fs_user`]).
pub fn chmod_nofollow(path: &Path, mode: u32, who: Option<RunAs>) -> Result<(), FileError> {
    as_fs_user(who, || chmod_nofollow_as_self(path, mode))
}

fn chmod_nofollow_as_self(path: &Path, mode: u32) -> Result<(), FileError> {
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
        if let Some(r) = nobody() {
            // The directory is the Postgres user's, as PGDATA is.
            std::os::unix::fs::chown(dir.path(), Some(r.uid), Some(r.gid)).unwrap();
        }
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
        let e = chmod_nofollow(&link, 0o600, None).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    /// A layout as on a VM: `/…/root-only` stands for a directory only root may write
    /// (/etc/modprobe.d), `home` for the Postgres user's directory holding PGDATA (as
    /// Debian's /var/lib/postgresql/15). Needs root, as the attack does.
    struct Layout {
        _dir: tempfile::TempDir,
        root_only: PathBuf,
        home: PathBuf,
        who: RunAs,
    }

    fn layout() -> Option<Layout> {
        let who = nobody()?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root_only = dir.path().join("root-only");
        std::fs::create_dir(&root_only).unwrap();
        std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(root_only.join("pgdata")).unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(who.uid), Some(who.gid)).unwrap();
        as_fs_user(Some(who), || std::fs::create_dir(home.join("pgdata"))).unwrap();
        Some(Layout {
            _dir: dir,
            root_only,
            home,
            who,
        })
    }

    fn entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect()
    }

    /// The second review: the Postgres user swaps a directory above PGDATA for a link to
    /// a directory only root may write; root's next rewrite of pg_hba.conf would create
    /// a file there.
    #[test]
    fn a_swapped_parent_leads_only_where_the_postgres_user_could_write() {
        let Some(l) = layout() else { return };
        // Writes into the real layout work, and the file is the Postgres user's.
        let hba = l.home.join("pgdata/pg_hba.conf");
        replace(&hba, b"local all all peer\n", 0o600, Some(l.who)).unwrap();
        assert_eq!(std::fs::metadata(&hba).unwrap().uid(), l.who.uid);
        // `home/base` -> root-only: `home/base/pgdata` is root-only/pgdata.
        std::os::unix::fs::symlink(&l.root_only, l.home.join("base")).unwrap();
        let swapped = l.home.join("base/pgdata/pg_hba.conf");
        let e = replace(&swapped, b"x\n", 0o600, Some(l.who)).unwrap_err();
        assert!(e.to_string().contains("Permission denied"), "{e}");
        assert!(entries(&l.root_only.join("pgdata")).is_empty());
        let e = prepare_dir(&l.home.join("base/pgdata/sub"), Some(l.who)).unwrap_err();
        assert!(e.to_string().contains("Permission denied"), "{e}");
        assert!(entries(&l.root_only.join("pgdata")).is_empty());
    }

    /// PGDATA exchanged for a link (`renameat2(RENAME_EXCHANGE)`, one atomic step the
    /// Postgres user may take in its own directory at any moment).
    #[test]
    fn an_exchanged_pgdata_is_never_written_through() {
        let Some(l) = layout() else { return };
        let pgdata = l.home.join("pgdata");
        let link = l.home.join("link");
        std::os::unix::fs::symlink(l.root_only.join("pgdata"), &link).unwrap();
        {
            use std::os::unix::ffi::OsStrExt;
            let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
            let (a, b) = (c(&pgdata), c(&link));
            let at = nix::libc::AT_FDCWD;
            // SAFETY: two valid C strings; the call only names them.
            let rc = unsafe {
                nix::libc::renameat2(at, a.as_ptr(), at, b.as_ptr(), nix::libc::RENAME_EXCHANGE)
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        }
        assert!(std::fs::symlink_metadata(&pgdata).unwrap().is_symlink());
        for name in ["postgresql.pgha.conf", "pg_hba.conf"] {
            assert!(replace(&pgdata.join(name), b"x\n", 0o600, Some(l.who)).is_err());
        }
        assert!(entries(&l.root_only.join("pgdata")).is_empty());
    }

    /// A `pg_replslot` planted as a link: the slot copy's directory and state file are
    /// not made where it points.
    #[test]
    fn a_pg_replslot_link_is_not_followed_into_a_root_directory() {
        let Some(l) = layout() else { return };
        let pgdata = l.home.join("pgdata");
        as_fs_user(Some(l.who), || {
            std::os::unix::fs::symlink(&l.root_only, pgdata.join("pg_replslot"))
        })
        .unwrap();
        let slot = pgdata.join("pg_replslot/cdc");
        assert!(prepare_dir(&slot, Some(l.who)).is_err());
        assert!(replace(&slot.join("state"), b"x", 0o600, Some(l.who)).is_err());
        assert_eq!(entries(&l.root_only), vec!["pgdata".to_string()]);
    }

    /// The first review's fix: what the agent relies on after a crash (pg_hba.conf, the
    /// fenced flag, the highest term) is fsynced, the file and then its directory.
    #[test]
    fn a_replaced_file_and_its_directory_are_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        FSYNCED.with(|s| s.borrow_mut().clear());
        replace(&path, b"{}", 0o600, None).unwrap();
        let synced = FSYNCED.with(|s| s.borrow().clone());
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".pgha-tmp");
        assert_eq!(synced, vec![PathBuf::from(tmp), dir.path().to_path_buf()]);
    }

    #[test]
    fn capped_reads_take_regular_files_only_and_never_too_much() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("postmaster.pid");
        std::fs::write(&f, "123\n".repeat(100)).unwrap();
        assert_eq!(read_capped(&f, 8).unwrap().unwrap(), b"123\n123\n");
        assert_eq!(read_tail(&f, 4).unwrap().unwrap(), b"123\n");
        assert_eq!(read_capped(&dir.path().join("none"), 8).unwrap(), None);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = read_capped(&link, 8).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let e = read_capped(Path::new("/dev/zero"), 8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_capped(&fifo, 8).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    /// Root's own directories (every ancestor root's, none writable by others but the
    /// sticky /tmp) are made by root and handed over; a directory of another user on
    /// the way is not trusted.
    #[test]
    fn only_root_owned_ancestors_are_trusted() {
        let Some(l) = layout() else { return };
        assert!(trusted_path(&l.root_only.join("pgdata/new")));
        assert!(!trusted_path(&l.home.join("pgdata/new")));
        assert!(!trusted_path(&l.home.join("base/pgdata")));
    }
}
