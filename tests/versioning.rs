//! Event versions: the schema registry (manifest, API, CLI; immutable; kept over restarts),
//! validation at ingress and of emitted events, compatibility checks naming each breaking
//! change, upcasters composed into chains (a broken step dead-letters, naming it), and the
//! deploy gate. Over real HTTP, with compiled guests: the `recorder` handler (which records
//! what it received under `received/{id}` with `record_received`) and the `stepper` upcaster
//! (which appends the input's type to `steps` and sets `version_seen`, or traps, refuses or
//! breaks at a type the event names).

use std::time::Duration;

use evhost::config::Manifest;
use evhost::store::DeliveryStatus;
use evhost_tests::{TestHost, event, evhost_command, guest, manifest, place_order, stock_added};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

const V1: &str = "test.item.v1";
const V2: &str = "test.item.v2";
const V3: &str = "test.item.v3";

/// v1: a positive `n`.
fn item_v1() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["n"],
        "properties": {"n": {"type": "integer", "minimum": 1}}
    })
}

/// v2: also the `steps` that brought it here, and `n` at most 100: two breaking changes.
fn item_v2() -> Value {
    json!({
        "type": "object",
        "required": ["n", "steps"],
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 100},
            "steps": {"type": "array", "items": {"type": "string"}}
        }
    })
}

/// v3: also the version the last step saw.
fn item_v3() -> Value {
    json!({
        "type": "object",
        "required": ["n", "steps", "version_seen"],
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 100},
            "steps": {"type": "array", "items": {"type": "string"}},
            "version_seen": {"type": "integer"}
        }
    })
}

fn stepper() -> Vec<u8> {
    std::fs::read(guest("stepper")).expect("the stepper upcaster is built")
}

fn recorder() -> Vec<u8> {
    std::fs::read(guest("recorder")).expect("the recorder is built")
}

/// An app with no handlers: tests deploy theirs through the API.
fn empty_app() -> Manifest {
    manifest("[app]\nname = \"test\"\n")
}

async fn put_schema(host: &TestHost, ty: &str, schema: &Value) -> reqwest::Response {
    host.http
        .put(host.url(&format!("/admin/schemas/{ty}")))
        .json(schema)
        .send()
        .await
        .expect("the host answers")
}

/// Register `schema` with the stepper as the upcaster from the previous version.
async fn put_schema_upcast(host: &TestHost, ty: &str, schema: &Value) -> reqwest::Response {
    let form = Form::new()
        .part("schema", Part::text(schema.to_string()))
        .part("upcaster", Part::bytes(stepper()).file_name("stepper.wasm"));
    host.http
        .put(host.url(&format!("/admin/schemas/{ty}")))
        .multipart(form)
        .send()
        .await
        .expect("the host answers")
}

async fn deploy(host: &TestHost, name: &str, config: &str) -> reqwest::Response {
    let form = Form::new()
        .part("module", Part::bytes(recorder()).file_name("recorder.wasm"))
        .text("config", config.to_owned());
    host.http
        .put(host.url(&format!("/admin/handlers/{name}")))
        .multipart(form)
        .send()
        .await
        .expect("the host answers")
}

/// A recorder's settings: reads `subscribe`, records what it got, fails fast.
fn reader(subscribe: &[&str], extra: &str) -> String {
    let types: Vec<String> = subscribe.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "subscribe = [{}]\nmax_attempts = 3\nbackoff = {{ initial_ms = 20, max_ms = 50 }}\n\
         config = {{ record_received = \"true\" }}\n{extra}\n",
        types.join(", ")
    )
}

async fn body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// What the recorder `handler` received as event `id`.
async fn received(host: &TestHost, handler: &str, id: &str) -> Value {
    let key = format!("received/{id}");
    host.poll(&format!("{handler} to receive {id}"), WAIT, || async {
        host.state(handler, &key).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_immutable_and_an_incompatible_version_is_refused_naming_each_change() {
    let host = TestHost::start(empty_app()).await;

    let (status, answer) = body(put_schema(&host, V1, &item_v1()).await).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["outcome"], "created");
    let url = host.url("/admin/schemas/test.item.v1");
    assert_eq!(answer["url"], url);
    let (status, answer) = body(put_schema(&host, V1, &item_v1()).await).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("unchanged"))
    );

    // The registered schema is what the host serves at its URL.
    let response = host.get("/admin/schemas/test.item.v1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/schema+json"
    );
    assert_eq!(response.json::<Value>().await.unwrap(), item_v1());

    // A registered schema never changes: the change is the next version.
    let mut changed = item_v1();
    changed["properties"]["n"]["minimum"] = json!(0);
    let (status, problem) = body(put_schema(&host, V1, &changed).await).await;
    assert_eq!(status, 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("never changes: register the change as `test.item.v2`"),
        "{detail}"
    );

    // v2 breaks v1's events three ways: each change is named, with its pointer and rule
    // (v1 is open to other fields, so a v1 event may already carry a `steps` of any shape).
    let (status, problem) = body(put_schema(&host, V2, &item_v2()).await).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["compatibility"], "backward");
    let changes = problem["breaking_changes"]
        .as_array()
        .expect("the breaking changes");
    assert_eq!(changes.len(), 3, "{problem:#}");
    let named = |pointer: &str, rule: &str| {
        changes.iter().any(|c| {
            c["pointer"] == pointer
                && c["against"] == 1
                && c["direction"] == "backward"
                && c["rule"].as_str().is_some_and(|r| r.contains(rule))
        })
    };
    assert!(named("/steps", "new required field"), "{problem:#}");
    assert!(named("/steps", "old events may carry"), "{problem:#}");
    assert!(named("/n", "maximum"), "{problem:#}");
    assert!(host.get("/admin/schemas/test.item.v2").await.status() == 404);

    // With an upcaster from v1 old events have a way to v2: it is registered.
    let (status, answer) = body(put_schema_upcast(&host, V2, &item_v2()).await).await;
    assert_eq!(status, 201, "{answer}");

    // Versions come in order; a type is versioned; a schema is one.
    let (status, problem) = body(put_schema(&host, "test.item.v4", &item_v1()).await).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("register `test.item.v3` first")
    );
    let (status, problem) = body(put_schema(&host, "test.item", &item_v1()).await).await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not a versioned type")
    );
    let (status, problem) = body(put_schema(&host, V3, &json!({"type": "objekt"})).await).await;
    assert_eq!(status, 400, "{problem}");
    let draft7 = json!({"$schema": "http://json-schema.org/draft-07/schema#"});
    let (status, problem) = body(put_schema(&host, V3, &draft7).await).await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("draft 2020-12")
    );

    // The listing: the family, its mode, how each version is reached from the one before.
    let list = host.get_json("/admin/schemas").await;
    let family = &list["families"][0];
    assert_eq!(family["family"], "test.item");
    assert_eq!(family["compatibility"], "backward");
    assert_eq!(family["versions"][0]["type"], V1);
    assert_eq!(family["versions"][0]["from_previous"], Value::Null);
    assert_eq!(family["versions"][1]["type"], V2);
    assert_eq!(family["versions"][1]["from_previous"], "upcaster");
    assert_eq!(family["versions"][1]["upcaster"]["from"], V1);
    let upcasters = host.get_json("/admin/upcasters").await;
    assert_eq!(upcasters["upcasters"][0]["to"], V2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_refuses_data_that_breaks_its_schema_and_stores_nothing_of_the_request() {
    let host = TestHost::start(empty_app()).await;
    assert_eq!(put_schema(&host, V1, &item_v1()).await.status(), 201);
    assert_eq!(
        deploy(&host, "reader", &reader(&[V1], "")).await.status(),
        201
    );

    let (status, problem) = body(
        host.post_structured(&event("e-0", V1, json!({"n": 0})))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("schema-mismatch")
    );
    assert_eq!(problem["attribute"], "data");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("\"/n\": must be >= 1"), "{detail}");
    assert_eq!(problem["violations"][0]["pointer"], "/n");
    assert_eq!(problem["schema"], host.url("/admin/schemas/test.item.v1"));

    // One bad event in a batch: the batch is refused, naming its index, and none is stored.
    let batch = [
        event("b-0", V1, json!({"n": 1})),
        event("b-1", V1, json!({"n": "one"})),
    ];
    let (status, problem) = body(host.post_batch(&batch).await).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["index"], 1);
    assert_eq!(problem["attribute"], "[1].data");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("event at index 1")
    );

    // Data that is not JSON cannot match a schema.
    let mut text = event("text-0", V1, json!("n=1"));
    text["datacontenttype"] = json!("text/plain");
    let (status, problem) = body(host.post_structured(&text).await).await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("not JSON"),
        "{problem}"
    );

    assert!(
        host.all_events().await.is_empty(),
        "a refused request stored something"
    );

    // An event that matches is taken, with `dataschema` pointing at its schema.
    let response = host
        .post_structured(&event("e-1", V1, json!({"n": 3})))
        .await;
    assert_eq!(response.status(), 202);
    let stored = host.all_events().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["event"]["dataschema"],
        host.url("/admin/schemas/test.item.v1")
    );
    let got = received(&host, "reader", "e-1").await;
    assert_eq!(got["dataschema"], host.url("/admin/schemas/test.item.v1"));
    // A type with no schema is not checked (the app does not require one).
    let response = host
        .post_structured(&event("o-1", "test.other.v1", json!(1)))
        .await;
    assert_eq!(response.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_require_refuses_types_without_one() {
    let host = TestHost::start(manifest(
        "[app]\nname = \"test\"\n\n[schemas]\nrequire = true\n",
    ))
    .await;
    assert_eq!(put_schema(&host, V1, &item_v1()).await.status(), 201);
    let (status, problem) = body(
        host.post_structured(&event("o-1", "test.other.v1", json!(1)))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem["type"].as_str().unwrap().ends_with("no-schema"));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("`[schemas] require = true`")
    );
    // Nor may a handler subscribe to one.
    let (status, problem) =
        body(deploy(&host, "reader", &reader(&[V1, "test.other.v1"], "")).await).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["problems"][0]
            .as_str()
            .unwrap()
            .contains("`test.other.v1`, which has no registered schema")
    );
    assert_eq!(
        deploy(&host, "reader", &reader(&[V1], "")).await.status(),
        201
    );
    let response = host
        .post_structured(&event("i-1", V1, json!({"n": 1})))
        .await;
    assert_eq!(response.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emitted_event_that_breaks_its_schema_fails_the_invocation() {
    let host = TestHost::start(empty_app()).await;
    assert_eq!(put_schema(&host, V1, &item_v1()).await.status(), 201);
    assert_eq!(
        deploy(&host, "maker", &reader(&["test.make.v1"], ""))
            .await
            .status(),
        201
    );

    let bad = json!({"emit": {"type": V1, "data": {"n": 0}}});
    host.post_structured(&event("make-bad", "test.make.v1", bad))
        .await;
    let dead = host.wait_dead("make-bad", "maker", WAIT).await;
    assert_eq!(
        dead.attempts, 3,
        "it failed like any failure, retried to its limit"
    );
    let error = dead.last_error.unwrap_or_default();
    assert!(
        error.contains(
            "emitted event 0 (`test.item.v1`) does not match its schema: \"/n\": must be >= 1"
        ),
        "{error}"
    );
    assert!(
        host.events_of_type(V1).await.is_empty(),
        "the invalid event was committed"
    );
    assert_eq!(
        host.state("maker", "count").await,
        None,
        "its state writes were committed"
    );

    let good = json!({"emit": {"type": V1, "data": {"n": 2}}});
    host.post_structured(&event("make-good", "test.make.v1", good))
        .await;
    host.wait_delivery("make-good", "maker", DeliveryStatus::Done, WAIT)
        .await;
    let emitted = host.events_of_type(V1).await;
    assert_eq!(emitted.len(), 1);
    assert_eq!(
        emitted[0]["dataschema"],
        host.url("/admin/schemas/test.item.v1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_event_stored_before_the_v2_reader_reaches_it_upcast_once_the_gate_lets_it_in() {
    let host = TestHost::start(empty_app()).await;
    assert_eq!(put_schema(&host, V1, &item_v1()).await.status(), 201);
    assert_eq!(put_schema_upcast(&host, V2, &item_v2()).await.status(), 201);
    let serial = "ordering = \"serial\"";
    assert_eq!(
        deploy(&host, "reader", &reader(&[V1], serial))
            .await
            .status(),
        201
    );

    // The first event holds the line; the second waits behind it, stored as v1.
    let hold = json!({"n": 1, "sleep_ms": 3000});
    assert_eq!(
        host.post_structured(&event("hold", V1, hold))
            .await
            .status(),
        202
    );
    let old = json!({"n": 7});
    assert_eq!(
        host.post_structured(&event("old", V1, old.clone()))
            .await
            .status(),
        202
    );

    // A version that reads only v2 would get the waiting v1 events it cannot read.
    let (status, problem) = body(deploy(&host, "reader", &reader(&[V2], serial)).await).await;
    assert_eq!(status, 409, "{problem}");
    let problems = problem["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problem:#}");
    let gate = problems[0].as_str().unwrap();
    assert!(
        gate.contains("pending deliveries of `test.item.v1` would reach handler `reader`"),
        "{gate}"
    );
    assert!(gate.contains("set `accept_older`"), "{gate}");
    assert_eq!(host.handler_info("reader").await.version, 1);

    // Reading older versions, with the upcaster as their way: let in.
    let config = reader(&[V2], &format!("{serial}\naccept_older = true"));
    let (status, answer) = body(deploy(&host, "reader", &config).await).await;
    assert_eq!(status, 200, "{answer}");

    let got = received(&host, "reader", "old").await;
    assert_eq!(got["type"], V2);
    assert_eq!(
        got["data"],
        json!({"n": 7, "steps": [V1], "version_seen": 1})
    );
    assert_eq!(got["dataschema"], host.url("/admin/schemas/test.item.v2"));

    // The stored event never changed; the log shows it and what the reader got.
    let log = host.event_log().await;
    let logged = log.iter().find(|e| e.event["id"] == "old").unwrap();
    assert_eq!(logged.event["type"], V1);
    assert_eq!(logged.event["data"], old);
    let delivery = &logged.deliveries[0];
    let delivered_as = delivery.delivered_as.as_ref().expect("the upcast event");
    assert_eq!(delivered_as["type"], V2);
    assert_eq!(delivered_as["data"]["steps"], json!([V1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_compose_step_by_step_and_a_broken_step_dead_letters_naming_it() {
    let host = TestHost::start(empty_app()).await;
    assert_eq!(put_schema(&host, V1, &item_v1()).await.status(), 201);
    assert_eq!(put_schema_upcast(&host, V2, &item_v2()).await.status(), 201);
    assert_eq!(put_schema_upcast(&host, V3, &item_v3()).await.status(), 201);
    let config = reader(&[V3], "accept_older = true\nconcurrency = 4");
    assert_eq!(deploy(&host, "reader", &config).await.status(), 201);

    host.post_structured(&event("from-1", V1, json!({"n": 1})))
        .await;
    host.post_structured(&event(
        "from-2",
        V2,
        json!({"n": 2, "steps": ["made as v2"]}),
    ))
    .await;
    host.post_structured(&event(
        "at-3",
        V3,
        json!({"n": 3, "steps": [], "version_seen": 3}),
    ))
    .await;
    let got = received(&host, "reader", "from-1").await;
    assert_eq!(got["type"], V3);
    assert_eq!(
        got["data"],
        json!({"n": 1, "steps": [V1, V2], "version_seen": 2})
    );
    let got = received(&host, "reader", "from-2").await;
    assert_eq!(got["data"]["steps"], json!(["made as v2", V2]));
    let got = received(&host, "reader", "at-3").await;
    assert_eq!(got["data"], json!({"n": 3, "steps": [], "version_seen": 3}));

    // Each broken step: dead at once (no attempt could succeed), the step named.
    let broken = [
        (
            "trap",
            json!({"n": 1, "trap_at": V2}),
            "upcasting `test.item.v2` to `test.item.v3`",
            "trapped",
        ),
        (
            "fail",
            json!({"n": 1, "fail_at": V1}),
            "upcasting `test.item.v1` to `test.item.v2`",
            "refused the event: asked to fail",
        ),
        (
            "break",
            json!({"n": 1, "break_at": V1}),
            "upcasting `test.item.v1` to `test.item.v2`",
            "does not match the schema of `test.item.v2`",
        ),
        (
            "slow",
            json!({"n": 1, "sleep_ms_at": {"type": V2, "ms": 5000}}),
            "upcasting `test.item.v2` to `test.item.v3`",
            "timed out after 2s",
        ),
    ];
    for (id, data, _, _) in &broken {
        host.post_structured(&event(id, V1, data.clone())).await;
    }
    for (id, _, step, why) in &broken {
        let dead = host.wait_dead(id, "reader", WAIT).await;
        assert_eq!(dead.attempts, 1, "{id}: {dead:?}");
        let error = dead.last_error.unwrap_or_default();
        assert!(error.contains(step) && error.contains(why), "{id}: {error}");
        assert_eq!(host.state("reader", &format!("received/{id}")).await, None);
    }
    // What the log shows of a broken one: no upcast, and why.
    let log = host.event_log().await;
    let trap = log.iter().find(|e| e.event["id"] == "trap").unwrap();
    let error = trap.deliveries[0]
        .upcast_error
        .as_deref()
        .unwrap_or_default();
    assert!(error.contains("trapped"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_a_reader_until_an_upcaster_gives_old_versions_a_way() {
    let host = TestHost::start(empty_app()).await;
    assert_eq!(put_schema(&host, V1, &item_v1()).await.status(), 201);
    // Forced in without a way from v1 (mode `none`).
    let response = host
        .http
        .put(host.url("/admin/schemas/test.item.v2?compatibility=none"))
        .json(&item_v2())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let config = reader(&[V2], "accept_older = true");
    let (status, problem) = body(deploy(&host, "reader", &config).await).await;
    assert_eq!(status, 409, "{problem}");
    let gate = problem["problems"][0].as_str().unwrap();
    assert!(
        gate.contains("`test.item.v1` is registered with no upcast path to it")
            && gate.contains("no upcaster from `test.item.v1` is registered"),
        "{gate}"
    );
    assert!(host.handlers().await.is_empty());

    let response = host
        .http
        .put(host.url("/admin/upcasters/test.item.v1"))
        .body(stepper())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let (status, answer) = body(deploy(&host, "reader", &config).await).await;
    assert_eq!(status, 201, "{answer}");
    host.post_structured(&event("one", V1, json!({"n": 1})))
        .await;
    assert_eq!(received(&host, "reader", "one").await["type"], V2);

    // The way cannot be taken away while a reader depends on it.
    let (status, problem) = body(host.delete("/admin/upcasters/test.item.v1").await).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["problems"][0]
            .as_str()
            .unwrap()
            .contains("no upcast path")
    );
    let (status, problem) = body(host.delete("/admin/schemas/test.item.v2").await).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["problems"][0]
            .as_str()
            .unwrap()
            .contains("no registered schema to check upcast events against")
    );
    // Nor can a version below the latest go.
    let (status, _) = body(host.delete("/admin/schemas/test.item.v1").await).await;
    assert_eq!(status, 409);

    // Without the reader, both may go.
    assert_eq!(host.delete("/admin/handlers/reader").await.status(), 200);
    assert_eq!(
        host.delete("/admin/upcasters/test.item.v1").await.status(),
        200
    );
    assert_eq!(
        host.delete("/admin/schemas/test.item.v2").await.status(),
        200
    );
    assert_eq!(host.get("/admin/schemas/test.item.v2").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_and_upcasters_survive_a_restart() {
    let host = TestHost::start(empty_app()).await;
    assert_eq!(put_schema(&host, V1, &item_v1()).await.status(), 201);
    assert_eq!(put_schema_upcast(&host, V2, &item_v2()).await.status(), 201);
    let config = reader(&[V2], "accept_older = true");
    assert_eq!(deploy(&host, "reader", &config).await.status(), 201);
    // The URLs move with the port a restarted test host listens on (a deployment names its
    // own with `--public-url`); everything else stays.
    let without_urls = |mut list: Value| {
        for family in list["families"].as_array_mut().unwrap() {
            for version in family["versions"].as_array_mut().unwrap() {
                version.as_object_mut().unwrap().remove("url");
            }
        }
        list
    };
    let before = without_urls(host.get_json("/admin/schemas").await);
    let (manifest, data) = host.stop().await;

    let host = TestHost::start_on(manifest, data)
        .await
        .expect("the host restarts");
    let after = without_urls(host.get_json("/admin/schemas").await);
    assert_eq!(after, before);
    // Still checked, still upcast.
    let response = host
        .post_structured(&event("bad", V1, json!({"n": 0})))
        .await;
    assert_eq!(response.status(), 400);
    host.post_structured(&event("one", V1, json!({"n": 4})))
        .await;
    let got = received(&host, "reader", "one").await;
    assert_eq!(
        got["data"],
        json!({"n": 4, "steps": [V1], "version_seen": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_puts_gets_and_lists_schemas() {
    let host = TestHost::start(empty_app()).await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("v1.json");
    let v2 = dir.path().join("v2.json");
    std::fs::write(&v1, item_v1().to_string()).unwrap();
    std::fs::write(&v2, item_v2().to_string()).unwrap();
    let cli = |args: &[&str]| {
        let mut command = evhost_command();
        command.args(args).args(["--host", &host.url("")]);
        async move { command.output().await.expect("the CLI runs") }
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let out = cli(&["schema", "put", V1, v1.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("test.item.v1: created"),
        "{}",
        text(&out.stdout)
    );

    // Refused: each breaking change on a line of its own.
    let out = cli(&["schema", "put", V2, v2.to_str().unwrap()]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("409") && err.contains("v1 (backward): \"/steps\": new required field"),
        "{err}"
    );

    let upcaster = guest("stepper");
    let out = cli(&[
        "schema",
        "put",
        V2,
        v2.to_str().unwrap(),
        "--upcaster",
        upcaster.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = cli(&["schema", "get", V1]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, item_v1());

    let out = cli(&["schema", "list"]).await;
    let listed = text(&out.stdout);
    assert!(
        listed.contains("test.item.v1") && listed.contains("test.item.v2"),
        "{listed}"
    );
    assert!(listed.contains("upcaster"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_reads_v1_orders_as_v2_through_its_upcaster() {
    let host = TestHost::start(evhost_tests::shop_manifest()).await;
    // The manifest registered every schema, v2 with its upcaster.
    let list = host.get_json("/admin/schemas").await;
    let placed = list["families"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["family"] == "com.example.shop.order.placed")
        .expect("the order.placed family");
    assert_eq!(placed["versions"][1]["from_previous"], "upcaster");

    host.post_structured(&stock_added("stock-1", "sku-1", 5))
        .await;
    host.post_structured(&place_order("o-1", "sku-1", 2, 30.0))
        .await;
    host.wait_idle(WAIT).await;
    assert_eq!(host.state("inventory", "stock/sku-1").await, Some(json!(3)));
    let placed = host
        .events_of_type("com.example.shop.order.placed.v1")
        .await;
    assert_eq!(placed.len(), 1, "the order handler still emits v1");
    let id = placed[0]["id"].as_str().unwrap().to_owned();
    let delivery = host.delivery_to(&id, "inventory").await;
    let delivered_as = delivery.delivered_as.expect("inventory reads it as v2");
    assert_eq!(delivered_as["type"], "com.example.shop.order.placed.v2");
    assert_eq!(
        delivered_as["data"]["total"],
        json!({"amount": 30.0, "currency": "EUR"})
    );
    // A bad order is refused at the door, naming the rule.
    let (status, problem) = body(
        host.post_structured(&place_order("o-2", "sku-1", 0, 5.0))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("\"/quantity\": must be >= 1")
    );
}
