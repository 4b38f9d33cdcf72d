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

use std::collections::HashMap;

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
            table.subscribe(name, &settings.subscribe, settings.ordering, settings.key);
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
