//! The OS identity Postgres runs as when the agent runs as root: what the agent drops to
//! for Postgres's binaries and for writes into Postgres's directories (`crate::files`).

/// A user and group id.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}
