//! The single writer thread and its group commit.
//!
//! Why one thread: SQLite allows one writer at a time anyway, and an fsync costs the same for
//! one row as for a thousand. So every write request is queued to this thread, which takes
//! all requests waiting when it starts a transaction (up to [`MAX_GROUP`]), applies each in
//! its own savepoint (one request's failure does not undo the others'), commits once, and
//! only then answers each request. Under load, many concurrent POSTs share one fsync; with a
//! single client, a request waits for no one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::schema;
use super::{Appended, Commit, Committed, Failure, RedriveTarget, Routed};
use crate::metrics::StoreMetrics;

/// Requests applied in one transaction at most; bounds the latency one commit adds.
const MAX_GROUP: usize = 512;

pub(super) enum Op {
    Append {
        events: Vec<Routed>,
        reply: oneshot::Sender<Result<Vec<Appended>>>,
    },
    Commit {
        commit: Commit,
        reply: oneshot::Sender<Result<Committed>>,
    },
    Fail {
        failure: Failure,
        reply: oneshot::Sender<Result<()>>,
    },
    Redrive {
        target: RedriveTarget,
        reply: oneshot::Sender<Result<Vec<String>>>,
    },
    Discard {
        id: i64,
        reply: oneshot::Sender<Result<bool>>,
    },
}

/// Group-commit figures: how many transactions, how many requests they carried, and the time
/// spent committing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub transactions: u64,
    pub requests: u64,
    pub commit_micros: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    requests: AtomicU64,
    commit_micros: AtomicU64,
}

pub(super) struct Writer {
    queue: mpsc::Sender<Op>,
    counters: Arc<Counters>,
}

impl Writer {
    pub(super) fn spawn(conn: Connection, metrics: StoreMetrics) -> Result<Writer> {
        let (queue, requests) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name("evhost-store-writer".into())
            .spawn(move || run(conn, requests, &thread_counters, &metrics))
            .context("failed to start the store writer thread")?;
        Ok(Writer { queue, counters })
    }

    pub(super) fn send(&self, op: Op) -> Result<()> {
        self.queue
            .send(op)
            .map_err(|_| anyhow!("the store writer stopped"))
    }

    pub(super) fn stats(&self) -> WriteStats {
        WriteStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            commit_micros: self.counters.commit_micros.load(Ordering::Relaxed),
        }
    }
}

/// A request's result, held until the group's commit decides whether it stands.
enum Done {
    Append(
        oneshot::Sender<Result<Vec<Appended>>>,
        Result<Vec<Appended>>,
    ),
    Commit(oneshot::Sender<Result<Committed>>, Result<Committed>),
    Fail(oneshot::Sender<Result<()>>, Result<()>),
    Redrive(oneshot::Sender<Result<Vec<String>>>, Result<Vec<String>>),
    Discard(oneshot::Sender<Result<bool>>, Result<bool>),
}

impl Done {
    fn answer(self) {
        // A requester that gave up (its HTTP client left) is no reason to stop.
        match self {
            Done::Append(reply, result) => drop(reply.send(result)),
            Done::Commit(reply, result) => drop(reply.send(result)),
            Done::Fail(reply, result) => drop(reply.send(result)),
            Done::Redrive(reply, result) => drop(reply.send(result)),
            Done::Discard(reply, result) => drop(reply.send(result)),
        }
    }

    /// The group's commit failed: nothing of this request is durable.
    fn answer_error(self, error: &anyhow::Error) {
        let err = || anyhow!("the store failed to commit: {error:#}");
        match self {
            Done::Append(reply, _) => drop(reply.send(Err(err()))),
            Done::Commit(reply, _) => drop(reply.send(Err(err()))),
            Done::Fail(reply, _) => drop(reply.send(Err(err()))),
            Done::Redrive(reply, _) => drop(reply.send(Err(err()))),
            Done::Discard(reply, _) => drop(reply.send(Err(err()))),
        }
    }
}

fn run(
    mut conn: Connection,
    requests: mpsc::Receiver<Op>,
    counters: &Counters,
    metrics: &StoreMetrics,
) {
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
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        counters.requests.fetch_add(size, Ordering::Relaxed);
        let elapsed = started.elapsed();
        counters
            .commit_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        metrics.commit_seconds.observe(elapsed.as_secs_f64());
        metrics.commit_batch.observe(size as f64);
        match outcome {
            Ok(done) => done.into_iter().for_each(Done::answer),
            Err((error, done)) => {
                tracing::error!(error = format!("{error:#}"), "store commit failed");
                done.into_iter().for_each(|d| d.answer_error(&error));
            }
        }
    }
}

type GroupError = (anyhow::Error, Vec<Done>);

fn apply_group(conn: &mut Connection, group: Vec<Op>) -> Result<Vec<Done>, GroupError> {
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => {
            let done = group.into_iter().map(not_applied).collect();
            return Err((anyhow::Error::from(err).context("failed to begin"), done));
        }
    };
    let now = schema::tx_now();
    let done: Vec<Done> = group
        .into_iter()
        .map(|op| apply_one(&mut tx, op, now))
        .collect();
    match tx.commit() {
        Ok(()) => Ok(done),
        Err(err) => Err((err.into(), done)),
    }
}

/// Apply one request inside its own savepoint, so that its failure rolls back only itself.
fn apply_one(tx: &mut Transaction<'_>, op: Op, now: i64) -> Done {
    fn within<T>(tx: &mut Transaction<'_>, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let sp = tx.savepoint()?;
        let result = f(&sp)?;
        sp.commit()?;
        Ok(result)
    }
    match op {
        Op::Append { events, reply } => {
            let result = within(tx, |sp| {
                events
                    .iter()
                    .map(|routed| schema::append(sp, routed, None, now))
                    .collect()
            });
            Done::Append(reply, result)
        }
        Op::Commit { commit, reply } => {
            let result = within(tx, |sp| schema::commit(sp, &commit, now));
            Done::Commit(reply, result)
        }
        Op::Fail { failure, reply } => {
            let result = within(tx, |sp| schema::fail(sp, &failure, now));
            Done::Fail(reply, result)
        }
        Op::Redrive { target, reply } => {
            let result = within(tx, |sp| schema::redrive(sp, &target, now));
            Done::Redrive(reply, result)
        }
        Op::Discard { id, reply } => {
            let result = within(tx, |sp| schema::discard(sp, id, now));
            Done::Discard(reply, result)
        }
    }
}

/// A request the group never got to apply; its result is replaced by the group's error.
fn not_applied(op: Op) -> Done {
    match op {
        Op::Append { reply, .. } => Done::Append(reply, Err(anyhow!("not applied"))),
        Op::Commit { reply, .. } => Done::Commit(reply, Err(anyhow!("not applied"))),
        Op::Fail { reply, .. } => Done::Fail(reply, Err(anyhow!("not applied"))),
        Op::Redrive { reply, .. } => Done::Redrive(reply, Err(anyhow!("not applied"))),
        Op::Discard { reply, .. } => Done::Discard(reply, Err(anyhow!("not applied"))),
    }
}
