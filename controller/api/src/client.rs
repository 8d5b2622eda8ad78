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

#[derive(Clone)]
pub struct MonitorClient {
    base: String,
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
        Ok(MonitorClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// `GET path` as text, whatever the status: (status, body). For endpoints that are
    /// not JSON (`/metrics`) and for tests of refusals.
    pub async fn get_text(&self, path: &str) -> Result<(u16, String), ClientError> {
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        };
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(unreachable)?))
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        let resp = resp.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => ClientError::Api(e.error, e.code),
                Err(_) => ClientError::Protocol {
                    url: self.base.clone(),
                    reason: format!("HTTP {status}"),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            reason: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await;
        self.decode(resp).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await;
        self.decode(resp).await
    }

    async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let resp = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await;
        self.decode(resp).await
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

    /// `pgha restart --name N`.
    pub async fn restart(
        &self,
        formation: &str,
        node: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.post(&routes::path(routes::RESTART, formation, Some(node)), &())
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
