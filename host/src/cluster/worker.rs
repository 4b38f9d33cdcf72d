//! A cluster host's side of delivery: for each live handler, pull from its consumers (as
//! [`super::consumers`] lays them out), run each delivery on the runtime, and commit its
//! outcome in one atomic write; every host does the same on the same consumers, and
//! JetStream hands each delivery to one of them at a time.
//!
//! # One delivery
//!
//! 1. The message names the event (a redrive names it by subject); an event not routed to
//!    this handler at ingest is acknowledged and skipped.
//! 2. A delivery with a done record is acknowledged and skipped: its effects are committed
//!    (a host died between commit and acknowledgement, or another host ran it).
//! 3. The handler runs on the version live now. Its state reads are JetStream reads, each
//!    with the key's revision.
//! 4. Success: one atomic write of the done record (only if there is none), the state
//!    writes (each only if the key is still at the revision read), checks of the keys read
//!    and not written, and the emitted events (each only if its id is new). Then the
//!    acknowledgement.
//!    A failed check either finds the done record (someone else committed: skip) or means a
//!    key changed: run again on fresh state, no attempt counted.
//! 5. Failure: the attempt is recorded; a retry waits in place for an ordered consumer
//!    (keeping its key's line), or is handed back to JetStream with the backoff as delay
//!    for an unordered one; past `max_attempts`, or on `reject`, a dead letter is written.
//!
//! While a delivery is held, its host tells the server so every [`PROGRESS_EVERY`]; if the
//! host dies, the server hands the delivery to another host after [`ACK_WAIT`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::batch::{BatchError, Outbound};
use super::consumers::{ACK_WAIT, ConsumerSpec, PROGRESS_EVERY, consumers_of, is_consumer_of};
use super::records::{self, AttemptsRecord, DoneRecord, StoredEvent, to_payload};
use super::store::{ClusterStore, CommitOutcome, state_reader};
use super::subjects::EventKey;
use crate::capabilities::Staged;
use crate::config::Rate;
use crate::live::{HandlerSlot, Live, Workers};
use crate::metrics::{Metrics, Outcome};
use crate::name::HandlerName;
use crate::runtime::{DeployedHandler, InvokeError, Runtime};
use crate::scheduler::{TokenBucket, backoff_delay, past_hop_limit};
use crate::store::now_ms;

/// How often a handler's supervisor looks whether its consumers must change.
const LAYOUT_CHECK: Duration = Duration::from_secs(1);

/// After JetStream could not be reached, a host waits this long before trying again.
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(500);

/// After the host had no room for an instance, the delivery waits this long (no attempt).
const NO_CAPACITY_PAUSE: Duration = Duration::from_millis(250);

/// How far before a handler's deploy its first consumers start reading (module docs of
/// [`Inner::ensure_consumers`]).
const CLOCK_MARGIN_MS: i64 = 60_000;

/// Times a delivery is re-run because a state key it read changed before its commit.
const MAX_CONFLICT_RERUNS: u32 = 100;

/// Messages one pull asks for at most: small enough that a busy consumer's work spreads
/// over the hosts pulling from it.
const MAX_PULL_BATCH: i64 = 16;

/// The cluster's workers: one supervisor per live handler.
#[derive(Clone)]
pub struct ClusterWorkers {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<ClusterStore>,
    runtime: Arc<Runtime>,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    /// What this host runs at once over all handlers (`--max-in-flight`), if it is bounded.
    host_slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl ClusterWorkers {
    pub fn new(
        store: Arc<ClusterStore>,
        runtime: Arc<Runtime>,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
        max_in_flight: Option<usize>,
    ) -> ClusterWorkers {
        ClusterWorkers {
            inner: Arc::new(Inner {
                store,
                runtime,
                live,
                metrics,
                shutdown: watch::channel(false).0,
                host_slots: max_in_flight.map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            }),
        }
    }

    /// Stop pulling, and give running invocations `grace` to finish; what does not finish
    /// is not acknowledged, and JetStream hands it to another host.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.send_replace(true);
        let live = self.inner.live.current();
        if tokio::time::timeout(grace, live.all_idle()).await.is_err() {
            tracing::warn!(
                ?grace,
                "invocations still running at shutdown; other hosts take them over"
            );
        }
    }
}

impl Workers for ClusterWorkers {
    fn start_worker(&self, name: HandlerName, slot: Arc<HandlerSlot>) {
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.supervise(name, slot).await });
    }
}

/// The consumers a supervisor pulls from now, and how to stop them.
struct Pulling {
    specs: Vec<ConsumerSpec>,
    rate: Option<Rate>,
    stop: watch::Sender<bool>,
}

/// A handler's `rate`, counted on this host: what one host starts, not the cluster.
type HostRate = Arc<std::sync::Mutex<Option<TokenBucket>>>;

impl Inner {
    /// Keep `name`'s consumers as its live settings want them, and pull from them, until
    /// the handler is retired or the host stops.
    async fn supervise(self: Arc<Self>, name: HandlerName, slot: Arc<HandlerSlot>) {
        let mut shutdown = self.shutdown.subscribe();
        let mut pulling: Option<Pulling> = None;
        loop {
            if slot.is_retired() || *shutdown.borrow() {
                break;
            }
            let deployed = self.live_version(&name, &slot);
            if let Some(deployed) = deployed {
                let specs = consumers_of(self.store.subjects(), &name, deployed.settings());
                let rate = deployed.settings().rate;
                if pulling
                    .as_ref()
                    .is_none_or(|p| p.specs != specs || p.rate != rate)
                {
                    if let Some(old) = pulling.take() {
                        old.stop.send_replace(true);
                    }
                    match self.ensure_consumers(&name, &deployed, &specs).await {
                        Ok(()) => {
                            let (stop, _) = watch::channel(false);
                            let bucket: HostRate = Arc::new(std::sync::Mutex::new(
                                rate.map(|rate| TokenBucket::new(rate, now_ms())),
                            ));
                            for spec in &specs {
                                let inner = self.clone();
                                let (name, slot, spec) = (name.clone(), slot.clone(), spec.clone());
                                let stop = stop.subscribe();
                                let bucket = bucket.clone();
                                tokio::spawn(async move {
                                    inner.pull(name, slot, spec, bucket, stop).await
                                });
                            }
                            pulling = Some(Pulling { specs, rate, stop });
                        }
                        Err(err) => tracing::warn!(
                            handler = name.as_str(),
                            error = %format!("{err:#}"),
                            "failed to set up the handler's consumers; trying again"
                        ),
                    }
                }
            }
            if let Some(pulling) = &pulling {
                self.count_pending(&slot, &pulling.specs).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(LAYOUT_CHECK) => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Some(old) = pulling {
            old.stop.send_replace(true);
        }
    }

    /// What the handler's consumers hold over all hosts (handed out and not), as its queue's
    /// count: what ingress's back-pressure weighs. Events of its types not routed to it
    /// count too until they are skipped, so it errs on the high side.
    async fn count_pending(&self, slot: &HandlerSlot, specs: &[ConsumerSpec]) {
        let mut pending = 0;
        for spec in specs {
            match self.store.stream().consumer_info(&spec.name).await {
                Ok(info) => pending += info.num_pending + info.num_ack_pending as u64,
                Err(_) => return,
            }
        }
        slot.queue.set_pending(pending);
    }

    fn live_version(
        &self,
        name: &HandlerName,
        slot: &Arc<HandlerSlot>,
    ) -> Option<Arc<DeployedHandler>> {
        self.live.version_in(name, slot)
    }

    /// Make the stream's consumers of `name` be `specs`. Consumers a newer version laid out
    /// are left alone (this host will run that version shortly). A consumer made for a new
    /// layout starts where the oldest replaced one had everything acknowledged, so nothing
    /// queued is lost in the change; what it hands out again that was done is skipped.
    async fn ensure_consumers(
        &self,
        name: &HandlerName,
        deployed: &DeployedHandler,
        specs: &[ConsumerSpec],
    ) -> anyhow::Result<()> {
        let stream = self.store.stream();
        let mut existing = BTreeMap::new();
        let mut listed = stream.consumers();
        while let Some(info) = listed.next().await {
            let info = info.map_err(|err| anyhow!("failed to list consumers: {err}"))?;
            if is_consumer_of(&info.name, name) {
                existing.insert(info.name.clone(), info);
            }
        }
        let newer = existing
            .values()
            .filter_map(|info| version_of(info.config.description.as_deref()))
            .any(|version| version > deployed.version());
        if newer {
            anyhow::bail!("its consumers belong to a newer version than this host runs");
        }
        let wanted: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let replaced: Vec<_> = existing
            .values()
            .filter(|info| !wanted.contains(&info.name.as_str()))
            .collect();
        let start_after = replaced
            .iter()
            .map(|info| info.ack_floor.stream_sequence)
            .min();
        for spec in specs {
            let mut config = consumer::pull::Config {
                durable_name: Some(spec.name.clone()),
                description: Some(format!("evhost {name} v{}", deployed.version())),
                filter_subjects: spec.filters.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: spec.max_ack_pending,
                max_deliver: -1,
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            };
            match existing.get(&spec.name) {
                Some(info) => {
                    // Keep the start it was made with: JetStream refuses to change it.
                    config.deliver_policy = info.config.deliver_policy;
                    let same = info.config.filter_subjects == config.filter_subjects
                        && info.config.max_ack_pending == config.max_ack_pending
                        && info.config.description == config.description;
                    if !same {
                        stream.update_consumer(config).await.map_err(|err| {
                            anyhow!("failed to update consumer {}: {err}", spec.name)
                        })?;
                    }
                }
                None => {
                    config.deliver_policy = match start_after {
                        Some(after) => consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: after + 1,
                        },
                        // A new handler: from a little before its version was deployed, so
                        // that an event routed to it before its consumers existed (the host
                        // serves before this task has run) is not missed, whatever the skew
                        // between this host's clock and the server's. Older events are not
                        // routed to it and are skipped.
                        None => consumer::DeliverPolicy::ByStartTime {
                            start_time: chrono::DateTime::from_timestamp_millis(
                                deployed.deployment().deployed_at_ms - CLOCK_MARGIN_MS,
                            )
                            .unwrap_or_default(),
                        },
                    };
                    stream
                        .create_consumer(config)
                        .await
                        .map_err(|err| anyhow!("failed to create consumer {}: {err}", spec.name))?;
                }
            }
        }
        for info in replaced {
            // Another host may have deleted it already.
            let _ = stream.delete_consumer(&info.name).await;
        }
        Ok(())
    }

    /// Pull `spec`'s deliveries and run them until told to stop.
    async fn pull(
        self: Arc<Self>,
        name: HandlerName,
        slot: Arc<HandlerSlot>,
        spec: ConsumerSpec,
        rate: HostRate,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut shutdown = self.shutdown.subscribe();
        'connect: loop {
            if *stop.borrow() || *shutdown.borrow() || slot.is_retired() {
                return;
            }
            let consumer: consumer::PullConsumer = match self
                .store
                .stream()
                .get_consumer(&spec.name)
                .await
            {
                Ok(consumer) => consumer,
                Err(err) => {
                    tracing::debug!(consumer = spec.name, error = %err, "consumer not there yet");
                    tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                    continue;
                }
            };
            let batch = spec.max_ack_pending.clamp(1, MAX_PULL_BATCH) as usize;
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(batch)
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(consumer = spec.name, error = %err, "failed to pull");
                    tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    _ = stop.changed() => return,
                    _ = shutdown.changed() => return,
                };
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        tracing::debug!(consumer = spec.name, error = %err, "pull interrupted");
                        tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                        continue 'connect;
                    }
                    None => continue 'connect,
                };
                while let Some(next_at) = take_token(&rate) {
                    let wait = Duration::from_millis((next_at - now_ms()).max(1) as u64);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                }
                // This host's share first: what it pulled beyond it waits here, unacknowledged
                // (the server counts it out, so other hosts get the rest).
                let host_permit = match &self.host_slots {
                    Some(slots) => match acquire_holding(slots, &message).await {
                        Some(permit) => Some(permit),
                        None => return,
                    },
                    None => None,
                };
                // JetStream bounds what is out across hosts; the permit is this host's count
                // of what runs (and what a shutdown waits for).
                let Ok(permit) = slot.permits().clone().acquire_owned().await else {
                    return;
                };
                let inner = self.clone();
                let (name, slot, ordered) = (name.clone(), slot.clone(), spec.ordered);
                self.runtime.spawn(async move {
                    inner.deliver(&name, &slot, ordered, message).await;
                    drop(permit);
                    drop(host_permit);
                });
            }
        }
    }

    /// Run one delivery to its end (module docs).
    async fn deliver(
        &self,
        name: &HandlerName,
        slot: &Arc<HandlerSlot>,
        ordered: bool,
        message: jetstream::Message,
    ) {
        let message = Arc::new(message);
        let heartbeat = {
            let message = message.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PROGRESS_EVERY).await;
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            })
        };
        let settled = self.run(name, slot, ordered, &message).await;
        heartbeat.abort();
        match settled {
            Settled::Ack => {
                slot.queue.settled();
                if let Err(err) = message.double_ack().await {
                    // The outcome is durable; the server hands the message out again and the
                    // done record makes that a no-op.
                    tracing::debug!(handler = name.as_str(), error = %err, "ack lost");
                }
            }
            Settled::Later(delay) => {
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
            Settled::Leave => {}
        }
    }

    async fn run(
        &self,
        name: &HandlerName,
        slot: &Arc<HandlerSlot>,
        ordered: bool,
        message: &jetstream::Message,
    ) -> Settled {
        let store = &self.store;
        let (event, key, first) = loop {
            match self.prepare(name, message).await {
                Ok(Some(found)) => break found,
                Ok(None) => return Settled::Ack,
                Err(err) => {
                    tracing::warn!(handler = name.as_str(), error = %format!("{err:#}"), "failed to read a delivery");
                    if self.stopping() {
                        return Settled::Leave;
                    }
                    tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                }
            }
        };
        // A first delivery has no attempts yet (were there some, recording the next one
        // would find them: its write expects none).
        let attempts = match first {
            true => Ok((AttemptsRecord::default(), 0)),
            false => store.attempts(name, &key).await,
        };
        let Ok((mut attempts, mut attempts_revision)) = attempts else {
            return Settled::Later(UNAVAILABLE_PAUSE);
        };
        let mut reruns = 0;
        loop {
            let Some(deployed) = self.live_version(name, slot) else {
                // Removed while this host held the delivery: it goes where the removal put
                // every delivery still waiting, among the dead letters.
                let reason = crate::deploy::REMOVED_REASON;
                return self
                    .dead_letter(name, &event, attempts, attempts_revision, reason)
                    .await;
            };
            let wait = attempts.next_at_ms - now_ms();
            if wait > 0 {
                let wait = Duration::from_millis(wait as u64);
                if !ordered {
                    return Settled::Later(wait);
                }
                tokio::time::sleep(wait).await;
            }
            let started = std::time::Instant::now();
            let reader = state_reader(store, name);
            let outcome = self
                .live
                .registry()
                .invoke(
                    &self.runtime,
                    &deployed,
                    &event.event,
                    event.seq as i64,
                    reader,
                )
                .await;
            self.metrics
                .handler_duration
                .with_label_values(&[name.as_str()])
                .observe(started.elapsed().as_secs_f64());
            let failure = match outcome {
                Ok(staged) => match self.commit(&deployed, &key, &attempts, staged).await {
                    Ok(Committed::Done) => {
                        self.count(name, Outcome::Ok);
                        return Settled::Ack;
                    }
                    Ok(Committed::AlreadyDone) => return Settled::Ack,
                    Ok(Committed::Conflict(_)) if reruns < MAX_CONFLICT_RERUNS => {
                        self.count(name, Outcome::Conflict);
                        reruns += 1;
                        continue;
                    }
                    Ok(Committed::Conflict(key)) => {
                        InvokeError::Conflict { key, reruns }.to_string()
                    }
                    Ok(Committed::Refused(why)) => why,
                    Err(err) => {
                        tracing::warn!(handler = name.as_str(), error = %err, "failed to commit; trying again");
                        if self.stopping() {
                            return Settled::Leave;
                        }
                        tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                        continue;
                    }
                },
                Err(error) if error.is_host_capacity() => {
                    tokio::time::sleep(NO_CAPACITY_PAUSE).await;
                    continue;
                }
                Err(error) if !error.is_retryable() => {
                    return self
                        .dead_letter(
                            name,
                            &event,
                            attempts,
                            attempts_revision,
                            &error.to_string(),
                        )
                        .await;
                }
                Err(error) => error.to_string(),
            };
            // A failed attempt.
            let settings = deployed.settings();
            let attempt = attempts.since_redrive() + 1;
            if attempt >= settings.max_attempts {
                return self
                    .dead_letter(name, &event, attempts, attempts_revision, &failure)
                    .await;
            }
            let delay = backoff_delay(&settings.backoff, attempt);
            let now = now_ms();
            attempts.failed(&failure, now, now + delay.as_millis() as i64);
            tracing::warn!(
                handler = name.as_str(),
                event_id = event.event.id(),
                attempt,
                error = failure,
                "delivery failed; will retry"
            );
            self.count(name, Outcome::Retry);
            let record =
                Outbound::new(store.subjects().attempts(name, &key), to_payload(&attempts))
                    .expect_last(attempts_revision);
            match store.write(vec![record]).await {
                Ok(committed) => attempts_revision = committed.last,
                Err(BatchError::Conflict(_)) => {
                    // Attempts were recorded elsewhere (an earlier run of it by another
                    // consumer or host): count from those.
                    match store.attempts(name, &key).await {
                        Ok((found, revision)) => {
                            attempts = found;
                            attempts_revision = revision;
                        }
                        Err(_) => return Settled::Later(UNAVAILABLE_PAUSE),
                    }
                    continue;
                }
                Err(err) => {
                    // Not recorded: the attempt is not counted; run it again later.
                    tracing::warn!(handler = name.as_str(), error = %err, "failed to record an attempt");
                    return Settled::Later(delay);
                }
            }
            if !ordered {
                return Settled::Later(delay);
            }
        }
    }

    /// The event and key of a delivery that still has to run, and whether this is its
    /// first delivery; or `None` (acknowledge it).
    ///
    /// A first delivery of an event is not looked up: it cannot have been done or dead yet,
    /// but for a consumer that reads again what another had handed out (a new layout, a new
    /// handler's margin), and there the commit's check of the done record keeps its effects
    /// from landing twice. That saves two reads per delivery.
    async fn prepare(
        &self,
        name: &HandlerName,
        message: &jetstream::Message,
    ) -> anyhow::Result<Option<(StoredEvent, EventKey, bool)>> {
        let store = &self.store;
        let Some(event) = store.event_of_message(name, message).await? else {
            return Ok(None);
        };
        let key = EventKey::of_event(&event.event);
        let redrive = store.subjects().is_redrive(message.subject.as_str());
        let first = !redrive && message.info().is_ok_and(|info| info.delivered == 1);
        if first {
            return Ok(Some((event, key, true)));
        }
        if store.done(name, &key).await?.is_some() {
            return Ok(None);
        }
        // A dead letter is settled until redriven; a redrive comes as its own message.
        if !redrive
            && let Some((dead, _)) = store.dead(name, &key).await?
            && dead.cleared.is_none()
        {
            return Ok(None);
        }
        Ok(Some((event, key, false)))
    }

    /// Commit a success (module docs, step 4).
    async fn commit(
        &self,
        deployed: &DeployedHandler,
        key: &EventKey,
        attempts: &AttemptsRecord,
        staged: Staged,
    ) -> Result<Committed, BatchError> {
        let store = &self.store;
        let subjects = store.subjects();
        let name = deployed.name();
        let live = self.live.current();
        if !staged.emitted.is_empty() {
            live.learn_emits(name, staged.emitted.iter().map(|e| e.ty()));
            if let Some(reason) = past_hop_limit(&live, name, &staged.emitted) {
                return Ok(Committed::Refused(reason));
            }
        }
        let emitted: Vec<_> = staged.emitted.into_iter().map(|e| live.route(e)).collect();
        let done = DoneRecord {
            version: deployed.version(),
            at_ms: now_ms(),
            attempts: attempts.since_redrive(),
            redrives: attempts.redrives,
            emitted: emitted.iter().map(|r| subjects.event(&r.event)).collect(),
        };
        let mut messages =
            vec![Outbound::new(subjects.done(name, key), to_payload(&done)).expect_last(0)];
        for (state_key, value) in &staged.state_writes {
            let subject = subjects.state(name, state_key);
            let mut write = match value {
                Some(value) => Outbound::new(subject, Bytes::from(value.clone())),
                None => Outbound::new(subject, Bytes::new()).header(records::DELETED, "1"),
            };
            if let Some(&revision) = staged.state_reads.get(state_key) {
                write = write.expect_last(revision as u64);
            }
            messages.push(write);
        }
        for (state_key, &revision) in &staged.state_reads {
            if !staged.state_writes.contains_key(state_key) {
                messages.push(
                    Outbound::new(subjects.read_checks(name), Bytes::new())
                        .expect_last_of(&subjects.state(name, state_key), revision as u64),
                );
            }
        }
        let received = now_ms();
        for routed in &emitted {
            messages.push(store.event_message(routed, received));
        }
        match store.commit(messages).await {
            Ok(CommitOutcome::Done(_)) => Ok(Committed::Done),
            Ok(CommitOutcome::Conflict(why)) => {
                let done = store
                    .done(name, key)
                    .await
                    .map_err(|err| BatchError::Unavailable(format!("{err:#}")))?;
                match done {
                    Some(_) => Ok(Committed::AlreadyDone),
                    None => Ok(Committed::Conflict(why)),
                }
            }
            Err(BatchError::Refused(why)) => Ok(Committed::Refused(format!(
                "the invocation's effects could not be committed: {why}"
            ))),
            Err(err) => Err(err),
        }
    }

    /// Dead-letter a delivery after `attempts` (recorded at `revision`) and this last
    /// failure, unless it is done: a handler removed while it waited goes the same way as
    /// what its removal found waiting.
    async fn dead_letter(
        &self,
        name: &HandlerName,
        event: &StoredEvent,
        mut attempts: AttemptsRecord,
        mut revision: u64,
        reason: &str,
    ) -> Settled {
        let key = EventKey::of_event(&event.event);
        for _ in 0..3 {
            let now = now_ms();
            let mut failed = attempts.clone();
            failed.failed(reason, now, 0);
            let messages = match self
                .store
                .dead_letter_messages(name, event, &failed, revision, reason, now)
                .await
            {
                Ok(messages) => messages,
                Err(_) => return Settled::Later(UNAVAILABLE_PAUSE),
            };
            match self.store.write(messages).await {
                Ok(_) => {
                    tracing::warn!(
                        handler = name.as_str(),
                        event_id = event.event.id(),
                        error = reason,
                        "delivery failed; dead-lettered"
                    );
                    self.count(name, Outcome::Dead);
                    return Settled::Ack;
                }
                // Done meanwhile (elsewhere), or its attempts were recorded by an earlier
                // run than this host knew of: look again.
                Err(BatchError::Conflict(_)) => {
                    match self.store.done(name, &key).await {
                        Ok(Some(_)) => return Settled::Ack,
                        Ok(None) => {}
                        Err(_) => return Settled::Later(UNAVAILABLE_PAUSE),
                    }
                    match self.store.attempts(name, &key).await {
                        Ok((found, at)) => (attempts, revision) = (found, at),
                        Err(_) => return Settled::Later(UNAVAILABLE_PAUSE),
                    }
                }
                Err(_) => return Settled::Later(UNAVAILABLE_PAUSE),
            }
        }
        Settled::Later(UNAVAILABLE_PAUSE)
    }

    fn count(&self, handler: &HandlerName, outcome: Outcome) {
        self.metrics
            .deliveries
            .with_label_values(&[handler.as_str(), outcome.as_str()])
            .inc();
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// What becomes of a consumer message once its delivery ran.
enum Settled {
    /// Settled (done, dead, or not this handler's): acknowledge.
    Ack,
    /// Hand it back to JetStream, to be handed out again after this long.
    Later(Duration),
    /// Neither: the server hands it out again after its ack wait (the host is stopping, or
    /// the handler was removed and its removal dead-letters it).
    Leave,
}

/// What a commit did.
enum Committed {
    Done,
    AlreadyDone,
    /// A state key read changed: run again.
    Conflict(String),
    /// The effects can never be committed (too many, past the hop limit): a failed attempt.
    Refused(String),
}

/// A permit of `slots`, telling the server meanwhile that `message` is being worked on, so
/// that it is not handed to another host while it waits here; `None` once closed.
async fn acquire_holding(
    slots: &Arc<tokio::sync::Semaphore>,
    message: &jetstream::Message,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let acquire = slots.clone().acquire_owned();
    tokio::pin!(acquire);
    loop {
        tokio::select! {
            permit = &mut acquire => return permit.ok(),
            _ = tokio::time::sleep(PROGRESS_EVERY) => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// Take a token of `rate` now, or say when (unix ms) the next one is there.
fn take_token(rate: &HostRate) -> Option<i64> {
    let mut bucket = rate.lock().expect("not poisoned");
    bucket.as_mut()?.try_take(now_ms()).err()
}

/// The version a consumer's description names (`evhost NAME vN`).
fn version_of(description: Option<&str>) -> Option<u32> {
    description?.rsplit(" v").next()?.parse().ok()
}
