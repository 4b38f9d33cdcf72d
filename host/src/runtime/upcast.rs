//! Running upcasters: one step of an event from `NAME.vN` to `NAME.vN+1` in a fresh
//! sandboxed instance of an `evhost:upcaster/upcaster` component.
//!
//! An upcaster gets what a handler gets of the world minus the host's capabilities: WASI with
//! nothing allowed (no files, sockets or environment), captured and dropped stdio, a memory
//! cap and a wall-clock limit, both fixed ([`UPCAST_MEMORY_BYTES`], [`UPCAST_TIMEOUT`]): a
//! step is a small pure function of one event, and a delivery may take several.

use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::Store;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::capacity::Needs;
use super::{Artifact, MemoryLimiter, Runtime, trap_message};
use crate::event::Event;
use crate::wit::upcaster::evhost::upcaster::types::Event as WitEvent;
use crate::wit::upcaster::{Upcaster, UpcasterPre};

/// The wall-clock budget of one step.
pub const UPCAST_TIMEOUT: Duration = Duration::from_secs(2);

/// The linear memory one step may use.
pub const UPCAST_MEMORY_BYTES: u64 = 64 << 20;

/// What one step's `Store` holds.
pub(super) struct UpcastState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
}

impl WasiView for UpcastState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The linker upcasters are checked against and instantiated with: WASI only.
pub(super) fn linker(engine: &wasmtime::Engine) -> Result<Linker<UpcastState>> {
    let mut linker: Linker<UpcastState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to link the wasi interfaces for upcasters")?;
    Ok(linker)
}

/// An upcaster's module, compiled and checked against the `upcaster` world.
#[derive(Clone)]
pub struct LinkedUpcaster {
    artifact: Artifact,
    pre: UpcasterPre<UpcastState>,
    needs: Needs,
}

impl LinkedUpcaster {
    pub fn sha256(&self) -> &str {
        self.artifact.sha256()
    }
}

/// How one step went wrong, in words for the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("the upcaster refused the event: {0}")]
    Refused(String),
    #[error("the upcaster trapped: {0}")]
    Trap(String),
    #[error("the upcaster timed out after {0:?}")]
    Timeout(Duration),
    #[error("the upcaster exceeded its memory limit of {} MiB", UPCAST_MEMORY_BYTES >> 20)]
    MemoryExceeded,
    #[error("the upcaster returned an invalid event: {0}")]
    Invalid(String),
}

impl Runtime {
    /// Check a compiled module against the `upcaster` world: where a wrong module fails,
    /// when it is registered.
    pub fn link_upcaster(&self, artifact: &Artifact) -> Result<LinkedUpcaster> {
        let instance_pre = self
            .upcast_linker
            .instantiate_pre(&artifact.component)
            .map_err(anyhow::Error::from)
            .context(
                "it imports something an upcaster may not (an upcaster imports nothing of the \
                 host's: no state, no emits, no config)",
            )?;
        let pre = UpcasterPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context(
                "it does not export the `evhost:upcaster/upcaster` world (`upcast: func(event) \
                 -> result<event, string>`)",
            )?;
        Ok(LinkedUpcaster {
            artifact: artifact.clone(),
            pre,
            needs: Needs::of(&artifact.component),
        })
    }

    /// Run one step on `event`, returning the event as `to` (the next version's type, with
    /// `dataschema` set by the caller): the input's identity, the upcaster's payload.
    pub async fn upcast(
        &self,
        upcaster: &LinkedUpcaster,
        event: &Event,
        to: &str,
    ) -> Result<Event, StepError> {
        let _slots = self.pool.acquire(upcaster.needs).await;
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut store = Store::new(
            &self.engine,
            UpcastState {
                wasi,
                table: ResourceTable::new(),
                limiter: MemoryLimiter::new(UPCAST_MEMORY_BYTES),
            },
        );
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_async_yield_and_update(1);
        let input = to_wit(event);
        let outcome = tokio::time::timeout(UPCAST_TIMEOUT, async {
            let instance: Upcaster = upcaster.pre.instantiate_async(&mut store).await?;
            instance.call_upcast(&mut store, &input).await
        })
        .await;
        let memory_exceeded = store.data().limiter.exceeded();
        let output = match outcome {
            Err(_elapsed) => return Err(StepError::Timeout(UPCAST_TIMEOUT)),
            Ok(Err(_)) if memory_exceeded => return Err(StepError::MemoryExceeded),
            Ok(Err(err)) => return Err(StepError::Trap(trap_message(&err))),
            Ok(Ok(Err(reason))) => return Err(StepError::Refused(super::bounded(reason))),
            Ok(Ok(Ok(output))) => output,
        };
        from_wit(event, to, output).map_err(|err| StepError::Invalid(err.to_string()))
    }
}

/// The upcaster's output as the event `to`: the input's id, source, time; the output's
/// payload, subject and extensions, checked as any event's.
fn from_wit(input: &Event, to: &str, output: WitEvent) -> Result<Event, crate::event::EventError> {
    let mut builder = Event::builder(input.id(), input.source(), to);
    if let Some(time) = input.time() {
        builder = builder.time(time);
    }
    if let Some(subject) = output.subject {
        builder = builder.subject(subject);
    }
    for (name, value) in output.extensions {
        builder = builder.extension(name, value);
    }
    if let Some(data) = output.data {
        builder = builder.data(output.datacontenttype.as_deref(), data);
    }
    builder.build()
}

fn to_wit(event: &Event) -> WitEvent {
    wit_event!(WitEvent, event)
}
