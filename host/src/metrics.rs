//! Metrics: what `/metrics` serves, in the Prometheus text format.
//!
//! Counters and histograms are updated where things happen (ingress, the scheduler, the
//! store writer, retention); gauges that mirror live state (pending, in flight, dead
//! letters, the store's sizes) are read from the scheduler and the store when scraped, so
//! they can never drift.
//!
//! Label values are bounded: handler names come from the deployment, and an event `type`
//! label is only used for types some handler subscribes to (anything else is `other`), so a
//! producer cannot grow the series without bound.

use anyhow::{Context, Result};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The label value for event types nobody subscribes to.
pub const OTHER_TYPE: &str = "other";

/// How an invocation ended, as `deliveries_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Committed.
    Ok,
    /// Failed; it will be retried.
    Retry,
    /// Failed for good; dead-lettered.
    Dead,
    /// Its state reads were stale at commit; it runs again at once, not counted as an attempt.
    Conflict,
    /// A queue its emitted events go to stayed full; its effects were dropped and it runs
    /// again later, not counted as an attempt.
    Deferred,
}

impl Outcome {
    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
            Outcome::Conflict => "conflict",
            Outcome::Deferred => "deferred",
        }
    }
}

/// Every metric the host exports.
pub struct Metrics {
    registry: Registry,
    /// Events accepted by ingress, by type and binding mode.
    pub events_received: IntCounterVec,
    /// Requests refused by ingress, by HTTP status.
    pub ingress_rejected: IntCounterVec,
    /// Finished invocations by handler and outcome: ok, retry, dead, conflict, deferred.
    pub deliveries: IntCounterVec,
    /// Wall-clock time of one invocation (instantiate + handle), by handler.
    pub handler_duration: HistogramVec,
    pub pending: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    pub dead_letters: IntGaugeVec,
    /// Module compiles answered from the on-disk cache (`hit`) or compiled (`miss`).
    pub compile_cache: IntGaugeVec,
}

impl Metrics {
    /// The metrics, registered together with the store's own collectors.
    pub fn new(store_collectors: Vec<Box<dyn prometheus::core::Collector>>) -> Result<Metrics> {
        let registry = Registry::new_custom(Some("evhost".into()), None)
            .context("failed to create the metrics registry")?;
        let metrics = Metrics {
            events_received: IntCounterVec::new(
                Opts::new("events_received_total", "Events accepted by ingress"),
                &["type", "mode"],
            )?,
            ingress_rejected: IntCounterVec::new(
                Opts::new(
                    "ingress_rejected_total",
                    "Requests refused by ingress, by status",
                ),
                &["status"],
            )?,
            deliveries: IntCounterVec::new(
                Opts::new(
                    "deliveries_total",
                    "Finished invocations by handler and outcome",
                ),
                &["handler", "outcome"],
            )?,
            handler_duration: HistogramVec::new(
                HistogramOpts::new(
                    "handler_duration_seconds",
                    "Time of one invocation, instantiate and handle",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["handler"],
            )?,
            pending: IntGaugeVec::new(
                Opts::new("deliveries_pending", "Deliveries waiting, by handler"),
                &["handler"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new("invocations_in_flight", "Invocations running, by handler"),
                &["handler"],
            )?,
            dead_letters: IntGaugeVec::new(
                Opts::new("dead_letters", "Dead-lettered deliveries, by handler"),
                &["handler"],
            )?,
            compile_cache: IntGaugeVec::new(
                Opts::new(
                    "compile_cache_lookups",
                    "Module compiles by compiled-cache result",
                ),
                &["result"],
            )?,
            registry,
        };
        let own: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.events_received.clone()),
            Box::new(metrics.ingress_rejected.clone()),
            Box::new(metrics.deliveries.clone()),
            Box::new(metrics.handler_duration.clone()),
            Box::new(metrics.pending.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.dead_letters.clone()),
            Box::new(metrics.compile_cache.clone()),
        ];
        for collector in own.into_iter().chain(store_collectors) {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8(out)?)
    }
}

/// The store's figures: the writer's (one observation per group commit), its sizes (read
/// when scraped) and what retention deleted.
#[derive(Clone)]
pub struct StoreMetrics {
    pub commit_seconds: Histogram,
    pub commit_batch: Histogram,
    /// The database file's size on disk, free pages included.
    pub database_bytes: IntGauge,
    /// The WAL file's size on disk.
    pub wal_bytes: IntGauge,
    /// The bytes of the database's pages in use: what `[retention] max_log_bytes` bounds.
    pub used_bytes: IntGauge,
    /// Events in the log.
    pub events: IntGauge,
    /// 1 while the pages in use are over `max_log_bytes` with nothing settled left to
    /// delete (what is left is pending or dead); 0 otherwise.
    pub over_limit: IntGauge,
    /// Rows deleted by retention, by table and reason (`age`, `size`, `versions`).
    pub retention_deleted: IntCounterVec,
    /// WAL checkpoints that emptied the file (`truncated`), or that found a reader in the
    /// way and left some of it (`busy`).
    pub checkpoints: IntCounterVec,
}

impl StoreMetrics {
    pub fn new() -> Result<StoreMetrics> {
        Ok(StoreMetrics {
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "store_commit_seconds",
                    "Time of one group commit, fsync included",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
            )?,
            commit_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "store_commit_batch_size",
                    "Requests sharing one group commit",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
                ]),
            )?,
            database_bytes: IntGauge::new(
                "store_database_bytes",
                "Size of the database file, free pages included",
            )?,
            wal_bytes: IntGauge::new("store_wal_bytes", "Size of the WAL file")?,
            used_bytes: IntGauge::new(
                "store_used_bytes",
                "Bytes of the database's pages in use, which max_log_bytes bounds",
            )?,
            events: IntGauge::new("store_events", "Events in the log")?,
            over_limit: IntGauge::new(
                "store_over_limit",
                "1 while the store is over max_log_bytes with nothing settled left to delete",
            )?,
            retention_deleted: IntCounterVec::new(
                Opts::new(
                    "retention_deleted_rows_total",
                    "Rows deleted by retention, by table and reason",
                ),
                &["table", "reason"],
            )?,
            checkpoints: IntCounterVec::new(
                Opts::new(
                    "store_checkpoints_total",
                    "WAL checkpoints by result: truncated, or busy (a reader kept part of it)",
                ),
                &["result"],
            )?,
        })
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.commit_seconds.clone()),
            Box::new(self.commit_batch.clone()),
            Box::new(self.database_bytes.clone()),
            Box::new(self.wal_bytes.clone()),
            Box::new(self.used_bytes.clone()),
            Box::new(self.events.clone()),
            Box::new(self.over_limit.clone()),
            Box::new(self.retention_deleted.clone()),
            Box::new(self.checkpoints.clone()),
        ]
    }
}
