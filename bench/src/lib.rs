//! # evhost-bench
//!
//! The benchmark harness: measures the real path (HTTP in, durable append, fresh Wasm
//! instance, commit) against baselines measured in the same run, because on a shared, noisy
//! machine only ratios hold. `BENCHMARKS.md` at the workspace root says how to run it and
//! holds the latest figures.
//!
//! # Layout
//!
//! - [`payload`] renders CloudEvents requests (binary, structured, batch) from a sequence
//!   number, so that every event is unique.
//! - [`load`] is the load generator: many keep-alive connections, closed loop or fixed rate,
//!   HDR histograms, errors by status.
//! - [`process`] runs each server under test as a child process and reads its peak RSS and
//!   CPU time from `/proc`.
//! - [`servers`] are the baselines that run as servers: the HTTP floor and the native
//!   pipeline.
//! - [`db`] reads a host's store after a run to see when each event's work was committed.
//! - [`nats`] runs the bench's own nats-server and reads an app's stream the same way, for
//!   the cluster scenarios ([`cluster`]).
//! - [`wasm`] measures one Wasm invocation in process, variant by variant.
//! - [`versioning`] is event versions: ingest with and without schema validation, and
//!   delivery through a chain of upcasters (end to end and in process).
//! - [`suite`] runs every scenario and renders the table.

pub mod cluster;
pub mod db;
pub mod load;
pub mod nats;
pub mod payload;
pub mod process;
pub mod servers;
pub mod suite;
pub mod versioning;
pub mod wasm;
