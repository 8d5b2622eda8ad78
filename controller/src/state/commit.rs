//! How the durable records reach the store, and when an answer may be given.
//!
//! Two modes, one rule: nothing is published (an assignment, a term, a node id, an
//! event) that the store does not hold.
//!
//! - **Inline** (the default, and what unit tests use): [`ControllerState::save`] and
//!   [`ControllerState::record_all`] write to the store before they return, under the
//!   state's lock; a failed write puts back the last saved copy.
//! - **Pipelined** (the running controller, [`ControllerState::pipeline`]): a change is
//!   *staged* under the lock (a version number, and for each formation the version of its
//!   last change), and written after the lock is released by whichever request needs it
//!   first ([`Ticket::settle`]), in one store write for everything staged by then (a
//!   group commit). A report waits only for its own formation's staged changes, so a
//!   slow store write (an etcd raft round on a busy disk) holds up the formations it
//!   carries, not every report of the fleet. A failed write puts back the last saved
//!   copy of everything staged since, and every request waiting on it fails (503, try
//!   again): what was not stored was never published.

use super::{
    ControllerState, DurableState, EVENTS_IN_MEMORY, Store, StoreError, labels, off_async_workers,
};
use pgha_api::Event;
use std::collections::HashMap;
use std::sync::Arc;

/// Why writing staged changes failed, kept for the requests that wait on them.
#[derive(Debug, Clone)]
struct Failure {
    not_leader: bool,
    reason: String,
}

impl Failure {
    fn error(&self) -> StoreError {
        match self.not_leader {
            true => StoreError::NotLeader,
            false => StoreError::Unwritten(self.reason.clone()),
        }
    }
}

/// Where the durable records stand against the store.
pub struct Commit {
    store: Arc<std::sync::Mutex<Box<dyn Store>>>,
    /// One write at a time; held across the store I/O, never with the state's lock.
    writer: Arc<tokio::sync::Mutex<()>>,
    pipelined: bool,
    /// Tells a ticket of a replaced state (a controller that lost and won leadership
    /// again) from the current one.
    generation: u64,
    /// The last staged version, and the last one the store confirmed.
    version: u64,
    confirmed: u64,
    /// Every version up to this one failed to be written (and was put back).
    failed_through: u64,
    last_failure: Option<Failure>,
    /// Per formation, the version of its last staged change (its record or an event of
    /// it); `global` for the node-id counter.
    dirty: HashMap<String, u64>,
    global: u64,
    /// The durable records as of `version`.
    staged: DurableState,
    /// Events staged and not yet written.
    pending_events: Vec<Event>,
}

impl Commit {
    pub fn new(store: Box<dyn Store>, durable: &DurableState) -> Self {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Commit {
            store: Arc::new(std::sync::Mutex::new(store)),
            writer: Arc::new(tokio::sync::Mutex::new(())),
            pipelined: false,
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            version: 0,
            confirmed: 0,
            failed_through: 0,
            last_failure: None,
            dirty: HashMap::new(),
            global: 0,
            staged: durable.clone(),
            pending_events: Vec::new(),
        }
    }

    fn with_store<T>(&self, f: impl FnOnce(&mut dyn Store) -> T) -> T {
        let mut s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        f(s.as_mut())
    }

    /// Where the version `need` stands: written, failed, or still to write (None).
    fn outcome(&self, need: u64) -> Option<Result<(), StoreError>> {
        if need <= self.confirmed {
            Some(Ok(()))
        } else if need <= self.failed_through {
            Some(Err(self
                .last_failure
                .as_ref()
                .map(Failure::error)
                .unwrap_or_else(|| {
                    StoreError::Unwritten("an earlier write failed".into())
                })))
        } else {
            None
        }
    }
}

/// What one group commit writes.
struct Batch {
    version: u64,
    state: DurableState,
    events: Vec<Event>,
}

/// A request's claim on the staged changes it is about to publish: [`Ticket::settle`]
/// returns once they are in the store (writing them if nobody else is).
#[must_use = "an answer built on staged changes waits for them to be stored"]
pub struct Ticket {
    need: u64,
    generation: u64,
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl Ticket {
    /// Waits until the store holds everything the ticket's answer rests on: writes the
    /// staged changes (all of them, one write) when no other request is doing so.
    pub async fn settle(self, shared: &crate::Shared) -> Result<(), StoreError> {
        let _writing = self.writer.lock().await;
        let (batch, store) = {
            let mut st = crate::lock(shared);
            if st.commit.generation != self.generation {
                // Leadership was lost (and maybe won again) meanwhile: this state is gone.
                return Err(StoreError::NotLeader);
            }
            if let Some(done) = st.commit.outcome(self.need) {
                return done;
            }
            (st.take_batch(), st.commit.store.clone())
        };
        let version = batch.version;
        let started = std::time::Instant::now();
        let written = tokio::task::spawn_blocking(move || {
            let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
            let state = s.save(&batch.state).map(|()| batch.state);
            let events = match &state {
                Ok(_) if !batch.events.is_empty() => s.append_events(&batch.events),
                _ => Ok(()),
            };
            (state, events, batch.events)
        })
        .await;
        let mut st = crate::lock(shared);
        if st.commit.generation != self.generation {
            return Err(StoreError::NotLeader);
        }
        st.metrics
            .store_write_duration
            .observe(started.elapsed().as_secs_f64());
        match written {
            Ok((state, events, written_events)) => {
                st.finish_batch(version, state, events, &written_events)
            }
            Err(e) => st.finish_batch(
                version,
                Err(StoreError::Unwritten(format!(
                    "the store write panicked: {e}"
                ))),
                Ok(()),
                &[],
            ),
        }
        st.commit
            .outcome(self.need)
            .unwrap_or_else(|| Err(StoreError::Unwritten("not written".into())))
    }
}

impl ControllerState {
    /// Stages changes from now on instead of writing them under the lock (the running
    /// controller; see the module's comment).
    pub fn pipeline(&mut self) {
        self.commit.pipelined = true;
        // What was written inline so far is where staging starts from.
        self.commit.staged = self.saved.clone();
    }

    /// What an answer about `formation` (None: about anything) must wait for before it
    /// is given; None when the store already holds it.
    pub fn ticket(&self, formation: Option<&str>) -> Option<Ticket> {
        let c = &self.commit;
        let need = match formation {
            Some(f) => c.global.max(c.dirty.get(f).copied().unwrap_or(0)),
            None => c.version,
        };
        (need > c.confirmed).then(|| Ticket {
            need,
            generation: c.generation,
            writer: c.writer.clone(),
        })
    }

    /// Persists the durable records (inline), or stages them (pipelined). Inline, a
    /// failed write puts back the last saved copy: memory is never ahead of disk once
    /// the lock is released.
    pub fn save(&mut self) -> Result<(), StoreError> {
        if self.commit.pipelined {
            self.stage();
            return Ok(());
        }
        if self.durable == self.saved {
            return Ok(());
        }
        match off_async_workers(|| self.commit.with_store(|s| s.save(&self.durable))) {
            Ok(()) => {
                self.saved = self.durable.clone();
                self.count_write("state");
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "the controller store refused a write, nothing of it is in force: {e}"
                );
                self.durable = self.saved.clone();
                Err(e)
            }
        }
    }

    /// Records events durably in one append (inline; or staged, pipelined), then in
    /// memory.
    pub fn record_all(&mut self, mut events: Vec<Event>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        for ev in &mut events {
            ev.id = self.next_event_id;
            self.next_event_id += 1;
            tracing::info!(formation = %ev.formation, node = ev.node_name.as_deref().unwrap_or("-"), rule = %ev.rule, "{}", ev.description);
        }
        if self.commit.pipelined {
            // The records the events speak of are staged first: they are written
            // together, state before events.
            self.stage();
            let c = &mut self.commit;
            c.version += 1;
            for ev in &events {
                c.dirty.insert(ev.formation.clone(), c.version);
            }
            c.pending_events.extend(events.iter().cloned());
        } else {
            if let Err(e) =
                off_async_workers(|| self.commit.with_store(|s| s.append_events(&events)))
            {
                self.next_event_id = events[0].id;
                return Err(e);
            }
            self.count_write("events");
        }
        self.events.extend(events);
        while self.events.len() > EVENTS_IN_MEMORY {
            self.events.pop_front();
        }
        Ok(())
    }

    fn count_write(&self, kind: &str) {
        self.metrics
            .store_writes
            .get_or_create(&labels(&[("kind", kind)]))
            .inc();
    }

    /// Gives the durable records a new version when they changed since the last one,
    /// marking the formations that changed.
    fn stage(&mut self) {
        let c = &mut self.commit;
        if self.durable == c.staged {
            return;
        }
        c.version += 1;
        let v = c.version;
        if self.durable.next_node_id != c.staged.next_node_id
            || self.durable.format != c.staged.format
        {
            c.global = v;
        }
        for (name, f) in &self.durable.formations {
            if c.staged.formations.get(name) != Some(f) {
                c.dirty.insert(name.clone(), v);
            }
        }
        for name in c.staged.formations.keys() {
            if !self.durable.formations.contains_key(name) {
                c.dirty.insert(name.clone(), v);
            }
        }
        c.staged = self.durable.clone();
    }

    /// Everything staged so far, to be written in one go.
    fn take_batch(&mut self) -> Batch {
        self.stage();
        Batch {
            version: self.commit.version,
            state: self.commit.staged.clone(),
            events: std::mem::take(&mut self.commit.pending_events),
        }
    }

    /// The store's answer to a batch. On success the batch's version is confirmed. When
    /// the records could not be written, memory goes back to the last saved copy, and
    /// every version staged by now counts as failed (later changes built on the ones
    /// put back); events not written are forgotten.
    fn finish_batch(
        &mut self,
        version: u64,
        state: Result<DurableState, StoreError>,
        events: Result<(), StoreError>,
        written_events: &[Event],
    ) {
        let e = match (state, events) {
            (Ok(state), events) => {
                self.count_write("state");
                self.saved = state;
                self.commit.confirmed = version;
                match events {
                    Ok(()) if !written_events.is_empty() => self.count_write("events"),
                    Ok(()) => {}
                    Err(e) => {
                        // The records are stored and may be published; only these
                        // events are lost (memory forgets them too).
                        tracing::error!("the controller store refused events: {e}");
                        let lost: std::collections::HashSet<u64> =
                            written_events.iter().map(|e| e.id).collect();
                        self.events.retain(|e| !lost.contains(&e.id));
                    }
                }
                return;
            }
            (Err(e), _) => e,
        };
        tracing::error!(
            "the controller store refused a write, nothing of it is in force and the requests waiting on it fail: {e}"
        );
        self.durable = self.saved.clone();
        let c = &mut self.commit;
        c.staged = self.saved.clone();
        c.last_failure = Some(Failure {
            not_leader: matches!(e, StoreError::NotLeader),
            reason: e.to_string(),
        });
        c.failed_through = c.version;
        // What memory holds now is what the store holds.
        let confirmed = c.confirmed;
        for v in c.dirty.values_mut() {
            *v = (*v).min(confirmed);
        }
        c.global = c.global.min(confirmed);
        // Events not written (this batch's and any staged since) are forgotten.
        let first_lost = written_events
            .first()
            .or(c.pending_events.first())
            .map(|e| e.id);
        c.pending_events.clear();
        if let Some(first) = first_lost {
            self.events.retain(|e| e.id < first);
            self.next_event_id = first;
        }
    }
}
