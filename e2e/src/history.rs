//! The history checker: several clients write through the formation URI, as an
//! application does, and every operation is recorded (start, end, outcome, and for an
//! acknowledged one the node and timeline that acknowledged it). After the fault is
//! healed, the history is checked against what the final primary holds:
//!
//! - **lost**: an acknowledged id missing on the final primary;
//! - **duplicates**: an id twice in a list;
//! - **order**: list appends out of real-time order (b began after a was acknowledged,
//!   yet b stands before a);
//! - **phantoms**: an id whose write the server refused, present anyway;
//! - **split brain**: two tenures (a node on a timeline) whose acknowledged writes
//!   interleave in time (one acknowledged a write that began after the other had
//!   acknowledged one, both ways round), or one timeline written by two nodes.
//!
//! Each operation is one statement: insert a unique id, and append it to one of a few
//! lists (`array_append`), returning the server's address and its WAL timeline.
//!
//! Besides the clients of the URI, which move to whichever host is writable, a history
//! may have *pinned* clients: one per node, writing to that node only, from inside its
//! own host (network namespace). A cut never separates them from their node, so a
//! primary cut off from everyone else that still took writes would be seen doing so:
//! they seek the split brain the clients of the URI cannot see.

use crate::probe::{connect_in_namespace, connect_read_write};
use anyhow::{Context, bail};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Lists the appends go to (one per key).
const KEYS: i32 = 5;
/// How long one operation may take before its outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// What became of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: it must survive.
    Ok,
    /// Refused by the server before it could commit (read-only, no connection).
    Failed,
    /// Timed out or the connection broke mid-way: it may or may not have committed.
    Unknown,
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub id: i64,
    pub key: i32,
    /// Since the probe started.
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
    /// Who acknowledged it: `address:port` and timeline.
    pub node: Option<String>,
    pub timeline: Option<u32>,
    /// The error, when not acknowledged.
    pub error: Option<String>,
    /// Acknowledged only as durable as the client asked: false for a pinned client's
    /// `synchronous_commit = local`, whose writes may vanish in a failover.
    pub durable: bool,
}

struct Shared {
    ops: Vec<Op>,
}

/// A client that writes to one node only, from inside that node's host.
#[derive(Debug, Clone)]
pub struct Pinned {
    /// The network namespace of the node's host.
    pub ns: String,
    pub host: String,
    pub port: u16,
    pub db: String,
    /// Commits with `synchronous_commit = local`: acknowledged once on the node's own
    /// disk, whatever its standbys say. Such writes may be lost in a failover (they are
    /// not counted lost), but a node that acknowledges them after another node took
    /// writes is a split brain: only the fence stops a cut-off primary from doing so.
    pub local_commit: bool,
}

/// Where a writer connects.
#[derive(Debug, Clone)]
enum Target {
    /// The formation URI: the first writable host.
    Uri(String),
    Pinned(Pinned),
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Client> {
        let t = Duration::from_secs(1);
        match self {
            Target::Uri(uri) => connect_read_write(uri, t).await,
            Target::Pinned(p) => {
                let c = connect_in_namespace(&p.ns, &p.host, p.port, &p.db, t).await?;
                if p.local_commit {
                    c.batch_execute("SET synchronous_commit = local").await?;
                }
                Ok(c)
            }
        }
    }

    fn durable(&self) -> bool {
        !matches!(self, Target::Pinned(p) if p.local_commit)
    }
}

/// Several clients writing until [`HistoryProbe::finish`].
pub struct HistoryProbe {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    uri: String,
    t0: Instant,
}

fn locked(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

const WRITE: &str = "WITH i AS (INSERT INTO history_ids (id, client, key) VALUES ($1, $2, $3)), \
     a AS (UPDATE history_lists SET items = array_append(items, $1) WHERE key = $3) \
     SELECT host(inet_server_addr()) || ':' || inet_server_port(), \
            substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)";

impl HistoryProbe {
    /// Creates the tables and starts `clients` writers, each pausing `every` between
    /// operations.
    pub async fn start(uri: &str, clients: usize, every: Duration) -> anyhow::Result<Self> {
        Self::start_with(uri, clients, vec![], every).await
    }

    /// [`HistoryProbe::start`], and one more client per entry of `pinned`, writing to
    /// that node only (numbered after the clients of the URI).
    pub async fn start_with(
        uri: &str,
        clients: usize,
        pinned: Vec<Pinned>,
        every: Duration,
    ) -> anyhow::Result<Self> {
        let c = connect_read_write(uri, Duration::from_secs(2)).await?;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS history_ids (id bigint PRIMARY KEY, client int, key int);
             CREATE TABLE IF NOT EXISTS history_lists (key int PRIMARY KEY, items bigint[] NOT NULL DEFAULT '{}');
             TRUNCATE history_ids, history_lists;",
        )
        .await?;
        c.execute(
            "INSERT INTO history_lists (key) SELECT generate_series(0, $1 - 1)",
            &[&KEYS],
        )
        .await?;
        let shared = Arc::new(Mutex::new(Shared { ops: vec![] }));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t0 = Instant::now();
        let targets = std::iter::repeat_n(Target::Uri(uri.to_string()), clients)
            .chain(pinned.into_iter().map(Target::Pinned));
        let tasks = targets
            .enumerate()
            .map(|(client, target)| {
                let (shared, stop) = (shared.clone(), stop.clone());
                tokio::spawn(
                    async move { writer(client, &target, every, t0, &shared, &stop).await },
                )
            })
            .collect();
        Ok(HistoryProbe {
            shared,
            stop,
            tasks,
            uri: uri.to_string(),
            t0,
        })
    }

    /// Acknowledged operations so far.
    pub fn acked(&self) -> usize {
        locked(&self.shared)
            .ops
            .iter()
            .filter(|o| o.outcome == Outcome::Ok)
            .count()
    }

    /// Waits until `n` more operations are acknowledged.
    pub async fn wait_for_more(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let target = self.acked() + n;
        let t0 = Instant::now();
        while self.acked() < target {
            if t0.elapsed() > timeout {
                bail!("history: fewer than {n} writes acknowledged within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// When node `node` (`address:port`) acknowledged its first and its last write so
    /// far (the operations' ends), or None.
    pub fn acks_of(&self, node: &str) -> Option<(Instant, Instant)> {
        let ops = &locked(&self.shared).ops;
        let ends = ops
            .iter()
            .filter(|o| o.outcome == Outcome::Ok && o.node.as_deref() == Some(node))
            .map(|o| self.t0 + o.end);
        let first = ends.clone().min()?;
        Some((first, ends.max()?))
    }

    /// The longest time without an acknowledged write that overlaps `[from, to]`.
    pub fn gap_around(&self, from: Instant, to: Instant) -> Duration {
        let (from, to) = (
            from.saturating_duration_since(self.t0),
            to.saturating_duration_since(self.t0),
        );
        let ops = &locked(&self.shared).ops;
        gap_in(ops, from, to)
    }

    /// Stops the clients, reads the final primary and checks the history. The history
    /// is written to `dir/history-<pid>.txt` when the verdict is not clean.
    pub async fn finish(self, dir: &Path) -> anyhow::Result<Verdict> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let ops = std::mem::take(&mut locked(&self.shared).ops);
        let c = connect_read_write(&self.uri, Duration::from_secs(3)).await?;
        let ids: HashSet<i64> = c
            .query("SELECT id FROM history_ids", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let lists: BTreeMap<i32, Vec<i64>> = c
            .query("SELECT key, items FROM history_lists ORDER BY key", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut v = check(&ops, &ids, &lists);
        if !v.is_clean() {
            let path = dir.join(format!("history-{}.txt", std::process::id()));
            std::fs::create_dir_all(dir)?;
            std::fs::write(&path, render(&ops, &v))
                .with_context(|| format!("writing {}", path.display()))?;
            v.written_to = Some(path);
        }
        Ok(v)
    }
}

/// One writer: connects to its target, writes, records, repeats.
async fn writer(
    client: usize,
    target: &Target,
    every: Duration,
    t0: Instant,
    shared: &Mutex<Shared>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut conn: Option<Client> = None;
    let mut seq: i64 = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seq += 1;
        let id = client as i64 * 1_000_000_000 + seq;
        let key = (seq % KEYS as i64) as i32;
        let start = t0.elapsed();
        let mut op = Op {
            client,
            id,
            key,
            start,
            end: start,
            outcome: Outcome::Failed,
            node: None,
            timeline: None,
            error: None,
            durable: target.durable(),
        };
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = match target.connect().await {
                Ok(c) => Some(c),
                Err(e) => {
                    // Never sent: it cannot have committed.
                    op.error = Some(format!("{e:#}"));
                    op.end = t0.elapsed();
                    locked(shared).ops.push(op);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        }
        let Some(c) = &conn else { continue };
        let res = tokio::time::timeout(
            OP_TIMEOUT,
            c.query_one(WRITE, &[&id, &(client as i32), &key]),
        )
        .await;
        op.end = t0.elapsed();
        match res {
            Ok(Ok(row)) => {
                op.outcome = Outcome::Ok;
                op.node = Some(row.get(0));
                op.timeline = u32::from_str_radix(row.get::<_, &str>(1), 16).ok();
            }
            Ok(Err(e)) => {
                // Refused before commit: a read-only server. Anything else (the
                // connection ended, the server shut down) may have committed.
                let refused =
                    e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION);
                op.outcome = if refused {
                    Outcome::Failed
                } else {
                    Outcome::Unknown
                };
                op.error = Some(e.to_string());
                // A read-only server keeps the session (a pinned client of a standby).
                if !refused {
                    conn = None;
                }
            }
            Err(_) => {
                op.outcome = Outcome::Unknown;
                op.error = Some(format!("no answer within {OP_TIMEOUT:?}"));
                conn = None;
            }
        }
        locked(shared).ops.push(op);
        tokio::time::sleep(every).await;
    }
}

/// The longest time without an acknowledged write overlapping `[from, to]`.
fn gap_in(ops: &[Op], from: Duration, to: Duration) -> Duration {
    let mut acks: Vec<Duration> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .map(|o| o.end)
        .collect();
    acks.sort();
    acks.windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub clients: usize,
    /// (node, timeline, acknowledged writes) in order of first acknowledgement.
    pub tenures: Vec<(String, u32, usize)>,
    pub lost: Vec<i64>,
    pub duplicates: Vec<i64>,
    /// (key, a, b): b stands before a although it began after a was acknowledged.
    pub out_of_order: Vec<(i32, i64, i64)>,
    pub phantoms: Vec<i64>,
    pub split_brain: Vec<String>,
    /// The longest time without an acknowledged write.
    pub max_gap: Duration,
    pub written_to: Option<PathBuf>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicates.is_empty()
            && self.out_of_order.is_empty()
            && self.phantoms.is_empty()
            && self.split_brain.is_empty()
    }

    /// The one-line verdict.
    pub fn line(&self) -> String {
        let tenures: Vec<String> = self
            .tenures
            .iter()
            .map(|(n, tl, k)| format!("{n}@tl{tl}:{k}"))
            .collect();
        format!(
            "history {}: {} ops by {} clients ({} ok, {} failed, {} unknown) on [{}]; max gap {:.2}s; lost {}, duplicates {}, out of order {}, phantoms {}, split brain {}{}",
            if self.is_clean() { "OK" } else { "FAILED" },
            self.ok + self.failed + self.unknown,
            self.clients,
            self.ok,
            self.failed,
            self.unknown,
            tenures.join(" "),
            self.max_gap.as_secs_f64(),
            self.lost.len(),
            self.duplicates.len(),
            self.out_of_order.len(),
            self.phantoms.len(),
            self.split_brain.len(),
            match &self.written_to {
                Some(p) => format!("; history in {}", p.display()),
                None => String::new(),
            }
        )
    }

    /// Ok when clean, else an error carrying the verdict line and the first findings.
    pub fn ensure_clean(&self) -> anyhow::Result<()> {
        if self.is_clean() {
            return Ok(());
        }
        bail!(
            "{}\nlost: {:?}\nduplicates: {:?}\nout of order: {:?}\nphantoms: {:?}\nsplit brain: {:?}",
            self.line(),
            first(&self.lost),
            first(&self.duplicates),
            first(&self.out_of_order),
            first(&self.phantoms),
            self.split_brain
        )
    }
}

fn first<T: Clone>(v: &[T]) -> Vec<T> {
    v.iter().take(10).cloned().collect()
}

/// Checks a history against the final primary's ids and lists.
pub fn check(ops: &[Op], ids: &HashSet<i64>, lists: &BTreeMap<i32, Vec<i64>>) -> Verdict {
    let mut v = Verdict {
        clients: ops.iter().map(|o| o.client).collect::<HashSet<_>>().len(),
        ..Verdict::default()
    };
    for o in ops {
        match o.outcome {
            Outcome::Ok => v.ok += 1,
            Outcome::Failed => v.failed += 1,
            Outcome::Unknown => v.unknown += 1,
        }
    }
    let in_lists: HashSet<i64> = lists.values().flatten().copied().collect();
    for o in ops {
        match o.outcome {
            Outcome::Ok if o.durable && (!ids.contains(&o.id) || !in_lists.contains(&o.id)) => {
                v.lost.push(o.id)
            }
            Outcome::Failed if ids.contains(&o.id) || in_lists.contains(&o.id) => {
                v.phantoms.push(o.id)
            }
            _ => {}
        }
    }
    // Duplicates and real-time order within each list.
    let by_id: HashMap<i64, &Op> = ops.iter().map(|o| (o.id, o)).collect();
    for (key, items) in lists {
        let mut seen = HashSet::new();
        for id in items {
            if !seen.insert(*id) {
                v.duplicates.push(*id);
            }
        }
        // Walking from the end: the earliest acknowledgement among the later items.
        // An item that began after it was acknowledged stands wrongly before it.
        let mut min_end_after: Option<(Duration, i64)> = None;
        for id in items.iter().rev() {
            let Some(op) = by_id.get(id).filter(|o| o.outcome == Outcome::Ok) else {
                continue;
            };
            if let Some((end, later)) = min_end_after
                && end < op.start
            {
                v.out_of_order.push((*key, later, *id));
            }
            if min_end_after.is_none_or(|(e, _)| op.end < e) {
                min_end_after = Some((op.end, *id));
            }
        }
    }
    // Tenures: who acknowledged on which timeline, and when.
    struct Tenure {
        first_end: Duration,
        last_start: Duration,
        count: usize,
    }
    let mut tenures: BTreeMap<(String, u32), Tenure> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        let (Some(node), Some(tl)) = (&o.node, o.timeline) else {
            continue;
        };
        let t = tenures.entry((node.clone(), tl)).or_insert(Tenure {
            first_end: o.end,
            last_start: o.start,
            count: 0,
        });
        t.first_end = t.first_end.min(o.end);
        t.last_start = t.last_start.max(o.start);
        t.count += 1;
    }
    let list: Vec<(&(String, u32), &Tenure)> = tenures.iter().collect();
    for (i, (a, ta)) in list.iter().enumerate() {
        for (b, tb) in &list[i + 1..] {
            if a.0 != b.0 && a.1 == b.1 {
                v.split_brain.push(format!(
                    "timeline {} written by both {} and {}",
                    a.1, a.0, b.0
                ));
            }
            // a acknowledged a write begun after b acknowledged one, and the other way.
            if ta.first_end < tb.last_start && tb.first_end < ta.last_start {
                v.split_brain.push(format!(
                    "{}@tl{} and {}@tl{} both acknowledged writes in overlapping windows ({:.2}s..{:.2}s and {:.2}s..{:.2}s)",
                    a.0,
                    a.1,
                    b.0,
                    b.1,
                    ta.first_end.as_secs_f64(),
                    ta.last_start.as_secs_f64(),
                    tb.first_end.as_secs_f64(),
                    tb.last_start.as_secs_f64()
                ));
            }
        }
    }
    let mut order: Vec<(Duration, String, u32, usize)> = list
        .iter()
        .map(|((n, tl), t)| (t.first_end, n.clone(), *tl, t.count))
        .collect();
    order.sort();
    v.tenures = order.into_iter().map(|(_, n, tl, k)| (n, tl, k)).collect();
    v.max_gap = gap_in(ops, Duration::ZERO, Duration::MAX);
    v
}

/// The history as a person reads it: the verdict, then one line per operation.
fn render(ops: &[Op], v: &Verdict) -> String {
    let mut out = format!("{}\n\n", v.line());
    let _ = writeln!(
        out,
        "{:>9} {:>9} {:>6} {:>12} {:>3} {:<8} {:<22} {:>3} error",
        "start_s", "end_s", "client", "id", "key", "outcome", "node", "tl"
    );
    for o in ops {
        let _ = writeln!(
            out,
            "{:>9.3} {:>9.3} {:>6} {:>12} {:>3} {:<8} {:<22} {:>3} {}",
            o.start.as_secs_f64(),
            o.end.as_secs_f64(),
            o.client,
            o.id,
            o.key,
            format!("{:?}", o.outcome),
            o.node.as_deref().unwrap_or("-"),
            o.timeline.map(|t| t.to_string()).unwrap_or("-".into()),
            o.error.as_deref().unwrap_or("")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: i64, key: i32, start: u64, end: u64, node: &str, tl: u32) -> Op {
        Op {
            client: 0,
            id,
            key,
            start: Duration::from_millis(start),
            end: Duration::from_millis(end),
            outcome: Outcome::Ok,
            node: Some(node.into()),
            timeline: Some(tl),
            error: None,
            durable: true,
        }
    }

    fn state(ops: &[Op]) -> (HashSet<i64>, BTreeMap<i32, Vec<i64>>) {
        let ids = ops.iter().map(|o| o.id).collect();
        let mut lists: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for o in ops {
            lists.entry(o.key).or_default().push(o.id);
        }
        (ids, lists)
    }

    #[test]
    fn a_clean_failover_is_clean() {
        // a on timeline 1, then b on timeline 2; a's last ack overlaps b's first start
        // (the write was in flight while b was promoted), which is not a split brain.
        let ops = vec![
            op(1, 0, 0, 10, "a", 1),
            op(2, 0, 20, 3000, "a", 1),
            op(3, 0, 2900, 3100, "b", 2),
            op(4, 0, 3200, 3300, "b", 2),
        ];
        let (ids, lists) = state(&ops);
        let v = check(&ops, &ids, &lists);
        assert!(v.is_clean(), "{}", v.line());
        assert_eq!(v.tenures.len(), 2);
    }

    #[test]
    fn each_violation_is_found() {
        let ops = vec![
            op(1, 0, 0, 10, "a", 1),
            op(2, 0, 20, 30, "b", 1),
            op(3, 0, 40, 50, "a", 1),
            op(4, 1, 60, 70, "a", 1),
        ];
        let (ids, mut lists) = state(&ops);
        // id 4 lost from its list and the table; id 1 twice; 2 before 1.
        let mut ids = ids;
        ids.remove(&4);
        lists.insert(0, vec![2, 1, 3, 1]);
        lists.insert(1, vec![]);
        let v = check(&ops, &ids, &lists);
        assert_eq!(v.lost, vec![4]);
        assert_eq!(v.duplicates, vec![1]);
        assert!(!v.out_of_order.is_empty());
        assert!(
            v.split_brain
                .iter()
                .any(|s| s.contains("timeline 1 written by both")),
            "{:?}",
            v.split_brain
        );
        assert!(
            v.split_brain.iter().any(|s| s.contains("overlapping")),
            "{:?}",
            v.split_brain
        );
        assert!(!v.is_clean());
    }

    #[test]
    fn a_refused_write_that_is_present_is_a_phantom() {
        let mut ops = vec![op(1, 0, 0, 10, "a", 1)];
        ops[0].outcome = Outcome::Failed;
        let (ids, lists) = state(&ops);
        let v = check(&ops, &ids, &lists);
        assert_eq!(v.phantoms, vec![1]);
    }

    #[test]
    fn unknown_writes_may_be_there_or_not() {
        let mut ops = vec![op(1, 0, 0, 10, "a", 1), op(2, 0, 20, 30, "a", 1)];
        ops[1].outcome = Outcome::Unknown;
        let (ids, lists) = state(&ops[..1]);
        assert!(check(&ops, &ids, &lists).is_clean());
        let (ids, lists) = state(&ops);
        assert!(check(&ops, &ids, &lists).is_clean());
    }

    /// A pinned client's `synchronous_commit = local` write may vanish in a failover
    /// (not lost), but acknowledged by the old primary after the new one took writes,
    /// it is a split brain all the same.
    #[test]
    fn a_local_commit_may_vanish_but_never_overlap_the_next_primary() {
        let mut ops = vec![
            op(1, 0, 0, 10, "a", 1),
            op(2, 0, 20, 30, "a", 1),
            op(3, 0, 3000, 3100, "b", 2),
        ];
        ops[1].durable = false;
        let (ids, lists) = state(&[ops[0].clone(), ops[2].clone()]);
        assert!(check(&ops, &ids, &lists).is_clean());
        ops.push(op(4, 0, 3200, 3300, "b", 2));
        ops.push(op(5, 1, 3250, 3400, "a", 1));
        ops[4].durable = false;
        let (ids, lists) = state(&[ops[0].clone(), ops[2].clone(), ops[3].clone()]);
        let v = check(&ops, &ids, &lists);
        assert!(v.lost.is_empty(), "{:?}", v.lost);
        assert!(!v.split_brain.is_empty(), "{}", v.line());
    }
}
