//! Every integration test in one binary, one module per theme (the files beside this one); a
//! new theme is a file here and a `mod` line below.
//!
//! Why one binary: each test binary links the whole host, wasmtime with it, and after a
//! change to the host every one of them links again. Measured on a 2-core machine, `cargo
//! test --no-run` after a change to host/src took about 4 s with one binary and 10 s with one
//! per theme; a change to one test file took about 1.7 s either way. The guests and the
//! `evhost` binary are also built (checked) once per test process, so once per run.
//!
//! Each test starts its own host, on its own port and data directory, so the themes share
//! nothing else and run side by side. `cargo test -p evhost-tests --test main shop::` runs one
//! theme.

mod access;
mod backpressure;
mod budget;
mod cli;
mod cluster;
mod concurrency;
mod crash;
mod delivery;
mod deploy;
mod faults;
mod http_limits;
mod ingress;
mod isolation;
mod nats_support;
mod operate;
mod ownership;
mod polyglot;
mod producers;
mod retention;
mod shop;
mod versioning;
mod window;
