//! The operating commands through the real binary, as an operator runs them against a
//! running `evhost up`: `handlers`, `deploy`, `rollback`, `remove`, `deadletters`,
//! `redrive`, `send`, with and without an admin token. Each command's exit status and output
//! are checked, and so is the host's state after it, through the admin API.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use evhost::store::Origin;
use evhost_tests::{HostProcess, evhost_command, guest, guests_dir, shop_dir_accepting, workspace};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Run `evhost ARGS` against the host at `base`; its output.
async fn evhost(base: &str, args: &[&str]) -> Output {
    let mut command = evhost_command();
    command.args(args).args(["--host", base]);
    tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the command finishes")
        .expect("the command runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `evhost ARGS`, which must succeed; its stdout.
async fn ok(base: &str, args: &[&str]) -> String {
    let out = evhost(base, args).await;
    assert!(
        out.status.success(),
        "evhost {args:?} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// `evhost ARGS`, which must fail; its stderr.
async fn fails(base: &str, args: &[&str]) -> String {
    let out = evhost(base, args).await;
    assert!(
        !out.status.success(),
        "evhost {args:?} succeeded:\n{}",
        stdout(&out)
    );
    stderr(&out)
}

/// The row of `handler` in `evhost handlers`, split into columns.
fn row<'a>(table: &'a str, handler: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|columns| columns.first() == Some(&handler))
        .unwrap_or_else(|| panic!("no row for {handler} in:\n{table}"))
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_deploys_rolls_back_redrives_and_removes_through_the_cli() {
    // The shop, letting producers send the type of the handler this test deploys.
    let shop = shop_dir_accepting(&["test.extra.v1"]);
    let mut host = HostProcess::new(&workspace(), &[path(shop.path())]);
    let base = host.start().await.url("");

    // The shop, as the manifest made it.
    let table = ok(&base, &["handlers"]).await;
    assert!(table.starts_with("NAME"), "a header first:\n{table}");
    for handler in ["order", "inventory", "payment", "shipping", "notification"] {
        let columns = row(&table, handler);
        assert_eq!(&columns[1..3], ["1", "manifest"], "{table}");
    }
    assert_eq!(row(&table, "inventory")[3], "key", "{table}");

    // A new version from a file of settings, as the README shows it.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("inventory.toml");
    std::fs::write(
        &config,
        r#"subscribe = ["com.example.shop.order.placed.v2", "com.example.shop.stock.added.v1"]
accept_older = true
concurrency = 8
ordering = "key"
key = "partitionkey"
"#,
    )
    .expect("write the settings");
    let module = guest("inventory");
    let deploy = [
        "deploy",
        "inventory",
        path(&module),
        "--config",
        path(&config),
    ];
    let said = ok(&base, &deploy).await;
    assert!(said.starts_with("inventory: version 2 is live"), "{said}");
    let info = host.handler_info("inventory").await;
    assert_eq!((info.version, info.concurrency), (2, 8));
    assert_eq!(
        (info.origin, info.version_origin),
        (Origin::Manifest, Origin::Api)
    );
    // The same again changes nothing.
    let said = ok(&base, &deploy).await;
    assert_eq!(said.trim(), "inventory: unchanged, version 2 stays live");

    // Rolled back to the manifest's version; nothing before it.
    let said = ok(&base, &["rollback", "inventory"]).await;
    assert_eq!(said.trim(), "inventory: version 1 is live");
    assert_eq!(host.handler_info("inventory").await.version, 1);
    let refused = fails(&base, &["rollback", "inventory"]).await;
    assert!(
        refused.contains("409") && refused.contains("no earlier version"),
        "{refused}"
    );

    // A handler of the operator's own, which rejects what it is asked to.
    let extra_config = dir.path().join("extra.toml");
    std::fs::write(&extra_config, "subscribe = [\"test.extra.v1\"]\n").expect("write");
    let recorder = guest("recorder");
    let said = ok(
        &base,
        &[
            "deploy",
            "extra",
            path(&recorder),
            "--config",
            path(&extra_config),
        ],
    )
    .await;
    assert!(said.starts_with("extra: version 1 is live ("), "{said}");
    let table = ok(&base, &["handlers"]).await;
    assert_eq!(&row(&table, "extra")[1..3], ["1", "api"], "{table}");
    // A new handler needs its settings: the host's reason reaches the operator.
    let refused = fails(&base, &["deploy", "newcomer", path(&recorder)]).await;
    assert!(
        refused.contains("400") && refused.contains("settings"),
        "{refused}"
    );

    // `evhost send` carries every attribute exactly, a `%` and non-ASCII included.
    let said = ok(
        &base,
        &[
            "send",
            "--type",
            "test.extra.v1",
            "--source",
            "/ops",
            "--id",
            "reject-1",
            "--subject",
            "100% café",
            "--data",
            r#"{"fail": "reject"}"#,
        ],
    )
    .await;
    assert!(said.starts_with("202"), "{said}");
    let letter = host.wait_dead("reject-1", "extra", WAIT).await;
    let logged = host.events(&[("type", "test.extra.v1")]).await;
    assert_eq!(logged[0]["event"]["subject"], "100% café", "{logged:?}");
    assert_eq!(logged[0]["event"]["data"], json!({"fail": "reject"}));

    // The dead letter, listed by handler, redriven by id and by handler.
    let listed = ok(&base, &["deadletters", "--handler", "extra"]).await;
    let line = listed
        .lines()
        .find(|line| line.contains("reject-1"))
        .unwrap_or_else(|| panic!("reject-1 is not listed:\n{listed}"));
    assert!(
        line.trim_start().starts_with(&letter.id.to_string()),
        "{line}"
    );
    assert!(line.contains("handler rejected the event"), "{line}");
    assert_eq!(
        ok(&base, &["deadletters", "--handler", "payment"])
            .await
            .trim(),
        "no dead letters"
    );
    let id = letter.id.to_string();
    assert_eq!(ok(&base, &["redrive", &id]).await.trim(), "redriven: 1");
    host.eventually("the redriven delivery is dead again", WAIT, || async {
        host.dead_letters(&[("handler", "extra")])
            .await
            .first()
            .is_some_and(|letter| letter.redrives == 1 && letter.errors.len() == 2)
    })
    .await;
    assert_eq!(
        ok(&base, &["redrive", "--handler", "extra"]).await.trim(),
        "redriven: 1"
    );
    let missing = fails(&base, &["redrive", "999999"]).await;
    assert!(missing.contains("404"), "{missing}");

    // Removed: gone from the list; its pending work (the redriven delivery, if it has not
    // run yet) is dead-lettered; a second removal is a clear 404.
    let said = ok(&base, &["remove", "extra"]).await;
    assert!(said.starts_with("extra: removed; "), "{said}");
    assert!(!ok(&base, &["handlers"]).await.contains("extra"));
    let again = fails(&base, &["remove", "extra"]).await;
    assert!(
        again.contains("404") && again.contains("no handler `extra`"),
        "{again}"
    );
    host.terminate(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_the_admin_token_the_host_requires() {
    guests_dir();
    let token = "a-long-enough-admin-token";
    let mut host = HostProcess::new(&workspace(), &["examples/shop", "--admin-token", token]);
    let base = host.start().await.url("");

    let refused = fails(&base, &["handlers"]).await;
    assert!(refused.contains("401"), "{refused}");
    let table = ok(&base, &["handlers", "--token", token]).await;
    assert_eq!(row(&table, "order")[2], "manifest", "{table}");
    // The environment variable, as a service unit would set it.
    let mut command = evhost_command();
    command
        .args(["handlers", "--host", &base])
        .env("EVHOST_ADMIN_TOKEN", token);
    let out = command.output().await.expect("the command runs");
    assert!(out.status.success(), "{}", stderr(&out));
    host.terminate(WAIT).await;
}
