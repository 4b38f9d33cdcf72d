//! What the pipeline's front and side (ingress, the admin API, the deployer) need of where an
//! app is kept: the embedded [`Store`], or in cluster mode the app's JetStream stream
//! ([`crate::cluster::ClusterStore`]). The scheduler is not behind it: each mode has its own
//! way of handing out deliveries (rows read from SQLite; consumers JetStream shares between
//! hosts).

use std::sync::Arc;

use super::{
    Appended, Applied, BookWrite, Compacted, DeadLetter, DeadLetterQuery, Deployment,
    DeploymentChange, EventQuery, HandlerRecord, LoggedEvent, RedriveTarget, StateReader, Store,
    StoreResult, StoredBook,
};
use crate::name::HandlerName;
use crate::router::Routed;

/// Where an app's events, deliveries, state and deployments are kept.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Append events with their deliveries; returns once durable. A duplicate (same source
    /// and id as a stored event) is not stored again.
    async fn append(&self, events: Vec<Routed>) -> StoreResult<Vec<(Routed, Appended)>>;
    /// Why the last write failed, while writes fail.
    fn write_failure(&self) -> Option<String>;
    /// Try a write now; it clears [`Backend::write_failure`] when it succeeds.
    async fn probe_write(&self) -> StoreResult<()>;

    async fn events(&self, query: EventQuery) -> StoreResult<Vec<LoggedEvent>>;
    async fn dead_letters(&self, query: DeadLetterQuery) -> StoreResult<Vec<DeadLetter>>;
    /// Make dead letters pending again; the handlers whose deliveries were redriven.
    async fn redrive(&self, target: RedriveTarget) -> StoreResult<Vec<HandlerName>>;
    /// Give a dead letter up for good; `false` when there is no such dead letter.
    async fn discard(&self, id: i64) -> StoreResult<bool>;
    fn state_reader(&self, handler: &HandlerName) -> StateReader;
    async fn dead_counts(&self) -> StoreResult<Vec<(HandlerName, u64)>>;
    async fn pending_counts(&self) -> StoreResult<Vec<(HandlerName, u64)>>;

    async fn handler_records(&self) -> StoreResult<Vec<HandlerRecord>>;
    async fn versions(&self, handler: &HandlerName) -> StoreResult<Vec<Deployment>>;
    /// Apply `changes` together, in order; returns once durable.
    async fn apply_deployments(&self, changes: Vec<DeploymentChange>) -> StoreResult<Vec<Applied>>;
    async fn module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Dead-letter what is pending for handlers no longer deployed, with `reason`.
    async fn dead_letter_orphans(&self, reason: &str) -> StoreResult<usize>;

    /// The schema registry's book ([`crate::schemas::book`]), if one was ever written.
    async fn schema_book(&self) -> StoreResult<Option<StoredBook>>;
    /// Write the book if the stored one is still at revision `expected` (0: none yet), with
    /// the upcaster modules it names that are new; returns once durable.
    async fn put_schema_book(
        &self,
        text: String,
        expected: u64,
        modules: Vec<(String, Arc<[u8]>)>,
    ) -> StoreResult<BookWrite>;
    async fn upcaster_module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>>;
    /// The types of `handler`'s unsettled deliveries, with their counts; `None` where the
    /// backend cannot tell (a cluster: JetStream counts a consumer's pending messages, not
    /// their types).
    async fn pending_types(&self, handler: &HandlerName)
    -> StoreResult<Option<Vec<(String, u64)>>>;

    /// Hand free space back and empty the write-ahead log (`evhost compact`); `None` where
    /// there is nothing of the kind to do (a cluster: JetStream compacts its own files).
    async fn compact(&self) -> StoreResult<Option<Compacted>>;
    async fn refresh_size_metrics(&self) -> StoreResult<()>;
}

#[async_trait::async_trait]
impl Backend for Store {
    async fn append(&self, events: Vec<Routed>) -> StoreResult<Vec<(Routed, Appended)>> {
        Store::append(self, events).await
    }
    fn write_failure(&self) -> Option<String> {
        Store::write_failure(self)
    }
    async fn probe_write(&self) -> StoreResult<()> {
        Store::probe_write(self).await
    }
    async fn events(&self, query: EventQuery) -> StoreResult<Vec<LoggedEvent>> {
        Store::events(self, query).await
    }
    async fn dead_letters(&self, query: DeadLetterQuery) -> StoreResult<Vec<DeadLetter>> {
        Store::dead_letters(self, query).await
    }
    async fn redrive(&self, target: RedriveTarget) -> StoreResult<Vec<HandlerName>> {
        Store::redrive(self, target).await
    }
    async fn discard(&self, id: i64) -> StoreResult<bool> {
        Store::discard(self, id).await
    }
    fn state_reader(&self, handler: &HandlerName) -> StateReader {
        Store::state_reader(self, handler)
    }
    async fn dead_counts(&self) -> StoreResult<Vec<(HandlerName, u64)>> {
        Store::dead_counts(self).await
    }
    async fn pending_counts(&self) -> StoreResult<Vec<(HandlerName, u64)>> {
        Store::pending_counts(self).await
    }
    async fn handler_records(&self) -> StoreResult<Vec<HandlerRecord>> {
        Store::handler_records(self).await
    }
    async fn versions(&self, handler: &HandlerName) -> StoreResult<Vec<Deployment>> {
        Store::versions(self, handler).await
    }
    async fn apply_deployments(&self, changes: Vec<DeploymentChange>) -> StoreResult<Vec<Applied>> {
        Store::apply_deployments(self, changes).await
    }
    async fn module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        Store::module(self, sha256).await
    }
    async fn dead_letter_orphans(&self, reason: &str) -> StoreResult<usize> {
        Store::dead_letter_orphans(self, reason).await
    }
    async fn schema_book(&self) -> StoreResult<Option<StoredBook>> {
        Store::schema_book(self).await
    }
    async fn put_schema_book(
        &self,
        text: String,
        expected: u64,
        modules: Vec<(String, Arc<[u8]>)>,
    ) -> StoreResult<BookWrite> {
        Store::put_schema_book(self, text, expected, modules).await
    }
    async fn upcaster_module(&self, sha256: &str) -> StoreResult<Option<Vec<u8>>> {
        Store::upcaster_module(self, sha256).await
    }
    async fn pending_types(
        &self,
        handler: &HandlerName,
    ) -> StoreResult<Option<Vec<(String, u64)>>> {
        Store::pending_types(self, handler).await.map(Some)
    }
    async fn compact(&self) -> StoreResult<Option<Compacted>> {
        Store::compact(self).await.map(Some)
    }
    async fn refresh_size_metrics(&self) -> StoreResult<()> {
        Store::refresh_size_metrics(self).await
    }
}

/// A backend shared by the parts of one host.
pub type SharedBackend = Arc<dyn Backend>;
