//! Test support: build the guest handlers once, start real hosts on free ports, talk to them
//! over HTTP.
//!
//! Every test gets its own host (its own port, its own data directory), so tests run in
//! parallel and never see each other's events.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use evhost::Options;
use evhost::config::Manifest;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every guest handler the tests use.
pub const GUESTS: &[&str] = &[
    "order",
    "inventory",
    "payment",
    "shipping",
    "notification",
    "misbehave",
    "recorder",
    "alien",
];

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace());
    command
}

/// The folder holding the compiled guest components, built on first use. The build runs
/// once per test process and is a no-op when nothing changed, so a test run compiles the
/// guests once.
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut command = cargo();
        command.args(["build", "--release", "--target", "wasm32-wasip2"]);
        for guest in GUESTS {
            command.args(["-p", guest]);
        }
        run(command, "build the guest handlers");
        workspace().join("target/wasm32-wasip2/release")
    })
}

/// The path of one compiled guest.
pub fn guest(name: &str) -> PathBuf {
    guests_dir().join(format!("{name}.wasm"))
}

/// The `evhost` binary, built on first use.
pub fn evhost_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut command = cargo();
        command.args(["build", "-p", "evhost", "--bin", "evhost"]);
        run(command, "build the evhost binary");
        workspace().join("target/debug/evhost")
    })
}

fn run(mut command: Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("failed to {what}: {err}"));
    assert!(
        output.status.success(),
        "failed to {what}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The shop example's manifest, with modules from [`guests_dir`].
pub fn shop_manifest() -> Manifest {
    guests_dir();
    let manifest = Manifest::load(&workspace().join("examples/shop"))
        .unwrap_or_else(|err| panic!("the shop manifest is invalid:\n{err}"));
    assert!(
        manifest.handlers.iter().all(|h| h.module.exists()),
        "the shop manifest names modules that were not built"
    );
    manifest
}

/// A manifest from TOML text, with `{guests}` replaced by [`guests_dir`].
pub fn manifest(toml: &str) -> Manifest {
    let text = toml.replace("{guests}", &guests_dir().display().to_string());
    Manifest::parse(&text, Path::new("test/evhost.toml"))
        .unwrap_or_else(|err| panic!("test manifest is invalid:\n{err}"))
}

/// An app of one handler `name` running guest `module`, subscribed to `subscribe`, with
/// `settings` (more `[[handler]]` keys, one per line) added.
pub fn one_handler_app(name: &str, module: &str, subscribe: &[&str], settings: &str) -> Manifest {
    let types: Vec<String> = subscribe.iter().map(|t| format!("{t:?}")).collect();
    manifest(&format!(
        "[app]\nname = \"test\"\n\n[[handler]]\nname = \"{name}\"\n\
         module = \"{{guests}}/{module}.wasm\"\nsubscribe = [{}]\n{settings}\n",
        types.join(", ")
    ))
}

/// Compiled components shared by every test's host, so that each process compiles each
/// guest at most once and later runs load it from disk.
fn shared_cache_dir() -> PathBuf {
    workspace().join("target/evhost-test-cache")
}

/// A host running in this process, on a free port, with its own data directory.
pub struct TestHost {
    pub base: String,
    pub client: reqwest::Client,
    data: TempDir,
    manifest: Manifest,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl TestHost {
    /// Start a host with `manifest` on a fresh data directory.
    pub async fn start(manifest: Manifest) -> TestHost {
        let data = tempfile::tempdir().expect("a temporary directory");
        Self::start_on(manifest, data)
            .await
            .expect("the host starts")
    }

    /// Start a host on an existing data directory (a restart).
    pub async fn start_on(manifest: Manifest, data: TempDir) -> Result<TestHost> {
        Self::start_configured(manifest, data, |_| {}).await
    }

    /// Start a host on `data`, with `configure` adjusting its options (a token, a cache
    /// folder of its own, `watch`).
    pub async fn start_configured(
        manifest: Manifest,
        data: TempDir,
        configure: impl FnOnce(&mut Options),
    ) -> Result<TestHost> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let mut options = Options::new(data.path());
        options.manifest = Some(manifest.clone());
        options.cache_dir = Some(shared_cache_dir());
        options.shutdown_grace = Duration::from_secs(5);
        configure(&mut options);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(evhost::run(listener, options, async move {
            drop(stopped.await);
        }));
        let host = TestHost {
            base,
            client: reqwest::Client::new(),
            data,
            manifest,
            stop: Some(stop),
            task: Some(task),
        };
        host.wait_ready().await?;
        Ok(host)
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                bail!("the host stopped while starting");
            }
            if Instant::now() > deadline {
                bail!("the host did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let request = self.client.get(self.url(path));
        request.send().await.expect("the host answers")
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("a JSON body")
    }

    /// `POST path` with no body.
    pub async fn post(&self, path: &str) -> reqwest::Response {
        let request = self.client.post(self.url(path));
        request.send().await.expect("the host answers")
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        let request = self.client.delete(self.url(path));
        request.send().await.expect("the host answers")
    }

    /// Stop the host gracefully and return its data directory, for a restart.
    pub async fn stop(mut self) -> (Manifest, TempDir) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(()); // the host may have stopped already
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("the host task panicked")
                .expect("the host ran without error");
        }
        (self.manifest.clone(), self.take_data())
    }

    fn take_data(&mut self) -> TempDir {
        std::mem::replace(
            &mut self.data,
            tempfile::tempdir().expect("a temporary directory"),
        )
    }

    /// POST a structured-mode event.
    pub async fn post_structured(&self, event: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
            .expect("the host answers")
    }

    /// POST a batch.
    pub async fn post_batch(&self, events: &[Value]) -> reqwest::Response {
        self.client
            .post(self.url("/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::from(events.to_vec()).to_string())
            .send()
            .await
            .expect("the host answers")
    }

    /// POST a binary-mode event: `ce-` headers from `attributes`, `data` as a JSON body.
    pub async fn post_binary(
        &self,
        attributes: &[(&str, &str)],
        data: &Value,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/events"))
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .body(data.to_string());
        for (name, value) in attributes {
            request = request.header(format!("ce-{name}"), *value);
        }
        request.send().await.expect("the host answers")
    }

    /// The event log (`GET /admin/events`) with these query parameters.
    pub async fn events(&self, query: &[(&str, &str)]) -> Vec<Value> {
        let response = self
            .client
            .get(self.url("/admin/events"))
            .query(query)
            .send()
            .await
            .expect("the host answers");
        assert_eq!(response.status(), 200, "GET /admin/events");
        let body: Value = response.json().await.expect("a JSON body");
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// The events of one type in the log, as CloudEvents JSON.
    pub async fn events_of_type(&self, ty: &str) -> Vec<Value> {
        self.events(&[("type", ty), ("limit", "1000")])
            .await
            .into_iter()
            .map(|e| e["event"].clone())
            .collect()
    }

    /// A value of a handler's state, as JSON; `None` when the key is absent.
    pub async fn state(&self, handler: &str, key: &str) -> Option<Value> {
        let response = self
            .client
            .get(self.url(&format!("/admin/state/{handler}/{key}")))
            .send()
            .await
            .expect("the host answers");
        match response.status().as_u16() {
            200 => Some(response.json().await.expect("a JSON state value")),
            404 => None,
            status => panic!("GET state {handler}/{key}: {status}"),
        }
    }

    /// Wait until `check` holds, polling; fail the test with `what` after `timeout`.
    pub async fn eventually<F, Fut>(&self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.poll(what, timeout, || {
            let checked = check();
            async move { checked.await.then_some(()) }
        })
        .await
    }

    /// Poll `probe` until it finds something; fail the test with `what` after `timeout`.
    pub async fn poll<T, F, Fut>(&self, what: &str, timeout: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until no delivery in the log is pending.
    pub async fn wait_idle(&self, timeout: Duration) {
        self.eventually("every delivery settled", timeout, || async {
            self.pending_deliveries().await == 0
        })
        .await;
    }

    /// Deliveries still pending, over the whole log.
    pub async fn pending_deliveries(&self) -> usize {
        self.all_events()
            .await
            .iter()
            .flat_map(|e| e["deliveries"].as_array().cloned().unwrap_or_default())
            .filter(|d| d["status"] == "pending")
            .count()
    }

    /// The whole log, page by page.
    pub async fn all_events(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0i64;
        loop {
            let page = self
                .events(&[("after", &after.to_string()), ("limit", "1000")])
                .await;
            let Some(last) = page.last() else {
                return all;
            };
            after = last["seq"].as_i64().unwrap_or(i64::MAX);
            all.extend(page);
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A structured-mode CloudEvent.
pub fn event(id: &str, ty: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/tests",
        "type": ty,
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// A PlaceOrder command for the shop, about (`subject`) its order.
pub fn place_order(order_id: &str, sku: &str, quantity: u32, amount: f64) -> Value {
    let mut e = event(
        &format!("place-{order_id}"),
        "com.example.shop.order.place.v1",
        json!({"order_id": order_id, "sku": sku, "quantity": quantity, "amount": amount}),
    );
    e["subject"] = json!(order_id);
    e
}

/// Stock arriving for a SKU, keyed by the SKU so that it is ordered with that SKU's orders.
pub fn stock_added(id: &str, sku: &str, quantity: u32) -> Value {
    let mut e = event(
        id,
        "com.example.shop.stock.added.v1",
        json!({"sku": sku, "quantity": quantity}),
    );
    e["partitionkey"] = json!(sku);
    e
}
