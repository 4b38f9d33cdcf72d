//! The single writer thread and its group commit.
//!
//! Why one thread: SQLite allows one writer at a time anyway, and an fsync costs the same for
//! one row as for a thousand. So every write request is queued to this thread, which takes
//! all requests waiting when it starts a transaction (up to [`MAX_GROUP`] requests or
//! [`MAX_GROUP_ROWS`] rows, whichever comes first), applies each in
//! its own savepoint (one request's failure does not undo the others'), commits once, and
//! only then answers each request. Under load, many concurrent POSTs share one fsync; with a
//! single client, a request waits for no one.
//!
//! Upkeep that SQLite runs only outside a transaction (a WAL checkpoint, an incremental
//! vacuum) is queued the same way and runs alone on this thread, between two groups: it
//! never contends with the writer for SQLite's write lock, and writes queue behind it as
//! behind one group, so each upkeep step is kept short.

use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use std::sync::Arc;

use super::schema;
use super::{StoreError, StoreErrorKind};
use crate::metrics::StoreMetrics;

/// Requests applied in one transaction at most; bounds the latency one commit adds.
const MAX_GROUP: usize = 512;

/// Rows a group writes at most, as its requests estimate them (an event and its deliveries,
/// a commit's writes and emits): a group closes once past it, so that a few large batches
/// cannot make one commit, and every 202 waiting on it, as slow as thousands of small ones.
const MAX_GROUP_ROWS: usize = 4096;

/// One write request: applied to the group's transaction (inside its own savepoint) at the
/// group's time, it returns the answer to send once the group's commit is durable; or, when
/// the group's transaction could not even begin, refused with that error.
pub(super) trait Job: Send {
    /// About how many rows it writes.
    fn rows(&self) -> usize;
    fn apply(self: Box<Self>, tx: &mut Transaction<'_>, now: i64) -> Box<dyn Answer>;
    fn refuse(self: Box<Self>, error: &anyhow::Error);
}

/// A request's result, held until the group's commit decides whether it stands.
pub(super) trait Answer: Send {
    /// The kind of failure the request itself met, if it failed (its savepoint rolled back;
    /// the rest of the group stands).
    fn failure(&self) -> Option<StoreErrorKind>;
    /// The commit succeeded: send the result.
    fn send(self: Box<Self>);
    /// The commit failed: nothing of this request is durable.
    fn send_error(self: Box<Self>, error: &anyhow::Error);
}

struct Reply<T> {
    to: oneshot::Sender<Result<T, StoreError>>,
    result: Result<T>,
}

impl<T: Send> Answer for Reply<T> {
    fn failure(&self) -> Option<StoreErrorKind> {
        let error = self.result.as_ref().err()?;
        Some(StoreError::classify(error).kind())
    }

    fn send(self: Box<Self>) {
        let result = self.result.map_err(|err| StoreError::classify(&err));
        // A requester that gave up (its HTTP client left) is no reason to stop.
        drop(self.to.send(result));
    }

    fn send_error(self: Box<Self>, error: &anyhow::Error) {
        let error = StoreError::classify(error).context("the store failed to commit");
        drop(self.to.send(Err(error)));
    }
}

struct Request<T, F> {
    to: oneshot::Sender<Result<T, StoreError>>,
    rows: usize,
    apply: F,
}

impl<T, F> Job for Request<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
{
    fn rows(&self) -> usize {
        self.rows
    }

    fn apply(self: Box<Self>, tx: &mut Transaction<'_>, now: i64) -> Box<dyn Answer> {
        let Request { to, apply, .. } = *self;
        let result = (|| {
            let savepoint = tx.savepoint()?;
            let result = apply(&savepoint, now)?;
            savepoint.commit()?;
            Ok(result)
        })();
        Box::new(Reply { to, result })
    }

    fn refuse(self: Box<Self>, error: &anyhow::Error) {
        let error = StoreError::classify(error).context("the store could not begin a write");
        drop(self.to.send(Err(error)));
    }
}

/// Wrap `apply`, which writes about `rows` rows, as a [`Job`] whose result goes to `to`.
/// `apply` runs in a savepoint of its own, so that its failure rolls back only itself, not
/// the rest of the group.
pub(super) fn job<T, F>(
    to: oneshot::Sender<Result<T, StoreError>>,
    rows: usize,
    apply: F,
) -> Box<dyn Job>
where
    T: Send + 'static,
    F: FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
{
    Box::new(Request { to, rows, apply })
}

/// Whether the store can write, for readiness: set when a write meets a full disk or an I/O
/// failure, cleared only by a successful probe ([`super::Store::probe_write`]). Not by any
/// successful write: on a nearly full disk a small commit can fit where events do not, and
/// readiness would flap between each.
#[derive(Debug, Default)]
pub(super) struct Health {
    failure: std::sync::Mutex<Option<String>>,
}

impl Health {
    fn failed(&self, why: String) {
        let mut last = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none() {
            tracing::warn!(why, "the store cannot write: not ready");
        }
        *last = Some(why);
    }

    pub(super) fn recovered(&self) {
        let mut last = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if last.take().is_some() {
            tracing::info!("the store writes again: ready");
        }
    }

    pub(super) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Whether a failure of this kind means the store cannot write at all (rather than one
/// request being wrong).
fn is_unwritable(kind: StoreErrorKind) -> bool {
    matches!(kind, StoreErrorKind::Full | StoreErrorKind::Busy)
}

fn describe(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::Full => "the disk or the database is full",
        StoreErrorKind::Busy => "the disk failed a write",
        StoreErrorKind::Broken => "the store is broken",
    }
}

/// What the writer thread is asked to do.
pub(super) enum Message {
    /// A write, applied in the next group.
    Write(Box<dyn Job>),
    /// Upkeep, run on the connection outside any transaction, after the group before it
    /// committed; it answers its requester itself.
    Upkeep(Box<dyn FnOnce(&mut Connection) + Send>),
}

pub(super) struct Writer {
    queue: mpsc::Sender<Message>,
}

impl Writer {
    pub(super) fn spawn(
        conn: Connection,
        metrics: StoreMetrics,
        health: Arc<Health>,
    ) -> Result<Writer> {
        let (queue, requests) = mpsc::channel();
        std::thread::Builder::new()
            .name("evhost-store-writer".into())
            .spawn(move || run(conn, requests, &metrics, &health))
            .context("failed to start the store writer thread")?;
        Ok(Writer { queue })
    }

    pub(super) fn send(&self, job: Box<dyn Job>) -> Result<(), StoreError> {
        self.queue
            .send(Message::Write(job))
            .map_err(|_| StoreError::broken("the store writer stopped"))
    }

    /// Queue `upkeep` to run outside a transaction, in order with the writes.
    pub(super) fn upkeep(
        &self,
        upkeep: Box<dyn FnOnce(&mut Connection) + Send>,
    ) -> Result<(), StoreError> {
        self.queue
            .send(Message::Upkeep(upkeep))
            .map_err(|_| StoreError::broken("the store writer stopped"))
    }
}

fn run(
    mut conn: Connection,
    requests: mpsc::Receiver<Message>,
    metrics: &StoreMetrics,
    health: &Health,
) {
    // An upkeep met while a group was being gathered: it runs once that group committed.
    let mut held: Option<Message> = None;
    // Ends when every `Store` handle is dropped.
    loop {
        let next = match held.take() {
            Some(message) => message,
            None => match requests.recv() {
                Ok(message) => message,
                Err(_) => return,
            },
        };
        let first = match next {
            Message::Write(job) => job,
            Message::Upkeep(upkeep) => {
                upkeep(&mut conn);
                continue;
            }
        };
        let mut rows = first.rows();
        let mut group = vec![first];
        while group.len() < MAX_GROUP && rows < MAX_GROUP_ROWS {
            match requests.try_recv() {
                Ok(Message::Write(op)) => {
                    rows += op.rows();
                    group.push(op);
                }
                Ok(upkeep @ Message::Upkeep(_)) => {
                    held = Some(upkeep);
                    break;
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let size = group.len() as u64;
        let outcome = apply_group(&mut conn, group);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.commit_batch.observe(size as f64);
        match outcome {
            Ok(answers) => {
                if let Some(kind) = answers
                    .iter()
                    .filter_map(|a| a.failure())
                    .find(|kind| is_unwritable(*kind))
                {
                    health.failed(describe(kind).to_owned());
                }
                answers.into_iter().for_each(|a| a.send());
            }
            Err((error, answers)) => {
                tracing::error!(error = format!("{error:#}"), "store commit failed");
                let kind = StoreError::classify(&error).kind();
                if is_unwritable(kind) {
                    health.failed(format!("{}: {error:#}", describe(kind)));
                }
                answers.into_iter().for_each(|a| a.send_error(&error));
            }
        }
    }
}

type GroupError = (anyhow::Error, Vec<Box<dyn Answer>>);

fn apply_group(
    conn: &mut Connection,
    group: Vec<Box<dyn Job>>,
) -> Result<Vec<Box<dyn Answer>>, GroupError> {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        // Nothing was applied: every request of the group learns why.
        Err(err) => {
            let error = anyhow::Error::from(err).context("failed to begin");
            for job in group {
                job.refuse(&error);
            }
            return Err((error, Vec::new()));
        }
    };
    let now = schema::tx_now();
    let answers: Vec<Box<dyn Answer>> = group
        .into_iter()
        .map(|job| job.apply(&mut tx, now))
        .collect();
    match tx.commit() {
        Ok(()) => Ok(answers),
        Err(err) => Err((err.into(), answers)),
    }
}
