//! Concurrency rules per handler (unordered, key, serial), back-pressure with 429, rate
//! limits, fairness under CPU-bound handlers, and the metrics that show it all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use evhost::config::Manifest;
use evhost_tests::{TestHost, event, manifest, one_handler_app};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn recorder_app(settings: &str) -> Manifest {
    one_handler_app("recorder", "recorder", &["test.ok.v1"], settings)
}

fn keyed(id: &str, subject: &str, data: Value) -> Value {
    let mut e = event(id, "test.ok.v1", data);
    e["subject"] = json!(subject);
    e
}

/// Samples the recorder's in-flight count until stopped; returns the highest seen.
fn sample_in_flight(host: &TestHost, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    let client = host.client().clone();
    let max = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(handlers) = client.api.handlers().await {
                let in_flight = handlers.first().map_or(0, |h| h.in_flight);
                max.fetch_max(in_flight, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        max.load(Ordering::Relaxed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_while_different_keys_run_in_parallel() {
    let host = TestHost::start(recorder_app(
        "ordering = \"key\"\nkey = \"subject\"\nconcurrency = 8",
    ))
    .await;
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5"];
    let mut batch = Vec::new();
    let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for round in 0..8 {
        for key in keys {
            let id = format!("{key}-{round}");
            batch.push(keyed(&id, key, json!({"sleep_ms": 5})));
            expected.entry(key).or_default().push(id);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_in_flight(&host, stop.clone());
    assert_eq!(host.post_batch(&batch).await.status(), 202);
    host.wait_idle(WAIT).await;
    stop.store(true, Ordering::Relaxed);
    let max_in_flight = sampler.await.expect("the sampler");

    for (key, ids) in &expected {
        let seen = host
            .state("recorder", &format!("seen/{key}"))
            .await
            .expect("seen");
        assert_eq!(seen, json!(ids), "key {key} out of order");
    }
    assert_eq!(host.state("recorder", "count").await, Some(json!(48)));
    assert!(max_in_flight >= 2, "different keys never overlapped");
    assert!(
        max_in_flight <= 8,
        "more than `concurrency` in flight: {max_in_flight}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_runs_one_at_a_time_in_arrival_order() {
    let host = TestHost::start(recorder_app("ordering = \"serial\"\nconcurrency = 8")).await;
    let batch: Vec<Value> = (0..20)
        .map(|i| {
            keyed(
                &format!("s-{i:02}"),
                &format!("subject-{}", i % 3),
                json!({"sleep_ms": 3}),
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_in_flight(&host, stop.clone());
    assert_eq!(host.post_batch(&batch).await.status(), 202);
    host.wait_idle(WAIT).await;
    stop.store(true, Ordering::Relaxed);
    assert!(
        sampler.await.expect("the sampler") <= 1,
        "serial overlapped"
    );

    // One at a time and in arrival order: each subject's events were committed in order.
    for subject in 0..3 {
        let seen = host
            .state("recorder", &format!("seen/subject-{subject}"))
            .await
            .expect("seen");
        let expected: Vec<String> = (0..20)
            .filter(|i| i % 3 == subject)
            .map(|i| format!("s-{i:02}"))
            .collect();
        assert_eq!(seen, json!(expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delivery_holds_back_only_its_own_key() {
    let host = TestHost::start(recorder_app(
        "ordering = \"key\"\nkey = \"subject\"\nconcurrency = 4\nmax_attempts = 3\n\
         backoff = { initial_ms = 400, max_ms = 400 }",
    ))
    .await;
    let batch = vec![
        keyed("a-1", "a", json!({"fail": "retry"})),
        keyed("a-2", "a", json!({})),
        keyed("a-3", "a", json!({})),
        keyed("b-1", "b", json!({})),
        keyed("b-2", "b", json!({})),
        keyed("b-3", "b", json!({})),
    ];
    assert_eq!(host.post_batch(&batch).await.status(), 202);

    host.eventually("key b done", WAIT, || async {
        host.state("recorder", "seen/b").await == Some(json!(["b-1", "b-2", "b-3"]))
    })
    .await;
    // a-1 is waiting for its retry, and a-2, a-3 wait behind it.
    assert_eq!(
        host.state("recorder", "seen/a").await,
        None,
        "key a jumped its failing event"
    );

    // Once a-1 is dead-lettered the key moves on, in order.
    host.wait_idle(WAIT).await;
    assert_eq!(
        host.state("recorder", "seen/a").await,
        Some(json!(["a-2", "a-3"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_stores_nothing_of_the_request() {
    let host = TestHost::start(recorder_app("concurrency = 1\nmax_pending = 3")).await;
    let slow = json!({"sleep_ms": 300});
    let mut statuses = Vec::new();
    let mut refused = None;
    for i in 0..6 {
        let response = host
            .post_structured(&event(&format!("q-{i}"), "test.ok.v1", slow.clone()))
            .await;
        let status = response.status().as_u16();
        if status == 429 && refused.is_none() {
            let retry_after = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.expect("a problem body");
            refused = Some((i, retry_after, body));
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], &[202, 202, 202], "{statuses:?}");
    let (first_refused, retry_after, problem) = refused.expect("a 429 once the queue is full");
    let retry_after: u64 = retry_after
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["handler"], "recorder");

    // A batch that would pass the limit is refused whole.
    let batch: Vec<Value> = (0..4)
        .map(|i| event(&format!("qb-{i}"), "test.ok.v1", json!({})))
        .collect();
    assert_eq!(host.post_batch(&batch).await.status(), 429);

    let logged: Vec<String> = host
        .all_events()
        .await
        .iter()
        .filter_map(|e| e["event"]["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !logged.contains(&format!("q-{first_refused}")),
        "a refused event was stored"
    );
    assert!(
        !logged.iter().any(|id| id.starts_with("qb-")),
        "part of a refused batch was stored"
    );
    host.wait_idle(WAIT).await;
}

/// Concurrent requests race for the last places in a queue: the check and the count are one
/// step, so together they never pass `max_pending`; refused, duplicate and accepted requests
/// all leave the count exact, back at zero once everything ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_overshoot_the_queue_and_the_count_stays_exact() {
    const LIMIT: u64 = 20;
    let host = TestHost::start(recorder_app(&format!(
        "concurrency = 1\nmax_pending = {LIMIT}"
    )))
    .await;
    let slow = json!({"sleep_ms": 20});
    let posts = (0..16).map(|client| {
        let host = host.client().clone();
        let slow = slow.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            for i in 0..10 {
                // Every third request repeats an event already sent: a duplicate takes no
                // room, even when the queue is full.
                let n = if i % 3 == 2 { i - 1 } else { i };
                let id = format!("c{client}-{n}");
                let response = host
                    .post_structured(&event(&id, "test.ok.v1", slow.clone()))
                    .await;
                match response.status().as_u16() {
                    202 => accepted.push(id),
                    429 => {}
                    other => panic!("unexpected {other}"),
                }
            }
            accepted
        })
    });
    let posts: Vec<_> = posts.collect();
    let mut highest = 0;
    while !posts.iter().all(|p| p.is_finished()) {
        let recorder = host.handler_info("recorder").await;
        highest = highest.max(recorder.pending);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut accepted = std::collections::BTreeSet::new();
    for post in posts {
        accepted.extend(post.await.expect("no panic"));
    }
    assert!(
        highest <= LIMIT,
        "the queue held {highest}, over its limit of {LIMIT}"
    );
    assert!(
        accepted.len() as u64 >= LIMIT,
        "only {} accepted",
        accepted.len()
    );
    host.wait_idle(Duration::from_secs(60)).await;
    assert_eq!(
        host.handler_info("recorder").await.pending,
        0,
        "the count drifted"
    );
    assert_eq!(
        host.state("recorder", "count").await,
        Some(json!(accepted.len())),
        "every accepted event ran once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_paces_invocations() {
    let host = TestHost::start(recorder_app("rate = \"20/s\"\nconcurrency = 8")).await;
    let batch: Vec<Value> = (0..30)
        .map(|i| event(&format!("r-{i}"), "test.ok.v1", json!({})))
        .collect();
    let started = Instant::now();
    assert_eq!(host.post_batch(&batch).await.status(), 202);
    host.wait_idle(WAIT).await;
    // A second's burst of 20, then 10 more at 20/s: at least half a second.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "30 events at 20/s took only {took:?}"
    );
    assert_eq!(host.state("recorder", "count").await, Some(json!(30)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_handlers_at_full_concurrency_do_not_starve_ingress() {
    let host = TestHost::start(manifest(
        r#"
        [app]
        name = "fairness"

        [[handler]]
        name = "looper"
        module = "{guests}/misbehave.wasm"
        subscribe = ["test.loop.v1"]
        concurrency = 4
        timeout_ms = 3000
        max_attempts = 1

        [[handler]]
        name = "recorder"
        module = "{guests}/recorder.wasm"
        subscribe = ["test.ok.v1"]
        "#,
    ))
    .await;
    for i in 0..4 {
        let e = event(&format!("spin-{i}"), "test.loop.v1", json!({}));
        assert_eq!(host.post_structured(&e).await.status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut latencies = Vec::new();
    for i in 0..40 {
        let e = event(&format!("ok-{i}"), "test.ok.v1", json!({}));
        let started = Instant::now();
        assert_eq!(host.post_structured(&e).await.status(), 202);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_millis(500),
        "ingress p99 {p99:?} beside busy handlers"
    );
    // The other handler keeps working while the loopers spin.
    host.eventually("the recorder kept up", Duration::from_secs(10), || async {
        host.state("recorder", "count").await == Some(json!(40))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_events_flow() {
    let host = TestHost::start(recorder_app("max_attempts = 1")).await;
    for i in 0..3 {
        let e = event(&format!("m-{i}"), "test.ok.v1", json!({}));
        assert_eq!(host.post_structured(&e).await.status(), 202);
    }
    let rejected = event("m-bad", "test.ok.v1", json!({"fail": "reject"}));
    assert_eq!(host.post_structured(&rejected).await.status(), 202);
    let unrouted = event("m-other", "test.unrouted.v1", json!({}));
    assert_eq!(host.post_structured(&unrouted).await.status(), 202);
    let bad = host
        .http
        .post(host.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .body("{not json")
        .send()
        .await
        .expect("answers");
    assert_eq!(bad.status(), 400);
    host.wait_idle(WAIT).await;
    // Counters move right after the commit a reader can already see.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let text = host.metrics().await;
    for line in [
        r#"evhost_events_received_total{mode="structured",type="test.ok.v1"} 4"#,
        r#"evhost_events_received_total{mode="structured",type="other"} 1"#,
        r#"evhost_ingress_rejected_total{status="400"} 1"#,
        r#"evhost_deliveries_total{handler="recorder",outcome="ok"} 3"#,
        r#"evhost_deliveries_total{handler="recorder",outcome="dead"} 1"#,
        r#"evhost_dead_letters{handler="recorder"} 1"#,
        r#"evhost_deliveries_pending{handler="recorder"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(
        text.contains("evhost_store_commit_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("evhost_store_commit_batch_size_count"),
        "{text}"
    );
}
