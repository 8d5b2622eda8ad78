//! Where the controller keeps its durable state and events, behind the [`Store`]
//! boundary: [`FileStore`] (one monitor, the default) or, with the `etcd` feature,
//! [`etcd::EtcdStore`] (several controllers, one leader, every write fenced). The
//! planner and the state machine do not know which one runs.

#[cfg(feature = "etcd")]
pub mod etcd;
mod file;

pub use crate::records::DurableState;
pub use file::{FileStore, MAX_EVENT_LOG_BYTES};
use pgha_api::Event;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt store: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("etcd at {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
    /// A write was refused because another controller holds the leader key (or this one
    /// holds none): nothing of it was applied.
    /// Staged changes could not be written (the reason of that write): nothing of them
    /// is in force.
    #[error("{0}")]
    Unwritten(String),
    #[error(
        "this controller does not lead (another one holds the leader key): nothing was written"
    )]
    NotLeader,
    #[error(
        "{path}: written by a later pgha (store format {found}; this one reads up to {supported}): refusing to start rather than apply part of it; run the version that wrote it"
    )]
    Format {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
}

/// Storage for the durable state and the event log.
pub trait Store: Send {
    fn load(&self) -> Result<DurableState, StoreError>;
    /// Persists `state`; returns only once it is durable.
    fn save(&mut self, state: &DurableState) -> Result<(), StoreError>;
    /// Appends events durably.
    fn append_events(&mut self, events: &[Event]) -> Result<(), StoreError>;
    fn load_events(&self) -> Result<Vec<Event>, StoreError>;
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Atomically replaces `path` with `bytes` (temp file, fsync, rename, fsync directory).
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // A leftover temp file (or a link planted in its place) is removed, not written
    // through: the new one is created here, 0600, or the write fails.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}
