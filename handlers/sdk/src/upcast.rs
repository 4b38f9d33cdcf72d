//! Write upcasters: the pure functions that turn one version of an event type into the next.
//!
//! Event types are versioned, `NAME.vN`, and each version's data has its own JSON Schema. A
//! handler that reads `NAME.v2` still gets the `NAME.v1` events in the log: the host passes
//! each one through the upcaster of `NAME.v1` before delivering it, one step at a time
//! (`v1 -> v2 -> v3` for a handler of `v3`). The stored event is never changed; every
//! delivery upcasts it again.
//!
//! An upcaster is a component of its own, for the contract in `wit/upcaster-0.1.0` (world
//! `upcaster`): a type that implements [`Upcaster`], exported with [`export_upcaster!`] from a
//! `cdylib` crate built with `cargo build --release --target wasm32-wasip2`.
//!
//! ```no_run
//! use evhost_sdk::{UpcastEvent, Upcaster};
//! use serde_json::{Map, Value, json};
//!
//! /// `com.example.greeted.v1` -> `v2`: the name moves into a `person` object.
//! struct GreetedV1ToV2;
//!
//! impl Upcaster for GreetedV1ToV2 {
//!     fn upcast(mut event: UpcastEvent) -> Result<UpcastEvent, String> {
//!         // A map, not a struct: fields this version does not know are carried over.
//!         let mut data: Map<String, Value> = event.json()?;
//!         let name = data.remove("name").ok_or("a v1 greeting has a `name`")?;
//!         data.insert("person".to_owned(), json!({ "name": name }));
//!         event.set_json(&data)?;
//!         Ok(event)
//!     }
//! }
//!
//! evhost_sdk::export_upcaster!(GreetedV1ToV2);
//! ```
//!
//! # The contract
//!
//! - **One step.** The host calls [`Upcaster::upcast`] with an event of version N and treats
//!   the result as version N+1 of the same type. An upcaster for a longer jump does not
//!   exist: chains are made of steps.
//! - **Pure and deterministic.** The same event must give the same result every time: the
//!   host upcasts again on every delivery, to every handler, on every retry, and nothing
//!   tells one call from another. The world imports nothing of the host (no state, no
//!   emits, no log, no settings); Rust's standard library still links WASI's clocks and
//!   randomness, which must not change the answer. Each call runs in a fresh instance under
//!   a time and memory limit, so nothing survives from one call to the next.
//! - **The host keeps the event's identity.** Whatever the result says, its `id`, `source`,
//!   `specversion` and `time` are the input's, its `type` is the next version and its
//!   `dataschema` the host's URL of that version's schema; that is why [`UpcastEvent`] has
//!   no setters for them. The upcaster decides the data (and its `datacontenttype`), the
//!   `subject` and the extensions.
//! - **Checked.** The host validates the result's data against the schema of the target
//!   version before any handler sees it.
//! - **Failing.** `Err(reason)` means this event cannot be upcast: the host dead-letters the
//!   delivery, naming the step and the reason. Retrying would not help, since the same event
//!   gives the same answer. A panic traps the instance and counts the same; there is no log
//!   import, so its message only reaches stderr.
//!
//! A crate exports either a handler or an upcaster, never both: [`export_handler!`] and
//! [`export_upcaster!`] each make the component of one world. Each component gets only its
//! own world: a handler exports no `upcast`, and an upcaster imports nothing of the handler
//! contract (not even its types), since the upcaster's side of this SDK lives in a crate of
//! its own, `evhost-sdk-upcaster` (`handlers/sdk/upcaster`), that links nothing of the
//! handler's. Depend on `evhost-sdk` alone; it re-exports all of it.
//!
//! [`export_handler!`]: crate::export_handler
//! [`export_upcaster!`]: crate::export_upcaster

pub use evhost_sdk_upcaster::{UpcastEvent, Upcaster};
