//! The agent's Postgres side, one room per concern:
//! - [`bin`]: one wrapper per Postgres binary (initdb, pg_ctl, pg_basebackup,
//!   pg_rewind, pg_controldata, psql), run as the Postgres OS user with an explicit
//!   environment, stderr in the error;
//! - [`sql`]: every statement the agent runs, with its escaping;
//! - [`installs`]: the node's installs by major, and which one runs;
//! - [`slots`]: logical slots across a failover (the state-file copy and its layout on
//!   15 and 16; Postgres's failover slots on 17 and later);
//! - [`conf`]: the files the agent owns in PGDATA (`postgresql.pgha.conf`, its block
//!   of `pg_hba.conf`, `standby.signal`).
//!
//! What differs between Postgres majors belongs here, by capability, not as version
//! tests scattered through the agent.

pub mod bin;
pub mod conf;
pub mod installs;
pub mod slots;
pub mod sql;
