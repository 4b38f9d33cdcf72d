//! Test support: build the guest handlers once, start real hosts on ports the system picks,
//! talk to them over HTTP.
//!
//! Every test gets its own host (its own port, its own data directory), so tests run in
//! parallel and never see each other's events. A host runs either in this process
//! ([`TestHost`], `evhost::run` on a task) or as the `evhost` binary ([`HostProcess`]); both
//! hand out the same [`HostClient`], so a test reads the log, the deliveries and the state
//! with the same helpers whichever it starts.
//!
//! The cluster mode's tests also start NATS: a JetStream server or cluster of their own per
//! test, from [`nats`].

pub mod nats;

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use evhost::Options;
use evhost::api::{
    DeadLetterPage, DeadLetterView, DeliveryView, EventsPage, HandlerView, LoggedEventView,
};
use evhost::client::{Client, EventsQuery};
use evhost::config::Manifest;
use evhost::store::DeliveryStatus;
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
    "greedy",
    "stepper",
    "order-placed-upcaster",
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
        // With `RUSTUP_AUTO_INSTALL=0` the toolchain file does not add the target; the
        // host's own check adds it, or says what to install.
        evhost::toolchain::ensure_rust_target("wasm32-wasip2", &workspace())
            .unwrap_or_else(|err| panic!("cannot build the guest handlers: {err:#}"));
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
        manifest.handlers.iter().all(|h| h.module.exists())
            && manifest
                .schemas
                .iter()
                .all(|s| s.upcaster.as_ref().is_none_or(|u| u.exists())),
        "the shop manifest names modules that were not built"
    );
    manifest
}

/// The shop taking any event type from producers (no `[ingress] accept`): for tests of the
/// CloudEvents binding itself, which post types of every kind.
pub fn open_shop_manifest() -> Manifest {
    let mut manifest = shop_manifest();
    manifest.ingress.accept = None;
    manifest
}

/// A folder holding a copy of the shop's manifest with `tables` (TOML text) added at its
/// end, its module paths made absolute: e.g. a `[cluster]` table.
pub fn shop_dir_with(tables: &str) -> TempDir {
    let dir = shop_dir_accepting(&[]);
    let path = dir.path().join("evhost.toml");
    let text = std::fs::read_to_string(&path).expect("the copied manifest");
    std::fs::write(&path, format!("{text}\n{tables}")).expect("write the manifest");
    dir
}

/// A folder holding a copy of the shop's manifest whose `[ingress] accept` also lists
/// `accept`, its module paths made absolute: for tests that run `evhost up` on a shop with
/// handlers of their own.
pub fn shop_dir_accepting(accept: &[&str]) -> TempDir {
    guests_dir();
    let text = std::fs::read_to_string(workspace().join("examples/shop/evhost.toml"))
        .expect("the shop manifest");
    let target = workspace().join("target").display().to_string();
    let listed =
        "accept = [\"com.example.shop.order.place.v1\", \"com.example.shop.stock.added.v1\"";
    assert!(text.contains(listed), "the shop's accept list moved");
    let extra: String = accept.iter().map(|ty| format!(", {ty:?}")).collect();
    let schemas = workspace()
        .join("examples/shop/schemas")
        .display()
        .to_string();
    let text = text
        .replace("\"../../target", &format!("\"{target}"))
        .replace("\"schemas/", &format!("\"{schemas}/"))
        .replace(listed, &format!("{listed}{extra}"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("evhost.toml"), text).expect("write the manifest");
    dir
}

/// A folder holding the manifest of app `app`: one `recorder` handler subscribed to `ty`,
/// for tests that run `evhost up` on a small app.
pub fn recorder_app_dir(app: &str, ty: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        dir.path().join("evhost.toml"),
        format!(
            "[app]\nname = \"{app}\"\n\n[[handler]]\nname = \"recorder\"\nmodule = {:?}\n\
             subscribe = [{ty:?}]\n",
            guest("recorder").display().to_string()
        ),
    )
    .expect("write the manifest");
    dir
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
pub fn shared_cache_dir() -> PathBuf {
    workspace().join("target/evhost-test-cache")
}

/// How often [`HostClient::poll`] and [`HostClient::eventually`] look again.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// How often [`HostClient::wait_idle`] looks again: each look may read a page of a thousand
/// events, so it looks less often than [`POLL_INTERVAL`], to leave the host's cores to the
/// deliveries it waits for.
const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The page size for reading the whole log: the largest the admin API serves.
const LOG_PAGE: u32 = 1000;

/// A running host, as a test talks to it: the raw HTTP interface (for what a test checks
/// byte by byte: statuses, headers, problem bodies, the log's JSON) and the library's typed
/// admin client (for what only needs the answer's meaning: a delivery's status, a handler's
/// version), plus the waits every test needs.
///
/// Most helpers panic when the host does not answer as the API promises, which fails the
/// test at the call. The `try_` ones hand the failure back instead, for a test whose host
/// may be dying on purpose (the crash test).
#[derive(Debug, Clone)]
pub struct HostClient {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Plain HTTP, sending no token, so that a test can check what the admin API refuses.
    pub http: reqwest::Client,
    /// The typed admin client, with the host's admin token if it has one.
    pub api: Client,
}

impl HostClient {
    pub fn new(base: impl Into<String>, token: Option<String>) -> HostClient {
        let base = base.into();
        HostClient {
            api: Client::new(base.clone(), token),
            base,
            http: reqwest::Client::new(),
        }
    }

    /// Send the raw requests through `http` (one with its own timeouts, say).
    pub fn with_http(mut self, http: reqwest::Client) -> HostClient {
        self.http = http;
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let request = self.http.get(self.url(path));
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
        let request = self.http.post(self.url(path));
        request.send().await.expect("the host answers")
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        let request = self.http.delete(self.url(path));
        request.send().await.expect("the host answers")
    }

    // Ingress.

    /// POST a structured-mode event.
    pub async fn post_structured(&self, event: &Value) -> reqwest::Response {
        self.try_post_structured(event)
            .await
            .expect("the host answers")
    }

    /// POST a structured-mode event; a host that does not answer is an error.
    pub async fn try_post_structured(&self, event: &Value) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.url("/events"))
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
            .await
    }

    /// POST a batch.
    pub async fn post_batch(&self, events: &[Value]) -> reqwest::Response {
        self.try_post_batch(events).await.expect("the host answers")
    }

    /// POST a batch; a host that does not answer is an error.
    pub async fn try_post_batch(&self, events: &[Value]) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.url("/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::from(events.to_vec()).to_string())
            .send()
            .await
    }

    /// POST a binary-mode event: `ce-` headers from `attributes`, `data` as a JSON body.
    pub async fn post_binary(
        &self,
        attributes: &[(&str, &str)],
        data: &Value,
    ) -> reqwest::Response {
        self.try_post_binary(attributes, data)
            .await
            .expect("the host answers")
    }

    /// POST a binary-mode event; a host that does not answer is an error.
    pub async fn try_post_binary(
        &self,
        attributes: &[(&str, &str)],
        data: &Value,
    ) -> reqwest::Result<reqwest::Response> {
        let mut request = self
            .http
            .post(self.url("/events"))
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .body(data.to_string());
        for (name, value) in attributes {
            request = request.header(format!("ce-{name}"), *value);
        }
        request.send().await
    }

    // The event log, as the API's JSON.

    /// The body of `GET /admin/events` with these query parameters.
    pub async fn events_page(&self, query: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .get(self.url("/admin/events"))
            .query(query)
            .send()
            .await
            .expect("the host answers");
        assert_eq!(response.status(), 200, "GET /admin/events {query:?}");
        response.json().await.expect("a JSON body")
    }

    /// The logged events (each with its `seq`, `event` and `deliveries`) of `GET
    /// /admin/events` with these query parameters.
    pub async fn events(&self, query: &[(&str, &str)]) -> Vec<Value> {
        let body = self.events_page(query).await;
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// The CloudEvents JSON of the logged events with these query parameters.
    pub async fn cloudevents(&self, query: &[(&str, &str)]) -> Vec<Value> {
        let logged = self.events(query).await;
        logged.into_iter().map(|e| e["event"].clone()).collect()
    }

    /// The events of one type in the log, as CloudEvents JSON.
    pub async fn events_of_type(&self, ty: &str) -> Vec<Value> {
        self.cloudevents(&[("type", ty), ("limit", "1000")]).await
    }

    /// The whole log, page by page, as the API's JSON.
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
            after = last["seq"].as_i64().expect("a log position");
            all.extend(page);
        }
    }

    // The event log, typed: where a test asks what became of a delivery.

    /// The page of the log after position `after`.
    pub async fn try_log_page(&self, after: i64) -> Result<EventsPage> {
        let query = EventsQuery {
            after: Some(after),
            limit: Some(LOG_PAGE),
            ..EventsQuery::default()
        };
        let page = self.api.events(&query).await;
        page.with_context(|| format!("GET /admin/events after {after}"))
    }

    /// The whole log, oldest first.
    pub async fn event_log(&self) -> Vec<LoggedEventView> {
        let mut all: Vec<LoggedEventView> = Vec::new();
        loop {
            let after = all.last().map_or(0, |logged| logged.seq);
            let page = self.try_log_page(after).await;
            let page = page.unwrap_or_else(|err| panic!("{err:#}"));
            if page.events.is_empty() {
                return all;
            }
            all.extend(page.events);
        }
    }

    /// The deliveries of the logged event with this id, which must be in the log.
    pub async fn deliveries_of(&self, id: &str) -> Vec<DeliveryView> {
        self.event_log()
            .await
            .into_iter()
            .find(|logged| logged.event["id"] == id)
            .unwrap_or_else(|| panic!("the event {id} is not in the log"))
            .deliveries
    }

    /// The delivery of the event with this id to `handler`, which must exist.
    pub async fn delivery_to(&self, id: &str, handler: &str) -> DeliveryView {
        let deliveries = self.deliveries_of(id).await;
        let found = deliveries.iter().find(|d| d.handler == handler).cloned();
        found.unwrap_or_else(|| panic!("no delivery of {id} to {handler}: {deliveries:?}"))
    }

    /// Wait until the delivery of event `id` to `handler` is `status`; fail the test after
    /// `timeout`, or at once when it settles as something else (a settled delivery changes
    /// only when an operator redrives it).
    pub async fn wait_delivery(
        &self,
        id: &str,
        handler: &str,
        status: DeliveryStatus,
        timeout: Duration,
    ) -> DeliveryView {
        let what = format!(
            "the delivery of {id} to {handler} to be {}",
            status.as_str()
        );
        self.poll(&what, timeout, || async {
            let delivery = self.delivery_to(id, handler).await;
            assert!(
                delivery.status == status || !delivery.status.is_settled(),
                "waiting for {what}, it settled as {}: {delivery:?}",
                delivery.status.as_str()
            );
            (delivery.status == status).then_some(delivery)
        })
        .await
    }

    /// Wait until the delivery of event `id` to `handler` is dead.
    pub async fn wait_dead(&self, id: &str, handler: &str, timeout: Duration) -> DeliveryView {
        self.wait_delivery(id, handler, DeliveryStatus::Dead, timeout)
            .await
    }

    /// Deliveries not settled yet (pending or retrying), over the whole log.
    pub async fn unsettled_deliveries(&self) -> usize {
        let log = self.event_log().await;
        let deliveries = log.iter().flat_map(|logged| &logged.deliveries);
        deliveries.filter(|d| !d.status.is_settled()).count()
    }

    /// Wait until every delivery in the log is settled (none pending, none retrying); fail
    /// the test after `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) {
        if let Err(err) = self.try_wait_idle(timeout).await {
            panic!("{err:#}");
        }
    }

    /// Wait until every delivery in the log is settled; after `timeout`, or when the host
    /// does not answer, an error naming the first event still waiting.
    ///
    /// A settled delivery stays settled (only an operator's redrive takes it back), and an
    /// event is appended only by ingress or by a delivery's commit, at a later position than
    /// that delivery's event. So the settled prefix of the log need not be read again: each
    /// look starts at the first event with an unsettled delivery.
    pub async fn try_wait_idle(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut after = 0i64;
        loop {
            let page = self.try_log_page(after).await?;
            let waiting = page.events.iter().find(|logged| {
                let mut deliveries = logged.deliveries.iter();
                deliveries.any(|d| !d.status.is_settled())
            });
            let Some(waiting) = waiting else {
                match page.events.last() {
                    Some(last) => after = last.seq,
                    None => return Ok(()),
                }
                continue;
            };
            after = waiting.seq - 1;
            if Instant::now() > deadline {
                let waiting = serde_json::to_string(waiting).unwrap_or_default();
                bail!("deliveries still unsettled after {timeout:?}, the first: {waiting}");
            }
            tokio::time::sleep(IDLE_POLL_INTERVAL).await;
        }
    }

    // Dead letters, handlers, state, metrics.

    /// The dead letters of `GET /admin/deadletters` with these query parameters.
    pub async fn dead_letters(&self, query: &[(&str, &str)]) -> Vec<DeadLetterView> {
        let response = self
            .http
            .get(self.url("/admin/deadletters"))
            .query(query)
            .send()
            .await
            .expect("the host answers");
        assert_eq!(response.status(), 200, "GET /admin/deadletters {query:?}");
        let page: DeadLetterPage = response.json().await.expect("a page of dead letters");
        page.deadletters
    }

    /// Wait until there are at least `count` dead letters; fail the test after `timeout`.
    pub async fn wait_dead_letters(&self, count: usize, timeout: Duration) -> Vec<DeadLetterView> {
        let what = format!("{count} dead letters");
        self.poll(&what, timeout, || async {
            let letters = self.dead_letters(&[]).await;
            (letters.len() >= count).then_some(letters)
        })
        .await
    }

    /// `GET /admin/handlers`.
    pub async fn handlers(&self) -> Vec<HandlerView> {
        let handlers = self.api.handlers().await;
        handlers.unwrap_or_else(|err| panic!("GET /admin/handlers: {err}"))
    }

    /// `GET /admin/handlers/{name}`, with every version.
    pub async fn handler_info(&self, name: &str) -> HandlerView {
        let handler = self.api.handler(name).await;
        handler.unwrap_or_else(|err| panic!("GET /admin/handlers/{name}: {err}"))
    }

    /// A value of a handler's state, as JSON; `None` when the key is absent.
    pub async fn state(&self, handler: &str, key: &str) -> Option<Value> {
        let value = self.try_state(handler, key).await;
        value.unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// A value of a handler's state, as JSON; `None` when the key is absent, an error when
    /// the host does not answer or the value is not JSON.
    pub async fn try_state(&self, handler: &str, key: &str) -> Result<Option<Value>> {
        let what = || format!("GET /admin/state/{handler}/{key}");
        let Some(bytes) = self.api.state(handler, key).await.with_context(what)? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&bytes).with_context(what)?;
        Ok(Some(value))
    }

    /// `GET /metrics`, the Prometheus text.
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200, "GET /metrics");
        response.text().await.expect("the metrics text")
    }

    // Waiting.

    /// Wait until `check` holds, polling; fail the test with `what` after `timeout`.
    pub async fn eventually<F, Fut>(&self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
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
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// A host running in this process, on a port the system picked, with its own data
/// directory. It derefs to its [`HostClient`].
pub struct TestHost {
    client: HostClient,
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
        let client = HostClient::new(base, options.admin_token.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(evhost::run(listener, options, async move {
            drop(stopped.await);
        }));
        let mut host = TestHost {
            client,
            data,
            manifest,
            stop: Some(stop),
            task: Some(task),
        };
        host.wait_ready().await?;
        Ok(host)
    }

    /// Wait until `/readyz` answers; a host that stopped instead says why, in its own words.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = self.http.get(self.url("/readyz")).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if self.task.as_ref().is_some_and(JoinHandle::is_finished)
                && let Some(task) = self.task.take()
            {
                return match task.await {
                    Ok(Err(err)) => Err(err.context("the host stopped while starting")),
                    Ok(Ok(())) => bail!("the host stopped while starting, without an error"),
                    Err(err) => bail!("the host panicked while starting: {err}"),
                };
            }
            if Instant::now() > deadline {
                bail!("the host did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How a test talks to this host; a clone of it outlives the borrow (in a task).
    pub fn client(&self) -> &HostClient {
        &self.client
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
}

impl Deref for TestHost {
    type Target = HostClient;

    fn deref(&self) -> &HostClient {
        &self.client
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `evhost`, with nothing inherited from the environment that would change its defaults or
/// lock its admin API, logging at `info` (which the start-up line needs); killed if dropped.
pub fn evhost_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(evhost_binary());
    command
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .env_remove("EVHOST_LISTEN")
        .env_remove("EVHOST_DATA")
        .env_remove("EVHOST_HOST")
        .env_remove("EVHOST_ADMIN_TOKEN")
        .env_remove("EVHOST_CACHE_DIR")
        .env_remove("EVHOST_ALLOW_HOSTS")
        .env("EVHOST_LOG", "info");
    command
}

/// The `evhost up` child process, on a data directory of its own that outlives restarts,
/// each start's log (JSON lines, stdout and stderr) in a file of its own. It derefs to the
/// [`HostClient`] of the running process. Dropping it kills the process; if the test is
/// failing, it keeps the data directory and the logs and prints where they are.
///
/// Every start listens on `127.0.0.1:0` and takes its address from its own "evhost is
/// serving" log line. Choosing a free port here and passing it on would race: between
/// finding the port free and the child binding it, another test's host (or anything else)
/// can take it, and then the child fails to start, or worse, the test talks to the other
/// host. A port the child bound itself is its own, and the line says which it is. The log is
/// JSON (`--log-format json`) so that the line is read as data, not scraped from text that
/// may carry colour codes. The client sends no admin token: a test that starts the host
/// with `--admin-token` sends it itself.
pub struct HostProcess {
    cwd: PathBuf,
    /// What follows `evhost up`: the app, `--build`...
    args: Vec<OsString>,
    http: reqwest::Client,
    start_timeout: Duration,
    data: TempDir,
    /// A data directory given by the test (on a small file system, say) instead of `data`.
    data_elsewhere: Option<PathBuf>,
    logs: TempDir,
    starts: usize,
    child: Option<tokio::process::Child>,
    client: Option<HostClient>,
}

impl HostProcess {
    /// `evhost up ARGS` run in `cwd`, not started yet.
    pub fn new(cwd: &Path, args: &[&str]) -> HostProcess {
        HostProcess {
            cwd: cwd.to_owned(),
            args: args.iter().map(OsString::from).collect(),
            http: reqwest::Client::new(),
            start_timeout: Duration::from_secs(30),
            data: tempfile::tempdir().expect("a temporary directory"),
            data_elsewhere: None,
            logs: tempfile::tempdir().expect("a temporary directory"),
            starts: 0,
            child: None,
            client: None,
        }
    }

    /// The raw requests of every start's [`HostClient`] go through `http`.
    pub fn with_http(mut self, http: reqwest::Client) -> HostProcess {
        self.http = http;
        self
    }

    /// How long a start may take before it fails the test (30 s unless set: a host compiles
    /// its handlers on the first start, and `--build` builds them first).
    pub fn with_start_timeout(mut self, timeout: Duration) -> HostProcess {
        self.start_timeout = timeout;
        self
    }

    /// Keep the store in `dir` (which the test owns) rather than in a temporary directory.
    pub fn with_data_dir(mut self, dir: PathBuf) -> HostProcess {
        self.data_elsewhere = Some(dir);
        self
    }

    /// The data directory, the same for every start.
    pub fn data_dir(&self) -> &Path {
        self.data_elsewhere.as_deref().unwrap_or(self.data.path())
    }

    /// Start the process on the data directory and wait until it is ready; fail the test
    /// if it exits first or takes longer than the start timeout.
    pub async fn start(&mut self) -> &HostClient {
        assert!(self.child.is_none(), "the host is already running");
        self.client = None;
        self.starts += 1;
        let log = File::create(self.log_path()).expect("a log file");
        let mut command = evhost_command();
        command
            .current_dir(&self.cwd)
            .args(["--log-format", "json", "up"])
            .args(&self.args)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(self.data_dir())
            .stdout(log.try_clone().expect("a log file handle"))
            .stderr(log);
        self.child = Some(command.spawn().expect("evhost up starts"));
        let addr = self.wait_serving().await;
        let client = HostClient::new(format!("http://{addr}"), None).with_http(self.http.clone());
        self.wait_ready(&client).await;
        self.client.insert(client)
    }

    /// The address of this start's "evhost is serving" line, once it is there.
    async fn wait_serving(&mut self) -> String {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            let lines = self.log_lines();
            let serving = lines
                .iter()
                .map(|line| &line["fields"])
                .find(|fields| fields["message"] == "evhost is serving");
            if let Some(addr) = serving.and_then(|fields| fields["addr"].as_str()) {
                return addr.to_owned();
            }
            self.assert_running("before it was serving");
            assert!(
                Instant::now() < deadline,
                "evhost up was not serving within {:?}:\n{}",
                self.start_timeout,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until `/readyz` answers: the listener is bound before the serving line, the
    /// server starts just after it.
    async fn wait_ready(&mut self, client: &HostClient) {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            let readyz = client.http.get(client.url("/readyz"));
            if let Ok(response) = readyz.timeout(Duration::from_secs(2)).send().await
                && response.status().is_success()
            {
                return;
            }
            self.assert_running("before it was ready");
            assert!(
                Instant::now() < deadline,
                "evhost up was not ready within {:?}:\n{}",
                self.start_timeout,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fail the test if the process has exited.
    fn assert_running(&mut self, when: &str) {
        let child = self.child.as_mut().expect("a started host");
        if let Some(status) = child.try_wait().expect("the child's status") {
            self.child = None;
            panic!("evhost up exited ({status}) {when}:\n{}", self.log_tail(40));
        }
    }

    /// SIGKILL: no grace, nothing flushed or drained. Fails the test if the process had
    /// exited on its own.
    pub async fn kill(&mut self) {
        self.assert_running("before it was killed");
        let mut child = self.child.take().expect("a running host");
        self.client = None;
        child.kill().await.expect("SIGKILL the host and reap it");
    }

    /// SIGTERM, as a service manager stops a service; waits for the exit.
    pub async fn terminate(mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("a running host");
        let pid = child.id().expect("the host is still running");
        let kill = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(kill.success(), "kill -TERM {pid}");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.expect("the host's exit status"),
            Err(_) => panic!(
                "evhost did not stop within {within:?} of SIGTERM:\n{}",
                self.log_tail(40)
            ),
        }
    }

    /// The log file of the latest start.
    pub fn log_path(&self) -> PathBuf {
        self.logs.path().join(format!("host-{}.log", self.starts))
    }

    /// The latest start's log, one value per line: the host's JSON lines, and what else was
    /// written (a build tool's output, say) as strings.
    pub fn log_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines = text.lines().map(|line| {
            serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_owned()))
        });
        lines.collect()
    }

    /// The last `lines` lines of the latest start's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Deref for HostProcess {
    type Target = HostClient;

    fn deref(&self) -> &HostClient {
        self.client.as_ref().expect("the host is running")
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.start_kill());
        }
        if std::thread::panicking() {
            eprintln!(
                "last host log ({}):\n{}",
                self.log_path().display(),
                self.log_tail(30)
            );
            let keep = |dir: &mut TempDir| {
                std::mem::replace(dir, tempfile::tempdir().expect("a temporary directory")).keep()
            };
            eprintln!(
                "kept the data directory {} and the host logs {}",
                keep(&mut self.data).display(),
                keep(&mut self.logs).display()
            );
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
