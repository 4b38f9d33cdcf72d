//! The shop example end to end: the real compiled handlers of examples/shop, driven over
//! HTTP, checked through the event log and the handlers' state.

use std::collections::BTreeMap;
use std::time::Duration;

use evhost::store::DeliveryStatus;
use evhost_tests::{TestHost, place_order, shop_manifest, stock_added};
use serde_json::{Value, json};

const PLACE: &str = "com.example.shop.order.place.v1";
const STOCK_ADDED: &str = "com.example.shop.stock.added.v1";
const SHIPPED: &str = "com.example.shop.shipment.created.v1";
const PLACED: &str = "com.example.shop.order.placed.v1";
const RESERVED: &str = "com.example.shop.stock.reserved.v1";
const UNAVAILABLE: &str = "com.example.shop.stock.unavailable.v1";
const CONFIRMED: &str = "com.example.shop.payment.confirmed.v1";
const FAILED: &str = "com.example.shop.payment.failed.v1";

const WAIT: Duration = Duration::from_secs(20);

/// The events about one order (its `subject`), in log order, as CloudEvents JSON.
async fn order_events(host: &TestHost, order_id: &str) -> Vec<Value> {
    host.cloudevents(&[("subject", order_id), ("limit", "1000")])
        .await
}

async fn wait_for_type(host: &TestHost, order_id: &str, ty: &str) -> Value {
    let what = format!("`{ty}` for {order_id}");
    host.poll(&what, WAIT, || async {
        let events = order_events(host, order_id).await;
        events.into_iter().find(|e| e["type"] == ty)
    })
    .await
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_ends_in_a_shipment() {
    let host = TestHost::start(shop_manifest()).await;

    // Stock arrives in binary mode, the order in structured mode.
    let response = host
        .post_binary(
            &[
                ("id", "stock-1"),
                ("source", "/warehouse"),
                ("type", STOCK_ADDED),
                ("partitionkey", "sku-1"),
            ],
            &json!({"sku": "sku-1", "quantity": 10}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let response = host
        .post_structured(&place_order("o-1", "sku-1", 2, 25.0))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["accepted"][0]["duplicate"], false);

    let shipped = wait_for_type(&host, "o-1", SHIPPED).await;
    host.wait_idle(WAIT).await;

    let events = order_events(&host, "o-1").await;
    assert_eq!(
        types(&events),
        [PLACE, PLACED, RESERVED, CONFIRMED, SHIPPED]
    );
    // Each emitted event names its cause, and all share the order's correlation id.
    for pair in events.windows(2) {
        assert_eq!(
            pair[1]["causationid"],
            pair[0]["id"],
            "{:?}",
            types(&events)
        );
        assert_eq!(pair[1]["correlationid"], events[0]["id"]);
    }
    assert_eq!(events[1]["partitionkey"], "sku-1");
    assert_eq!(shipped["data"]["order_id"], "o-1");

    assert_eq!(host.state("inventory", "stock/sku-1").await, Some(json!(8)));
    assert_eq!(
        host.state("order", "order/o-1").await.expect("the order")["status"],
        "placed"
    );
    assert_eq!(
        host.state("payment", "payment/o-1")
            .await
            .expect("the payment")["status"],
        "confirmed"
    );
    assert!(host.state("shipping", "shipment/o-1").await.is_some());
    assert_eq!(
        host.state("notification", &format!("count/{PLACED}")).await,
        Some(json!(1))
    );
    assert_eq!(
        host.state("notification", &format!("count/{SHIPPED}"))
            .await,
        Some(json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_over_the_limit_is_declined_and_not_shipped() {
    let host = TestHost::start(shop_manifest()).await;
    assert_eq!(
        host.post_structured(&stock_added("s", "sku-9", 5))
            .await
            .status(),
        202
    );
    assert_eq!(
        host.post_structured(&place_order("big", "sku-9", 1, 5000.0))
            .await
            .status(),
        202
    );

    let failed = wait_for_type(&host, "big", FAILED).await;
    host.wait_idle(WAIT).await;
    assert_eq!(failed["data"]["amount"], 5000.0);
    let events = order_events(&host, "big").await;
    assert!(!types(&events).contains(&SHIPPED), "{:?}", types(&events));
    assert_eq!(
        host.state("payment", "payment/big")
            .await
            .expect("the payment")["status"],
        "failed"
    );
    assert_eq!(
        host.state("notification", &format!("count/{FAILED}")).await,
        Some(json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_without_stock_is_unavailable() {
    let host = TestHost::start(shop_manifest()).await;
    assert_eq!(
        host.post_structured(&place_order("o-none", "sku-none", 1, 10.0))
            .await
            .status(),
        202
    );
    let unavailable = wait_for_type(&host, "o-none", UNAVAILABLE).await;
    host.wait_idle(WAIT).await;
    assert_eq!(unavailable["data"]["available"], 0);
    let events = order_events(&host, "o-none").await;
    assert_eq!(types(&events), [PLACE, PLACED, UNAVAILABLE]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orders_for_the_last_unit_exactly_one_gets_it() {
    let host = TestHost::start(shop_manifest()).await;
    assert_eq!(
        host.post_structured(&stock_added("s-last", "sku-last", 1))
            .await
            .status(),
        202
    );
    // Both orders in flight at once: two concurrent requests.
    let (order_a, order_b) = (
        place_order("race-a", "sku-last", 1, 10.0),
        place_order("race-b", "sku-last", 1, 10.0),
    );
    let (a, b) = tokio::join!(
        host.post_structured(&order_a),
        host.post_structured(&order_b)
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (202, 202));
    host.wait_idle(WAIT).await;

    let reserved = host.events_of_type(RESERVED).await;
    let unavailable = host.events_of_type(UNAVAILABLE).await;
    assert_eq!(reserved.len(), 1, "exactly one order gets the unit");
    assert_eq!(unavailable.len(), 1, "the other is told it is gone");
    assert_ne!(reserved[0]["subject"], unavailable[0]["subject"]);
    assert_eq!(
        host.state("inventory", "stock/sku-last").await,
        Some(json!(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_orders_all_complete_and_skus_do_not_mix() {
    let host = TestHost::start(shop_manifest()).await;
    let mut batch = vec![
        stock_added("s-a", "sku-a", 3),
        stock_added("s-b", "sku-b", 2),
    ];
    for i in 0..4 {
        batch.push(place_order(&format!("a-{i}"), "sku-a", 1, 10.0));
        batch.push(place_order(&format!("b-{i}"), "sku-b", 1, 10.0));
    }
    let response = host.post_batch(&batch).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["mode"], "batch");
    assert_eq!(body["accepted"].as_array().map(Vec::len), Some(10));

    host.wait_idle(WAIT).await;
    assert_eq!(host.events_of_type(RESERVED).await.len(), 5);
    assert_eq!(host.events_of_type(UNAVAILABLE).await.len(), 3);
    assert_eq!(host.events_of_type(SHIPPED).await.len(), 5);
    assert_eq!(host.state("inventory", "stock/sku-a").await, Some(json!(0)));
    assert_eq!(host.state("inventory", "stock/sku-b").await, Some(json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_post_is_accepted_once_and_delivered_once() {
    let host = TestHost::start(shop_manifest()).await;
    let order = place_order("dup", "sku-dup", 1, 10.0);
    let first = host.post_structured(&order).await;
    let second = host.post_structured(&order).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (202, 202)
    );
    let second: Value = second.json().await.expect("a JSON body");
    assert_eq!(second["accepted"][0]["duplicate"], true);

    host.wait_idle(WAIT).await;
    let events = order_events(&host, "dup").await;
    assert_eq!(
        types(&events),
        [PLACE, PLACED, UNAVAILABLE],
        "one command, one placed event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_resume_after_a_restart() {
    // Stop the host while most orders are still waiting (one invocation at a time, the
    // whole batch queued), then start it again on the same data.
    let mut manifest = shop_manifest();
    for handler in &mut manifest.handlers {
        handler.settings.concurrency = 1;
    }
    let host = TestHost::start(manifest).await;
    let mut batch = vec![stock_added("s-r", "sku-r", 100)];
    for i in 0..30 {
        batch.push(place_order(&format!("r-{i}"), "sku-r", 1, 10.0));
    }
    assert_eq!(host.post_batch(&batch).await.status(), 202);
    let unsettled_at_stop = host.unsettled_deliveries().await;
    let (manifest, data) = host.stop().await;
    assert!(
        unsettled_at_stop > 0,
        "the test must stop the host with work left"
    );

    let host = TestHost::start_on(manifest, data)
        .await
        .expect("the host restarts");
    host.wait_idle(Duration::from_secs(60)).await;
    assert_eq!(host.events_of_type(SHIPPED).await.len(), 30);

    // Nothing ran twice. Counting the events cannot show it: the store keeps one event per
    // (source, id), and an emitted event's id follows from its cause, so a handler run twice
    // for one event would still leave one `order.placed`. What the stop and the restart could
    // break is that every delivery runs to one commit and its effects land once; an
    // invocation the stop cut short commits nothing and counts no attempt, and runs again,
    // which is the design. So, for every event in the log:
    // - it has exactly one delivery per subscriber, done after one attempt: no failure, no
    //   second commit (a commit settles a pending delivery once and counts its attempt);
    // - each delivery's commit emitted exactly the one event its handler emits on this path
    //   (all in stock, all paid), or none;
    // and the effects that a second landing would change, the notification counters (each
    // delivery adds one) and the stock (each reservation takes one), equal the events.
    let log = host.event_log().await;
    let type_at: BTreeMap<i64, &str> = log
        .iter()
        .map(|e| (e.seq, e.event["type"].as_str().expect("a type")))
        .collect();
    let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
    for logged in &log {
        let ty = type_at[&logged.seq];
        *per_type.entry(ty).or_default() += 1;
        let subscribers: &[&str] = match ty {
            PLACE => &["order"],
            STOCK_ADDED => &["inventory"],
            PLACED => &["inventory", "notification"],
            RESERVED => &["payment"],
            CONFIRMED => &["shipping"],
            SHIPPED => &["notification"],
            other => panic!("an unexpected {other} in the log: {logged:?}"),
        };
        let mut handlers: Vec<&str> = logged
            .deliveries
            .iter()
            .map(|d| d.handler.as_str())
            .collect();
        handlers.sort_unstable();
        assert_eq!(handlers, subscribers, "{logged:?}");
        for delivery in &logged.deliveries {
            assert_eq!(
                (delivery.status, delivery.attempts),
                (DeliveryStatus::Done, 1),
                "{logged:?}"
            );
            let emits: &[&str] = match (delivery.handler.as_str(), ty) {
                ("order", PLACE) => &[PLACED],
                ("inventory", PLACED) => &[RESERVED],
                ("payment", RESERVED) => &[CONFIRMED],
                ("shipping", CONFIRMED) => &[SHIPPED],
                _ => &[],
            };
            let emitted: Vec<&str> = delivery.caused.iter().map(|seq| type_at[seq]).collect();
            assert_eq!(emitted, emits, "{logged:?}");
        }
    }
    let expected_types = BTreeMap::from([
        (STOCK_ADDED, 1),
        (PLACE, 30),
        (PLACED, 30),
        (RESERVED, 30),
        (CONFIRMED, 30),
        (SHIPPED, 30),
    ]);
    assert_eq!(per_type, expected_types);
    for (ty, count) in [(PLACED, Some(json!(30))), (SHIPPED, Some(json!(30)))] {
        let key = format!("count/{ty}");
        assert_eq!(host.state("notification", &key).await, count, "{key}");
    }
    for ty in [UNAVAILABLE, FAILED] {
        let key = format!("count/{ty}");
        assert_eq!(host.state("notification", &key).await, None, "{key}");
    }
    assert_eq!(
        host.state("inventory", "stock/sku-r").await,
        Some(json!(70))
    );
}
