use super::*;
use crate::desired::Scan;
use crate::store::FileStore;
use pgha_api::validate::parse_formation;
use pgha_api::{NodeReport, NodeState};

fn state(dir: &std::path::Path) -> ControllerState {
    ControllerState::open(Box::new(FileStore::new(dir)), 1000).unwrap()
}

fn scan_of(files: &[(&str, &str)]) -> Scan {
    let mut scan = Scan::default();
    for (file, text) in files {
        match parse_formation(file, text.as_bytes()) {
            Ok(doc) => {
                scan.formations
                    .insert(doc.metadata.name.clone(), (file.to_string(), doc));
            }
            Err(e) => {
                scan.rejected.insert(file.to_string(), e);
            }
        }
    }
    scan
}

const GOOD: &str = "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: orders\nspec:\n  dbname: orders\n  numberSyncStandbys: 0\n  admission:\n    open: true\n";

#[test]
fn accepted_rejected_and_removed_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = state(dir.path());
    st.apply_desired(scan_of(&[("orders.yaml", GOOD)]), 2000)
        .unwrap();
    assert_eq!(st.durable.formations["orders"].desired.generation, 1);
    // The same file again: no new generation, no event.
    let events = st.events.len();
    st.apply_desired(scan_of(&[("orders.yaml", GOOD)]), 2100)
        .unwrap();
    assert_eq!(st.durable.formations["orders"].desired.generation, 1);
    assert_eq!(st.events.len(), events);
    // A broken version: rejected once (one event however often it is seen), the last
    // good version stays in force.
    let broken = scan_of(&[("orders.yaml", "spec: [")]);
    st.apply_desired(broken, 2200).unwrap();
    st.apply_desired(scan_of(&[("orders.yaml", "spec: [")]), 2300)
        .unwrap();
    let f = &st.durable.formations["orders"];
    assert_eq!(f.desired.generation, 1);
    assert_eq!(f.spec().unwrap().dbname.as_deref(), Some("orders"));
    let rejected: Vec<_> = st
        .events
        .iter()
        .filter(|e| e.rule == "config_rejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].description.contains("orders.yaml:1:"),
        "{}",
        rejected[0].description
    );
    assert!(
        !f.desired.orphaned,
        "a rejected file must not orphan its formation"
    );
    // The file removed: the formation stays, orphaned, and says so once.
    st.apply_desired(Scan::default(), 2400).unwrap();
    st.apply_desired(Scan::default(), 2500).unwrap();
    assert!(st.durable.formations["orders"].desired.orphaned);
    assert_eq!(
        st.events
            .iter()
            .filter(|e| e.rule == "formation_orphaned")
            .count(),
        1
    );
    // Everything survives a restart of the controller.
    let reopened = state(dir.path());
    assert!(reopened.durable.formations["orders"].desired.orphaned);
    assert_eq!(reopened.durable.formations["orders"].desired.generation, 1);
    // The file back: a new generation, no longer orphaned.
    st.apply_desired(scan_of(&[("orders.yaml", GOOD)]), 2600)
        .unwrap();
    assert!(!st.durable.formations["orders"].desired.orphaned);
    assert_eq!(st.durable.formations["orders"].desired.generation, 2);
}

/// Admission fails closed: the secret persists with the last good spec, so neither a
/// restart nor a rejected, removed or secret-less file opens the formation.
#[test]
fn admission_never_opens_by_itself() {
    use crate::records::AdmissionRule;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("orders.secret");
    crate::desired::write_secret(&secret_file, "s3cret").unwrap();
    let formations = dir.path().join("formations");
    std::fs::create_dir(&formations).unwrap();
    let with_secret = GOOD.replace(
        "    open: true\n",
        &format!("    joinSecretFile: {}\n", secret_file.display()),
    );
    let mut st = state(dir.path());
    let rule = |st: &ControllerState| match st.durable.formations["orders"].admission() {
        AdmissionRule::Open => "open".to_string(),
        AdmissionRule::Secret(s) => s.to_string(),
        AdmissionRule::Closed => "closed".to_string(),
    };
    std::fs::write(formations.join("orders.yaml"), &with_secret).unwrap();
    st.apply_desired(crate::desired::scan(&formations, Some(dir.path())), 2000)
        .unwrap();
    assert_eq!(rule(&st), crate::records::stored_join_secret("s3cret"));
    // The secret file becomes unreadable: the file is rejected, the secret stays.
    std::fs::remove_file(&secret_file).unwrap();
    st.apply_desired(crate::desired::scan(&formations, Some(dir.path())), 2100)
        .unwrap();
    assert_eq!(rule(&st), crate::records::stored_join_secret("s3cret"));
    // A file that names no secret and does not say open is rejected too.
    let bare = GOOD.replace("  admission:\n    open: true\n", "");
    std::fs::write(formations.join("orders.yaml"), &bare).unwrap();
    st.apply_desired(crate::desired::scan(&formations, Some(dir.path())), 2200)
        .unwrap();
    assert_eq!(rule(&st), crate::records::stored_join_secret("s3cret"));
    // After a restart (the secret is no longer in memory only) and with the file gone.
    std::fs::remove_file(formations.join("orders.yaml")).unwrap();
    let mut reopened = state(dir.path());
    reopened
        .apply_desired(crate::desired::scan(&formations, Some(dir.path())), 2300)
        .unwrap();
    assert_eq!(
        rule(&reopened),
        crate::records::stored_join_secret("s3cret")
    );
    // Only a file that says so opens it.
    std::fs::write(formations.join("orders.yaml"), GOOD).unwrap();
    reopened
        .apply_desired(crate::desired::scan(&formations, Some(dir.path())), 2400)
        .unwrap();
    assert_eq!(rule(&reopened), "open");
    // A formation record without any accepted spec admits no one.
    let rec = crate::records::FormationRecord::new("x", "db");
    assert_eq!(rec.admission(), AdmissionRule::Closed);
}

/// A store that refuses writes while `fail` is set (disk full, EIO).
struct FlakyStore {
    inner: FileStore,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Store for FlakyStore {
    fn load(&self) -> Result<DurableState, StoreError> {
        self.inner.load()
    }
    fn save(&mut self, state: &DurableState) -> Result<(), StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io {
                path: "state.json".into(),
                source: std::io::Error::other("No space left on device"),
            });
        }
        self.inner.save(state)
    }
    fn append_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        self.inner.append_events(events)
    }
    fn load_events(&self) -> Result<Vec<Event>, StoreError> {
        self.inner.load_events()
    }
}

fn report(node_id: NodeId, reported: NodeState, term: u64) -> NodeReport {
    NodeReport::new(node_id, "orders", reported, term)
}

fn one_node_formation(store: Box<dyn Store>) -> ControllerState {
    let mut st = ControllerState::open(store, 1000).unwrap();
    st.apply_desired(scan_of(&[("orders.yaml", GOOD)]), 1000)
        .unwrap();
    let f = st.durable.formations.get_mut("orders").unwrap();
    f.nodes.insert(
        1,
        NodeRecord::for_test(1, "node_a", 5432, NodeState::Single, NodeState::Init),
    );
    st.durable.next_node_id = 2;
    st.save().unwrap();
    st
}

/// A failed save leaves memory equal to what the store holds: no reported state,
/// term or goal is in force that a restart would not find.
#[test]
fn a_failed_save_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut st = one_node_formation(Box::new(FlakyStore {
        inner: FileStore::new(dir.path()),
        fail: fail.clone(),
    }));
    let snapshot = st.durable.clone();
    let events = st.events.len();
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        st.take_report(&report(1, NodeState::Single, 1), 2000)
            .is_err()
    );
    assert_eq!(st.durable, snapshot);
    let plan = Plan {
        decisions: vec![planner::Decision {
            node_id: 1,
            goal: NodeState::DemoteTimeout,
            rule: Rule::Report,
            description: "test".into(),
        }],
        new_term: Some(9),
        ..Plan::default()
    };
    assert!(
        st.apply_plan(&st.view("orders", 2000).unwrap(), &plan, 2000)
            .is_err()
    );
    assert_eq!(st.durable, snapshot);
    assert_eq!(st.assignment("orders", 1, 2000).unwrap().term, 1);
    assert_eq!(st.events.len(), events, "no event for what was not stored");
    // The disk is back: the same report goes through.
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    st.take_report(&report(1, NodeState::Single, 1), 2100)
        .unwrap();
    assert_eq!(
        st.durable.formations["orders"].nodes[&1].reported(),
        NodeState::Single
    );
    assert_eq!(state(dir.path()).durable, st.durable);
}

/// An agent that saw a later term than the store holds (restored from an older
/// copy) moves the formation past it before anything is planned.
#[test]
fn a_later_term_reported_by_an_agent_is_never_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
    st.take_report(&report(1, NodeState::Single, 7), 2000)
        .unwrap();
    assert_eq!(st.durable.formations["orders"].term(), 7);
    assert!(st.events.iter().any(|e| e.rule == "term_catch_up"));
    assert_eq!(state(dir.path()).durable.formations["orders"].term(), 7);
}

/// The second review: one node reporting `u64::MAX` moved the term to its end, and
/// every later promotion wrapped to 0 (refused by every agent, or a panic in debug).
/// A report moves the term by a bounded step; a node outside the formation not at all;
/// and a term at its end blocks a failover with a reason instead of wrapping.
#[test]
fn a_node_cannot_drive_the_term_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
    let before = st.durable.formations["orders"].term();
    st.take_report(&report(1, NodeState::Single, u64::MAX), 2000)
        .unwrap();
    let term = st.durable.formations["orders"].term();
    assert_eq!(term, before + super::reconcile::TERM_CATCH_UP_MAX, "{term}");
    // A node the formation does not hold moves nothing.
    st.take_report(&report(9, NodeState::Single, u64::MAX), 2100)
        .unwrap();
    assert_eq!(st.durable.formations["orders"].term(), term);
    // Planned at the end of the term space: no new term, no wrap.
    assert_eq!(crate::planner::next_term(u64::MAX), None);
    assert_eq!(crate::planner::next_term(7), Some(8));
}

/// An NTP step of the wall clock does not age fresh reports: the planner's now is
/// monotonic. (Stamped with the stepped wall clock, as before, the primary looked
/// failed the moment the clock jumped.)
#[test]
fn a_wall_clock_jump_after_fresh_reports_fails_nothing_over() {
    let dir = tempfile::tempdir().unwrap();
    let clock = crate::clock::Clock::anchored_at(crate::clock::wall_ms());
    let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
    {
        let f = st.durable.formations.get_mut("orders").unwrap();
        let a = f.nodes.get_mut(&1).unwrap();
        a.intent.goal = NodeState::Primary;
        a.observed.reported = NodeState::Primary;
        let mut b = a.clone();
        b.id = 2;
        b.name = "node_b".into();
        b.host = "10.0.0.2".into();
        b.intent.goal = NodeState::Secondary;
        b.observed.reported = NodeState::Secondary;
        f.nodes.insert(2, b);
    }
    st.save().unwrap();
    let t0 = clock.now_ms();
    let mut up = report(1, NodeState::Primary, 1);
    up.pg.running = true;
    let mut sb = report(2, NodeState::Secondary, 1);
    sb.pg.running = true;
    sb.pg.upstream_streaming = true;
    st.take_report(&up, t0).unwrap();
    st.take_report(&sb, t0).unwrap();
    // The wall clock steps 60 s forward; the controller's clock does not follow.
    let stepped_wall = crate::clock::wall_ms() + 60_000;
    let now = clock.now_ms();
    assert!(
        now < t0 + 5_000,
        "the monotonic clock moved with the wall clock"
    );
    let plan = st.reconcile("orders", now).unwrap();
    assert!(plan.decisions.is_empty(), "{:?}", plan.decisions);
    let view = st.view("orders", now).unwrap();
    assert!(!view.is_failed(&view.nodes[0]));
    // What a wall-clock now would have judged.
    let stepped = st.view("orders", stepped_wall).unwrap();
    assert!(stepped.is_failed(&stepped.nodes[0]));
}

/// A slot the primary's Postgres invalidated: its node is asked to rebuild once (an
/// event and a metric), however often the primary reports it before dropping it.
#[test]
fn an_invalidated_slot_rebuilds_its_node_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
    {
        let f = st.durable.formations.get_mut("orders").unwrap();
        let mut b = f.nodes[&1].clone();
        b.id = 2;
        b.name = "node_b".into();
        b.intent.goal = NodeState::Secondary;
        f.nodes.insert(2, b);
    }
    st.save().unwrap();
    let mut r = report(1, NodeState::Single, 1);
    r.pg.lost_slots = vec![pgha_api::replication_slot_name(2)];
    st.take_report(&r, 2000).unwrap();
    st.take_report(&r, 3000).unwrap();
    assert_eq!(
        st.durable.formations["orders"].nodes[&2]
            .intent
            .rebuild_epoch,
        1
    );
    assert_eq!(st.assignment("orders", 2, 3000).unwrap().rebuild_epoch, 1);
    let evs = st
        .events
        .iter()
        .filter(|e| e.rule == "slot_invalidated")
        .count();
    assert_eq!(evs, 1);
    let text = st.metrics_page(3000);
    assert!(
        text.contains(
            "pgha_replication_slots_invalidated_total{formation=\"orders\",node=\"node_b\"} 1"
        ),
        "{text}"
    );
    // The primary keeps a slot for a streaming peer, not for one in maintenance.
    let slot_of_b_with = |st: &mut ControllerState, goal: NodeState| {
        let b = st.durable.formations.get_mut("orders").unwrap();
        b.nodes.get_mut(&2).unwrap().intent.goal = goal;
        st.assignment("orders", 1, 3000).unwrap().peers[0].slot
    };
    assert!(slot_of_b_with(&mut st, NodeState::Secondary));
    assert!(!slot_of_b_with(&mut st, NodeState::Maintenance));
    assert!(slot_of_b_with(&mut st, NodeState::Secondary));
    // Dropped and made anew, then lost again: a second rebuild.
    r.pg.lost_slots.clear();
    st.take_report(&r, 4000).unwrap();
    r.pg.lost_slots = vec![pgha_api::replication_slot_name(2)];
    st.take_report(&r, 5000).unwrap();
    assert_eq!(
        st.durable.formations["orders"].nodes[&2]
            .intent
            .rebuild_epoch,
        2
    );
}

/// A forced failover is counted under the operator's reason, from its start to its end
/// (the override covers the term the plan moves to).
#[test]
fn a_forced_failover_is_counted_as_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
    {
        let f = st.durable.formations.get_mut("orders").unwrap();
        let a = f.nodes.get_mut(&1).unwrap();
        a.intent.goal = NodeState::Primary;
        a.observed.reported = NodeState::Primary;
        for (id, name) in [(2, "node_b"), (3, "node_c")] {
            let n =
                NodeRecord::for_test(id, name, 5432, NodeState::Secondary, NodeState::Secondary);
            f.nodes.insert(id, n);
        }
    }
    st.save().unwrap();
    let up = |id, state, lsn: u64, streaming| {
        let mut r = report(id, state, 1);
        r.pg.running = true;
        r.pg.lsn = Some(pgha_api::Lsn(lsn));
        r.pg.upstream_streaming = streaming;
        r
    };
    st.take_report(&up(1, NodeState::Primary, 5000, false), 10_000)
        .unwrap();
    st.take_report(&up(2, NodeState::Secondary, 5000, true), 10_000)
        .unwrap();
    st.take_report(&up(3, NodeState::Secondary, 5000, true), 10_000)
        .unwrap();
    st.reconcile("orders", 10_000).unwrap();
    // node_a and node_b are lost together: node_b may hold commits node_c lacks.
    st.take_report(&up(3, NodeState::Secondary, 5000, false), 30_000)
        .unwrap();
    let plan = st.reconcile("orders", 30_000).unwrap();
    assert!(plan.blocked.is_some(), "{plan:?}");
    let req = pgha_api::ForcedFailoverRequest {
        allow_data_loss: true,
        reason: "ticket 4711".into(),
    };
    let started = st
        .forced_failover("orders", &req, "operator", 30_100)
        .unwrap();
    assert_eq!(started.to_node, Some(3));
    let text = st.metrics_page(30_200);
    assert!(
        text.contains(r#"pgha_failovers_total{formation="orders",reason="operator_allow_data_loss",result="started"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"reason="primary_failed",result="started"} 1"#),
        "{text}"
    );
}

/// A store whose writes wait at a gate, to hold one write in flight.
#[derive(Clone, Default)]
struct Gate(std::sync::Arc<(std::sync::Mutex<(bool, usize)>, std::sync::Condvar)>);

impl Gate {
    fn close(&self) {
        self.0.0.lock().unwrap().0 = true;
    }
    fn open(&self) {
        self.0.0.lock().unwrap().0 = false;
        self.0.1.notify_all();
    }
    /// Waits until a write is held at the gate.
    fn wait_held(&self) {
        let (m, cv) = &*self.0;
        let g = m.lock().unwrap();
        let _g = cv
            .wait_timeout_while(g, std::time::Duration::from_secs(10), |g| g.1 == 0)
            .unwrap();
    }
}

/// Opens the gate when dropped: a failed assertion must not leave a write held (the
/// runtime would wait for it for ever).
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

struct GatedStore {
    inner: FileStore,
    gate: Gate,
}

impl Store for GatedStore {
    fn load(&self) -> Result<DurableState, StoreError> {
        self.inner.load()
    }
    fn save(&mut self, state: &DurableState) -> Result<(), StoreError> {
        let (m, cv) = &*self.gate.0;
        let mut g = m.lock().unwrap();
        g.1 += 1;
        cv.notify_all();
        let mut g = cv.wait_while(g, |g| g.0).unwrap();
        g.1 -= 1;
        drop(g);
        self.inner.save(state)
    }
    fn append_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        self.inner.append_events(events)
    }
    fn load_events(&self) -> Result<Vec<Event>, StoreError> {
        self.inner.load_events()
    }
}

/// With staged writes, a write in flight holds up the answers about its formation
/// (they are built on what it carries) and nothing else: another formation's report
/// is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_write_holds_up_its_own_formation_only() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::default();
    let mut st = one_node_formation(Box::new(GatedStore {
        inner: FileStore::new(dir.path()),
        gate: gate.clone(),
    }));
    let mut billing = st.durable.formations["orders"].clone();
    billing.name = "billing".into();
    billing.nodes.clear();
    st.durable.formations.insert("billing".into(), billing);
    st.save().unwrap();
    st.pipeline();
    let shared: crate::Shared = std::sync::Arc::new(std::sync::Mutex::new(st));
    let _open_at_the_end = OpenOnDrop(gate.clone());
    gate.close();
    let first = {
        let mut st = crate::lock(&shared);
        st.take_report(&report(1, NodeState::Single, 1), 2000)
            .unwrap();
        assert_eq!(
            state(dir.path()).durable.formations["orders"].nodes[&1].reported(),
            NodeState::Init,
            "staged, not yet written"
        );
        st.ticket(Some("orders"))
            .expect("a staged change to wait for")
    };
    let s = shared.clone();
    let first = tokio::spawn(async move { first.settle(&s).await });
    gate.wait_held();
    assert!(
        crate::lock(&shared).ticket(Some("billing")).is_none(),
        "billing has nothing staged: its answers do not wait for orders' write"
    );
    let second = crate::lock(&shared)
        .ticket(Some("orders"))
        .expect("orders' next answer waits for the write under way");
    let s = shared.clone();
    let second = tokio::spawn(async move { second.settle(&s).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (held_first, held_second) = (!first.is_finished(), !second.is_finished());
    gate.open();
    assert!(held_first && held_second, "{held_first} {held_second}");
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    let st = crate::lock(&shared);
    assert_eq!(state(dir.path()).durable, st.durable);
    assert!(st.ticket(None).is_none());
}

/// A staged write the store refuses takes back everything staged with it and since:
/// memory returns to what the store holds, the events of it are forgotten, and every
/// request waiting on it fails; the next write goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_staged_write_publishes_nothing_and_fails_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut st = one_node_formation(Box::new(FlakyStore {
        inner: FileStore::new(dir.path()),
        fail: fail.clone(),
    }));
    st.pipeline();
    let snapshot = st.durable.clone();
    let events = st.events.len();
    let shared: crate::Shared = std::sync::Arc::new(std::sync::Mutex::new(st));
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let (by_report, by_plan) = {
        let mut st = crate::lock(&shared);
        st.take_report(&report(1, NodeState::Single, 1), 2000)
            .unwrap();
        let by_report = st.ticket(Some("orders")).unwrap();
        let plan = Plan {
            decisions: vec![planner::Decision {
                node_id: 1,
                goal: NodeState::DemoteTimeout,
                rule: Rule::Report,
                description: "test".into(),
            }],
            new_term: Some(9),
            ..Plan::default()
        };
        let view = st.view("orders", 2000).unwrap();
        st.apply_plan(&view, &plan, 2000).unwrap();
        assert_eq!(st.assignment("orders", 1, 2000).unwrap().term, 9);
        (by_report, st.ticket(None).unwrap())
    };
    assert!(by_report.settle(&shared).await.is_err());
    let e = by_plan.settle(&shared).await.unwrap_err();
    assert!(e.to_string().contains("No space left"), "{e}");
    {
        let st = crate::lock(&shared);
        assert_eq!(st.durable, snapshot);
        assert_eq!(st.assignment("orders", 1, 2000).unwrap().term, 1);
        assert_eq!(st.events.len(), events, "no event for what was not stored");
        assert!(
            st.ticket(Some("orders")).is_none(),
            "memory is the store again"
        );
    }
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let t = {
        let mut st = crate::lock(&shared);
        st.take_report(&report(1, NodeState::Single, 1), 2100)
            .unwrap();
        st.ticket(Some("orders")).unwrap()
    };
    t.settle(&shared).await.unwrap();
    let st = crate::lock(&shared);
    assert_eq!(state(dir.path()).durable, st.durable);
    assert_eq!(
        state(dir.path()).durable.formations["orders"].nodes[&1].reported(),
        NodeState::Single
    );
}

/// A permanent slot past `maxSlotWalKeepSize` is an event once when it turns
/// `unreserved`, and once when Postgres invalidates it; a report that says the same
/// again records nothing.
#[test]
fn a_permanent_slot_at_risk_or_lost_is_an_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
    let with = |status: pgha_api::SlotWalStatus, t: u64| {
        let mut r = report(1, NodeState::Single, 1);
        r.pg.permanent_slots = vec![pgha_api::SlotPosition {
            name: "archiver".into(),
            restart_lsn: None,
            wal_status: Some(status),
            logical: None,
        }];
        (r, t)
    };
    let slot_events = |st: &ControllerState| -> Vec<(String, String)> {
        st.events
            .iter()
            .filter(|e| e.rule.starts_with("permanent_slot"))
            .map(|e| (e.rule.clone(), e.description.clone()))
            .collect()
    };
    use pgha_api::SlotWalStatus::*;
    for (status, t) in [
        (Reserved, 2000),
        (Extended, 2100),
        (Unreserved, 2200),
        (Unreserved, 2300),
    ] {
        let (r, t) = with(status, t);
        st.take_report(&r, t).unwrap();
    }
    let ev = slot_events(&st);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].0, "permanent_slot_at_risk");
    assert!(
        ev[0].1.contains("archiver") && ev[0].1.contains("maxSlotWalKeepSize"),
        "{}",
        ev[0].1
    );
    for (status, t) in [(Lost, 2400), (Lost, 2500)] {
        let (r, t) = with(status, t);
        st.take_report(&r, t).unwrap();
    }
    let ev = slot_events(&st);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[1].0, "permanent_slot_lost");
    assert!(
        ev[1].1.contains("pg_drop_replication_slot('archiver')"),
        "{}",
        ev[1].1
    );
}

/// `pgha formation promote` ends a standby formation while its file still names that
/// source; a changed file (the section removed, or another source: a demotion) is in
/// force again. The assignment of its leader says whom to follow until then.
#[test]
fn promoting_a_standby_formation_overrides_its_file_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
    let refused = st.promote_formation("orders", "operator", 1500);
    assert!(
        matches!(&refused, Err(ActionError::Refused(r)) if r.code == pgha_api::routes::ErrorCode::NotAStandbyFormation),
        "not a standby formation: {:?}",
        refused.map(|_| ())
    );
    let standby = |source: &str| format!("{GOOD}  standbyOf:\n    hosts: [\"{source}\"]\n");
    st.apply_desired(scan_of(&[("orders.yaml", &standby("10.1.0.5:5432"))]), 2000)
        .unwrap();
    let a = st.assignment("orders", 1, 2100).unwrap();
    assert_eq!(
        a.standby_of.map(|s| s.hosts),
        Some(vec![("10.1.0.5".to_string(), 5432)])
    );
    st.promote_formation("orders", "operator", 2200).unwrap();
    let f = &st.durable.formations["orders"];
    assert!(f.standby_of().is_none() && f.promoted_over_the_file());
    assert!(
        st.events
            .iter()
            .any(|e| e.rule == "operator_promote_formation")
    );
    let a = st.assignment("orders", 1, 2300).unwrap();
    assert_eq!(a.standby_of, None, "promoted: the leader stops following");
    // The promotion survives a restart of the controller.
    drop(st);
    let mut st = state(dir.path());
    assert!(st.durable.formations["orders"].standby_of().is_none());
    // Demoted by the file to follow another source: in force again.
    st.apply_desired(scan_of(&[("orders.yaml", &standby("10.2.0.5:5432"))]), 2400)
        .unwrap();
    let f = &st.durable.formations["orders"];
    assert!(f.standby_of().is_some() && !f.promoted_over_the_file());
}

/// `standbyOf.passwordFile`: a standby formation takes its source's replication
/// password before its first node joins; after, the file's password is not applied and
/// the event says why.
#[test]
fn a_standby_formation_takes_the_sources_password_before_its_first_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = state(dir.path());
    let text = format!("{GOOD}  standbyOf:\n    hosts: [\"10.1.0.5:5432\"]\n");
    let mut scan = scan_of(&[("orders.yaml", &text)]);
    scan.source_passwords
        .insert("orders".into(), "from-the-source".into());
    st.apply_desired(scan, 2000).unwrap();
    assert_eq!(
        st.durable.formations["orders"].replication_password,
        "from-the-source"
    );
    assert_eq!(
        st.replication_password("orders").unwrap(),
        "from-the-source"
    );
    st.durable
        .formations
        .get_mut("orders")
        .unwrap()
        .nodes
        .insert(
            1,
            NodeRecord::for_test(1, "node_a", 5432, NodeState::Single, NodeState::Single),
        );
    let text = format!("{GOOD}  standbyOf:\n    hosts: [\"10.1.0.6:5432\"]\n");
    let mut scan = scan_of(&[("orders.yaml", &text)]);
    scan.source_passwords
        .insert("orders".into(), "another".into());
    st.apply_desired(scan, 3000).unwrap();
    assert_eq!(
        st.durable.formations["orders"].replication_password, "from-the-source",
        "a node joined with it"
    );
    assert!(
        st.events
            .iter()
            .any(|e| e.description.contains("passwordFile differs")),
        "{:?}",
        st.events.iter().map(|e| &e.description).collect::<Vec<_>>()
    );
}

/// The second review: unauthenticated requests wrote unbounded events (a formation name
/// of up to 64 KiB in the path or 256 KiB in a body, one event per address, route and
/// answer a minute): the audit trail rotated away in about 20 minutes from one address.
/// Now a name that is not one never reaches an event, the text is capped, and all
/// addresses together record at most a budget of refusal events a minute.
#[test]
fn refusals_cannot_flood_the_event_log() {
    use pgha_api::routes::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
    let before = st.events.len();
    let huge = "x".repeat(64 * 1024);
    let route = "/v1/formations/{name}/state";
    // 1,000 addresses, each refused twice within the minute, naming a huge formation.
    for i in 0..1000u32 {
        let peer = std::net::IpAddr::from([10, (i >> 8) as u8, (i & 0xff) as u8, 1]);
        for _ in 0..2 {
            st.refuse(
                ErrorCode::Unauthenticated,
                format!("bad\ncredential for {huge}"),
                Some(&huge),
                peer,
                route,
                5_000,
            );
        }
    }
    let recorded: Vec<&pgha_api::Event> = st.events.iter().skip(before).collect();
    assert_eq!(recorded.len(), 30, "one minute's budget");
    for e in &recorded {
        assert_eq!(e.formation, "-");
        assert!(
            e.description.len() <= super::auth::EVENT_TEXT_MAX + 4,
            "{}",
            e.description.len()
        );
        assert!(!e.description.contains('\n'));
    }
    // The next minute says how many were not recorded.
    st.refuse(
        ErrorCode::Unauthenticated,
        "no credential".into(),
        Some("orders"),
        std::net::IpAddr::from([10, 9, 9, 9]),
        route,
        70_000,
    );
    let last: Vec<&str> = st
        .events
        .iter()
        .skip(before + 30)
        .map(|e| e.description.as_str())
        .collect();
    assert_eq!(last.len(), 2, "{last:?}");
    assert!(last[0].starts_with("970 more refusals"), "{last:?}");
    assert_eq!(st.events.back().unwrap().formation, "orders");
    // The per-address memory is bounded.
    assert!(st.refusals_recorded.len() <= 4097);
}

/// The second review: join secrets were kept in the store (etcd, state.json) in the
/// clear. The store keeps their hash; the secret still admits, the hash does not.
#[test]
fn the_store_keeps_join_secrets_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("orders.secret");
    crate::desired::write_secret(&secret_file, "s3cret-joins").unwrap();
    let formations = dir.path().join("formations");
    std::fs::create_dir(&formations).unwrap();
    let text = GOOD.replace(
        "    open: true\n",
        &format!("    joinSecretFile: {}\n", secret_file.display()),
    );
    std::fs::write(formations.join("orders.yaml"), &text).unwrap();
    let mut st = state(dir.path());
    st.apply_desired(crate::desired::scan(&formations, Some(dir.path())), 2000)
        .unwrap();
    let on_disk = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(
        !on_disk.contains("s3cret-joins"),
        "the secret is in the store"
    );
    let stored = crate::records::stored_join_secret("s3cret-joins");
    assert!(on_disk.contains(&stored));
    assert!(matches!(
        st.identify("s3cret-joins"),
        Some(Principal::Joiner(f)) if f == "orders"
    ));
    assert_eq!(st.identify(&stored), None, "the hash is no credential");
    // A record written before hashing (in the clear) still admits.
    assert!(crate::records::join_secret_matches("legacy", "legacy"));
    assert!(!crate::records::join_secret_matches("legacy", "other"));
}

/// The controller's side of a capped claim (the planner's `capped_claims`): the cap is
/// an event once, the view shows the cap with the claim beside it, and it is lifted
/// when the node reports at or below it, or another timeline; a changed LSN or state
/// dates the node's progress.
#[test]
fn a_capped_claim_is_an_event_shown_in_the_view_and_lifted_when_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = one_node_formation(Box::new(FileStore::new(dir.path())));
    let mut r = report(1, NodeState::Single, 1);
    r.pg.lsn = Some(pgha_api::Lsn(5000));
    r.pg.timeline = Some(1);
    st.take_report(&r, 2000).unwrap();
    st.take_report(&r, 2500).unwrap();
    let view = st.view("orders", 2600).unwrap();
    assert_eq!(
        view.nodes[0].progress_at_ms,
        Some(2000),
        "unchanged since 2000"
    );
    let plan = Plan {
        capped_claims: vec![(1, pgha_api::Lsn(1000), "test cap".into())],
        ..Plan::default()
    };
    st.apply_plan(&view, &plan, 2600).unwrap();
    st.apply_plan(&view, &plan, 2700).unwrap();
    let capped: Vec<_> = st
        .events
        .iter()
        .filter(|e| e.rule == "claim_capped")
        .collect();
    assert_eq!(capped.len(), 1, "one event per cap");
    let view = st.view("orders", 2800).unwrap();
    assert_eq!(view.nodes[0].pg.lsn, Some(pgha_api::Lsn(1000)));
    assert_eq!(view.nodes[0].claimed_lsn, Some(pgha_api::Lsn(5000)));
    // Another report of the same claim keeps the cap; one at the cap lifts it.
    st.take_report(&r, 2900).unwrap();
    assert_eq!(
        st.view("orders", 2900).unwrap().nodes[0].claimed_lsn,
        Some(pgha_api::Lsn(5000))
    );
    r.pg.lsn = Some(pgha_api::Lsn(900));
    st.take_report(&r, 3000).unwrap();
    let view = st.view("orders", 3000).unwrap();
    assert_eq!(
        (view.nodes[0].pg.lsn, view.nodes[0].claimed_lsn),
        (Some(pgha_api::Lsn(900)), None)
    );
    assert_eq!(view.nodes[0].progress_at_ms, Some(3000));
    // A new timeline lifts it too.
    r.pg.lsn = Some(pgha_api::Lsn(5000));
    st.apply_plan(&view, &plan, 3100).unwrap();
    r.pg.timeline = Some(2);
    st.take_report(&r, 3200).unwrap();
    assert_eq!(st.view("orders", 3200).unwrap().nodes[0].claimed_lsn, None);
}
