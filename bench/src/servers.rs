//! The baselines that run as servers, each in its own process like the host:
//!
//! - the **HTTP floor** ([`serve_floor`]): axum, the host's own CloudEvents decoder
//!   ([`evhost::ingress::binding::decode`]), a 202 with the same JSON body as the host's, and
//!   nothing behind it. No server that reads these events can answer faster, so every ingest
//!   scenario is reported as a ratio to it.
//! - the **native pipeline** ([`serve_native`]): the same front door, the host's own store
//!   (durable append, group commit), and a worker that runs the pending deliveries the way
//!   the host's scheduler does, but calls a native Rust function where the host instantiates
//!   a Wasm component. The end-to-end Wasm scenario over this one is what Wasm costs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use evhost::config::{KeySource, Ordering};
use evhost::ingress::binding;
use evhost::name::HandlerName;
use evhost::router::RouteTable;
use evhost::store::{Commit, Durability, Store};
use serde_json::json;
use tokio::sync::{Notify, Semaphore, mpsc};

/// The type the native pipeline's one handler subscribes to (the same as the host's `ack`).
pub const ACK_TYPE: &str = "bench.ack.v1";
/// Pending deliveries read per look at the store, as the host's scheduler does.
const WINDOW: u32 = 256;

/// Serve the HTTP floor on `addr` until the process is killed.
pub async fn serve_floor(addr: SocketAddr) -> Result<()> {
    let app = Router::new()
        .route("/events", post(floor_post))
        .route("/", post(floor_post))
        .layer(DefaultBodyLimit::max(evhost::ingress::DEFAULT_BODY_LIMIT))
        .route("/readyz", get(|| async { "ready" }));
    serve(addr, app).await
}

async fn floor_post(headers: HeaderMap, body: Bytes) -> Response {
    match binding::decode(&headers, &body) {
        Ok(decoded) => accepted(&decoded),
        Err(err) => err.into_response(),
    }
}

/// The host's 202 body (without log positions, which the floor does not have).
fn accepted(decoded: &binding::Decoded) -> Response {
    let accepted: Vec<_> = decoded
        .events
        .iter()
        .map(|e| json!({"source": e.source(), "id": e.id(), "duplicate": false}))
        .collect();
    let body = json!({"mode": decoded.mode.as_str(), "accepted": accepted});
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

async fn serve(addr: SocketAddr, app: Router) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

struct Native {
    store: Store,
    routes: RouteTable,
    handler: HandlerName,
    wake: Notify,
}

/// Serve the native pipeline on `addr`, with its store in `data_dir`.
/// `concurrency` is the worker's limit of deliveries in flight, as the `ack` handler's.
pub async fn serve_native(
    addr: SocketAddr,
    data_dir: &Path,
    durability: Durability,
    concurrency: usize,
) -> Result<()> {
    let store = Store::open(data_dir, durability)?;
    let handler = HandlerName::new("ack")?;
    let mut routes = RouteTable::default();
    routes.subscribe(
        &handler,
        &[ACK_TYPE.to_owned()],
        Ordering::Unordered,
        KeySource::PartitionKey,
    );
    let native = Arc::new(Native {
        store,
        routes,
        handler,
        wake: Notify::new(),
    });
    tokio::spawn(worker(native.clone(), concurrency));
    let app = Router::new()
        .route("/events", post(native_post))
        .layer(DefaultBodyLimit::max(evhost::ingress::DEFAULT_BODY_LIMIT))
        .route("/readyz", get(|| async { "ready" }))
        .with_state(native);
    serve(addr, app).await
}

async fn native_post(
    State(native): State<Arc<Native>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let decoded = match binding::decode(&headers, &body) {
        Ok(decoded) => decoded,
        Err(err) => return err.into_response(),
    };
    let response = accepted(&decoded);
    let routed = decoded
        .events
        .into_iter()
        .map(|e| native.routes.route(e))
        .collect();
    match native.store.append(routed).await {
        Ok(_) => {
            native.wake.notify_one();
            response
        }
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")).into_response(),
    }
}

/// The handler's work, natively: the `ack` fixture does nothing and succeeds.
#[inline(never)]
pub fn native_ack(event: &evhost::event::Event) -> Result<(), String> {
    std::hint::black_box(event);
    Ok(())
}

/// The host scheduler's loop, for one unordered handler: keep a backlog read incrementally
/// from the store (only deliveries appended since the last read), start each one under the
/// concurrency limit, and look again when one finishes or more are appended.
async fn worker(native: Arc<Native>, concurrency: usize) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<i64>();
    let mut waiting = std::collections::VecDeque::new();
    let mut running = 0usize;
    let mut read_up_to = 0i64;
    loop {
        let room = (WINDOW as usize).saturating_sub(waiting.len() + running);
        if room > 0 {
            match native
                .store
                .pending(&native.handler, read_up_to, room as u32)
                .await
            {
                Ok(pending) => {
                    for delivery in pending {
                        read_up_to = read_up_to.max(delivery.id);
                        waiting.push_back(delivery);
                    }
                }
                Err(err) => eprintln!("native pending read failed: {err:#}"),
            }
        }
        while let Some(delivery) = waiting.pop_front() {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                waiting.push_front(delivery);
                break;
            };
            running += 1;
            let native = native.clone();
            let finished = finished_tx.clone();
            tokio::spawn(async move {
                let id = delivery.id;
                if native_ack(&delivery.event).is_ok() {
                    let commit = Commit {
                        delivery_id: id,
                        handler: native.handler.clone(),
                        state_reads: Vec::new(),
                        state_writes: Vec::new(),
                        emitted: Vec::new(),
                    };
                    if let Err(err) = native.store.commit(commit).await {
                        eprintln!("native commit failed: {err:#}");
                    }
                }
                drop(permit);
                let _ = finished.send(id);
            });
        }
        tokio::select! {
            Some(_) = finished_rx.recv() => {
                running -= 1;
                while finished_rx.try_recv().is_ok() {
                    running -= 1;
                }
            }
            () = native.wake.notified() => {}
        }
    }
}
