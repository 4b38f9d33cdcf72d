//! Capabilities: the host side of each WIT import, one file per interface.
//!
//! An [`Invocation`] is what one call of `handle` may touch: the handler's own state (read
//! through a [`StateReader`] scoped to that handler, written only into the staging area), the
//! events it emits (staged, with ids the host derives), its log and its settings. Nothing
//! here writes to the store: the scheduler commits [`Staged`] when the handler succeeds, and
//! drops it when it fails.
//!
//! Everything staged is charged to the invocation's [`budget`], here, as it is staged: the
//! capabilities only change [`Staged`] through the `Invocation` methods that charge it. A
//! call past the budget fails (with the error its WIT signature has, or a trap where it has
//! none), and so does the invocation, whatever the handler does next.

pub mod budget;
pub mod config;
pub mod emit;
pub mod log;
pub mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::event::Event;
use crate::name::HandlerName;
use crate::store::StateReader;

pub use budget::{Budget, BudgetExceeded};
use budget::{Spent, entry_bytes, event_bytes};

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
    /// What one invocation may stage.
    pub budget: Budget,
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
    spent: Spent,
    log: log::LogSpent,
}

struct ParentEvent {
    /// Its position in the log, which no producer chooses.
    seq: i64,
    id: String,
    source: String,
    correlation_id: String,
    traceparent: Option<String>,
    /// Its `causationdepth`: the events it emits are one deeper.
    depth: u32,
}

impl Invocation {
    /// `seq` is the handled event's position in the log: emitted ids derive from it.
    pub fn new(context: InvocationContext, event: &Event, seq: i64, state: StateReader) -> Self {
        Invocation {
            handler: context.handler,
            emit_source: context.emit_source,
            settings: context.config,
            parent: ParentEvent {
                seq,
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
            spent: Spent::new(context.budget),
            log: log::LogSpent::default(),
        }
    }

    pub fn into_staged(self) -> Staged {
        self.staged
    }

    /// Why the invocation went over its budget, if it did: then it fails, whatever the
    /// handler returned.
    pub fn budget_exceeded(&self) -> Option<&BudgetExceeded> {
        self.spent.exceeded()
    }

    /// Stage `value` under `key` (`None`: delete it), replacing what was staged for it.
    fn stage_write(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), BudgetExceeded> {
        let old = self.staged.state_writes.get(&key);
        let old_bytes = old.map_or(0, |old| entry_bytes(&key, old.as_deref()));
        if old.is_none() {
            self.spent.new_write(self.staged.state_writes.len(), &key)?;
        }
        let new_bytes = entry_bytes(&key, value.as_deref());
        self.spent
            .charge(new_bytes, old_bytes, || format!("the write of key `{key}`"))?;
        self.staged.state_writes.insert(key, value);
        Ok(())
    }

    /// Remember the committed `version` of `key` the handler read first, for the commit's
    /// conflict check.
    fn track_read(&mut self, key: String, version: i64) -> Result<(), BudgetExceeded> {
        if self.staged.state_reads.contains_key(&key) {
            return Ok(());
        }
        self.spent.charge(entry_bytes(&key, None), 0, || {
            format!("the read of key `{key}`")
        })?;
        self.staged.state_reads.insert(key, version);
        Ok(())
    }

    /// Before building the next emitted event: whether one more may be emitted.
    fn check_emit(&mut self) -> Result<(), BudgetExceeded> {
        self.spent.new_emit(self.staged.emitted.len())
    }

    /// Stage a complete event for publishing.
    fn stage_emitted(&mut self, event: Event) -> Result<(), BudgetExceeded> {
        let index = self.staged.emitted.len();
        self.spent.charge(event_bytes(&event), 0, || {
            format!("emitted event #{}", index + 1)
        })?;
        self.staged.emitted.push(event);
        Ok(())
    }
}

/// An overrun in a call that has no error of its own to return (`get`, `delete`): the call
/// traps. Either way the runtime fails the invocation with [`Invocation::budget_exceeded`].
fn trap(exceeded: BudgetExceeded) -> wasmtime::Error {
    wasmtime::Error::msg(exceeded.to_string())
}

/// An overrun as the error a call that has one (`set`, `publish`) returns, as the contract
/// says; the invocation fails all the same, whatever the handler does with it.
fn refusal(exceeded: BudgetExceeded) -> String {
    format!("invocation budget exceeded: {exceeded}")
}

impl crate::wit::evhost::handler::types::Host for Invocation {}
