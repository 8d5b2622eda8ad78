//! Typed client of the controller's HTTP API, shared by the agent and the CLI.

use pgha_api::{
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
    Api(String, String),
    #[error("monitor at {url} answered something unexpected: {reason}")]
    Protocol { url: String, reason: String },
}

impl ClientError {
    /// The API error code, when the monitor refused the request.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api(_, code) => Some(code),
            _ => None,
        }
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
    pub fn new(base: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .unwrap_or_default();
        MonitorClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn url(&self) -> &str {
        &self.base
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

    pub async fn info(&self) -> Result<MonitorInfo, ClientError> {
        self.get("/v1/info").await
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.post("/v1/nodes", req).await
    }

    pub async fn report(&self, r: &NodeReport) -> Result<Assignment, ClientError> {
        self.post("/v1/report", r).await
    }

    pub async fn state(&self, formation: &str) -> Result<FormationStatus, ClientError> {
        self.get(&format!("/v1/formations/{formation}/state")).await
    }

    pub async fn switchover(&self, formation: &str) -> Result<SwitchoverStarted, ClientError> {
        self.post(&format!("/v1/formations/{formation}/switchover"), &())
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
        self.get(&format!("/v1/events?count={count}{f}{s}")).await
    }
}
