//! The router: which handlers get an event.
//!
//! Subscriptions match the event `type` exactly; the version is part of the type
//! (`com.example.shop.order.placed.v1`), so a handler subscribed to `v1` never sees `v2`.
//! Every subscriber gets its own delivery (fan-out). Events emitted by handlers are routed by
//! the same table as events posted over HTTP. An event nobody subscribes to is still kept in
//! the log, with no delivery.
//!
//! The table is immutable; a deploy builds a new one and swaps it in whole, so an event is
//! routed by one consistent set of subscriptions.
//!
//! The router also answers what an event can lead to: which handlers its type reaches
//! through the types handlers emit ([`RouteTable::reachable`]), and whether a handler's emits
//! lead back to it ([`RouteTable::loop_back`]). Handlers do not declare what they emit, so
//! that graph is learned from what they have emitted ([`EmitGraph`]): a declared list could
//! be wrong or go stale with a new version, while what a handler emitted is a fact.
//! Back-pressure reads it to refuse work its downstream cannot take; the hop limit, to name
//! a loop.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::config::{HandlerSettings, KeySource, Ordering};
use crate::event::Event;
use crate::name::HandlerName;

/// Which deliveries of one handler must run one after the other: those with equal keys, in
/// the order they were appended. A delivery without a key runs whenever a permit is free.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderingKey {
    /// `ordering = "serial"`: every delivery of the handler in one line.
    Serial,
    /// `ordering = "key"`: one line per value of the handler's `key` attribute.
    Key(String),
}

/// A delivery to create for an event: one per subscribed handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub handler: HandlerName,
    pub ordering_key: Option<OrderingKey>,
}

/// An event with the deliveries the router made for it, ready to append.
#[derive(Debug, Clone)]
pub struct Routed {
    pub event: Event,
    pub deliveries: Vec<NewDelivery>,
}

/// One handler's subscription rule.
#[derive(Debug, Clone)]
struct Subscriber {
    handler: HandlerName,
    ordering: Ordering,
    key: KeySource,
}

/// The routing table: event type -> subscribers.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    by_type: HashMap<String, Vec<Subscriber>>,
}

impl RouteTable {
    /// The table of these handlers' subscriptions.
    pub fn of<'a>(
        handlers: impl IntoIterator<Item = (&'a HandlerName, &'a HandlerSettings)>,
    ) -> RouteTable {
        let mut table = RouteTable::default();
        for (name, settings) in handlers {
            let types =
                crate::schemas::version::routed_types(&settings.subscribe, settings.accept_older);
            table.subscribe(name, &types, settings.ordering, settings.key);
        }
        table
    }

    /// Add `handler`'s subscriptions.
    pub fn subscribe(
        &mut self,
        handler: &HandlerName,
        types: &[String],
        ordering: Ordering,
        key: KeySource,
    ) {
        for ty in types {
            let subscribers = self.by_type.entry(ty.clone()).or_default();
            if !subscribers.iter().any(|s| &s.handler == handler) {
                subscribers.push(Subscriber {
                    handler: handler.clone(),
                    ordering,
                    key,
                });
            }
        }
    }

    /// The handlers subscribed to `ty`.
    pub fn subscribers(&self, ty: &str) -> impl Iterator<Item = &HandlerName> {
        self.by_type
            .get(ty)
            .into_iter()
            .flatten()
            .map(|s| &s.handler)
    }

    /// Whether some handler subscribes to `ty`.
    pub fn is_routed(&self, ty: &str) -> bool {
        self.by_type.contains_key(ty)
    }

    /// Every handler an event of type `ty` reaches: its subscribers, the subscribers of what
    /// they have emitted, and so on; nearest first.
    pub fn reachable(&self, ty: &str, graph: &EmitGraph) -> Vec<HandlerName> {
        self.walk([ty], graph).into_iter().map(|(h, _)| h).collect()
    }

    /// The shortest loop that starts with `from` emitting `ty` and comes back to `from`, as
    /// the hops taken (each a type and the handler it reached, the last one `from`); `None`
    /// when none is known.
    pub fn loop_back(&self, from: &HandlerName, ty: &str, graph: &EmitGraph) -> Option<Vec<Hop>> {
        let reached: BTreeMap<HandlerName, Step> = self.walk([ty], graph).into_iter().collect();
        reached.get(from)?;
        let mut hops = Vec::new();
        let mut at = from;
        // Each handler was reached once, from a handler reached before it, so this ends at a
        // subscriber of `ty` in at most as many steps as there are handlers.
        while let Some(step) = reached.get(at) {
            hops.push(Hop {
                ty: step.ty.clone(),
                handler: at.clone(),
            });
            match &step.from {
                Some(previous) if hops.len() <= reached.len() => at = previous,
                _ => break,
            }
        }
        hops.reverse();
        Some(hops)
    }

    /// Whether what `from` emits can lead (through any handlers) to `to`; a handler always
    /// leads to itself.
    pub fn leads_to(&self, from: &HandlerName, to: &HandlerName, graph: &EmitGraph) -> bool {
        from == to
            || self
                .walk(graph.emitted_by(from), graph)
                .iter()
                .any(|(h, _)| h == to)
    }

    /// Breadth first from the types `start`: each handler reached, nearest first, with how
    /// it was first reached (so the path found to it is a shortest one).
    fn walk<'a>(
        &self,
        start: impl IntoIterator<Item = &'a str>,
        graph: &'a EmitGraph,
    ) -> Vec<(HandlerName, Step)> {
        let mut reached: Vec<(HandlerName, Step)> = Vec::new();
        let mut seen: BTreeSet<&HandlerName> = BTreeSet::new();
        let mut queue: VecDeque<(&str, Option<HandlerName>)> =
            start.into_iter().map(|ty| (ty, None)).collect();
        while let Some((ty, from)) = queue.pop_front() {
            for handler in self.subscribers(ty) {
                if !seen.insert(handler) {
                    continue;
                }
                let step = Step {
                    ty: ty.to_owned(),
                    from: from.clone(),
                };
                reached.push((handler.clone(), step));
                queue.extend(
                    graph
                        .emitted_by(handler)
                        .map(|emitted| (emitted, Some(handler.clone()))),
                );
            }
        }
        reached
    }

    /// The deliveries `event` gets: one per subscribed handler, with its ordering key.
    pub fn route(&self, event: Event) -> Routed {
        let deliveries = self
            .by_type
            .get(event.ty())
            .map(|subscribers| {
                subscribers
                    .iter()
                    .map(|s| NewDelivery {
                        handler: s.handler.clone(),
                        ordering_key: ordering_key(&event, s.ordering, s.key),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Routed { event, deliveries }
    }
}

/// How a walk first reached a handler: by an event of `ty`, emitted by `from` (`None`: one
/// of the types the walk started from).
#[derive(Debug, Clone)]
struct Step {
    ty: String,
    from: Option<HandlerName>,
}

/// One hop of a path through the handlers: an event of `ty` reached `handler`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub ty: String,
    pub handler: HandlerName,
}

/// The types each handler has been seen to emit. Only routed types are kept (an event nobody
/// subscribes to leads nowhere), so the graph is bounded by the handlers times the
/// subscribed types, whatever types handlers make up. An edge is never forgotten while the
/// host runs: a version that stopped emitting a type makes back-pressure look at one queue
/// too many, never one too few.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmitGraph {
    emits: BTreeMap<HandlerName, BTreeSet<String>>,
}

impl EmitGraph {
    /// The types `handler` has emitted.
    pub fn emitted_by<'a>(&'a self, handler: &HandlerName) -> impl Iterator<Item = &'a str> {
        self.emits
            .get(handler)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    pub fn knows(&self, handler: &HandlerName, ty: &str) -> bool {
        self.emits
            .get(handler)
            .is_some_and(|types| types.contains(ty))
    }

    /// Record that `handler` emitted `ty`.
    pub fn learn(&mut self, handler: &HandlerName, ty: &str) {
        if !self.knows(handler, ty) {
            let types = self.emits.entry(handler.clone()).or_default();
            types.insert(ty.to_owned());
        }
    }
}

/// A loop's path for a message: `a` -> `t1` -> `b` -> `t2` -> `a`.
pub fn describe_loop(from: &HandlerName, hops: &[Hop]) -> String {
    let mut text = format!("`{from}`");
    for hop in hops {
        text.push_str(&format!(" -> `{}` -> `{}`", hop.ty, hop.handler));
    }
    text
}

/// The key that orders `event` for one handler. `serial` puts every event in one line;
/// `key` takes it from the event (no such attribute: the event runs unordered); `unordered`
/// has none.
fn ordering_key(event: &Event, ordering: Ordering, key: KeySource) -> Option<OrderingKey> {
    let from_event = match ordering {
        Ordering::Unordered => return None,
        Ordering::Serial => return Some(OrderingKey::Serial),
        Ordering::Key => match key {
            KeySource::PartitionKey => event.extension("partitionkey"),
            KeySource::Subject => event.subject(),
            KeySource::Source => Some(event.source()),
        },
    };
    from_event.map(|key| OrderingKey::Key(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str, partitionkey: Option<&str>) -> Event {
        let mut builder = Event::builder("1", "/test", ty).subject("o-1");
        if let Some(key) = partitionkey {
            builder = builder.extension("partitionkey", key);
        }
        builder.build().expect("a valid event")
    }

    fn name(name: &str) -> HandlerName {
        HandlerName::new(name).expect("a valid name")
    }

    #[test]
    fn fans_out_to_every_subscriber_of_the_exact_type() {
        let mut table = RouteTable::default();
        let types = ["a.v1".to_owned()];
        table.subscribe(
            &name("one"),
            &types,
            Ordering::Unordered,
            KeySource::PartitionKey,
        );
        table.subscribe(&name("two"), &types, Ordering::Key, KeySource::PartitionKey);
        table.subscribe(
            &name("three"),
            &["a.v2".to_owned()],
            Ordering::Serial,
            KeySource::Subject,
        );

        let routed = table.route(event("a.v1", Some("sku-1")));
        assert_eq!(
            routed.deliveries,
            vec![
                NewDelivery {
                    handler: name("one"),
                    ordering_key: None
                },
                NewDelivery {
                    handler: name("two"),
                    ordering_key: Some(OrderingKey::Key("sku-1".into()))
                },
            ]
        );
        assert!(table.route(event("a.v3", None)).deliveries.is_empty());
    }

    #[test]
    fn what_a_type_reaches_follows_what_handlers_emitted() {
        let mut table = RouteTable::default();
        let sub = |table: &mut RouteTable, handler: &str, ty: &str| {
            let types = [ty.to_owned()];
            table.subscribe(
                &name(handler),
                &types,
                Ordering::Unordered,
                KeySource::Subject,
            );
        };
        sub(&mut table, "order", "place.v1");
        sub(&mut table, "stock", "placed.v1");
        sub(&mut table, "pay", "reserved.v1");
        sub(&mut table, "echo", "echo.v1");
        let mut graph = EmitGraph::default();
        let names =
            |set: Vec<HandlerName>| -> Vec<String> { set.iter().map(|h| h.to_string()).collect() };
        assert_eq!(names(table.reachable("place.v1", &graph)), ["order"]);

        graph.learn(&name("order"), "placed.v1");
        graph.learn(&name("stock"), "reserved.v1");
        // A type nobody subscribes to leads nowhere.
        graph.learn(&name("pay"), "paid.v1");
        assert_eq!(
            names(table.reachable("place.v1", &graph)),
            ["order", "stock", "pay"],
            "nearest first"
        );
        assert!(table.leads_to(&name("order"), &name("pay"), &graph));
        assert!(!table.leads_to(&name("pay"), &name("order"), &graph));
        assert_eq!(table.loop_back(&name("order"), "placed.v1", &graph), None);

        // A loop through two handlers, and one through itself.
        graph.learn(&name("pay"), "place.v1");
        graph.learn(&name("echo"), "echo.v1");
        let hops = table
            .loop_back(&name("order"), "placed.v1", &graph)
            .unwrap();
        assert_eq!(
            describe_loop(&name("order"), &hops),
            "`order` -> `placed.v1` -> `stock` -> `reserved.v1` -> `pay` -> `place.v1` -> `order`"
        );
        assert!(table.leads_to(&name("pay"), &name("order"), &graph));
        let hops = table.loop_back(&name("echo"), "echo.v1", &graph).unwrap();
        assert_eq!(
            describe_loop(&name("echo"), &hops),
            "`echo` -> `echo.v1` -> `echo`"
        );
    }

    #[test]
    fn ordering_keys_follow_the_handler_rule() {
        let e = event("a.v1", None);
        assert_eq!(
            ordering_key(&e, Ordering::Serial, KeySource::PartitionKey),
            Some(OrderingKey::Serial)
        );
        assert_eq!(
            ordering_key(&e, Ordering::Key, KeySource::PartitionKey),
            None
        );
        assert_eq!(
            ordering_key(&e, Ordering::Key, KeySource::Subject),
            Some(OrderingKey::Key("o-1".into()))
        );
        assert_eq!(
            ordering_key(&e, Ordering::Key, KeySource::Source),
            Some(OrderingKey::Key("/test".into()))
        );
        assert_eq!(
            ordering_key(&e, Ordering::Unordered, KeySource::Source),
            None
        );
    }
}
