//! Delivery guarantees: retries with backoff, dead letters and their admin API, redrive after
//! a fix, retry timers that survive a restart, and the event history that shows it all.

use std::time::Duration;

use evhost::config::Manifest;
use evhost::store::DeliveryStatus;
use evhost_tests::{TestHost, event, one_handler_app};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// One handler named `worker` with `module` and these extra settings.
fn worker_app(module: &str, settings: &str) -> Manifest {
    one_handler_app(
        "worker",
        module,
        &["test.work.v1", "test.trap.v1"],
        settings,
    )
}

fn unix_ms(rfc3339: Option<&str>) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_exponentially_then_dead_letter_with_every_error() {
    let host = TestHost::start(worker_app(
        "recorder",
        "max_attempts = 4\nbackoff = { initial_ms = 100, max_ms = 1000 }",
    ))
    .await;
    let failing = event("flaky-1", "test.work.v1", json!({"fail": "retry"}));
    assert_eq!(host.post_structured(&failing).await.status(), 202);

    let letters = host.wait_dead_letters(1, WAIT).await;
    let letter = &letters[0];
    assert_eq!(letter.handler, "worker");
    assert_eq!(letter.event["id"], "flaky-1");
    assert_eq!(letter.attempts, 4);
    let errors = &letter.errors;
    assert_eq!(
        errors.len(),
        4,
        "every attempt records its error: {errors:?}"
    );
    assert!(
        errors.iter().all(|e| e.error.contains("retry")),
        "{errors:?}"
    );
    // Waits of at least half of 100, 200, 400 ms (jitter takes up to half off).
    let times: Vec<i64> = errors.iter().map(|e| unix_ms(e.at.as_deref())).collect();
    for (i, pair) in times.windows(2).enumerate() {
        let floor = 50 << i;
        assert!(pair[1] - pair[0] >= floor, "gap {i} too short: {times:?}");
    }
    // Nothing of a failed attempt was committed.
    assert_eq!(host.state("worker", "count").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_at_once_and_the_admin_api_lists_filters_and_deletes() {
    let host = TestHost::start(worker_app("recorder", "max_attempts = 5")).await;
    for (id, fail) in [("r-1", "reject"), ("r-2", "reject")] {
        let e = event(id, "test.work.v1", json!({"fail": fail}));
        assert_eq!(host.post_structured(&e).await.status(), 202);
    }
    let letters = host.wait_dead_letters(2, WAIT).await;
    assert!(letters.iter().all(|l| l.attempts == 1), "{letters:?}");

    assert_eq!(host.dead_letters(&[("handler", "worker")]).await.len(), 2);
    assert_eq!(host.dead_letters(&[("handler", "nobody")]).await.len(), 0);
    let one_of_type = [("type", "test.work.v1"), ("limit", "1")];
    assert_eq!(host.dead_letters(&one_of_type).await.len(), 1);

    let id = letters[0].id;
    let one = host.get(&format!("/admin/deadletters/{id}")).await;
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.expect("JSON");
    assert_eq!(one["event"]["id"], letters[0].event["id"]);

    let deleted = host.delete(&format!("/admin/deadletters/{id}")).await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(host.dead_letters(&[]).await.len(), 1);
    let again = host.delete(&format!("/admin/deadletters/{id}")).await;
    assert_eq!(again.status(), 404);
    // The event itself stays in the log.
    let discarded = letters[0].event["id"].as_str().expect("an id");
    assert_eq!(
        host.deliveries_of(discarded).await[0].status,
        DeliveryStatus::Discarded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_after_the_handler_is_fixed_delivers_once() {
    // The handler traps on this event type; after a fix (here: a restart with a module that
    // handles it) a redrive delivers it with a fresh attempt count.
    let host = TestHost::start(worker_app(
        "misbehave",
        "max_attempts = 2\nbackoff = { initial_ms = 10, max_ms = 10 }",
    ))
    .await;
    let e = event("broken-1", "test.trap.v1", json!({}));
    assert_eq!(host.post_structured(&e).await.status(), 202);
    let letters = host.wait_dead_letters(1, WAIT).await;
    let id = letters[0].id;
    assert_eq!(letters[0].attempts, 2);
    let (_, data) = host.stop().await;

    let fixed = worker_app("recorder", "max_attempts = 2");
    let host = TestHost::start_on(fixed, data).await.expect("restarts");
    let redrive = host.post(&format!("/admin/deadletters/{id}/redrive")).await;
    assert_eq!(redrive.status(), 200);
    let body: Value = redrive.json().await.expect("JSON");
    assert_eq!(body["redriven"], 1);

    host.eventually("the redriven event is handled", WAIT, || async {
        host.state("worker", "count").await == Some(json!(1))
    })
    .await;
    host.wait_idle(WAIT).await;
    let delivery = &host.deliveries_of("broken-1").await[0];
    assert_eq!(delivery.status, DeliveryStatus::Done);
    assert_eq!(delivery.redrives, 1);
    let letters = host.dead_letters(&[]).await;
    assert!(letters.is_empty(), "{letters:?}");
    // A second redrive of the same id finds nothing dead.
    let again = host.post(&format!("/admin/deadletters/{id}/redrive")).await;
    assert_eq!(again.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_timer_survives_a_restart() {
    let host = TestHost::start(worker_app(
        "misbehave",
        "max_attempts = 3\nbackoff = { initial_ms = 1500, max_ms = 1500 }",
    ))
    .await;
    let e = event("later-1", "test.trap.v1", json!({}));
    assert_eq!(host.post_structured(&e).await.status(), 202);
    let retrying = host
        .wait_delivery("later-1", "worker", DeliveryStatus::Retrying, WAIT)
        .await;
    let due = unix_ms(retrying.next_attempt_at.as_deref());
    let (_, data) = host.stop().await;

    // Restart with a handler that succeeds: the pending retry runs at its time, not before.
    let host = TestHost::start_on(worker_app("recorder", "max_attempts = 3"), data)
        .await
        .expect("restarts");
    host.eventually("the retry ran after the restart", WAIT, || async {
        host.state("worker", "count").await == Some(json!(1))
    })
    .await;
    let ran_at = chrono::Utc::now().timestamp_millis();
    assert!(ran_at >= due, "the retry ran {} ms early", due - ran_at);
    let delivery = &host.deliveries_of("later-1").await[0];
    assert_eq!(delivery.status, DeliveryStatus::Done);
    assert_eq!(delivery.attempts, 2, "one failure, then the success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_links_each_delivery_to_the_events_it_caused() {
    let host = TestHost::start(worker_app("recorder", "")).await;
    let e = event(
        "cause-1",
        "test.work.v1",
        json!({"emit": {"type": "test.effect.v1", "data": {"n": 1}, "subject": "s"}}),
    );
    assert_eq!(host.post_structured(&e).await.status(), 202);
    host.wait_idle(WAIT).await;
    let log = host.event_log().await;
    let cause = log
        .iter()
        .find(|e| e.event["id"] == "cause-1")
        .expect("the cause");
    let caused = &cause.deliveries[0].caused;
    assert_eq!(caused.len(), 1, "{cause:?}");
    let effect = log.iter().find(|e| e.seq == caused[0]).expect("the effect");
    assert_eq!(effect.event["type"], "test.effect.v1");
    assert_eq!(effect.event["causationid"], "cause-1");
    assert_eq!(effect.event["source"], "/test/worker");
    assert!(effect.deliveries.is_empty(), "{effect:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_running_invocations_commit() {
    let host = TestHost::start(worker_app("recorder", "")).await;
    let slow = event("slow-1", "test.work.v1", json!({"sleep_ms": 400}));
    assert_eq!(host.post_structured(&slow).await.status(), 202);
    host.eventually("the invocation is running", WAIT, || async {
        host.handlers().await[0].in_flight == 1
    })
    .await;
    let (manifest, data) = host.stop().await;

    // It finished and committed during the stop: after a restart nothing runs it again.
    let host = TestHost::start_on(manifest, data).await.expect("restarts");
    let delivery = &host.deliveries_of("slow-1").await[0];
    assert_eq!(delivery.status, DeliveryStatus::Done, "{delivery:?}");
    assert_eq!(delivery.attempts, 1);
    assert_eq!(host.state("worker", "count").await, Some(json!(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_carried_to_emitted_events() {
    let host = TestHost::start(worker_app("recorder", "")).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut e = event(
        "traced-1",
        "test.work.v1",
        json!({"emit": {"type": "test.effect.v1", "subject": "s"}}),
    );
    e["traceparent"] = json!(traceparent);
    assert_eq!(host.post_structured(&e).await.status(), 202);
    host.wait_idle(WAIT).await;
    let effects = host.events_of_type("test.effect.v1").await;
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0]["traceparent"], traceparent);
    assert_eq!(effects[0]["correlationid"], "traced-1");
}
