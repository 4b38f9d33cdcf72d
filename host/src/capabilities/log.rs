//! `evhost:handler/log`: a handler's log lines, in the host's log with the handler's name and
//! the event's id.
//!
//! Lines go to the host's log as they are written, so nothing is held for the invocation; but
//! a handler logging in a loop would flood the log (and whatever stores it), so one
//! invocation may write [`MAX_LOG_BYTES`]. Past that its lines are dropped and counted, and
//! one warning at the end of the invocation says how many.

use wasmtime::Result;

use super::Invocation;
use crate::wit::evhost::handler::log::{Host, Level};

/// Longest log line kept, in bytes; the rest is cut so one handler cannot flood the log.
const MAX_LINE_BYTES: usize = 4096;

/// Log bytes one invocation may write, each line counted as its kept length plus one; past
/// this its lines are dropped. The same as each of its captured stdout and stderr.
pub const MAX_LOG_BYTES: usize = 64 * 1024;

/// What an invocation has logged.
#[derive(Debug, Default)]
pub(super) struct LogSpent {
    written: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl Host for Invocation {
    fn write(&mut self, level: Level, message: String) -> Result<()> {
        let message = truncate(&message, MAX_LINE_BYTES);
        let cost = message.len() + 1;
        if self.log.written + cost > MAX_LOG_BYTES {
            self.log.dropped_lines += 1;
            self.log.dropped_bytes += cost as u64;
            return Ok(());
        }
        self.log.written += cost;
        let handler = self.handler.as_str();
        let event_id = self.parent.id.as_str();
        match level {
            Level::Trace => {
                tracing::trace!(target: "evhost::handler", handler, event_id, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "evhost::handler", handler, event_id, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "evhost::handler", handler, event_id, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "evhost::handler", handler, event_id, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "evhost::handler", handler, event_id, "{message}")
            }
        }
        Ok(())
    }
}

impl Invocation {
    /// Say how many log lines were dropped, if any; called once the invocation is over.
    pub fn finish_log(&self) {
        let LogSpent {
            dropped_lines,
            dropped_bytes,
            ..
        } = self.log;
        if dropped_lines > 0 {
            tracing::warn!(
                target: "evhost::handler",
                handler = self.handler.as_str(),
                event_id = self.parent.id.as_str(),
                dropped_lines,
                dropped_bytes,
                "dropped {dropped_lines} log lines ({dropped_bytes} bytes) past the \
                 {MAX_LOG_BYTES} bytes one invocation may log"
            );
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
