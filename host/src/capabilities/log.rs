//! `evhost:handler/log`: a handler's log lines, in the host's log with the handler's name and
//! the event's id.

use wasmtime::Result;

use super::Invocation;
use crate::wit::evhost::handler::log::{Host, Level};

/// Longest log line kept, in bytes; the rest is cut so one handler cannot flood the log.
const MAX_LINE_BYTES: usize = 4096;

impl Host for Invocation {
    fn write(&mut self, level: Level, message: String) -> Result<()> {
        let message = truncate(&message, MAX_LINE_BYTES);
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
