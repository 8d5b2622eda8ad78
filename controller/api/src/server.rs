//! The HTTP server the controller and the agent both serve their routers with (feature
//! `server`). Unlike a plain `axum::serve`, it is bounded, so that idle or slow clients
//! cannot take the process's file descriptors (an agent that cannot open a file or a
//! socket can neither report nor fence):
//! - at most `max_connections` connections are open at once; further clients wait in the
//!   kernel's accept queue, holding no descriptor of ours;
//! - a client must send its request headers within `header_read_timeout` (this also ends
//!   idle keep-alive connections), and a connection lives at most `max_connection_age`;
//! - one source address holds at most `max_per_source` of the connections (more are
//!   closed at once), so a single flooding host cannot starve the others: HAProxy's
//!   health checks, the agents' reports;
//! - a request (its body included: hyper sets no deadline on a body) must be read and
//!   answered within `request_timeout`, or it is answered 408 and the connection closed;
//! - `allow`, when set, names the only networks whose connections are served;
//! - accept errors (EMFILE, ENFILE) are logged and retried after a pause, never fatal.
//!
//! - with a TLS configuration, connections are TLS (rustls) and the handshake must end
//!   within `header_read_timeout`.
//!
//! Each request carries the client's address as
//! `axum::extract::ConnectInfo<std::net::SocketAddr>`.

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Bounds on what clients may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections one source address may hold at once.
    pub max_per_source: usize,
    pub header_read_timeout: Duration,
    /// Reading a request (body included) and answering it.
    pub request_timeout: Duration,
    pub max_connection_age: Duration,
    /// Networks whose connections are served (empty: every one).
    pub allow: Vec<Network>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_per_source: 64,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(600),
            allow: vec![],
        }
    }
}

/// An address with a prefix length (`10.0.0.0/8`, `fd00::/64`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address or a network (e.g. 10.0.0.0/24, fd00::/64)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }
}

impl Network {
    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address as its IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Open connections per source address.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its source; uncounted when dropped.
struct SourceSlot(Arc<PerSource>, IpAddr);

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot(self.clone(), ip))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; over TLS when
/// `tls` is given (the handshake must end within `header_read_timeout` too).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_source = Arc::new(PerSource::default());
    let limits = Arc::new(limits);
    let mut refused_logged = std::time::Instant::now() - Duration::from_secs(60);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if permits.available_permits() == 0 {
            tracing::warn!(
                max = limits.max_connections,
                "connection limit reached: new connections wait until one closes"
            );
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = &mut shutdown => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("cannot accept a connection ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let allowed = limits.allow.is_empty() || limits.allow.iter().any(|n| n.contains(peer.ip()));
        let slot = allowed
            .then(|| per_source.take(peer.ip(), limits.max_per_source))
            .flatten();
        let Some(slot) = slot else {
            // Closed at once: the permit goes back to the others.
            if refused_logged.elapsed() > Duration::from_secs(10) {
                refused_logged = std::time::Instant::now();
                match allowed {
                    true => tracing::warn!(
                        %peer,
                        max = limits.max_per_source,
                        "a source holds its share of connections: more are closed (logged once per 10 s)"
                    ),
                    false => {
                        tracing::warn!(%peer, "a connection from outside the allowed networks: closed (logged once per 10 s)")
                    }
                }
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let acceptor = acceptor.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            match acceptor {
                None => serve_connection(stream, peer, app, &limits).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, app, &limits).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// One HTTP/1 connection: headers within the limit, each request within its deadline,
/// the whole connection within its age.
async fn serve_connection<IO>(
    io: IO,
    peer: std::net::SocketAddr,
    app: axum::Router,
    limits: &Limits,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request_timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            let call = tower_service::Service::call(&mut app, req);
            match tokio::time::timeout(request_timeout, call).await {
                Ok(resp) => resp.map_err(|never| match never {}),
                Err(_) => {
                    // A body trickled in (or a handler stuck): answered, and the
                    // connection closed so its slot is free again.
                    let mut resp = axum::response::IntoResponse::into_response((
                        axum::http::StatusCode::REQUEST_TIMEOUT,
                        [(axum::http::header::CONNECTION, "close")],
                        format!(
                            "{{\"error\":\"the request was not read and answered within {} ms\",\"code\":\"bad_request\"}}",
                            request_timeout.as_millis()
                        ),
                    ));
                    resp.headers_mut().insert(
                        axum::http::header::CONTENT_TYPE,
                        axum::http::HeaderValue::from_static("application/json"),
                    );
                    Ok(resp)
                }
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    // Past its age the connection is dropped, whatever it is doing.
    let _ = tokio::time::timeout(limits.max_connection_age, conn).await;
}
