//! The load generator: many keep-alive HTTP/1.1 connections posting CloudEvents, either as
//! fast as the server answers (closed loop) or at a fixed rate (open loop).
//!
//! Each connection is one task with its own hyper connection: it takes the next sequence
//! number, renders that request, sends it, reads the whole answer and records the latency in
//! its own HDR histogram (merged at the end, so the hot loop shares nothing but one counter).
//!
//! At a fixed rate, request `n` is due at `start + n / rate` and its latency is measured from
//! that due time, not from when a connection got round to sending it: a server that stalls
//! shows its stall in the percentiles instead of silently slowing the generator down
//! ("coordinated omission").
//!
//! Connections spread round robin over the given addresses (the hosts of a cluster take the
//! same events, so one run can load all of them).
//!
//! Everything is bounded: the number of connections, the duration, and an optional request
//! count. Only loopback addresses are accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::payload::Payload;

/// Connections one run may open; more would only measure the scheduler of a 2-core machine.
pub const MAX_CONNECTIONS: usize = 1024;
/// The longest a run may last.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Latencies above this are clamped into the top bucket (microseconds).
const MAX_LATENCY_US: u64 = 120_000_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where connection `i` goes: `addrs[i % addrs.len()]`.
    pub addrs: Vec<SocketAddr>,
    pub connections: usize,
    pub duration: Duration,
    /// Requests per second across all connections; `None` is as fast as possible.
    pub rate: Option<f64>,
    /// Stop after this many requests, if the duration has not run out first.
    pub max_requests: Option<u64>,
    /// Record when each accepted request was sent, for end-to-end latencies.
    pub track_sends: bool,
    /// How long a connection pauses after a 429 before its next request.
    pub pause_after_429: Duration,
    pub payload: Arc<Payload>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Requests answered 2xx.
    pub accepted_requests: u64,
    /// Events in those requests.
    pub accepted_events: u64,
    /// Requests that got any answer.
    pub answered: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// POST to answer, microseconds, every answered request.
    pub latency: Histogram<u64>,
    /// Answers that were not 2xx, by status.
    pub errors: BTreeMap<u16, u64>,
    /// Connection failures (refused, reset, protocol errors).
    pub io_errors: u64,
    /// (sequence number, unix time in microseconds when sent), accepted requests only; empty
    /// unless [`LoadConfig::track_sends`].
    pub sends: Vec<(u64, u64)>,
    /// Unix microseconds when the run started.
    pub started_unix_us: u64,
}

impl LoadReport {
    pub fn events_per_sec(&self) -> f64 {
        per_sec(self.accepted_events, self.elapsed)
    }

    /// `429 x12, 500 x1, io x3`, or `-` when nothing failed.
    pub fn errors_text(&self) -> String {
        let mut parts: Vec<String> = self
            .errors
            .iter()
            .map(|(status, n)| format!("{status} x{n}"))
            .collect();
        if self.io_errors > 0 {
            parts.push(format!("io x{}", self.io_errors));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }
}

pub fn per_sec(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Per-connection results, merged into the report.
struct ConnReport {
    accepted_requests: u64,
    answered: u64,
    latency: Histogram<u64>,
    errors: BTreeMap<u16, u64>,
    io_errors: u64,
    sends: Vec<(u64, u64)>,
    last_answer: Option<Instant>,
}

/// Run the load described by `config`.
pub async fn run(config: LoadConfig) -> Result<LoadReport> {
    if config.addrs.is_empty() {
        bail!("the load generator needs an address to post to");
    }
    if let Some(addr) = config.addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("the load generator only targets loopback addresses, not {addr}");
    }
    if config.connections == 0 || config.connections > MAX_CONNECTIONS {
        bail!("connections must be 1..={MAX_CONNECTIONS}");
    }
    if config.duration > MAX_DURATION {
        bail!("a run lasts at most {MAX_DURATION:?}");
    }
    if config.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("the rate must be a positive number of requests per second");
    }
    let config = Arc::new(config);
    let next = Arc::new(AtomicU64::new(0));
    let started_unix_us = unix_us();
    let start = Instant::now();
    let deadline = start + config.duration;
    let mut running = tokio::task::JoinSet::new();
    for i in 0..config.connections {
        let config = config.clone();
        let next = next.clone();
        let addr = config.addrs[i % config.addrs.len()];
        running.spawn(connection(config, addr, next, start, deadline));
    }
    let mut report = LoadReport {
        accepted_requests: 0,
        accepted_events: 0,
        answered: 0,
        elapsed: Duration::ZERO,
        latency: new_histogram(),
        errors: BTreeMap::new(),
        io_errors: 0,
        sends: Vec::new(),
        started_unix_us,
    };
    let mut last_answer = start;
    while let Some(result) = running.join_next().await {
        let conn = result?;
        report.accepted_requests += conn.accepted_requests;
        report.answered += conn.answered;
        report.latency.add(&conn.latency)?;
        for (status, n) in conn.errors {
            *report.errors.entry(status).or_default() += n;
        }
        report.io_errors += conn.io_errors;
        report.sends.extend(conn.sends);
        if let Some(at) = conn.last_answer {
            last_answer = last_answer.max(at);
        }
    }
    report.accepted_events = report.accepted_requests * config.payload.mode.events_per_request();
    report.elapsed = last_answer - start;
    report.sends.sort_unstable();
    Ok(report)
}

async fn connection(
    config: Arc<LoadConfig>,
    addr: SocketAddr,
    next: Arc<AtomicU64>,
    start: Instant,
    deadline: Instant,
) -> ConnReport {
    let mut report = ConnReport {
        accepted_requests: 0,
        answered: 0,
        latency: new_histogram(),
        errors: BTreeMap::new(),
        io_errors: 0,
        sends: Vec::new(),
        last_answer: None,
    };
    let mut sender: Option<hyper::client::conn::http1::SendRequest<_>> = None;
    loop {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if config.max_requests.is_some_and(|max| seq >= max) {
            break;
        }
        let due = match config.rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64(seq as f64 / rate);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                now
            }
        };
        let request = config.payload.request(seq);
        let mut conn = match sender.take() {
            Some(conn) => conn,
            None => match connect(addr).await {
                Ok(conn) => conn,
                Err(_) => {
                    report.io_errors += 1;
                    // A refused connection would spin; back off a little.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let sent_unix_us = config.track_sends.then(unix_us);
        let answer = async {
            conn.ready().await?;
            let response = conn.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let now = Instant::now();
        match answer {
            Ok(status) => {
                report.answered += 1;
                report.last_answer = Some(now);
                let micros = (now - due).as_micros().clamp(1, u128::from(MAX_LATENCY_US));
                report.latency.saturating_record(micros as u64);
                if status.is_success() {
                    report.accepted_requests += 1;
                    if let Some(at) = sent_unix_us {
                        report.sends.push((seq, at));
                    }
                } else {
                    *report.errors.entry(status.as_u16()).or_default() += 1;
                    if status.as_u16() == 429 {
                        tokio::time::sleep(config.pause_after_429).await;
                    }
                }
                sender = Some(conn);
            }
            Err(_) => report.io_errors += 1,
        }
    }
    report
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the sender is dropped or the server closes it.
        let _ = conn.await;
    });
    Ok(sender)
}
