//! The HTTP server the controller and the agent both serve their routers with (feature
//! `server`). Unlike a plain `axum::serve`, it is bounded, so that idle or slow clients
//! cannot take the process's file descriptors (an agent that cannot open a file or a
//! socket can neither report nor fence):
//! - at most `max_connections` connections are open at once; further clients wait in the
//!   kernel's accept queue, holding no descriptor of ours;
//! - a client must send its request headers within `header_read_timeout` (this also ends
//!   idle keep-alive connections), and a connection lives at most `max_connection_age`;
//! - accept errors (EMFILE, ENFILE) are logged and retried after a pause, never fatal.
//!
//! - with a TLS configuration, connections are TLS (rustls) and the handshake must end
//!   within `header_read_timeout`.
//!
//! Each request carries the client's address as
//! `axum::extract::ConnectInfo<std::net::SocketAddr>`.

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Bounds on what clients may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
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
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => serve_connection(stream, peer, app, limits).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, app, limits).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// One HTTP/1 connection: headers within the limit, the whole connection within its age.
async fn serve_connection<IO>(io: IO, peer: std::net::SocketAddr, app: axum::Router, limits: Limits)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            let resp = tower_service::Service::call(&mut app, req).await;
            resp.map_err(|never| match never {})
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    // Past its age the connection is dropped, whatever it is doing.
    let _ = tokio::time::timeout(limits.max_connection_age, conn).await;
}
