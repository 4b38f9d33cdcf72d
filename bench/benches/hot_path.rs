//! Micro-benchmarks of the hot path, one stage at a time:
//!
//! - `decode/*`: the CloudEvents HTTP binding, per content mode
//!   ([`evhost::ingress::binding::decode`]);
//! - `invoke/*`: one fresh instance of the `ack` fixture, instantiated and called: through
//!   the host's `Runtime::invoke`, through bare wasmtime with the host's settings and with
//!   the settings the bench recommends, and a warm instance called again;
//! - `store/*`: one group commit of 64 concurrent requests (appends, or commits of
//!   invocation outcomes), with and without fsync.
//!
//! Run with `cargo bench -p evhost-bench` (builds the guests first if they are missing).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use evhost::name::HandlerName;
use evhost::router::{NewDelivery, Routed};
use evhost::store::{Commit, Durability, Store};
use evhost_bench::payload::{Body, Mode, Payload};
use evhost_bench::wasm::{Bare, EngineVariant, HostInvoke, sample_event, to_wit};
use http_body_util::BodyExt as _;

/// Requests per store group in `store/*`.
const GROUP: usize = 64;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn ack_wasm() -> PathBuf {
    let path = target_dir().join("wasm32-wasip2/release/ack.wasm");
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                "ack",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "failed to build the ack guest");
    }
    path
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn decode(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("decode");
    for mode in [Mode::Binary, Mode::Structured, Mode::Batch(10)] {
        let payload = Payload {
            mode,
            body: Body::Counter {
                ty: "bench.ack.v1".into(),
            },
            prefix: "b".into(),
            authority: "127.0.0.1:1".into(),
            path: "/events".into(),
        };
        let (parts, body) = payload.request(1).into_parts();
        let body = rt
            .block_on(body.collect())
            .expect("an in-memory body")
            .to_bytes();
        group.throughput(Throughput::Elements(mode.events_per_request()));
        group.bench_function(mode.label(), |b| {
            b.iter(|| {
                evhost::ingress::binding::decode(&parts.headers, std::hint::black_box(&body))
                    .expect("valid")
            })
        });
    }
    group.finish();
}

fn invoke(c: &mut Criterion) {
    let rt = runtime();
    let ack = ack_wasm();
    let wasm = std::fs::read(&ack).expect("ack.wasm");
    let cache = Some(target_dir().join("evhost-bench/cache"));
    let event = sample_event();
    let wit = to_wit(&event);
    let mut group = c.benchmark_group("invoke");
    group.measurement_time(Duration::from_secs(3));

    let host = HostInvoke::new("ack", &ack, "bench.ack.v1", cache.clone()).expect("ack loads");
    group.bench_function("evhost_runtime_invoke_fresh", |b| {
        b.iter(|| rt.block_on(host.invoke(&event)).expect("ack succeeds"))
    });
    drop(host);

    let recommended = EngineVariant {
        keep_resident: 2 << 20,
        pagemap_scan: true,
        ..EngineVariant::HOST
    };
    for (name, variant) in [
        ("wasmtime_fresh_host_config", EngineVariant::HOST),
        ("wasmtime_fresh_keep_resident_pagemap", recommended),
    ] {
        let bare = Bare::new(variant, &wasm, cache.as_deref()).expect("ack compiles");
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(bare.fresh_call(&wit)).expect("ack succeeds"))
        });
    }
    let bare = Bare::new(EngineVariant::HOST, &wasm, cache.as_deref()).expect("ack compiles");
    group.bench_function("wasmtime_reused_instance_call", |b| {
        b.iter_custom(|iters| {
            rt.block_on(bare.reused_for(&wit, iters))
                .expect("ack succeeds")
        })
    });
    group.finish();
}

fn ack() -> HandlerName {
    HandlerName::new("ack").expect("a valid name")
}

/// `GROUP` events, each with one delivery to `ack`.
fn routed(prefix: &str, n: usize) -> Vec<Routed> {
    (0..n)
        .map(|i| {
            let mut event = sample_event().into_builder();
            event.id = Some(format!("{prefix}-{i}"));
            Routed {
                event: event.build().expect("a valid event"),
                deliveries: vec![NewDelivery {
                    handler: ack(),
                    ordering_key: None,
                }],
            }
        })
        .collect()
}

fn store(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(GROUP as u64));
    group.sample_size(30);
    for (label, durability) in [("fsync", Durability::Full), ("no_fsync", Durability::Off)] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Arc::new(Store::open(dir.path(), durability).expect("the store opens"));
        let mut round = 0u64;
        group.bench_function(format!("append_{GROUP}_concurrent_{label}"), |b| {
            b.iter_batched(
                || {
                    round += 1;
                    routed(&format!("a{round}"), GROUP)
                },
                |events| {
                    rt.block_on(async {
                        let mut tasks = tokio::task::JoinSet::new();
                        for one in events {
                            let store = store.clone();
                            tasks.spawn(async move { store.append(vec![one]).await });
                        }
                        while let Some(done) = tasks.join_next().await {
                            done.expect("no panic").expect("appended");
                        }
                    })
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function(format!("commit_{GROUP}_concurrent_{label}"), |b| {
            b.iter_batched(
                || {
                    round += 1;
                    rt.block_on(async {
                        store
                            .append(routed(&format!("c{round}"), GROUP))
                            .await
                            .expect("appended");
                        store
                            .pending(&ack(), 0, GROUP as u32)
                            .await
                            .expect("pending")
                    })
                },
                |pending| {
                    rt.block_on(async {
                        let mut tasks = tokio::task::JoinSet::new();
                        for delivery in pending {
                            let store = store.clone();
                            tasks.spawn(async move {
                                store
                                    .commit(Commit {
                                        delivery_id: delivery.id,
                                        handler: ack(),
                                        state_reads: Vec::new(),
                                        state_writes: Vec::new(),
                                        emitted: Vec::new(),
                                    })
                                    .await
                            });
                        }
                        while let Some(done) = tasks.join_next().await {
                            done.expect("no panic").expect("committed");
                        }
                    })
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, decode, invoke, store);
criterion_main!(benches);
