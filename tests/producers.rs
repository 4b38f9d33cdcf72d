//! What producers may send: not from the host's own `source` namespace, only the types the
//! app's `[ingress] accept` lists, batches of bounded size, and (when the app says so) only
//! types some handler takes. Real hosts, real shop handlers, real HTTP.

use std::time::Duration;

use evhost_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const CONFIRMED: &str = "com.example.shop.payment.confirmed.v1";
const SHIPPED: &str = "com.example.shop.shipment.created.v1";

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("a problem body"))
}

fn forged_payment(id: &str, source: &str) -> Value {
    let mut forged = event(
        id,
        CONFIRMED,
        json!({"order_id": "o-ghost", "sku": "sku-1", "quantity": 1, "amount": 1.0}),
    );
    forged["source"] = json!(source);
    forged["subject"] = json!("o-ghost");
    forged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_cannot_forge_a_handlers_event_or_preempt_its_id() {
    let host = TestHost::start(shop_manifest()).await;

    // As the payment handler: the source namespace is the host's.
    for source in ["/shop/payment", "/shop", "/shop/payment/x"] {
        let (status, body) =
            problem(host.post_structured(&forged_payment("pay-1", source)).await).await;
        assert_eq!(status, 403, "{source}: {body}");
        assert_eq!(body["attribute"], "source", "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("is the host's own"),
            "{body}"
        );
    }
    // From a source of its own: the shop only takes its commands and stock from outside.
    let (status, body) =
        problem(host.post_structured(&forged_payment("pay-2", "/web")).await).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["attribute"], "type", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains(CONFIRMED),
        "{body}"
    );
    // Binary mode is held to the same rules.
    let binary = host
        .post_binary(
            &[
                ("id", "pay-3"),
                ("source", "/shop/payment"),
                ("type", CONFIRMED),
            ],
            &json!({"order_id": "o-ghost"}),
        )
        .await;
    assert_eq!(binary.status(), 403);

    // A source that merely starts with the app's name is someone else's.
    let mut order = place_order("o-1", "sku-1", 1, 5.0);
    order["source"] = json!("/shopfront");
    assert_eq!(host.post_structured(&order).await.status(), 202);

    // Nothing forged was stored, and no shipment came of it.
    host.wait_idle(WAIT).await;
    assert!(
        host.events_of_type(CONFIRMED)
            .await
            .iter()
            .all(|e| e["subject"] != "o-ghost")
    );
    assert!(
        host.events_of_type(SHIPPED)
            .await
            .iter()
            .all(|e| e["subject"] != "o-ghost")
    );
    assert!(
        host.events(&[("source", "/shop/payment")])
            .await
            .iter()
            .all(|e| e["id"] != "pay-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_event_refuses_its_whole_batch() {
    let host = TestHost::start(shop_manifest()).await;
    let batch = vec![
        stock_added("stock-b1", "sku-b", 5),
        place_order("o-b1", "sku-b", 1, 5.0),
        forged_payment("pay-b", "/web"),
    ];
    let (status, body) = problem(host.post_batch(&batch).await).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["index"], 2, "{body}");
    assert_eq!(body["attribute"], "[2].type", "{body}");
    assert!(host.events(&[("source", "/tests")]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_limit_is_refused_before_it_is_decoded() {
    let host = TestHost::start(one_handler_app("worker", "recorder", &["test.work.v1"], "")).await;
    // 14,000 tiny events in under 1 MiB: over the default of 1000.
    let tiny: Vec<Value> = (0..14_000)
        .map(|i| json!({"specversion": "1.0", "id": format!("t{i}"), "source": "/p", "type": "test.work.v1"}))
        .collect();
    let (status, body) = problem(host.post_batch(&tiny).await).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["limit"], 1000, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("14000 events"),
        "{body}"
    );
    // At the limit, it goes in.
    let (status, _) = problem(host.post_batch(&tiny[..1000]).await).await;
    assert_eq!(status, 202);
    assert_eq!(host.events_of_type("test.work.v1").await.len(), 1000);

    // The app may set its own limit.
    let small = TestHost::start(manifest(
        "[app]\nname = \"test\"\n[ingress]\nmax_batch = 5\n\n[[handler]]\nname = \"worker\"\n\
         module = \"{guests}/recorder.wasm\"\nsubscribe = [\"test.work.v1\"]\n",
    ))
    .await;
    let (status, body) = problem(small.post_batch(&tiny[..6]).await).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["limit"], 5);
    assert_eq!(small.post_batch(&tiny[..5]).await.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_events_are_stored_by_default_and_refused_when_the_app_says_so() {
    let stores =
        TestHost::start(one_handler_app("worker", "recorder", &["test.work.v1"], "")).await;
    let stray = event("stray-1", "test.nobody.v1", json!({}));
    assert_eq!(stores.post_structured(&stray).await.status(), 202);
    assert_eq!(stores.events_of_type("test.nobody.v1").await.len(), 1);

    let refuses = TestHost::start(manifest(
        "[app]\nname = \"test\"\n[ingress]\nunrouted = \"refuse\"\n\n[[handler]]\n\
         name = \"worker\"\nmodule = \"{guests}/recorder.wasm\"\nsubscribe = [\"test.work.v1\"]\n",
    ))
    .await;
    let (status, body) = problem(refuses.post_structured(&stray).await).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["attribute"], "type", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("test.nobody.v1"),
        "{body}"
    );
    assert!(refuses.events_of_type("test.nobody.v1").await.is_empty());
    let routed = event("work-1", "test.work.v1", json!({}));
    assert_eq!(refuses.post_structured(&routed).await.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_a_handler_will_emit_cannot_be_taken_first() {
    let host = TestHost::start(shop_manifest()).await;
    let order = place_order("o-pre", "sku-1", 1, 5.0);
    let handler = evhost::name::HandlerName::new("order").unwrap();
    // A squatter under the handler's source is refused whatever id it picks.
    let mut squatter = event("squat-1", "com.example.shop.order.placed.v1", json!({}));
    squatter["source"] = json!("/shop/order");
    let (status, body) = problem(host.post_structured(&squatter).await).await;
    assert_eq!(status, 403, "{body}");
    // The real id derives from the command's place in the log, known only once stored.
    let answer: Value = host.post_structured(&order).await.json().await.unwrap();
    let seq = answer["accepted"][0]["seq"].as_i64().unwrap();
    host.wait_idle(WAIT).await;
    let id = evhost::capabilities::emit::emitted_id(seq, "/tests", "place-o-pre", &handler, 0);
    let placed = host
        .events_of_type("com.example.shop.order.placed.v1")
        .await;
    let ours: Vec<_> = placed.iter().filter(|e| e["id"] == id.as_str()).collect();
    assert_eq!(ours.len(), 1, "{placed:?}");
    assert_eq!(ours[0]["subject"], "o-pre");
}
