//! Typed client of the controller's HTTP API (feature `client`), beside the contract it
//! speaks: the agent and the CLI both talk to the controller through it.

use crate::routes::{self, ErrorCode};
use crate::{
    ApiError, Assignment, Event, FormationStatus, MonitorInfo, NodeReport, RegisterRequest,
    RegisterResponse, SwitchoverStarted,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("monitor at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Api(String, ErrorCode),
    #[error("monitor at {url} answered something unexpected: {reason}")]
    Protocol { url: String, reason: String },
    #[error("monitor URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
}

impl ClientError {
    /// The API error code, when the monitor refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(_, code) => Some(*code),
            _ => None,
        }
    }
}

/// Splits `scheme://user:secret@host:port/...` into the URL without user info and the
/// secret (the password part, or the user part when there is no password).
pub fn split_secret(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let secret = userinfo.split_once(':').map(|(_, p)| p).unwrap_or(userinfo);
            (format!("{scheme}://{host}{path}"), Some(secret.to_string()))
        }
        None => (url.to_string(), None),
    }
}

/// A monitor URL as given, or read from FILE when given as `@FILE` (first line).
pub fn resolve_url(url: &str) -> Result<String, String> {
    match url.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| format!("reading the monitor URL from {file}: {e}"))
            .and_then(|text| {
                text.lines()
                    .next()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| format!("{file} holds no monitor URL"))
            }),
        None => Ok(url.to_string()),
    }
}

/// The URL with any secret replaced, for logs.
pub fn redact(url: &str) -> String {
    match split_secret(url) {
        (base, Some(_)) => base.replacen("://", "://***@", 1),
        (base, None) => base,
    }
}

/// Splits a base URL naming several controllers (`https://h1:5440,h2:5440/`, as a
/// libpq multi-host URI does) into one base URL per controller.
pub fn split_hosts(base: &str) -> Result<Vec<String>, String> {
    let Some((scheme, rest)) = base.split_once("://") else {
        return Ok(vec![base.to_string()]);
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let hosts: Vec<&str> = authority.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err("an empty host between commas".into());
    }
    Ok(hosts
        .into_iter()
        .map(|h| format!("{scheme}://{h}{path}"))
        .collect())
}

/// A client of one controller, or of several (a URL with comma-separated hosts: the
/// controllers of one etcd store). Requests go to the one that answered last; one that
/// cannot be reached, or answers `not_leader`, passes the request to the next.
#[derive(Clone)]
pub struct MonitorClient {
    bases: std::sync::Arc<Vec<String>>,
    /// Index in `bases` of the controller that last answered as leader.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    http: reqwest::Client,
}

/// The root cause of a request failure ("Connection refused (os error 111)",
/// "operation timed out"): what an operator can act on.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut root: &dyn Error = e;
    while let Some(inner) = root.source() {
        root = inner;
    }
    if e.is_timeout() {
        format!("timed out ({root})")
    } else {
        root.to_string()
    }
}

impl MonitorClient {
    /// A client for the monitor at `url`, or at the URL read from a file when `url` is
    /// `@FILE` (so that a URL carrying the join secret stays out of `ps`). A join secret in
    /// the URL's user info (`http://pgha:SECRET@host:port`) is sent as a bearer token,
    /// never as part of the URL. Proxy variables are ignored: the secret goes to the
    /// monitor and nowhere else.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::with_credential(url, None, timeout)
    }

    /// As [`MonitorClient::new`], presenting `credential` (a node's own token) instead
    /// of any secret in the URL.
    pub fn with_credential(
        url: &str,
        credential: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::BadUrl {
            url: redact(url),
            reason,
        };
        let url = resolve_url(url).map_err(bad)?;
        let (base, secret) = split_secret(&url);
        let secret = credential.map(str::to_string).or(secret);
        let (base, pin) = crate::tls::split_pin(&base).map_err(bad)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(s) = secret {
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {s}")).map_err(|_| {
                    bad("the join secret holds characters a header cannot carry".into())
                })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .default_headers(headers)
            .no_proxy()
            // A redirect would take the credential somewhere the URL does not name.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(pin.is_some());
        match (&pin, base.starts_with("https://")) {
            // The one CA the URL pins, and nothing else.
            (Some(pin), true) => {
                builder = builder.use_preconfigured_tls(crate::tls::client_config(pin));
            }
            (None, true) => {
                return Err(bad(
                    "an https monitor URL must pin the monitor's CA (#sha256=<fingerprint>): use the URL `pgha show uri` prints".into(),
                ));
            }
            (Some(_), false) => {
                return Err(bad(
                    "#sha256= pins a CA, which only an https:// URL uses".into()
                ));
            }
            // Plain HTTP (a monitor created with --no-ssl): a TLS configuration that
            // trusts nothing, so no https:// is ever reached through this client.
            (None, false) => {
                builder = builder.use_preconfigured_tls(crate::tls::client_config(&"0".repeat(64)));
            }
        }
        let http = builder
            .build()
            .map_err(|e| bad(format!("cannot build an HTTP client: {}", describe(&e))))?;
        let bases = split_hosts(base.trim_end_matches('/'))
            .map_err(bad)?
            .into_iter()
            .map(|b| b.trim_end_matches('/').to_string())
            .collect();
        Ok(MonitorClient {
            bases: std::sync::Arc::new(bases),
            current: Default::default(),
            http,
        })
    }

    /// The base URL of the controller requests go to first (the last one that answered).
    pub fn url(&self) -> &str {
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()]
    }

    /// Every controller's base URL.
    pub fn urls(&self) -> &[String] {
        &self.bases
    }

    /// Sends the request `build` makes for a base URL, to the controller that answered
    /// last and then to the others, until one answers other than "unreachable" or "not
    /// the leader"; that one is tried first next time.
    async fn send<T>(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
        read: impl AsyncFn(&str, Result<reqwest::Response, reqwest::Error>) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        use std::sync::atomic::Ordering;
        let n = self.bases.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let base = &self.bases[idx];
            match read(base, build(base).send().await).await {
                Err(e @ ClientError::Unreachable { .. })
                | Err(e @ ClientError::Api(_, ErrorCode::NotLeader))
                    if n > 1 =>
                {
                    last = Some(e);
                }
                other => {
                    self.current.store(idx, Ordering::Relaxed);
                    return other;
                }
            }
        }
        Err(last.expect("at least one controller was tried"))
    }

    /// `GET path` as text, whatever the status: (status, body). For endpoints that are
    /// not JSON (`/metrics`) and for tests of refusals.
    pub async fn get_text(&self, path: &str) -> Result<(u16, String), ClientError> {
        self.send(
            |base| self.http.get(format!("{base}{path}")),
            async |base, resp| {
                let unreachable = |e: reqwest::Error| ClientError::Unreachable {
                    url: base.to_string(),
                    reason: describe(&e),
                };
                let resp = resp.map_err(unreachable)?;
                let status = resp.status().as_u16();
                let text = resp.text().await.map_err(unreachable)?;
                // A follower's refusal passes the request on, as for JSON requests.
                if status == 503
                    && let Ok(e) = serde_json::from_str::<ApiError>(&text)
                    && e.code == ErrorCode::NotLeader
                {
                    return Err(ClientError::Api(e.error, e.code));
                }
                Ok((status, text))
            },
        )
        .await
    }

    async fn request<T: DeserializeOwned>(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        self.send(build, async |base, resp| decode(base, resp).await)
            .await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request(|base| self.http.get(format!("{base}{path}")))
            .await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.request(|base| self.http.post(format!("{base}{path}")).json(body))
            .await
    }

    async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.request(|base| self.http.delete(format!("{base}{path}")))
            .await
    }

    /// `pgha enable maintenance`.
    pub async fn enable_maintenance(
        &self,
        formation: &str,
        node: &str,
        allow_failover: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let path = format!(
            "{}?allow_failover={allow_failover}",
            routes::path(routes::MAINTENANCE, formation, Some(node))
        );
        self.post(&path, &()).await
    }

    /// `pgha disable maintenance`.
    pub async fn disable_maintenance(
        &self,
        formation: &str,
        node: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.delete(&routes::path(routes::MAINTENANCE, formation, Some(node)))
            .await
    }

    /// `pgha drop node`.
    pub async fn drop_node(
        &self,
        formation: &str,
        node: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.delete(&routes::path(routes::NODE, formation, Some(node)))
            .await
    }

    /// `pgha reinit --name N`.
    pub async fn reinit(
        &self,
        formation: &str,
        node: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.post(&routes::path(routes::REINIT, formation, Some(node)), &())
            .await
    }

    /// `pgha restart --name N [--scheduled T]` (`at_ms`: unix milliseconds).
    pub async fn restart(
        &self,
        formation: &str,
        node: &str,
        at_ms: Option<u64>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut path = routes::path(routes::RESTART, formation, Some(node));
        if let Some(at) = at_ms {
            path.push_str(&format!("?at_ms={at}"));
        }
        self.post(&path, &()).await
    }

    /// `pgha backup`: asks the primary for a backup.
    pub async fn start_backup(
        &self,
        formation: &str,
        kind: crate::BackupKind,
    ) -> Result<crate::BackupsStatus, ClientError> {
        let path = routes::path(routes::BACKUPS, formation, None);
        self.post(&path, &crate::BackupStart { kind }).await
    }

    /// `pgha show backups`.
    pub async fn backups(&self, formation: &str) -> Result<crate::BackupsStatus, ClientError> {
        self.get(&routes::path(routes::BACKUPS, formation, None))
            .await
    }

    /// `pgha pause` (true) or `pgha resume` (false).
    pub async fn set_paused(
        &self,
        formation: &str,
        paused: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let path = routes::path(routes::PAUSE, formation, None);
        match paused {
            true => self.post(&path, &()).await,
            false => self.delete(&path).await,
        }
    }

    /// The formation's replication password (`pgha show replication-password`).
    pub async fn replication_password(&self, formation: &str) -> Result<String, ClientError> {
        let path = routes::path(routes::REPLICATION_PASSWORD, formation, None);
        let v: serde_json::Value = self.get(&path).await?;
        Ok(v["replication_password"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Promotes a standby formation (`pgha formation promote`).
    pub async fn promote_formation(
        &self,
        formation: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let path = routes::path(routes::PROMOTE_FORMATION, formation, None);
        self.post(&path, &()).await
    }

    pub async fn info(&self) -> Result<MonitorInfo, ClientError> {
        self.get(routes::INFO).await
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.post(routes::REGISTER, req).await
    }

    pub async fn report(&self, r: &NodeReport) -> Result<Assignment, ClientError> {
        self.post(routes::REPORT, r).await
    }

    pub async fn state(&self, formation: &str) -> Result<FormationStatus, ClientError> {
        self.get(&routes::path(routes::FORMATION_STATE, formation, None))
            .await
    }

    /// Starts a switchover, to `target` when given (`perform promotion`).
    pub async fn switchover(
        &self,
        formation: &str,
        target: Option<&str>,
    ) -> Result<SwitchoverStarted, ClientError> {
        let path = match target {
            Some(t) => routes::path(routes::PROMOTION, formation, Some(t)),
            None => routes::path(routes::SWITCHOVER, formation, None),
        };
        self.post(&path, &()).await
    }

    /// `pgha perform failover --allow-data-loss --reason R`.
    pub async fn forced_failover(
        &self,
        formation: &str,
        req: &crate::ForcedFailoverRequest,
    ) -> Result<crate::ForcedFailoverStarted, ClientError> {
        self.post(&routes::path(routes::FAILOVER, formation, None), req)
            .await
    }

    /// The last `count` events (of one formation), newer than event id `since`.
    pub async fn events(
        &self,
        formation: Option<&str>,
        count: usize,
        since: Option<u64>,
    ) -> Result<Vec<Event>, ClientError> {
        let f = formation
            .map(|f| format!("&formation={f}"))
            .unwrap_or_default();
        let s = since.map(|s| format!("&since={s}")).unwrap_or_default();
        self.get(&format!("{}?count={count}{f}{s}", routes::EVENTS))
            .await
    }
}

/// A controller's answer: the JSON body, or its `{error, code}` as [`ClientError::Api`].
async fn decode<T: DeserializeOwned>(
    base: &str,
    resp: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, ClientError> {
    let unreachable = |e: reqwest::Error| ClientError::Unreachable {
        url: base.to_string(),
        reason: describe(&e),
    };
    let resp = resp.map_err(unreachable)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(e) => ClientError::Api(e.error, e.code),
            Err(_) => ClientError::Protocol {
                url: base.to_string(),
                reason: format!("HTTP {status}"),
            },
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
        url: base.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_out_of_urls() {
        assert_eq!(
            split_secret("http://pgha:s3cret@10.0.0.9:5440"),
            (
                "http://10.0.0.9:5440".to_string(),
                Some("s3cret".to_string())
            )
        );
        assert_eq!(
            split_secret("http://10.0.0.9:5440"),
            ("http://10.0.0.9:5440".to_string(), None)
        );
        assert_eq!(redact("http://pgha:s3cret@h:5440"), "http://***@h:5440");
        assert!(!redact("http://pgha:s3cret@h:5440").contains("s3cret"));
    }

    #[test]
    fn a_url_with_several_hosts_is_one_base_per_controller() {
        assert_eq!(
            split_hosts("https://a:5440,b:5441,[::1]:5442").unwrap(),
            vec!["https://a:5440", "https://b:5441", "https://[::1]:5442"]
        );
        assert_eq!(split_hosts("http://a:1/v1").unwrap(), vec!["http://a:1/v1"]);
        assert!(split_hosts("http://a:1,,b:2").is_err());
        let (base, secret) = split_secret("https://pgha:s3cret@a:5440,b:5441");
        assert_eq!(base, "https://a:5440,b:5441");
        assert_eq!(secret.as_deref(), Some("s3cret"));
        let c =
            MonitorClient::new("http://127.0.0.1:1,127.0.0.1:2/", Duration::from_secs(1)).unwrap();
        assert_eq!(c.urls(), ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
    }

    /// Two controllers, the first unreachable and the second a follower: the request is
    /// passed on to each, and the error says why the last one refused.
    #[tokio::test]
    async fn a_request_passes_over_unreachable_controllers_and_followers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let follower = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = follower.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = follower.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body =
                    r#"{"error":"not the leader; the leader is http://x:1","code":"not_leader"}"#;
                let resp = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let c = MonitorClient::new(
            &format!("http://127.0.0.1:{dead_port},127.0.0.1:{port}"),
            Duration::from_secs(2),
        )
        .unwrap();
        let e = c.info().await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotLeader), "{e}");
        assert!(e.to_string().contains("http://x:1"), "{e}");
    }

    #[test]
    fn a_client_that_cannot_carry_its_secret_is_an_error_not_a_client_without_it() {
        let e = MonitorClient::new("http://pgha:bad\nsecret@h:5440", Duration::from_secs(1))
            .err()
            .expect("a client was built without its secret")
            .to_string();
        assert!(e.contains("join secret") && !e.contains("bad"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("monitor.url");
        std::fs::write(&file, "http://pgha:s3cret@127.0.0.1:5440\n").unwrap();
        let c =
            MonitorClient::new(&format!("@{}", file.display()), Duration::from_secs(1)).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:5440");
        let e = MonitorClient::new("@/nonexistent/monitor.url", Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/monitor.url"), "{e}");
    }
}
