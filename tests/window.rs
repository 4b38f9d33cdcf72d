//! The scheduler's window on the store: a key waiting for its retry, with hundreds of its
//! own deliveries behind it, holds back no other key (before and after a restart), and its
//! own deliveries still run in order once it settles; the admin API writes events as stored,
//! in the same JSON as ever.

use std::time::{Duration, Instant};

use evhost::config::Manifest;
use evhost::store::DeliveryStatus;
use evhost_tests::{HostClient, TestHost, event, one_handler_app};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// Deliveries of the blocked key appended behind its failing one: more than the window's
/// 256 rows, so that a window that held them all would hold nothing else.
const FOLLOWERS: usize = 300;

fn keyed(id: &str, subject: &str, data: Value) -> Value {
    let mut e = event(id, "test.keyed.v1", data);
    e["subject"] = json!(subject);
    e
}

/// The recorder, FIFO per subject; a failing delivery is retried once, 10 to 20 s later
/// (the backoff's jitter), then dead-lettered: long enough that anything held back by it
/// is seen waiting.
fn keyed_recorder() -> Manifest {
    one_handler_app(
        "recorder",
        "recorder",
        &["test.keyed.v1"],
        "ordering = \"key\"\nkey = \"subject\"\nconcurrency = 4\nmax_attempts = 2\n\
         backoff = { initial_ms = 20000, max_ms = 20000 }",
    )
}

/// Post `id` of key `l` and wait until it is done; the blocked key's first delivery must
/// still be waiting for its retry then, its followers not run.
async fn other_key_flows(host: &HostClient, id: &str) {
    let posted = Instant::now();
    assert_eq!(
        host.post_structured(&keyed(id, "l", json!({})))
            .await
            .status(),
        202
    );
    host.wait_delivery(id, "recorder", DeliveryStatus::Done, WAIT)
        .await;
    eprintln!(
        "{id} done {:?} after its post, behind {FOLLOWERS} of a blocked key",
        posted.elapsed()
    );
    let blocked = host.delivery_to("k-0", "recorder").await;
    assert_eq!(
        (blocked.status, blocked.attempts),
        (DeliveryStatus::Retrying, 1),
        "{id} waited for the blocked key's retry: {blocked:?}"
    );
    assert_eq!(
        host.state("recorder", "seen/k").await,
        None,
        "the blocked key's followers jumped it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_waiting_for_its_retry_holds_back_no_other_key_and_keeps_its_order() {
    let host = TestHost::start(keyed_recorder()).await;
    let failing = keyed("k-0", "k", json!({"fail": "retry"}));
    assert_eq!(host.post_structured(&failing).await.status(), 202);
    host.wait_delivery("k-0", "recorder", DeliveryStatus::Retrying, WAIT)
        .await;
    let followers: Vec<Value> = (1..=FOLLOWERS)
        .map(|i| keyed(&format!("k-{i}"), "k", json!({})))
        .collect();
    assert_eq!(host.post_batch(&followers).await.status(), 202);

    other_key_flows(&host, "l-1").await;

    // The window is memory; the store still says who waits for what after a restart.
    let (manifest, data) = host.stop().await;
    let host = TestHost::start_on(manifest, data)
        .await
        .expect("the host restarts");
    other_key_flows(&host, "l-2").await;

    // The blocked delivery fails again and is dead-lettered; its key then moves on, in order.
    host.wait_dead("k-0", "recorder", WAIT).await;
    host.wait_idle(WAIT).await;
    let expected: Vec<String> = (1..=FOLLOWERS).map(|i| format!("k-{i}")).collect();
    assert_eq!(
        host.state("recorder", "seen/k").await,
        Some(json!(expected))
    );
    assert_eq!(
        host.state("recorder", "seen/l").await,
        Some(json!(["l-1", "l-2"]))
    );
}

/// The body of `GET path` as text.
async fn body(host: &HostClient, path: &str) -> String {
    let response = host.get(path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.text().await.expect("a body")
}

/// POST a structured event written by hand, so that its `data` is exactly this text.
async fn post_raw(host: &HostClient, id: &str, data: &str) {
    let body = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/tests","type":"test.shape.v1",
            "datacontenttype":"application/json","data":{data}}}"#
    );
    let response = host
        .http
        .post(host.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .body(body)
        .send()
        .await
        .expect("the host answers");
    assert_eq!(response.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_dead_letters_write_events_as_stored_in_the_same_json() {
    let host = TestHost::start(one_handler_app(
        "recorder",
        "recorder",
        &["test.shape.v1"],
        "max_attempts = 1",
    ))
    .await;
    // Compact, members sorted: byte for byte what a tree of it gave.
    post_raw(&host, "compact", r#"{"a":1,"b":["x",true,null]}"#).await;
    // As a producer wrote it: spacing, member order and digits kept.
    let pretty = "{ \"z\": 1,\n  \"a\": [1.50, 12345678901234567890123] }";
    post_raw(&host, "pretty", pretty).await;
    let rejected = "{ \"fail\" : \"reject\" }";
    post_raw(&host, "rejected", rejected).await;
    let text = host
        .http
        .post(host.url("/events"))
        .header("content-type", "text/plain")
        .header("ce-specversion", "1.0")
        .header("ce-id", "text")
        .header("ce-source", "/tests")
        .header("ce-type", "test.shape.v1")
        .header("ce-partitionkey", "p-1")
        .body("h\u{e9}llo \"there\"")
        .send()
        .await
        .expect("the host answers");
    assert_eq!(text.status(), 202);
    host.wait_idle(WAIT).await;

    let log = body(&host, "/admin/events").await;
    assert!(
        log.starts_with(r#"{"events":[{"seq":1,"received_at":""#),
        "{log}"
    );
    let compact = concat!(
        r#""event":{"data":{"a":1,"b":["x",true,null]},"datacontenttype":"application/json","#,
        r#""id":"compact","source":"/tests","specversion":"1.0","type":"test.shape.v1"},"#,
        r#""deliveries":[{"id":1,"handler":"recorder","status":"done","attempts":1,"#,
        r#""last_error":null,"caused":[]}]"#,
    );
    assert!(log.contains(compact), "{log}");
    assert!(log.contains(&format!(r#""data":{pretty},"#)), "{log}");
    let text = concat!(
        r#""event":{"data":"héllo \"there\"","datacontenttype":"text/plain","id":"text","#,
        r#""partitionkey":"p-1","source":"/tests","specversion":"1.0","type":"test.shape.v1"}"#,
    );
    assert!(log.contains(text), "{log}");

    // Read back, it is the JSON of the events as posted.
    let page: Value = serde_json::from_str(&log).expect("JSON");
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 4);
    assert_eq!(page["next_after"], 4);
    assert_eq!(
        events[1]["event"]["data"],
        json!({"z": 1, "a": [1.5, 12345678901234567890123.0]})
    );
    let members = |i: usize| {
        let event = events[i]["event"].as_object().expect("an object");
        event.keys().cloned().collect::<Vec<_>>()
    };
    let envelope = [
        "data",
        "datacontenttype",
        "id",
        "source",
        "specversion",
        "type",
    ];
    assert_eq!(members(1), envelope);

    // A dead letter's event likewise.
    let letters = host.wait_dead_letters(1, WAIT).await;
    let letter = body(&host, &format!("/admin/deadletters/{}", letters[0].id)).await;
    assert!(
        letter.contains(&format!(r#""data":{rejected},"#)),
        "{letter}"
    );
    assert_eq!(letters[0].event["data"], json!({"fail": "reject"}));
}
