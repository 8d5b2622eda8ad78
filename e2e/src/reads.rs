//! What a test looks at: formation state, waits, URIs, connections, events and the
//! HTTP endpoints.

use super::*;
use std::ops::ControlFlow;

impl Cluster {
    pub fn state(&self) -> anyhow::Result<FormationStatus> {
        self.state_of(pgha_api::DEFAULT_FORMATION)
    }

    /// `pgha show state --json --formation F`.
    pub fn state_of(&self, formation: &str) -> anyhow::Result<FormationStatus> {
        let out = self.pgha_ok(&[
            "show",
            "state",
            "--json",
            "--formation",
            formation,
            "--monitor",
            &self.monitor_url,
        ])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Waits until `done` holds for formation `formation`'s state (the last state on
    /// timeout, in the error).
    pub fn wait_until_in(
        &self,
        formation: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&FormationStatus) -> bool,
    ) -> anyhow::Result<FormationStatus> {
        wait::eventually(timeout, &format!("formation {formation} {what}"), || {
            Ok(match self.state_of(formation) {
                Ok(st) if done(&st) => ControlFlow::Break(st),
                Ok(st) => ControlFlow::Continue(
                    st.nodes
                        .iter()
                        .map(|n| format!("{} {}/{}", n.name, n.reported_state, n.assigned_state))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + " | "
                        + &st.summary,
                ),
                Err(e) => ControlFlow::Continue(e.to_string()),
            })
        })
    }

    /// Waits until each named node is stable in the given state.
    pub fn wait_for(
        &self,
        want: &[(&str, NodeState)],
        timeout: Duration,
    ) -> anyhow::Result<FormationStatus> {
        self.wait_until_in(
            pgha_api::DEFAULT_FORMATION,
            &format!("at {want:?}"),
            timeout,
            |st| {
                want.iter().all(|(name, s)| {
                    st.nodes.iter().any(|n| {
                        n.name == *name && n.reported_state == *s && n.assigned_state == *s
                    })
                })
            },
        )
    }

    /// The formation URI, as `pgha show uri --formation default` prints it.
    pub fn uri(&self) -> anyhow::Result<String> {
        Ok(self
            .pgha_ok(&[
                "show",
                "uri",
                "--formation",
                "default",
                "--monitor",
                &self.monitor_url,
            ])?
            .trim()
            .to_string())
    }

    /// A write probe inserting every 10 ms through the formation URI, once it has its
    /// first 20 writes acknowledged.
    pub async fn write_probe(&self) -> anyhow::Result<WriteProbe> {
        let probe = WriteProbe::start(&self.uri()?, Duration::from_millis(10)).await?;
        probe.wait_for_more(20, Duration::from_secs(120)).await?;
        Ok(probe)
    }

    /// The formation URI built from the nodes (for when the monitor is down).
    pub fn uri_from_nodes(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect();
        format!(
            "postgres://{}/appdb?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// A direct connection to one node.
    pub async fn connect_node(&self, i: usize) -> anyhow::Result<tokio_postgres::Client> {
        probe::connect_one(
            &self.nodes[i].host,
            self.nodes[i].port,
            "appdb",
            Duration::from_secs(3),
        )
        .await
    }

    /// One pinned history client per node ([`history::Pinned`]): each writes from
    /// inside its node's host, `synchronous_commit = local` with `local_commit`. Empty
    /// without the multi-host network.
    pub fn pinned_clients(&self, local_commit: bool) -> Vec<history::Pinned> {
        let Some(net) = &self.net else {
            return vec![];
        };
        self.nodes
            .iter()
            .filter_map(|n| {
                Some(history::Pinned {
                    ns: net.host(n.net_host.as_deref()?).ns.clone(),
                    host: n.host.clone(),
                    port: n.port,
                    db: "appdb".into(),
                    local_commit,
                })
            })
            .collect()
    }

    /// `GET http://<node>:<agent http port>PATH` → (status, body).
    pub async fn agent_get(&self, i: usize, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(&format!(
            "http://{}:{}{path}",
            self.nodes[i].host, self.nodes[i].http_port
        ))
        .await
    }

    /// `GET` on the monitor's HTTP API → body.
    pub async fn monitor_get(&self, path: &str) -> anyhow::Result<String> {
        let client =
            pgha_api::client::MonitorClient::new(&self.monitor_url, Duration::from_secs(2))?;
        Ok(client.get_text(path).await?.1)
    }

    /// Which controller leads, by each one's own `/metrics` (`pgha_controller_leader`).
    pub async fn leader_index(&self) -> Option<usize> {
        for i in 0..self.controller_count() {
            let Ok(client) = pgha_api::client::MonitorClient::new(
                &self.controller_read_url(i),
                Duration::from_secs(1),
            ) else {
                continue;
            };
            if let Ok((200, page)) = client.get_text("/metrics").await
                && page.lines().any(|l| l == "pgha_controller_leader 1")
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until a controller other than `not` leads; returns it.
    pub async fn wait_for_leader(
        &self,
        not: Option<usize>,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.leader_index().await
                && Some(i) != not
            {
                return Ok(i);
            }
            if t0.elapsed() > timeout {
                bail!("no controller (other than {not:?}) leads within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a node other than those in `not` is stable in a writable state;
    /// returns its name.
    pub fn wait_new_primary(&self, not: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let t0 = Instant::now();
        loop {
            let st = self.state()?;
            if let Some(n) = st.nodes.iter().find(|n| {
                !not.contains(&n.name.as_str())
                    && n.assigned_state.is_writable()
                    && n.reported_state == n.assigned_state
            }) {
                return Ok(n.name.clone());
            }
            if t0.elapsed() > timeout {
                bail!("no new primary within {timeout:?}: {}", st.summary);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Number of nodes whose Postgres accepts writes right now (direct connections).
    pub async fn writable_nodes(&self) -> usize {
        let mut n = 0;
        for i in 0..self.nodes.len() {
            if let Ok(db) = self.connect_node(i).await
                && let Ok(row) = db.query_one("SELECT pg_is_in_recovery()", &[]).await
                && !row.get::<_, bool>(0)
            {
                n += 1;
            }
        }
        n
    }

    /// Watches for `d`: never two writable nodes, and the term never changes (a
    /// controller that cannot be reached is no answer, not a failure).
    pub async fn watch_no_failover(&self, d: Duration) -> anyhow::Result<()> {
        let mut term = self.state().ok().map(|s| s.term);
        let t0 = Instant::now();
        while t0.elapsed() < d {
            anyhow::ensure!(self.writable_nodes().await <= 1, "two writable nodes");
            if let Ok(st) = self.state() {
                let term = *term.get_or_insert(st.term);
                anyhow::ensure!(
                    st.term == term,
                    "term changed from {term} to {}: a failover happened",
                    st.term
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }

    /// The formation's events, oldest first (up to 1000).
    pub async fn events(&self) -> anyhow::Result<Vec<pgha_api::Event>> {
        Ok(serde_json::from_str(
            &self.monitor_get("/v1/events?count=1000").await?,
        )?)
    }

    /// The last WAL position a standby received, or a primary flushed.
    pub async fn wal_position(&self, i: usize) -> anyhow::Result<pgha_api::Lsn> {
        let db = self.connect_node(i).await?;
        let text: String = db
            .query_one(
                "SELECT CASE WHEN pg_is_in_recovery() \
                 THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                 ELSE pg_current_wal_flush_lsn() END::text",
                &[],
            )
            .await?
            .get(0);
        Ok(text.parse()?)
    }
}

/// `GET url` → (status, body), within 2 s.
async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}
