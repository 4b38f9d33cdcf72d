//! Where each record of an app lives in its stream: subject names, and the tokens they are
//! made of. Pure: every host computes the same subject for the same record, which is what
//! makes a subject a record's identity (and `Nats-Expected-Last-Subject-Sequence: 0` on it a
//! claim that holds across hosts).

use sha2::{Digest, Sha256};

use crate::config::KeySource;
use crate::event::Event;
use crate::name::{AppName, HandlerName};

/// Longest token made from user text (a type, a state key) kept readable; a longer one is
/// replaced by its digest, so that a subject stays far below the server's control-line limit.
const MAX_READABLE_TOKEN: usize = 200;

/// The subjects of one app, all under `evh.{app}.`.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
    /// `{prefix}.ev.`, `{prefix}.rd.`, `{prefix}.dead.`: what every delivery and listing
    /// looks at, made once rather than on each look.
    events_prefix: String,
    redrives_prefix: String,
    dead_prefix: String,
    partitions: u32,
}

/// What identifies an event across hosts: a digest of its `source` and `id` (the CloudEvents
/// identity), 32 hex characters. Two events with the same source and id have the same key,
/// whatever their type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey(String);

impl EventKey {
    pub fn of(source: &str, id: &str) -> EventKey {
        let mut digest = Sha256::new();
        digest.update(source.as_bytes());
        // A separator no source contains, so that ("a", "bc") and ("ab", "c") differ.
        digest.update([0u8]);
        digest.update(id.as_bytes());
        EventKey(hex::encode(&digest.finalize()[..16]))
    }

    pub fn of_event(event: &Event) -> EventKey {
        EventKey::of(event.source(), event.id())
    }

    /// From the last token of a subject that ends with one.
    pub fn from_token(token: &str) -> Option<EventKey> {
        (token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| EventKey(token.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Subjects {
    pub fn new(app: &AppName, partitions: u32) -> Subjects {
        let prefix = format!("evh.{app}");
        Subjects {
            events_prefix: format!("{prefix}.ev."),
            redrives_prefix: format!("{prefix}.rd."),
            dead_prefix: format!("{prefix}.dead."),
            prefix,
            partitions: partitions.max(1),
        }
    }

    /// Every subject of the app: what its stream takes.
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// An event: `ev.{type}.{partition by partitionkey}.{by subject}.{by source}.{key}`.
    /// The three partitions let each handler's consumers take the events of its partitions
    /// by subject, whichever attribute it keys on; one subject per event, so the stream keeps
    /// each (one message per subject) and a second copy is refused.
    pub fn event(&self, event: &Event) -> String {
        let key = EventKey::of_event(event);
        let [by_partitionkey, by_subject, by_source] = self.partitions_of(event, &key);
        format!(
            "{}.ev.{}.{by_partitionkey}.{by_subject}.{by_source}.{}",
            self.prefix,
            token(event.ty()),
            key.as_str()
        )
    }

    /// The partition of `event` for each key source, in [`KeySource`] order. An event
    /// without the attribute gets the partition of its own key: it has no line to keep.
    fn partitions_of(&self, event: &Event, key: &EventKey) -> [u32; 3] {
        let of = |value: Option<&str>| match value {
            Some(value) => partition(value, self.partitions),
            None => partition(key.as_str(), self.partitions),
        };
        [
            of(event.extension("partitionkey")),
            of(event.subject()),
            of(Some(event.source())),
        ]
    }

    /// Every event with this key, whatever its type and partitions: at most one. An event is
    /// written only if this filter has no message yet (`Nats-Expected-Last-Subject-Sequence:
    /// 0` with this as `...-Subject`), which is the dedupe on `source` and `id`, in the same
    /// write as the event, for as long as the stream keeps it.
    pub fn event_by_key(&self, key: &EventKey) -> String {
        format!("{}.ev.*.*.*.*.{}", self.prefix, key.as_str())
    }

    /// The events of `types` in `partitions` (all of them: `None`) of `key_source`.
    pub fn event_filters(
        &self,
        types: &[String],
        key_source: KeySource,
        partitions: Option<&[u32]>,
    ) -> Vec<String> {
        let mut filters = Vec::new();
        for ty in types {
            let ty = token(ty);
            match partitions {
                None => filters.push(format!("{}.ev.{ty}.>", self.prefix)),
                Some(partitions) => {
                    for p in partitions {
                        let tokens = match key_source {
                            KeySource::PartitionKey => format!("{p}.*.*"),
                            KeySource::Subject => format!("*.{p}.*"),
                            KeySource::Source => format!("*.*.{p}"),
                        };
                        filters.push(format!("{}.ev.{ty}.{tokens}.*", self.prefix));
                    }
                }
            }
        }
        filters
    }

    /// Every event, of any type (the log's view).
    pub fn events(&self) -> String {
        format!("{}.ev.>", self.prefix)
    }

    /// The events of one type.
    pub fn events_of_type(&self, ty: &str) -> String {
        format!("{}.ev.{}.>", self.prefix, token(ty))
    }

    /// A redrive of `handler`'s delivery of the event at `event_subject`: the same partition
    /// tokens as the event, so the consumer of the partition takes it, in line with the key's
    /// other events.
    pub fn redrive(&self, handler: &HandlerName, event_subject: &str) -> Option<String> {
        let rest = event_subject.strip_prefix(&self.events_prefix)?;
        // {type}.{p}.{p}.{p}.{key}: the type token has no dots.
        let (_, partitions_and_key) = rest.split_once('.')?;
        Some(format!("{}.rd.{handler}.{partitions_and_key}", self.prefix))
    }

    /// The redrives of `handler` in `partitions` (all: `None`) of `key_source`.
    pub fn redrive_filters(
        &self,
        handler: &HandlerName,
        key_source: KeySource,
        partitions: Option<&[u32]>,
    ) -> Vec<String> {
        match partitions {
            None => vec![format!("{}.rd.{handler}.>", self.prefix)],
            Some(partitions) => partitions
                .iter()
                .map(|p| {
                    let tokens = match key_source {
                        KeySource::PartitionKey => format!("{p}.*.*"),
                        KeySource::Subject => format!("*.{p}.*"),
                        KeySource::Source => format!("*.*.{p}"),
                    };
                    format!("{}.rd.{handler}.{tokens}.*", self.prefix)
                })
                .collect(),
        }
    }

    /// Whether `subject` is a redrive (else an event).
    pub fn is_redrive(&self, subject: &str) -> bool {
        subject.starts_with(&self.redrives_prefix)
    }

    /// The record that `handler` handled the event: written in the atomic commit with the
    /// handler's effects, and only if it is not there yet, so the effects land once.
    pub fn done(&self, handler: &HandlerName, key: &EventKey) -> String {
        format!("{}.done.{handler}.{}", self.prefix, key.as_str())
    }

    /// The failed attempts of `handler` on an event, newest record only.
    pub fn attempts(&self, handler: &HandlerName, key: &EventKey) -> String {
        format!("{}.att.{handler}.{}", self.prefix, key.as_str())
    }

    /// The dead letter of `handler` on an event (or its clearing, after a redrive or discard).
    pub fn dead(&self, handler: &HandlerName, key: &EventKey) -> String {
        format!("{}.dead.{handler}.{}", self.prefix, key.as_str())
    }

    /// Every dead letter (and cleared one) of `handler`, or of every handler.
    pub fn dead_letters(&self, handler: Option<&HandlerName>) -> String {
        match handler {
            Some(handler) => format!("{}.dead.{handler}.*", self.prefix),
            None => format!("{}.dead.*.*", self.prefix),
        }
    }

    /// One state key of `handler`: the last message on it is the value, its sequence the
    /// revision a commit checks.
    pub fn state(&self, handler: &HandlerName, key: &str) -> String {
        format!("{}.st.{handler}.{}", self.prefix, token(key))
    }

    /// Every state key of `handler`.
    pub fn state_keys(&self, handler: &HandlerName) -> String {
        format!("{}.st.{handler}.*", self.prefix)
    }

    /// Where a commit puts the checks of keys it read and did not write: a message here says
    /// "the key's last sequence is still N" (`Nats-Expected-Last-Subject-Sequence-Subject`),
    /// and only the newest is kept.
    pub fn read_checks(&self, handler: &HandlerName) -> String {
        format!("{}.chk.{handler}", self.prefix)
    }

    /// The state key a state subject holds, if it is one of `handler`'s.
    pub fn state_key_of(&self, handler: &HandlerName, subject: &str) -> Option<String> {
        let token = subject.strip_prefix(&format!("{}.st.{handler}.", self.prefix))?;
        untoken(token)
    }

    /// The last token of a subject: the event key of event, done, attempt and dead records.
    pub fn key_of(subject: &str) -> Option<EventKey> {
        EventKey::from_token(subject.rsplit('.').next()?)
    }

    /// The handler of a dead letter's subject.
    pub fn handler_of_dead(&self, subject: &str) -> Option<HandlerName> {
        let rest = subject.strip_prefix(&self.dead_prefix)?;
        HandlerName::new(rest.split('.').next()?).ok()
    }

    /// The handler and event key a dead letter's subject names, if it is one.
    pub fn dead_letter_of(&self, subject: &str) -> Option<(HandlerName, EventKey)> {
        Some((self.handler_of_dead(subject)?, Subjects::key_of(subject)?))
    }
}

/// The partition of `value` among `partitions`: the same on every host and every run (a
/// digest, not `std`'s randomly seeded hasher).
pub fn partition(value: &str, partitions: u32) -> u32 {
    let digest = Sha256::digest(value.as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (n % u64::from(partitions.max(1))) as u32
}

/// User text as one subject token: letters, digits and `-` as they are, every other byte as
/// `_` and two hex digits (so no `.`, `*`, `>` or whitespace reaches the subject, and the
/// token reads back). Longer than [`MAX_READABLE_TOKEN`]: `~` and a digest, which does not
/// read back.
pub fn token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push('_');
            out.push_str(&format!("{byte:02X}"));
        }
    }
    if out.len() > MAX_READABLE_TOKEN {
        return format!("~{}", hex::encode(Sha256::digest(text.as_bytes())));
    }
    out
}

/// The text of a [`token`], if it reads back.
pub fn untoken(token: &str) -> Option<String> {
    if token.starts_with('~') {
        return None;
    }
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'_' {
            let hex = tail.get(..2)?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects() -> Subjects {
        Subjects::new(&AppName::new("shop").unwrap(), 16)
    }

    #[test]
    fn tokens_keep_subjects_whole_and_read_back() {
        for text in [
            "com.example.shop.order.placed.v1",
            "stock/sku-1",
            "a b*c>d_e",
            "é",
        ] {
            let t = token(text);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{t}"
            );
            assert_eq!(untoken(&t).as_deref(), Some(text));
        }
        assert_ne!(token("a.b"), token("a_2Eb"));
        let long = "k".repeat(500);
        assert!(token(&long).len() < 100);
        assert_eq!(untoken(&token(&long)), None);
    }

    #[test]
    fn an_event_key_is_its_source_and_id_and_nothing_else() {
        assert_eq!(EventKey::of("/web", "1"), EventKey::of("/web", "1"));
        assert_ne!(EventKey::of("/a", "bc"), EventKey::of("/ab", "c"));
        let one = Event::builder("1", "/web", "a.v1").build().unwrap();
        let other = Event::builder("1", "/web", "b.v1").build().unwrap();
        assert_eq!(EventKey::of_event(&one), EventKey::of_event(&other));
        let key = EventKey::of_event(&one);
        assert_eq!(EventKey::from_token(key.as_str()), Some(key));
    }

    #[test]
    fn an_event_lands_where_its_handlers_partition_filters_look() {
        let s = subjects();
        let event = Event::builder("1", "/web", "order.placed.v1")
            .subject("o-1")
            .extension("partitionkey", "sku-1")
            .build()
            .unwrap();
        let subject = s.event(&event);
        let p = partition("sku-1", 16);
        let filters = s.event_filters(
            &["order.placed.v1".to_owned()],
            KeySource::PartitionKey,
            Some(&[p]),
        );
        assert_eq!(filters.len(), 1);
        assert!(matches(&filters[0], &subject), "{filters:?} {subject}");
        let other = (p + 1) % 16;
        let elsewhere = s.event_filters(
            &["order.placed.v1".to_owned()],
            KeySource::PartitionKey,
            Some(&[other]),
        );
        assert!(!matches(&elsewhere[0], &subject));
        // A redrive of it goes to the same partition.
        let handler = HandlerName::new("inventory").unwrap();
        let redrive = s.redrive(&handler, &subject).unwrap();
        let redrives = s.redrive_filters(&handler, KeySource::PartitionKey, Some(&[p]));
        assert!(matches(&redrives[0], &redrive), "{redrives:?} {redrive}");
        assert_eq!(Subjects::key_of(&redrive), Some(EventKey::of_event(&event)));
    }

    #[test]
    fn state_subjects_name_their_key() {
        let s = subjects();
        let h = HandlerName::new("inventory").unwrap();
        let subject = s.state(&h, "stock/sku-1");
        assert_eq!(s.state_key_of(&h, &subject).as_deref(), Some("stock/sku-1"));
        let other = HandlerName::new("payment").unwrap();
        assert_eq!(s.state_key_of(&other, &subject), None);
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition("sku-1", 16), partition("sku-1", 16));
        let used: std::collections::BTreeSet<u32> =
            (0..200).map(|i| partition(&format!("k{i}"), 16)).collect();
        assert_eq!(used.len(), 16);
    }

    /// NATS subject matching: `*` one token, `>` the rest.
    fn matches(filter: &str, subject: &str) -> bool {
        let mut f = filter.split('.');
        let mut s = subject.split('.');
        loop {
            match (f.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}
