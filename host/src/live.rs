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
use crate::pressure::{self, Admission, Demand, Queue, Refusal};
use crate::router::{RouteTable, Routed};
use crate::runtime::DeployedHandler;

/// The live set, swapped whole, and the manifest's ingress policy beside it.
pub struct Live {
    current: ArcSwap<LiveSet>,
    ingress: ArcSwap<IngressPolicy>,
}

impl Live {
    pub fn new() -> Live {
        Live {
            current: ArcSwap::from_pointee(LiveSet::default()),
            ingress: ArcSwap::from_pointee(IngressPolicy::default()),
        }
    }

    pub fn current(&self) -> Arc<LiveSet> {
        self.current.load_full()
    }

    /// Which events producers may send now (the manifest's `[ingress]` table).
    pub fn ingress_policy(&self) -> Arc<IngressPolicy> {
        self.ingress.load_full()
    }

    pub fn set_ingress_policy(&self, policy: IngressPolicy) {
        self.ingress.store(Arc::new(policy));
    }

    /// Make `next` what runs; returns what ran before.
    pub fn replace(&self, next: LiveSet) -> Arc<LiveSet> {
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
        LiveSet { handlers, routes }
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

    /// Take room in the queue of every handler these events go to, or refuse the request
    /// (see [`pressure::admit`]).
    pub fn admit(&self, routed: &[Routed]) -> Result<Admission, Refusal> {
        let mut incoming: HashMap<&HandlerName, u64> = HashMap::new();
        for delivery in routed.iter().flat_map(|r| &r.deliveries) {
            *incoming.entry(&delivery.handler).or_default() += 1;
        }
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
        pressure::admit(demands)
    }
}

/// What a live handler keeps across its versions.
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
