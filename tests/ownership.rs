//! Who owns a handler: the manifest removes what it created once it no longer lists it (at
//! start and with `--watch`), API handlers stay until the API removes them, an API change to
//! a manifest handler stands until the manifest changes, and a data directory belongs to one
//! app. Real hosts, real compiled handlers, the typed admin client.

use std::path::Path;
use std::time::Duration;

use evhost::client::DeadLettersQuery;
use evhost::config::Manifest;
use evhost::store::Origin;
use evhost_tests::{TestHost, event, guest, guests_dir, manifest};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Post one event `id` of `ty` (202), and wait until `handler`'s state `key` is `expected`.
async fn deliver(host: &TestHost, id: &str, ty: &str, handler: &str, key: &str, expected: Value) {
    let posted = host.post_structured(&event(id, ty, json!({}))).await;
    assert_eq!(posted.status(), 202, "POST {id}");
    host.eventually(
        &format!("{handler}: `{key}` is {expected}"),
        WAIT,
        || async { host.state(handler, key).await.as_ref() == Some(&expected) },
    )
    .await;
}

/// A manifest of app `app` with one recorder handler per `(name, type, extra settings)`.
fn recorders(app: &str, handlers: &[(&str, &str, &str)]) -> String {
    let mut toml = format!("[app]\nname = \"{app}\"\n");
    for (name, ty, extra) in handlers {
        toml.push_str(&format!(
            "\n[[handler]]\nname = \"{name}\"\nmodule = \"{}\"\nsubscribe = [\"{ty}\"]\n{extra}\n",
            guest("recorder").display()
        ));
    }
    toml
}

fn module(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("a built guest")
}

async fn handler_names(host: &TestHost) -> Vec<String> {
    let handlers = host.api.handlers().await.expect("the handler list");
    handlers.iter().map(|h| h.name.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_dropped_from_the_manifest_is_removed_at_the_next_start() {
    guests_dir();
    // `slow` takes one event an hour, so what is posted past the first stays pending.
    let both = recorders(
        "owned",
        &[
            ("kept", "test.kept.v1", ""),
            ("slow", "test.slow.v1", "rate = \"1/h\""),
        ],
    );
    let host = TestHost::start(manifest(&both)).await;
    let api = &host.api;
    let deployed = api
        .deploy(
            "extra",
            module("recorder"),
            Some("subscribe = [\"test.extra.v1\"]".into()),
        )
        .await
        .expect("an API deploy");
    assert_eq!(deployed.version, 1);
    for i in 0..3 {
        let posted = host
            .post_structured(&event(&format!("slow-{i}"), "test.slow.v1", json!({})))
            .await;
        assert_eq!(posted.status(), 202);
    }
    host.eventually("one slow event done", WAIT, || async {
        host.state("slow", "count").await == Some(json!(1))
    })
    .await;

    // Every handler says who owns it.
    let handlers = api.handlers().await.expect("the handler list");
    let origin = |name: &str| {
        handlers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.origin)
            .unwrap_or_else(|| panic!("no {name} in {handlers:?}"))
    };
    assert_eq!(origin("kept"), Origin::Manifest);
    assert_eq!(origin("slow"), Origin::Manifest);
    assert_eq!(origin("extra"), Origin::Api);
    let (_, data) = host.stop().await;

    // The manifest drops `slow`: gone at the next start, its two pending events dead
    // letters as on DELETE; the API's handler is not the manifest's to remove.
    let kept_only = recorders("owned", &[("kept", "test.kept.v1", "")]);
    let host = TestHost::start_on(manifest(&kept_only), data)
        .await
        .expect("restarts");
    let api = &host.api;
    assert_eq!(handler_names(&host).await, ["extra", "kept"]);
    let gone = api.handler("slow").await.expect_err("slow is removed");
    assert_eq!(gone.status().map(|s| s.as_u16()), Some(404), "{gone}");
    let letters = api
        .dead_letters(&DeadLettersQuery {
            handler: Some("slow".into()),
            ..DeadLettersQuery::default()
        })
        .await
        .expect("dead letters")
        .deadletters;
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        let error = &letter.errors.last().expect("an error").error;
        assert_eq!(error, "handler removed", "{letter:?}");
    }
    // A type nobody subscribes to now is still taken, and kept with no delivery.
    let posted = host
        .post_structured(&event("slow-late", "test.slow.v1", json!({})))
        .await;
    assert_eq!(posted.status(), 202);
    let logged = host.events(&[("type", "test.slow.v1")]).await;
    let late = logged
        .iter()
        .find(|e| e["event"]["id"] == "slow-late")
        .expect("the late event is in the log");
    assert_eq!(late["deliveries"], json!([]), "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_change_to_a_manifest_handler_stands_until_the_manifest_changes() {
    guests_dir();
    let v1 = recorders(
        "stands",
        &[("worker", "test.work.v1", "config = { label = \"v1\" }")],
    );
    let host = TestHost::start(manifest(&v1)).await;
    let api = &host.api;
    api.remove("worker").await.expect("removed through the API");
    let (_, data) = host.stop().await;

    // The same manifest: the operator's removal stands.
    let host = TestHost::start_on(manifest(&v1), data)
        .await
        .expect("restarts");
    assert!(handler_names(&host).await.is_empty());
    let (_, data) = host.stop().await;

    // The manifest changes the handler: it is deployed again, as a new version, the
    // manifest's.
    let v2 = recorders(
        "stands",
        &[("worker", "test.work.v1", "config = { label = \"v2\" }")],
    );
    let host = TestHost::start_on(manifest(&v2), data)
        .await
        .expect("restarts");
    let worker = host.api.handler("worker").await.expect("worker is back");
    assert_eq!(
        (worker.version, worker.version_origin),
        (2, Origin::Manifest)
    );
    deliver(
        &host,
        "w-1",
        "test.work.v1",
        "worker",
        "handled/w-1",
        json!("v2"),
    )
    .await;
}

/// Write `text` as the manifest at `path` so that its modification time moves even within
/// one tick of a coarse clock.
fn write_manifest(path: &Path, text: &str) {
    let before = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    loop {
        std::fs::write(path, text).expect("write the manifest");
        let after = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if before.is_none() || after != before {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_applies_the_edited_manifest_removing_and_adding_handlers() {
    guests_dir();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("evhost.toml");
    write_manifest(
        &path,
        &recorders(
            "watched",
            &[
                ("first", "test.first.v1", ""),
                ("second", "test.second.v1", ""),
            ],
        ),
    );
    let app = Manifest::load(&path).expect("a valid manifest");
    let data = tempfile::tempdir().expect("a temporary directory");
    let host = TestHost::start_configured(app, data, |o| o.watch = true)
        .await
        .expect("starts");
    assert_eq!(handler_names(&host).await, ["first", "second"]);

    // `second` leaves the manifest, `third` joins it.
    write_manifest(
        &path,
        &recorders(
            "watched",
            &[
                ("first", "test.first.v1", ""),
                ("third", "test.third.v1", ""),
            ],
        ),
    );
    host.eventually("second removed and third deployed", WAIT, || async {
        handler_names(&host).await == ["first", "third"]
    })
    .await;
    deliver(&host, "t-1", "test.third.v1", "third", "count", json!(1)).await;
    // `first` was not touched: still its first version.
    let first = host.api.handler("first").await.expect("first");
    assert_eq!(first.version, 1);

    // A manifest that no longer reads changes nothing.
    write_manifest(
        &path,
        "[app]\nname = \"watched\"\n[[handler]]\nname = \"Bad\"\n",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(handler_names(&host).await, ["first", "third"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_refuses_another_app() {
    guests_dir();
    let shop = recorders("shop", &[("worker", "test.work.v1", "")]);
    let host = TestHost::start(manifest(&shop)).await;
    let (_, data) = host.stop().await;

    let other = recorders("other", &[("worker", "test.work.v1", "")]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let mut options = evhost::Options::new(data.path());
    options.manifest = Some(manifest(&other));
    let error = evhost::run(listener, options, std::future::pending())
        .await
        .expect_err("another app on the same data is refused");
    let error = format!("{error:#}");
    assert!(
        error.contains("`shop`") && error.contains("`other`"),
        "the refusal names both apps: {error}"
    );
    // Refused with nothing changed: the data's own app starts as before.
    let host = TestHost::start_on(manifest(&shop), data)
        .await
        .expect("the app of the data starts");
    assert_eq!(handler_names(&host).await, ["worker"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_adopts_an_api_handler_it_lists_as_it_runs() {
    guests_dir();
    let host = TestHost::start(manifest(&recorders("adopts", &[]))).await;
    let deployed = host
        .api
        .deploy(
            "extra",
            module("recorder"),
            Some("subscribe = [\"test.extra.v1\"]".into()),
        )
        .await
        .expect("an API deploy");
    assert_eq!(deployed.version, 1);
    let (_, data) = host.stop().await;

    // The manifest now lists it exactly as it runs: no new version, but it is the
    // manifest's from here on (and goes when the manifest drops it).
    let listed = recorders("adopts", &[("extra", "test.extra.v1", "")]);
    let host = TestHost::start_on(manifest(&listed), data)
        .await
        .expect("restarts");
    let extra = host.api.handler("extra").await.expect("extra runs");
    assert_eq!((extra.version, extra.origin), (1, Origin::Manifest));
    deliver(&host, "x-1", "test.extra.v1", "extra", "count", json!(1)).await;
    let (_, data) = host.stop().await;
    let host = TestHost::start_on(manifest(&recorders("adopts", &[])), data)
        .await
        .expect("restarts");
    assert!(handler_names(&host).await.is_empty());
}
