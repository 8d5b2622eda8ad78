//! What breaks a cluster: process kills, frozen VMs, stalled WAL receivers.

use super::*;

impl Cluster {
    /// `kill -9` of a node's agent (Postgres left running).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -9` of a node's postmaster.
    pub fn kill_postgres(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.nodes[i]
            .postmaster_pid()
            .context("no postmaster.pid: Postgres is not running")?;
        signal(pid, nix::sys::signal::Signal::SIGKILL);
        Ok(())
    }

    /// A VM stop: `kill -9` of agent and postmaster together.
    pub fn kill_vm(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.nodes[i].postmaster_pid();
        self.kill_agent(i);
        if let Some(pid) = pid {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
        Ok(())
    }

    /// A frozen VM: SIGSTOP of agent and every Postgres process of the node.
    pub fn freeze_vm(&self, i: usize, freeze: bool) -> anyhow::Result<()> {
        let sig = if freeze {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        if let Some(c) = &self.nodes[i].agent {
            signal(c.id() as i32, sig);
        }
        for pid in postgres_processes(&self.nodes[i]) {
            signal(pid, sig);
        }
        Ok(())
    }

    /// A hung primary in part: SIGSTOP (or SIGCONT) of the agent and the postmaster
    /// only. Its other processes (WAL senders, backends) run on: open sessions work and
    /// standbys get keepalives, but no new connection is accepted.
    pub fn freeze_agent_and_postmaster(&self, i: usize, freeze: bool) -> anyhow::Result<()> {
        self.freeze_postmaster(i, freeze, true)
    }

    /// SIGSTOP (or SIGCONT) of the postmaster alone (and of the agent with
    /// `agent_too`): a hung postmaster, its sessions running on.
    pub fn freeze_postmaster(&self, i: usize, freeze: bool, agent_too: bool) -> anyhow::Result<()> {
        let sig = if freeze {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        if let Some(c) = self.nodes[i].agent.as_ref().filter(|_| agent_too) {
            signal(c.id() as i32, sig);
        }
        let pm = self.nodes[i]
            .postmaster_pid()
            .context("no postmaster.pid: Postgres is not running")?;
        signal(pm, sig);
        Ok(())
    }

    /// Stalls (SIGSTOP) the WAL receiver of standby `i`: the standby stays up and its
    /// agent reports it healthy, but it falls behind. Returns the receiver's PID.
    pub async fn stall_wal_receiver(&self, i: usize) -> anyhow::Result<i32> {
        // A receiver that is (re)connecting right now shows no row for a moment.
        let t0 = std::time::Instant::now();
        let pid: i32 = loop {
            let db = self.connect_node(i).await?;
            if let Some(row) = db
                .query_opt("SELECT pid FROM pg_stat_wal_receiver", &[])
                .await?
            {
                break row.get(0);
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "no WAL receiver on the standby for 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        signal(pid, nix::sys::signal::Signal::SIGSTOP);
        Ok(pid)
    }

    /// Ends a stalled WAL receiver without letting it read what waits in its socket
    /// (SIGTERM, then SIGCONT): the standby keeps only the WAL it had written. Postgres
    /// starts a new receiver by itself.
    pub fn end_stalled_wal_receiver(&self, pid: i32) {
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        signal(pid, nix::sys::signal::Signal::SIGCONT);
    }
}

/// PIDs of the postmaster and its children (from /proc), for SIGSTOP/SIGCONT.
fn postgres_processes(node: &Node) -> Vec<i32> {
    node.postmaster_pid()
        .map(pgha_agent::observe::postgres_processes)
        .unwrap_or_default()
}
