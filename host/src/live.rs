//! What runs now: every live handler with its current version, and the routes they make.
//!
//! A [`LiveSet`] is immutable. The deployer builds the next one and [`Live::replace`]s the
//! whole set in one step, so an event is always routed by the subscriptions of the versions
//! that will run it, and a handler is never routable without being runnable. Ingress reads the
//! routes and asks back-pressure of the queues here; the scheduler runs each handler's
//! deliveries on the version the set holds when each delivery starts; the admin API reads it.
//!
//! A handler's [`HandlerSlot`] (its queue, its concurrency permits, its worker's signals)
//! lives as long as the handler stays deployed, across versions: a new version keeps the
//! queue and the running invocations, only the version the next delivery runs on changes.
//!
//! What handlers have emitted ([`EmitGraph`]) is the host's, not one set's: every set shares
//! it, and [`Live::replace`] hands it from each set to the next, so a deploy forgets nothing
//! the handlers taught it.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};

use crate::clock::Clock;
use crate::config::IngressPolicy;
use crate::event::Event;
use crate::name::HandlerName;
use crate::pressure::{self, Admission, Demand, Downstream, Queue, Refusal};
use crate::router::{EmitGraph, RouteTable, Routed};
use crate::runtime::DeployedHandler;
use crate::schemas::Registry;

/// The live set, swapped whole, and the manifest's ingress policy and the schema registry
/// beside it.
pub struct Live {
    current: ArcSwap<LiveSet>,
    ingress: ArcSwap<IngressPolicy>,
    registry: ArcSwap<Registry>,
}

impl Live {
    pub fn new() -> Live {
        Live {
            current: ArcSwap::from_pointee(LiveSet::default()),
            ingress: ArcSwap::from_pointee(IngressPolicy::default()),
            registry: ArcSwap::from_pointee(Registry::default()),
        }
    }

    pub fn current(&self) -> Arc<LiveSet> {
        self.current.load_full()
    }

    /// The version of `name` live now, if the handler is still live in this same `slot`
    /// (not removed, nor removed and deployed again since).
    pub fn version_in(
        &self,
        name: &HandlerName,
        slot: &Arc<HandlerSlot>,
    ) -> Option<Arc<crate::runtime::DeployedHandler>> {
        let live = self.current();
        let handler = live.handler(name.as_str())?;
        Arc::ptr_eq(&handler.slot, slot).then(|| handler.deployed.clone())
    }

    /// Which events producers may send now (the manifest's `[ingress]` table).
    pub fn ingress_policy(&self) -> Arc<IngressPolicy> {
        self.ingress.load_full()
    }

    pub fn set_ingress_policy(&self, policy: IngressPolicy) {
        self.ingress.store(Arc::new(policy));
    }

    /// The schema registry as it is now ([`crate::schemas`]).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Make `registry` the one ingress, the handlers and the admin API read.
    pub fn set_registry(&self, registry: Registry) {
        self.registry.store(Arc::new(registry));
    }

    /// Make `next` what runs; returns what ran before. `next` takes over what the handlers
    /// have been seen to emit.
    pub fn replace(&self, mut next: LiveSet) -> Arc<LiveSet> {
        next.emits = self.current.load().emits.clone();
        self.current.swap(Arc::new(next))
    }
}

impl Default for Live {
    fn default() -> Live {
        Live::new()
    }
}

/// The handlers that run and the routes to them.
#[derive(Clone, Default)]
pub struct LiveSet {
    handlers: BTreeMap<HandlerName, LiveHandler>,
    routes: RouteTable,
    /// What the handlers have emitted, shared with every other set (module docs).
    emits: Arc<ArcSwap<EmitGraph>>,
}

/// Why the events one invocation emitted cannot be committed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitRefusal {
    /// A handler they go to is full: wait for it to drain.
    Full(Refusal),
    /// They hold more deliveries for `handler` than its whole queue: they never fit.
    NeverFits {
        handler: HandlerName,
        incoming: u64,
        limit: u64,
    },
}

/// One live handler: the version that runs its next delivery, and its slot.
#[derive(Clone)]
pub struct LiveHandler {
    pub deployed: Arc<DeployedHandler>,
    pub slot: Arc<HandlerSlot>,
}

impl LiveSet {
    /// The set of these handlers, with the routes of their subscriptions.
    pub fn new(handlers: BTreeMap<HandlerName, LiveHandler>) -> LiveSet {
        let routes = RouteTable::of(
            handlers
                .iter()
                .map(|(name, live)| (name, live.deployed.settings())),
        );
        LiveSet {
            handlers,
            routes,
            emits: Arc::default(),
        }
    }

    /// Resolves once no invocation of any of these handlers runs (every permit is back).
    pub async fn all_idle(&self) {
        for handler in self.handlers.values() {
            let slot = &handler.slot;
            drop(slot.permits().acquire_many(slot.concurrency()).await);
        }
    }

    pub fn handler(&self, name: &str) -> Option<&LiveHandler> {
        self.handlers.get(name)
    }

    /// Every live handler, by name.
    pub fn handlers(&self) -> &BTreeMap<HandlerName, LiveHandler> {
        &self.handlers
    }

    /// The deliveries `event` gets.
    pub fn route(&self, event: Event) -> Routed {
        self.routes.route(event)
    }

    /// The routes of the live handlers.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// What the handlers have been seen to emit, as of now.
    pub fn emit_graph(&self) -> Arc<EmitGraph> {
        self.emits.load_full()
    }

    /// Record that `handler` emitted events of these types; types nobody subscribes to are
    /// not kept (see [`EmitGraph`]).
    pub fn learn_emits<'a>(&self, handler: &HandlerName, types: impl IntoIterator<Item = &'a str>) {
        let known = self.emits.load();
        let new: Vec<&str> = types
            .into_iter()
            .filter(|ty| self.routes.is_routed(ty) && !known.knows(handler, ty))
            .collect();
        if new.is_empty() {
            // The common case: nothing new, no copy.
            return;
        }
        self.emits.rcu(|graph| {
            let mut graph = EmitGraph::clone(graph);
            for ty in &new {
                graph.learn(handler, ty);
            }
            graph
        });
    }

    /// Take room in the queue of every handler these events go to, or refuse the request
    /// (see [`pressure::admit`]). Beyond those, every handler the events can reach through
    /// what handlers emit must have room for one more: work that cannot drain downstream is
    /// refused at the door rather than piling up in front of the full handler.
    pub fn admit(&self, routed: &[Routed]) -> Result<Admission, Refusal> {
        let mut incoming: HashMap<&HandlerName, u64> = HashMap::new();
        for delivery in routed.iter().flat_map(|r| &r.deliveries) {
            *incoming.entry(&delivery.handler).or_default() += 1;
        }
        let graph = self.emits.load();
        // Farthest first: when a chain backs up, every handler in front of the one that
        // cannot keep up fills too, and the refusal should name the one that holds it up.
        let mut downstream: Vec<(HandlerName, &str)> = Vec::new();
        let mut walked: Vec<&str> = Vec::new();
        for routed in routed.iter().filter(|r| !r.deliveries.is_empty()) {
            let ty = routed.event.ty();
            if walked.contains(&ty) {
                continue;
            }
            walked.push(ty);
            for handler in self.routes.reachable(ty, &graph).into_iter().rev() {
                if !incoming.contains_key(&handler)
                    && !downstream.iter().any(|(h, _)| h == &handler)
                {
                    downstream.push((handler, ty));
                }
            }
        }
        let downstream: Vec<Downstream<'_>> = downstream
            .iter()
            .filter_map(|(name, ty)| {
                let live = self.handlers.get(name)?;
                Some(Downstream {
                    handler: name,
                    queue: &live.slot.queue,
                    limit: live.deployed.settings().max_pending,
                    of_type: ty,
                })
            })
            .collect();
        let demands: Vec<Demand<'_>> = incoming
            .into_iter()
            .filter_map(|(name, incoming)| {
                let live = self.handlers.get(name)?;
                Some(Demand {
                    handler: name,
                    queue: &live.slot.queue,
                    limit: live.deployed.settings().max_pending,
                    incoming,
                })
            })
            .collect();
        pressure::admit(demands, downstream)
    }

    /// Take room for the deliveries of the events handler `from` emitted, before they are
    /// committed, in the queue of every handler they go to (routed by this set); or say why
    /// not.
    ///
    /// A queue's limit holds for emitted deliveries as for those from ingress, with one
    /// exception: a loop. When the handlers an invocation emits to lead back (through what
    /// they emit) to the emitting handler, waiting for them could mean waiting for itself
    /// (a full loop never drains when each member waits for the next). So when such an
    /// invocation passes work along the loop without multiplying it (one delivery into the
    /// loop for the one it settles), that delivery goes in whatever the limit; the hop
    /// limit ends the loop, and ingress stops feeding it while it is full. An invocation
    /// that multiplies work in a loop waits like any other.
    pub fn admit_emitted(
        &self,
        from: &HandlerName,
        emitted: &[Event],
    ) -> Result<Admission, EmitRefusal> {
        let mut incoming: BTreeMap<&HandlerName, u64> = BTreeMap::new();
        for event in emitted {
            for handler in self.routes.subscribers(event.ty()) {
                *incoming.entry(handler).or_default() += 1;
            }
        }
        let graph = self.emits.load();
        let looping: Vec<&HandlerName> = incoming
            .keys()
            .copied()
            .filter(|target| self.routes.leads_to(target, from, &graph))
            .collect();
        let into_loop: u64 = looping.iter().map(|h| incoming[h]).sum();
        let mut demands = Vec::with_capacity(incoming.len());
        for (name, incoming) in incoming {
            let Some(live) = self.handlers.get(name) else {
                continue;
            };
            let limit = live.deployed.settings().max_pending;
            let passed_along = into_loop <= 1 && looping.contains(&name);
            if !passed_along && incoming > limit {
                return Err(EmitRefusal::NeverFits {
                    handler: name.clone(),
                    incoming,
                    limit,
                });
            }
            demands.push(Demand {
                handler: name,
                queue: &live.slot.queue,
                limit: if passed_along { u64::MAX } else { limit },
                incoming,
            });
        }
        pressure::admit(demands, []).map_err(EmitRefusal::Full)
    }
}

/// What a live handler keeps across its versions.
/// What runs a live handler's deliveries: the embedded store's scheduler, or a cluster
/// host's consumers. The deployer starts one per handler that becomes live; it stops when
/// the handler's slot is retired.
pub trait Workers: Send + Sync {
    fn start_worker(&self, name: HandlerName, slot: Arc<HandlerSlot>);
}

pub struct HandlerSlot {
    /// Deliveries appended and not settled, for back-pressure.
    pub queue: Arc<Queue>,
    /// One permit per invocation in flight.
    permits: Arc<Semaphore>,
    /// The permits the semaphore holds in all: the concurrency of the live version.
    concurrency: AtomicU32,
    /// Rings the handler's worker: new deliveries, a finished invocation, a new version.
    pub wake: Notify,
    /// Set when old deliveries became pending again (a redrive): the worker re-reads its
    /// backlog from the start.
    rescan: AtomicBool,
    /// Set when the handler is removed: its worker stops.
    retired: AtomicBool,
}

impl HandlerSlot {
    pub fn new(concurrency: u32, pending: u64, clock: Clock) -> HandlerSlot {
        HandlerSlot {
            queue: Arc::new(Queue::new(pending, clock)),
            permits: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency: AtomicU32::new(concurrency),
            wake: Notify::new(),
            rescan: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        }
    }

    /// The permits of invocations in flight.
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    pub fn concurrency(&self) -> u32 {
        self.concurrency.load(Ordering::Relaxed)
    }

    /// Invocations running now.
    pub fn in_flight(&self) -> usize {
        (self.concurrency() as usize).saturating_sub(self.permits.available_permits())
    }

    /// Change the number of permits to a new version's concurrency. Surplus permits are
    /// taken out as running invocations give theirs back, so nothing running is cut short.
    pub fn resize(&self, concurrency: u32) {
        let old = self.concurrency.swap(concurrency, Ordering::Relaxed);
        if concurrency > old {
            self.permits.add_permits((concurrency - old) as usize);
        } else if concurrency < old {
            let permits = self.permits.clone();
            tokio::spawn(async move {
                if let Ok(surplus) = permits.acquire_many(old - concurrency).await {
                    surplus.forget();
                }
            });
        }
        self.wake.notify_one();
    }

    /// New deliveries for this handler were stored: `n` more pending.
    pub fn appended(&self, n: u64) {
        self.queue.added(n);
        self.wake.notify_one();
    }

    /// Ask the worker to re-read the whole backlog (old deliveries are pending again).
    pub fn rescan(&self) {
        self.rescan.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether a re-read was asked for; clears the request.
    pub fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::Relaxed)
    }

    /// The handler is removed: its worker stops once it looks.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}
