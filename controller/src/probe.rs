//! SQL health probes: the controller connects to every node's Postgres each second.
//!
//! A probe only needs the server to answer the startup handshake: an authentication or
//! pg_hba refusal still proves the postmaster is up and accepting connections, so the
//! monitor needs no credentials on the nodes. Only the answers a live Postgres gives
//! the monitor's unknown role count as up: a completed connection, a refusal of that
//! role (SQLSTATE 28000: no pg_hba entry, no such role; 28P01: a wrong password), or
//! "too many clients" (53300: alive and serving, its slots taken by the application).
//! Anything else is down: "the database system is starting up / shutting down"
//! (57P03), any other error a server (or whatever answers on that port) makes up. Whether the answer comes from *that node's* Postgres (its
//! system identifier) cannot be told without a credential on the node: not done yet.

use crate::{Shared, lock, now_ms};
use std::time::Duration;
use tokio_postgres::error::SqlState;

const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes one Postgres; true when it accepts connections.
pub async fn probe(host: &str, port: u16) -> bool {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port)
        .user("pgha_monitor")
        .dbname("postgres")
        .application_name("pgha_monitor_probe")
        .connect_timeout(PROBE_TIMEOUT);
    let attempt = tokio::time::timeout(PROBE_TIMEOUT, cfg.connect(tokio_postgres::NoTls)).await;
    match attempt {
        Err(_) => false,
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.code().is_some_and(refusal_of_a_live_postgres),
    }
}

/// Whether a refusal at startup is what a live, accepting Postgres tells an unknown role.
fn refusal_of_a_live_postgres(code: &SqlState) -> bool {
    *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::TOO_MANY_CONNECTIONS
}

pub async fn probe_loop(shared: Shared, leadership: std::sync::Arc<crate::leader::Leadership>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tick.tick().await;
        // A follower probes nothing: the leader's observations are what count.
        if !leadership.is_leader(now_ms()) {
            continue;
        }
        let targets: Vec<(u64, String, u16)> = {
            let st = lock(&shared);
            st.durable
                .formations
                .values()
                .flat_map(|f| f.nodes.values())
                .map(|n| (n.id, n.host.clone(), n.port))
                .collect()
        };
        let probes = targets
            .into_iter()
            .map(|(id, host, port)| async move { (id, probe(&host, port).await) });
        let results = futures_join_all(probes).await;
        let now = now_ms();
        let mut st = lock(&shared);
        for (id, ok) in results {
            let o = st.observed.entry(id).or_default();
            o.last_probe = Some((now, ok));
            if ok {
                o.last_probe_ok_ms = Some(now);
            }
        }
    }
}

/// Runs futures concurrently (a tiny join_all so we need no extra crate).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The second review: any SQLSTATE but 57P03 counted as up (anything that speaks
    /// the protocol and answers with an error kept a dead primary alive to the
    /// controller).
    #[test]
    fn only_a_refusal_of_the_monitors_role_counts_as_up() {
        for up in [
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_PASSWORD,
            SqlState::TOO_MANY_CONNECTIONS,
        ] {
            assert!(refusal_of_a_live_postgres(&up), "{up:?}");
        }
        for down in [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::INTERNAL_ERROR,
            SqlState::PROTOCOL_VIOLATION,
        ] {
            assert!(!refusal_of_a_live_postgres(&down), "{down:?}");
        }
    }
}
