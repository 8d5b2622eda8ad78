//! The controller's HTTP API in process, over real HTTP on loopback, without Postgres:
//! registration, reports, reconcile and assignments, and the admission rules that guard
//! them (host strings, join secrets, who may speak for a declared node).

use pgha_api::routes;
use pgha_api::{NodeReport, NodeState, PgObservation, RegisterRequest};
use pgha_controller::state::ControllerState;
use pgha_controller::store::FileStore;
use pgha_controller::{MonitorConfig, Shared, lock, now_ms};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Api {
    _dir: tempfile::TempDir,
    shared: Shared,
    base: String,
    secret: String,
    /// The fingerprint of the CA the API's certificate comes from.
    pin: String,
}

/// A controller serving one formation `orders` whose file declares node_a at 127.0.0.2
/// and node_b at 127.0.0.1, with a join secret.
async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let formations = dir.path().join("formations");
    std::fs::create_dir(&formations).unwrap();
    let secret_file = dir.path().join("orders.secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    std::fs::write(
        formations.join("orders.yaml"),
        format!(
            "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: orders\nspec:\n  dbname: orders\n  admission:\n    joinSecretFile: {}\n  nodes:\n    - name: node_a\n      host: 127.0.0.2\n    - name: node_b\n      host: 127.0.0.1\n",
            secret_file.display()
        ),
    )
    .unwrap();
    let mut st = ControllerState::open(Box::new(FileStore::new(dir.path())), now_ms()).unwrap();
    st.apply_desired(pgha_controller::desired::scan(&formations), now_ms())
        .unwrap();
    let shared: Shared = Arc::new(Mutex::new(st));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let cfg = MonitorConfig {
        dir: dir.path().to_path_buf(),
        listen: addr.to_string(),
        hostname: "127.0.0.1".into(),
        sslmode: "prefer".into(),
        formations_dir: Some(formations),
        tls: None,
    };
    let app = pgha_controller::http::router(shared.clone(), cfg);
    let pki = pgha_api::tls::generate_pki("127.0.0.1").unwrap();
    let tls = pgha_api::tls::server_config(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .unwrap();
    tokio::spawn(pgha_api::server::serve(
        listener,
        app,
        pgha_api::server::Limits::default(),
        Some(Arc::new(tls)),
        std::future::pending::<()>(),
    ));
    Api {
        _dir: dir,
        shared,
        base: format!("https://{addr}"),
        secret: "s3cret".into(),
        pin: pki.ca_fingerprint,
    }
}

/// A client trusting the CA `pin` names, whose connections come from `from` (any
/// 127.x address reaches loopback).
fn client_pinning(from: &str, pin: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .use_preconfigured_tls(pgha_api::tls::client_config(pin))
        .build()
        .unwrap()
}

impl Api {
    async fn post(
        &self,
        from: &str,
        path: &str,
        secret: Option<&str>,
        body: &impl serde::Serialize,
    ) -> (u16, serde_json::Value) {
        let mut req = client_pinning(from, &self.pin)
            .post(format!("{}{path}", self.base))
            .json(body);
        if let Some(s) = secret {
            req = req.bearer_auth(s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }

    async fn report(&self, from: &str, id: u64, state: NodeState) -> (u16, serde_json::Value) {
        self.post(from, routes::REPORT, Some(&self.secret), &report(id, state))
            .await
    }

    async fn register(&self, from: &str, name: &str, host: &str) -> (u16, serde_json::Value) {
        let req = RegisterRequest {
            formation: "orders".into(),
            name: Some(name.into()),
            host: host.into(),
            port: 5432,
            dbname: "orders".into(),
            candidate_priority: 50,
            replication_quorum: true,
        };
        self.post(from, routes::REGISTER, Some(&self.secret), &req)
            .await
    }
}

fn report(node_id: u64, reported: NodeState) -> NodeReport {
    NodeReport {
        node_id,
        formation: "orders".into(),
        reported_state: reported,
        term: 1,
        pg: PgObservation::default(),
        fenced: false,
        last_error: None,
        applied_generation: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_reconcile_assignment_over_http() {
    let api = api().await;
    let (status, body) = api.register("127.0.0.1", "node_b", "127.0.0.1").await;
    assert_eq!(status, 200, "{body}");
    let id = body["node_id"].as_u64().unwrap();
    assert_eq!(body["assigned_state"], "single");
    // The agent reports init; the controller answers with its assignment and term.
    let (status, a) = api.report("127.0.0.1", id, NodeState::Init).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["goal"], "single");
    assert_eq!(a["term"], 1);
    let (status, _) = api.report("127.0.0.1", id, NodeState::Single).await;
    assert_eq!(status, 200);
    let st = lock(&api.shared);
    assert_eq!(
        st.durable.formations["orders"].nodes[&id].reported(),
        NodeState::Single
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hosts_and_missing_secrets_are_refused() {
    let api = api().await;
    for host in ["0.0.0.0/0", "all", "db\nhost all all all trust", "a b"] {
        let (status, body) = api.register("127.0.0.1", "node_b", host).await;
        assert_eq!(status, 400, "{host:?}: {body}");
        assert_eq!(body["code"], "invalid_host");
    }
    let req = RegisterRequest {
        formation: "orders".into(),
        name: Some("node_b".into()),
        host: "127.0.0.1".into(),
        port: 5432,
        dbname: "orders".into(),
        candidate_priority: 50,
        replication_quorum: true,
    };
    let (status, body) = api.post("127.0.0.1", routes::REGISTER, None, &req).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = api
        .post("127.0.0.1", "/v1/nodes", Some("wrong"), &req)
        .await;
    assert_eq!(status, 401);
    // Nothing of a refused node was stored.
    assert!(
        lock(&api.shared).durable.formations["orders"]
            .nodes
            .is_empty()
    );
}

/// A node declared at an IP address registers and reports from that address only: a
/// report for it from elsewhere is refused (403) and recorded once as an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_declared_address_speaks_for_a_node() {
    let api = api().await;
    let (status, body) = api.register("127.0.0.1", "node_a", "127.0.0.2").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "address_mismatch");
    let (status, body) = api.register("127.0.0.2", "node_a", "127.0.0.2").await;
    assert_eq!(status, 200, "{body}");
    let id = body["node_id"].as_u64().unwrap();
    for _ in 0..3 {
        let (status, body) = api.report("127.0.0.1", id, NodeState::Single).await;
        assert_eq!(status, 403, "{body}");
    }
    {
        let st = lock(&api.shared);
        assert_eq!(
            st.durable.formations["orders"].nodes[&id].reported(),
            NodeState::Init,
            "a refused report changed the node"
        );
        let refused = st
            .events
            .iter()
            .filter(|e| e.rule == "report_refused")
            .count();
        assert_eq!(refused, 1);
    }
    let (status, body) = api.report("127.0.0.2", id, NodeState::Init).await;
    assert_eq!(status, 200, "{body}");
}

/// An agent's report for an id this store never issued (restored from an older copy)
/// moves the id counter past it: the id is never handed to another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ids_are_never_reused() {
    let api = api().await;
    let (status, _) = api.report("127.0.0.1", 41, NodeState::Secondary).await;
    assert_eq!(status, 404);
    let (status, body) = api.register("127.0.0.1", "node_b", "127.0.0.1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node_id"], 42);
}

/// Only a client that pins the monitor's CA, and reaches it under the name its
/// certificate carries, gets through; and the typed client refuses an https URL
/// without a pin rather than trust any certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_client_pinning_the_monitors_ca_connects() {
    let api = api().await;
    let ok = client_pinning("127.0.0.1", &api.pin)
        .get(format!("{}{}", api.base, routes::HEALTHZ))
        .send()
        .await;
    assert_eq!(ok.unwrap().status().as_u16(), 200);
    let other = pgha_api::tls::generate_pki("127.0.0.1").unwrap();
    let refused = client_pinning("127.0.0.1", &other.ca_fingerprint)
        .get(format!("{}{}", api.base, routes::HEALTHZ))
        .send()
        .await;
    assert!(refused.is_err(), "a client pinning another CA connected");
    // The right CA, but the certificate is for 127.0.0.1 and this name is another.
    let port = api.base.rsplit(':').next().unwrap();
    let wrong_name = client_pinning("127.0.0.1", &api.pin)
        .get(format!("https://localhost:{port}{}", routes::HEALTHZ))
        .send()
        .await;
    assert!(
        wrong_name.is_err(),
        "a certificate for another name was accepted"
    );
    // Plain HTTP to the TLS port gets nothing.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .use_preconfigured_tls(pgha_api::tls::client_config(&api.pin))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}{}", routes::HEALTHZ))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    // The typed client: with the pin it reads; without, it refuses to start.
    let url = format!("{}#sha256={}", api.base, api.pin);
    let c = pgha_api::client::MonitorClient::new(&url, Duration::from_secs(5)).unwrap();
    assert_eq!(c.get_text(routes::HEALTHZ).await.unwrap().0, 200);
    let e = pgha_api::client::MonitorClient::new(&api.base, Duration::from_secs(5))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("#sha256="), "{e}");
}
