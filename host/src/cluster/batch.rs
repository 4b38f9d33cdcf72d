//! JetStream's atomic batch publish (ADR-50, nats-server 2.12+): messages to one stream that
//! are stored together or not at all, each with its own `Nats-Expected-Last-Subject-Sequence`
//! check, all checked at the commit.
//!
//! Written here rather than taken from `jetstream-extra`, the crate that offers it for
//! async-nats: that crate builds against an older async-nats than the host's (a second copy
//! of the client), and the protocol is four headers and one request.

use async_nats::{Client, HeaderMap};
use bytes::Bytes;

/// The most messages one batch may hold (the server's limit).
pub const MAX_BATCH_MESSAGES: usize = 1000;

/// JetStream's error code for a failed `Nats-Expected-Last-*` check.
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// One message of a batch.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl Outbound {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Outbound {
        Outbound {
            subject: subject.into(),
            headers: HeaderMap::new(),
            payload: payload.into(),
        }
    }

    /// Stored only if `subject`'s last message is at `sequence` now (0: it has none).
    pub fn expect_last(mut self, sequence: u64) -> Outbound {
        self.headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            sequence.to_string().as_str(),
        );
        self
    }

    /// Stored only if `other`'s last message is at `sequence` now: a check on a subject this
    /// message does not write (a state key read and not written).
    pub fn expect_last_of(self, other: &str, sequence: u64) -> Outbound {
        let mut checked = self.expect_last(sequence);
        checked
            .headers
            .insert("Nats-Expected-Last-Subject-Sequence-Subject", other);
        checked
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Outbound {
        self.headers.insert(name, value);
        self
    }
}

/// Why a batch was not stored. Nothing of it was.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// A subject's last sequence was not what a message expected.
    #[error("a record changed since it was read: {0}")]
    Conflict(String),
    /// NATS or JetStream could not be reached or did not answer in time: it may be stored or
    /// not (a retry with the same checks finds out).
    #[error("JetStream is unavailable: {0}")]
    Unavailable(String),
    /// JetStream refused it for another reason (too large, not allowed on the stream...).
    #[error("JetStream refused the write: {0}")]
    Refused(String),
}

/// What a committed batch says: the stream sequence of its last message and how many it
/// stored; its messages have the sequences before it, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub last: u64,
    pub count: u64,
}

impl Committed {
    /// The stream sequence of the batch's `index`th message.
    pub fn sequence_of(&self, index: usize) -> u64 {
        self.last + 1 - self.count + index as u64
    }
}

#[derive(serde::Deserialize)]
struct Ack {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: Option<u64>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Store `messages` atomically; returns once JetStream acknowledged them (durable with the
/// stream's replicas).
pub async fn publish(client: &Client, messages: Vec<Outbound>) -> Result<Committed, BatchError> {
    if messages.is_empty() {
        return Ok(Committed { last: 0, count: 0 });
    }
    if messages.len() > MAX_BATCH_MESSAGES {
        return Err(BatchError::Refused(format!(
            "{} records in one write, over JetStream's limit of {MAX_BATCH_MESSAGES}",
            messages.len()
        )));
    }
    let batch_id = new_batch_id();
    let total = messages.len();
    for (index, mut message) in messages.into_iter().enumerate() {
        // One message is atomic by itself: a plain publish, with the same checks. An atomic
        // batch costs the server far more (nats-server 2.15 stages each in a store of its own,
        // one batch at a time per stream: BENCHMARKS.md).
        if total > 1 {
            message.headers.insert("Nats-Batch-Id", batch_id.as_str());
            message
                .headers
                .insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
        }
        if index + 1 < total {
            // The server holds these until the commit; they need no answer each.
            client
                .publish_with_headers(message.subject, message.headers, message.payload)
                .await
                .map_err(|err| BatchError::Unavailable(err.to_string()))?;
            continue;
        }
        if total > 1 {
            message.headers.insert("Nats-Batch-Commit", "1");
        }
        let reply = client
            .request_with_headers(message.subject, message.headers, message.payload)
            .await
            .map_err(|err| BatchError::Unavailable(err.to_string()))?;
        let ack: Ack = serde_json::from_slice(&reply.payload).map_err(|err| {
            BatchError::Refused(format!(
                "unreadable answer {:?}: {err}",
                String::from_utf8_lossy(&reply.payload)
            ))
        })?;
        return match ack.error {
            Some(error) if error.err_code == WRONG_LAST_SEQUENCE => {
                Err(BatchError::Conflict(error.description))
            }
            Some(error) => Err(BatchError::Refused(format!(
                "{} (code {})",
                error.description, error.err_code
            ))),
            None => Ok(Committed {
                last: ack.seq,
                count: ack.count.unwrap_or(total as u64),
            }),
        };
    }
    unreachable!("the last message commits")
}

/// A batch id no other batch has: 128 random bits (the server allows 64 characters).
fn new_batch_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
