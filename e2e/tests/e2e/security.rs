//! The monitor's API over TLS with the operator's own PKI: a certificate that does not
//! name the monitor's host is refused at `create monitor`; one that does is served, and
//! only a client pinning its CA reads through it.

use pgha_api::NodeState;
use pgha_e2e::{Cluster, free_port};
use std::path::Path;
use std::time::Duration;

/// Writes a PKI for `hostname` into `dir`: ca.crt, server.crt (with its chain), server.key.
fn write_pki(dir: &Path, hostname: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let pki = pgha_api::tls::generate_pki(hostname).unwrap();
    std::fs::write(dir.join("ca.crt"), &pki.ca_cert_pem).unwrap();
    std::fs::write(dir.join("server.crt"), &pki.server_chain_pem).unwrap();
    std::fs::write(dir.join("server.key"), &pki.server_key_pem).unwrap();
    pki.ca_fingerprint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_pki_is_checked_then_served() {
    // A scratch cluster only for its temp dir and the pgha binary.
    let c = Cluster::start().unwrap();
    let s = |p: &Path| p.display().to_string();
    let wrong = c.path().join("pki-wrong");
    write_pki(&wrong, "elsewhere.example");
    let dir = c.path().join("monitor2");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let create = |pki: &Path| {
        c.pgha(&[
            "create",
            "monitor",
            "--dir",
            &s(&dir),
            "--hostname",
            "127.0.0.1",
            "--listen",
            &listen,
            "--ssl-ca-file",
            &s(&pki.join("ca.crt")),
            "--server-cert",
            &s(&pki.join("server.crt")),
            "--server-key",
            &s(&pki.join("server.key")),
        ])
        .unwrap()
    };
    let (ok, _, err) = create(&wrong);
    assert!(!ok, "a certificate for another host name was accepted");
    assert!(
        err.contains("--server-cert") && err.contains("--hostname 127.0.0.1"),
        "{err}"
    );
    assert!(
        !dir.exists(),
        "a refused create left {} behind",
        dir.display()
    );

    let good = c.path().join("pki-good");
    let pin = write_pki(&good, "127.0.0.1");
    let (ok, _, err) = create(&good);
    assert!(ok, "{err}");
    let mut monitor = std::process::Command::new(pgha_e2e::pgha_bin())
        .args(["run", "--dir", &s(&dir)])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(c.path().join("monitor2.log")).unwrap())
        .spawn()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}#sha256={pin}");
    let client = pgha_api::client::MonitorClient::new(&url, Duration::from_secs(2)).unwrap();
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(r) = client.get_text("/healthz").await {
            answered = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other_pin = pgha_api::tls::generate_pki("127.0.0.1")
        .unwrap()
        .ca_fingerprint;
    let other = format!("https://127.0.0.1:{port}#sha256={other_pin}");
    let refused = pgha_api::client::MonitorClient::new(&other, Duration::from_secs(2))
        .unwrap()
        .get_text("/healthz")
        .await;
    let (ok, shown, _) = c
        .pgha(&["show", "uri", "--formation", "monitor", "--dir", &s(&dir)])
        .unwrap();
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert_eq!(
        answered.map(|r| r.0),
        Some(200),
        "the monitor did not serve its certificate"
    );
    assert!(refused.is_err(), "a client pinning another CA was served");
    assert!(ok && shown.trim().starts_with("https://"), "{shown}");
    assert!(shown.contains(&format!("#sha256={pin}")), "{shown}");
}

/// Every file under `dir` that is a log: `*.log`, and Postgres's own under `log/`.
fn log_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            log_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "log")
            || p.parent().is_some_and(|d| d.ends_with("log"))
        {
            out.push(p);
        }
    }
}

/// After a formation with scram-sha-256 registered, failed over and rejoined, no
/// secret (join secret, operator and read credentials, node credentials, replication
/// password) is in any log, event, `show` output or process argument. Then the join
/// secret is rotated: the old join URL admits nobody, the new one does, and the nodes
/// that joined go on reporting with their own credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaks_and_the_join_secret_rotates() {
    pgha_e2e::scenario(async |c| {
        let t = Duration::from_secs(120);
        use pgha_api::NodeState::*;
        let scram = ["--auth", "scram-sha-256"];
        c.add_node_with("node_a", &scram)?;
        c.wait_for(&[("node_a", Single)], t)?;
        // node_b serves /metrics on another address than its health endpoints.
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        c.add_node_with(
            "node_b",
            &[scram[0], scram[1], "--metrics-listen", &metrics_addr],
        )?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], t)?;
        let (status, _) = c.agent_get(1, "/metrics").await?;
        anyhow::ensure!(
            status == 404,
            "/metrics is still on the health port ({status})"
        );
        anyhow::ensure!(c.agent_get(1, "/replica").await?.0 == 200);
        let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await?
            .text()
            .await?;
        anyhow::ensure!(
            text.contains("pgha_agent_"),
            "no agent metrics on {metrics_addr}"
        );
        c.kill_vm(0)?;
        c.wait_for(&[("node_b", WaitPrimary)], t)?;
        c.start_agent(0)?;
        c.wait_for(&[("node_a", Secondary), ("node_b", Primary)], t)?;

        let mon = c.monitor_dir();
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(&p)
                .map(|s| s.trim().to_string())
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        let mut secrets = vec![
            ("join secret", read(mon.join("secrets/default.secret"))?),
            (
                "operator credential",
                read(mon.join("credentials/operator.token"))?,
            ),
            ("read credential", read(mon.join("credentials/read.token"))?),
        ];
        for n in &c.nodes {
            let cfg = pgha_agent::AgentConfig::load(&n.pgdata)?;
            anyhow::ensure!(
                !cfg.monitor.contains('@'),
                "{}'s config keeps a secret in its monitor URL",
                n.name
            );
            secrets.push(("node credential", cfg.node_token.unwrap_or_default()));
            secrets.push(("replication password", cfg.replication_password));
        }
        anyhow::ensure!(
            secrets.iter().all(|(_, s)| s.len() >= 16),
            "a secret is missing"
        );
        let mut places: Vec<(String, String)> = vec![];
        let mut logs = vec![];
        log_files(c.path(), &mut logs);
        anyhow::ensure!(logs.len() >= 3, "no logs found: {logs:?}");
        for l in logs {
            places.push((
                l.display().to_string(),
                std::fs::read_to_string(&l).unwrap_or_default(),
            ));
        }
        let m = c.monitor_url.clone();
        for args in [
            vec![
                "show",
                "events",
                "--json",
                "--count",
                "1000",
                "--monitor",
                &m,
            ],
            vec!["show", "state", "--json", "--monitor", &m],
            vec!["show", "uri", "--monitor", &m],
        ] {
            places.push((format!("pgha {}", args.join(" ")), c.pgha_ok(&args)?));
        }
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()?;
        places.push(("ps".into(), String::from_utf8_lossy(&ps.stdout).into()));
        for (what, secret) in &secrets {
            for (place, text) in &places {
                anyhow::ensure!(!text.contains(secret.as_str()), "the {what} is in {place}");
            }
        }
        println!(
            "{} secrets checked in {} places",
            secrets.len(),
            places.len()
        );

        // Rotation: a new join secret, read at once (SIGHUP).
        let mon_s = mon.display().to_string();
        let join_url = |c: &pgha_e2e::Cluster| -> anyhow::Result<String> {
            let out = c.pgha_ok(&["show", "uri", "--json", "--dir", &mon_s])?;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
            rows.iter()
                .find(|r| r["type"] == "join")
                .and_then(|r| r["uri"].as_str())
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("no join URL: {out}"))
        };
        let old = join_url(c)?;
        c.pgha_ok(&["formation", "rotate-secret", "--dir", &mon_s])?;
        let pid = c.monitor.as_ref().map(|m| m.id()).unwrap_or_default() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let new = join_url(c)?;
        anyhow::ensure!(new != old, "the join URL did not change");
        let create = |c: &pgha_e2e::Cluster, name: &str, url: &str| {
            c.pgha(&[
                "create",
                "postgres",
                "--pgdata",
                &c.path().join(name).display().to_string(),
                "--pgport",
                &free_port().to_string(),
                "--hostname",
                "127.0.0.1",
                "--dbname",
                "appdb",
                "--monitor",
                url,
                "--name",
                name,
                "--http-port",
                "0",
            ])
        };
        let (ok, _, err) = create(c, "node_x", &old)?;
        anyhow::ensure!(
            !ok && err.contains("join secret"),
            "the old join secret still admits: {err}"
        );
        let (ok, _, err) = create(c, "node_y", &new)?;
        anyhow::ensure!(ok, "the new join secret does not admit: {err}");
        // The nodes that joined report on, with their own credentials.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let st = c.state()?;
        for n in st.nodes.iter().filter(|n| n.name != "node_y") {
            let age = n.report_age_ms.unwrap_or(u64::MAX);
            anyhow::ensure!(
                age < 2500,
                "{} stopped reporting after the rotation ({age} ms)",
                n.name
            );
        }
        Ok(())
    })
    .await;
}

/// The second review (the first review's L7): replication links verified no server, and
/// libpq 15 sends the password in clear when a server asks. With SSL on the nodes and
/// scram-sha-256, every replication link (the base backup, streaming, the remote
/// checkpoint and pg_rewind of a rejoin) runs over TLS with channel binding: a server
/// that cannot prove it holds the verifier for this TLS channel is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_runs_over_tls_with_channel_binding() {
    use pgha_api::NodeState::*;
    pgha_e2e::scenario(async |c| {
        let t = Duration::from_secs(120);
        let args = ["--auth", "scram-sha-256", "--ssl-self-signed"];
        c.add_node_with("node_a", &args)?;
        c.wait_for(&[("node_a", Single)], t)?;
        c.add_node_with("node_b", &args)?;
        c.wait_for(&[("node_a", Primary), ("node_b", Secondary)], t)?;
        let conninfo = std::fs::read_to_string(c.nodes[1].pgdata.join("postgresql.pgha.conf"))?;
        anyhow::ensure!(
            conninfo.contains("sslmode=require channel_binding=require"),
            "{conninfo}"
        );
        // Switch over: node_a rejoins by a remote checkpoint and pg_rewind over TLS.
        let m = c.join_url.clone();
        c.pgha_ok(&["perform", "switchover", "--monitor", &m])?;
        c.wait_for(&[("node_a", Secondary), ("node_b", Primary)], t)?;
        for (primary, standby) in [(1usize, "node_a")] {
            let socket_dir = format!("{}.pgha", c.nodes[primary].pgdata.display());
            let db = pgha_e2e::probe::connect_one(
                &socket_dir,
                c.nodes[primary].port,
                "postgres",
                Duration::from_secs(3),
            )
            .await?;
            let rows = db
                .query(
                    "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.state = 'streaming'",
                    &[],
                )
                .await?;
            let tls: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
            anyhow::ensure!(tls == vec![true], "{standby} streams with ssl = {tls:?}");
        }
        Ok(())
    })
    .await;
}

/// The read URL `pgha show uri --dir` prints (`https://read:TOKEN@host:port`) reads the
/// monitor's `/metrics` with `curl` as it is (curl sends it as HTTP Basic).
#[test]
fn the_read_url_reads_metrics_with_curl() {
    let c = Cluster::start().unwrap();
    let (url, _pin) = c.monitor_url.split_once('#').unwrap();
    assert!(url.starts_with("https://read:"), "{url}");
    let ca = c.monitor_dir().join("tls/ca.crt");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&ca)
        .arg(format!("{url}/metrics"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("pgha_"),
        "{}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The largest `pgha_agent_lease_remaining_seconds` node `i` publishes over `d`, in ms.
async fn max_lease_remaining_ms(c: &Cluster, i: usize, d: Duration) -> anyhow::Result<u64> {
    let t0 = std::time::Instant::now();
    let mut max = None;
    while t0.elapsed() < d {
        let (_, body) = c.agent_get(i, "/metrics").await?;
        let secs = body
            .lines()
            .find(|l| l.starts_with("pgha_agent_lease_remaining_seconds"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(s) = secs {
            max = max.max(Some((s * 1000.0) as u64));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    max.ok_or_else(|| anyhow::anyhow!("node {i} published no lease"))
}

/// The first review's lease fix, pinned at its call site: an answer renews the lease
/// as of when its report was *sent* (`lease::renewal(sent, …)` in the agent's report),
/// so a slow link shortens the lease by the round trip instead of stretching it past
/// what the controller counts. The primary reaches the controller through a proxy that
/// delays each way by 200 ms, its standby is gone (a standby's replies renew the lease
/// too): the most lease it ever has left drops by about the round trip (400 ms).
/// Anchored at the answer's arrival, it would not drop at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_renews_the_lease_from_when_the_report_was_sent() {
    pgha_e2e::scenario(async |c| {
        c.bootstrap_two()?;
        let proxy = pgha_e2e::proxy::DelayProxy::start(c.monitor_port).await?;
        c.kill_agent(0);
        let mut cfg = pgha_agent::config::AgentConfig::load(&c.nodes[0].pgdata)?;
        let direct = format!("127.0.0.1:{}", c.monitor_port);
        anyhow::ensure!(cfg.monitor.contains(&direct), "{}", cfg.monitor);
        cfg.monitor = cfg
            .monitor
            .replace(&direct, &format!("127.0.0.1:{}", proxy.port));
        cfg.save()?;
        c.start_agent(0)?;
        c.kill_vm(1)?;
        c.wait_for(
            &[("node_a", NodeState::WaitPrimary)],
            Duration::from_secs(120),
        )?;
        let fast = max_lease_remaining_ms(c, 0, Duration::from_secs(8)).await?;
        proxy.set_delay(Duration::from_millis(200));
        // Let the delayed answers become the newest evidence.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let slow = max_lease_remaining_ms(c, 0, Duration::from_secs(8)).await?;
        println!("most lease left: {fast} ms on a fast link, {slow} ms with 400 ms round trips");
        anyhow::ensure!(
            fast >= slow + 250,
            "the lease did not shrink by the round trip ({fast} ms fast, {slow} ms slow): \
             is it renewed from when the answer arrived?"
        );
        Ok(())
    })
    .await;
}
