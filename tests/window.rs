//! The scheduler's window on the store: a key waiting for its retry, with hundreds of its
//! own deliveries behind it, holds back no other key (before and after a restart), and its
//! own deliveries still run in order once it settles.

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
