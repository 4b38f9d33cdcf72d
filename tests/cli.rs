//! The `evhost` binary as a user runs it: `evhost up` on an application folder, `evhost send`
//! to the running host, a signal to stop it. Each test runs the real binary in its own
//! temporary folders, on its own port, and kills what it started if it fails.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use evhost_tests::{HostProcess, evhost_command, guest, guests_dir, workspace};
use tokio::process::Command;

const PLACE: &str = "com.example.shop.order.place.v1";
const STOCK_ADDED: &str = "com.example.shop.stock.added.v1";
const SHIPPED: &str = "com.example.shop.shipment.created.v1";

/// How long a command that should fail at once may take.
const QUICK: Duration = Duration::from_secs(10);
/// How long a host may take to become ready (it compiles the handlers on first start).
const START: Duration = Duration::from_secs(30);

/// Runs a command that is expected to end by itself, within `timeout`.
async fn output(mut command: Command, timeout: Duration) -> Output {
    let run = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not end within {timeout:?}"))
        .expect("the command runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `evhost up ARGS` in `cwd`, ready.
async fn up(cwd: &Path, args: &[&str]) -> HostProcess {
    let mut host = HostProcess::new(cwd, args).with_start_timeout(START);
    host.start().await;
    host
}

/// `evhost send ARGS --host <this host>`.
async fn send(host: &HostProcess, args: &[&str]) -> Output {
    let mut command = evhost_command();
    command.arg("send").args(args).arg("--host").arg(&host.base);
    output(command, QUICK).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_reports_every_manifest_problem_at_once_before_binding() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let manifest = dir.path().join("evhost.toml");
    std::fs::write(
        &manifest,
        r#"
[app]
name = "broken"

[[handler]]
name = "alpha"
module = "alpha.wasm"
subscribe = ["com.example.a.v1"]
concurrency = 0
colour = "red"

[[handler]]
name = "beta"
module = "beta.wasm"
subscribe = []
ordering = "sideways"
backoff = { initial_ms = 100, jitter = true }

[[handler]]
name = "gamma"
subscribe = ["com.example.g.v1"]
timeout_ms = "soon"
"#,
    )
    .expect("write the manifest");

    // The port is taken: had `up` bound before validating, it would complain about the port.
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port");
    let listen = taken.local_addr().expect("an address").to_string();
    let data = dir.path().join("data");
    let mut command = evhost_command();
    command
        .arg("up")
        .arg(dir.path())
        .args(["--listen", &listen])
        .arg("--data")
        .arg(&data);
    let out = output(command, QUICK).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");

    let file = manifest.display().to_string();
    for (handler, key) in [
        ("alpha", "concurrency"),
        ("alpha", "colour"),
        ("beta", "subscribe"),
        ("beta", "ordering"),
        ("beta", "backoff.jitter"),
        ("gamma", "module"),
        ("gamma", "timeout_ms"),
    ] {
        let expected = format!("{file}: handler `{handler}`: key `{key}`");
        assert!(
            stderr.contains(&expected),
            "stderr lacks `{expected}`:\n{stderr}"
        );
    }
    assert!(!stderr.contains("failed to listen"), "{stderr}");
    assert!(!data.exists(), "a refused start left a store behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_without_a_manifest_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut command = evhost_command();
    command
        .current_dir(dir.path())
        .args(["up", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"));
    let out = output(command, QUICK).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("evhost.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_refuses_modules_that_are_not_handler_components() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // The 8-byte preamble of an empty core module, and of an empty component (which exports
    // nothing, so not the handler world).
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    std::fs::write(dir.path().join("empty.wasm"), b"\0asm\x0d\0\x01\0").expect("write");
    std::fs::write(dir.path().join("junk.wasm"), b"#!/bin/sh\necho not wasm\n").expect("write");
    let manifest = dir.path().join("evhost.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
[app]
name = "modules"

[[handler]]
name = "good"
module = "{good}"
subscribe = ["com.example.ok.v1"]

[[handler]]
name = "core"
module = "core.wasm"
subscribe = ["com.example.a.v1"]

[[handler]]
name = "empty"
module = "empty.wasm"
subscribe = ["com.example.b.v1"]

[[handler]]
name = "junk"
module = "junk.wasm"
subscribe = ["com.example.c.v1"]

[[handler]]
name = "absent"
module = "absent.wasm"
subscribe = ["com.example.d.v1"]
"#,
            good = guest("recorder").display()
        ),
    )
    .expect("write the manifest");

    let mut command = evhost_command();
    command
        .arg("up")
        .arg(&manifest)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"));
    let out = output(command, START).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");

    // Every broken handler is named with its module and what is wrong with it; the good one
    // is not blamed.
    let line = |handler: &str| {
        stderr
            .lines()
            .find(|line| line.contains(&format!("handler `{handler}`")))
            .unwrap_or_else(|| panic!("stderr does not name `{handler}`:\n{stderr}"))
            .to_owned()
    };
    let core = line("core");
    assert!(core.contains("core.wasm"), "{core}");
    assert!(core.contains("core wasm module"), "{core}");
    assert!(core.contains("component"), "{core}");
    let empty = line("empty");
    assert!(empty.contains("empty.wasm"), "{empty}");
    assert!(empty.contains("does not export"), "{empty}");
    let junk = line("junk");
    assert!(junk.contains("junk.wasm"), "{junk}");
    assert!(junk.contains("not a valid component"), "{junk}");
    let absent = line("absent");
    assert!(absent.contains("absent.wasm"), "{absent}");
    assert!(
        !stderr.contains("handler `good`"),
        "the good handler is blamed:\n{stderr}"
    );
    assert!(stderr.contains(&manifest.display().to_string()), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_refuses_a_body_limit_below_the_cloudevents_minimum() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    guests_dir();
    let mut command = evhost_command();
    command
        .current_dir(workspace())
        .args(["up", "examples/shop", "--listen", "127.0.0.1:0"])
        .args(["--body-limit", "1000", "--data"])
        .arg(dir.path().join("data"));
    let out = output(command, START).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("65536"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_shop_send_posts_to_it_and_sigterm_stops_it() {
    guests_dir();
    // From the workspace root, as the shop's README says.
    let host = up(&workspace(), &["examples/shop"]).await;

    let out = send(
        &host,
        &[
            "--type",
            STOCK_ADDED,
            "--source",
            "/cli",
            "--partition-key",
            "sku-cli",
            "--data",
            r#"{"sku": "sku-cli", "quantity": 5}"#,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = send(
        &host,
        &[
            "--type",
            PLACE,
            "--source",
            "/cli",
            "--subject",
            "o-cli",
            "--data",
            r#"{"order_id": "o-cli", "sku": "sku-cli", "quantity": 2, "amount": 25.0}"#,
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|line| line.contains("202")),
        "evhost send prints the status first:\n{stdout}"
    );

    // The order goes all the way through the shop.
    let shipment = host
        .poll("a shipment for o-cli", Duration::from_secs(15), || async {
            host.cloudevents(&[("type", SHIPPED)])
                .await
                .into_iter()
                .next()
        })
        .await;
    assert_eq!(shipment["subject"], "o-cli", "{shipment}");

    // Data that is not JSON never leaves the command line.
    let before = host.cloudevents(&[("limit", "1000")]).await.len();
    let out = send(
        &host,
        &[
            "--type",
            PLACE,
            "--source",
            "/cli-bad",
            "--data",
            r#"{"order_id": "o-bad", "#,
        ],
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--data is not valid JSON"), "{stderr}");

    // An event the host refuses: the command fails and shows the host's problem.
    let out = send(
        &host,
        &["--type", PLACE, "--source", "not a uri", "--data", "{}"],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("400"), "{stdout}");
    assert!(stdout.contains(r#""attribute":"source""#), "{stdout}");
    assert!(text(&out.stderr).contains("400"), "{}", text(&out.stderr));
    assert!(
        host.cloudevents(&[("source", "/cli-bad")]).await.is_empty(),
        "a refused event reached the log"
    );
    let placed_or_bad = host.cloudevents(&[("limit", "1000")]).await;
    assert!(
        placed_or_bad.iter().all(|e| e["source"] != "not a uri"),
        "{placed_or_bad:?}"
    );
    assert!(placed_or_bad.len() >= before);

    let status = host.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "evhost exits 0 on SIGTERM, got {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_resolves_module_paths_against_the_manifest_folder() {
    guests_dir();
    let shop = workspace().join("examples/shop");
    // `evhost up` with no argument, inside the app folder.
    let host = up(&shop, &[]).await;
    let status = host.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");

    // The manifest file itself, from an unrelated folder.
    let elsewhere = tempfile::tempdir().expect("a temporary directory");
    let manifest = shop.join("evhost.toml");
    let manifest = manifest.to_str().expect("a UTF-8 path");
    let host = up(elsewhere.path(), &[manifest]).await;
    let status = host.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
}
