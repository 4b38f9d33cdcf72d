//! Hot deploy: new versions, rollback and removal while events flow; bad modules refused at
//! deploy time; admin auth; persistence and the compiled cache over restarts; `--watch`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use evhost::config::Manifest;
use evhost_tests::{TestHost, event, guest, manifest, one_handler_app};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Time an accepted event may wait before its invocation starts, when the host is not
/// backlogged; an event accepted this long before a rollback has surely started by then.
const START_MARGIN: Duration = Duration::from_millis(200);

fn labelled_app(label: &str) -> Manifest {
    let settings = format!("concurrency = 4\nconfig = {{ label = \"{label}\" }}");
    one_handler_app("worker", "recorder", &["test.work.v1"], &settings)
}

fn settings(label: &str, subscribe: &[&str]) -> String {
    let types: Vec<String> = subscribe.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "subscribe = [{}]\nconcurrency = 4\nconfig = {{ label = \"{label}\" }}\n",
        types.join(", ")
    )
}

async fn put_handler(
    host: &TestHost,
    name: &str,
    module: Vec<u8>,
    config: Option<String>,
) -> reqwest::Response {
    let mut form = Form::new().part("module", Part::bytes(module).file_name("module.wasm"));
    if let Some(config) = config {
        form = form.text("config", config);
    }
    host.http
        .put(host.url(&format!("/admin/handlers/{name}")))
        .multipart(form)
        .send()
        .await
        .expect("the host answers")
}

fn module(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("a built guest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_and_a_rollback_go_live_while_events_flow() {
    let host = Arc::new(TestHost::start(labelled_app("v1")).await);

    // A steady producer: one event every few milliseconds, each stamped with when its POST
    // began, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (host, stop) = (host.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent: Vec<(String, Instant)> = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("e-{i:04}");
                let started = Instant::now();
                let response = host
                    .post_structured(&event(&id, "test.work.v1", json!({})))
                    .await;
                assert_eq!(response.status(), 202, "event {id} refused");
                sent.push((id, started));
                i += 1;
                tokio::time::sleep(Duration::from_millis(12)).await;
            }
            sent
        })
    };

    tokio::time::sleep(Duration::from_millis(600)).await;
    let deploy_started = Instant::now();
    let response = put_handler(
        &host,
        "worker",
        module("recorder"),
        Some(settings("v2", &["test.work.v1"])),
    )
    .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let v2_live = Instant::now();
    assert_eq!(host.handler_info("worker").await.version, 2);

    tokio::time::sleep(Duration::from_millis(600)).await;
    let rollback_started = Instant::now();
    let response = host.post("/admin/handlers/worker/rollback").await;
    assert_eq!(response.status(), 200);
    let v1_back = Instant::now();
    assert_eq!(host.handler_info("worker").await.version, 1);

    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = producer.await.expect("the producer");
    host.wait_idle(WAIT).await;

    // Nothing failed, nothing was lost, each event was handled once, by one version.
    assert_eq!(host.state("worker", "count").await, Some(json!(sent.len())));
    let dead = host.dead_letters(&[]).await;
    assert!(dead.is_empty(), "{dead:?}");
    let (mut before, mut during, mut after) = (0, 0, 0);
    for (id, posted) in &sent {
        let label = host.state("worker", &format!("handled/{id}")).await;
        let label = label.unwrap_or_else(|| panic!("{id} was never handled"));
        if *posted < deploy_started {
            assert!(label == "v1" || label == "v2", "{id}: {label}");
            before += 1;
        } else if *posted > v2_live && *posted + START_MARGIN < rollback_started {
            assert_eq!(label, "v2", "{id} arrived after the swap");
            during += 1;
        } else if *posted > v1_back {
            assert_eq!(label, "v1", "{id} arrived after the rollback");
            after += 1;
        }
    }
    assert!(
        before > 10 && during > 10 && after > 10,
        "{before} {during} {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_and_settings_are_400s_and_the_live_version_stays() {
    let host = TestHost::start(labelled_app("v1")).await;
    let good = Some(settings("v2", &["test.work.v1"]));
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "a core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core wasm module, not a component",
        ),
        (
            "not wasm",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "not a valid component",
        ),
        (
            "an empty component",
            b"\0asm\x0d\0\x01\0".to_vec(),
            "does not export",
        ),
        (
            "an unknown import",
            module("alien"),
            "imports something the host does not provide",
        ),
    ];
    for (what, bytes, expected) in cases {
        let response = put_handler(&host, "worker", bytes, good.clone()).await;
        assert_eq!(response.status(), 400, "{what}");
        let problem: Value = response.json().await.expect("a problem");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(expected), "{what}: {detail}");
    }
    let response = put_handler(
        &host,
        "worker",
        module("recorder"),
        Some("subscribe = []\nconcurency = 2".into()),
    )
    .await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("a problem");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("`concurency`") && detail.contains("`subscribe`"),
        "{detail}"
    );
    let tiny = "subscribe = [\"test.work.v1\"]\nmemory_mb = 1\n";
    let response = put_handler(&host, "worker", module("recorder"), Some(tiny.into())).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("a problem");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("of memory to start, over its `memory_mb` of 1"),
        "{detail}"
    );
    let response = put_handler(&host, "newcomer", module("recorder"), None).await;
    assert_eq!(response.status(), 400, "a new handler needs its settings");
    let response = put_handler(&host, "Bad Name", module("recorder"), good.clone()).await;
    assert_eq!(response.status(), 400);

    // Still version 1, still working.
    assert_eq!(host.handler_info("worker").await.version, 1);
    assert_eq!(
        host.post_structured(&event("after", "test.work.v1", json!({})))
            .await
            .status(),
        202
    );
    host.wait_idle(WAIT).await;
    assert_eq!(
        host.state("worker", "handled/after").await,
        Some(json!("v1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_change_at_the_swap_and_removal_dead_letters_what_was_pending() {
    let host = TestHost::start(labelled_app("v1")).await;
    // Before: nobody takes test.extra.v1.
    assert_eq!(
        host.post_structured(&event("x-0", "test.extra.v1", json!({})))
            .await
            .status(),
        202
    );
    let response = put_handler(
        &host,
        "worker",
        module("recorder"),
        Some(settings("v2", &["test.work.v1", "test.extra.v1"])),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        host.post_structured(&event("x-1", "test.extra.v1", json!({})))
            .await
            .status(),
        202
    );
    host.wait_idle(WAIT).await;
    assert_eq!(host.state("worker", "handled/x-1").await, Some(json!("v2")));
    assert_eq!(
        host.state("worker", "handled/x-0").await,
        None,
        "routed before the swap: nobody"
    );

    // Slow it down so that removal finds work pending.
    let slow = "subscribe = [\"test.work.v1\"]\nconcurrency = 1\nconfig = { label = \"slow\" }\n";
    assert_eq!(
        put_handler(&host, "worker", module("recorder"), Some(slow.into()))
            .await
            .status(),
        200
    );
    let batch: Vec<Value> = (0..6)
        .map(|i| event(&format!("p-{i}"), "test.work.v1", json!({"sleep_ms": 200})))
        .collect();
    assert_eq!(host.post_batch(&batch).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let removed = host.delete("/admin/handlers/worker").await;
    assert_eq!(removed.status(), 200);
    let removed: Value = removed.json().await.expect("JSON");
    let dead = removed["dead_lettered"].as_u64().expect("a count");
    assert!(dead >= 4, "only {dead} dead-lettered");
    let gone = host.get("/admin/handlers/worker").await;
    assert_eq!(gone.status(), 404);
    // New events of its types are kept, with no delivery.
    assert_eq!(
        host.post_structured(&event("orphan", "test.work.v1", json!({})))
            .await
            .status(),
        202
    );
    let letters = host.dead_letters(&[("handler", "worker")]).await;
    assert_eq!(letters.len() as u64, dead);
    let first_errors: Vec<Option<&str>> = letters
        .iter()
        .map(|l| l.errors.first().map(|e| e.error.as_str()))
        .collect();
    assert!(
        first_errors.iter().all(|e| *e == Some("handler removed")),
        "{letters:?}"
    );

    // A redeploy and a redrive recover them.
    assert_eq!(
        put_handler(
            &host,
            "worker",
            module("recorder"),
            Some(settings("back", &["test.work.v1"]))
        )
        .await
        .status(),
        201
    );
    let redriven = host.post("/admin/deadletters/redrive?handler=worker").await;
    assert_eq!(redriven.status(), 200);
    host.wait_idle(WAIT).await;
    let handled = handled_count(&host, &batch).await;
    assert_eq!(handled, 6, "every pending event was handled in the end");
}

/// How many of `events` the worker handled (by any label).
async fn handled_count(host: &TestHost, events: &[Value]) -> usize {
    let mut handled = 0;
    for e in events {
        let id = e["id"].as_str().expect("an id");
        if host
            .state("worker", &format!("handled/{id}"))
            .await
            .is_some()
        {
            handled += 1;
        }
    }
    handled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_survive_a_restart_and_load_from_the_compiled_cache() {
    let cache = tempfile::tempdir().expect("a temporary directory");
    let data = tempfile::tempdir().expect("a temporary directory");
    let cache_dir = cache.path().to_path_buf();
    let host = TestHost::start_configured(labelled_app("v1"), data, |o| {
        o.cache_dir = Some(cache_dir.clone())
    })
    .await
    .expect("starts");
    let misses = compile_cache(&host, "miss").await;
    assert!(misses >= 1, "the first start compiles");
    // A handler deployed over the API, not in the manifest, and a second version.
    let config = "subscribe = [\"test.other.v1\"]\nconfig = { label = \"api\" }\n";
    assert_eq!(
        put_handler(&host, "extra", module("recorder"), Some(config.into()))
            .await
            .status(),
        201
    );
    assert_eq!(
        put_handler(
            &host,
            "worker",
            module("recorder"),
            Some(settings("v2", &["test.work.v1"]))
        )
        .await
        .status(),
        200
    );
    let (manifest, data) = host.stop().await;

    let cache_dir = cache.path().to_path_buf();
    let host =
        TestHost::start_configured(manifest, data, |o| o.cache_dir = Some(cache_dir.clone()))
            .await
            .expect("restarts");
    // The manifest is unchanged since the first start, so it is not deployed again: the
    // stored version 2 stays live.
    let worker = host.handler_info("worker").await;
    assert_eq!(worker.version, 2, "{worker:?}");
    assert_eq!(
        worker.versions.as_ref().map(Vec::len),
        Some(2),
        "{worker:?}"
    );
    assert_eq!(host.handler_info("extra").await.version, 1);
    assert_eq!(
        compile_cache(&host, "miss").await,
        0,
        "a restart recompiled"
    );
    // Both handlers run one module: it is compiled once, by digest, from the cache.
    assert_eq!(compile_cache(&host, "hit").await, 1);
    assert_eq!(
        host.post_structured(&event("o-1", "test.other.v1", json!({})))
            .await
            .status(),
        202
    );
    host.wait_idle(WAIT).await;
    assert_eq!(host.state("extra", "handled/o-1").await, Some(json!("api")));
    // Rollback history survives too.
    let back = host.post("/admin/handlers/worker/rollback").await;
    assert_eq!(back.status(), 200);
    let again = host.post("/admin/handlers/worker/rollback").await;
    assert_eq!(again.status(), 409, "nothing before version 1");
}

async fn compile_cache(host: &TestHost, result: &str) -> u64 {
    let text = host.metrics().await;
    let prefix = format!("evhost_compile_cache_lookups{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_requires_the_token_when_one_is_set() {
    let data = tempfile::tempdir().expect("a temporary directory");
    let host = TestHost::start_configured(labelled_app("v1"), data, |o| {
        o.admin_token = Some("s3cret-admin-token".into())
    })
    .await
    .expect("starts");
    for (token, status) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("s3cret-admin-token"), 200),
    ] {
        for path in ["/admin/handlers", "/admin/events", "/admin/deadletters"] {
            let mut request = host.http.get(host.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("answers");
            assert_eq!(response.status(), status, "{path} with {token:?}");
        }
    }
    // A small body: the host answers 401 without reading the rest, which a large upload
    // would see as a broken pipe.
    let unauthorized = put_handler(&host, "worker", b"\0asm".to_vec(), None).await;
    assert_eq!(unauthorized.status(), 401);
    // Ingress and health do not need it.
    assert_eq!(
        host.post_structured(&event("t-1", "test.work.v1", json!({})))
            .await
            .status(),
        202
    );
    let health = host.get("/healthz").await;
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_host_refuses_a_non_loopback_address() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("a port");
    let data = tempfile::tempdir().expect("a temporary directory");
    let options = evhost::Options::new(data.path());
    let error = evhost::run(listener, options, std::future::pending())
        .await
        .expect_err("must refuse");
    assert!(
        format!("{error:#}").contains("without a token"),
        "{error:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redeploys_a_handler_when_its_module_file_changes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("worker.wasm");
    std::fs::copy(guest("recorder"), &path).expect("copy");
    let app = manifest(&format!(
        r#"
        [app]
        name = "watched"

        [[handler]]
        name = "worker"
        module = "{}"
        subscribe = ["test.work.v1"]
        "#,
        path.display()
    ));
    let data = tempfile::tempdir().expect("a temporary directory");
    let host = TestHost::start_configured(app, data, |o| o.watch = true)
        .await
        .expect("starts");
    assert_eq!(host.handler_info("worker").await.version, 1);

    // A rebuild lands a different module at the same path.
    std::fs::copy(guest("misbehave"), &path).expect("copy");
    let expected = evhost::runtime::module_sha256(&module("misbehave"));
    host.eventually("the new module is live", WAIT, || async {
        let info = host.handler_info("worker").await;
        info.version == 2 && info.module_sha256 == expected
    })
    .await;
    assert_eq!(
        host.post_structured(&event("w-1", "test.work.v1", json!({})))
            .await
            .status(),
        202
    );
    host.wait_idle(WAIT).await;
    assert!(
        host.state("worker", "seen/w-1").await.is_some(),
        "misbehave's mark of a normal event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_of_a_removed_handler_waits_for_its_redeploy_and_counts_stay_true() {
    let host = TestHost::start(one_handler_app("other", "recorder", &["test.other.v1"], "")).await;
    let config = Some(format!(
        "{}max_pending = 3\n",
        settings("v1", &["test.work.v1"])
    ));
    assert_eq!(
        put_handler(&host, "worker", module("recorder"), config.clone())
            .await
            .status(),
        201
    );
    let poison = event("poison-1", "test.work.v1", json!({"fail": "reject"}));
    assert_eq!(host.post_structured(&poison).await.status(), 202);
    let dead = host.wait_dead("poison-1", "worker", WAIT).await;
    assert_eq!(host.delete("/admin/handlers/worker").await.status(), 200);

    // Its handler is gone: nothing to run it, and nothing is changed.
    let refused = host
        .post(&format!("/admin/deadletters/{}/redrive", dead.id))
        .await;
    assert_eq!(refused.status(), 409);
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("`worker`, which is not deployed"),
        "{problem}"
    );
    assert_eq!(
        host.delivery_to("poison-1", "worker").await.status,
        evhost::store::DeliveryStatus::Dead
    );

    // Deployed again, its queue counts what is really there: events fill it to its limit
    // and no further, and drain to zero.
    assert_eq!(
        put_handler(&host, "worker", module("recorder"), config)
            .await
            .status(),
        201
    );
    assert_eq!(host.handler_info("worker").await.pending, 0);
    for i in 0..3 {
        let ok = event(&format!("ok-{i}"), "test.work.v1", json!({"sleep_ms": 300}));
        assert_eq!(host.post_structured(&ok).await.status(), 202, "ok-{i}");
    }
    host.wait_idle(WAIT).await;
    assert_eq!(host.handler_info("worker").await.pending, 0);
    // Now the dead letter can go back.
    let redriven = host
        .post(&format!("/admin/deadletters/{}/redrive", dead.id))
        .await;
    assert_eq!(redriven.status(), 200);
    let again = host.wait_dead("poison-1", "worker", WAIT).await;
    assert_eq!(again.id, dead.id);
    host.wait_idle(WAIT).await;
    assert_eq!(host.handler_info("worker").await.pending, 0);
}
