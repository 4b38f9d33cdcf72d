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

use crate::config::{KeySource, Ordering};
use crate::event::Event;
use crate::store::{NewDelivery, Routed};

/// One handler's subscription rule.
#[derive(Debug, Clone)]
struct Subscriber {
    handler: String,
    ordering: Ordering,
    key: KeySource,
}

/// The routing table: event type -> subscribers.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    by_type: HashMap<String, Vec<Subscriber>>,
}

impl RouteTable {
    /// Add `handler`'s subscriptions.
    pub fn subscribe(
        &mut self,
        handler: &str,
        types: &[String],
        ordering: Ordering,
        key: KeySource,
    ) {
        for ty in types {
            let subscribers = self.by_type.entry(ty.clone()).or_default();
            if !subscribers.iter().any(|s| s.handler == handler) {
                subscribers.push(Subscriber {
                    handler: handler.to_owned(),
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
            .get(&event.ty)
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

/// The key that orders `event` for one handler. `serial` puts every event under one key;
/// `key` takes it from the event (no key: the event runs unordered); `unordered` has none.
fn ordering_key(event: &Event, ordering: Ordering, key: KeySource) -> Option<String> {
    match ordering {
        Ordering::Unordered => None,
        Ordering::Serial => Some(String::new()),
        Ordering::Key => match key {
            KeySource::PartitionKey => event.extension("partitionkey").map(str::to_owned),
            KeySource::Subject => event.subject.clone(),
            KeySource::Source => Some(event.source.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str, partitionkey: Option<&str>) -> Event {
        Event {
            id: "1".into(),
            source: "/test".into(),
            ty: ty.into(),
            datacontenttype: None,
            dataschema: None,
            subject: Some("o-1".into()),
            time: None,
            extensions: partitionkey
                .map(|k| [("partitionkey".to_owned(), k.to_owned())].into())
                .unwrap_or_default(),
            data: None,
        }
    }

    #[test]
    fn fans_out_to_every_subscriber_of_the_exact_type() {
        let mut table = RouteTable::default();
        let types = ["a.v1".to_owned()];
        table.subscribe("one", &types, Ordering::Unordered, KeySource::PartitionKey);
        table.subscribe("two", &types, Ordering::Key, KeySource::PartitionKey);
        table.subscribe(
            "three",
            &["a.v2".to_owned()],
            Ordering::Serial,
            KeySource::Subject,
        );

        let routed = table.route(event("a.v1", Some("sku-1")));
        assert_eq!(
            routed.deliveries,
            vec![
                NewDelivery {
                    handler: "one".into(),
                    ordering_key: None
                },
                NewDelivery {
                    handler: "two".into(),
                    ordering_key: Some("sku-1".into())
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
            Some("".into())
        );
        assert_eq!(
            ordering_key(&e, Ordering::Key, KeySource::PartitionKey),
            None
        );
        assert_eq!(
            ordering_key(&e, Ordering::Key, KeySource::Subject),
            Some("o-1".into())
        );
        assert_eq!(
            ordering_key(&e, Ordering::Key, KeySource::Source),
            Some("/test".into())
        );
    }
}
