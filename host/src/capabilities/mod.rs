//! Capabilities: the host side of each WIT import, one file per interface.
//!
//! An [`Invocation`] is what one call of `handle` may touch: the handler's own state (read
//! through a [`StateReader`] scoped to that handler, written only into the staging area), the
//! events it emits (staged, with ids the host derives), its log and its settings. Nothing
//! here writes to the store: the scheduler commits [`Staged`] when the handler succeeds, and
//! drops it when it fails.

pub mod config;
pub mod emit;
pub mod log;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::event::Event;
use crate::name::HandlerName;
use crate::store::StateReader;

/// What a successful invocation asks the host to commit.
#[derive(Debug, Default)]
pub struct Staged {
    /// Key -> new value, `None` for a delete. A map: the last write to a key wins.
    pub state_writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Key -> the committed version the invocation read (0: absent), for the commit's
    /// conflict check.
    pub state_reads: BTreeMap<String, i64>,
    /// Complete, valid events, in emit order.
    pub emitted: Vec<Event>,
}

/// Who is invoked: what the capabilities need to know of the handler.
pub struct InvocationContext {
    pub handler: HandlerName,
    /// The `source` of the events this handler emits.
    pub emit_source: Arc<str>,
    /// Its `config` settings.
    pub config: Arc<BTreeMap<String, String>>,
}

/// One call of `handle`: the capabilities it was given and what it staged.
pub struct Invocation {
    handler: HandlerName,
    emit_source: Arc<str>,
    settings: Arc<BTreeMap<String, String>>,
    /// The event being handled: its id and source derive emitted ids, and it is their cause.
    parent: ParentEvent,
    state: StateReader,
    staged: Staged,
}

struct ParentEvent {
    id: String,
    source: String,
    correlation_id: String,
    traceparent: Option<String>,
    /// Its `causationdepth`: the events it emits are one deeper.
    depth: u32,
}

impl Invocation {
    pub fn new(context: InvocationContext, event: &Event, state: StateReader) -> Self {
        Invocation {
            handler: context.handler,
            emit_source: context.emit_source,
            settings: context.config,
            parent: ParentEvent {
                id: event.id().to_owned(),
                source: event.source().to_owned(),
                correlation_id: event
                    .extension("correlationid")
                    .unwrap_or(event.id())
                    .to_owned(),
                traceparent: event.extension("traceparent").map(str::to_owned),
                depth: event.causation_depth(),
            },
            state,
            staged: Staged::default(),
        }
    }

    pub fn into_staged(self) -> Staged {
        self.staged
    }
}

impl crate::wit::evhost::handler::types::Host for Invocation {}
