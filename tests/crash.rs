//! The crash test: the real `evhost` binary, killed with SIGKILL while the shop flow runs.
//!
//! Client tasks post a seeded workload of the shop flow (`stock.added` events keyed by SKU and
//! PlaceOrder commands with unique order ids, amounts on both sides of the payment limit,
//! SKUs with too little stock and one with none) to `evhost up examples/shop`, a child
//! process, in binary, structured and batch mode. Meanwhile the test kills that process with
//! SIGKILL 3 to 5 times at random moments (while events come in, and once more while the
//! backlog drains) and restarts it on the same data directory (on a new port, which the
//! clients follow). A request that failed or was refused is retried later with the same event
//! ids (duplicates must be accepted once). Once every request has been answered 202 and every
//! delivery is settled (none pending or retrying), the log and the handlers' state are
//! checked against what the clients sent and saw:
//!
//! - every event answered 202 is in the log exactly once (by `source` + `id`), and posting it
//!   again is answered as a duplicate; a batch is all or nothing; a request never attempted
//!   before is never a duplicate;
//! - every event has exactly one delivery per subscribed handler, and every delivery is done
//!   (none pending, retrying or dead);
//! - every emitted event has the deterministic id (parent, handler, emit index), names its
//!   cause and correlation, and follows from its cause;
//! - every order has one `order.placed`, one of `stock.reserved` / `stock.unavailable`; a
//!   reserved order one of `payment.confirmed` (amount <= 1000) / `payment.failed`; a
//!   confirmed order one `shipment.created`; nothing else;
//! - replaying the log's order of `stock.added` and `order.placed` per SKU (inventory runs
//!   FIFO per SKU) gives exactly the host's decisions and final stock, and the stock equals
//!   the units added minus the units reserved (no lost update);
//! - the notification counts (`count/{type}`) equal the events of each type in the log.
//!
//! Size: `EVHOST_CRASH_ORDERS` orders, 300 by default (fits CI in well under a minute); for
//! a harder run:
//!
//! ```text
//! EVHOST_CRASH_ORDERS=3000 cargo nextest run -p evhost-tests --test main crash::
//! ```
//!
//! The test prints its seed; `EVHOST_CRASH_SEED=<seed>` replays the same workload and kill
//! schedule (the timing, and so the exact kill moments, still differ from run to run). On a
//! failure the data directory and the host logs are kept, and their paths printed.
//!
//! `EVHOST_CRASH_KILLS=<n>` kills `n` times instead of 3 to 5 (the seed draws the same
//! schedule otherwise), for a long run that also kills hosts still recovering from the last
//! kill:
//!
//! ```text
//! EVHOST_CRASH_KILLS=20 EVHOST_CRASH_ORDERS=1000 cargo test -p evhost-tests --test main -- crash:: --nocapture
//! ```

#![cfg(unix)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use evhost::capabilities::emit::emitted_id;
use evhost_tests::nats::{NatsCluster, NatsServer};
use evhost_tests::{HostClient, HostProcess, evhost_binary, guests_dir, shop_dir_with, workspace};
use serde_json::{Value, json};

const PLACE: &str = "com.example.shop.order.place.v1";
const STOCK_ADDED: &str = "com.example.shop.stock.added.v1";
const PLACED: &str = "com.example.shop.order.placed.v1";
const RESERVED: &str = "com.example.shop.stock.reserved.v1";
const UNAVAILABLE: &str = "com.example.shop.stock.unavailable.v1";
const CONFIRMED: &str = "com.example.shop.payment.confirmed.v1";
const FAILED: &str = "com.example.shop.payment.failed.v1";
const SHIPPED: &str = "com.example.shop.shipment.created.v1";

/// The source of every event the clients post.
const SOURCE: &str = "/crash/clients";
/// The payment handler declines amounts over this (examples/shop/evhost.toml).
const DECLINE_OVER: f64 = 1000.0;
/// A SKU that never gets stock: every order for it is unavailable with 0 available.
const EMPTY_SKU: &str = "sku-empty";

const DEFAULT_ORDERS: usize = 300;
const CLIENTS: usize = 8;
/// Problems listed in the failure message; the rest are counted.
const MAX_LISTED: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shop_flow_survives_kill_9() {
    survives(Topology::Single).await;
}

/// The same workload and oracle against three cluster hosts on one NATS server: the clients
/// post round robin to the hosts, and the kills take one host at a time (the others go on).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_survives_kill_9_of_its_hosts() {
    survives(Topology::Cluster).await;
}

/// Three cluster hosts on a three-node NATS cluster with `replicas = 3`: the "kills" are of
/// one NATS node at a time (SIGKILL, then a restart on its store), while the hosts go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_survives_kill_9_of_a_nats_node() {
    survives(Topology::NatsNodes).await;
}

/// What the test runs the shop on, and what it kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// One host on its SQLite store; the host is killed.
    Single,
    /// Three cluster hosts on one NATS server; a host is killed.
    Cluster,
    /// Three cluster hosts on a three-node NATS cluster; a NATS node is killed.
    NatsNodes,
}

/// The hosts (and NATS servers) under test.
struct Rig {
    topology: Topology,
    hosts: Vec<HostProcess>,
    /// Holds the shop manifest with `[cluster] replicas = 3`.
    _dir: Option<tempfile::TempDir>,
    nats: Option<NatsServer>,
    nats_cluster: Option<NatsCluster>,
}

impl Rig {
    async fn start(topology: Topology, http: &reqwest::Client) -> Rig {
        let shop = workspace().join("examples/shop");
        let shop = shop.to_str().expect("a UTF-8 path").to_owned();
        let host = |args: &[&str]| {
            HostProcess::new(&workspace(), args)
                .with_http(http.clone())
                .with_start_timeout(Duration::from_secs(120))
        };
        let mut rig = Rig {
            topology,
            hosts: Vec::new(),
            _dir: None,
            nats: None,
            nats_cluster: None,
        };
        match topology {
            Topology::Single => rig.hosts.push(host(&[&shop])),
            Topology::Cluster => {
                let nats = NatsServer::start().await;
                for _ in 0..3 {
                    rig.hosts.push(host(&[&shop, "--cluster", &nats.url()]));
                }
                rig.nats = Some(nats);
            }
            Topology::NatsNodes => {
                let nats = NatsCluster::start(3).await;
                let dir = shop_dir_with("[cluster]\nreplicas = 3\n");
                let app = dir.path().to_str().expect("a UTF-8 path").to_owned();
                for _ in 0..3 {
                    rig.hosts.push(host(&[&app, "--cluster", &nats.url()]));
                }
                rig.nats_cluster = Some(nats);
                rig._dir = Some(dir);
            }
        }
        for host in &mut rig.hosts {
            host.start().await;
        }
        rig
    }

    fn clients(&self) -> Vec<HostClient> {
        self.hosts.iter().map(|h| (**h).clone()).collect()
    }

    /// Kill one of what this topology kills (chosen by `pick`), wait `down`, start it again.
    async fn kill_one(&mut self, pick: u64, down: Duration) -> String {
        match self.topology {
            Topology::Single | Topology::Cluster => {
                let index = (pick % self.hosts.len() as u64) as usize;
                self.hosts[index].kill().await;
                tokio::time::sleep(down).await;
                self.hosts[index].start().await;
                format!("host {index}")
            }
            Topology::NatsNodes => {
                let nats = self.nats_cluster.as_ref().expect("a NATS cluster");
                let index = (pick % 3) as usize;
                let node = nats.node(index);
                node.kill();
                tokio::time::sleep(down).await;
                node.restart().await;
                format!("NATS node {}", node.name())
            }
        }
    }
}

async fn survives(topology: Topology) {
    let orders = env_number("EVHOST_CRASH_ORDERS").map_or(DEFAULT_ORDERS, |n| n.max(1) as usize);
    let seed = env_number("EVHOST_CRASH_SEED").unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    });
    println!(
        "crash test: {orders} orders, seed {seed} (replay with EVHOST_CRASH_SEED={seed} \
         EVHOST_CRASH_ORDERS={orders})"
    );
    guests_dir();
    evhost_binary();

    let started = Instant::now();
    let mut rng = Rng(seed);
    let work = Workload::generate(&mut rng, orders);
    let total = work.requests.len();
    println!(
        "workload: {} orders over {} SKUs, {} stock deliveries, {} requests",
        work.orders.len(),
        work.skus.len(),
        work.stock.len(),
        total
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let mut rig = Rig::start(topology, &http).await;
    let clients = rig.clients();
    println!(
        "{topology:?}: up in {:.1?} at {:?}",
        started.elapsed(),
        clients.iter().map(|c| c.base.as_str()).collect::<Vec<_>>()
    );
    let shared = Arc::new(Shared {
        hosts: RwLock::new(clients),
        next: AtomicUsize::new(0),
        settled: AtomicUsize::new(0),
    });
    let kills_wanted = env_number("EVHOST_CRASH_KILLS").map(|n| n.max(1) as usize);
    // Each kill past the usual five costs a restart and its recovery.
    let extra_kills = kills_wanted.unwrap_or(0).saturating_sub(5) as u32;
    let budget = Duration::from_secs(90)
        + Duration::from_millis(40 * orders as u64)
        + Duration::from_secs(10) * extra_kills;
    let deadline = Instant::now() + budget;

    // The clients: requests dealt round robin, so that each SKU's events come from all of them.
    let mut per_client: Vec<Vec<(usize, Request)>> = vec![Vec::new(); CLIENTS];
    for (index, request) in work.requests.iter().enumerate() {
        per_client[index % CLIENTS].push((index, request.clone()));
    }
    let clients: Vec<_> = per_client
        .into_iter()
        .map(|requests| {
            let shared = shared.clone();
            let rng = rng.fork();
            tokio::spawn(run_client(shared, requests, rng, deadline))
        })
        .collect();

    // The killer: some kills at random points of the ingress, the others (at least one) at
    // random moments while the backlog drains.
    // Drawn even when set, so that a seed replays the same workload either way.
    let drawn = rng.range(3, 5) as usize;
    let kills = kills_wanted.unwrap_or(drawn);
    let during_ingress = match kills {
        1 => 0,
        _ => rng.range(1, kills as u64 - 1) as usize,
    };
    let mut marks: Vec<usize> = (0..during_ingress)
        .map(|_| total * rng.range(5, 90) as usize / 100)
        .collect();
    marks.sort_unstable();
    marks.resize(kills, total);
    for (n, mark) in marks.into_iter().enumerate() {
        wait_until("the clients' progress", deadline, || {
            shared.settled.load(Ordering::SeqCst) >= mark
        })
        .await;
        // Ingress is quick, the backlog takes longer to drain (notification runs serially).
        let jitter = if n < during_ingress {
            rng.range(0, 100)
        } else {
            rng.range(0, 100 + 3 * orders as u64)
        };
        tokio::time::sleep(Duration::from_millis(jitter)).await;
        let settled = shared.settled.load(Ordering::SeqCst);
        let pending = pending_deliveries(&shared).await;
        let pick = rng.range(0, 1000);
        let down = Duration::from_millis(rng.range(0, 300));
        let killed = rig.kill_one(pick, down).await;
        println!(
            "kill {}/{kills} ({killed}) at {:.1?}: {settled}/{total} requests accepted, \
             {pending} deliveries pending",
            n + 1,
            started.elapsed()
        );
        *shared.hosts.write().expect("the hosts lock") = rig.clients();
    }

    let mut seen = Seen::default();
    for client in clients {
        seen.merge(client.await.expect("a client task panicked"));
    }
    println!(
        "ingress done at {:.1?}: {} attempts for {total} requests ({} failed to connect or \
         answer, {} refused with a status), {} stored requests whose 202 was lost",
        started.elapsed(),
        seen.attempts,
        seen.failed,
        seen.refused,
        seen.late_duplicates
    );
    let mut problems = seen.problems;

    // Posting an accepted request again: every event in it is a duplicate, and nothing new.
    let mut sample: Vec<usize> = (0..total).collect();
    rng.shuffle(&mut sample);
    sample.truncate((total / 10).clamp(10.min(total), 200));
    for &index in &sample {
        let request = &work.requests[index];
        match post_until_answered(&shared, request, deadline).await {
            Ok(duplicates) if duplicates.iter().all(|&d| d) => {}
            Ok(duplicates) => problems.push(format!(
                "request {index} ({:?}, ids {:?}), accepted before, was posted again and was \
                 not all duplicates: {duplicates:?} (an accepted event was lost)",
                request.mode,
                request.ids()
            )),
            Err(error) => problems.push(format!(
                "request {index}, posted again as a duplicate: {error}"
            )),
        }
    }

    let idle_timeout = Duration::from_secs(60) + Duration::from_millis(20 * orders as u64);
    if let Err(problem) = shared.client().try_wait_idle(idle_timeout).await {
        problems.push(format!("{problem:#}"));
    }
    let log = shared.client().all_events().await;
    println!(
        "idle at {:.1?}: {} events in the log",
        started.elapsed(),
        log.len()
    );
    let summary = check(&shared.client(), &work, &log, &mut problems).await;
    println!("{summary}");
    println!("done in {:.1?}", started.elapsed());

    if !problems.is_empty() {
        let listed: Vec<&str> = problems
            .iter()
            .take(MAX_LISTED)
            .map(String::as_str)
            .collect();
        let more = problems.len().saturating_sub(MAX_LISTED);
        panic!(
            "seed {seed}, {orders} orders: {} problem(s):\n  {}{}",
            problems.len(),
            listed.join("\n  "),
            if more > 0 {
                format!("\n  ... and {more} more")
            } else {
                String::new()
            }
        );
    }
}

// ---------------------------------------------------------------------------------------
// The workload

/// SplitMix64: a small seeded generator, so that a seed replays the workload and the kills.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 99) < percent
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i as u64) as usize;
            items.swap(i, j);
        }
    }

    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

#[derive(Debug, Clone)]
struct Order {
    id: String,
    sku: String,
    quantity: u64,
    amount: f64,
}

/// One event a client posts.
#[derive(Debug, Clone)]
struct ClientEvent {
    id: String,
    ty: &'static str,
    subject: Option<String>,
    partitionkey: Option<String>,
    data: Value,
}

impl ClientEvent {
    /// The event in the JSON event format (structured and batch mode).
    fn structured(&self) -> Value {
        let mut event = json!({
            "specversion": "1.0",
            "id": self.id,
            "source": SOURCE,
            "type": self.ty,
            "datacontenttype": "application/json",
            "data": self.data,
        });
        if let Some(subject) = &self.subject {
            event["subject"] = json!(subject);
        }
        if let Some(key) = &self.partitionkey {
            event["partitionkey"] = json!(key);
        }
        event
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Binary,
    Structured,
    Batch,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Binary => "binary",
            Mode::Structured => "structured",
            Mode::Batch => "batch",
        }
    }
}

#[derive(Debug, Clone)]
struct Request {
    mode: Mode,
    events: Vec<ClientEvent>,
}

impl Request {
    fn ids(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.id.as_str()).collect()
    }
}

struct Workload {
    skus: Vec<String>,
    orders: Vec<Order>,
    /// (event id, SKU, units)
    stock: Vec<(String, String, u64)>,
    requests: Vec<Request>,
}

impl Workload {
    fn generate(rng: &mut Rng, n_orders: usize) -> Workload {
        let n_skus = (n_orders / 40).clamp(4, 24);
        let mut skus: Vec<String> = (0..n_skus).map(|i| format!("sku-{i}")).collect();
        let mut demand = vec![0u64; n_skus];
        let mut orders = Vec::with_capacity(n_orders);
        for i in 0..n_orders {
            // One order in twenty is for the SKU that never gets stock.
            let slot = (!rng.chance(5)).then(|| rng.range(0, n_skus as u64 - 1) as usize);
            let quantity = rng.range(1, 3);
            let sku = match slot {
                Some(slot) => {
                    demand[slot] += quantity;
                    skus[slot].clone()
                }
                None => EMPTY_SKU.to_owned(),
            };
            // In quarters, so that every amount is exact in binary: under the limit, exactly
            // at it (still confirmed), and over it.
            let quarters = match rng.range(0, 99) {
                0..5 => 4000,
                5..30 => rng.range(4001, 20_000),
                _ => rng.range(1, 3999),
            };
            orders.push(Order {
                id: format!("o-{i}"),
                sku,
                quantity,
                amount: quarters as f64 / 4.0,
            });
        }
        // Half to four fifths of each SKU's demand arrives, in a few deliveries.
        let mut stock = Vec::new();
        for (slot, sku) in skus.iter().enumerate() {
            let mut remaining = (demand[slot] * rng.range(50, 80) / 100).max(1);
            let parts = rng.range(2, 6);
            let mut part = 0;
            while remaining > 0 {
                part += 1;
                let units = if part >= parts {
                    remaining
                } else {
                    let fair = (2 * remaining / (parts - part + 1)).max(1);
                    rng.range(1, fair).min(remaining)
                };
                stock.push((format!("stock-{sku}-{part}"), sku.clone(), units));
                remaining -= units;
            }
        }
        skus.push(EMPTY_SKU.to_owned());

        let mut events: Vec<ClientEvent> = stock
            .iter()
            .map(|(id, sku, units)| ClientEvent {
                id: id.clone(),
                ty: STOCK_ADDED,
                subject: None,
                partitionkey: Some(sku.clone()),
                data: json!({"sku": sku, "quantity": units}),
            })
            .chain(orders.iter().map(|order| ClientEvent {
                id: format!("place-{}", order.id),
                ty: PLACE,
                subject: Some(order.id.clone()),
                partitionkey: None,
                data: json!({
                    "order_id": order.id,
                    "sku": order.sku,
                    "quantity": order.quantity,
                    "amount": order.amount,
                }),
            }))
            .collect();
        rng.shuffle(&mut events);

        let mut events = VecDeque::from(events);
        let mut requests = Vec::new();
        while !events.is_empty() {
            let (mode, size) = match rng.range(0, 99) {
                0..35 => (Mode::Binary, 1),
                35..70 => (Mode::Structured, 1),
                _ => (Mode::Batch, rng.range(2, 5) as usize),
            };
            let take = size.min(events.len());
            requests.push(Request {
                mode,
                events: events.drain(..take).collect(),
            });
        }
        Workload {
            skus,
            orders,
            stock,
            requests,
        }
    }

    fn client_events(&self) -> impl Iterator<Item = &ClientEvent> {
        self.requests.iter().flat_map(|r| &r.events)
    }
}

// ---------------------------------------------------------------------------------------
// The clients

/// What the clients and the killer share.
struct Shared {
    /// The running hosts; every restart listens on a new port, so the killer swaps these.
    hosts: RwLock<Vec<HostClient>>,
    /// Which host the next request goes to: round robin, so that in a cluster every host
    /// takes events (a request to a killed host fails, and its retry goes to the next).
    next: AtomicUsize,
    /// Requests accepted (or given up on at the deadline).
    settled: AtomicUsize,
}

impl Shared {
    /// A host as they run now, the next in turn.
    fn client(&self) -> HostClient {
        let hosts = self.hosts.read().expect("the hosts lock");
        hosts[self.next.fetch_add(1, Ordering::Relaxed) % hosts.len()].clone()
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    attempts: usize,
    /// Attempts with no answer: connection refused or reset, timeout, body cut short.
    failed: usize,
    /// Attempts answered with another status than 202 (429, 503...).
    refused: usize,
    /// Requests whose first 202 said "duplicate": an earlier attempt was stored, but its
    /// answer was lost in a crash.
    late_duplicates: usize,
    problems: Vec<String>,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.attempts += other.attempts;
        self.failed += other.failed;
        self.refused += other.refused;
        self.late_duplicates += other.late_duplicates;
        self.problems.extend(other.problems);
    }
}

enum Answer {
    /// 202, with the `duplicate` flag of each event (in request order).
    Accepted(Vec<bool>),
    /// Another status; retry later.
    Refused(u16, String),
    /// No (complete) answer; retry later.
    Failed(String),
    /// An answer that no retry can fix (a 4xx, or a 202 that does not match the request).
    Wrong(String),
}

/// Post one request, each in its mode, and read the answer.
async fn post(shared: &Shared, request: &Request) -> Answer {
    let host = shared.client();
    let sent = match request.mode {
        Mode::Binary => {
            let event = &request.events[0];
            let mut attributes = vec![("id", event.id.as_str()), ("source", SOURCE)];
            attributes.push(("type", event.ty));
            if let Some(subject) = &event.subject {
                attributes.push(("subject", subject));
            }
            if let Some(key) = &event.partitionkey {
                attributes.push(("partitionkey", key));
            }
            host.try_post_binary(&attributes, &event.data).await
        }
        Mode::Structured => {
            host.try_post_structured(&request.events[0].structured())
                .await
        }
        Mode::Batch => {
            let batch: Vec<Value> = request.events.iter().map(ClientEvent::structured).collect();
            host.try_post_batch(&batch).await
        }
    };
    let response = match sent {
        Ok(response) => response,
        Err(error) => return Answer::Failed(format!("{error:#}")),
    };
    let status = response.status().as_u16();
    let body = match response.text().await {
        Ok(body) => body,
        // A 202 whose body was cut short is still an acceptance, but one we cannot check;
        // count it as a failure (a retry must then be a duplicate).
        Err(error) => return Answer::Failed(format!("{status}, body cut short: {error:#}")),
    };
    match status {
        202 => accepted(request, &body),
        400..=499 if status != 429 => Answer::Wrong(format!("answered {status}: {body}")),
        _ => Answer::Refused(status, body),
    }
}

/// Check a 202's body against its request.
fn accepted(request: &Request, body: &str) -> Answer {
    let Ok(body) = serde_json::from_str::<Value>(body) else {
        return Answer::Wrong(format!("a 202 whose body is not JSON: {body}"));
    };
    if body["mode"] != request.mode.as_str() {
        return Answer::Wrong(format!(
            "a 202 in mode {} for a {:?} request",
            body["mode"], request.mode
        ));
    }
    let items = body["accepted"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = items.iter().filter_map(|a| a["id"].as_str()).collect();
    let sources_ok = items.iter().all(|a| a["source"] == SOURCE);
    if ids != request.ids() || !sources_ok {
        return Answer::Wrong(format!(
            "a 202 that accepted {items:?} for the events {:?}",
            request.ids()
        ));
    }
    let duplicates: Option<Vec<bool>> = items.iter().map(|a| a["duplicate"].as_bool()).collect();
    match duplicates {
        Some(duplicates) => Answer::Accepted(duplicates),
        None => Answer::Wrong(format!("a 202 without `duplicate` flags: {body}")),
    }
}

/// Post each request until it is accepted; a failed or refused request goes to the back of
/// the queue, to be tried again later (after the restart, when the host was down).
async fn run_client(
    shared: Arc<Shared>,
    requests: Vec<(usize, Request)>,
    mut rng: Rng,
    deadline: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut queue: VecDeque<(usize, Request, u32, String)> = requests
        .into_iter()
        .map(|(index, request)| (index, request, 0, String::new()))
        .collect();
    while let Some((index, request, tries, last)) = queue.pop_front() {
        if Instant::now() > deadline {
            seen.problems.push(format!(
                "{} request(s) were never accepted before the deadline, e.g. request {index} \
                 {:?} after {tries} tries, last: {last}",
                queue.len() + 1,
                request.ids()
            ));
            shared.settled.fetch_add(queue.len() + 1, Ordering::SeqCst);
            break;
        }
        seen.attempts += 1;
        let retry = match post(&shared, &request).await {
            Answer::Accepted(duplicates) => {
                if duplicates.iter().any(|&d| d != duplicates[0]) {
                    seen.problems.push(format!(
                        "a {} request was accepted in part (not all or nothing): {:?} -> \
                         duplicates {duplicates:?}",
                        request.mode.as_str(),
                        request.ids()
                    ));
                }
                if tries == 0 && duplicates.iter().any(|&d| d) {
                    seen.problems.push(format!(
                        "request {index} {:?}, never posted before, was answered as a \
                         duplicate",
                        request.ids()
                    ));
                } else if duplicates.iter().all(|&d| d) {
                    seen.late_duplicates += 1;
                }
                shared.settled.fetch_add(1, Ordering::SeqCst);
                None
            }
            Answer::Refused(status, body) => {
                seen.refused += 1;
                Some(format!("{status}: {body}"))
            }
            Answer::Failed(error) => {
                seen.failed += 1;
                Some(error)
            }
            Answer::Wrong(problem) => {
                seen.problems.push(format!(
                    "request {index} ({}, {:?}): {problem}",
                    request.mode.as_str(),
                    request.ids()
                ));
                shared.settled.fetch_add(1, Ordering::SeqCst);
                None
            }
        };
        if let Some(last) = retry {
            queue.push_back((index, request, tries + 1, last));
            tokio::time::sleep(Duration::from_millis(rng.range(10, 60))).await;
        }
    }
    seen
}

/// Post a request until it is answered (the host is up now); the `duplicate` flags.
async fn post_until_answered(
    shared: &Shared,
    request: &Request,
    deadline: Instant,
) -> Result<Vec<bool>, String> {
    loop {
        match post(shared, request).await {
            Answer::Accepted(duplicates) => return Ok(duplicates),
            Answer::Wrong(problem) => return Err(problem),
            Answer::Refused(status, body) if Instant::now() > deadline => {
                return Err(format!("{status}: {body}"));
            }
            Answer::Failed(error) if Instant::now() > deadline => return Err(error),
            Answer::Refused(..) | Answer::Failed(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn wait_until(what: &str, deadline: Instant, mut check: impl FnMut() -> bool) {
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Reading the host

/// Deliveries the host counts as pending (not settled yet, retrying ones included), for the
/// kill messages (`?` if it does not answer).
async fn pending_deliveries(shared: &Shared) -> String {
    match shared.client().api.handlers().await {
        Ok(handlers) => handlers.iter().map(|h| h.pending).sum::<u64>().to_string(),
        Err(_) => "?".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// The oracle

/// Who subscribes to each type (examples/shop/evhost.toml).
fn subscribers(ty: &str) -> &'static [&'static str] {
    match ty {
        PLACE => &["order"],
        STOCK_ADDED => &["inventory"],
        PLACED => &["inventory", "notification"],
        RESERVED => &["payment"],
        UNAVAILABLE => &["notification"],
        CONFIRMED => &["shipping"],
        FAILED | SHIPPED => &["notification"],
        _ => &[],
    }
}

/// What each emitting handler emits on which event.
fn emits(handler: &str, cause: &str) -> &'static [&'static str] {
    match (handler, cause) {
        ("order", PLACE) => &[PLACED],
        ("inventory", PLACED) => &[RESERVED, UNAVAILABLE],
        ("payment", RESERVED) => &[CONFIRMED, FAILED],
        ("shipping", CONFIRMED) => &[SHIPPED],
        _ => &[],
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

/// JSON equality with numbers compared as numbers (`1000` and `1000.0` are equal).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, a)| b.get(key).is_some_and(|b| same_json(a, b)))
        }
        _ => a == b,
    }
}

/// What the inventory should decide for an order, replaying the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Reserved,
    Unavailable { available: u64 },
}

/// Check the settled log and the state against the workload; returns a summary.
async fn check(
    host: &HostClient,
    work: &Workload,
    log: &[Value],
    problems: &mut Vec<String>,
) -> String {
    let events: Vec<&Value> = log.iter().map(|e| &e["event"]).collect();

    // Each event once; one delivery per subscriber, all done.
    let mut by_key: HashMap<(&str, &str), usize> = HashMap::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (i, (logged, event)) in log.iter().zip(&events).enumerate() {
        let (source, id) = (text(event, "source"), text(event, "id"));
        if let Some(first) = by_key.insert((source, id), i) {
            problems.push(format!(
                "({source}, {id}) is in the log twice: seq {} and {}",
                log[first]["seq"], logged["seq"]
            ));
        }
        by_id.insert(id, i);
        let deliveries = logged["deliveries"].as_array().cloned().unwrap_or_default();
        let mut handlers: Vec<&str> = deliveries.iter().map(|d| text(d, "handler")).collect();
        handlers.sort_unstable();
        let expected = subscribers(text(event, "type"));
        if handlers != expected {
            problems.push(format!(
                "{} {id} (seq {}) has deliveries to {handlers:?}, expected {expected:?}",
                text(event, "type"),
                logged["seq"]
            ));
        }
        for delivery in &deliveries {
            if delivery["status"] != "done" {
                problems.push(format!(
                    "the delivery of {} {id} to {} is {} after {} attempt(s): {}",
                    text(event, "type"),
                    text(delivery, "handler"),
                    delivery["status"],
                    delivery["attempts"],
                    delivery["last_error"]
                ));
            }
        }
    }

    // Every client event, as posted, exactly once; nothing else from the clients.
    let mut client_events = 0;
    for posted in work.client_events() {
        client_events += 1;
        let Some(&i) = by_key.get(&(SOURCE, posted.id.as_str())) else {
            problems.push(format!(
                "the accepted event {} ({}) is not in the log",
                posted.id, posted.ty
            ));
            continue;
        };
        let event = events[i];
        let matches = text(event, "type") == posted.ty
            && event["subject"].as_str() == posted.subject.as_deref()
            && event["partitionkey"].as_str() == posted.partitionkey.as_deref()
            && same_json(&event["data"], &posted.data);
        if !matches {
            problems.push(format!(
                "the event {} is logged as {event}, posted as {:?}",
                posted.id, posted
            ));
        }
    }
    let logged_client_events = events
        .iter()
        .filter(|e| text(e, "source") == SOURCE)
        .count();
    if logged_client_events != client_events {
        problems.push(format!(
            "{logged_client_events} client events in the log, {client_events} posted"
        ));
    }

    // Emitted events: the deterministic id, the cause, the correlation, the subject.
    for event in events.iter().filter(|e| text(e, "source") != SOURCE) {
        let (id, ty, source) = (
            text(event, "id"),
            text(event, "type"),
            text(event, "source"),
        );
        let handler = source.strip_prefix("/shop/").unwrap_or_default();
        let Some(&parent) = by_id.get(text(event, "causationid")) else {
            problems.push(format!(
                "{ty} {id} from {source}: its cause {} is not in the log",
                event["causationid"]
            ));
            continue;
        };
        let parent_seq = log[parent]["seq"].as_i64().expect("a log position");
        let parent = events[parent];
        let root = parent["correlationid"]
            .as_str()
            .unwrap_or(text(parent, "id"));
        let expected_id = emitted_id(
            parent_seq,
            text(parent, "source"),
            text(parent, "id"),
            &evhost::name::HandlerName::new(handler).expect("a handler name"),
            0,
        );
        if !emits(handler, text(parent, "type")).contains(&ty)
            || id != expected_id
            || text(event, "correlationid") != root
            || event["subject"] != parent["subject"]
        {
            problems.push(format!(
                "{ty} {id} from {source} (expected id {expected_id}, correlation {root}) does \
                 not follow from its cause {parent}: {event}"
            ));
        }
    }

    // Replay the inventory: per SKU, FIFO in log order.
    let mut stock: HashMap<&str, u64> = HashMap::new();
    let mut added: HashMap<&str, u64> = HashMap::new();
    let mut expected: HashMap<&str, Decision> = HashMap::new();
    for event in &events {
        let data = &event["data"];
        let (sku, units) = (text(data, "sku"), data["quantity"].as_u64().unwrap_or(0));
        match text(event, "type") {
            STOCK_ADDED if text(event, "source") == SOURCE => {
                *stock.entry(sku).or_default() += units;
                *added.entry(sku).or_default() += units;
            }
            PLACED => {
                let left = stock.entry(sku).or_default();
                let decision = if *left >= units {
                    *left -= units;
                    Decision::Reserved
                } else {
                    Decision::Unavailable { available: *left }
                };
                expected.insert(text(data, "order_id"), decision);
            }
            _ => {}
        }
    }

    // Per order: the events about it (its subject), by type.
    let mut about: HashMap<&str, BTreeMap<&str, Vec<&Value>>> = HashMap::new();
    for event in events.iter().filter(|e| text(e, "source") != SOURCE) {
        about
            .entry(text(event, "subject"))
            .or_default()
            .entry(text(event, "type"))
            .or_default()
            .push(event);
    }
    let order_ids: HashSet<&str> = work.orders.iter().map(|o| o.id.as_str()).collect();
    for subject in about.keys().filter(|s| !order_ids.contains(*s)) {
        problems.push(format!("events about an unknown order {subject:?}"));
    }
    let mut reserved_units: HashMap<&str, u64> = HashMap::new();
    let mut outcomes: HashMap<&str, &str> = HashMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for order in &work.orders {
        let empty = BTreeMap::new();
        let of = about.get(order.id.as_str()).unwrap_or(&empty);
        let n = |ty: &str| of.get(ty).map_or(0, Vec::len);
        let mut wrong = Vec::new();
        if n(PLACED) != 1 {
            wrong.push(format!("{} order.placed", n(PLACED)));
        } else {
            let placed = of[PLACED][0];
            let data = &placed["data"];
            let same = text(data, "order_id") == order.id
                && text(data, "sku") == order.sku
                && data["quantity"].as_u64() == Some(order.quantity)
                && data["amount"].as_f64() == Some(order.amount)
                && text(placed, "partitionkey") == order.sku;
            if !same {
                wrong.push(format!("order.placed does not match the order: {placed}"));
            }
        }
        let outcome = match (n(RESERVED), n(UNAVAILABLE)) {
            (1, 0) => {
                *reserved_units.entry(order.sku.as_str()).or_default() += order.quantity;
                let declined = order.amount > DECLINE_OVER;
                let (paid, failed, shipped) = (n(CONFIRMED), n(FAILED), n(SHIPPED));
                match (declined, paid, failed, shipped) {
                    (false, 1, 0, 1) => SHIPPED,
                    (true, 0, 1, 0) => FAILED,
                    _ => {
                        wrong.push(format!(
                            "reserved, amount {}: {paid} confirmed, {failed} failed, {shipped} \
                             shipped",
                            order.amount
                        ));
                        "?"
                    }
                }
            }
            (0, 1) => {
                if n(CONFIRMED) + n(FAILED) + n(SHIPPED) != 0 {
                    wrong.push("unavailable, yet paid or shipped".to_owned());
                }
                UNAVAILABLE
            }
            (r, u) => {
                wrong.push(format!("{r} stock.reserved and {u} stock.unavailable"));
                "?"
            }
        };
        match (expected.get(order.id.as_str()), outcome) {
            (Some(Decision::Reserved), SHIPPED | FAILED) | (None, "?") => {}
            (Some(Decision::Unavailable { available }), UNAVAILABLE) => {
                let said = of[UNAVAILABLE][0]["data"]["available"].as_u64();
                if said != Some(*available) {
                    wrong.push(format!(
                        "unavailable with {said:?} available, the replay had {available}"
                    ));
                }
            }
            (Some(decision), _) if outcome != "?" => wrong.push(format!(
                "the replay of the log decides {decision:?}, the host decided {outcome}"
            )),
            _ => {}
        }
        *counts.entry(outcome).or_default() += 1;
        outcomes.insert(order.id.as_str(), outcome);
        if !wrong.is_empty() {
            let types: Vec<(&str, usize)> = of.iter().map(|(ty, e)| (*ty, e.len())).collect();
            problems.push(format!(
                "order {} ({} x {}, {}): {}; its events: {types:?}",
                order.id,
                order.quantity,
                order.sku,
                order.amount,
                wrong.join("; ")
            ));
        }
    }

    // The final stock per SKU: the replay's, and what was added minus what was reserved.
    for sku in &work.skus {
        let sku = sku.as_str();
        let added = added.get(sku).copied().unwrap_or(0);
        let reserved = reserved_units.get(sku).copied().unwrap_or(0);
        let replayed = stock.get(sku).copied().unwrap_or(0);
        let expected = (added > 0).then(|| json!(added.saturating_sub(reserved)));
        match host.try_state("inventory", &format!("stock/{sku}")).await {
            Ok(actual) => {
                let ok = actual == expected && added >= reserved && replayed + reserved == added;
                if !ok {
                    problems.push(format!(
                        "stock of {sku}: {actual:?} in state, {added} added - {reserved} \
                         reserved = {expected:?}, the replay leaves {replayed}"
                    ));
                }
            }
            Err(error) => problems.push(format!("{error:#}")),
        }
    }

    // Notification counts.
    for ty in [PLACED, UNAVAILABLE, FAILED, SHIPPED] {
        let logged = events.iter().filter(|e| text(e, "type") == ty).count();
        let expected = (logged > 0).then(|| json!(logged));
        match host.try_state("notification", &format!("count/{ty}")).await {
            Ok(actual) if actual == expected => {}
            Ok(actual) => problems.push(format!(
                "notification count/{ty} is {actual:?}, the log has {logged}"
            )),
            Err(error) => problems.push(format!("{error:#}")),
        }
    }

    // The other handlers' state, for a sample of orders.
    for order in work.orders.iter().step_by((work.orders.len() / 100).max(1)) {
        let id = order.id.as_str();
        let outcome = outcomes.get(id).copied().unwrap_or("?");
        let reads = (
            host.try_state("order", &format!("order/{id}")).await,
            host.try_state("payment", &format!("payment/{id}")).await,
            host.try_state("shipping", &format!("shipment/{id}")).await,
        );
        let (order_state, payment, shipment) = match reads {
            (Ok(o), Ok(p), Ok(s)) => (o, p, s),
            (o, p, s) => {
                let errors = [o.err(), p.err(), s.err()].into_iter().flatten();
                problems.extend(errors.map(|error| format!("{error:#}")));
                continue;
            }
        };
        let payment_status = payment.as_ref().map(|p| text(p, "status").to_owned());
        let expected_payment = match outcome {
            SHIPPED => Some("confirmed".to_owned()),
            FAILED => Some("failed".to_owned()),
            _ => None,
        };
        let ok = order_state
            .as_ref()
            .is_some_and(|o| o["status"] == "placed")
            && payment_status == expected_payment
            && shipment.is_some() == (outcome == SHIPPED);
        if !ok && outcome != "?" {
            problems.push(format!(
                "order {id} ended {outcome}, but its state is: order {order_state:?}, payment \
                 {payment:?}, shipment {shipment:?}"
            ));
        }
    }

    format!(
        "outcomes: {} shipped, {} payment failed, {} unavailable ({} orders, {} events in the \
         log, {} problem(s))",
        counts.get(SHIPPED).unwrap_or(&0),
        counts.get(FAILED).unwrap_or(&0),
        counts.get(UNAVAILABLE).unwrap_or(&0),
        work.orders.len(),
        log.len(),
        problems.len()
    )
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}
