//! Back-pressure end to end: a handler's queue limit holds for the events other handlers emit
//! to it (their commits wait for room), ingress refuses work that would pile up in front of
//! a full handler downstream, and a loop of emits is stopped by the hop limit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use evhost::config::{Manifest, Rate, RatePeriod};
use evhost::store::DeliveryStatus;
use evhost_tests::{
    HostClient, TestHost, event, manifest, one_handler_app, place_order, shop_manifest, stock_added,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

const UP: &str = "test.up.v1";
const DOWN: &str = "test.down.v1";
const SIDE: &str = "test.side.v1";
const LOOP: &str = "test.loop.v1";

/// `up` emits what its events ask for (to `down`, which takes `down_settings`); `side` is
/// unrelated to both.
fn chain(down_settings: &str) -> Manifest {
    manifest(&format!(
        r#"
[app]
name = "test"

[[handler]]
name = "up"
module = "{{guests}}/recorder.wasm"
subscribe = ["{UP}"]
concurrency = 4

[[handler]]
name = "down"
module = "{{guests}}/recorder.wasm"
subscribe = ["{DOWN}"]
{down_settings}

[[handler]]
name = "side"
module = "{{guests}}/recorder.wasm"
subscribe = ["{SIDE}"]
"#
    ))
}

/// An event for `up` that emits one event for `down`, about `subject`, asking it for `data`.
fn up_emitting(id: &str, subject: &str, data: Value) -> Value {
    let mut e = event(
        id,
        UP,
        json!({"emit": {"type": DOWN, "subject": subject, "data": data}}),
    );
    e["subject"] = json!(id);
    e
}

/// `evhost_deliveries_pending{handler="..."}` in a `/metrics` text.
fn pending_in_metrics(text: &str, handler: &str) -> Option<u64> {
    let series = format!("evhost_deliveries_pending{{handler=\"{handler}\"}} ");
    let line = text.lines().find(|line| line.starts_with(&series))?;
    line[series.len()..].trim().parse().ok()
}

/// Samples every handler's pending count (from `/admin/handlers` and `/metrics` in turn)
/// until stopped; returns the highest each reached.
fn sample_pending(
    client: &HostClient,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<String, u64>> {
    let client = client.clone();
    tokio::spawn(async move {
        let mut highest: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen = |name: &str, pending: u64| {
            let entry = highest.entry(name.to_owned()).or_default();
            *entry = (*entry).max(pending);
        };
        while !stop.load(Ordering::Relaxed) {
            let handlers = client.handlers().await;
            for handler in &handlers {
                seen(handler.name.as_str(), handler.pending);
            }
            let metrics = client.metrics().await;
            for handler in &handlers {
                let name = handler.name.as_str();
                if let Some(pending) = pending_in_metrics(&metrics, name) {
                    seen(name, pending);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        highest
    })
}

/// Every delivery in the log is done, committed at its first attempt: nothing failed,
/// nothing was committed twice.
async fn assert_all_done_once(host: &TestHost) {
    for logged in host.event_log().await {
        for delivery in &logged.deliveries {
            assert!(
                delivery.status == DeliveryStatus::Done && delivery.attempts == 1,
                "not done at the first attempt: {delivery:?} of {}",
                logged.event
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_downstream_never_holds_more_than_its_limit_and_everything_runs_once() {
    const LIMIT: u64 = 3;
    const EVENTS: usize = 24;
    let host = TestHost::start(chain(&format!("concurrency = 1\nmax_pending = {LIMIT}"))).await;
    let batch: Vec<Value> = (0..EVENTS)
        .map(|i| {
            up_emitting(
                &format!("u-{i}"),
                &format!("d-{i}"),
                json!({"sleep_ms": 40}),
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_pending(host.client(), stop.clone());
    // One request, before anything was emitted: ingress takes it all (it knows of no way
    // from `up` to `down` yet), so the bound below is the commits' doing.
    assert_eq!(host.post_batch(&batch).await.status(), 202);
    host.wait_idle(WAIT).await;
    stop.store(true, Ordering::Relaxed);
    let highest = sampler.await.expect("the sampler");

    assert!(
        highest["down"] <= LIMIT,
        "`down` held {} deliveries, over its limit of {LIMIT}",
        highest["down"]
    );
    // The bound was reached, so it was the limit that held the queue there: `up` finishes
    // an event in a few milliseconds, `down` takes 40.
    assert_eq!(
        highest["down"], LIMIT,
        "the downstream never filled: {highest:?}"
    );
    assert!(
        highest["up"] > LIMIT,
        "the upstream queue took the work instead: {highest:?}"
    );

    // Every event ran once on each side, and waiting for room cost `up` no attempt.
    assert_eq!(host.state("up", "count").await, Some(json!(EVENTS)));
    assert_eq!(host.state("down", "count").await, Some(json!(EVENTS)));
    for i in 0..EVENTS {
        let seen = host.state("down", &format!("seen/d-{i}")).await;
        let seen = seen.expect("`down` saw the event");
        assert_eq!(seen.as_array().map(Vec::len), Some(1), "d-{i}: {seen}");
    }
    assert_eq!(host.events_of_type(DOWN).await.len(), EVENTS);
    assert_all_done_once(&host).await;
    let metrics = host.metrics().await;
    assert!(
        !metrics.contains(r#"handler="up",outcome="retry""#)
            && !metrics.contains(r#"handler="up",outcome="dead""#),
        "waiting for room counted as a failure:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_refuses_work_for_a_full_downstream_until_it_drains() {
    let host = TestHost::start(chain(
        "concurrency = 1\nmax_pending = 2\ntimeout_ms = 20000",
    ))
    .await;
    // `up` shows once that its events lead to `down`.
    let first = up_emitting("u-0", "d-0", json!({}));
    assert_eq!(host.post_structured(&first).await.status(), 202);
    host.wait_idle(WAIT).await;

    // `down` is full: one event running for a while, one waiting behind it.
    for id in ["slow-1", "slow-2"] {
        let slow = event(id, DOWN, json!({"sleep_ms": 3000}));
        assert_eq!(host.post_structured(&slow).await.status(), 202, "{id}");
    }
    let refused = up_emitting("u-1", "d-1", json!({}));
    let response = host.post_structured(&refused).await;
    assert_eq!(response.status(), 429);
    let retry_after = response.headers().get("retry-after").cloned();
    let problem: Value = response.json().await.expect("a problem body");
    assert!(retry_after.is_some(), "no Retry-After: {problem}");
    assert_eq!(problem["handler"], "down", "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("downstream of `{UP}`")),
        "the detail does not say why: {detail}"
    );
    // Work that does not lead to `down` is taken meanwhile.
    let side = event("side-1", SIDE, json!({}));
    assert_eq!(host.post_structured(&side).await.status(), 202);
    let logged = host.events_of_type(UP).await;
    assert_eq!(logged.len(), 1, "the refused event was stored: {logged:?}");

    // Once `down` drains, the same event is taken.
    host.eventually("`up` to take its event again", WAIT, || async {
        host.post_structured(&refused).await.status() == 202
    })
    .await;
    host.wait_idle(WAIT).await;
    assert_eq!(host.state("down", "count").await, Some(json!(4)));
    assert_eq!(
        host.state("down", "seen/d-1")
            .await
            .map(|s| s[0].is_string()),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_emits_dead_letters_at_the_hop_limit_naming_the_loop() {
    // A queue of one: the loop passes its work along through its own full queue.
    let looper = one_handler_app("looper", "recorder", &[LOOP], "max_pending = 1");
    let host = TestHost::start(looper).await;
    let forever = json!({"emit": {"type": LOOP, "repeat": true}});
    assert_eq!(
        host.post_structured(&event("l-0", LOOP, forever))
            .await
            .status(),
        202
    );
    let letters = host.wait_dead_letters(1, WAIT).await;
    host.wait_idle(WAIT).await;
    let letters_now = host.dead_letters(&[]).await;
    assert_eq!(letters_now.len(), 1, "the loop went on: {letters_now:?}");

    let letter = &letters[0];
    assert_eq!(letter.handler.as_str(), "looper");
    assert_eq!(letter.event["causationdepth"], "32", "{}", letter.event);
    assert_eq!(letter.attempts, 1, "a loop is not worth retrying");
    let error = &letter.errors[0].error;
    for part in [
        "hop limit",
        "past the limit of 32",
        "`looper` -> `test.loop.v1` -> `looper`",
    ] {
        assert!(error.contains(part), "{part:?} missing from: {error}");
    }

    // The chain: the producer's event, then one emitted per hop, each one deeper.
    let chain = host.events_of_type(LOOP).await;
    assert_eq!(chain.len(), 33);
    let depths: BTreeSet<u64> = chain
        .iter()
        .map(|e| {
            let depth = &e["causationdepth"];
            depth.as_str().map_or(0, |d| d.parse().expect("a number"))
        })
        .collect();
    assert_eq!(depths, (0..=32).collect::<BTreeSet<u64>>());

    // The host, and the handler, go on with other work.
    let plain = event("l-plain", LOOP, json!({}));
    assert_eq!(host.post_structured(&plain).await.status(), 202);
    host.wait_idle(WAIT).await;
    // 32 hops committed (the 33rd was refused with the whole invocation), then this one.
    assert_eq!(host.state("looper", "count").await, Some(json!(33)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_may_pass_on_a_causation_depth_only_as_a_whole_number() {
    let host = TestHost::start(one_handler_app("looper", "recorder", &[LOOP], "")).await;
    for (id, bad) in [
        ("b-1", json!("deep")),
        ("b-2", json!(-1)),
        ("b-3", json!("1.5")),
    ] {
        let mut e = event(id, LOOP, json!({}));
        e["causationdepth"] = bad.clone();
        let response = host.post_structured(&e).await;
        assert_eq!(response.status(), 400, "{bad}");
        let problem: Value = response.json().await.expect("a problem body");
        assert_eq!(problem["attribute"], "causationdepth", "{problem}");
    }

    // A depth carried over from elsewhere counts: 30, then two hops to the limit.
    let mut carried = event("c-1", LOOP, json!({"emit": {"type": LOOP, "repeat": true}}));
    carried["causationdepth"] = json!(30);
    assert_eq!(host.post_structured(&carried).await.status(), 202);
    let letters = host.wait_dead_letters(1, WAIT).await;
    assert_eq!(letters[0].event["causationdepth"], "32");
    host.wait_idle(WAIT).await;
    assert_eq!(host.events_of_type(LOOP).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_orders_is_refused_once_payment_is_full_and_every_accepted_one_ships() {
    const PAYMENT_LIMIT: u64 = 5;
    const QUEUE_LIMIT: u64 = 20;
    let mut shop = shop_manifest();
    for handler in &mut shop.handlers {
        handler.settings.max_pending = match handler.name.as_str() {
            "payment" => PAYMENT_LIMIT,
            // Serial, and told of every order: on a slow machine it could fill before
            // payment does, which would be a bound all the same, but not the one shown here.
            "notification" => 50 * QUEUE_LIMIT,
            _ => QUEUE_LIMIT,
        };
        if handler.name.as_str() == "payment" {
            // Slower than the rest can feed it, whatever the machine.
            handler.settings.rate = Some(Rate {
                tokens: 5,
                period: RatePeriod::Second,
            });
        }
    }
    let limits: BTreeMap<String, u64> = shop
        .handlers
        .iter()
        .map(|h| (h.name.to_string(), h.settings.max_pending))
        .collect();
    let host = TestHost::start(shop).await;
    // Orders for four SKUs, so that inventory (FIFO per SKU) runs four at a time.
    const SKUS: usize = 4;
    let stock: Vec<Value> = (0..SKUS)
        .map(|sku| stock_added(&format!("stock-{sku}"), &format!("sku-{sku}"), 100_000))
        .collect();
    assert_eq!(host.post_batch(&stock).await.status(), 202);
    host.wait_idle(WAIT).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_pending(host.client(), stop.clone());
    // Four producers post distinct orders until each has been refused ten times.
    let producers = (0..4).map(|producer| {
        let client = host.client().clone();
        tokio::spawn(async move {
            let (mut accepted, mut refused) = (Vec::new(), Vec::new());
            let mut n = 0;
            while refused.len() < 10 {
                assert!(n < 2000, "2000 orders and never refused");
                let order_id = format!("o-{producer}-{n}");
                n += 1;
                let sku = format!("sku-{}", n % SKUS);
                let response = client
                    .post_structured(&place_order(&order_id, &sku, 1, 10.0))
                    .await;
                match response.status().as_u16() {
                    202 => accepted.push(order_id),
                    429 => {
                        let problem: Value = response.json().await.expect("a problem body");
                        refused.push(problem);
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            (accepted, refused)
        })
    });
    let producers: Vec<_> = producers.collect();
    let mut accepted = BTreeSet::new();
    let mut refused = Vec::new();
    for producer in producers {
        let (ok, no) = producer.await.expect("no panic");
        accepted.extend(ok);
        refused.extend(no);
    }
    host.wait_idle(Duration::from_secs(180)).await;
    stop.store(true, Ordering::Relaxed);
    let highest = sampler.await.expect("the sampler");

    for (handler, limit) in &limits {
        let held = highest.get(handler).copied().unwrap_or(0);
        assert!(
            held <= *limit,
            "`{handler}` held {held}, over its limit of {limit}"
        );
    }
    assert_eq!(
        highest["payment"], PAYMENT_LIMIT,
        "payment never filled: {highest:?}"
    );
    // Refused for a handler downstream of `order` (the only one the command goes to):
    // payment, or one of those its fullness backed up, whichever held the way then.
    let place = "com.example.shop.order.place.v1";
    let downstream = refused.iter().filter(|problem| {
        let detail = problem["detail"].as_str().unwrap_or_default();
        problem["handler"] != "order" && detail.contains(&format!("downstream of `{place}`"))
    });
    assert!(
        downstream.count() > 0,
        "no refusal named a full handler downstream: {refused:?}"
    );

    // Every accepted order went all the way, once; no refused one left a trace.
    let shipped: Vec<String> = host
        .events_of_type("com.example.shop.shipment.created.v1")
        .await
        .iter()
        .filter_map(|e| e["subject"].as_str().map(str::to_owned))
        .collect();
    let shipped_set: BTreeSet<String> = shipped.iter().cloned().collect();
    assert_eq!(shipped.len(), shipped_set.len(), "an order shipped twice");
    assert_eq!(
        shipped_set, accepted,
        "shipped orders differ from the accepted ones"
    );
    let placed = host.events_of_type("com.example.shop.order.place.v1").await;
    assert_eq!(placed.len(), accepted.len());
    assert_all_done_once(&host).await;
}
