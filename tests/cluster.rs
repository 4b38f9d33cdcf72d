//! Cluster mode: several hosts on one NATS JetStream (a server each test starts for itself)
//! behave as one evhost. Every host takes events and admin calls; the checks read the log
//! and the state through whichever host, and expect the same answer from each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use evhost::config::Manifest;
use evhost_tests::nats::NatsServer;
use evhost_tests::{
    HostClient, TestHost, event, guest, manifest, place_order, shop_manifest, stock_added,
};
use serde_json::{Value, json};

const SHIPPED: &str = "com.example.shop.shipment.created.v1";
const UNAVAILABLE: &str = "com.example.shop.stock.unavailable.v1";
const RECORD: &str = "com.example.test.record.v1";

const WAIT: Duration = Duration::from_secs(60);

/// `n` hosts of `manifest` on the cluster at `url`, each with its own data directory (which
/// holds only its compiled modules). They start one after the other, as operators would
/// bring them up, and every one applies the same manifest.
async fn hosts(manifest: Manifest, url: &str, n: usize) -> Vec<TestHost> {
    hosts_taking(manifest, url, n, None).await
}

/// [`hosts`], each running at most `max_in_flight` invocations at once.
async fn hosts_taking(
    manifest: Manifest,
    url: &str,
    n: usize,
    max_in_flight: Option<usize>,
) -> Vec<TestHost> {
    let mut hosts = Vec::new();
    for _ in 0..n {
        let data = tempfile::tempdir().expect("a temporary directory");
        let url = url.to_owned();
        let host = TestHost::start_configured(manifest.clone(), data, move |options| {
            options.cluster = Some(url);
            options.max_in_flight = max_in_flight;
        })
        .await
        .expect("a cluster host starts");
        hosts.push(host);
    }
    hosts
}

fn recorder_app(settings: &str) -> Manifest {
    manifest(&format!(
        "[app]\nname = \"rec\"\n\n[[handler]]\nname = \"recorder\"\n\
         module = \"{{guests}}/recorder.wasm\"\nsubscribe = [\"{RECORD}\"]\n{settings}\n"
    ))
}

fn record(id: &str, subject: &str, data: Value) -> Value {
    let mut e = event(id, RECORD, data);
    e["subject"] = json!(subject);
    e
}

/// Events of `ty` in the log, as `host` lists them.
async fn count_of_type(host: &HostClient, ty: &str) -> usize {
    host.events(&[("type", ty), ("limit", "1000")]).await.len()
}

/// Wait until the recorder has counted `n` events, as `host` reads its state.
async fn wait_count(host: &HostClient, n: usize, what: &str) {
    host.eventually(what, WAIT, || async {
        host.state("recorder", "count").await == Some(json!(n))
    })
    .await;
}

/// Hosts that committed some of the recorder's deliveries.
async fn busy_hosts(hosts: &[TestHost]) -> usize {
    let mut busy = 0;
    for host in hosts {
        if committed_here(host, "recorder").await > 0 {
            busy += 1;
        }
    }
    busy
}

/// Deliveries this host committed for `handler`, from its own `/metrics`.
async fn committed_here(host: &HostClient, handler: &str) -> u64 {
    let metrics = host.metrics().await;
    let prefix = format!("evhost_deliveries_total{{handler=\"{handler}\",outcome=\"ok\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_posted_to_every_host_ship_once_and_the_last_unit_sells_once() {
    let nats = NatsServer::start().await;
    let hosts = hosts(shop_manifest(), &nats.url(), 3).await;

    assert_eq!(
        hosts[0]
            .post_structured(&stock_added("s-1", "sku-1", 20))
            .await
            .status(),
        202
    );
    assert_eq!(
        hosts[1]
            .post_structured(&stock_added("s-2", "sku-last", 1))
            .await
            .status(),
        202
    );
    hosts[2]
        .eventually("stock is in", WAIT, || async {
            hosts[2].state("inventory", "stock/sku-1").await == Some(json!(20))
                && hosts[2].state("inventory", "stock/sku-last").await == Some(json!(1))
        })
        .await;

    // 15 orders for sku-1 and 6 racing for the last unit of sku-last, round robin over the
    // hosts, all at once.
    let mut posts = Vec::new();
    for i in 0..21 {
        let client = hosts[i % 3].client().clone();
        let order = match i < 15 {
            true => place_order(&format!("o-{i}"), "sku-1", 1, 10.0),
            false => place_order(&format!("race-{i}"), "sku-last", 1, 10.0),
        };
        posts.push(tokio::spawn(async move {
            client.post_structured(&order).await.status()
        }));
    }
    for post in posts {
        assert_eq!(post.await.expect("the post"), 202);
    }

    hosts[0]
        .eventually("every order settled", WAIT, || async {
            count_of_type(&hosts[0], SHIPPED).await + count_of_type(&hosts[0], UNAVAILABLE).await
                == 21
        })
        .await;
    for host in &hosts {
        host.wait_idle(WAIT).await;
    }

    // Every host tells the same story: each sku-1 order shipped once, exactly one of the
    // racers got the last unit, the stock is exact.
    for host in &hosts {
        let shipped = host
            .cloudevents(&[("type", SHIPPED), ("limit", "1000")])
            .await;
        let mut per_order: BTreeMap<String, usize> = BTreeMap::new();
        for e in &shipped {
            *per_order
                .entry(e["subject"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
        assert!(per_order.values().all(|&n| n == 1), "{per_order:?}");
        let sku1 = per_order.keys().filter(|o| o.starts_with("o-")).count();
        let racers = per_order.keys().filter(|o| o.starts_with("race-")).count();
        assert_eq!((sku1, racers), (15, 1), "{per_order:?}");
        assert_eq!(count_of_type(host, UNAVAILABLE).await, 5);
        assert_eq!(host.state("inventory", "stock/sku-1").await, Some(json!(5)));
        assert_eq!(
            host.state("inventory", "stock/sku-last").await,
            Some(json!(0))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_posted_to_different_hosts_are_stored_once() {
    let nats = NatsServer::start().await;
    let hosts = hosts(recorder_app("concurrency = 4"), &nats.url(), 3).await;

    // The same event to three hosts at once: one of them stores it, two say duplicate.
    let mut posts = Vec::new();
    for host in &hosts {
        let client = host.client().clone();
        posts.push(tokio::spawn(async move {
            let response = client
                .post_structured(&record("dup-1", "k", json!({})))
                .await;
            assert_eq!(response.status(), 202);
            let body: Value = response.json().await.expect("a JSON body");
            body["accepted"][0].clone()
        }));
    }
    let mut answers = Vec::new();
    for post in posts {
        answers.push(post.await.expect("the post"));
    }
    let new = answers.iter().filter(|a| a["duplicate"] == false).count();
    assert_eq!(new, 1, "{answers:?}");
    let seqs: Vec<&Value> = answers.iter().map(|a| &a["seq"]).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] == w[1]),
        "one event, one position: {seqs:?}"
    );

    // Later, and in a batch with a new event: the duplicate is still known (no window).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let response = hosts[2]
        .post_batch(&[
            record("dup-1", "k", json!({})),
            record("new-1", "k", json!({})),
        ])
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["accepted"][0]["duplicate"], true);
    assert_eq!(body["accepted"][1]["duplicate"], false);

    wait_count(&hosts[0], 2, "both recorded").await;
    for host in &hosts {
        let log = host.events(&[("type", RECORD), ("limit", "100")]).await;
        let ids: Vec<&str> = log
            .iter()
            .filter_map(|e| e["event"]["id"].as_str())
            .collect();
        assert_eq!(ids, ["dup-1", "new-1"], "{log:?}");
    }
    assert_eq!(
        hosts[1].state("recorder", "seen/k").await,
        Some(json!(["dup-1", "new-1"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_is_counted_across_the_cluster() {
    let nats = NatsServer::start().await;
    let hosts = hosts(recorder_app("concurrency = 2"), &nats.url(), 3).await;

    let mut posts = Vec::new();
    for i in 0..12 {
        let client = hosts[i % 3].client().clone();
        let e = record(
            &format!("c-{i}"),
            &format!("k-{i}"),
            json!({"sleep_ms": 300, "span": true}),
        );
        posts.push(tokio::spawn(async move {
            client.post_structured(&e).await.status()
        }));
    }
    for post in posts {
        assert_eq!(post.await.expect("the post"), 202);
    }
    wait_count(&hosts[0], 12, "all recorded").await;

    let most = most_at_once(&hosts[1], (0..12).map(|i| format!("c-{i}"))).await;
    assert_eq!(
        most, 2,
        "at most `concurrency` at once, and both slots used"
    );
    // And the work went to more than one host.
    assert!(busy_hosts(&hosts).await >= 2, "one host did everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_key_keeps_its_order_while_keys_spread_over_hosts() {
    let nats = NatsServer::start().await;
    let hosts = hosts(
        recorder_app("concurrency = 4\nordering = \"key\"\nkey = \"subject\""),
        &nats.url(),
        3,
    )
    .await;

    // Each key's events go to a different host each time, in order, one after the other;
    // the keys interleave.
    let keys = ["a", "b", "c", "d", "e", "f"];
    let mut sent: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for n in 0..8 {
        for (k, key) in keys.iter().enumerate() {
            let id = format!("{key}-{n}");
            let host = &hosts[(n + k) % 3];
            let e = record(&id, key, json!({"sleep_ms": 20}));
            assert_eq!(host.post_structured(&e).await.status(), 202);
            sent.entry(key).or_default().push(id);
        }
    }
    wait_count(&hosts[0], 48, "all recorded").await;
    for (key, ids) in &sent {
        let seen = hosts[1].state("recorder", &format!("seen/{key}")).await;
        assert_eq!(seen, Some(json!(ids)), "key {key}");
    }
    assert!(busy_hosts(&hosts).await >= 2, "one host did everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_rollback_and_removal_on_one_host_reach_the_others() {
    let nats = NatsServer::start().await;
    let hosts = hosts(
        recorder_app("concurrency = 1\nconfig = { label = \"v1\" }"),
        &nats.url(),
        3,
    )
    .await;
    let module = std::fs::read(guest("recorder")).expect("the recorder module");

    // Events flow all along, round robin over the hosts, each noted with the phase it was
    // posted in: 1 once v2 is live everywhere, 2 once v1 is live everywhere again (0 while
    // a change spreads, when either version may handle it).
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poster = {
        let clients: Vec<HostClient> = hosts.iter().map(|h| h.client().clone()).collect();
        let (phase, stop) = (phase.clone(), stop.clone());
        tokio::spawn(async move {
            let mut posted = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("flow-{n}");
                let now = phase.load(Ordering::SeqCst);
                let e = record(&id, "flow", json!({}));
                assert_eq!(clients[n % 3].post_structured(&e).await.status(), 202);
                posted.push((id, now));
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            posted
        })
    };

    let config =
        format!("subscribe = [\"{RECORD}\"]\nconcurrency = 1\nconfig = {{ label = \"v2\" }}\n");
    let answer = hosts[0]
        .api
        .deploy("recorder", module, Some(config))
        .await
        .expect("the deploy");
    assert_eq!(answer.version, 2);
    for host in &hosts[1..] {
        host.eventually("version 2 live", WAIT, || async {
            host.handler_info("recorder").await.version == 2
        })
        .await;
    }
    phase.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase.store(0, Ordering::SeqCst);
    assert_eq!(
        hosts[2]
            .post_structured(&record("after-deploy", "k", json!({})))
            .await
            .status(),
        202
    );
    hosts[1]
        .eventually("handled by v2", WAIT, || async {
            hosts[1].state("recorder", "handled/after-deploy").await == Some(json!("v2"))
        })
        .await;

    hosts[1]
        .api
        .rollback("recorder")
        .await
        .expect("the rollback");
    for host in [&hosts[0], &hosts[2]] {
        host.eventually("version 1 live again", WAIT, || async {
            host.handler_info("recorder").await.version == 1
        })
        .await;
    }
    phase.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hosts[0]
            .post_structured(&record("after-rollback", "k", json!({})))
            .await
            .status(),
        202
    );
    hosts[2]
        .eventually("handled by v1", WAIT, || async {
            hosts[2].state("recorder", "handled/after-rollback").await == Some(json!("v1"))
        })
        .await;

    stop.store(true, Ordering::SeqCst);
    let posted = poster.await.expect("the poster");
    wait_count(
        &hosts[0],
        posted.len() + 2,
        "everything that flowed recorded",
    )
    .await;
    // Each handled once, and by the version live everywhere when it was posted.
    let seen = hosts[1].state("recorder", "seen/flow").await.expect("seen");
    let ids: Vec<&str> = posted.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(seen, json!(ids), "each once, in order");
    for (id, phase) in &posted {
        let label = hosts[(id.len()) % 3]
            .state("recorder", &format!("handled/{id}"))
            .await;
        match phase {
            1 => assert_eq!(label, Some(json!("v2")), "{id}"),
            2 => assert_eq!(label, Some(json!("v1")), "{id}"),
            _ => assert!(
                label == Some(json!("v1")) || label == Some(json!("v2")),
                "{id}: {label:?}"
            ),
        }
    }
    let phases: Vec<u8> = posted.iter().map(|(_, phase)| *phase).collect();
    assert!(
        phases.contains(&1) && phases.contains(&2),
        "events flowed in each phase: {phases:?}"
    );

    // Removed while deliveries wait: as on one host, what was pending becomes dead letters,
    // and nothing is left pending.
    for i in 0..6 {
        let e = record(&format!("queued-{i}"), "k", json!({"sleep_ms": 300}));
        assert_eq!(hosts[i % 3].post_structured(&e).await.status(), 202);
    }
    let removed = hosts[2].api.remove("recorder").await.expect("the removal");
    assert!(removed.dead_lettered >= 1, "{removed:?}");
    for host in &hosts[..2] {
        host.eventually("removed", WAIT, || async {
            host.handlers().await.is_empty()
        })
        .await;
    }
    let letters = hosts[0].dead_letters(&[("handler", "recorder")]).await;
    assert_eq!(letters.len(), removed.dead_lettered, "{letters:?}");
    assert!(
        letters.iter().all(|l| l
            .errors
            .last()
            .is_some_and(|e| e.error == "handler removed")),
        "{letters:?}"
    );
    for i in 0..6 {
        let delivery = hosts[1]
            .delivery_to(&format!("queued-{i}"), "recorder")
            .await;
        assert!(delivery.status.is_settled(), "queued-{i}: {delivery:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_the_same_from_every_host_and_any_host_redrives_them() {
    let nats = NatsServer::start().await;
    let hosts = hosts(
        recorder_app("max_attempts = 2\nbackoff = { initial_ms = 50, max_ms = 100 }"),
        &nats.url(),
        3,
    )
    .await;
    let failing = record("bad", "k", json!({"fail": "retry"}));
    assert_eq!(hosts[0].post_structured(&failing).await.status(), 202);
    let rejected = record("rejected", "k", json!({"fail": "reject"}));
    assert_eq!(hosts[1].post_structured(&rejected).await.status(), 202);

    let dead = hosts[2].wait_dead("bad", "recorder", WAIT).await;
    assert_eq!(dead.attempts, 2);
    hosts[0].wait_dead("rejected", "recorder", WAIT).await;
    let mut ids = Vec::new();
    for host in &hosts {
        let letters = host.wait_dead_letters(2, WAIT).await;
        let mut found: Vec<(String, u32, usize)> = letters
            .iter()
            .map(|l| {
                let id = l.event["id"].as_str().unwrap_or("").to_owned();
                (id, l.attempts, l.errors.len())
            })
            .collect();
        found.sort();
        assert_eq!(
            found,
            [("bad".to_owned(), 2, 2), ("rejected".to_owned(), 1, 1)],
            "{letters:?}"
        );
        let bad = letters
            .iter()
            .find(|l| l.event["id"] == "bad")
            .expect("bad");
        assert!(bad.errors[0].error.contains("asked for a retry"), "{bad:?}");
        ids.push(bad.id);
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one dead letter, one id: {ids:?}"
    );

    // Redriven from another host than the one that ran it: it runs again (and, still asking
    // for a retry, dies again, its errors over both runs kept).
    hosts[1].api.redrive(ids[0]).await.expect("the redrive");
    hosts[0]
        .eventually("dead again after the redrive", WAIT, || async {
            let letters = hosts[0].dead_letters(&[("handler", "recorder")]).await;
            letters
                .iter()
                .any(|l| l.event["id"] == "bad" && l.redrives == 1 && l.errors.len() == 4)
        })
        .await;
    let rejected_id = hosts[2]
        .dead_letters(&[])
        .await
        .into_iter()
        .find(|l| l.event["id"] == "rejected")
        .expect("the rejected letter")
        .id;
    hosts[2]
        .api
        .discard(rejected_id)
        .await
        .expect("the discard");
    for host in &hosts {
        let delivery = host.delivery_to("rejected", "recorder").await;
        assert_eq!(delivery.status, evhost::store::DeliveryStatus::Discarded);
        assert!(
            host.dead_letters(&[])
                .await
                .iter()
                .all(|l| l.event["id"] != "rejected")
        );
    }
    // Nothing of the failed runs was committed.
    assert_eq!(hosts[0].state("recorder", "count").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_nats_is_away_ingress_answers_503_and_nothing_is_lost() {
    let nats = NatsServer::start().await;
    let hosts = hosts(recorder_app("concurrency = 4"), &nats.url(), 2).await;
    for i in 0..5 {
        let e = record(&format!("before-{i}"), "k", json!({}));
        assert_eq!(hosts[i % 2].post_structured(&e).await.status(), 202);
    }
    wait_count(&hosts[0], 5, "recorded").await;

    nats.kill();
    let response = hosts[1]
        .post_structured(&record("during", "k", json!({})))
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.expect("a problem");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("JetStream"),
        "{problem}"
    );
    let ready = hosts[1].get("/readyz").await;
    assert_eq!(ready.status(), 503);

    nats.restart().await;
    // The producer sends its refused event again, and more; the hosts reconnect by
    // themselves.
    hosts[1]
        .eventually("taking events again", WAIT, || async {
            hosts[1]
                .post_structured(&record("during", "k", json!({})))
                .await
                .status()
                == 202
        })
        .await;
    for i in 0..5 {
        let e = record(&format!("after-{i}"), "k", json!({}));
        assert_eq!(hosts[i % 2].post_structured(&e).await.status(), 202);
    }
    wait_count(&hosts[0], 11, "everything recorded").await;
    let seen = hosts[1].state("recorder", "seen/k").await.expect("seen");
    assert_eq!(seen.as_array().map(Vec::len), Some(11), "{seen}");
    assert_eq!(hosts[1].get("/readyz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_paces_what_a_host_starts() {
    let nats = NatsServer::start().await;
    let hosts = hosts(recorder_app("rate = \"10/s\""), &nats.url(), 1).await;
    let started = std::time::Instant::now();
    for i in 0..25 {
        let e = record(&format!("r-{i}"), &format!("k-{i}"), json!({}));
        assert_eq!(hosts[0].post_structured(&e).await.status(), 202);
    }
    wait_count(&hosts[0], 25, "all recorded").await;
    // A burst of 10, then 10 a second: the last 15 take 1.5 s at least.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "25 at 10/s took {took:?}"
    );
}

/// The most invocations that ran at once among `ids`, from the spans the recorder kept.
async fn most_at_once(host: &HostClient, ids: impl Iterator<Item = String>) -> i32 {
    let mut edges = Vec::new();
    for id in ids {
        let span = host
            .state("recorder", &format!("span/{id}"))
            .await
            .expect("a span");
        let (start, end) = (span[0].as_u64().unwrap(), span[1].as_u64().unwrap());
        edges.push((start, 1i32));
        edges.push((end, -1i32));
    }
    // Ends before starts at the same instant: touching spans do not overlap.
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, step) in edges {
        running += step;
        most = most.max(running);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_runs_no_more_than_its_share() {
    let nats = NatsServer::start().await;
    // The handler may run 8 at once in the cluster; the one host takes on 3.
    let hosts = hosts_taking(recorder_app("concurrency = 8"), &nats.url(), 1, Some(3)).await;
    for i in 0..12 {
        let e = record(
            &format!("h-{i}"),
            &format!("k-{i}"),
            json!({"sleep_ms": 200, "span": true}),
        );
        assert_eq!(hosts[0].post_structured(&e).await.status(), 202);
    }
    wait_count(&hosts[0], 12, "all recorded").await;
    let most = most_at_once(&hosts[0], (0..12).map(|i| format!("h-{i}"))).await;
    // Never past its share; at least two at once (the spans are those of the runs that
    // committed: one that lost a race on `count` ran again later, so a third overlap is not
    // always seen).
    assert!((2..=3).contains(&most), "{most} at once, with a share of 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_is_refused_on_a_cluster_host_naming_why() {
    let nats = NatsServer::start().await;
    let hosts = hosts(recorder_app(""), &nats.url(), 1).await;
    let response = hosts[0].post("/admin/compact").await;
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().await.expect("a problem");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("JetStream"),
        "{problem}"
    );
}

/// The schema registry is the cluster's: a schema and upcaster registered through one host
/// check events posted to another, and a handler on any host reads old versions upcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_registered_on_one_host_holds_on_every_host() {
    let nats = NatsServer::start().await;
    let v1 = "com.example.test.record.v1";
    let v2 = "com.example.test.record.v2";
    let app = manifest(&format!(
        "[app]\nname = \"rec\"\n\n[[handler]]\nname = \"recorder\"\n\
         module = \"{{guests}}/recorder.wasm\"\nsubscribe = [\"{v1}\"]\n"
    ));
    let hosts = hosts(app, &nats.url(), 2).await;
    let schema_v1 = json!({"type": "object", "required": ["n"],
        "properties": {"n": {"type": "integer", "minimum": 1}}});
    let response = hosts[0]
        .http
        .put(hosts[0].url(&format!("/admin/schemas/{v1}")))
        .json(&schema_v1)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let schema_v2 = json!({"type": "object", "required": ["n", "steps"]});
    let form = reqwest::multipart::Form::new()
        .part(
            "schema",
            reqwest::multipart::Part::text(schema_v2.to_string()),
        )
        .part(
            "upcaster",
            reqwest::multipart::Part::bytes(std::fs::read(guest("stepper")).unwrap())
                .file_name("stepper.wasm"),
        );
    let response = hosts[0]
        .http
        .put(hosts[0].url(&format!("/admin/schemas/{v2}")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);

    // The other host follows the registry: it refuses what the schema refuses.
    hosts[1]
        .eventually("the second host to know both schemas", WAIT, || async {
            hosts[1].get(&format!("/admin/schemas/{v2}")).await.status() == 200
        })
        .await;
    let bad = event("bad", v1, json!({"n": 0}));
    assert_eq!(hosts[1].post_structured(&bad).await.status(), 400);

    // A reader of v2 deployed through the second host gets v1 events posted to the first,
    // upcast by whichever host runs them.
    let config = format!(
        "subscribe = [\"{v2}\"]\naccept_older = true\nconfig = {{ record_received = \"true\" }}\n"
    );
    let form = reqwest::multipart::Form::new()
        .part(
            "module",
            reqwest::multipart::Part::bytes(std::fs::read(guest("recorder")).unwrap())
                .file_name("recorder.wasm"),
        )
        .text("config", config);
    let response = hosts[1]
        .http
        .put(hosts[1].url("/admin/handlers/reader"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    hosts[0]
        .eventually("the first host to run the reader", WAIT, || async {
            hosts[0]
                .handlers()
                .await
                .iter()
                .any(|h| h.name.as_str() == "reader")
        })
        .await;
    for i in 0..10 {
        let response = hosts[i % 2]
            .post_structured(&event(&format!("e-{i}"), v1, json!({"n": i + 1})))
            .await;
        assert_eq!(response.status(), 202);
    }
    for i in 0..10 {
        let got = hosts[0]
            .poll("the reader to get every event", WAIT, || async {
                hosts[0].state("reader", &format!("received/e-{i}")).await
            })
            .await;
        assert_eq!(got["type"], v2);
        assert_eq!(got["data"]["steps"], json!([v1]));
    }
}
