//! A handler cannot exhaust the host: what one invocation stages is bounded by its budget
//! (`max_staged_mb`, `max_writes`, `max_emits`) and an overrun fails the invocation as an
//! attempt, so the poison event ends as a dead letter, also across a restart; its reasons,
//! log lines and stdout are bounded; events it emits meet the ingress rules on extensions;
//! the instance pool is shared without one handler failing another's deliveries; and a
//! stalled stderr does not stop deliveries.

use std::path::Path;
use std::time::Duration;

use evhost::store::DeliveryStatus;
use evhost_tests::{
    HostClient, HostProcess, TestHost, event, evhost_command, guest, one_handler_app,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;
const GREEDY: &str = "test.greedy.v1";

/// The greedy fixture as handler `greedy`, with `settings` added.
fn greedy_app(settings: &str) -> evhost::config::Manifest {
    one_handler_app("greedy", "greedy", &[GREEDY], settings)
}

/// Post a greedy event asking for `asks`.
async fn post(host: &HostClient, id: &str, asks: Value) {
    let response = host.post_structured(&event(id, GREEDY, asks)).await;
    assert_eq!(response.status(), 202, "POST {id}");
}

/// The last error of a dead delivery of `id` to `greedy`.
async fn dead_error(host: &HostClient, id: &str) -> String {
    let dead = host.wait_dead(id, "greedy", WAIT).await;
    let error = dead.last_error.clone();
    error.unwrap_or_else(|| panic!("a dead delivery has an error: {dead:?}"))
}

/// Wait until the event `id` went through the whole fixture.
async fn wait_done(host: &HostClient, id: &str) {
    host.wait_delivery(id, "greedy", DeliveryStatus::Done, WAIT)
        .await;
    assert_eq!(
        host.state("greedy", &format!("done/{id}")).await,
        Some(json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_past_max_staged_mb_dead_letters_the_event_and_the_host_stays_up() {
    let host = TestHost::start(greedy_app(
        "max_attempts = 2\nbackoff = { initial_ms = 10, max_ms = 10 }",
    ))
    .await;
    // 20 writes of 1 MiB, past the default 16 MiB.
    post(&host, "poison", json!({"set": {"count": 20, "bytes": MIB}})).await;
    let error = dead_error(&host, "poison").await;
    assert!(
        error.contains("invocation budget") && error.contains("`max_staged_mb` of 16 MiB"),
        "{error}"
    );
    assert!(
        error.contains("key `k/"),
        "names the write that passed it: {error}"
    );
    let dead = host.delivery_to("poison", "greedy").await;
    assert_eq!(dead.attempts, 2, "each overrun is an attempt: {dead:?}");
    let letters = host.dead_letters(&[("handler", "greedy")]).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].errors.len(), 2, "{letters:?}");
    // Nothing of it was committed.
    assert_eq!(host.state("greedy", "k/0").await, None);

    // The host is up, and the same handler commits what fits.
    assert_eq!(host.get("/healthz").await.status(), 200);
    post(&host, "fits", json!({"set": {"count": 4, "bytes": MIB}})).await;
    wait_done(&host, "fits").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_emits_are_counted_up_to_their_limits() {
    let host = TestHost::start(greedy_app(
        "max_attempts = 1\nmax_writes = 100\nmax_emits = 5",
    ))
    .await;
    // `done/{id}` is the fixture's own last write: 99 writes leave room for it.
    post(
        &host,
        "writes-fit",
        json!({"set": {"count": 99, "bytes": 1}}),
    )
    .await;
    post(
        &host,
        "writes-over",
        json!({"set": {"count": 101, "bytes": 1}}),
    )
    .await;
    post(&host, "emits-fit", json!({"emit": {"count": 5}})).await;
    post(&host, "emits-over", json!({"emit": {"count": 6}})).await;

    wait_done(&host, "writes-fit").await;
    let value = host.api.state("greedy", "k/98").await.expect("the state");
    assert_eq!(value.map(|v| v.to_vec()), Some(b"v".to_vec()));
    let error = dead_error(&host, "writes-over").await;
    assert!(
        error.contains("`max_writes` of 100 state keys, at key `k/100`"),
        "{error}"
    );
    wait_done(&host, "emits-fit").await;
    let error = dead_error(&host, "emits-over").await;
    assert!(error.contains("`max_emits` of 5 events"), "{error}");
    // Only the invocation within its budget emitted anything.
    let emitted = host.events_of_type("test.greedy.emitted.v1").await;
    assert_eq!(emitted.len(), 5, "{emitted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_events_and_reads_count_toward_the_staged_bytes() {
    let host = TestHost::start(greedy_app("max_attempts = 1\nmax_staged_mb = 1")).await;
    let kib = 1024;
    post(
        &host,
        "one-emit",
        json!({"emit": {"count": 1, "bytes": 600 * kib}}),
    )
    .await;
    post(
        &host,
        "two-emits",
        json!({"emit": {"count": 2, "bytes": 600 * kib}}),
    )
    .await;
    // Each key read is kept for the commit's conflict check: 20000 of them pass 1 MiB.
    post(&host, "reads", json!({"read": {"count": 20_000}})).await;

    wait_done(&host, "one-emit").await;
    let error = dead_error(&host, "two-emits").await;
    assert!(
        error.contains("`max_staged_mb` of 1 MiB") && error.contains("emitted event #2"),
        "{error}"
    );
    let error = dead_error(&host, "reads").await;
    assert!(
        error.contains("`max_staged_mb` of 1 MiB") && error.contains("the read of key `r/"),
        "{error}"
    );
    let emitted = host.events_of_type("test.greedy.emitted.v1").await;
    assert_eq!(emitted.len(), 1, "only the event that fit was emitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_or_reject_reason_is_cut() {
    let host = TestHost::start(greedy_app(
        "max_attempts = 2\nbackoff = { initial_ms = 10, max_ms = 10 }",
    ))
    .await;
    post(&host, "retry", json!({"fail": {"retry": MIB}})).await;
    post(&host, "reject", json!({"fail": {"reject": MIB}})).await;
    for id in ["retry", "reject"] {
        let error = dead_error(&host, id).await;
        let cut = MIB - evhost::runtime::MAX_REASON_BYTES;
        assert!(
            error.ends_with(&format!("... ({cut} more bytes cut)")),
            "{id}: {}",
            &error[error.len() - 60..]
        );
        assert!(error.len() < 4096 + 100, "{id}: {} bytes kept", error.len());
    }
    let letters = host.dead_letters(&[]).await;
    let errors = letters.iter().flat_map(|letter| &letter.errors);
    assert!(
        errors.clone().count() == 3,
        "two retries and one reject: {letters:?}"
    );
    assert!(
        errors
            .into_iter()
            .all(|attempt| attempt.error.len() < 4096 + 100)
    );
}

/// An event with extensions `extensions` (name -> value) added.
fn with_extensions(id: &str, extensions: &[(String, String)]) -> Value {
    let mut e = event(id, "test.any.v1", json!({}));
    for (name, value) in extensions {
        e[name] = json!(value);
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_refuses_extensions_past_the_limits_naming_the_extension() {
    let host = TestHost::start(greedy_app("")).await;
    let big = vec![("big".to_owned(), "x".repeat(4097))];
    let many: Vec<(String, String)> = (0..65)
        .map(|i| (format!("x{i:03}"), "v".to_owned()))
        .collect();
    let cases = [
        (
            "too long",
            with_extensions("e-big", &big),
            "big",
            "4097 bytes, over the limit of 4096",
        ),
        (
            "too many",
            with_extensions("e-many", &many),
            "x064",
            "over the limit of 64 per event",
        ),
    ];
    for (what, body, attribute, detail) in cases {
        let response = host.post_structured(&body).await;
        assert_eq!(response.status(), 400, "{what}");
        let problem: Value = response.json().await.expect("a problem body");
        assert_eq!(problem["attribute"], attribute, "{what}: {problem}");
        let text = problem["detail"].as_str().unwrap_or_default();
        assert!(text.contains(detail), "{what}: {problem}");
    }
    // Binary mode: the same rule for a header.
    let long = "x".repeat(4097);
    let response = host
        .post_binary(
            &[
                ("id", "e-header"),
                ("source", "/t"),
                ("type", "test.any.v1"),
                ("big", &long),
            ],
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("a problem body");
    assert_eq!(problem["attribute"], "big", "{problem}");
    // At the limits, accepted.
    let fits = vec![("big".to_owned(), "x".repeat(4096))];
    assert_eq!(
        host.post_structured(&with_extensions("e-fits", &fits))
            .await
            .status(),
        202
    );
    let at_most: Vec<(String, String)> = many[..64].to_vec();
    assert_eq!(
        host.post_structured(&with_extensions("e-64", &at_most))
            .await
            .status(),
        202
    );
    let ids: Vec<Value> = host
        .all_events()
        .await
        .iter()
        .map(|e| e["event"]["id"].clone())
        .collect();
    assert_eq!(ids, [json!("e-fits"), json!("e-64")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_past_the_extension_rules_fails_the_invocation() {
    let host = TestHost::start(greedy_app("max_attempts = 1")).await;
    let asks = [
        (
            "emit-big",
            json!({"emit": {"count": 1, "extensions": {"big": "x".repeat(5000)}}}),
            "`big`",
            "5000 bytes, over the limit of 4096",
        ),
        // The host adds `causationid`, `correlationid` and `causationdepth`: 62 of the
        // handler's own pass 64.
        (
            "emit-many",
            json!({"emit": {"count": 1, "extension_count": 62}}),
            "extension #65 of 65",
            "over the limit of 64 per event",
        ),
        (
            "emit-bell",
            json!({"emit": {"count": 1, "extensions": {"bell": "a\u{7}b"}}}),
            "`bell`",
            "U+0007",
        ),
    ];
    for (id, data, _, _) in &asks {
        post(&host, id, data.clone()).await;
    }
    for (id, _, names, why) in asks {
        let error = dead_error(&host, id).await;
        assert!(
            error.contains("cannot emit `test.greedy.emitted.v1`"),
            "{id}: {error}"
        );
        assert!(
            error.contains(names) && error.contains(why),
            "{id}: {error}"
        );
    }
    // At the limit it goes out.
    post(
        &host,
        "emit-61",
        json!({"emit": {"count": 1, "extension_count": 61}}),
    )
    .await;
    wait_done(&host, "emit-61").await;
    let emitted = host.events_of_type("test.greedy.emitted.v1").await;
    assert_eq!(emitted.len(), 1, "{emitted:?}");
}

/// A manifest file for the greedy fixture in `dir`, with `settings` added.
fn write_greedy_manifest(dir: &Path, settings: &str) {
    let module = guest("greedy");
    let text = format!(
        "[app]\nname = \"budget\"\n\n[[handler]]\nname = \"greedy\"\nmodule = {module:?}\n\
         subscribe = [\"{GREEDY}\"]\n{settings}\n"
    );
    std::fs::write(dir.join("evhost.toml"), text).expect("write the manifest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_delivery_is_recorded_and_survives_a_restart_without_harm() {
    let app = tempfile::tempdir().expect("a temporary directory");
    // A long first backoff: the delivery is still waiting for its second attempt when the
    // host is killed.
    write_greedy_manifest(
        app.path(),
        "max_attempts = 2\nbackoff = { initial_ms = 3000, max_ms = 3000 }",
    );
    let mut host = HostProcess::new(app.path(), &["."]);
    host.start().await;
    post(&host, "poison", json!({"set": {"count": 20, "bytes": MIB}})).await;
    let retrying = host
        .wait_delivery("poison", "greedy", DeliveryStatus::Retrying, WAIT)
        .await;
    assert_eq!(retrying.attempts, 1, "{retrying:?}");
    assert!(
        retrying
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("max_staged_mb")),
        "{retrying:?}"
    );

    host.kill().await;
    host.start().await;
    // The attempt was recorded before the kill: the restarted host makes the second and last.
    let dead = host.wait_dead("poison", "greedy", WAIT).await;
    assert_eq!(dead.attempts, 2, "{dead:?}");
    post(&host, "after", json!({"set": {"count": 1, "bytes": 10}})).await;
    wait_done(&host, "after").await;
    assert_eq!(host.get("/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_its_bounds_is_dropped_not_failed() {
    let app = tempfile::tempdir().expect("a temporary directory");
    write_greedy_manifest(app.path(), "max_attempts = 1");
    let mut host = HostProcess::new(app.path(), &["."]);
    host.start().await;
    post(&host, "prints", json!({"print": {"bytes": MIB}})).await;
    post(&host, "logs", json!({"log": {"lines": 2000, "bytes": 99}})).await;
    wait_done(&host, "prints").await;
    wait_done(&host, "logs").await;

    // The log is written by a thread of its own: wait for both summaries to be in it.
    let dropped = |line: &Value, id: &str, field: &str| {
        let fields = &line["fields"];
        (fields["event_id"] == id)
            .then(|| fields[field].as_u64())
            .flatten()
    };
    host.eventually("both summaries are in the log", WAIT, || async {
        let lines = host.log_lines();
        lines
            .iter()
            .any(|l| dropped(l, "prints", "dropped_bytes").is_some())
            && lines
                .iter()
                .any(|l| dropped(l, "logs", "dropped_lines").is_some())
    })
    .await;
    let lines = host.log_lines();
    let messages = |id: &str| -> Vec<String> {
        let of = lines.iter().filter(|l| l["fields"]["event_id"] == id);
        of.filter_map(|l| l["fields"]["message"].as_str().map(str::to_owned))
            .collect()
    };

    // stdout: 64 KiB kept (the last line of it cut short), the rest counted.
    let printed = 1024 * 1024 / 100 * 100;
    let kept: usize = messages("prints")
        .iter()
        .filter(|m| m.starts_with("ooo"))
        .map(String::len)
        .sum();
    let kept_lines = messages("prints")
        .iter()
        .filter(|m| m.starts_with("ooo"))
        .count();
    assert_eq!(
        kept + kept_lines - 1,
        64 * 1024,
        "stdout bytes kept, their line breaks with them"
    );
    let bytes = lines
        .iter()
        .find_map(|l| dropped(l, "prints", "dropped_bytes"));
    assert_eq!(bytes, Some((printed - 64 * 1024) as u64));

    // The log capability: each 99-byte line costs 100 of the 64 KiB.
    let kept = messages("logs")
        .iter()
        .filter(|m| m.starts_with("lll"))
        .count();
    assert_eq!(kept, 64 * 1024 / 100, "log lines kept");
    let count = lines
        .iter()
        .find_map(|l| dropped(l, "logs", "dropped_lines"));
    assert_eq!(count, Some(2000 - kept as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stderr_does_not_stop_deliveries() {
    let app = tempfile::tempdir().expect("a temporary directory");
    let data = tempfile::tempdir().expect("a temporary directory");
    write_greedy_manifest(app.path(), "concurrency = 4");
    let mut child = evhost_command()
        .current_dir(app.path())
        .args([
            "--log-format",
            "json",
            "up",
            ".",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("evhost up starts");
    // Read the log until the host says where it serves, then never again: the pipe fills
    // and stays full.
    let mut stderr = BufReader::new(child.stderr.take().expect("a stderr pipe")).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = stderr.next_line().await.expect("the host's log") {
            let line: Value = serde_json::from_str(&line).unwrap_or_default();
            if line["fields"]["message"] == "evhost is serving" {
                return line["fields"]["addr"].as_str().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("the host serves in time")
    .expect("the host says where it serves");
    let host = HostClient::new(format!("http://{addr}"), None);
    host.eventually("the host is ready", WAIT, || async {
        host.http
            .get(host.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    // Each event logs 64 KiB, the pipe holds 64 KiB: the log stalls at the first of them.
    let count = 40;
    for i in 0..count {
        post(
            &host,
            &format!("chatty-{i}"),
            json!({"log": {"lines": 100, "bytes": 1000}}),
        )
        .await;
    }
    for i in 0..count {
        wait_done(&host, &format!("chatty-{i}")).await;
    }
    assert_eq!(host.get("/healthz").await.status(), 200);
    drop(stderr);
    child.kill().await.expect("stop the host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_cannot_fit_the_instance_pool_alone_is_refused() {
    let data = tempfile::tempdir().expect("a temporary directory");
    let refused = TestHost::start_on(greedy_app("concurrency = 1024"), data).await;
    let error = format!("{:#}", refused.err().expect("the host refuses to start"));
    assert!(
        error.contains("handler `greedy`")
            && error.contains("`concurrency` 1024 needs 1024 instances at once")
            && error.contains("over the 1000 the host has"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_holding_every_instance_delays_another_without_failing_it() {
    let host = TestHost::start(evhost_tests::manifest(&format!(
        r#"
        [app]
        name = "pool"

        [[handler]]
        name = "hog"
        module = "{{guests}}/greedy.wasm"
        subscribe = ["{GREEDY}"]
        concurrency = 1000
        max_pending = 2000
        timeout_ms = 60000

        [[handler]]
        name = "innocent"
        module = "{{guests}}/recorder.wasm"
        subscribe = ["test.ok.v1"]
        max_attempts = 1
        "#
    )))
    .await;
    // A thousand invocations that each hold an instance for 10 s, without using the CPU:
    // long enough that all of them hold theirs when the other handler's event comes.
    let hogs: Vec<Value> = (0..1000)
        .map(|i| event(&format!("hog-{i}"), GREEDY, json!({"sleep_ms": 10_000})))
        .collect();
    for batch in hogs.chunks(100) {
        assert_eq!(host.post_batch(batch).await.status(), 202);
    }
    host.eventually("all thousand hogs run", WAIT, || async {
        host.metrics()
            .await
            .contains("evhost_invocations_in_flight{handler=\"hog\"} 1000")
    })
    .await;
    let innocent = event("innocent-1", "test.ok.v1", json!({}));
    assert_eq!(host.post_structured(&innocent).await.status(), 202);
    let done = host
        .wait_delivery("innocent-1", "innocent", DeliveryStatus::Done, WAIT)
        .await;
    // Done at its first attempt: waiting for an instance was no failed attempt.
    assert_eq!(
        (done.attempts, done.last_error.as_deref()),
        (1, None),
        "{done:?}"
    );
    host.wait_idle(WAIT).await;
}
