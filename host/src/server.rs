//! The HTTP server: the host's router on hyper, with the limits a listener open to producers
//! needs and `axum::serve` does not have.
//!
//! - **Header read timeout**: a connection whose request headers (or, between requests, whose
//!   next request) do not arrive within [`HttpLimits::header_read_timeout`] is closed, so a
//!   client trickling bytes (slowloris) or an idle keep-alive connection holds its slot for a
//!   bounded time.
//! - **Connection cap**: at most [`HttpLimits::max_connections`] connections are served at
//!   once; past it the host stops accepting, and new connections wait in the kernel's backlog
//!   until one closes, instead of running the process out of file descriptors.
//! - **Bounded stop**: on shutdown the host stops accepting, asks every connection to finish
//!   its request and close, and after `drain` closes those still open.
//!
//! The request *body* is bounded by ingress itself (size and read time), which answers the
//! client with a problem.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// How long request headers may take when not configured.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Connections served at once when not configured: below the usual 1024 open files.
pub const DEFAULT_MAX_CONNECTIONS: usize = 900;

/// After a failed `accept` (out of file descriptors, say), wait this long before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The server's limits (module docs).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serve `app` on `listener` until `shutdown` completes; then let open requests finish for
/// up to `drain`, close what is still open, and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Reap what has finished, so the set holds only open connections.
        while connections.try_join_next().is_some() {}
        let service =
            TowerToHyperService::new(app.clone().map_request(
                |request: hyper::Request<Incoming>| request.map(axum::body::Body::new),
            ));
        let builder = builder.clone();
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let _slot = slot;
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(err) = result {
                            tracing::debug!(%peer, error = %err, "connection ended");
                        }
                        break;
                    }
                    changed = stopping.changed() => {
                        // Finish the request in flight, then close; idle ones close now.
                        connection.as_mut().graceful_shutdown();
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }

    drop(listener);
    stop.send_replace(true);
    let open = connections.len();
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            ?drain,
            "connections still open after the grace period: closing them"
        );
        connections.shutdown().await;
    } else if open > 0 {
        tracing::debug!(open, "every connection closed");
    }
}
