//! NATS servers for the tests: one JetStream server ([`NatsServer`]) or a JetStream cluster
//! ([`NatsCluster`]), each node a `nats-server` child process on ports of its own, with its
//! configuration, store and log in a temporary directory of its own.
//!
//! The server is the nats-server pinned in `tools/nats-server/requirements.txt`, installed
//! into `target/tools/nats-server/` on first use ([`nats_server_binary`]), never the
//! machine's own: a distribution's package (Debian's is 2.9) lacks the JetStream atomic batch
//! publish the cluster mode relies on, and a server on the default port 4222 would be shared
//! by every test. `EVHOST_NATS_SERVER` names another binary (2.15 or later) to use instead.
//!
//! Ports: a node is configured with fixed ports, because a restart must come back where its
//! clients and its cluster's routes look for it, and the routes of every node name the
//! cluster ports of all. They are found free by binding `127.0.0.1:0` and closing the socket
//! again ([`free_ports`]); between that and the server binding them, something else can take
//! one (an outgoing connection's ephemeral port, most likely). A start that fails that way
//! picks new ports and tries again; a restart cannot, and fails the test saying so.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::workspace;

/// The script installing the pinned nats-server, relative to the workspace.
const INSTALL_SCRIPT: &str = "tools/nats-server/install.py";

/// The oldest server the tests work with: 2.15 brought JetStream atomic batch publish.
const MIN_VERSION: (u32, u32) = (2, 15);

/// How long a start (or restart) may take until the server is healthy. A cluster elects its
/// meta leader within about two seconds here; the rest is room for a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Starts that lose a port to something else before the server binds it, tried again.
const START_ATTEMPTS: usize = 3;

/// Evhost stores state values of up to 1 MiB, and a message carries headers beside them;
/// 8 MB is the most nats-server allows without warning that it is unusually large.
const MAX_PAYLOAD: &str = "8MB";

/// The cluster name every [`NatsCluster`] node is configured with.
pub const CLUSTER_NAME: &str = "evhost-test";

/// The nats-server binary the tests run: `EVHOST_NATS_SERVER` when set, otherwise the one
/// `tools/nats-server/install.py` installs (and finds installed, in well under a second, on
/// every run but the first). Settled once per test process; fails the test when there is no
/// usable server, with what the install said.
pub fn nats_server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let binary = match std::env::var_os("EVHOST_NATS_SERVER").filter(|v| !v.is_empty()) {
            Some(path) => {
                let path = PathBuf::from(path);
                assert!(
                    path.is_file(),
                    "EVHOST_NATS_SERVER names {}, which is not a file",
                    path.display()
                );
                path
            }
            None => install_nats_server(),
        };
        check_version(&binary);
        binary
    })
}

fn install_nats_server() -> PathBuf {
    let python = std::env::var("EVHOST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = Command::new(&python)
        .arg(workspace().join(INSTALL_SCRIPT))
        .current_dir(workspace())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run `{python} {INSTALL_SCRIPT}` to install nats-server ({err}): it \
                 needs python3 3.10 or later with its venv module (or EVHOST_PYTHON naming \
                 one); or set EVHOST_NATS_SERVER to a nats-server {}.{} or later",
                MIN_VERSION.0, MIN_VERSION.1
            )
        });
    assert!(
        output.status.success(),
        "`{python} {INSTALL_SCRIPT}` failed to install nats-server ({}); set \
         EVHOST_NATS_SERVER to a nats-server {}.{} or later to use that instead:\n{}",
        output.status,
        MIN_VERSION.0,
        MIN_VERSION.1,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().rev().find(|line| !line.trim().is_empty());
    let path = PathBuf::from(last.unwrap_or_default().trim());
    assert!(
        path.is_absolute() && path.is_file(),
        "`{python} {INSTALL_SCRIPT}` succeeded but its last line is not the path of a \
         nats-server binary:\n{stdout}"
    );
    path
}

/// Fail unless `binary --version` says `nats-server: vMAJOR.MINOR...` at [`MIN_VERSION`] or
/// later: an override pointing at the machine's old server would otherwise fail the cluster
/// tests in ways that do not say why.
fn check_version(binary: &Path) {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {} --version: {err}", binary.display()));
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let version = said
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))
        .and_then(|version| {
            let mut parts = version.split('.').map(|part| {
                let digits = part.split(|c: char| !c.is_ascii_digit()).next()?;
                digits.parse::<u32>().ok()
            });
            Some((parts.next()??, parts.next()??))
        });
    match version {
        Some(version) if version >= MIN_VERSION => {}
        _ => panic!(
            "{} --version said {said:?}: nats-server {}.{} or later is needed (unset \
             EVHOST_NATS_SERVER to use the one {INSTALL_SCRIPT} installs)",
            binary.display(),
            MIN_VERSION.0,
            MIN_VERSION.1
        ),
    }
}

/// `count` distinct ports free on 127.0.0.1 at the time of asking, none handed out before in
/// this process. All are held open until all are found, so they differ from each other; the
/// set of ports handed out keeps two tests of this process from being given the same port
/// when the system offers it again after it was closed. See the module docs for the race
/// this leaves.
pub fn free_ports(count: usize) -> Vec<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1");
        let port = listener.local_addr().expect("a bound address").port();
        // Held (not dropped) either way, so the system does not offer the same port again.
        listeners.push(listener);
        if handed_out.insert(port) {
            ports.push(port);
        }
    }
    ports
}

/// A cluster node's ports for routes: the one it listens on, and those of every node to
/// connect to (itself included, which nats-server recognises and drops), so that a node
/// finds the others whichever of them are running when it starts.
#[derive(Clone, Debug)]
struct ClusterPorts {
    listen: u16,
    routes: Vec<u16>,
}

/// One nats-server with JetStream, on 127.0.0.1, its configuration, store and log in a
/// temporary directory of its own that outlives restarts. Dropping it kills the process.
///
/// The methods take `&self` (the process sits behind a lock) so that a test can kill and
/// restart a node of a [`NatsCluster`] while it also holds the cluster.
pub struct NatsServer {
    name: String,
    client_port: u16,
    monitor_port: u16,
    cluster: Option<ClusterPorts>,
    dir: TempDir,
    http: reqwest::Client,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// A standalone server with JetStream, started and healthy. Fails the test if it does
    /// not become healthy within 30 s, with the end of its log.
    pub async fn start() -> NatsServer {
        for attempt in 1..=START_ATTEMPTS {
            let ports = free_ports(2);
            let server = NatsServer::new("evhost-test-nats", ports[0], ports[1], None);
            server.spawn();
            match server.wait_healthy(START_TIMEOUT).await {
                Ok(()) => return server,
                Err(_) if attempt < START_ATTEMPTS && server.lost_a_port() => continue,
                Err(err) => panic!("{err:#}"),
            }
        }
        unreachable!("the last attempt returns or fails the test")
    }

    fn new(name: &str, client_port: u16, monitor_port: u16, cluster: Option<ClusterPorts>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("nats-{name}-"))
            .tempdir()
            .expect("a temporary directory");
        let http = reqwest::Client::builder()
            // The monitoring endpoint is on 127.0.0.1; a proxy from the environment must not
            // stand in between.
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let server = NatsServer {
            name: name.to_owned(),
            client_port,
            monitor_port,
            cluster,
            dir,
            http,
            child: Mutex::new(None),
        };
        std::fs::write(server.config_path(), server.config())
            .expect("the nats-server configuration written");
        server
    }

    /// The configuration file's text. JetStream's settings are written out rather than left
    /// to defaults that depend on the machine (its limits default to shares of the memory
    /// and disk there are).
    fn config(&self) -> String {
        let quoted = |path: &Path| {
            serde_json::to_string(&path.to_string_lossy()).expect("a path as a JSON string")
        };
        let mut config = format!(
            "# Written by the evhost tests (tests/support/nats.rs).\n\
             server_name: {name}\n\
             listen: \"127.0.0.1:{client}\"\n\
             http: \"127.0.0.1:{monitor}\"\n\
             max_payload: {MAX_PAYLOAD}\n\
             jetstream {{\n\
             \x20 store_dir: {store}\n\
             \x20 max_memory_store: 1GB\n\
             \x20 max_file_store: 10GB\n\
             }}\n",
            name = self.name,
            client = self.client_port,
            monitor = self.monitor_port,
            store = quoted(&self.store_dir()),
        );
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
                .collect();
            config.push_str(&format!(
                "cluster {{\n\
                 \x20 name: {CLUSTER_NAME}\n\
                 \x20 listen: \"127.0.0.1:{listen}\"\n\
                 \x20 routes: [{routes}]\n\
                 }}\n",
                listen = cluster.listen,
                routes = routes.join(", "),
            ));
        }
        config
    }

    /// The `server_name`: `n1`, `n2`... in a cluster.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `nats://127.0.0.1:PORT`, the client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// The URL of `path` on the monitoring endpoint: `monitor_url("/jsz")`.
    pub fn monitor_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.monitor_port)
    }

    /// `GET path` on the monitoring endpoint, as JSON (`/jsz`, `/varz`...). Fails the test
    /// when the server does not answer with JSON.
    pub async fn monitor_json(&self, path: &str) -> Value {
        let value = self.try_monitor_json(path).await;
        value.unwrap_or_else(|err| panic!("{err:#}\n{}", self.log_tail(20)))
    }

    async fn try_monitor_json(&self, path: &str) -> Result<Value> {
        let url = self.monitor_url(path);
        let what = || format!("GET {url} on nats-server {}", self.name);
        let response = self.http.get(&url).send().await.with_context(what)?;
        response.json().await.with_context(what)
    }

    /// The folder holding the server's configuration (`nats-server.conf`) and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The JetStream store directory, the same for every start.
    pub fn store_dir(&self) -> PathBuf {
        self.dir().join("store")
    }

    fn config_path(&self) -> PathBuf {
        self.dir().join("nats-server.conf")
    }

    /// The server's stdout and stderr, every start's appended to the last's.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("nats-server.log")
    }

    /// The last `lines` lines of the log, headed by which server it is, for assertion
    /// messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "the last lines of nats-server {}'s log ({}):\n{tail}",
            self.name,
            self.log_path().display()
        )
    }

    /// Whether the process is running: started, and neither killed nor exited.
    pub fn is_running(&self) -> bool {
        matches!(self.state(), State::Running)
    }

    fn state(&self) -> State {
        // An exited process is kept (not reaped into `None`), so that a wait can tell a
        // server that died from one the test killed.
        match self.lock_child().as_mut().map(Child::try_wait) {
            None => State::Down,
            Some(Ok(None)) => State::Running,
            Some(Ok(Some(status))) => State::Exited(status.to_string()),
            Some(Err(err)) => State::Exited(err.to_string()),
        }
    }

    /// Kill the process with SIGKILL, as a crash would, and wait until it is gone; its store
    /// is kept for [`restart`](Self::restart). A no-op when it is not running.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock_child().take() {
            // An error here is a process that has already exited.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same ports, configuration and store (killing it first
    /// if it is running), and wait until it is healthy; in a cluster, that is until it is
    /// current with the meta leader. Fails the test if it does not get there within 30 s.
    pub async fn restart(&self) {
        self.kill();
        self.spawn();
        if let Err(err) = self.wait_healthy(START_TIMEOUT).await {
            let taken = if self.lost_a_port() {
                " (one of its ports was taken by something else while it was down)"
            } else {
                ""
            };
            panic!("restarting nats-server {}{taken}: {err:#}", self.name);
        }
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn spawn(&self) {
        let mut child = self.lock_child();
        assert!(
            child.is_none(),
            "nats-server {} is already running",
            self.name
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the nats-server log opened");
        let stderr = log.try_clone().expect("the nats-server log opened twice");
        let spawned = Command::new(nats_server_binary())
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn();
        *child = Some(spawned.unwrap_or_else(|err| {
            panic!(
                "cannot start {} for nats-server {}: {err}",
                nats_server_binary().display(),
                self.name
            )
        }));
    }

    /// Wait until `GET /healthz` answers ok, or fail naming why, with the log's end.
    ///
    /// The full check rather than `/healthz?js-enabled-only=true`: nats-server 2.15.1 says
    /// ok to that as soon as JetStream is enabled, before a cluster node has a meta leader,
    /// while `/healthz` waits until the node is current with the meta leader (and a
    /// standalone server until its streams are recovered after a restart).
    async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let unhealthy = match self.check_health().await {
                Ok(()) => return Ok(()),
                Err(Unhealthy::Exited(err)) => return Err(err),
                Err(Unhealthy::NotYet(why)) => why,
            };
            if Instant::now() > deadline {
                bail!(
                    "nats-server {} is not healthy after {timeout:?}: {unhealthy}\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// One look at `GET /healthz`.
    async fn check_health(&self) -> Result<(), Unhealthy> {
        match self.state() {
            State::Running => {}
            State::Down => {
                let err = anyhow::anyhow!("nats-server {} is not running", self.name);
                return Err(Unhealthy::Exited(err));
            }
            State::Exited(status) => {
                let err = anyhow::anyhow!(
                    "nats-server {} exited ({status})\n{}",
                    self.name,
                    self.log_tail(30)
                );
                return Err(Unhealthy::Exited(err));
            }
        }
        let url = self.monitor_url("/healthz");
        let response = match self.http.get(&url).send().await {
            Ok(response) => response,
            Err(err) => return Err(Unhealthy::NotYet(format!("GET {url}: {err}"))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(Unhealthy::NotYet(format!(
            "GET {url} said {status}: {}",
            body.trim()
        )))
    }

    /// Whether the log says a port was in use when the server tried to bind it.
    fn lost_a_port(&self) -> bool {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.contains("address already in use")
    }
}

enum State {
    /// Never started, or killed.
    Down,
    Running,
    /// Exited by itself, with this status.
    Exited(String),
}

enum Unhealthy {
    /// Not healthy, and will not become so: the process is gone.
    Exited(anyhow::Error),
    /// Not healthy yet, for this reason.
    NotYet(String),
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Waited for, so that the process is gone before its directory is removed.
        self.kill();
    }
}

/// A JetStream cluster of nats-servers named `n1`, `n2`..., in the cluster
/// [`CLUSTER_NAME`], each with its own client, cluster and monitoring port and its own store.
/// Every node's routes name every node. Dropping it kills them all.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// A cluster of `nodes` servers (3 for one that keeps a quorum with a node down), started
    /// and healthy: see [`wait_healthy`](Self::wait_healthy). Fails the test if it is not
    /// healthy within 30 s.
    pub async fn start(nodes: usize) -> NatsCluster {
        assert!(
            nodes >= 2,
            "a cluster needs two nodes or more; NatsServer is one"
        );
        for attempt in 1..=START_ATTEMPTS {
            let ports = free_ports(3 * nodes);
            let (client, rest) = ports.split_at(nodes);
            let (monitor, cluster_ports) = rest.split_at(nodes);
            let cluster = NatsCluster {
                nodes: (0..nodes)
                    .map(|i| {
                        let cluster = ClusterPorts {
                            listen: cluster_ports[i],
                            routes: cluster_ports.to_vec(),
                        };
                        let name = format!("n{}", i + 1);
                        NatsServer::new(&name, client[i], monitor[i], Some(cluster))
                    })
                    .collect(),
            };
            for node in &cluster.nodes {
                node.spawn();
            }
            match cluster.try_wait_healthy(START_TIMEOUT).await {
                Ok(_) => return cluster,
                Err(_) if attempt < START_ATTEMPTS && cluster.lost_a_port() => continue,
                Err(err) => panic!("{err:#}"),
            }
        }
        unreachable!("the last attempt returns or fails the test")
    }

    /// Every node's client URL, `n1`'s first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Every node's client URL, comma-separated: the seed list a client (async-nats) takes.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The node at `index`, from 0: `node(0)` is `n1`.
    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    /// The node whose `server_name` is `name`.
    pub fn node_named(&self, name: &str) -> &NatsServer {
        let node = self.nodes.iter().find(|node| node.name() == name);
        node.unwrap_or_else(|| panic!("the cluster has no node named {name}"))
    }

    /// Every node, `n1` first.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Wait until the cluster is healthy, and return the name of its meta leader; fail the
    /// test, with the end of every log, if it is not within 30 s. Healthy is: every running
    /// node (a killed one is not waited for) answers ok to `/healthz`, which it does once it
    /// is current with a meta leader, and all of them name the same meta leader in
    /// `/jsz` (`meta_cluster.leader`).
    pub async fn wait_healthy(&self) -> String {
        let leader = self.try_wait_healthy(START_TIMEOUT).await;
        leader.unwrap_or_else(|err| panic!("{err:#}"))
    }

    async fn try_wait_healthy(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let unhealthy = match self.check_health().await {
                Ok(leader) => return Ok(leader),
                Err(Unhealthy::Exited(err)) => return Err(err),
                Err(Unhealthy::NotYet(why)) => why,
            };
            if Instant::now() > deadline {
                let logs: Vec<String> = self.nodes.iter().map(|n| n.log_tail(15)).collect();
                bail!(
                    "the NATS cluster is not healthy after {timeout:?}: {unhealthy}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// One look at every node: healthy, and naming the same meta leader, one that is
    /// running. The last matters after the leader is killed: until the others notice, they
    /// still name it, and may still say they are healthy.
    async fn check_health(&self) -> Result<String, Unhealthy> {
        let mut leaders = Vec::new();
        for node in &self.nodes {
            match node.check_health().await {
                Ok(()) => {}
                Err(Unhealthy::Exited(_)) if matches!(node.state(), State::Down) => continue,
                Err(err) => return Err(err),
            }
            let jsz = node.try_monitor_json("/jsz").await;
            let jsz = jsz.map_err(|err| Unhealthy::NotYet(format!("{err:#}")))?;
            let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            leaders.push((node.name(), leader.to_owned()));
        }
        let Some((_, first)) = leaders.first() else {
            let err = anyhow::anyhow!("no node of the NATS cluster is running");
            return Err(Unhealthy::Exited(err));
        };
        let running = self
            .nodes
            .iter()
            .any(|n| n.name() == first && n.is_running());
        if !running || leaders.iter().any(|(_, leader)| leader != first) {
            let why =
                format!("the running nodes do not agree on a running meta leader: {leaders:?}");
            return Err(Unhealthy::NotYet(why));
        }
        Ok(first.clone())
    }

    /// The meta leader's name, when every running node is healthy and names the same one.
    pub async fn meta_leader(&self) -> Option<String> {
        self.check_health().await.ok()
    }

    fn lost_a_port(&self) -> bool {
        self.nodes.iter().any(NatsServer::lost_a_port)
    }
}
