//! The monitor's API over TLS with the operator's own PKI: a certificate that does not
//! name the monitor's host is refused at `create monitor`; one that does is served, and
//! only a client pinning its CA reads through it.

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
