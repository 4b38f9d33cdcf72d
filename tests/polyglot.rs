//! Handlers in Python and JavaScript run beside Rust ones and keep the same contract.
//!
//! The Python and JavaScript handlers are built from source here, by the scripts the manifests'
//! `build` commands run (`handlers/python/build.py`, `handlers/js/build.mjs`). The scripts
//! install their own tools (a venv with the pinned componentize-py, `npm ci` from the
//! lockfile) on the first run and rebuild only what changed, so only the first test run on a
//! machine pays for them. They need `python3` (3.10+, with `venv`) and `node` (18+) with
//! `npm`; set `EVHOST_PYTHON` / `EVHOST_NODE` to use others. Without them these tests fail at
//! their start, saying what to install: they do not skip, since `cargo test` is the whole
//! suite and a run that could not check the Python and JavaScript handlers did not pass.
//!
//! The fixtures are the recorder in three languages (handlers/fixtures/recorder,
//! handlers/python/recorder, handlers/js/recorder): the same events go to all three, and each
//! must read and write its state, emit, retry, reject and fail on a thrown exception the same
//! way. The polyglot shop (examples/shop/evhost.polyglot.toml) runs through the CLI with
//! `--build`, which also shows the handlers' log lines reaching the host's log.
//!
//! `cargo test -p evhost-tests --test main polyglot_cost -- --ignored --nocapture` runs the
//! benchmark: per-event cost of the same trivial handler in each language, and compile time
//! cold vs cached (`EVHOST_BENCH_ONLY=python` runs the rows whose name contains `python`,
//! `EVHOST_BENCH_EVENTS=1000` times more events).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use evhost::config::HandlerSettings;
use evhost::name::HandlerName;
use evhost::runtime::{Runtime, RuntimeOptions};
use evhost::store::DeliveryStatus;
use evhost_tests::{
    HostProcess, TestHost, event, guest, guests_dir, manifest, place_order, shared_cache_dir,
    stock_added, workspace,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// One language's build: the interpreter its script runs on and what to tell someone who
/// lacks it.
struct LanguageBuild {
    language: &'static str,
    /// The variable naming another interpreter than `default`.
    variable: &'static str,
    default: &'static str,
    script: &'static str,
    needs: &'static str,
}

const PYTHON: LanguageBuild = LanguageBuild {
    language: "Python",
    variable: "EVHOST_PYTHON",
    default: "python3",
    script: "handlers/python/build.py",
    needs: "python3 (3.10 or later) with its venv module is needed for the Python handler \
            tests: apt install python3 python3-venv (Debian/Ubuntu)",
};

const NODE: LanguageBuild = LanguageBuild {
    language: "JavaScript",
    variable: "EVHOST_NODE",
    default: "node",
    script: "handlers/js/build.mjs",
    needs: "node (18 or later) with npm is needed for the JavaScript handler tests: apt \
            install nodejs npm (Debian/Ubuntu), or Node.js from https://nodejs.org",
};

impl LanguageBuild {
    fn interpreter(&self) -> String {
        std::env::var(self.variable).unwrap_or_else(|_| self.default.to_owned())
    }

    fn command(&self) -> Command {
        let mut command = Command::new(self.interpreter());
        command.arg(workspace().join(self.script));
        command
    }

    /// What is missing for this build, asking the script itself (`--check`: its interpreter
    /// and the tools it would install, without building), so that the test and a build by
    /// hand agree on what is needed.
    fn missing(&self) -> Option<String> {
        let interpreter = self.interpreter();
        let chosen = match std::env::var_os(self.variable) {
            Some(_) => format!("from {}", self.variable),
            None => format!("from the PATH; {} names another", self.variable),
        };
        match self.command().arg("--check").output() {
            Err(err) => Some(format!(
                "cannot run `{interpreter}` ({chosen}): {err}. {}",
                self.needs
            )),
            Ok(output) if !output.status.success() => Some(format!(
                "{} --check: {}. {}",
                self.script,
                String::from_utf8_lossy(&output.stderr).trim(),
                self.needs
            )),
            Ok(_) => None,
        }
    }
}

/// Fail the test at once, naming everything missing, when the Python or JavaScript build
/// cannot run here.
fn require_build_tools() {
    static CHECKED: OnceLock<Vec<String>> = OnceLock::new();
    let missing = CHECKED.get_or_init(|| {
        [PYTHON, NODE]
            .iter()
            .filter_map(LanguageBuild::missing)
            .collect()
    });
    assert!(
        missing.is_empty(),
        "the polyglot tests cannot build their handlers on this machine, so they fail (they \
         do not skip):\n  - {}",
        missing.join("\n  - ")
    );
}

/// Build the Python and JavaScript handlers `names` (one language after the other: the
/// machine is small). The scripts skip what is up to date.
fn build_polyglot(names: &[&str]) -> PathBuf {
    require_build_tools();
    for build in [PYTHON, NODE] {
        let what = format!("build the {} handlers ({})", build.language, build.script);
        run(build.command().args(names), &what);
    }
    workspace().join("target")
}

/// The workspace's target folder once the Python and JavaScript handlers the tests use are
/// built, once per test process, and compiled into the shared cache, so that no host start
/// waits for a cold compile of a component tens of MiB large.
fn polyglot_built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = build_polyglot(&["recorder", "notification"]);
        let started = Instant::now();
        let runtime = Runtime::new(&RuntimeOptions {
            cache_dir: Some(shared_cache_dir()),
        })
        .expect("a runtime");
        for module in [
            "python/recorder",
            "js/recorder",
            "python/notification",
            "js/notification",
        ] {
            let path = target.join(format!("{module}.wasm"));
            let bytes = std::fs::read(&path).unwrap_or_else(|err| panic!("{path:?}: {err}"));
            runtime
                .compile(&bytes)
                .unwrap_or_else(|err| panic!("{module} does not compile: {err:#}"));
        }
        eprintln!(
            "compile the Python and JavaScript handlers: {:.1?}",
            started.elapsed()
        );
        target
    })
}

fn run(command: &mut Command, what: &str) {
    let started = Instant::now();
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("failed to {what}: {err}"));
    assert!(
        output.status.success(),
        "failed to {what}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{what}: {:.1?}", started.elapsed());
}

/// A test manifest: `{guests}` is the Rust guests' folder, `{target}` the workspace's target
/// folder, where the Python and JavaScript components are.
fn polyglot_manifest(toml: &str) -> evhost::config::Manifest {
    let target = polyglot_built();
    guests_dir();
    manifest(&toml.replace("{target}", &target.display().to_string()))
}

/// The recorder in Rust, Python and JavaScript, on the same events; and, for a thrown
/// exception, the Rust fixture that panics, which is what a thrown exception is to Python and
/// JavaScript: a bug, not a decision.
const RECORDERS: &str = r#"
    [app]
    name = "polyglot"

    [[handler]]
    name = "rust"
    module = "{guests}/recorder.wasm"
    subscribe = ["test.poly.v1"]
    max_attempts = 3
    backoff = { initial_ms = 10, max_ms = 20 }
    config = { label = "rust recorder" }

    [[handler]]
    name = "rust-panics"
    module = "{guests}/misbehave.wasm"
    subscribe = ["test.trap.v1"]
    max_attempts = 3
    backoff = { initial_ms = 10, max_ms = 20 }

    [[handler]]
    name = "python"
    module = "{target}/python/recorder.wasm"
    subscribe = ["test.poly.v1", "test.trap.v1"]
    max_attempts = 3
    backoff = { initial_ms = 10, max_ms = 20 }
    config = { label = "python recorder" }

    [[handler]]
    name = "js"
    module = "{target}/js/recorder.wasm"
    subscribe = ["test.poly.v1", "test.trap.v1"]
    max_attempts = 3
    backoff = { initial_ms = 10, max_ms = 20 }
    config = { label = "js recorder" }
"#;

const LANGUAGES: [&str; 3] = ["rust", "python", "js"];

fn poly_event(id: &str, subject: &str, data: Value) -> Value {
    let mut e = event(id, "test.poly.v1", data);
    e["subject"] = json!(subject);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_keep_the_contract_beside_rust() {
    let host = TestHost::start(polyglot_manifest(RECORDERS)).await;

    // State: each handler reads and writes its own, and reads see its staged writes (the
    // Python and JavaScript recorders reject the event otherwise).
    let first = poly_event("ok-1", "k", json!({}));
    assert_eq!(host.post_structured(&first).await.status(), 202);
    for handler in LANGUAGES {
        host.wait_delivery("ok-1", handler, DeliveryStatus::Done, WAIT)
            .await;
    }
    // Emit: one event each, completed by the host.
    let emitting = poly_event(
        "emit-1",
        "k",
        json!({"emit": {
            "type": "test.emitted.v1",
            "data": {"n": 1},
            "subject": "k",
            "partitionkey": "p-1",
        }}),
    );
    assert_eq!(host.post_structured(&emitting).await.status(), 202);
    for handler in LANGUAGES {
        host.wait_delivery("emit-1", handler, DeliveryStatus::Done, WAIT)
            .await;
        assert_eq!(
            host.state(handler, "seen/k").await,
            Some(json!(["ok-1", "emit-1"])),
            "{handler}"
        );
        assert_eq!(
            host.state(handler, "count").await,
            Some(json!(2)),
            "{handler}"
        );
        // Settings: each reads its own `config`.
        assert_eq!(
            host.state(handler, "handled/ok-1").await,
            Some(json!(format!("{handler} recorder"))),
            "{handler}"
        );
    }
    let emitted = host.events_of_type("test.emitted.v1").await;
    assert_eq!(emitted.len(), 3, "{emitted:#?}");
    let mut ids = Vec::new();
    for handler in LANGUAGES {
        let source = format!("/polyglot/{handler}");
        let e = emitted
            .iter()
            .find(|e| e["source"] == source.as_str())
            .unwrap_or_else(|| panic!("{handler} emitted nothing: {emitted:#?}"));
        // What the handler set...
        assert_eq!(e["data"], json!({"n": 1}), "{e}");
        assert_eq!(e["subject"], "k", "{e}");
        assert_eq!(e["partitionkey"], "p-1", "{e}");
        assert_eq!(e["datacontenttype"], "application/json", "{e}");
        // ... and what the host filled in.
        assert_eq!(e["specversion"], "1.0", "{e}");
        assert_eq!(e["causationid"], "emit-1", "{e}");
        assert_eq!(e["correlationid"], "emit-1", "{e}");
        assert!(e["time"].as_str().is_some_and(|t| !t.is_empty()), "{e}");
        ids.push(e["id"].as_str().expect("an id").to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each handler's emit has its own id: {ids:?}");

    // Failures: retry is retried up to max_attempts, reject dead-letters at once, and a thrown
    // exception (a panic in Rust) counts as a retryable failure. Whatever a failed invocation
    // staged (state, an emit) is discarded.
    let emit_then =
        |fail: &str| json!({"fail": fail, "emit": {"type": "test.discarded.v1", "data": {}}});
    let retry = poly_event("retry-1", "failed", emit_then("retry"));
    let reject = poly_event("reject-1", "failed", emit_then("reject"));
    let mut throw = event("throw-1", "test.trap.v1", emit_then("throw"));
    throw["subject"] = json!("failed");
    for e in [&retry, &reject, &throw] {
        assert_eq!(host.post_structured(e).await.status(), 202);
    }
    for handler in LANGUAGES {
        let retried = host.wait_dead("retry-1", handler, WAIT).await;
        assert_eq!(retried.attempts, 3, "{handler}: {retried:?}");
        assert!(
            retried
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("asked to retry") && e.contains("retry-1")),
            "{handler}: {retried:?}"
        );
        let rejected = host.wait_dead("reject-1", handler, WAIT).await;
        assert_eq!(rejected.attempts, 1, "{handler}: {rejected:?}");
        assert!(
            rejected
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("rejected the event") && e.contains("reject-1")),
            "{handler}: {rejected:?}"
        );
    }
    let panicked = host.wait_dead("throw-1", "rust-panics", WAIT).await;
    assert_eq!(panicked.attempts, 3, "{panicked:?}");
    for (handler, exception) in [("python", "RuntimeError"), ("js", "TypeError")] {
        let thrown = host.wait_dead("throw-1", handler, WAIT).await;
        assert_eq!(thrown.attempts, 3, "{handler}: {thrown:?}");
        let error = thrown.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains(&format!("uncaught {exception}")) && error.contains("throw-1"),
            "{handler}: the exception is the reason: {thrown:?}"
        );
    }
    host.wait_idle(WAIT).await;
    for handler in LANGUAGES {
        assert_eq!(host.state(handler, "seen/failed").await, None, "{handler}");
        assert_eq!(
            host.state(handler, "count").await,
            Some(json!(2)),
            "{handler}"
        );
    }
    assert!(host.events_of_type("test.discarded.v1").await.is_empty());
}

/// An emit the host refuses is a `reject` in every language's SDK: the same event would make
/// the same emit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_emits_are_rejected_in_every_language() {
    let host = TestHost::start(polyglot_manifest(RECORDERS)).await;
    // An event type with a space: the host refuses the emit.
    let bad = poly_event(
        "bad-emit",
        "k",
        json!({"emit": {"type": "not a type", "data": {}}}),
    );
    assert_eq!(host.post_structured(&bad).await.status(), 202);
    for handler in LANGUAGES {
        let rejected = host.wait_dead("bad-emit", handler, WAIT).await;
        assert_eq!(rejected.attempts, 1, "{handler}: {rejected:?}");
        assert!(
            rejected
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot emit") && e.contains("whitespace")),
            "{handler}: {rejected:?}"
        );
    }
}

/// The shop's order.placed v1 -> v2 upcaster in JavaScript (handlers/js/order-placed-upcaster,
/// built by the JS build script against the upcaster world) does in the shop what the Rust
/// one does: inventory reads every v1 order as v2, priced in EUR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_upcaster_reads_the_shops_v1_orders_as_v2() {
    require_build_tools();
    run(
        NODE.command().arg("order-placed-upcaster"),
        "build the JavaScript upcaster",
    );
    let upcaster = workspace().join("target/js/order-placed-upcaster.wasm");
    let dir = evhost_tests::shop_dir_accepting(&[]);
    let path = dir.path().join("evhost.toml");
    let text = std::fs::read_to_string(&path).expect("the copied manifest");
    let rust = guest("order_placed_upcaster").display().to_string();
    assert!(text.contains(&rust), "the shop's upcaster moved");
    std::fs::write(&path, text.replace(&rust, &upcaster.display().to_string()))
        .expect("write the manifest");
    let host = TestHost::start(evhost::config::Manifest::load(&path).expect("the manifest")).await;
    let schemas = host.get_json("/admin/upcasters").await;
    let js = evhost::runtime::module_sha256(&std::fs::read(&upcaster).unwrap());
    assert_eq!(schemas["upcasters"][0]["module_sha256"], js.as_str());

    host.post_structured(&stock_added("stock-1", "sku-1", 5))
        .await;
    host.post_structured(&place_order("o-1", "sku-1", 2, 30.5))
        .await;
    host.wait_idle(WAIT).await;
    assert_eq!(host.state("inventory", "stock/sku-1").await, Some(json!(3)));
    let placed = host
        .events_of_type("com.example.shop.order.placed.v1")
        .await;
    let id = placed[0]["id"].as_str().expect("an id").to_owned();
    let delivered_as = host
        .delivery_to(&id, "inventory")
        .await
        .delivered_as
        .expect("inventory reads it as v2");
    assert_eq!(delivered_as["type"], "com.example.shop.order.placed.v2");
    assert_eq!(delivered_as["data"]["total"]["amount"].as_f64(), Some(30.5));
    assert_eq!(delivered_as["data"]["total"]["currency"], "EUR");
    assert_eq!(delivered_as["data"].get("amount"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_polyglot_shop_builds_and_runs_from_the_cli() {
    // Built (and compiled into the cache) up front, so that `--build` below only checks.
    polyglot_built();
    guests_dir();
    let polyglot_shop = workspace().join("examples/shop/evhost.polyglot.toml");
    let polyglot_shop = polyglot_shop.to_str().expect("a UTF-8 path");
    let mut process = HostProcess::new(&workspace(), &[polyglot_shop, "--build"])
        .with_start_timeout(Duration::from_secs(300));
    // The compiled components of this test run, so that the host does not compile the large
    // Python and JavaScript components again (that is measured by the benchmark).
    #[cfg(unix)]
    std::os::unix::fs::symlink(shared_cache_dir(), process.data_dir().join("compiled"))
        .expect("link the compiled-component cache");
    process.start().await;
    assert_eq!(
        process
            .post_structured(&stock_added("stock-1", "sku-1", 5))
            .await
            .status(),
        202
    );
    assert_eq!(
        process
            .post_structured(&place_order("o-1", "sku-1", 1, 25.0))
            .await
            .status(),
        202
    );

    let placed = "count/com.example.shop.order.placed.v1";
    let shipped = "count/com.example.shop.shipment.created.v1";
    for handler in ["notification", "notification-js"] {
        let what = format!("{handler} counts the order placed and shipped");
        process
            .eventually(&what, WAIT, || async {
                let counts = (
                    process.state(handler, placed).await,
                    process.state(handler, shipped).await,
                );
                counts == (Some(json!(1)), Some(json!(1)))
            })
            .await;
    }

    // Each language's log line reached the host's log, with the handler's name and the event.
    let lines = process.log_lines();
    let logged = |handler: &str, message: &str| {
        lines.iter().any(|l| {
            l["target"] == "evhost::handler"
                && l["fields"]["handler"] == handler
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(message))
                && l["fields"]["event_id"].as_str().is_some()
        })
    };
    for handler in ["notification", "notification-js"] {
        for message in [
            "notify order o-1: we have your order",
            "notify order o-1: your order is on its way",
        ] {
            assert!(
                logged(handler, message),
                "{handler} logged `{message}`:\n{lines:#?}"
            );
        }
    }
}

/// Per-event cost of the same trivial handler (`ack`: no state, no emits, no logs) in Rust,
/// Python and JavaScript, instantiate + call, on one runtime configured like the host's; and
/// compile time cold (empty cache) and cached (a new engine on the filled cache, as after a
/// restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture"]
async fn polyglot_cost() {
    polyglot_built();
    let target = build_polyglot(&["ack"]);
    let rust_ack = {
        let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command.current_dir(workspace()).args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "ack",
        ]);
        run(&mut command, "build the Rust ack fixture");
        guest("ack")
    };
    let modules = [
        ("rust", rust_ack),
        ("python", target.join("python/ack.wasm")),
        ("js", target.join("js/ack.wasm")),
        ("rust notification", guest("notification")),
        (
            "python notification",
            target.join("python/notification.wasm"),
        ),
        ("js notification", target.join("js/notification.wasm")),
    ];
    let events: usize = std::env::var("EVHOST_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let data = tempfile::tempdir().expect("a temporary directory");
    let store =
        evhost::store::Store::open(data.path(), evhost::store::Durability::Off).expect("a store");
    println!(
        "\n{:<20} {:>8} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "handler", "MiB", "cold ms", "cached ms", "first ms", "p50 us", "mean us", "p99 us"
    );
    let only = std::env::var("EVHOST_BENCH_ONLY").unwrap_or_default();
    for (name, module) in modules {
        if !name.contains(only.as_str()) {
            continue;
        }
        let size = std::fs::metadata(&module).expect("the module").len() as f64 / 1048576.0;
        let cache = tempfile::tempdir().expect("a temporary directory");
        let options = RuntimeOptions {
            cache_dir: Some(cache.path().to_owned()),
        };
        let load = |runtime: &Runtime| {
            let started = Instant::now();
            let bytes = std::fs::read(&module).expect("the module");
            let name = HandlerName::new("bench").expect("a name");
            let handler = runtime
                .standalone(&name, &bytes, HandlerSettings::default())
                .expect("the module loads");
            (handler, started.elapsed())
        };
        let cold_runtime = Runtime::new(&options).expect("a runtime");
        let (_, cold) = tokio::task::block_in_place(|| load(&cold_runtime));
        drop(cold_runtime);
        // The cache is written in the background; give it a moment to land on disk.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let runtime = Runtime::new(&options).expect("a runtime");
        let (handler, cached) = tokio::task::block_in_place(|| load(&runtime));

        let event =
            evhost::event::Event::builder("bench-0", "/bench", "com.example.shop.order.placed.v1")
                .subject("o-1")
                .json(&json!({"order_id": "o-1", "sku": "sku-1", "quantity": 1}))
                .build()
                .expect("a valid event");
        let mut timings = Vec::with_capacity(events);
        let mut first = Duration::ZERO;
        for i in 0..events + 20 {
            let started = Instant::now();
            runtime
                .invoke(&handler, &event, 0, store.state_reader(handler.name()))
                .await
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            let took = started.elapsed();
            if i == 0 {
                first = took;
            }
            // The first few warm the pooling allocator's slots and the caches.
            if i >= 20 {
                timings.push(took);
            }
        }
        timings.sort();
        let mean = timings.iter().sum::<Duration>() / timings.len() as u32;
        let p50 = timings[timings.len() / 2];
        let p99 = timings[timings.len() * 99 / 100];
        println!(
            "{name:<20} {size:>8.1} {:>12.0} {:>12.0} {:>10.1} {:>10.0} {:>10.0} {:>10.0}",
            cold.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e6,
            mean.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
        );
    }
}
