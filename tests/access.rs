//! Who may reach the admin API: the token's rules at start, the `Bearer` scheme, `/metrics`
//! behind the token, and the `Host` / `Origin` checks that stop a web page in the operator's
//! browser (DNS rebinding, cross-site POSTs). Against the real binary.

use std::time::Duration;

use evhost_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "a-long-enough-admin-token";

/// `evhost up` with `args`, which must exit at once with an error; its stderr.
async fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().expect("a temporary directory");
    let mut command = evhost_command();
    command
        .current_dir(workspace())
        .args(["up", "examples/shop", "--data"])
        .arg(data.path())
        .args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("exits in time")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "started anyway: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_short_admin_token_is_refused_at_start() {
    guests_dir();
    // The unit-file case: a variable that expanded to nothing.
    let empty_env = refused_start(&["--listen", "0.0.0.0:0"], &[("EVHOST_ADMIN_TOKEN", "")]).await;
    assert!(
        empty_env.contains("the admin token is empty"),
        "{empty_env}"
    );
    let empty_flag = refused_start(&["--listen", "127.0.0.1:0", "--admin-token", ""], &[]).await;
    assert!(
        empty_flag.contains("the admin token is empty"),
        "{empty_flag}"
    );
    let short = refused_start(
        &["--listen", "127.0.0.1:0", "--admin-token", "hunter2"],
        &[],
    )
    .await;
    assert!(
        short.contains("7 bytes, under the minimum of 16"),
        "{short}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_is_case_insensitive_and_metrics_need_the_token() {
    guests_dir();
    let mut host = HostProcess::new(&workspace(), &["examples/shop", "--admin-token", TOKEN]);
    let client = host.start().await.clone();
    let get = |path: &str, auth: Option<String>| {
        let mut request = client.http.get(client.url(path));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move { request.send().await.expect("answers").status().as_u16() }
    };
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = Some(format!("{scheme} {TOKEN}"));
        assert_eq!(get("/admin/handlers", auth.clone()).await, 200, "{scheme}");
        assert_eq!(get("/metrics", auth).await, 200, "{scheme}");
    }
    assert_eq!(get("/admin/handlers", None).await, 401);
    assert_eq!(get("/metrics", None).await, 401);
    // A prefix or an extension of the token is not the token.
    let prefix = Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]));
    assert_eq!(get("/admin/handlers", prefix).await, 401);
    let longer = Some(format!("Bearer {TOKEN}x"));
    assert_eq!(get("/admin/handlers", longer).await, 401);
    assert_eq!(
        get("/admin/handlers", Some(format!("Basic {TOKEN}"))).await,
        401
    );
    // Health and ingress stay open.
    assert_eq!(get("/healthz", None).await, 200);
    assert_eq!(get("/readyz", None).await, 200);
    host.terminate(WAIT).await;

    // `--metrics-open` opens the scrape, and only it.
    let mut open = HostProcess::new(
        &workspace(),
        &["examples/shop", "--admin-token", TOKEN, "--metrics-open"],
    );
    let client = open.start().await.clone();
    let metrics = client
        .http
        .get(client.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let admin = client
        .http
        .get(client.url("/admin/handlers"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 401);
    open.terminate(WAIT).await;
}

/// The status and problem body of `request`.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_reach_the_admin_api_on_loopback() {
    guests_dir();
    let mut host = HostProcess::new(
        &workspace(),
        &["examples/shop", "--allow-host", "evhost.internal"],
    );
    let client = host.start().await.clone();
    let port = client.base.rsplit(':').next().unwrap().to_owned();
    let handlers = client.url("/admin/handlers");

    // DNS rebinding: the page's name, pointed at 127.0.0.1, arrives as its `Host`.
    let (status, problem) = answer(
        client
            .http
            .get(&handlers)
            .header("host", format!("evil.example:{port}")),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["header"], "host", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("evil.example"),
        "{problem}"
    );
    let (status, _) = answer(
        client
            .http
            .get(client.url("/metrics"))
            .header("host", "evil.example"),
    )
    .await;
    assert_eq!(status, 403);
    // Addresses, localhost and allowed names pass.
    for host_header in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("evhost.internal:{port}"),
    ] {
        let (status, body) = answer(client.http.get(&handlers).header("host", &host_header)).await;
        assert_eq!(status, 200, "{host_header}: {body}");
    }

    // CSRF: a cross-site form POST to rollback carries the page's `Origin`.
    let before = client.handler_info("inventory").await.version;
    let rollback = client.url("/admin/handlers/inventory/rollback");
    let (status, problem) = answer(
        client
            .http
            .post(&rollback)
            .header("origin", "https://evil.example")
            .header("content-type", "application/x-www-form-urlencoded"),
    )
    .await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["header"], "origin", "{problem}");
    assert_eq!(client.handler_info("inventory").await.version, before);
    // The host's own origin is not cross-origin (a page it serves may call its API).
    let own = format!("http://127.0.0.1:{port}");
    let (status, _) = answer(client.http.get(&handlers).header("origin", own)).await;
    assert_eq!(status, 200);
    let (status, _) = answer(client.http.get(&handlers).header("origin", "null")).await;
    assert_eq!(status, 403);

    // Ingress is not the admin API: producers may post from anywhere.
    let posted = client
        .http
        .post(client.url("/events"))
        .header("host", "events.example")
        .header("content-type", "application/cloudevents+json")
        .body(stock_added("stock-1", "sku-1", 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    host.terminate(WAIT).await;
}
