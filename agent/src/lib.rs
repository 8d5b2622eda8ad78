//! pgha agent: runs beside one Postgres, reports to the controller and applies its
//! assigned state, idempotently.
//!
//! - [`config`]: configuration and persisted state beside PGDATA;
//! - [`pg`]: one wrapper per Postgres binary;
//! - [`conf`]: the files the agent owns inside PGDATA;
//! - [`files`]: writes that never follow a link planted by the Postgres OS user;
//! - [`observe`]: what the local Postgres looks like now;
//! - [`lease`]: the primary's lease: when it renews, and the watchdog that fences;
//! - [`plan`]: the pure `(assignment, observation) -> step` function;
//! - [`agent`]: the loop that ties them together (the I/O shell).
//!
//! The controller API client is `pgha_api::client`, beside the contract it speaks.

pub mod agent;
pub mod conf;
pub mod config;
pub mod files;
pub mod http;
pub mod lease;
pub mod observe;
pub mod pg;
pub mod plan;

pub use agent::{EXIT_DROPPED, Exit, run};
pub use config::{AgentConfig, AuthMethod};
