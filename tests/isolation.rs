//! A handler's failure never takes down the host or another handler: a trap, an endless
//! loop and unbounded allocation each fail their own delivery only, while other handlers
//! (and the same handler on other events) keep working. Broken modules fail at start-up
//! with a message naming the handler.

use std::time::{Duration, Instant};

use evhost::store::DeliveryStatus;
use evhost_tests::{TestHost, event, manifest};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Three copies of the misbehaving fixture, each with tight limits and one attempt, beside a
/// well-behaved recorder.
fn misbehaving_app() -> evhost::config::Manifest {
    manifest(
        r#"
        [app]
        name = "isolation"

        [[handler]]
        name = "trapper"
        module = "{guests}/misbehave.wasm"
        subscribe = ["test.trap.v1", "test.fine.v1"]
        max_attempts = 1

        [[handler]]
        name = "looper"
        module = "{guests}/misbehave.wasm"
        subscribe = ["test.loop.v1"]
        timeout_ms = 300
        concurrency = 2
        max_attempts = 1

        [[handler]]
        name = "hog"
        module = "{guests}/misbehave.wasm"
        subscribe = ["test.alloc.v1"]
        memory_mb = 16
        max_attempts = 1

        [[handler]]
        name = "recorder"
        module = "{guests}/recorder.wasm"
        subscribe = ["test.ok.v1"]
        concurrency = 4
        "#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_loop_and_memory_hog_each_fail_alone() {
    let host = TestHost::start(misbehaving_app()).await;

    let bad = [
        event("trap-1", "test.trap.v1", json!({})),
        event("loop-1", "test.loop.v1", json!({})),
        event("loop-2", "test.loop.v1", json!({})),
        event("alloc-1", "test.alloc.v1", json!({})),
    ];
    for e in &bad {
        assert_eq!(host.post_structured(e).await.status(), 202);
    }
    // While two loopers spin at full concurrency, ingress and the recorder keep going.
    let started = Instant::now();
    for i in 0..20 {
        let e = event(&format!("ok-{i}"), "test.ok.v1", json!({}));
        assert_eq!(host.post_structured(&e).await.status(), 202);
    }
    host.eventually("the recorder saw all 20 events", WAIT, || async {
        host.state("recorder", "count").await == Some(json!(20))
    })
    .await;
    let recorder_done = started.elapsed();

    let trapped = host.wait_dead("trap-1", "trapper", WAIT).await;
    assert!(
        trapped
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("trapped")),
        "{trapped:?}"
    );
    for id in ["loop-1", "loop-2"] {
        let looped = host.wait_dead(id, "looper", WAIT).await;
        assert!(
            looped
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("timed out")),
            "{looped:?}"
        );
    }
    let hog = host.wait_dead("alloc-1", "hog", WAIT).await;
    assert!(
        hog.last_error
            .as_deref()
            .is_some_and(|e| e.contains("memory limit of 16 MiB")),
        "{hog:?}"
    );
    // The endless loops were cut at their timeout, not allowed to hold the others back.
    assert!(
        recorder_done < Duration::from_secs(10),
        "the recorder took {recorder_done:?} beside the loopers"
    );

    // The same module that trapped still handles its other events, and the host is healthy.
    let fine = event("fine-1", "test.fine.v1", json!({}));
    assert_eq!(host.post_structured(&fine).await.status(), 202);
    host.eventually("trapper handles a good event", WAIT, || async {
        host.state("trapper", "seen/fine-1").await.is_some()
    })
    .await;
    let health = host.get("/healthz").await;
    assert_eq!(health.status(), 200);
    // A failed delivery's effects were never committed.
    assert_eq!(host.state("trapper", "seen/trap-1").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_delivery_is_retried_then_dead_lettered() {
    let host = TestHost::start(manifest(
        r#"
        [app]
        name = "retry"

        [[handler]]
        name = "recorder"
        module = "{guests}/recorder.wasm"
        subscribe = ["test.ok.v1"]
        max_attempts = 3
        backoff = { initial_ms = 10, max_ms = 20 }
        "#,
    ))
    .await;
    let failing = event("fails", "test.ok.v1", json!({"fail": "retry"}));
    assert_eq!(host.post_structured(&failing).await.status(), 202);
    let rejected = event("rejected", "test.ok.v1", json!({"fail": "reject"}));
    assert_eq!(host.post_structured(&rejected).await.status(), 202);

    let retried = host.wait_dead("fails", "recorder", WAIT).await;
    assert_eq!(retried.attempts, 3, "{retried:?}");
    let rejected = host.wait_dead("rejected", "recorder", WAIT).await;
    assert_eq!(
        rejected.attempts, 1,
        "a reject is not retried: {rejected:?}"
    );
    assert!(
        rejected
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("rejected")),
        "{rejected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invocations_of_one_key_lose_no_update() {
    // Unordered, many in flight, every invocation read-modify-writes the same two keys: the
    // commit detects the stale read and re-runs the invocation instead of losing a write.
    let host = TestHost::start(manifest(
        r#"
        [app]
        name = "conflicts"

        [[handler]]
        name = "recorder"
        module = "{guests}/recorder.wasm"
        subscribe = ["test.ok.v1"]
        concurrency = 16
        max_attempts = 1
        "#,
    ))
    .await;
    let batch: Vec<Value> = (0..60)
        .map(|i| event(&format!("c-{i}"), "test.ok.v1", json!({})))
        .collect();
    assert_eq!(host.post_batch(&batch).await.status(), 202);
    host.wait_idle(WAIT).await;
    assert_eq!(host.state("recorder", "count").await, Some(json!(60)));
    let seen = host
        .state("recorder", "seen/_")
        .await
        .expect("the recorder's list");
    assert_eq!(seen.as_array().map(Vec::len), Some(60), "{seen}");
    let log = host.event_log().await;
    assert_eq!(log.len(), 60);
    for logged in &log {
        let statuses: Vec<DeliveryStatus> = logged.deliveries.iter().map(|d| d.status).collect();
        assert_eq!(statuses, [DeliveryStatus::Done], "{logged:?}");
    }
}

/// Start a host whose one handler has `module`; return the start-up error.
async fn start_error(module: &std::path::Path) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let data = tempfile::tempdir().expect("a temporary directory");
    let mut options = evhost::Options::new(data.path());
    options.manifest = Some(manifest(&format!(
        r#"
        [app]
        name = "broken"

        [[handler]]
        name = "broken-handler"
        module = "{}"
        subscribe = ["test.ok.v1"]
        "#,
        module.display()
    )));
    let error = evhost::run(listener, options, std::future::pending())
        .await
        .expect_err("a broken module fails the start");
    format!("{error:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_modules_fail_at_start_naming_the_handler() {
    let dir = tempfile::tempdir().expect("a temporary directory");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let error = start_error(&core).await;
    assert!(error.contains("`broken-handler`"), "{error}");
    assert!(
        error.contains("core wasm module, not a component"),
        "{error}"
    );

    // An empty component: valid, but it exports nothing.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").expect("write");
    let error = start_error(&empty).await;
    assert!(error.contains("`broken-handler`"), "{error}");
    assert!(error.contains("does not export"), "{error}");

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not wasm at all").expect("write");
    let error = start_error(&garbage).await;
    assert!(error.contains("`broken-handler`"), "{error}");
    assert!(error.contains("not a valid component"), "{error}");

    let error = start_error(&dir.path().join("missing.wasm")).await;
    assert!(error.contains("`broken-handler`"), "{error}");
    assert!(error.contains("failed to read module"), "{error}");
}
