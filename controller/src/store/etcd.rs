//! The etcd store: several controllers share one etcd cluster and one of them leads.
//!
//! Keys, under the group's prefix `P`:
//! - `P/leader`: the leading controller's URL, attached to its lease;
//! - `P/meta`: the store format and the next node id;
//! - `P/formations/<name>`: one formation's record (a save writes only the formations
//!   that changed);
//! - `P/events/<id, 20 digits>`: one event each; the oldest are deleted past
//!   [`EVENTS_KEPT`].
//!
//! Every write is one transaction guarded by `create_revision(P/leader) == fence`, the
//! revision at which this controller created the leader key: after the key expired
//! and another controller created it again, the guard fails and etcd applies nothing
//! (see [`crate::leader`]).
//!
//! A save larger than one transaction takes (more than [`MAX_TXN_OPS`] records, or
//! [`MAX_TXN_BYTES`]) goes in several, each guarded. A leader deposed between two of
//! them leaves a save half-written: `meta` (the next node id) goes first, so no id is
//! ever issued twice; each formation's record is one put, whole, so every formation is
//! either as before the save or as after it, never a mix; formations are planned
//! independently, so a new leader that finds some of them at the newer version and
//! others at the older plans each from its own record (as after a crash of a single
//! controller between two saves). A formation record larger than
//! [`MAX_RECORD_BYTES`] is refused (the save fails, nothing of it is written).
//!
//! The [`Store`] trait is synchronous (it runs under the state's lock); etcd's client is
//! async. The client lives on a small runtime of its own, so a store call from any
//! thread (a runtime worker inside `block_in_place`, a test) hands the request over and
//! waits for the answer without needing the caller's runtime.

use super::{DurableState, Store, StoreError};
use crate::config::EtcdSettings;
use crate::leader::Leadership;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp,
};
use pgha_api::Event;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Events kept in etcd (the file store keeps about 16 MiB of them on disk).
pub const EVENTS_KEPT: u64 = 20_000;
/// One etcd request's deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// A write slower than this is logged.
const SLOW_WRITE: Duration = Duration::from_millis(100);
/// etcd refuses a transaction of more than 128 operations (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 100;
/// etcd refuses a request of more than 1.5 MiB (`--max-request-bytes`): values of one
/// transaction stay under this.
const MAX_TXN_BYTES: usize = 1 << 20;
/// The largest formation record a save writes (a few kilobytes is usual).
pub const MAX_RECORD_BYTES: usize = 512 * 1024;

/// A connection to the etcd cluster, on its own runtime.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    endpoints: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a runtime worker may not do.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What `P/meta` holds.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Meta {
    format: u32,
    next_node_id: pgha_api::NodeId,
}

impl Etcd {
    /// Connects to the endpoints (and fails, naming them, when none answers).
    pub fn connect(settings: &EtcdSettings) -> Result<Etcd, StoreError> {
        let endpoints = settings.endpoints.join(",");
        let fail = |reason: String| StoreError::Etcd {
            endpoints: endpoints.clone(),
            reason,
        };
        if settings.endpoints.is_empty() {
            return Err(fail("no endpoints given".into()));
        }
        settings.check_transport().map_err(fail)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start the etcd client's runtime: {e}")))?;
        let mut options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(user) = &settings.user {
            let password = match &settings.password_file {
                Some(f) => read_secret(f).map_err(fail)?,
                None => String::new(),
            };
            options = options.with_user(user.clone(), password);
        }
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| fail(format!("reading {what} {}: {e}", p.display())))
        };
        if settings.ca_file.is_some() || settings.cert_file.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &settings.ca_file {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("ca_file", ca)?));
            }
            if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("cert_file", cert)?,
                    read("key_file", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        let eps = settings.endpoints.clone();
        // Made on its runtime (its connections live there), waited for from any thread.
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let connected = tokio::time::timeout(REQUEST_TIMEOUT * 2, async move {
                let mut client = Client::connect(eps, Some(options)).await?;
                // Connecting is lazy: ask something, so a dead cluster fails here.
                client.status().await?;
                Ok::<_, etcd_client::Error>(client)
            })
            .await;
            let _ = tx.send(connected);
        });
        let client = match rx.recv() {
            Ok(Ok(Ok(client))) => client,
            other => {
                rt.shutdown_background();
                return Err(fail(match other {
                    Ok(Ok(Err(e))) => describe(&e),
                    Ok(Err(_)) => format!("no answer within {} s", 2 * REQUEST_TIMEOUT.as_secs()),
                    _ => "the etcd client stopped".into(),
                }));
            }
        };
        let mut prefix = settings.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Etcd {
            inner: Arc::new(Inner {
                rt: Some(rt),
                client,
                prefix,
                endpoints,
            }),
        })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.inner.prefix)
    }

    pub fn leader_key(&self) -> String {
        self.key("leader")
    }

    fn error(&self, reason: String) -> StoreError {
        StoreError::Etcd {
            endpoints: self.inner.endpoints.clone(),
            reason,
        }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.inner.rt.as_ref().expect("runtime present until drop")
    }

    /// Runs `op` on the etcd runtime and awaits it from any runtime.
    pub async fn run<T, F>(&self, op: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = op(self.inner.client.clone());
        let task = self
            .rt()
            .spawn(async move { tokio::time::timeout(REQUEST_TIMEOUT, fut).await });
        let answer = task
            .await
            .map_err(|e| format!("the request's task failed: {e}"));
        self.outcome(answer)
    }

    /// A request's outcome as the store reports it: the answer, or why there is none.
    fn outcome<T>(
        &self,
        answer: Result<Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>, String>,
    ) -> Result<T, StoreError> {
        match answer {
            Ok(Ok(r)) => r.map_err(|e| self.error(describe(&e))),
            Ok(Err(_)) => {
                Err(self.error(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))
            }
            Err(why) => Err(self.error(why)),
        }
    }

    /// Runs `op` on the etcd runtime and blocks this thread until it answers (never
    /// call it from the etcd runtime itself).
    fn block<T, F>(&self, op: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let fut = op(self.inner.client.clone());
        self.rt().spawn(async move {
            let _ = tx.send(tokio::time::timeout(REQUEST_TIMEOUT, fut).await);
        });
        self.outcome(rx.recv().map_err(|_| "the etcd client stopped".to_string()))
    }

    /// Whether the group's prefix holds a formation or a node counter already.
    pub fn holds_state(&self) -> Result<bool, StoreError> {
        let prefix = self.inner.prefix.clone();
        let r = self.block(move |mut c| async move {
            c.get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1),
                ),
            )
            .await
        })?;
        Ok(!r.kvs().is_empty())
    }
}

impl Etcd {
    /// Writes a whole state and its events into an empty prefix while no controller
    /// leads it: `pgha migrate` of a stopped file-store monitor. Every transaction is
    /// guarded by the leader key's absence, so a group that starts meanwhile is never
    /// written over.
    pub fn import(&self, state: &DurableState, events: &[Event]) -> Result<(), StoreError> {
        if self.holds_state()? {
            return Err(self.error(format!(
                "prefix {} already holds a controller group's state: nothing imported",
                self.inner.prefix
            )));
        }
        let meta = Meta {
            format: crate::records::STORE_FORMAT,
            next_node_id: state.next_node_id,
        };
        let mut ops = vec![TxnOp::put(
            self.key("meta"),
            serde_json::to_vec(&meta).map_err(|e| json_err("meta", e))?,
            None,
        )];
        for (name, f) in &state.formations {
            let v = serde_json::to_vec(f).map_err(|e| json_err(name, e))?;
            ops.push(TxnOp::put(self.key(&format!("formations/{name}")), v, None));
        }
        let kept = events.len().saturating_sub(EVENTS_KEPT as usize);
        for e in &events[kept..] {
            let v = serde_json::to_vec(e).map_err(|err| json_err("event", err))?;
            ops.push(TxnOp::put(
                self.key(&format!("events/{:020}", e.id)),
                v,
                None,
            ));
        }
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(MAX_TXN_OPS));
            let chunk = std::mem::replace(&mut ops, rest);
            let guard = Compare::create_revision(self.leader_key(), CompareOp::Equal, 0);
            let txn = Txn::new().when([guard]).and_then(chunk);
            let r = self.block(move |mut c| async move { c.txn(txn).await })?;
            if !r.succeeded() {
                return Err(self.error(
                    "a controller started leading this prefix during the import: stop it, delete the prefix, and migrate again".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The etcd client's error, with the gRPC status message rather than its debug form.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        etcd_client::Error::TransportError(t) => {
            use std::error::Error;
            let mut root: &dyn Error = t;
            while let Some(inner) = root.source() {
                root = inner;
            }
            format!("cannot connect: {root}")
        }
        other => other.to_string(),
    }
}

fn read_secret(f: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(f)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("reading password_file {}: {e}", f.display()))
}

/// The durable state and events in etcd, written only while `leadership` holds the
/// leader key at the fence it names.
pub struct EtcdStore {
    etcd: Etcd,
    leadership: Arc<Leadership>,
    /// What etcd holds, as this store last read or wrote it: a save writes the
    /// difference.
    written: std::sync::Mutex<DurableState>,
}

impl EtcdStore {
    pub fn new(etcd: Etcd, leadership: Arc<Leadership>) -> Self {
        EtcdStore {
            etcd,
            leadership,
            written: Default::default(),
        }
    }

    fn event_key(&self, id: u64) -> String {
        self.etcd.key(&format!("events/{id:020}"))
    }

    /// Applies `ops` in transactions guarded by the fence (in chunks: etcd limits the
    /// operations of one transaction). Refused: another controller leads.
    fn fenced(&self, ops: Vec<(TxnOp, usize)>) -> Result<(), StoreError> {
        let fence = self.leadership.fence();
        if fence == 0 {
            return Err(StoreError::NotLeader);
        }
        for chunk in chunks(ops) {
            let guard = Compare::create_revision(self.etcd.leader_key(), CompareOp::Equal, fence);
            let txn = Txn::new().when([guard]).and_then(chunk);
            let started = std::time::Instant::now();
            let r = self
                .etcd
                .block(move |mut c| async move { c.txn(txn).await })?;
            // The answers about the formations a write carries wait for it.
            if started.elapsed() > SLOW_WRITE {
                tracing::warn!(
                    ms = started.elapsed().as_millis() as u64,
                    "slow etcd write: the reports of the formations it carries wait for it"
                );
            }
            if !r.succeeded() {
                self.leadership.deposed(fence);
                return Err(StoreError::NotLeader);
            }
        }
        Ok(())
    }
}

/// `ops` in transactions etcd takes: at most [`MAX_TXN_OPS`] operations and about
/// [`MAX_TXN_BYTES`] of values each, in order.
fn chunks(ops: Vec<(TxnOp, usize)>) -> Vec<Vec<TxnOp>> {
    let mut out: Vec<Vec<TxnOp>> = vec![];
    let mut bytes = 0;
    for (op, size) in ops {
        match out.last_mut() {
            Some(last) if last.len() < MAX_TXN_OPS && bytes + size <= MAX_TXN_BYTES => {
                bytes += size;
                last.push(op);
            }
            _ => {
                bytes = size;
                out.push(vec![op]);
            }
        }
    }
    out
}

fn json_err(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        path: PathBuf::from(format!("etcd:{what}")),
        source: e,
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<DurableState, StoreError> {
        let meta_key = self.etcd.key("meta");
        let formations = self.etcd.key("formations/");
        let (meta, forms) = self.etcd.block(move |mut c| async move {
            let meta = c.get(meta_key, None).await?;
            let forms = c
                .get(formations, Some(GetOptions::new().with_prefix()))
                .await?;
            Ok((meta, forms))
        })?;
        let mut st = DurableState::default();
        if let Some(kv) = meta.kvs().first() {
            let m: Meta = serde_json::from_slice(kv.value()).map_err(|e| json_err("meta", e))?;
            if m.format > crate::records::STORE_FORMAT {
                return Err(StoreError::Format {
                    path: PathBuf::from(format!("etcd:{}", self.etcd.key("meta"))),
                    found: m.format,
                    supported: crate::records::STORE_FORMAT,
                });
            }
            st.next_node_id = m.next_node_id;
        }
        st.format = crate::records::STORE_FORMAT;
        for kv in forms.kvs() {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            let f: crate::records::FormationRecord =
                serde_json::from_slice(kv.value()).map_err(|e| json_err(&key, e))?;
            st.formations.insert(f.name.clone(), f);
        }
        *self.written.lock().unwrap_or_else(|e| e.into_inner()) = st.clone();
        Ok(st)
    }

    fn save(&mut self, state: &DurableState) -> Result<(), StoreError> {
        let written = self
            .written
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut ops = Vec::new();
        let meta = Meta {
            format: crate::records::STORE_FORMAT,
            next_node_id: state.next_node_id,
        };
        if state.next_node_id != written.next_node_id || written.format == 0 {
            let v = serde_json::to_vec(&meta).map_err(|e| json_err("meta", e))?;
            let n = v.len();
            ops.push((TxnOp::put(self.etcd.key("meta"), v, None), n));
        }
        for (name, f) in &state.formations {
            if written.formations.get(name) != Some(f) {
                let v = serde_json::to_vec(f).map_err(|e| json_err(name, e))?;
                if v.len() > MAX_RECORD_BYTES {
                    return Err(self.etcd.error(format!(
                        "formation {name}'s record is {} bytes, more than the {MAX_RECORD_BYTES} one etcd write takes: nothing was written",
                        v.len()
                    )));
                }
                let n = v.len();
                ops.push((
                    TxnOp::put(self.etcd.key(&format!("formations/{name}")), v, None),
                    n,
                ));
            }
        }
        for name in written.formations.keys() {
            if !state.formations.contains_key(name) {
                ops.push((
                    TxnOp::delete(self.etcd.key(&format!("formations/{name}")), None),
                    0,
                ));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.fenced(ops)?;
        let mut now_written = state.clone();
        now_written.format = crate::records::STORE_FORMAT;
        *self.written.get_mut().unwrap_or_else(|e| e.into_inner()) = now_written;
        Ok(())
    }

    fn append_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        let mut ops = Vec::new();
        for e in events {
            let v = serde_json::to_vec(e).map_err(|err| json_err("event", err))?;
            let n = v.len();
            ops.push((TxnOp::put(self.event_key(e.id), v, None), n));
            // Every thousand events, the oldest beyond the kept ones go.
            if e.id % 1000 == 0 && e.id > EVENTS_KEPT {
                ops.push((
                    TxnOp::delete(
                        self.event_key(0),
                        Some(
                            etcd_client::DeleteOptions::new()
                                .with_range(self.event_key(e.id - EVENTS_KEPT)),
                        ),
                    ),
                    0,
                ));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.fenced(ops)
    }

    fn load_events(&self) -> Result<Vec<Event>, StoreError> {
        let prefix = self.etcd.key("events/");
        let r = self.etcd.block(move |mut c| async move {
            c.get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(crate::state::EVENTS_IN_MEMORY as i64),
                ),
            )
            .await
        })?;
        let mut out: Vec<Event> = r
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        out.reverse();
        Ok(out)
    }
}

/// How a controller contends for the leader key, and what it does on winning.
pub struct Campaign {
    pub etcd: Etcd,
    pub leadership: Arc<Leadership>,
    /// This controller's URL, written as the leader key's value.
    pub own_url: String,
    pub lease_ttl_s: u64,
    /// Run (off the async workers) once the key is won, before this controller
    /// answers as leader: load the state from etcd. An error gives the key back.
    pub on_elected: Arc<dyn Fn() -> anyhow::Result<()> + Send + Sync>,
}

/// A won leader key.
struct Won {
    lease: i64,
    revision: i64,
    /// Monotonic ms before the lease was granted: it surely lasts TTL from here.
    asked_at: u64,
}

/// Margin kept between the local lease deadline and the TTL: a keep-alive's send time
/// is before etcd renewed the lease, so the deadline is early by the round trip already;
/// this covers clock rate differences.
const LEASE_MARGIN_MS: u64 = 500;

impl Campaign {
    /// Contends for leadership for ever: follows while another controller leads, leads
    /// while the lease is kept alive, steps down as soon as it cannot be sure it leads.
    pub async fn run(self) {
        loop {
            match self.follow_until_won().await {
                Some(won) => self.lead(won).await,
                None => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Polls the leader key; when none is there, tries to create it under a new lease.
    /// Returns the lease, the key's create revision and when the lease was asked for
    /// once won.
    async fn follow_until_won(&self) -> Option<Won> {
        let key = self.etcd.leader_key();
        loop {
            let k = key.clone();
            match self
                .etcd
                .run(move |mut c| async move { c.get(k, None).await })
                .await
            {
                Ok(r) if !r.kvs().is_empty() => {
                    let url = String::from_utf8_lossy(r.kvs()[0].value()).to_string();
                    self.leadership.set_leader_url(Some(url));
                }
                Ok(_) => {
                    self.leadership.set_leader_url(None);
                    match self.try_acquire().await {
                        Ok(Some(won)) => return Some(won),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("campaigning for leadership: {e}"),
                    }
                }
                Err(e) => {
                    self.leadership.set_leader_url(None);
                    tracing::warn!("cannot read who leads: {e}");
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn try_acquire(&self) -> Result<Option<Won>, StoreError> {
        let asked_at = crate::now_ms();
        let ttl = self.lease_ttl_s as i64;
        let lease = self
            .etcd
            .run(move |mut c| async move { c.lease_grant(ttl, None).await })
            .await?
            .id();
        let key = self.etcd.leader_key();
        let url = self.own_url.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                url,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let r = self
            .etcd
            .run(move |mut c| async move { c.txn(txn).await })
            .await?;
        if !r.succeeded() {
            let _ = self
                .etcd
                .run(move |mut c| async move { c.lease_revoke(lease).await })
                .await;
            return Ok(None);
        }
        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Some(Won {
            lease,
            revision,
            asked_at,
        }))
    }

    /// Leads: loads the state, then keeps the lease alive every third of its TTL, and
    /// steps down when a keep-alive fails past the deadline or a write was refused.
    async fn lead(&self, won: Won) {
        let Won {
            lease,
            revision,
            asked_at,
        } = won;
        let ttl_ms = self.lease_ttl_s * 1000;
        self.leadership.won(revision);
        let elected = self.on_elected.clone();
        let loaded = tokio::task::spawn_blocking(move || elected()).await;
        let loaded = match loaded {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("{e}")),
        };
        if let Err(e) = loaded {
            tracing::error!("won leadership but cannot load the state, giving it back: {e:#}");
            self.give_up(lease).await;
            return;
        }
        self.leadership.set_leader_url(Some(self.own_url.clone()));
        self.leadership
            .extend(asked_at + ttl_ms.saturating_sub(LEASE_MARGIN_MS));
        tracing::info!(revision, "this controller leads");
        loop {
            tokio::time::sleep(Duration::from_millis(ttl_ms / 3)).await;
            if self.leadership.fence() != revision {
                tracing::warn!("a write was refused: another controller leads; stepping down");
                break;
            }
            let sent = crate::now_ms();
            let alive = self
                .etcd
                .run(move |mut c| async move {
                    let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await;
            match alive {
                Ok(Some(r)) if r.ttl() > 0 => {
                    self.leadership
                        .extend(sent + ttl_ms.saturating_sub(LEASE_MARGIN_MS));
                }
                Ok(_) => {
                    tracing::warn!("the leader lease expired; stepping down");
                    break;
                }
                Err(e) => {
                    if !self.leadership.is_leader(crate::now_ms()) {
                        tracing::warn!(
                            "cannot keep the leader lease alive past its deadline ({e}); stepping down"
                        );
                        break;
                    }
                    tracing::warn!("keeping the leader lease alive: {e}");
                }
            }
        }
        self.leadership.step_down();
        self.give_up(lease).await;
    }

    /// Gives the lease back (best effort: it expires anyway), so another controller
    /// need not wait out the TTL.
    async fn give_up(&self, lease: i64) {
        self.leadership.step_down();
        let _ = self
            .etcd
            .run(move |mut c| async move { c.lease_revoke(lease).await })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A save goes in transactions etcd takes (operations and bytes), in order.
    #[test]
    fn saves_are_cut_into_transactions_etcd_takes() {
        let op = |n: usize| (TxnOp::put(format!("k{n}"), vec![0u8; n], None), n);
        let sizes = |c: &[Vec<TxnOp>]| c.iter().map(|c| c.len()).collect::<Vec<_>>();
        assert_eq!(
            sizes(&chunks((0..250).map(|_| op(10)).collect())),
            vec![100, 100, 50]
        );
        let big = MAX_RECORD_BYTES;
        assert_eq!(
            sizes(&chunks(vec![op(big), op(big), op(big), op(10)])),
            vec![2, 2]
        );
        assert!(chunks(vec![]).is_empty());
    }
}
