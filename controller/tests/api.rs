//! The controller's HTTP API in process, over real HTTP on loopback, without Postgres:
//! registration, reports, reconcile and assignments, and the admission rules that guard
//! them (host strings, join secrets, who may speak for a declared node).

use pgha_api::routes;
use pgha_api::{NodeReport, NodeState, RegisterRequest};
use pgha_controller::state::ControllerState;
use pgha_controller::store::FileStore;
use pgha_controller::{MonitorConfig, Shared, lock, now_ms};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const OPERATOR: &str = "operator-token-for-the-test";
const READ: &str = "read-token-for-the-test";

struct Api {
    _dir: tempfile::TempDir,
    shared: Shared,
    base: String,
    secret: String,
    /// Each registered node's own credential, by id.
    tokens: Mutex<std::collections::HashMap<u64, String>>,
    /// The fingerprint of the CA the API's certificate comes from.
    pin: String,
}

/// A controller serving one formation `orders` whose file declares node_a at 127.0.0.2
/// and node_b at 127.0.0.1, with a join secret.
async fn api() -> Api {
    api_with(pgha_controller::api_limits()).await
}

/// [`api`] served within `limits`.
async fn api_with(limits: pgha_api::server::Limits) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let formations = dir.path().join("formations");
    std::fs::create_dir(&formations).unwrap();
    let secret_file = dir.path().join("orders.secret");
    pgha_controller::desired::write_secret(&secret_file, "s3cret").unwrap();
    std::fs::write(
        formations.join("orders.yaml"),
        format!(
            "apiVersion: pgha/v1\nkind: Formation\nmetadata:\n  name: orders\nspec:\n  dbname: orders\n  admission:\n    joinSecretFile: {}\n  nodes:\n    - name: node_a\n      host: 127.0.0.2\n    - name: node_b\n      host: 127.0.0.1\n",
            secret_file.display()
        ),
    )
    .unwrap();
    let mut st = ControllerState::open(Box::new(FileStore::new(dir.path())), now_ms()).unwrap();
    st.credentials = pgha_controller::credentials::MonitorCredentials {
        operator: Some(pgha_api::tls::sha256_hex(OPERATOR.as_bytes())),
        read: Some(pgha_api::tls::sha256_hex(READ.as_bytes())),
    };
    st.apply_desired(
        pgha_controller::desired::scan(&formations, Some(dir.path())),
        now_ms(),
    )
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
        store: Default::default(),
        controllers: vec![],
    };
    let app = pgha_controller::http::router(
        shared.clone(),
        cfg,
        Arc::new(pgha_controller::leader::Leadership::sole()),
    );
    let pki = pgha_api::tls::generate_pki("127.0.0.1").unwrap();
    let tls = pgha_api::tls::server_config(
        pki.server_chain_pem.as_bytes(),
        pki.server_key_pem.as_bytes(),
    )
    .unwrap();
    tokio::spawn(pgha_api::server::serve(
        listener,
        app,
        limits,
        Some(Arc::new(tls)),
        std::future::pending::<()>(),
    ));
    Api {
        _dir: dir,
        shared,
        base: format!("https://{addr}"),
        secret: "s3cret".into(),
        tokens: Mutex::new(Default::default()),
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

    /// A report for node `id` with its own credential (the join secret for a node this
    /// test never registered).
    async fn report(&self, from: &str, id: u64, state: NodeState) -> (u16, serde_json::Value) {
        let token = self.tokens.lock().unwrap().get(&id).cloned();
        let credential = token.unwrap_or_else(|| self.secret.clone());
        self.post(from, routes::REPORT, Some(&credential), &report(id, state))
            .await
    }

    async fn register(&self, from: &str, name: &str, host: &str) -> (u16, serde_json::Value) {
        let req = RegisterRequest::new("orders", name, host, 5432, "orders");
        let (status, body) = self
            .post(from, routes::REGISTER, Some(&self.secret), &req)
            .await;
        if let (Some(id), Some(token)) = (body["node_id"].as_u64(), body["node_token"].as_str()) {
            self.tokens.lock().unwrap().insert(id, token.to_string());
        }
        (status, body)
    }
}

fn report(node_id: u64, reported: NodeState) -> NodeReport {
    NodeReport::new(node_id, "orders", reported, 1)
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
    let req = RegisterRequest::new("orders", "node_b", "127.0.0.1", 5432, "orders");
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

/// A request with a method, a path and a body, presenting `credential`.
async fn call(
    api: &Api,
    method: &str,
    path: &str,
    credential: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let c = client_pinning("127.0.0.1", &api.pin);
    let url = format!("{}{path}", api.base);
    let mut req = match method {
        "GET" => c.get(url),
        "POST" => c.post(url).json(&body),
        "DELETE" => c.delete(url),
        m => panic!("no method {m}"),
    };
    if let Some(t) = credential {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Every route of the API (walked from `routes::ALL`, so a new route is covered the day
/// it is added): without a credential, with one the monitor does not know, and with
/// each credential whose scope does not cover it, it is refused (401, 403), nothing
/// changes, and the refusals are recorded as events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_calls_outside_their_scope() {
    use pgha_api::routes::Access;
    let api = api().await;
    let (status, body) = api.register("127.0.0.1", "node_b", "127.0.0.1").await;
    assert_eq!(status, 200, "{body}");
    let b_id = body["node_id"].as_u64().unwrap();
    let node_b = api.tokens.lock().unwrap()[&b_id].clone();
    let before = lock(&api.shared).durable.clone();
    let events_before = lock(&api.shared).events.len();
    let body_for = |path: &str| match path {
        routes::REGISTER => serde_json::json!({
            "formation": "orders", "name": "node_x", "host": "127.0.0.1", "port": 5432,
            "dbname": "orders", "candidate_priority": 50, "replication_quorum": true
        }),
        routes::REPORT => serde_json::to_value(report(b_id, NodeState::Single)).unwrap(),
        routes::FAILOVER => serde_json::json!({"allow_data_loss": true, "reason": "test"}),
        _ => serde_json::json!({}),
    };
    let mut checked = 0;
    for r in routes::ALL {
        let path = routes::path(r.path, "orders", Some("node_b"));
        // (credential, what it is)
        let mut wrong: Vec<(Option<&str>, &str, u16)> = vec![
            (None, "no credential", 401),
            (
                Some("not-a-credential-of-this-monitor"),
                "an unknown credential",
                401,
            ),
        ];
        match r.access {
            Access::Public => wrong.clear(),
            Access::Read => wrong.push((Some(&api.secret), "the join secret", 403)),
            Access::Register => {
                wrong.push((Some(READ), "the read credential", 403));
                wrong.push((Some(&node_b), "a node's credential", 403));
            }
            Access::Report => {
                wrong.push((Some(READ), "the read credential", 403));
                wrong.push((
                    Some(&api.secret),
                    "the join secret, for a node with its own",
                    403,
                ));
                wrong.push((
                    Some(OPERATOR),
                    "the operator's, for a node with its own",
                    403,
                ));
            }
            Access::Operate => {
                wrong.push((Some(READ), "the read credential", 403));
                wrong.push((Some(&api.secret), "the join secret", 403));
                wrong.push((Some(&node_b), "a node's credential", 403));
            }
        }
        for (cred, what, want) in wrong {
            let (status, body) = call(&api, r.method, &path, cred, body_for(r.path)).await;
            assert_eq!(status, want, "{} {path} with {what}: {body}", r.method);
            let code = if want == 401 {
                "unauthenticated"
            } else {
                "forbidden"
            };
            assert_eq!(
                body["code"], code,
                "{} {path} with {what}: {body}",
                r.method
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} refusals checked");
    {
        let st = lock(&api.shared);
        assert_eq!(st.durable, before, "a refused call changed the state");
        let refused: Vec<&pgha_api::Event> = st
            .events
            .iter()
            .skip(events_before)
            .filter(|e| e.rule == "auth_refused")
            .collect();
        assert!(refused.len() >= 10, "{} refusals recorded", refused.len());
        assert!(
            refused
                .iter()
                .all(|e| e.actor.as_deref() == Some("address 127.0.0.1"))
        );
        // And the credentials that do cover them get through.
    }
    let state = routes::path(routes::FORMATION_STATE, "orders", None);
    for cred in [READ, OPERATOR, node_b.as_str()] {
        assert_eq!(
            call(&api, "GET", &state, Some(cred), serde_json::json!({}))
                .await
                .0,
            200
        );
    }
    let (status, body) = call(
        &api,
        "GET",
        routes::METRICS,
        Some(READ),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.as_str()
            .unwrap_or_default()
            .contains("pgha_api_refused_total"),
        "{body}"
    );
}

/// A node's credential reports for that node only: a report it carries for another
/// node is refused (403), changes nothing, and is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_only_as_itself() {
    let api = api().await;
    let (_, a) = api.register("127.0.0.2", "node_a", "127.0.0.2").await;
    let (_, b) = api.register("127.0.0.1", "node_b", "127.0.0.1").await;
    let (a_id, b_id) = (
        a["node_id"].as_u64().unwrap(),
        b["node_id"].as_u64().unwrap(),
    );
    let b_token = b["node_token"].as_str().unwrap().to_string();
    assert_eq!(b_token.len(), 32, "{b}");
    assert_ne!(a["node_token"], b["node_token"]);
    // node_b's credential, a report for node_a, from node_a's address.
    let (status, body) = api
        .post(
            "127.0.0.2",
            routes::REPORT,
            Some(&b_token),
            &report(a_id, NodeState::Primary),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden");
    {
        let st = lock(&api.shared);
        assert_eq!(
            st.durable.formations["orders"].nodes[&a_id].reported(),
            NodeState::Init
        );
        assert!(
            st.events
                .iter()
                .any(|e| e.rule == "auth_refused" && e.description.contains("node_b")),
            "the refusal was not recorded"
        );
        // The controller keeps only a hash of each credential.
        let stored = serde_json::to_string(&st.durable).unwrap();
        assert!(
            !stored.contains(&b_token),
            "a node credential is stored in clear"
        );
    }
    let (status, _) = api.report("127.0.0.1", b_id, NodeState::Init).await;
    assert_eq!(status, 200);
}

/// A node registered before nodes had their own credential reports once with the join
/// secret and gets one in the answer; from then on only that one is accepted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_from_before_credentials_is_given_one_once() {
    let api = api().await;
    let (_, b) = api.register("127.0.0.1", "node_b", "127.0.0.1").await;
    let id = b["node_id"].as_u64().unwrap();
    // As a store written by the previous version holds it.
    lock(&api.shared)
        .durable
        .formations
        .get_mut("orders")
        .unwrap()
        .nodes
        .get_mut(&id)
        .unwrap()
        .credential = None;
    api.tokens.lock().unwrap().clear();
    let (status, a) = api.report("127.0.0.1", id, NodeState::Init).await;
    assert_eq!(status, 200, "{a}");
    let token = a["node_token"]
        .as_str()
        .expect("a credential in the answer")
        .to_string();
    let (status, body) = api.report("127.0.0.1", id, NodeState::Init).await;
    assert_eq!(status, 403, "the join secret still reports for it: {body}");
    api.tokens.lock().unwrap().insert(id, token);
    let (status, a) = api.report("127.0.0.1", id, NodeState::Init).await;
    assert_eq!(status, 200);
    assert!(a.get("node_token").is_none(), "handed out twice: {a}");
    assert!(
        lock(&api.shared)
            .events
            .iter()
            .any(|e| e.rule == "node_credential_issued")
    );
}

/// Random, mutated, huge and deeply nested bodies to every route that reads one (with
/// the operator's credential, so the body is what decides): never a panic or a 5xx,
/// every refusal a 4xx with the API's error body, and the controller answers after.
#[test]
fn malformed_bodies_get_a_4xx_with_a_message() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(api());
    let valid = serde_json::to_string(&report(1, NodeState::Init)).unwrap();
    let routes_with_bodies = [
        routes::REGISTER.to_string(),
        routes::REPORT.to_string(),
        routes::path(routes::FAILOVER, "orders", None),
    ];
    let body = prop_oneof![
        // Anything at all.
        any::<Vec<u8>>(),
        // A valid report with bytes changed, inserted or cut.
        (any::<usize>(), any::<u8>(), 0..3u8).prop_map({
            let valid = valid.clone();
            move |(at, byte, how)| {
                let mut b = valid.clone().into_bytes();
                let at = at % b.len();
                match how {
                    0 => b[at] = byte,
                    1 => b.insert(at, byte),
                    _ => b.truncate(at),
                }
                b
            }
        }),
        // Deep nesting.
        (1usize..20_000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        // Unknown fields.
        Just(valid.replacen('{', "{\"admin\":true,", 1).into_bytes()),
        // Past the body limit.
        Just(format!("{{\"x\":\"{}\"}}", "a".repeat(300 * 1024)).into_bytes()),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let client = client_pinning("127.0.0.1", &api.pin);
    let refused = std::cell::Cell::new(0);
    runner
        .run(&(0..routes_with_bodies.len(), body), |(r, bytes)| {
            let url = format!("{}{}", api.base, routes_with_bodies[r]);
            let (status, text) = rt.block_on(async {
                let resp = client
                    .post(&url)
                    .bearer_auth(OPERATOR)
                    .header("content-type", "application/json")
                    .body(bytes.clone())
                    .send()
                    .await
                    .expect("the controller answers");
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            });
            prop_assert!(status < 500, "{status} for {url}: {text}");
            if status >= 400 {
                refused.set(refused.get() + 1);
                let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    TestCaseError::fail(format!("{status} body is not JSON ({e}): {text}"))
                })?;
                prop_assert!(
                    v["error"].as_str().is_some_and(|e| !e.is_empty()) && v["code"].is_string(),
                    "{status} without the error body: {text}"
                );
            }
            Ok(())
        })
        .unwrap();
    assert!(
        refused.get() >= 200,
        "only {} bodies refused",
        refused.get()
    );
    let (status, _) = rt.block_on(call(
        &api,
        "GET",
        routes::HEALTHZ,
        None,
        serde_json::json!({}),
    ));
    assert_eq!(status, 200);
}

/// The second review: an unauthenticated `POST /v1/report` with a body of `{}` was
/// answered 422 (the body was read and parsed before anyone was asked who they are).
/// Where no formation admits anyone, both body routes refuse at the door: 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_are_refused_before_they_are_read() {
    let api = api().await;
    for route in [routes::REPORT, routes::REGISTER] {
        let (status, body) = api
            .post("127.0.0.1", route, None, &serde_json::json!({}))
            .await;
        assert_eq!(status, 401, "{route}: {body}");
        assert_eq!(body["code"], "unauthenticated", "{route}: {body}");
    }
}

/// The second review: a trickled body held a connection for up to 600 s, and 8,192 of
/// them locked agents and operators out. With a host trickling bodies (as slowly as it
/// likes, on as many connections as it can open), an agent on another host still
/// reports, every time; the trickled requests are cut at the request deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reports_while_another_host_trickles_bodies() {
    // The controller's limits, scaled down so that a test can fill them: 64 slots,
    // 16 per source, 1 s to read and answer a request.
    let api = Arc::new(
        api_with(pgha_api::server::Limits {
            max_connections: 64,
            max_per_source: 16,
            request_timeout: Duration::from_secs(1),
            ..pgha_controller::api_limits()
        })
        .await,
    );
    let (status, body) = api.register("127.0.0.1", "node_b", "127.0.0.1").await;
    assert_eq!(status, 200, "{body}");
    let id = body["node_id"].as_u64().unwrap();
    let run_for = Duration::from_secs(4);
    // 200 registrations from 127.0.0.9, each body a byte every 300 ms (the join secret
    // lets it past the door: a leaked secret, or an open formation).
    let mut tricklers = vec![];
    for _ in 0..200 {
        let (base, secret, pin) = (api.base.clone(), api.secret.clone(), api.pin.clone());
        tricklers.push(tokio::spawn(async move {
            let stream = futures_util::stream::unfold(0, |n| async move {
                if n >= 100 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some((Ok::<_, std::io::Error>(vec![b' ']), n + 1))
            });
            let t0 = std::time::Instant::now();
            let r = client_pinning("127.0.0.9", &pin)
                .post(format!("{base}{}", routes::REGISTER))
                .bearer_auth(secret)
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(stream))
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            (r.map(|r| r.status().as_u16()).unwrap_or(0), t0.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut ok, mut failed) = (0, 0);
    let t0 = std::time::Instant::now();
    while t0.elapsed() < run_for {
        match api.report("127.0.0.1", id, NodeState::Single).await.0 {
            200 => ok += 1,
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cut = vec![];
    for t in tricklers {
        cut.push(t.await.unwrap());
    }
    let timed_out = cut.iter().filter(|(s, _)| *s == 408).count();
    let longest = cut.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "reports: {ok} ok, {failed} failed; trickled requests: {} answered 408, {} closed at once or refused, longest held {longest:?}",
        timed_out,
        cut.len() - timed_out
    );
    assert_eq!(failed, 0, "reports failed while bodies trickled");
    assert!(ok >= 10, "only {ok} reports in {run_for:?}");
    assert!(timed_out > 0, "no trickled request was cut: {cut:?}");
    assert!(
        longest < Duration::from_secs(15),
        "a trickled body was held {longest:?}"
    );
}
