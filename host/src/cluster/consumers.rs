//! Which JetStream consumers take a handler's deliveries, and how each is set so that the
//! handler's rules hold across hosts: the server, not any host, decides what is in flight.
//!
//! - `unordered`: one consumer, shared by every host, `max_ack_pending = concurrency`: at
//!   most that many deliveries are out (unacknowledged) at once across the cluster.
//! - `key`: the app's partitions split into `min(concurrency, partitions)` groups, one
//!   consumer each with `max_ack_pending = 1`: a group runs one delivery at a time, in stream
//!   order, on whichever host holds it, so a key (always in the same partition, so the same
//!   group) never has two deliveries running and never runs out of order; at most
//!   `concurrency` run across the cluster.
//! - `serial`: one group of every partition: one delivery at a time, cluster-wide.
//!
//! A host that dies holding a delivery loses it to the server after `ack_wait`
//! ([`ACK_WAIT`]), which hands it to another host: that bounds a takeover. While a host works
//! on a delivery it tells the server so ([`PROGRESS_EVERY`]), however long the handler or
//! its retries take.

use std::time::Duration;

use crate::config::{HandlerSettings, Ordering};
use crate::name::HandlerName;

use super::subjects::Subjects;

/// How long the server waits for a host's word on a delivery before handing it to another:
/// what a host's death costs the deliveries it held.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// How often a host working on a delivery tells the server it still is.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// One consumer of a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Durable name: the same on every host, so every host pulls from the same consumer.
    pub name: String,
    pub filters: Vec<String>,
    pub max_ack_pending: i64,
    /// Deliveries of this consumer keep their order: a failed one is retried in place
    /// (holding its group) rather than handed back for later.
    pub ordered: bool,
}

/// The consumers of `handler` as `settings` want them.
pub fn consumers_of(
    subjects: &Subjects,
    handler: &HandlerName,
    settings: &HandlerSettings,
) -> Vec<ConsumerSpec> {
    // The older versions a handler takes in are its events too.
    let types = crate::schemas::version::routed_types(&settings.subscribe, settings.accept_older);
    let groups = match settings.ordering {
        Ordering::Unordered => {
            let mut filters = subjects.event_filters(&types, settings.key, None);
            filters.extend(subjects.redrive_filters(handler, settings.key, None));
            return vec![ConsumerSpec {
                name: handler.to_string(),
                filters,
                max_ack_pending: i64::from(settings.concurrency),
                ordered: false,
            }];
        }
        Ordering::Serial => 1,
        Ordering::Key => settings.concurrency.min(subjects.partitions()),
    };
    (0..groups)
        .map(|group| {
            let filters = if groups == 1 {
                let mut filters = subjects.event_filters(&types, settings.key, None);
                filters.extend(subjects.redrive_filters(handler, settings.key, None));
                filters
            } else {
                let partitions: Vec<u32> = (0..subjects.partitions())
                    .filter(|p| p % groups == group)
                    .collect();
                let mut filters = subjects.event_filters(&types, settings.key, Some(&partitions));
                filters.extend(subjects.redrive_filters(handler, settings.key, Some(&partitions)));
                filters
            };
            ConsumerSpec {
                // `G` is upper case, which no handler name has: no other handler's consumer can
                // be called this.
                name: format!("{handler}-G{group}of{groups}"),
                filters,
                max_ack_pending: 1,
                ordered: true,
            }
        })
        .collect()
}

/// Whether a consumer of the stream belongs to `handler` (under any layout).
pub fn is_consumer_of(name: &str, handler: &HandlerName) -> bool {
    name == handler.as_str()
        || name
            .strip_prefix(handler.as_str())
            .is_some_and(|rest| rest.starts_with("-G"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySource;
    use crate::name::AppName;

    fn settings(ordering: Ordering, concurrency: u32) -> HandlerSettings {
        HandlerSettings {
            subscribe: vec!["a.v1".into(), "b.v1".into()],
            ordering,
            concurrency,
            key: KeySource::PartitionKey,
            ..HandlerSettings::default()
        }
    }

    #[test]
    fn each_rule_gets_its_consumers() {
        let subjects = Subjects::new(&AppName::new("shop").unwrap(), 16);
        let h = HandlerName::new("inventory").unwrap();
        let unordered = consumers_of(&subjects, &h, &settings(Ordering::Unordered, 8));
        assert_eq!(unordered.len(), 1);
        assert_eq!(unordered[0].max_ack_pending, 8);
        assert_eq!(unordered[0].filters.len(), 3);

        let serial = consumers_of(&subjects, &h, &settings(Ordering::Serial, 8));
        assert_eq!(serial.len(), 1);
        assert_eq!(serial[0].max_ack_pending, 1);

        let keyed = consumers_of(&subjects, &h, &settings(Ordering::Key, 8));
        assert_eq!(keyed.len(), 8);
        // Two partitions per group, two types and the redrives of each.
        assert!(
            keyed
                .iter()
                .all(|c| c.filters.len() == 6 && c.max_ack_pending == 1)
        );
        let many = consumers_of(&subjects, &h, &settings(Ordering::Key, 100));
        assert_eq!(many.len(), 16);
        assert!(keyed.iter().all(|c| is_consumer_of(&c.name, &h)));
        assert!(!is_consumer_of("inventory2", &h));
    }
}
