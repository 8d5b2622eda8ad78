//! The controller's `/metrics` page (DESIGN §9), rendered from the live state at scrape
//! time with an explicit registry (no process-global state).

use crate::state::ControllerState;
use pgha_api::ALL_STATES;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Renders the OpenMetrics text for the current state.
pub fn render(st: &ControllerState, now_ms: u64) -> String {
    let mut reg = Registry::with_prefix("pgha");
    let assigned = Family::<Labels, Gauge>::default();
    let reported = Family::<Labels, Gauge>::default();
    let healthy = Family::<Labels, Gauge>::default();
    let report_age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let lsn = Family::<Labels, Gauge>::default();
    let term = Family::<Labels, Gauge>::default();
    let info = Family::<Labels, Gauge>::default();
    let failovers = Family::<Labels, Counter>::default();
    let switchovers = Family::<Labels, Counter>::default();
    let reconcile_errors = Counter::<u64>::default();

    for f in st.durable.formations.values() {
        let Some(status) = st.status(&f.name, now_ms) else {
            continue;
        };
        term.get_or_create(&labels(&[("formation", &f.name)]))
            .set(f.term as i64);
        info.get_or_create(&labels(&[("formation", &f.name), ("dbname", &f.dbname)]))
            .set(1);
        for n in &status.nodes {
            for s in ALL_STATES {
                let l = labels(&[
                    ("formation", &f.name),
                    ("node", &n.name),
                    ("state", s.as_str()),
                ]);
                assigned
                    .get_or_create(&l)
                    .set((n.assigned_state == s) as i64);
                reported
                    .get_or_create(&l)
                    .set((n.reported_state == s) as i64);
            }
            let l = labels(&[("formation", &f.name), ("node", &n.name)]);
            healthy
                .get_or_create(&l)
                .set((n.health == pgha_api::Health::Good) as i64);
            if let Some(age) = n.report_age_ms {
                report_age.get_or_create(&l).set(age as f64 / 1000.0);
            }
            if let Some(x) = n.lsn {
                lsn.get_or_create(&l).set(x.0 as i64);
            }
        }
        for (reason, count) in &st.counters.failovers {
            failovers
                .get_or_create(&labels(&[
                    ("formation", &f.name),
                    ("reason", reason),
                    ("result", "started"),
                ]))
                .inc_by(*count);
        }
        for (result, count) in &st.counters.switchovers {
            switchovers
                .get_or_create(&labels(&[("formation", &f.name), ("result", result)]))
                .inc_by(*count);
        }
    }
    reconcile_errors.inc_by(st.counters.reconcile_errors);

    reg.register(
        "node_assigned_state",
        "State the controller assigned to each node (one-hot)",
        assigned,
    );
    reg.register(
        "node_reported_state",
        "State each node last reported reaching (one-hot)",
        reported,
    );
    reg.register(
        "node_healthy",
        "1 when the node's Postgres is up per reports and probes",
        healthy,
    );
    reg.register(
        "node_last_report_age_seconds",
        "Seconds since the node's agent last reported",
        report_age,
    );
    reg.register(
        "node_wal_lsn_bytes",
        "Last reported WAL position of the node, in bytes",
        lsn,
    );
    reg.register(
        "formation_term",
        "Current term of the formation (bumped by each promotion)",
        term,
    );
    reg.register("formation_info", "Formation metadata", info);
    reg.register(
        "failovers",
        "Automatic failovers started, by reason",
        failovers,
    );
    reg.register(
        "switchovers",
        "Operator switchovers, by result",
        switchovers,
    );
    reg.register(
        "reconcile_errors",
        "Reconcile passes that failed to persist their plan",
        reconcile_errors,
    );

    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        return "# metrics encoding failed\n".into();
    }
    out
}
