//! The shipped monitoring manifests: Prometheus alert rules pass `promtool check` and
//! their unit tests (each alert fires on a fixture), the scrape config is valid, and the
//! Grafana dashboard only queries metrics pgha exports.

use std::path::PathBuf;
use std::process::Command;

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn promtool(args: &[&str]) -> String {
    promtool_in(&manifests().join("prometheus"), args)
}

fn promtool_in(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool not found: apt-get install prometheus (scripts/setup.sh does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_each_fires_on_its_fixture() {
    let out = promtool(&["check", "rules", "pgha-alerts.yml"]);
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let out = promtool(&["test", "rules", "pgha-alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of the rules file has a fixture.
    let rules = std::fs::read_to_string(manifests().join("prometheus/pgha-alerts.yml")).unwrap();
    let tests =
        std::fs::read_to_string(manifests().join("prometheus/pgha-alerts.test.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "alert {line} has no test"
        );
    }
}

/// As deployed: beside the monitor's CA and read credential copied from the monitor
/// (promtool checks that the credential file exists).
#[test]
fn scrape_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["prometheus.yml", "pgha-alerts.yml"] {
        std::fs::copy(manifests().join("prometheus").join(f), dir.path().join(f)).unwrap();
    }
    let pki = pgha_api::tls::generate_pki("10.0.1.10").unwrap();
    std::fs::write(dir.path().join("monitor-ca.crt"), pki.ca_cert_pem).unwrap();
    std::fs::write(
        dir.path().join("monitor-read.token"),
        "0123456789abcdef0123\n",
    )
    .unwrap();
    promtool_in(dir.path(), &["check", "config", "prometheus.yml"]);
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(manifests().join("grafana/pgha-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let known = [
        "pgha_node_reported_state",
        "pgha_replication_lag_bytes",
        "pgha_failovers_total",
        "pgha_switchovers_total",
        "pgha_failover_duration_seconds_bucket",
        "pgha_failover_blocked",
        "pgha_node_last_report_age_seconds",
        "pgha_agent_standby_replay_lag_seconds",
        "pgha_formation_term",
        // With a backup repository (the controller's metrics contract test has them).
        "pgha_archive_last_success_age_seconds",
        "pgha_archive_failing",
    ];
    let mut n = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("pgha_"))
                .collect();
            assert!(
                !names.is_empty(),
                "panel {} queries nothing of pgha",
                p["title"]
            );
            for name in names {
                assert!(
                    known.contains(&name),
                    "panel {} queries unknown metric {name}",
                    p["title"]
                );
                n += 1;
            }
        }
    }
    assert!(n >= 8);
}
