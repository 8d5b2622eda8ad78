//! A real etcd cluster on loopback for the controller-group tests: Debian's
//! `etcd-server` (3.4), one process per member, its own ports and data directories,
//! ended by PID when dropped.

use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    pub child: Option<Child>,
}

pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
}

/// The etcd binary (`ETCD_BIN`, or Debian's).
fn etcd_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("etcd is not installed (scripts/setup.sh installs Debian's etcd-server)")
}

impl EtcdCluster {
    /// Starts `n` members in `dir` and waits until each reports itself healthy.
    pub fn start(dir: &Path, n: usize) -> anyhow::Result<EtcdCluster> {
        let bin = etcd_bin()?;
        std::fs::create_dir_all(dir)?;
        let mut members: Vec<EtcdMember> = (1..=n)
            .map(|i| EtcdMember {
                name: format!("etcd{i}"),
                client_port: crate::free_port(),
                peer_port: crate::free_port(),
                data_dir: dir.join(format!("etcd{i}.data")),
                log: dir.join(format!("etcd{i}.log")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.spawn(&bin, &initial, "new")?;
        }
        let c = EtcdCluster { members };
        for i in 0..n {
            c.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(c)
    }

    /// Client URLs of every member, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let bin = etcd_bin()?;
        let initial = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        self.members[i].spawn(&bin, &initial, "existing")?;
        Ok(())
    }

    /// Waits until member `i` answers `/health` with `"health":"true"` (it has a
    /// leader and quorum).
    pub fn wait_healthy(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let m = &self.members[i];
        let t0 = Instant::now();
        loop {
            if let Ok(body) = http_get_raw(m.client_port, "/health")
                && body.contains("\"health\":\"true\"")
            {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "etcd member {} not healthy within {timeout:?}; see {}",
                    m.name,
                    m.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl EtcdMember {
    fn spawn(&mut self, bin: &Path, initial: &str, state: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(bin)
            .args([
                "--name",
                &self.name,
                "--data-dir",
                &self.data_dir.display().to_string(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "pgha-e2e",
                // No metrics or profiling listeners beyond the client port.
                "--listen-metrics-urls",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }
}

/// A plain HTTP/1.0 GET on loopback → the whole response (headers and body).
fn http_get_raw(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
