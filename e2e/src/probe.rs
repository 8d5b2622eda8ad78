//! The write probe: a client inserting unique ids through the formation's multi-host
//! URI, the way an application would, reconnecting after every failure. Afterwards every
//! id whose INSERT was acknowledged must be present; the longest gap between two
//! acknowledged writes is the write unavailability the formation caused.

use anyhow::{Context, bail};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// The password of the `postgres` role this test process's clients present (none: the
/// nodes trust their clients, as the harness makes them unless a test says otherwise).
static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Every client of this test process presents `password` from now on (for nodes made
/// with `scram-sha-256`, the default of `create postgres`).
pub fn use_password(password: &str) {
    let _ = PASSWORD.set(password.to_string());
}

/// Connects to one host, the whole handshake bounded by `timeout` (libpq's
/// `connect_timeout` semantics: a frozen server must not hang the client).
pub async fn connect_one(
    host: &str,
    port: u16,
    db: &str,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port)
        .dbname(db)
        .user("postgres")
        .connect_timeout(timeout);
    if let Some(p) = PASSWORD.get() {
        cfg.password(p);
    }
    let (client, conn) = tokio::time::timeout(timeout, cfg.connect(NoTls))
        .await
        .with_context(|| format!("{host}:{port}: connection timed out"))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects to one host from inside network namespace `ns` (a host of the multi-host
/// harness, named by its namespace): the socket is opened by a thread that joins the
/// namespace, so it lives there whatever namespace this process is in. A client inside a
/// node's own namespace reaches it however the harness cuts the network.
pub async fn connect_in_namespace(
    ns: &str,
    host: &str,
    port: u16,
    db: &str,
    timeout: Duration,
) -> anyhow::Result<Client> {
    use std::os::fd::AsFd;
    let path = format!("/run/netns/{ns}");
    let addr = std::net::SocketAddr::new(host.parse()?, port);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let connect = || -> anyhow::Result<std::net::TcpStream> {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(std::net::TcpStream::connect_timeout(&addr, timeout)?)
        };
        let _ = tx.send(connect());
    });
    let stream = rx.await.context("the connecting thread died")??;
    stream.set_nonblocking(true)?;
    let stream = tokio::net::TcpStream::from_std(stream)?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.dbname(db).user("postgres");
    if let Some(p) = PASSWORD.get() {
        cfg.password(p);
    }
    let (client, conn) = tokio::time::timeout(timeout, cfg.connect_raw(stream, NoTls))
        .await
        .with_context(|| format!("{host}:{port} from {ns}: handshake timed out"))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Hosts of a `postgres://h1:p1,h2:p2/db?...` URI.
pub fn uri_hosts(uri: &str) -> anyhow::Result<(Vec<(String, u16)>, String)> {
    let rest = uri
        .strip_prefix("postgres://")
        .context("URI must start with postgres://")?;
    let (hosts, tail) = rest.split_once('/').context("URI has no database")?;
    let hosts = hosts.rsplit_once('@').map(|(_, h)| h).unwrap_or(hosts);
    let db = tail.split('?').next().unwrap_or("postgres").to_string();
    let list = hosts
        .split(',')
        .map(|h| {
            let (host, port) = h.rsplit_once(':').unwrap_or((h, "5432"));
            Ok((host.to_string(), port.parse()?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((list, db))
}

/// `target_session_attrs=read-write`: the first host that accepts writes.
pub async fn connect_read_write(uri: &str, timeout: Duration) -> anyhow::Result<Client> {
    let (hosts, db) = uri_hosts(uri)?;
    let mut errors = vec![];
    for (host, port) in hosts {
        match connect_one(&host, port, &db, timeout).await {
            Ok(c) => {
                let ro =
                    tokio::time::timeout(timeout, c.query_one("SHOW transaction_read_only", &[]))
                        .await;
                match ro {
                    Ok(Ok(row)) if row.get::<_, String>(0) == "off" => return Ok(c),
                    Ok(Ok(_)) => errors.push(format!("{host}:{port} is read-only")),
                    Ok(Err(e)) => errors.push(format!("{host}:{port}: {e}")),
                    Err(_) => errors.push(format!("{host}:{port}: timed out")),
                }
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("no read-write host: {}", errors.join("; "))
}

/// The probe's log, even after a panic elsewhere poisoned its lock.
fn locked(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct Log {
    /// (id, time acknowledged)
    acked: Vec<(i64, Instant)>,
    attempts: u64,
    errors: u64,
}

/// A running write probe.
pub struct WriteProbe {
    log: Arc<Mutex<Log>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    uri: String,
}

/// What a probe saw.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub acked: usize,
    pub attempts: u64,
    pub errors: u64,
    /// Longest time between two consecutive acknowledged writes.
    pub max_gap: Duration,
    /// Acknowledged ids missing from the table at the end.
    pub lost: Vec<i64>,
}

impl WriteProbe {
    /// Creates the probe table and starts inserting, one id every `every`.
    pub async fn start(uri: &str, every: Duration) -> anyhow::Result<WriteProbe> {
        let c = connect_read_write(uri, Duration::from_secs(2)).await?;
        c.batch_execute("CREATE TABLE IF NOT EXISTS write_probe (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
            .await?;
        let start_id: i64 = c
            .query_one("SELECT coalesce(max(id), 0) FROM write_probe", &[])
            .await?
            .get(0);
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l2, s2, u2) = (log.clone(), stop.clone(), uri.to_string());
        let task = tokio::spawn(async move {
            let mut client: Option<Client> = None;
            let mut id = start_id;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = connect_read_write(&u2, Duration::from_millis(1000))
                        .await
                        .ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let Some(c) = &client else { continue };
                id += 1;
                locked(&l2).attempts += 1;
                let res = tokio::time::timeout(
                    Duration::from_secs(1),
                    c.execute("INSERT INTO write_probe (id) VALUES ($1)", &[&id]),
                )
                .await;
                match res {
                    Ok(Ok(_)) => locked(&l2).acked.push((id, Instant::now())),
                    _ => {
                        locked(&l2).errors += 1;
                        client = None;
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        Ok(WriteProbe {
            log,
            stop,
            task,
            uri: uri.to_string(),
        })
    }

    /// The ids acknowledged so far, in order.
    pub fn acked_ids(&self) -> Vec<i64> {
        locked(&self.log).acked.iter().map(|(id, _)| *id).collect()
    }

    /// Number of acknowledged writes so far.
    pub fn acked(&self) -> usize {
        locked(&self.log).acked.len()
    }

    /// Waits until `n` more writes are acknowledged.
    pub async fn wait_for_more(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let target = self.acked() + n;
        let t0 = Instant::now();
        while self.acked() < target {
            if t0.elapsed() > timeout {
                bail!("write probe: fewer than {n} writes acknowledged within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The longest gap between acknowledged writes that overlaps `[from, to]`.
    pub fn gap_around(&self, from: Instant, to: Instant) -> Duration {
        let log = locked(&self.log);
        let mut max = Duration::ZERO;
        for w in log.acked.windows(2) {
            let (a, b) = (w[0].1, w[1].1);
            if b >= from && a <= to {
                max = max.max(b - a);
            }
        }
        max
    }

    /// Acknowledged ids (so far) missing on the current primary.
    pub async fn lost_so_far(&self) -> anyhow::Result<Vec<i64>> {
        let ids: Vec<i64> = locked(&self.log).acked.iter().map(|(id, _)| *id).collect();
        let c = connect_read_write(&self.uri, Duration::from_secs(3)).await?;
        let present: std::collections::HashSet<i64> = c
            .query("SELECT id FROM write_probe WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(ids.into_iter().filter(|id| !present.contains(id)).collect())
    }

    /// `finish`, printed, and an error when an acknowledged write was lost.
    pub async fn finish_without_loss(self) -> anyhow::Result<ProbeReport> {
        let report = self.finish().await?;
        println!("write probe: {report:?}");
        anyhow::ensure!(
            report.lost.is_empty(),
            "lost acknowledged writes: {:?}",
            report.lost
        );
        Ok(report)
    }

    /// Stops the probe and checks every acknowledged id on the current primary.
    pub async fn finish(self) -> anyhow::Result<ProbeReport> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.task.await;
        let log = std::mem::take(&mut *locked(&self.log));
        let c = connect_read_write(&self.uri, Duration::from_secs(3)).await?;
        let ids: Vec<i64> = log.acked.iter().map(|(id, _)| *id).collect();
        let present: Vec<i64> = c
            .query("SELECT id FROM write_probe WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let present: std::collections::HashSet<i64> = present.into_iter().collect();
        let lost = ids
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        let max_gap = log
            .acked
            .windows(2)
            .map(|w| w[1].1 - w[0].1)
            .max()
            .unwrap_or_default();
        Ok(ProbeReport {
            acked: log.acked.len(),
            attempts: log.attempts,
            errors: log.errors,
            max_gap,
            lost,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_multi_host_uris() {
        let (hosts, db) = super::uri_hosts(
            "postgres://127.0.0.1:5501,127.0.0.1:5502/appdb?target_session_attrs=read-write&sslmode=prefer",
        )
        .unwrap();
        assert_eq!(
            hosts,
            vec![("127.0.0.1".into(), 5501), ("127.0.0.1".into(), 5502)]
        );
        assert_eq!(db, "appdb");
    }
}
