//! pgha agent: runs beside one Postgres, reports to the controller and applies its
//! assigned state, idempotently.
//!
//! - [`config`]: configuration and persisted state beside PGDATA;
//! - [`postgres`]: the Postgres side: its binaries, its SQL, the files the agent owns in
//!   PGDATA;
//! - [`files`]: writes (and reads) that never follow a link planted by the Postgres OS
//!   user; [`os_user`]: the identity Postgres runs as;
//! - [`observation`]: the plain data of what the local Postgres looks like now;
//! - [`observe`]: filling it in (files, postmaster.pid, pg_controldata, SQL);
//! - [`lease`]: the primary's lease: when it renews, and the watchdog that fences;
//! - [`plan`]: the pure functions: what an assignment asks for, and
//!   `(wanted, observation) -> step`;
//! - [`backup`]: pgBackRest: its configuration, archiving, backup jobs, the repository;
//! - [`agent`]: the loop that ties them together (the I/O shell).
//!
//! The controller API client is `pgha_api::client`, beside the contract it speaks.

pub mod agent;
pub mod backup;
pub mod config;
pub mod files;
pub mod hooks;
pub mod http;
pub mod lease;
pub mod observation;
pub mod observe;
pub mod os_user;
pub mod plan;
pub mod postgres;

pub use agent::{EXIT_DROPPED, Exit, run};
pub use config::{AgentConfig, AuthMethod};
