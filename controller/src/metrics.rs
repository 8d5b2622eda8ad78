//! The controller's `/metrics` page (docs/src/design.md §9). Counters and histograms live in
//! [`Metrics`], owned by the controller state (no process-global registry); gauges are
//! computed at scrape time from read models ([`FormationReading`]: the status `show
//! state` prints), so this module knows nothing of the state that owns it. Each scrape
//! builds a fresh registry.

use crate::planner::BlockReason;
use pgha_api::{ALL_STATES, FormationStatus, NodeState};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

pub type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn failover_histogram() -> Histogram {
    Histogram::new([0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0])
}

/// Counters and histograms that accumulate over the controller's life.
#[derive(Clone)]
pub struct Metrics {
    /// `formation`, `reason`, `result` (started, succeeded, aborted).
    pub failovers: Family<Labels, Counter>,
    /// `formation`, `result` (started, succeeded, aborted, refused).
    pub switchovers: Family<Labels, Counter>,
    /// `formation`: detection of the failure to the new primary writable.
    pub failover_duration: HistogramFamily,
    /// `formation`, `phase` (detection, fencing, promotion).
    pub failover_phase: HistogramFamily,
    pub reconcile_duration: Histogram,
    /// `kind` (store).
    pub reconcile_errors: Family<Labels, Counter>,
    /// `file`: formation files rejected (used by the GitOps loader).
    pub config_errors: Family<Labels, Counter>,
    /// `formation`, `node`: replication slots the primary's Postgres invalidated
    /// (`max_slot_wal_keep_size` exceeded); the standby is rebuilt.
    pub slots_invalidated: Family<Labels, Counter>,
    /// API calls refused for their credential, by route and status (401, 403).
    pub api_refused: Family<Labels, Counter>,
    /// Writes the store carried out, by `kind` (`state`, `events`): a save of changed
    /// records, or an append of events.
    pub store_writes: Family<Labels, Counter>,
    /// How long a write of staged changes took (answers about the formations it
    /// carries wait for it; others do not).
    pub store_write_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            failovers: Family::default(),
            switchovers: Family::default(),
            failover_duration: Family::new_with_constructor(failover_histogram),
            failover_phase: Family::new_with_constructor(failover_histogram),
            reconcile_duration: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
            reconcile_errors: Family::default(),
            config_errors: Family::default(),
            slots_invalidated: Family::default(),
            api_refused: Family::default(),
            store_writes: Family::default(),
            store_write_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        }
    }
}

impl Metrics {
    /// Every series of a formation whose label values are known exists from the start,
    /// at 0: an alert on `increase(...)` sees the formation's first failover (a series
    /// that appears already at 1 has no increase to see).
    pub fn start_at_zero(&self, formation: &str) {
        let fl = |extra: &[(&str, &str)]| {
            let mut l = labels(&[("formation", formation)]);
            l.extend(labels(extra));
            l
        };
        for reason in ["primary_failed", "operator_allow_data_loss"] {
            for result in ["started", "succeeded", "aborted"] {
                drop(
                    self.failovers
                        .get_or_create(&fl(&[("reason", reason), ("result", result)])),
                );
            }
        }
        for result in ["started", "succeeded", "aborted", "refused"] {
            drop(self.switchovers.get_or_create(&fl(&[("result", result)])));
        }
        drop(self.failover_duration.get_or_create(&fl(&[])));
        for phase in ["detection", "fencing", "promotion"] {
            drop(self.failover_phase.get_or_create(&fl(&[("phase", phase)])));
        }
    }
}

/// What the metrics page shows of one formation: its status (the read model `show
/// state` prints) and why a needed failover is blocked, if it is.
pub struct FormationReading {
    pub status: FormationStatus,
    pub blocked: Option<BlockReason>,
}

/// Adds `pgha_controller_leader` (1 on the controller that leads, 0 on a follower) to a
/// page, for controllers that share an etcd store; a single controller's page is left
/// as it is.
pub fn with_leader_gauge(page: String, shared_store: bool, leads: bool) -> String {
    if !shared_store {
        return page;
    }
    let body = page.strip_suffix("# EOF\n").unwrap_or(&page);
    format!(
        "{body}# HELP pgha_controller_leader 1 on the controller of an etcd store that leads, 0 on a follower.\n# TYPE pgha_controller_leader gauge\npgha_controller_leader {}\n# EOF\n",
        leads as u8
    )
}

/// The gauges read from the formations' read models, one family each.
#[derive(Default)]
struct Gauges {
    assigned: Family<Labels, Gauge>,
    reported: Family<Labels, Gauge>,
    healthy: Family<Labels, Gauge>,
    report_age: Family<Labels, Gauge<f64, AtomicU64>>,
    lsn: Family<Labels, Gauge>,
    lag: Family<Labels, Gauge>,
    slot_retained: Family<Labels, Gauge>,
    slot_lost: Family<Labels, Gauge>,
    copy_behind: Family<Labels, Gauge>,
    term: Family<Labels, Gauge>,
    info: Family<Labels, Gauge>,
    blocked: Family<Labels, Gauge>,
    paused: Family<Labels, Gauge>,
    archive_age: Family<Labels, Gauge>,
    archive_failures: Family<Labels, Counter>,
    archive_failing: Family<Labels, Gauge>,
}

impl Gauges {
    /// Sets the gauges of one formation.
    fn read(&self, reading: &FormationReading) {
        let FormationReading {
            status,
            blocked: current,
        } = reading;
        let f = status;
        let fl = labels(&[("formation", &f.name)]);
        self.term.get_or_create(&fl).set(f.term as i64);
        self.paused.get_or_create(&fl).set(f.paused as i64);
        self.info
            .get_or_create(&labels(&[("formation", &f.name), ("dbname", &f.dbname)]))
            .set(1);
        let current = *current;
        for r in BlockReason::ALL {
            self.blocked
                .get_or_create(&labels(&[("formation", &f.name), ("reason", r.as_str())]))
                .set((current == Some(r)) as i64);
        }
        let primary = status.nodes.iter().find(|n| n.assigned_state.is_writable());
        let primary_lsn = primary.and_then(|n| n.lsn);
        // What the consumer confirmed on the primary, by logical slot.
        let confirmed_at_primary = |slot: &str| {
            primary?
                .permanent_slots
                .iter()
                .find(|s| s.name == slot)?
                .logical
                .as_ref()?
                .confirmed_flush_lsn
        };
        for n in &status.nodes {
            for s in ALL_STATES {
                let l = labels(&[
                    ("formation", &f.name),
                    ("node", &n.name),
                    ("state", s.as_str()),
                ]);
                self.assigned
                    .get_or_create(&l)
                    .set((n.assigned_state == s) as i64);
                self.reported
                    .get_or_create(&l)
                    .set((n.reported_state == s) as i64);
            }
            let l = labels(&[("formation", &f.name), ("node", &n.name)]);
            self.healthy
                .get_or_create(&l)
                .set((n.health == pgha_api::Health::Good) as i64);
            if let Some(age) = n.report_age_ms {
                self.report_age.get_or_create(&l).set(age as f64 / 1000.0);
            }
            if let Some(x) = n.lsn {
                self.lsn.get_or_create(&l).set(x.0 as i64);
            }
            let is_standby = matches!(
                n.assigned_state,
                NodeState::Secondary | NodeState::Catchingup
            );
            if let (true, Some(p), Some(x)) = (is_standby, primary_lsn, n.lsn) {
                self.lag.get_or_create(&l).set(p.bytes_ahead_of(x) as i64);
            }
            for s in &n.permanent_slots {
                let mut sl = l.clone();
                sl.push(("slot".into(), s.name.clone()));
                if let (Some(x), Some(r)) = (n.lsn, s.restart_lsn) {
                    self.slot_retained
                        .get_or_create(&sl)
                        .set(x.bytes_ahead_of(r) as i64);
                }
                self.slot_lost.get_or_create(&sl).set(s.lost() as i64);
                let here = s.logical.as_ref().and_then(|l| l.confirmed_flush_lsn);
                if let (true, Some(p), Some(h)) = (is_standby, confirmed_at_primary(&s.name), here)
                {
                    self.copy_behind
                        .get_or_create(&sl)
                        .set(p.bytes_ahead_of(h) as i64);
                }
            }
            if let Some(a) = &n.archive {
                // Postgres' own count (a fresh registry each page, so inc_by sets it):
                // it starts again on a newly promoted primary, which rate() reads as a
                // counter reset.
                self.archive_failures
                    .get_or_create(&l)
                    .inc_by(a.failed_count);
                self.archive_failing
                    .get_or_create(&l)
                    .set(a.failing() as i64);
                if let Some(age) = a.last_archived_s_ago {
                    self.archive_age.get_or_create(&l).set(age as i64);
                }
            }
        }
    }

    /// Registers every family (moved into the registry).
    fn register(self, reg: &mut Registry) {
        reg.register(
            "node_assigned_state",
            "State the controller assigned to each node (one-hot)",
            self.assigned,
        );
        reg.register(
            "node_reported_state",
            "State each node last reported reaching (one-hot)",
            self.reported,
        );
        reg.register(
            "node_healthy",
            "1 when the node's Postgres is up per reports and probes",
            self.healthy,
        );
        reg.register(
            "node_last_report_age_seconds",
            "Seconds since the node's agent last reported",
            self.report_age,
        );
        reg.register(
            "node_wal_lsn_bytes",
            "Last reported WAL position of the node, in bytes",
            self.lsn,
        );
        reg.register(
            "replication_lag_bytes",
            "Bytes a standby is behind the primary, from their last reports",
            self.lag,
        );
        reg.register(
            "permanent_slot_retained_bytes",
            "WAL a permanent slot holds on the node: its position to the node's last reported LSN",
            self.slot_retained,
        );
        reg.register(
        "permanent_slot_lost",
        "1 while Postgres has invalidated a permanent slot on the node (past maxSlotWalKeepSize): its consumer cannot continue from it",
        self.slot_lost,
    );
        reg.register(
        "permanent_slot_copy_behind_bytes",
        "On a standby: how far its copy of a logical permanent slot is behind what the consumer confirmed on the primary (what a consumer receives again after a failover to it)",
        self.copy_behind,
    );
        reg.register(
            "archive_last_success_age_seconds",
            "Seconds since the primary last archived a WAL segment to the backup repository",
            self.archive_age,
        );
        reg.register(
            "archive_failures",
            "Failed attempts of the primary's archive command (pg_stat_archiver.failed_count)",
            self.archive_failures,
        );
        reg.register(
            "archive_failing",
            "1 while the primary's last attempt to archive WAL failed",
            self.archive_failing,
        );
        reg.register(
            "formation_term",
            "Current term of the formation (bumped by each promotion)",
            self.term,
        );
        reg.register("formation_info", "Formation metadata (always 1)", self.info);
        reg.register(
            "formation_paused",
            "1 while the formation is paused (pgha pause, or paused: true in its file)",
            self.paused,
        );
        reg.register(
            "failover_blocked",
            "1 while a needed failover is not happening, by reason",
            self.blocked,
        );
    }
}

/// Registers the controller's counters and histograms.
fn register_counters(reg: &mut Registry, m: &Metrics) {
    reg.register(
        "failovers",
        "Automatic failovers, by reason and result",
        m.failovers.clone(),
    );
    reg.register(
        "switchovers",
        "Operator switchovers, by result",
        m.switchovers.clone(),
    );
    reg.register(
        "failover_duration_seconds",
        "From failure detected to the new primary writable",
        m.failover_duration.clone(),
    );
    reg.register(
        "failover_phase_duration_seconds",
        "Failover phases: detection (last report to decision), fencing (decision to the old primary known fenced), promotion (to writable)",
        m.failover_phase.clone(),
    );
    reg.register(
        "reconcile_duration_seconds",
        "Time to plan one formation and stage its changes (the store write follows, outside the state's lock)",
        m.reconcile_duration.clone(),
    );
    reg.register(
        "reconcile_errors",
        "Reconcile passes that failed, by kind",
        m.reconcile_errors.clone(),
    );
    reg.register(
        "config_errors",
        "Formation files rejected, by file",
        m.config_errors.clone(),
    );
    reg.register(
        "replication_slots_invalidated",
        "Replication slots invalidated past max_slot_wal_keep_size (the standby is rebuilt)",
        m.slots_invalidated.clone(),
    );
    reg.register(
        "api_refused",
        "API calls refused for their credential (401: none or unknown; 403: out of scope), by route",
        m.api_refused.clone(),
    );
    reg.register(
        "store_writes",
        "Writes the controller's store carried out (state: a save of changed records; events: an append), by kind",
        m.store_writes.clone(),
    );
    reg.register(
        "store_write_duration_seconds",
        "Time to write staged changes to the store (answers about the formations they carry wait for it)",
        m.store_write_duration.clone(),
    );
}

/// Renders the OpenMetrics text from read models and the counters.
pub fn render(formations: &[FormationReading], m: &Metrics) -> String {
    let mut reg = Registry::with_prefix("pgha");
    let gauges = Gauges::default();
    for reading in formations {
        gauges.read(reading);
    }
    gauges.register(&mut reg);
    register_counters(&mut reg, m);
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        return "# metrics encoding failed\n".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{FormationRecord, NodeRecord};
    use crate::state::ControllerState;
    use crate::store::FileStore;

    #[test]
    fn counters_of_a_formation_start_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = ControllerState::open(Box::new(FileStore::new(dir.path())), 1000).unwrap();
        st.durable
            .formations
            .insert("orders".into(), FormationRecord::new("orders", "orders"));
        let text = st.metrics_page(2000);
        for line in [
            r#"pgha_failovers_total{formation="orders",reason="primary_failed",result="succeeded"} 0"#,
            r#"pgha_failovers_total{formation="orders",reason="operator_allow_data_loss",result="started"} 0"#,
            r#"pgha_switchovers_total{formation="orders",result="refused"} 0"#,
            r#"pgha_failover_duration_seconds_count{formation="orders"} 0"#,
            r#"pgha_failover_phase_duration_seconds_count{formation="orders",phase="fencing"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
    }

    #[test]
    fn metrics_page_has_the_contract_names_types_and_help() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = ControllerState::open(Box::new(FileStore::new(dir.path())), 1000).unwrap();
        let mut f = FormationRecord::new("default", "appdb");
        for (id, goal) in [(1, NodeState::Primary), (2, NodeState::Secondary)] {
            f.nodes.insert(
                id,
                NodeRecord::for_test(id, &format!("node_{id}"), 5432 + id as u16, goal, goal),
            );
        }
        st.durable.formations.insert("default".into(), f);
        for (id, lsn) in [(1u64, 5000u64), (2, 4000)] {
            let o = st.observed.entry(id).or_default();
            o.last_report_ms = Some(1500);
            o.pg.running = true;
            o.pg.lsn = Some(pgha_api::Lsn(lsn));
        }
        st.observed.entry(1).or_default().pg.archive = Some(pgha_api::ArchiveStatus {
            archived_count: 7,
            last_archived_s_ago: Some(40),
            failed_count: 3,
            last_failed_s_ago: Some(2),
            ..Default::default()
        });
        st.observed.entry(1).or_default().pg.permanent_slots = vec![pgha_api::SlotPosition {
            name: "archiver".into(),
            restart_lsn: Some(pgha_api::Lsn(0)),
            wal_status: Some(pgha_api::SlotWalStatus::Reserved),
            logical: None,
        }];
        let cdc = |confirmed: u64| pgha_api::SlotPosition {
            name: "cdc".into(),
            restart_lsn: Some(pgha_api::Lsn(100)),
            wal_status: Some(pgha_api::SlotWalStatus::Reserved),
            logical: Some(pgha_api::LogicalSlot {
                database: "appdb".into(),
                plugin: "pgoutput".into(),
                confirmed_flush_lsn: Some(pgha_api::Lsn(confirmed)),
                state: None,
                synced: false,
            }),
        };
        st.observed
            .entry(1)
            .or_default()
            .pg
            .permanent_slots
            .push(cdc(4000));
        st.observed.entry(2).or_default().pg.permanent_slots = vec![cdc(3000)];
        let fl = |extra: &[(&str, &str)]| {
            let mut l = labels(&[("formation", "default")]);
            l.extend(labels(extra));
            l
        };
        st.metrics
            .switchovers
            .get_or_create(&fl(&[("result", "succeeded")]))
            .inc();
        st.metrics
            .failover_phase
            .get_or_create(&fl(&[("phase", "detection")]))
            .observe(3.0);
        st.metrics
            .reconcile_errors
            .get_or_create(&labels(&[("kind", "store")]))
            .inc();
        st.metrics
            .config_errors
            .get_or_create(&labels(&[("file", "default.yaml")]))
            .inc();
        st.metrics.reconcile_duration.observe(0.0004);
        st.metrics
            .slots_invalidated
            .get_or_create(&labels(&[("formation", "default"), ("node", "node_b")]))
            .inc();
        st.metrics
            .failovers
            .get_or_create(&labels(&[
                ("formation", "default"),
                ("reason", "primary_failed"),
                ("result", "started"),
            ]))
            .inc();
        st.metrics
            .failover_duration
            .get_or_create(&labels(&[("formation", "default")]))
            .observe(3.2);
        let text = st.metrics_page(2000);
        let expected = [
            ("pgha_node_assigned_state", "gauge"),
            ("pgha_node_reported_state", "gauge"),
            ("pgha_node_healthy", "gauge"),
            ("pgha_node_last_report_age_seconds", "gauge"),
            ("pgha_node_wal_lsn_bytes", "gauge"),
            ("pgha_replication_lag_bytes", "gauge"),
            ("pgha_formation_term", "gauge"),
            ("pgha_formation_info", "gauge"),
            ("pgha_failover_blocked", "gauge"),
            ("pgha_failovers", "counter"),
            ("pgha_switchovers", "counter"),
            ("pgha_failover_duration_seconds", "histogram"),
            ("pgha_failover_phase_duration_seconds", "histogram"),
            ("pgha_reconcile_duration_seconds", "histogram"),
            ("pgha_reconcile_errors", "counter"),
            ("pgha_store_write_duration_seconds", "histogram"),
            ("pgha_config_errors", "counter"),
            ("pgha_replication_slots_invalidated", "counter"),
            ("pgha_archive_failing", "gauge"),
            ("pgha_archive_failures", "counter"),
            ("pgha_archive_last_success_age_seconds", "gauge"),
            ("pgha_permanent_slot_retained_bytes", "gauge"),
            ("pgha_permanent_slot_lost", "gauge"),
            ("pgha_permanent_slot_copy_behind_bytes", "gauge"),
        ];
        for (name, kind) in expected {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind} missing in\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(helps, types, "every metric has HELP text");
        assert!(
            text.contains(
                r#"pgha_node_assigned_state{formation="default",node="node_1",state="primary"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"pgha_node_assigned_state{formation="default",node="node_1",state="secondary"} 0"#
        ));
        assert!(text.contains(r#"pgha_failovers_total{formation="default",reason="primary_failed",result="started"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"pgha_failover_duration_seconds_bucket{le="5.0",formation="default"} 1"#
            ) || text.contains(
                r#"pgha_failover_duration_seconds_bucket{formation="default",le="5.0"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"pgha_failover_blocked{formation="default",reason="priority_zero"} 0"#)
        );
        assert!(
            text.contains(r#"pgha_replication_lag_bytes{formation="default",node="node_2"} 1000"#),
            "{text}"
        );
        for line in [
            r#"pgha_archive_failing{formation="default",node="node_1"} 1"#,
            r#"pgha_archive_failures_total{formation="default",node="node_1"} 3"#,
            r#"pgha_archive_last_success_age_seconds{formation="default",node="node_1"} 40"#,
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
        assert!(!text.contains(r#"pgha_archive_failing{formation="default",node="node_2"}"#));
        assert!(
            text.contains(r#"pgha_permanent_slot_retained_bytes{formation="default",node="node_1",slot="archiver"} "#),
            "{text}"
        );
        assert!(
            text.contains(r#"pgha_permanent_slot_copy_behind_bytes{formation="default",node="node_2",slot="cdc"} 1000"#),
            "{text}"
        );
        assert!(!text.contains(
            r#"pgha_permanent_slot_copy_behind_bytes{formation="default",node="node_1""#
        ));
        assert!(text.ends_with("# EOF\n"));
    }
}
