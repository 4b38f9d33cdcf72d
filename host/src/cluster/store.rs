//! The app in JetStream: one stream of records (events, what each
//! delivery did, state), a KV bucket of deployment records, an object store of modules.
//! Implements [`Backend`], so ingress, the admin API and the deployer work on it as they do
//! on the embedded store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, kv, object_store, stream};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;

use super::batch::{self, BatchError, MAX_BATCH_MESSAGES, Outbound};
use super::consumers;
use super::records::{
    self, AttemptsRecord, Cleared, DeadRecord, DoneRecord, StoredEvent, decode_event, encode_event,
    from_payload, to_payload,
};
use super::subjects::{EventKey, Subjects};
use crate::config::{ClusterLayout, HandlerSettings};
use crate::name::{AppName, HandlerName};
use crate::router::Routed;
use crate::store::{
    Appended, Applied, Backend, BookWrite, Compacted, DeadLetter, DeadLetterQuery, DeliveryStatus,
    Deployment, DeploymentChange, EventQuery, HandlerRecord, LoggedDelivery, LoggedEvent,
    ManifestEntry, Origin, RedriveTarget, RemoteState, StateReader, StoreError, StoreResult,
    StoredBook, now_ms,
};

/// How long a host waits for NATS at start before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Times an append starts again when another host stored one of its events meanwhile.
const APPEND_RACES: usize = 5;

/// The key of the deployment records in the KV bucket: one document, so a plan's changes
/// to several handlers land together (revision check) or not at all.
pub const BOOK_KEY: &str = "book";
/// The key of the schema registry's book ([`crate::schemas::book`]) in the same bucket.
pub const SCHEMAS_KEY: &str = "schemas";

/// The object store name of an upcaster's module: beside the handlers' modules, under a
/// prefix of its own.
fn upcaster_object(sha256: &str) -> String {
    format!("upcaster-{sha256}")
}

/// Where the app lives in JetStream, and the connection to it.
pub struct ClusterStore {
    client: Client,
    js: jetstream::Context,
    stream: stream::Stream,
    subjects: Subjects,
    book: kv::Store,
    modules: object_store::ObjectStore,
    /// Why the last write failed, while JetStream cannot be written.
    failure: Mutex<Option<String>>,
}

/// Names in JetStream for an app.
fn names(app: &AppName, layout: &ClusterLayout) -> (String, String, String) {
    let stream = layout
        .stream
        .clone()
        .unwrap_or_else(|| format!("EVHOST_{app}"));
    let book = format!("{stream}_deployments");
    let modules = format!("{stream}_modules");
    (stream, book, modules)
}

impl ClusterStore {
    /// Connect to NATS at `url` (a comma-separated list of servers is fine) and make sure
    /// the app's stream, bucket and object store exist as `layout` says.
    pub async fn connect(url: &str, app: &AppName, layout: &ClusterLayout) -> Result<ClusterStore> {
        let servers: Vec<async_nats::ServerAddr> = url
            .split(',')
            .map(|server| {
                server
                    .trim()
                    .parse()
                    .with_context(|| format!("bad NATS server address {server:?}"))
            })
            .collect::<Result<_>>()?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("evhost {app}"))
            .connection_timeout(CONNECT_TIMEOUT)
            // Requests (appends, commits, reads) fail after this rather than hang while NATS
            // is away: ingress answers 503, a delivery waits and tries again.
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(servers)
            .await
            .with_context(|| format!("failed to connect to NATS at {url}"))?;
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new(app, layout.partitions);
        let (stream_name, book_name, modules_name) = names(app, layout);
        let config = stream::Config {
            name: stream_name.clone(),
            subjects: vec![subjects.all()],
            storage: stream::StorageType::File,
            num_replicas: layout.replicas,
            // Every record has a subject of its own (an event, a done record, a state key): the
            // last message of a subject is the record, and its sequence is its revision.
            max_messages_per_subject: 1,
            allow_atomic_publish: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        };
        let stream = match js.get_stream(&stream_name).await {
            Ok(mut stream) => {
                let info = stream.info().await?.config.clone();
                if !info.allow_atomic_publish || info.max_messages_per_subject != 1 {
                    bail!(
                        "the stream {stream_name} exists but is not an evhost stream (it needs \
                         allow_atomic and max_msgs_per_subject = 1): name another with \
                         [cluster] stream"
                    );
                }
                stream
            }
            Err(_) => js.create_stream(config).await.map_err(|err| {
                anyhow!(
                    "failed to create the stream {stream_name}: {err} (cluster mode needs \
                     nats-server 2.12 or later with JetStream enabled)"
                )
            })?,
        };
        let book = match js.get_key_value(&book_name).await {
            Ok(book) => book,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: book_name.clone(),
                    history: 16,
                    storage: stream::StorageType::File,
                    num_replicas: layout.replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("failed to create the KV bucket {book_name}"))?,
        };
        let modules = match js.get_object_store(&modules_name).await {
            Ok(modules) => modules,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: modules_name.clone(),
                    storage: stream::StorageType::File,
                    num_replicas: layout.replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("failed to create the object store {modules_name}"))?,
        };
        Ok(ClusterStore {
            client,
            js,
            stream,
            subjects,
            book,
            modules,
            failure: Mutex::new(None),
        })
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    pub fn stream_name(&self) -> &str {
        &self.stream.cached_info().config.name
    }

    /// The deployment records, to watch for changes made by other hosts.
    pub fn book(&self) -> &kv::Store {
        &self.book
    }

    /// Write `messages` atomically, noting whether JetStream could be written.
    pub async fn write(&self, messages: Vec<Outbound>) -> Result<batch::Committed, BatchError> {
        let result = batch::publish(&self.client, messages).await;
        let mut failure = self.failure.lock().expect("not poisoned");
        match &result {
            Err(BatchError::Unavailable(why)) => *failure = Some(why.clone()),
            _ => *failure = None,
        }
        result
    }

    /// The last message of `subject`, if it has one.
    pub async fn last(&self, subject: &str) -> Result<Option<Record>> {
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(raw(message))),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(anyhow!("failed to read {subject}: {err}")),
        }
    }

    /// The message at `seq`, if the stream still holds it.
    pub async fn at(&self, seq: u64) -> Result<Option<Record>> {
        match self.stream.direct_get(seq).await {
            Ok(message) => Ok(Some(raw(message))),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(anyhow!("failed to read message {seq}: {err}")),
        }
    }

    /// The first message after `seq` on `filter`, if any.
    async fn next_after(&self, filter: &str, seq: u64) -> Result<Option<Record>> {
        match self
            .stream
            .direct_get_next_for_subject(filter, Some(seq + 1))
            .await
        {
            Ok(message) => Ok(Some(raw(message))),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(anyhow!("failed to read {filter} after {seq}: {err}")),
        }
    }

    /// The event whose message is on `subject`.
    pub async fn event_at(&self, subject: &str) -> Result<Option<StoredEvent>> {
        let Some(message) = self.last(subject).await? else {
            return Ok(None);
        };
        decode_event(
            message.seq,
            &message.subject,
            &message.headers,
            &message.payload,
        )
        .map(Some)
    }

    pub async fn done(&self, handler: &HandlerName, key: &EventKey) -> Result<Option<DoneRecord>> {
        match self.last(&self.subjects.done(handler, key)).await? {
            Some(message) => from_payload("done", &message.payload).map(Some),
            None => Ok(None),
        }
    }

    /// A delivery's failed attempts, and the revision of their record (0: none yet).
    pub async fn attempts(
        &self,
        handler: &HandlerName,
        key: &EventKey,
    ) -> Result<(AttemptsRecord, u64)> {
        match self.last(&self.subjects.attempts(handler, key)).await? {
            Some(message) => Ok((from_payload("attempts", &message.payload)?, message.seq)),
            None => Ok((AttemptsRecord::default(), 0)),
        }
    }

    /// A delivery's dead letter (or what became of it), with its revision.
    pub async fn dead(
        &self,
        handler: &HandlerName,
        key: &EventKey,
    ) -> Result<Option<(DeadRecord, u64)>> {
        match self.last(&self.subjects.dead(handler, key)).await? {
            Some(message) => Ok(Some((from_payload("dead", &message.payload)?, message.seq))),
            None => Ok(None),
        }
    }

    /// The message that appends `routed`, at `received_ms`, unless an event with its source
    /// and id is stored.
    pub fn event_message(&self, routed: &Routed, received_ms: i64) -> Outbound {
        let key = EventKey::of_event(&routed.event);
        let subject = self.subjects.event(&routed.event);
        let handlers: Vec<HandlerName> = routed
            .deliveries
            .iter()
            .map(|d| d.handler.clone())
            .collect();
        let (headers, payload) = encode_event(&routed.event, &handlers, received_ms);
        let mut event =
            Outbound::new(subject, payload).expect_last_of(&self.subjects.event_by_key(&key), 0);
        for (name, values) in headers.iter() {
            for value in values {
                event.headers.append(name.clone(), value.clone());
            }
        }
        event
    }

    /// The log position of the stored event `key` names, if one is stored.
    async fn stored_at(&self, key: &EventKey) -> Result<Option<u64>> {
        Ok(self
            .last(&self.subjects.event_by_key(key))
            .await?
            .map(|event| event.seq))
    }

    /// Commit a delivery's outcome: `messages` (its effects) with its done record, unless
    /// it is done already.
    pub async fn commit(&self, messages: Vec<Outbound>) -> Result<CommitOutcome, BatchError> {
        match self.write(messages).await {
            Ok(committed) => Ok(CommitOutcome::Done(committed)),
            Err(BatchError::Conflict(why)) => Ok(CommitOutcome::Conflict(why)),
            Err(err) => Err(err),
        }
    }

    /// Every message on `filter`, in stream order, as long as `keep` says go on.
    async fn scan<F>(&self, filter: &str, after: u64, mut keep: F) -> Result<()>
    where
        F: FnMut(Record) -> Result<bool>,
    {
        let mut seq = after;
        while let Some(message) = self.next_after(filter, seq).await? {
            seq = message.seq;
            if !keep(message)? {
                break;
            }
        }
        Ok(())
    }

    /// Where `handler`'s delivery of `event` stands, from its records.
    async fn delivery_of(
        &self,
        event: &StoredEvent,
        handler: &HandlerName,
    ) -> Result<LoggedDelivery> {
        let key = EventKey::of_event(&event.event);
        let (attempts, _) = self.attempts(handler, &key).await?;
        let mut delivery = LoggedDelivery {
            id: 0,
            handler: handler.clone(),
            status: DeliveryStatus::Pending,
            attempts: attempts.since_redrive(),
            redrives: attempts.redrives,
            not_before_ms: attempts.next_at_ms,
            last_error: attempts.last_error().map(str::to_owned),
            caused: Vec::new(),
        };
        if let Some(done) = self.done(handler, &key).await? {
            delivery.status = DeliveryStatus::Done;
            delivery.attempts = done.attempts + 1;
            delivery.not_before_ms = 0;
            for subject in &done.emitted {
                if let Some(message) = self.last(subject).await? {
                    delivery.caused.push(message.seq as i64);
                }
            }
            return Ok(delivery);
        }
        if let Some((dead, seq)) = self.dead(handler, &key).await? {
            delivery.id = seq as i64;
            match dead.cleared {
                None => delivery.status = DeliveryStatus::Dead,
                Some(Cleared::Discarded) => delivery.status = DeliveryStatus::Discarded,
                Some(Cleared::Redriven) => {}
            }
            if delivery.status.is_settled() {
                delivery.not_before_ms = 0;
                return Ok(delivery);
            }
        }
        if delivery.attempts > 0 {
            delivery.status = DeliveryStatus::Retrying;
        }
        Ok(delivery)
    }

    /// The dead letter recorded at `seq`, with its event and attempts.
    async fn dead_letter_at(&self, message: &Record) -> Result<Option<DeadLetter>> {
        let dead: DeadRecord = from_payload("dead", &message.payload)?;
        if dead.cleared.is_some() {
            return Ok(None);
        }
        let Some((handler, key)) = self.subjects.dead_letter_of(&message.subject) else {
            return Ok(None);
        };
        let Some(event) = self.event_at(&dead.event_subject).await? else {
            return Ok(None);
        };
        // Done after all (a run that committed while its handler's removal dead-lettered
        // it): its effects landed, it is no dead letter.
        if self.done(&handler, &key).await?.is_some() {
            return Ok(None);
        }
        let (attempts, _) = self.attempts(&handler, &key).await?;
        Ok(Some(DeadLetter {
            id: message.seq as i64,
            handler,
            seq: event.seq as i64,
            event: event.event,
            attempts: attempts.since_redrive(),
            redrives: attempts.redrives,
            died_at_ms: dead.died_at_ms,
            errors: attempts.errors(),
        }))
    }

    /// Redrive or discard the dead letter at `id`: `false` when there is none there.
    async fn clear_dead(&self, id: i64, how: Cleared) -> StoreResult<Option<HandlerName>> {
        let Ok(seq) = u64::try_from(id) else {
            return Ok(None);
        };
        let message = self.at(seq).await.map_err(unavailable)?;
        let Some(message) = message else {
            return Ok(None);
        };
        let Some((handler, key)) = self.subjects.dead_letter_of(&message.subject) else {
            return Ok(None);
        };
        let mut dead: DeadRecord = from_payload("dead", &message.payload).map_err(broken)?;
        if dead.cleared.is_some() {
            return Ok(None);
        }
        dead.cleared = Some(how);
        let dead_subject = self.subjects.dead(&handler, &key);
        // Only if the dead letter is still the one read: a redrive and a discard of one
        // dead letter on two hosts, or two redrives, cannot both act on it.
        let mut messages = vec![Outbound::new(dead_subject, to_payload(&dead)).expect_last(seq)];
        if how == Cleared::Redriven {
            let (mut attempts, revision) =
                self.attempts(&handler, &key).await.map_err(unavailable)?;
            attempts.redrives += 1;
            attempts.next_at_ms = 0;
            messages.push(
                Outbound::new(
                    self.subjects.attempts(&handler, &key),
                    to_payload(&attempts),
                )
                .expect_last(revision),
            );
            let redrive = self
                .subjects
                .redrive(&handler, &dead.event_subject)
                .ok_or_else(|| StoreError::broken("a dead letter names no event subject"))?;
            messages.push(Outbound::new(
                redrive,
                Bytes::from(dead.event_subject.clone()),
            ));
        }
        match self.write(messages).await {
            Ok(_) => Ok(Some(handler)),
            Err(BatchError::Conflict(_)) => Ok(None),
            Err(err) => Err(batch_error(err)),
        }
    }

    async fn read_book(&self) -> StoreResult<(Book, u64)> {
        match self.book.entry(BOOK_KEY).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                let book = serde_json::from_slice(&entry.value).map_err(|err| {
                    StoreError::broken(format!("the deployment records do not read: {err}"))
                })?;
                Ok((book, entry.revision))
            }
            Ok(_) => Ok((Book::default(), 0)),
            Err(err) => Err(StoreError::unavailable(format!(
                "failed to read the deployment records: {err}"
            ))),
        }
    }

    /// Store `bytes` as module `sha256` unless it is there already.
    async fn put_module(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()> {
        if self.modules.info(sha256).await.is_ok() {
            return Ok(());
        }
        let mut reader = bytes;
        self.modules.put(sha256, &mut reader).await.map_err(|err| {
            StoreError::unavailable(format!("failed to store module {sha256}: {err}"))
        })?;
        Ok(())
    }

    /// Dead-letter every delivery of `handler` its consumers have not settled (not handed
    /// out yet, or handed out and not acknowledged), with `reason`; then delete the
    /// consumers. How many were dead-lettered. What a host is running meanwhile may still
    /// commit: then it is done (its done record wins over the dead letter in every view).
    pub async fn drain_removed(&self, handler: &HandlerName, reason: &str) -> Result<usize> {
        let mut drained = Vec::new();
        let mut listed = self.stream.consumers();
        while let Some(info) = listed.next().await {
            let info = info.map_err(|err| anyhow!("failed to list consumers: {err}"))?;
            if consumers::is_consumer_of(&info.name, handler) {
                drained.push(info);
            }
        }
        let mut dead = 0;
        for info in drained {
            // Everything past what the consumer had acknowledged in order: the rest of its
            // subjects' messages, read from the stream rather than through the consumer
            // (which hands out no more than its `max_ack_pending`).
            let mut records = BTreeMap::new();
            for filter in &info.config.filter_subjects {
                self.scan(filter, info.ack_floor.stream_sequence, |record| {
                    records.insert(record.seq, record);
                    Ok(true)
                })
                .await?;
            }
            for record in records.values() {
                if self.dead_letter_record(handler, record, reason).await? {
                    dead += 1;
                }
            }
            // Another host may have deleted it already.
            let _ = self.stream.delete_consumer(&info.name).await;
        }
        Ok(dead)
    }

    /// Dead-letter the delivery `record` (an event or a redrive) stands for, unless it is
    /// not `handler`'s, or settled; whether it was.
    async fn dead_letter_record(
        &self,
        handler: &HandlerName,
        record: &Record,
        reason: &str,
    ) -> Result<bool> {
        let event = if self.subjects.is_redrive(&record.subject) {
            let subject =
                std::str::from_utf8(&record.payload).context("a redrive names no event subject")?;
            self.event_at(subject).await?
        } else {
            let event = decode_event(
                record.seq,
                &record.subject,
                &record.headers,
                &record.payload,
            )?;
            event.routes_to(handler).then_some(event)
        };
        let Some(event) = event else {
            return Ok(false);
        };
        let key = EventKey::of_event(&event.event);
        if self.done(handler, &key).await?.is_some() {
            return Ok(false);
        }
        if let Some((dead, _)) = self.dead(handler, &key).await?
            && dead.cleared.is_none()
        {
            return Ok(false);
        }
        let (mut attempts, revision) = self.attempts(handler, &key).await?;
        let now = now_ms();
        attempts.failed(reason, now, 0);
        let dead = self
            .dead_letter_messages(handler, &event, &attempts, revision, reason, now)
            .await?;
        match self.write(dead).await {
            Ok(_) => Ok(true),
            // Settled meanwhile by the host running it.
            Err(BatchError::Conflict(_)) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// The event a consumer message stands for, if it is a delivery of `handler`: an event
    /// routed to it, or a redrive naming it.
    pub async fn event_of_message(
        &self,
        handler: &HandlerName,
        message: &jetstream::Message,
    ) -> Result<Option<StoredEvent>> {
        let subject = message.subject.as_str();
        if self.subjects.is_redrive(subject) {
            let event_subject = std::str::from_utf8(&message.payload)
                .context("a redrive names no event subject")?;
            return self.event_at(event_subject).await;
        }
        let info = message.info().map_err(|err| anyhow!("{err}"))?;
        let empty = HeaderMap::new();
        let headers = message.headers.as_ref().unwrap_or(&empty);
        let event = decode_event(info.stream_sequence, subject, headers, &message.payload)?;
        Ok(event.routes_to(handler).then_some(event))
    }

    /// The messages that dead-letter `handler`'s delivery of `event` after `attempts`
    /// (whose record is at `revision`): the attempts and the dead letter, unless it is done.
    pub async fn dead_letter_messages(
        &self,
        handler: &HandlerName,
        event: &StoredEvent,
        attempts: &AttemptsRecord,
        revision: u64,
        reason: &str,
        now: i64,
    ) -> Result<Vec<Outbound>> {
        let key = EventKey::of_event(&event.event);
        let dead_revision = self
            .last(&self.subjects.dead(handler, &key))
            .await?
            .map_or(0, |m| m.seq);
        let dead = DeadRecord {
            event_subject: event.subject.clone(),
            event_seq: event.seq,
            died_at_ms: now,
            reason: reason.to_owned(),
            cleared: None,
        };
        Ok(vec![
            // A done delivery is never dead-lettered: its done record must still be absent.
            Outbound::new(self.subjects.read_checks(handler), Bytes::new())
                .expect_last_of(&self.subjects.done(handler, &key), 0),
            Outbound::new(self.subjects.attempts(handler, &key), to_payload(attempts))
                .expect_last(revision),
            Outbound::new(self.subjects.dead(handler, &key), to_payload(&dead))
                .expect_last(dead_revision),
        ])
    }

    /// Appends `routed` (see [`Backend::append`]). Each event is written only if no event
    /// with its source and id is stored (checked in the write itself); only when a write is
    /// refused for that does it look for which were stored already, and write the rest again.
    async fn append_routed(&self, routed: &[Routed]) -> Result<Vec<Appended>, StoreError> {
        let mut outcomes: Vec<Option<Appended>> = vec![None; routed.len()];
        let keys: Vec<EventKey> = routed
            .iter()
            .map(|r| EventKey::of_event(&r.event))
            .collect();
        let mut first_of: BTreeMap<&EventKey, usize> = BTreeMap::new();
        let mut to_write = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            // A duplicate within the request is answered with the first.
            if first_of.insert(key, index).is_none() {
                to_write.push(index);
            }
        }
        let received = now_ms();
        let mut races = 0;
        while !to_write.is_empty() {
            let mut refused = Vec::new();
            // One atomic write holds at most MAX_BATCH_MESSAGES: a larger request is written
            // in parts, each whole (a retry after a crash between two finds the first stored).
            for chunk in to_write.chunks(MAX_BATCH_MESSAGES) {
                let messages: Vec<Outbound> = chunk
                    .iter()
                    .map(|&index| self.event_message(&routed[index], received))
                    .collect();
                match self.write(messages).await {
                    Ok(committed) => {
                        for (i, &index) in chunk.iter().enumerate() {
                            let seq = committed.sequence_of(i) as i64;
                            outcomes[index] = Some(Appended::New { seq });
                        }
                    }
                    Err(BatchError::Conflict(_)) => {
                        for &index in chunk {
                            match self.stored_at(&keys[index]).await.map_err(unavailable)? {
                                Some(seq) => {
                                    outcomes[index] = Some(Appended::Duplicate { seq: seq as i64 });
                                }
                                None => refused.push(index),
                            }
                        }
                    }
                    Err(err) => return Err(batch_error(err)),
                }
            }
            if !refused.is_empty() {
                races += 1;
                if races > APPEND_RACES {
                    return Err(StoreError::unavailable(
                        "other hosts kept storing events with the same ids meanwhile; send \
                         them again",
                    ));
                }
            }
            to_write = refused;
        }
        routed
            .iter()
            .enumerate()
            .map(|(index, _)| match outcomes[index] {
                Some(outcome) => Ok(outcome),
                None => match outcomes[first_of[&keys[index]]] {
                    Some(Appended::New { seq } | Appended::Duplicate { seq }) => {
                        Ok(Appended::Duplicate { seq })
                    }
                    None => Err(StoreError::broken("an appended event has no outcome")),
                },
            })
            .collect()
    }
}

/// What a commit did.
#[derive(Debug)]
pub enum CommitOutcome {
    Done(batch::Committed),
    /// A check failed: the delivery is done already, or a state key it read changed.
    Conflict(String),
}

/// One message of the stream, as a direct get reads it.
#[derive(Debug, Clone)]
pub struct Record {
    pub subject: String,
    pub seq: u64,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

fn raw(message: jetstream::message::StreamMessage) -> Record {
    Record {
        subject: message.subject.to_string(),
        seq: message.sequence,
        headers: message.headers,
        payload: message.payload,
    }
}

fn is_not_found(err: &stream::DirectGetError) -> bool {
    matches!(err.kind(), stream::DirectGetErrorKind::NotFound)
}

fn unavailable(err: anyhow::Error) -> StoreError {
    StoreError::unavailable(format!("JetStream is unavailable: {err:#}"))
}

fn broken(err: anyhow::Error) -> StoreError {
    StoreError::broken(format!("{err:#}"))
}

pub fn batch_error(err: BatchError) -> StoreError {
    match err {
        BatchError::Unavailable(_) | BatchError::Conflict(_) => {
            StoreError::unavailable(err.to_string())
        }
        BatchError::Refused(_) => StoreError::broken(err.to_string()),
    }
}

/// The deployment records of an app: every handler and every version, one document.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Book {
    handlers: BTreeMap<String, BookHandler>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BookHandler {
    owner: Origin,
    active: Option<u32>,
    /// What the manifest said last: module and settings (JSON).
    manifest: Option<(String, String)>,
    versions: Vec<BookVersion>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BookVersion {
    version: u32,
    module_sha256: String,
    settings: String,
    origin: Origin,
    deployed_at_ms: i64,
}

impl BookVersion {
    fn deployment(&self, handler: &HandlerName) -> StoreResult<Deployment> {
        Ok(Deployment {
            handler: handler.clone(),
            version: self.version,
            module_sha256: self.module_sha256.clone(),
            settings: settings(handler, &self.settings)?,
            origin: self.origin,
            deployed_at_ms: self.deployed_at_ms,
        })
    }
}

fn settings(handler: &HandlerName, json: &str) -> StoreResult<HandlerSettings> {
    HandlerSettings::from_json(json).map_err(|why| {
        StoreError::broken(format!(
            "the stored settings of `{handler}` do not read: {why}"
        ))
    })
}

fn handler_name(name: &str) -> StoreResult<HandlerName> {
    HandlerName::new(name).map_err(|err| StoreError::broken(format!("bad stored name: {err}")))
}

impl Book {
    /// Apply one change, as the embedded store's deployment tables do.
    fn apply(&mut self, change: &DeploymentChange, now: i64) -> StoreResult<Applied> {
        match change {
            DeploymentChange::Deploy {
                handler,
                module_sha256,
                settings: wanted,
                origin,
                ..
            } => {
                let entry =
                    self.handlers
                        .entry(handler.to_string())
                        .or_insert_with(|| BookHandler {
                            owner: *origin,
                            active: None,
                            manifest: None,
                            versions: Vec::new(),
                        });
                let version = entry.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
                let settings_json = wanted.to_json();
                entry.versions.push(BookVersion {
                    version,
                    module_sha256: module_sha256.clone(),
                    settings: settings_json.clone(),
                    origin: *origin,
                    deployed_at_ms: now,
                });
                entry.active = Some(version);
                if *origin == Origin::Manifest {
                    entry.owner = Origin::Manifest;
                    entry.manifest = Some((module_sha256.clone(), settings_json));
                }
                Ok(Applied::Deployed(Deployment {
                    handler: handler.clone(),
                    version,
                    module_sha256: module_sha256.clone(),
                    settings: wanted.clone(),
                    origin: *origin,
                    deployed_at_ms: now,
                }))
            }
            DeploymentChange::Activate { handler, version } => {
                let entry = self.handlers.get_mut(handler.as_str()).ok_or_else(|| {
                    StoreError::broken(format!("handler `{handler}` is not deployed"))
                })?;
                let stored = entry
                    .versions
                    .iter()
                    .find(|v| v.version == *version)
                    .ok_or_else(|| {
                        StoreError::broken(format!("handler `{handler}` has no version {version}"))
                    })?
                    .deployment(handler)?;
                entry.active = Some(*version);
                Ok(Applied::Activated(stored))
            }
            DeploymentChange::Adopt {
                handler,
                entry: said,
            } => {
                let entry = self.handlers.get_mut(handler.as_str()).ok_or_else(|| {
                    StoreError::broken(format!("handler `{handler}` is not deployed"))
                })?;
                entry.owner = Origin::Manifest;
                entry.manifest = Some((said.module_sha256.clone(), said.settings.to_json()));
                Ok(Applied::Adopted(handler.clone()))
            }
            DeploymentChange::Remove { handler, by, .. } => {
                if let Some(entry) = self.handlers.get_mut(handler.as_str()) {
                    entry.active = None;
                    if *by == Origin::Manifest {
                        entry.manifest = None;
                    }
                }
                Ok(Applied::Removed {
                    handler: handler.clone(),
                    dead_lettered: 0,
                })
            }
        }
    }
}

#[async_trait::async_trait]
impl RemoteState for ClusterStore {
    async fn get_versioned(
        &self,
        handler: &HandlerName,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, i64)> {
        match self.last(&self.subjects.state(handler, key)).await? {
            None => Ok((None, 0)),
            Some(message) => {
                let deleted = message.headers.get(records::DELETED).is_some();
                let value = (!deleted).then(|| message.payload.to_vec());
                Ok((value, message.seq as i64))
            }
        }
    }

    async fn list_keys(&self, handler: &HandlerName, prefix: &str) -> Result<Vec<String>> {
        let mut keys = BTreeSet::new();
        let filter = self.subjects.state_keys(handler);
        self.scan(&filter, 0, |message| {
            if message.headers.get(records::DELETED).is_none()
                && let Some(key) = self.subjects.state_key_of(handler, &message.subject)
                && key.starts_with(prefix)
            {
                keys.insert(key);
            }
            Ok(true)
        })
        .await?;
        Ok(keys.into_iter().collect())
    }
}

/// The state reader of `handler` on `store`.
pub fn state_reader(store: &Arc<ClusterStore>, handler: &HandlerName) -> StateReader {
    StateReader::remote(handler.clone(), store.clone())
}

/// [`Backend`] needs a `'static` owner of the store to hand out state readers.
pub struct ClusterBackend(pub Arc<ClusterStore>);

#[async_trait::async_trait]
impl Backend for ClusterBackend {
    async fn append(&self, events: Vec<Routed>) -> StoreResult<Vec<(Routed, Appended)>> {
        let outcomes = self.0.append_routed(&events).await?;
        Ok(events.into_iter().zip(outcomes).collect())
    }

    fn write_failure(&self) -> Option<String> {
        if self.0.client.connection_state() != async_nats::connection::State::Connected {
            return Some("not connected to NATS".to_owned());
        }
        self.0.failure.lock().expect("not poisoned").clone()
    }

    async fn probe_write(&self) -> StoreResult<()> {
        match self.0.js.query_account().await {
            Ok(_) => {
                *self.0.failure.lock().expect("not poisoned") = None;
                Ok(())
            }
            Err(err) => Err(StoreError::unavailable(format!(
                "JetStream is unavailable: {err}"
            ))),
        }
    }

    async fn events(&self, query: EventQuery) -> StoreResult<Vec<LoggedEvent>> {
        let store = &self.0;
        let filter = match &query.ty {
            Some(ty) => store.subjects.events_of_type(ty),
            None => store.subjects.events(),
        };
        let mut found = Vec::new();
        let mut data_bytes = 0usize;
        let after = query.after.map_or(0, |after| after.max(0) as u64);
        store
            .scan(&filter, after, |message| {
                let event = decode_event(
                    message.seq,
                    &message.subject,
                    &message.headers,
                    &message.payload,
                )?;
                let matches = query.ty.as_deref().is_none_or(|ty| event.event.ty() == ty)
                    && query
                        .source
                        .as_deref()
                        .is_none_or(|s| event.event.source() == s)
                    && query
                        .subject
                        .as_deref()
                        .is_none_or(|s| event.event.subject() == Some(s));
                if matches {
                    data_bytes += event.event.data().map_or(0, <[u8]>::len);
                    found.push(event);
                }
                let full = found.len() >= query.limit as usize
                    || query.data_bytes.is_some_and(|limit| data_bytes >= limit);
                Ok(!full)
            })
            .await
            .map_err(unavailable)?;
        let mut logged = Vec::with_capacity(found.len());
        for event in found {
            let mut deliveries = Vec::with_capacity(event.routes.len());
            for handler in &event.routes {
                deliveries.push(
                    store
                        .delivery_of(&event, handler)
                        .await
                        .map_err(unavailable)?,
                );
            }
            logged.push(LoggedEvent {
                seq: event.seq as i64,
                received_at_ms: event.received_at_ms,
                event: event.event,
                deliveries,
            });
        }
        Ok(logged)
    }

    async fn dead_letters(&self, query: DeadLetterQuery) -> StoreResult<Vec<DeadLetter>> {
        let store = &self.0;
        if let Some(id) = query.id {
            let Ok(seq) = u64::try_from(id) else {
                return Ok(Vec::new());
            };
            let message = store.at(seq).await.map_err(unavailable)?;
            return Ok(match message {
                Some(message) if store.subjects.handler_of_dead(&message.subject).is_some() => {
                    store
                        .dead_letter_at(&message)
                        .await
                        .map_err(unavailable)?
                        .into_iter()
                        .collect()
                }
                _ => Vec::new(),
            });
        }
        let handler = match &query.handler {
            Some(name) => match HandlerName::new(name.as_str()) {
                Ok(name) => Some(name),
                Err(_) => return Ok(Vec::new()),
            },
            None => None,
        };
        let filter = store.subjects.dead_letters(handler.as_ref());
        let mut messages = Vec::new();
        let after = query.after.map_or(0, |after| after.max(0) as u64);
        store
            .scan(&filter, after, |message| {
                messages.push(message);
                Ok(true)
            })
            .await
            .map_err(unavailable)?;
        let mut letters = Vec::new();
        for message in messages {
            if letters.len() >= query.limit as usize {
                break;
            }
            if let Some(letter) = store.dead_letter_at(&message).await.map_err(unavailable)?
                && query.ty.as_deref().is_none_or(|ty| letter.event.ty() == ty)
            {
                letters.push(letter);
            }
        }
        Ok(letters)
    }

    async fn redrive(&self, target: RedriveTarget) -> StoreResult<Vec<HandlerName>> {
        let ids: Vec<i64> = match target {
            RedriveTarget::Delivery(id) => vec![id],
            RedriveTarget::Handler(handler) => self
                .dead_letters(DeadLetterQuery {
                    handler: Some(handler.to_string()),
                    limit: u32::MAX,
                    ..DeadLetterQuery::default()
                })
                .await?
                .into_iter()
                .map(|letter| letter.id)
                .collect(),
        };
        let mut handlers = BTreeSet::new();
        for id in ids {
            if let Some(handler) = self.0.clear_dead(id, Cleared::Redriven).await? {
                handlers.insert(handler);
            }
        }
        Ok(handlers.into_iter().collect())
    }

    async fn discard(&self, id: i64) -> StoreResult<bool> {
        Ok(self.0.clear_dead(id, Cleared::Discarded).await?.is_some())
    }

    fn state_reader(&self, handler: &HandlerName) -> StateReader {
        state_reader(&self.0, handler)
    }

    async fn dead_counts(&self) -> StoreResult<Vec<(HandlerName, u64)>> {
        let letters = self
            .dead_letters(DeadLetterQuery {
                limit: u32::MAX,
                ..DeadLetterQuery::default()
            })
            .await?;
        let mut counts: BTreeMap<HandlerName, u64> = BTreeMap::new();
        for letter in letters {
            *counts.entry(letter.handler).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }

    async fn pending_counts(&self) -> StoreResult<Vec<(HandlerName, u64)>> {
        let store = &self.0;
        let mut counts: BTreeMap<HandlerName, u64> = BTreeMap::new();
        let mut listed = store.stream.consumers();
        while let Some(info) = listed.next().await {
            let info = info.map_err(|err| StoreError::unavailable(err.to_string()))?;
            let owner = info.name.split("-G").next().unwrap_or(&info.name);
            if let Ok(handler) = HandlerName::new(owner) {
                *counts.entry(handler).or_default() +=
                    info.num_pending + info.num_ack_pending as u64;
            }
        }
        Ok(counts.into_iter().collect())
    }

    async fn handler_records(&self) -> StoreResult<Vec<HandlerRecord>> {
        let (book, _) = self.0.read_book().await?;
        let mut records = Vec::new();
        for (name, entry) in &book.handlers {
            let name = handler_name(name)?;
            let active = match entry.active {
                Some(version) => entry
                    .versions
                    .iter()
                    .find(|v| v.version == version)
                    .map(|v| v.deployment(&name))
                    .transpose()?,
                None => None,
            };
            let manifest = match &entry.manifest {
                Some((module_sha256, json)) => Some(ManifestEntry {
                    module_sha256: module_sha256.clone(),
                    settings: settings(&name, json)?,
                }),
                None => None,
            };
            records.push(HandlerRecord {
                name,
                owner: entry.owner,
                active,
                manifest,
            });
        }
        Ok(records)
    }

    async fn versions(&self, handler: &HandlerName) -> StoreResult<Vec<Deployment>> {
        let (book, _) = self.0.read_book().await?;
        match book.handlers.get(handler.as_str()) {
            Some(entry) => entry
                .versions
                .iter()
                .map(|v| v.deployment(handler))
                .collect(),
            None => Ok(Vec::new()),
        }
    }

    async fn apply_deployments(&self, changes: Vec<DeploymentChange>) -> StoreResult<Vec<Applied>> {
        let store = &self.0;
        // Modules first: a host that reads the new records must find their modules.
        for change in &changes {
            if let DeploymentChange::Deploy {
                module_sha256,
                module: Some(bytes),
                ..
            } = change
            {
                store.put_module(module_sha256, bytes).await?;
            }
        }
        let (mut book, revision) = store.read_book().await?;
        let now = now_ms();
        let mut applied = Vec::with_capacity(changes.len());
        for change in &changes {
            applied.push(book.apply(change, now)?);
        }
        let bytes = Bytes::from(serde_json::to_vec(&book).expect("the book serializes"));
        let written = match revision {
            0 => store
                .book
                .create(BOOK_KEY, bytes)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            revision => store
                .book
                .update(BOOK_KEY, bytes, revision)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        if let Err(why) = written {
            return Err(StoreError::unavailable(format!(
                "the deployment records changed on another host meanwhile, or JetStream is \
                 unavailable ({why}); try again"
            )));
        }
        // What was pending for a removed handler becomes dead letters, as on one host.
        for applied in &mut applied {
            if let Applied::Removed {
                handler,
                dead_lettered,
            } = applied
            {
                let reason = changes
                    .iter()
                    .find_map(|c| match c {
                        DeploymentChange::Remove {
                            handler: h, reason, ..
                        } if h == handler => Some(reason.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| crate::deploy::REMOVED_REASON.to_owned());
                *dead_lettered = store
                    .drain_removed(handler, &reason)
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(applied)
    }

    async fn module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        use tokio::io::AsyncReadExt;
        let mut object = match self.0.modules.get(sha256).await {
            Ok(object) => object,
            Err(err) if err.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(StoreError::unavailable(format!(
                    "failed to read module {sha256}: {err}"
                )));
            }
        };
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(|err| {
            StoreError::unavailable(format!("failed to read module {sha256}: {err}"))
        })?;
        Ok(Some(bytes))
    }

    async fn dead_letter_orphans(&self, _reason: &str) -> StoreResult<usize> {
        // A removal drains its handler's consumers itself (`drain_removed`).
        Ok(0)
    }

    async fn schema_book(&self) -> StoreResult<Option<StoredBook>> {
        match self.0.book.entry(SCHEMAS_KEY).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                let text = String::from_utf8(entry.value.to_vec()).map_err(|err| {
                    StoreError::broken(format!("the schema book is not UTF-8: {err}"))
                })?;
                Ok(Some(StoredBook {
                    text,
                    revision: entry.revision,
                }))
            }
            Ok(_) => Ok(None),
            Err(err) => Err(StoreError::unavailable(format!(
                "failed to read the schema book: {err}"
            ))),
        }
    }

    async fn put_schema_book(
        &self,
        text: String,
        expected: u64,
        modules: Vec<(String, Arc<[u8]>)>,
    ) -> StoreResult<BookWrite> {
        // Modules first: a book never names a module that is not there. One the change
        // was refused for stays unnamed, which is harmless.
        for (sha256, bytes) in &modules {
            self.0.put_module(&upcaster_object(sha256), bytes).await?;
        }
        let bytes = Bytes::from(text.into_bytes());
        let written = match expected {
            0 => self.0.book.create(SCHEMAS_KEY, bytes).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            }),
            revision => self
                .0
                .book
                .update(SCHEMAS_KEY, bytes, revision)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
        };
        match written {
            Ok(revision) => Ok(BookWrite::Written(revision)),
            Err((true, _)) => Ok(BookWrite::Stale),
            Err((false, why)) => Err(StoreError::unavailable(format!(
                "failed to write the schema book: {why}"
            ))),
        }
    }

    async fn upcaster_module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        self.module(&upcaster_object(sha256)).await
    }

    async fn pending_types(
        &self,
        _handler: &HandlerName,
    ) -> StoreResult<Option<Vec<(String, u64)>>> {
        Ok(None)
    }

    async fn compact(&self) -> StoreResult<Option<Compacted>> {
        Ok(None)
    }

    async fn refresh_size_metrics(&self) -> StoreResult<()> {
        Ok(())
    }
}
