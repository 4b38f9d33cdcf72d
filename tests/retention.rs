//! Retention: settled events leave the log after `done_after` while pending and dead ones
//! stay, dedupe holds as long as the event is stored, `max_log_bytes` deletes the oldest
//! settled events first and says when it cannot get under, old module versions go while
//! rollback still works, the store's sizes are on `/metrics`, and `evhost compact` empties
//! the WAL of a running `evhost up`.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use evhost::config::Manifest;
use evhost::store::DeliveryStatus;
use evhost_tests::{HostClient, HostProcess, TestHost, event, evhost_command, guest, manifest};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// An app of one `recorder` handler subscribed to `test.work.v1`, with `[retention]` keys
/// `retention` and more handler settings `settings`.
fn recorder_app(retention: &str, settings: &str) -> Manifest {
    manifest(&format!(
        "[app]\nname = \"test\"\n\n[retention]\n{retention}\n\n[[handler]]\n\
         name = \"recorder\"\nmodule = \"{{guests}}/recorder.wasm\"\n\
         subscribe = [\"test.work.v1\"]\n{settings}\n"
    ))
}

/// The value of the sample `series` (a metric name, with its labels as Prometheus writes
/// them, sorted by name) in the `/metrics` text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

async fn metric(host: &HostClient, series: &str) -> f64 {
    let text = host.metrics().await;
    sample(&text, series).unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
}

/// The series of the rows retention deleted from `table` for `reason`.
fn deleted_rows(reason: &str, table: &str) -> String {
    format!("evhost_retention_deleted_rows_total{{reason=\"{reason}\",table=\"{table}\"}}")
}

/// Wait until `/metrics` shows each series of `expected` at its value: a counter moves just
/// after the write a reader already sees.
async fn wait_samples(host: &HostClient, expected: &[(&str, f64)]) {
    let what = format!("{expected:?} on /metrics");
    host.eventually(&what, WAIT, || async {
        let text = host.metrics().await;
        let found = |(series, value): &(&str, f64)| sample(&text, series) == Some(*value);
        expected.iter().all(found)
    })
    .await;
}

/// The ids of the events in the log, oldest first.
async fn logged_ids(host: &HostClient) -> Vec<String> {
    let log = host.event_log().await;
    let ids = log.iter().map(|logged| logged.event["id"].as_str());
    ids.map(|id| id.expect("an id").to_owned()).collect()
}

/// A `test.work.v1` event whose data carries `pad` bytes beside `asks` (the recorder ignores
/// fields it does not know).
fn padded(id: &str, pad: usize, mut asks: Value) -> Value {
    asks["pad"] = json!("x".repeat(pad));
    event(id, "test.work.v1", asks)
}

async fn post(host: &HostClient, event: &Value) -> Value {
    let response = host.post_structured(event).await;
    assert_eq!(response.status(), 202, "{event:?}");
    response.json().await.expect("the ingest answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_events_leave_the_log_while_pending_and_dead_ones_stay() {
    // A retry a minute away keeps its delivery retrying for the whole test.
    let host = TestHost::start(recorder_app(
        "done_after = \"300ms\"\ninterval = \"50ms\"",
        "max_attempts = 3\nbackoff = { initial_ms = 60000, max_ms = 60000 }",
    ))
    .await;
    let before = metric(&host, "evhost_store_events").await;
    assert_eq!(before, 0.0);
    for i in 0..5 {
        post(&host, &event(&format!("ok-{i}"), "test.work.v1", json!({}))).await;
    }
    post(
        &host,
        &event("dead", "test.work.v1", json!({"fail": "reject"})),
    )
    .await;
    post(
        &host,
        &event("retrying", "test.work.v1", json!({"fail": "retry"})),
    )
    .await;
    post(&host, &event("unrouted", "test.nobody.v1", json!({}))).await;
    host.wait_dead("dead", "recorder", WAIT).await;
    host.wait_delivery("retrying", "recorder", DeliveryStatus::Retrying, WAIT)
        .await;
    // The handled ones may be gone from the log already; their state is not the log's.
    host.eventually("the five were handled", WAIT, || async {
        host.state("recorder", "count").await == Some(json!(5))
    })
    .await;

    host.eventually("only the dead and the retrying stay", WAIT, || async {
        logged_ids(&host).await == ["dead", "retrying"]
    })
    .await;
    let letters = host.dead_letters(&[]).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event["id"], "dead");
    assert_eq!(
        host.delivery_to("retrying", "recorder").await.status,
        DeliveryStatus::Retrying
    );
    assert_eq!(host.state("recorder", "count").await, Some(json!(5)));

    // What went is counted, by table and reason; what is left is the gauge.
    wait_samples(
        &host,
        &[
            (&deleted_rows("age", "events"), 6.0),
            (&deleted_rows("age", "deliveries"), 5.0),
            ("evhost_store_events", 2.0),
        ],
    )
    .await;
    // A pass that deleted checkpoints the WAL once it is done.
    host.eventually("a checkpoint after the pass", WAIT, || async {
        let text = host.metrics().await;
        let checkpoints = ["truncated", "busy"].map(|result| {
            let series = format!("evhost_store_checkpoints_total{{result=\"{result}\"}}");
            sample(&text, &series).unwrap_or(0.0)
        });
        checkpoints.iter().sum::<f64>() >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_holds_while_the_event_is_kept_and_ends_with_it() {
    let host = TestHost::start(recorder_app("done_after = \"3s\"\ninterval = \"50ms\"", "")).await;
    let once = event("once", "test.work.v1", json!({}));
    let first = post(&host, &once).await;
    assert_eq!(first["accepted"][0]["duplicate"], false);
    host.eventually("it was handled", WAIT, || async {
        host.state("recorder", "count").await == Some(json!(1))
    })
    .await;

    // Within done_after: the same (source, id) is a duplicate, and runs nothing.
    let again = post(&host, &once).await;
    assert_eq!(again["accepted"][0]["duplicate"], true, "{again}");
    assert_eq!(again["accepted"][0]["seq"], first["accepted"][0]["seq"]);
    assert_eq!(logged_ids(&host).await, ["once"]);

    // Past it the event, and its dedupe key, are gone: the same id is a new event.
    host.eventually("the event left the log", WAIT, || async {
        logged_ids(&host).await.is_empty()
    })
    .await;
    let later = post(&host, &once).await;
    assert_eq!(later["accepted"][0]["duplicate"], false, "{later}");
    host.eventually("it was handled again", WAIT, || async {
        host.state("recorder", "count").await == Some(json!(2))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_log_bytes_deletes_the_oldest_settled_first_and_says_when_it_cannot() {
    // The recorder's module alone takes about 3.3 MB of the store. Serial, so that the
    // settled events are always the oldest ones.
    let host = TestHost::start(recorder_app(
        "done_after = \"never\"\nmax_log_bytes = \"8 MiB\"\ninterval = \"50ms\"",
        "ordering = \"serial\"",
    ))
    .await;
    const PAD: usize = 256 << 10;
    post(&host, &padded("dead-0", PAD, json!({"fail": "reject"}))).await;
    for i in 0..40 {
        post(&host, &padded(&format!("big-{i:02}"), PAD, json!({}))).await;
    }
    host.eventually("all were handled", WAIT, || async {
        host.state("recorder", "count").await == Some(json!(40))
    })
    .await;
    host.eventually("the store is under its limit", WAIT, || async {
        metric(&host, "evhost_store_used_bytes").await <= f64::from(8 << 20)
    })
    .await;
    let left = logged_ids(&host).await;
    assert_eq!(left[0], "dead-0", "a dead letter stays: {left:?}");
    let kept: Vec<&String> = left[1..].iter().collect();
    assert!(!kept.is_empty() && kept.len() < 40, "{left:?}");
    // The oldest went first: what is left of the handled ones is the newest, in a run.
    let from: usize = kept[0]["big-".len()..].parse().expect("a number");
    let newest: Vec<String> = (from..40).map(|i| format!("big-{i:02}")).collect();
    assert_eq!(left[1..], newest);
    wait_samples(
        &host,
        &[
            ("evhost_store_over_limit", 0.0),
            (&deleted_rows("size", "events"), from as f64),
        ],
    )
    .await;

    // Dead letters beyond the limit: nothing settled is left to delete, so it says so, and
    // keeps taking events.
    for i in 1..=30 {
        post(
            &host,
            &padded(&format!("dead-{i}"), PAD, json!({"fail": "reject"})),
        )
        .await;
    }
    host.eventually("the store says it is over its limit", WAIT, || async {
        metric(&host, "evhost_store_over_limit").await == 1.0
    })
    .await;
    host.wait_dead_letters(31, WAIT).await;
    post(&host, &event("still-taken", "test.work.v1", json!({}))).await;
    let ids: BTreeSet<String> = logged_ids(&host).await.into_iter().collect();
    assert!(
        (0..=30).all(|i| ids.contains(&format!("dead-{i}"))),
        "{ids:?}"
    );
}

/// The stored versions of `handler`, oldest first.
async fn stored_versions(host: &HostClient, handler: &str) -> Vec<u32> {
    let info = host.handler_info(handler).await;
    let versions = info.versions.expect("the versions");
    versions.iter().map(|v| v.version).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_beyond_the_kept_count_go_while_rollback_still_works() {
    let app = recorder_app("versions_kept = 1\ninterval = \"50ms\"", "");
    let host = TestHost::start(app.clone()).await;
    // v2 and v3 run other modules (the shop's, which never see a `test.work.v1` here); v4
    // and v5 the manifest's module again, labelled.
    let settings = |label: &str| {
        format!("subscribe = [\"test.work.v1\"]\nconfig = {{ label = \"{label}\" }}\n")
    };
    let versions = [
        ("order", settings("two")),
        ("notification", settings("three")),
        ("recorder", settings("four")),
        ("recorder", settings("five")),
    ];
    for (module, config) in versions {
        let bytes = std::fs::read(guest(module)).expect("the module");
        host.api
            .deploy("recorder", bytes, Some(config))
            .await
            .expect("the deploy");
    }
    host.eventually(
        "the live one, its rollback and one more stay",
        WAIT,
        || async { stored_versions(&host, "recorder").await == [4, 5] },
    )
    .await;
    // The shop's two modules; the recorder's serves v4 and v5.
    wait_samples(
        &host,
        &[
            (&deleted_rows("versions", "handler_versions"), 3.0),
            (&deleted_rows("versions", "modules"), 2.0),
        ],
    )
    .await;

    let rolled = host.api.rollback("recorder").await.expect("the rollback");
    assert_eq!(rolled.version, 4);
    post(&host, &event("after-rollback", "test.work.v1", json!({}))).await;
    host.eventually("v4 handled it", WAIT, || async {
        host.state("recorder", "handled/after-rollback").await == Some(json!("four"))
    })
    .await;
    let no_earlier = host.api.rollback("recorder").await.expect_err("v3 is gone");
    assert_eq!(no_earlier.status().map(|s| s.as_u16()), Some(409));

    // A restart builds the live version from the module the store kept.
    let (app, data) = host.stop().await;
    let host = TestHost::start_on(app, data).await.expect("the restart");
    assert_eq!(host.handler_info("recorder").await.version, 4);
    post(&host, &event("after-restart", "test.work.v1", json!({}))).await;
    host.eventually("v4 handled it after the restart", WAIT, || async {
        host.state("recorder", "handled/after-restart").await == Some(json!("four"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_sizes_are_on_metrics_and_move() {
    let host = TestHost::start(recorder_app("", "")).await;
    let text = host.metrics().await;
    let database = sample(&text, "evhost_store_database_bytes").expect("database bytes");
    let used = sample(&text, "evhost_store_used_bytes").expect("used bytes");
    // The file lags behind the pages in use by what the WAL holds.
    assert!(database > 0.0 && used > 0.0, "{text}");
    assert!(sample(&text, "evhost_store_wal_bytes").is_some(), "{text}");
    assert_eq!(sample(&text, "evhost_store_events"), Some(0.0), "{text}");

    for i in 0..8 {
        post(&host, &padded(&format!("e-{i}"), 128 << 10, json!({}))).await;
    }
    host.wait_idle(WAIT).await;
    let text = host.metrics().await;
    assert_eq!(sample(&text, "evhost_store_events"), Some(8.0), "{text}");
    let grown = sample(&text, "evhost_store_used_bytes").expect("used bytes");
    assert!(
        grown >= used + f64::from(8 * (128 << 10)),
        "{used} -> {grown}"
    );
    let wal = sample(&text, "evhost_store_wal_bytes").expect("wal bytes");
    assert!(wal > 0.0, "{text}");
}

/// `evhost ARGS`, its output.
async fn evhost(args: &[&str]) -> Output {
    let mut command = evhost_command();
    command.args(args);
    tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the command finishes")
        .expect("the command runs")
}

/// The before and after of `what` in `evhost compact`'s output.
fn compacted(stdout: &str, what: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some(what))
        .unwrap_or_else(|| panic!("no `{what}` line in:\n{stdout}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evhost_compact_empties_the_wal_of_a_running_host() {
    let app = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        app.path().join("evhost.toml"),
        format!(
            "[app]\nname = \"test\"\n\n[[handler]]\nname = \"recorder\"\nmodule = {:?}\n\
             subscribe = [\"test.work.v1\"]\n",
            guest("recorder")
        ),
    )
    .expect("write the manifest");
    // The test's own, so that it outlives the host for the rewrite below.
    let data = tempfile::tempdir().expect("a temporary directory");
    let mut host = HostProcess::new(app.path(), &["."]).with_data_dir(data.path().to_owned());
    let base = host.start().await.url("");
    for i in 0..24 {
        post(&host, &padded(&format!("e-{i}"), 256 << 10, json!({}))).await;
    }
    host.wait_idle(WAIT).await;
    let wal_before = metric(&host, "evhost_store_wal_bytes").await;
    assert!(wal_before >= f64::from(1 << 20), "{wal_before}");

    let out = evhost(&["compact", "--host", &base]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (before, after) = compacted(&stdout, "wal");
    assert!(before >= 1 << 20, "{stdout}");
    assert_eq!(after, 0, "{stdout}");
    assert!(metric(&host, "evhost_store_wal_bytes").await < wal_before);
    // Nothing of the log went with it.
    assert_eq!(host.event_log().await.len(), 24);

    // The whole rewrite needs the host stopped, and says so while it runs.
    let dir = data.path().to_str().expect("a UTF-8 path");
    let out = evhost(&["compact", "--data", dir]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another evhost"), "{stderr}");
    assert!(stderr.contains("--host"), "{stderr}");
    let status = host.terminate(WAIT).await;
    assert!(status.success(), "{status}");
    let out = evhost(&["compact", "--data", dir]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, free_after) = compacted(&stdout, "free");
    assert_eq!(free_after, 0, "{stdout}");
}
