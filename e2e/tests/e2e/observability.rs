//! Observability end to end: a failover blocked on purpose is named in `show state`, the
//! events and the metrics; a real Prometheus server scraping the controller and agents
//! sees a failover counted, the assigned states flip and the duration observed.

use pgha_api::NodeState::*;
use pgha_e2e::{free_port, scenario};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_failover_names_its_reason_everywhere() {
    scenario(async |c| {
        c.add_node("node_a")?;
        c.wait_for(&[("node_a", Single)], T)?;
        c.add_node_with("node_b", &["--candidate-priority", "0"])?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        c.kill_vm(0)?;
        let metric = r#"pgha_failover_blocked{formation="default",reason="priority_zero"} 1"#;
        let t0 = Instant::now();
        loop {
            let metrics = c.monitor_get("/metrics").await?;
            if metrics.contains(metric) {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "blocked metric never set:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let state = c.pgha_ok(&["show", "state", "--monitor", &c.monitor_url])?;
        println!("{state}");
        anyhow::ensure!(
            state.contains("failover blocked") && state.contains("candidate priority 0"),
            "{state}"
        );
        let events = c.pgha_ok(&[
            "show",
            "events",
            "--json",
            "--count",
            "50",
            "--monitor",
            &c.monitor_url,
        ])?;
        let events: Vec<pgha_api::Event> = serde_json::from_str(&events)?;
        let ev = events
            .iter()
            .find(|e| e.rule == "failover_blocked")
            .ok_or_else(|| anyhow::anyhow!("no failover_blocked event"))?;
        anyhow::ensure!(ev.description.contains("priority_zero"), "{ev:?}");
        anyhow::ensure!(
            ev.inputs.is_some(),
            "the event does not carry the planner's inputs"
        );
        // Nothing was promoted: node_b is still a standby.
        anyhow::ensure!(c.state()?.term == 1, "term changed");
        // node_a comes back: the block lifts.
        c.start_agent(0)?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], T)?;
        let t0 = Instant::now();
        while c.monitor_get("/metrics").await?.contains(metric) {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(15),
                "blocked metric stuck"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    })
    .await;
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Debian's Prometheus on a loopback port, scraping every second the controller
/// over HTTPS (trusting the monitor's CA) and the agents' endpoints.
fn start_prometheus(
    dir: &std::path::Path,
    controller: &str,
    ca_file: &std::path::Path,
    agents: &[String],
) -> anyhow::Result<Prometheus> {
    let port = free_port();
    let list: Vec<String> = agents.iter().map(|t| format!("'{t}'")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: pgha-controller\n    scheme: https\n    tls_config:\n      ca_file: {}\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['{controller}']\n  - job_name: pgha-agent\n    static_configs:\n      - targets: [{}]\n",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/prometheus/pgha-alerts.yml")
            .display(),
        ca_file.display(),
        ca_file
            .parent()
            .and_then(|tls| tls.parent())
            .map(|mon| mon.join("credentials/read.token"))
            .unwrap_or_default()
            .display(),
        list.join(", ")
    );
    let cfg_path = dir.join("prometheus.yml");
    std::fs::write(&cfg_path, config)?;
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prometheus-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting prometheus (apt-get install prometheus): {e}"))?;
    Ok(Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

/// Runs an instant query; returns the first sample's value.
async fn query(p: &Prometheus, q: &str) -> anyhow::Result<Option<f64>> {
    let encoded: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let resp: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/query?query={encoded}", p.url))
        .timeout(Duration::from_secs(3))
        .send()
        .await?
        .json()
        .await?;
    Ok(resp["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok()))
}

async fn eventually(p: &Prometheus, q: &str, want: f64) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let got = query(p, q).await.ok().flatten();
        if got == Some(want) {
            return Ok(());
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "Prometheus: {q} is {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_a_failover() {
    scenario(async |c| {
        c.bootstrap_two()?;
        let agents: Vec<String> = c
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.http_port))
            .collect();
        let prom = start_prometheus(
            c.path(),
            &format!("127.0.0.1:{}", c.monitor_port),
            &c.monitor_dir().join("tls/ca.crt"),
            &agents,
        )?;
        eventually(&prom, r#"count(up == 1)"#, 3.0).await?;
        eventually(
            &prom,
            r#"pgha_node_assigned_state{node="node_a",state="primary"}"#,
            1.0,
        )
        .await?;
        eventually(
            &prom,
            r#"pgha_agent_role{node="node_b",role="replica"}"#,
            1.0,
        )
        .await?;

        c.kill_vm(0)?;
        c.wait_for(&[("node_b", WaitPrimary)], T)?;
        eventually(
            &prom,
            r#"pgha_failovers_total{reason="primary_failed",result="succeeded"}"#,
            1.0,
        )
        .await?;
        eventually(
            &prom,
            r#"pgha_node_assigned_state{node="node_b",state="wait_primary"}"#,
            1.0,
        )
        .await?;
        eventually(
            &prom,
            r#"pgha_node_assigned_state{node="node_a",state="demoted"}"#,
            1.0,
        )
        .await?;
        eventually(&prom, r#"pgha_failover_duration_seconds_count"#, 1.0).await?;
        // The shipped alert fires on the formation's first failover: its counter was
        // there at 0 before it.
        eventually(
            &prom,
            r#"ALERTS{alertname="PghaFailoverHappened",alertstate="firing",reason="primary_failed"}"#,
            1.0,
        )
        .await?;
        let secs = query(&prom, r#"pgha_failover_duration_seconds_sum"#)
            .await?
            .unwrap_or(0.0);
        println!("failover duration observed by Prometheus: {secs:.2} s");
        anyhow::ensure!(
            secs > 0.0 && secs < 30.0,
            "implausible failover duration {secs}"
        );
        eventually(
            &prom,
            r#"pgha_agent_role{node="node_b",role="primary"}"#,
            1.0,
        )
        .await?;
        Ok(())
    })
    .await;
}
