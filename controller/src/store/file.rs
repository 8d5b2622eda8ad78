//! The embedded store: the durable state as one JSON document in the controller's
//! `--dir`, rewritten atomically (write to a temp file, fsync, rename over, fsync the
//! directory), so a crash leaves either the old or the new version and never a torn one.
//! Events are appended to a JSON-lines file and fsynced.

use super::{DurableState, Store, StoreError, io_err, write_file_atomically};
use pgha_api::Event;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The event log is rotated past this size: `events.jsonl` becomes `events.1.jsonl`
/// (replacing the one before), so the log on disk and its read at startup stay bounded.
pub const MAX_EVENT_LOG_BYTES: u64 = 16 << 20;

/// The file-backed store in the controller's `--dir`.
pub struct FileStore {
    dir: PathBuf,
    max_event_bytes: u64,
    /// Held while a controller runs on this directory.
    _lock: Option<nix::fcntl::Flock<File>>,
}

impl FileStore {
    /// A store for reading, or for a test; [`FileStore::lock`] for a running controller.
    pub fn new(dir: &Path) -> Self {
        FileStore {
            dir: dir.to_path_buf(),
            max_event_bytes: MAX_EVENT_LOG_BYTES,
            _lock: None,
        }
    }

    /// The store of a running controller: takes an exclusive lock on `<dir>/lock`, so a
    /// second controller on the same directory is refused instead of both writing
    /// `state.tmp`.
    pub fn lock(dir: &Path) -> Result<Self, StoreError> {
        use nix::fcntl::{Flock, FlockArg};
        let path = dir.join("lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((f, _)) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                drop(f);
                return Err(StoreError::Io {
                    path,
                    source: std::io::Error::other(format!(
                        "another controller runs on this directory (pid {}): stop it first",
                        holder.trim()
                    )),
                });
            }
        };
        lock.set_len(0).map_err(io_err(&path))?;
        write!(&mut *lock, "{}", std::process::id()).map_err(io_err(&path))?;
        let mut store = FileStore::new(dir);
        store._lock = Some(lock);
        Ok(store)
    }

    #[cfg(test)]
    fn with_max_event_bytes(mut self, n: u64) -> Self {
        self.max_event_bytes = n;
        self
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn events_path(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    fn rotated_events_path(&self) -> PathBuf {
        self.dir.join("events.1.jsonl")
    }
}

fn ends_without_newline(f: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

impl Store for FileStore {
    fn load(&self) -> Result<DurableState, StoreError> {
        let path = self.state_path();
        match fs::read(&path) {
            Ok(bytes) => {
                let mut st: DurableState =
                    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if st.format > crate::records::STORE_FORMAT {
                    return Err(StoreError::Format {
                        path,
                        found: st.format,
                        supported: crate::records::STORE_FORMAT,
                    });
                }
                // An earlier format reads as this one (its fields have defaults).
                st.format = crate::records::STORE_FORMAT;
                Ok(st)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DurableState::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn save(&mut self, state: &DurableState) -> Result<(), StoreError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        write_file_atomically(&path, &bytes)
    }

    fn append_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let path = self.events_path();
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if size > self.max_event_bytes {
            fs::rename(&path, self.rotated_events_path()).map_err(io_err(&path))?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut buf = Vec::new();
        // A crash can leave a torn last line: start on a fresh one, so the next event is
        // not glued to it (and lost with it).
        if ends_without_newline(&mut f).map_err(io_err(&path))? {
            buf.push(b'\n');
        }
        for e in events {
            serde_json::to_writer(&mut buf, e).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
            buf.push(b'\n');
        }
        f.write_all(&buf).map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))
    }

    fn load_events(&self) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        for path in [self.rotated_events_path(), self.events_path()] {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io_err(&path))?;
                // A crash can leave a torn line: skip what does not parse.
                if let Ok(e) = serde_json::from_str::<Event>(&line) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::FormationRecord;

    /// The second review: `events.jsonl` (who did what, from where) and `lock` were
    /// made with the umask's mode (0644).
    #[test]
    fn the_event_log_and_the_lock_are_the_monitors_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::lock(dir.path()).unwrap();
        s.append_events(&[test_event()]).unwrap();
        for f in ["lock", "events.jsonl"] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }

    fn test_event() -> Event {
        Event {
            id: 1,
            time_ms: 5,
            formation: "default".into(),
            node_id: None,
            node_name: None,
            reported_state: None,
            assigned_state: None,
            rule: "test".into(),
            description: "hello".into(),
            inputs: None,
            actor: None,
        }
    }

    #[test]
    fn state_survives_a_reopen_and_torn_event_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path());
        assert_eq!(store.load().unwrap(), DurableState::default());
        let mut st = DurableState::default();
        st.formations
            .insert("default".into(), FormationRecord::new("default", "appdb"));
        st.next_node_id = 3;
        store.save(&st).unwrap();
        let ev = test_event();
        store.append_events(std::slice::from_ref(&ev)).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("events.jsonl"))
            .unwrap();
        f.write_all(b"{\"id\":2,\"tim").unwrap();
        let reopened = FileStore::new(dir.path());
        assert_eq!(reopened.load().unwrap(), st);
        assert_eq!(reopened.load_events().unwrap(), vec![ev.clone()]);
        // The next event after a torn line starts on a line of its own.
        let mut store = FileStore::new(dir.path());
        let next = Event {
            id: 3,
            ..ev.clone()
        };
        store.append_events(std::slice::from_ref(&next)).unwrap();
        assert_eq!(store.load_events().unwrap(), vec![ev, next]);
    }

    #[test]
    fn the_event_log_rotates_and_is_read_across_the_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path()).with_max_event_bytes(1000);
        let ev = |id| Event {
            id,
            time_ms: id,
            description: "x".repeat(100),
            ..test_event()
        };
        for id in 1..=40 {
            store.append_events(&[ev(id)]).unwrap();
        }
        let size = |f: &str| {
            fs::metadata(dir.path().join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        assert!(
            size("events.jsonl") <= 1000 + 300,
            "{}",
            size("events.jsonl")
        );
        assert!(size("events.1.jsonl") <= 1000 + 300);
        let kept = store.load_events().unwrap();
        assert!(kept.len() < 40 && kept.len() >= 4, "{}", kept.len());
        assert_eq!(kept.last().unwrap().id, 40, "the newest event is kept");
        assert!(kept.windows(2).all(|w| w[0].id + 1 == w[1].id));
    }

    #[test]
    fn a_second_controller_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileStore::lock(dir.path()).unwrap();
        let e = FileStore::lock(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("another controller") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(first);
        FileStore::lock(dir.path()).unwrap();
    }

    /// A store written by a later format, or truncated, is refused at start with the
    /// file named; nothing of it is applied.
    #[test]
    fn a_later_or_truncated_store_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::new(dir.path());
        store.save(&DurableState::default()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
        let later = text.replace("\"format\": 1", "\"format\": 99");
        std::fs::write(dir.path().join("state.json"), later).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("format 99"),
            "{err}"
        );
        std::fs::write(dir.path().join("state.json"), &text[..text.len() / 2]).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("corrupt"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        let err = FileStore::new(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
