//! The single writer thread and its group commit.
//!
//! Why one thread: SQLite allows one writer at a time anyway, and an fsync costs the same for
//! one row as for a thousand. So every write request is queued to this thread, which takes
//! all requests waiting when it starts a transaction (up to [`MAX_GROUP`]), applies each in
//! its own savepoint (one request's failure does not undo the others'), commits once, and
//! only then answers each request. Under load, many concurrent POSTs share one fsync; with a
//! single client, a request waits for no one.

use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::StoreError;
use super::schema;
use crate::metrics::StoreMetrics;

/// Requests applied in one transaction at most; bounds the latency one commit adds.
const MAX_GROUP: usize = 512;

/// One write request: applied to the group's transaction (inside its own savepoint) at the
/// group's time, it returns the answer to send once the group's commit is durable.
pub(super) type Job = Box<dyn FnOnce(&mut Transaction<'_>, i64) -> Box<dyn Answer> + Send>;

/// A request's result, held until the group's commit decides whether it stands.
pub(super) trait Answer: Send {
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

/// Wrap `apply` as a [`Job`] whose result goes to `to`. `apply` runs in a savepoint of its
/// own, so that its failure rolls back only itself, not the rest of the group.
pub(super) fn job<T, F>(to: oneshot::Sender<Result<T, StoreError>>, apply: F) -> Job
where
    T: Send + 'static,
    F: FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
{
    Box::new(move |tx, now| {
        let result = (|| {
            let savepoint = tx.savepoint()?;
            let result = apply(&savepoint, now)?;
            savepoint.commit()?;
            Ok(result)
        })();
        Box::new(Reply { to, result })
    })
}

pub(super) struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    pub(super) fn spawn(conn: Connection, metrics: StoreMetrics) -> Result<Writer> {
        let (queue, requests) = mpsc::channel();
        std::thread::Builder::new()
            .name("evhost-store-writer".into())
            .spawn(move || run(conn, requests, &metrics))
            .context("failed to start the store writer thread")?;
        Ok(Writer { queue })
    }

    pub(super) fn send(&self, job: Job) -> Result<(), StoreError> {
        self.queue
            .send(job)
            .map_err(|_| StoreError::broken("the store writer stopped"))
    }
}

fn run(mut conn: Connection, requests: mpsc::Receiver<Job>, metrics: &StoreMetrics) {
    // Ends when every `Store` handle is dropped.
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(op) => group.push(op),
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
            Ok(answers) => answers.into_iter().for_each(|a| a.send()),
            Err((error, answers)) => {
                tracing::error!(error = format!("{error:#}"), "store commit failed");
                answers.into_iter().for_each(|a| a.send_error(&error));
            }
        }
    }
}

type GroupError = (anyhow::Error, Vec<Box<dyn Answer>>);

fn apply_group(conn: &mut Connection, group: Vec<Job>) -> Result<Vec<Box<dyn Answer>>, GroupError> {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        // The jobs are dropped unapplied: their requesters see the writer's answer vanish,
        // and the cause is logged by the caller.
        Err(err) => {
            return Err((
                anyhow::Error::from(err).context("failed to begin"),
                Vec::new(),
            ));
        }
    };
    let now = schema::tx_now();
    let answers: Vec<Box<dyn Answer>> = group.into_iter().map(|job| job(&mut tx, now)).collect();
    match tx.commit() {
        Ok(()) => Ok(answers),
        Err(err) => Err((err.into(), answers)),
    }
}
