//! The end-to-end suite against real Postgres, real agents and a real controller: one
//! test binary (one build, one link), one module per scenario family, the harness in
//! `pgha_e2e` (the crate's `src/`). nextest runs these tests one at a time
//! (`.config/nextest.toml`), so two cores are not swamped.

mod backups;
mod bad_input;
mod controllers;
mod day2;
mod disaster_recovery;
mod docs;
mod elections;
mod gitops;
mod hangs;
mod majors;
mod manifests;
mod observability;
mod partitions;
mod robustness;
mod security;
mod three_nodes;
mod tutorial;
