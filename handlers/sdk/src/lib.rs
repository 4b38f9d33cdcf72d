//! Write evhost event handlers in Rust.
//!
//! A handler is a type that implements [`Handler`], exported with [`export_handler!`] and
//! built with `cargo build --release --target wasm32-wasip2`. The `.wasm` file that comes out
//! is a component for the contract in `wit/0.1.0` (`evhost:handler@0.1.0`, world `handler`),
//! ready to list in an `evhost.toml`.
//!
//! ```no_run
//! use evhost_sdk::{emit, state, Event, Handler, HandlerError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize, Serialize)]
//! struct Greeting {
//!     name: String,
//! }
//!
//! struct Greeter;
//!
//! impl Handler for Greeter {
//!     fn handle(event: Event) -> Result<(), HandlerError> {
//!         let greeting: Greeting = event.json()?; // bad JSON: rejected, never retried
//!         let greeted: u64 = state::get_json("greeted")?.unwrap_or(0);
//!         state::set_json("greeted", &(greeted + 1))?;
//!         emit::json("com.example.greeted.v1", &greeting)
//!             .subject(&greeting.name)
//!             .send()?;
//!         evhost_sdk::info!("greeted {} ({} so far)", greeting.name, greeted + 1);
//!         Ok(())
//!     }
//! }
//!
//! evhost_sdk::export_handler!(Greeter);
//! ```
//!
//! # What the host does with a handler's effects
//!
//! The host calls [`Handler::handle`] once per delivery, in a fresh sandboxed instance, so
//! nothing survives in memory from one event to the next: keep what must last in [`state`].
//! Every effect is staged: [`state`] writes and [`emit`]ted events are committed together
//! with the delivery, in one transaction, only when `handle` returns `Ok`. Returning an error
//! (or panicking, or running out of time or memory) discards all of them, so a handler may
//! write and emit first and fail later without leaving half its work behind. A handler may
//! run more than once for one event (a retry, a host crash), but its effects are committed
//! once per event, and emitted events get deterministic ids, so a re-run cannot duplicate them.
//!
//! # Retry or reject
//!
//! A [`HandlerError`] tells the host what to do with the event: [`HandlerError::Retry`] for a
//! transient failure (back off and deliver it again), [`HandlerError::Reject`] for a permanent
//! one (dead-letter it now; an operator can redrive it). The SDK's fallible calls pick the
//! variant by one rule, *would delivering the same event again help?*:
//!
//! | call | fails when | variant |
//! |---|---|---|
//! | [`Event::json`] | the data is absent or is not the expected JSON | `Reject` |
//! | [`state::set`], [`state::set_json`] | the key or value breaks a host limit, or the value does not serialize | `Reject` |
//! | [`state::get_json`] | the stored value is not the expected JSON | `Reject` |
//! | [`emit::Builder::send`] | the host refuses the event (empty type, bad extension name, too many emits), or the data does not serialize | `Reject` |
//! | [`config::get_parsed`] | the setting does not parse | `Retry` |
//!
//! All but the last depend only on the event, the handler's code and its state, so the same
//! event would fail the same way again. A bad setting is the deployment's fault, not the
//! event's: a redeploy with the setting fixed lets the retried event succeed.
//!
//! # Panics
//!
//! A panic traps the instance; the host treats that as a retryable failure. The SDK logs the
//! panic message through [`log`] first, so it shows up with the handler's name and the
//! event's id.
//!
//! # Upcasters
//!
//! The same crate writes *upcasters*, the other kind of component the host runs: a type that
//! implements [`Upcaster`], exported with [`export_upcaster!`], turns an event of type
//! `NAME.vN` into `NAME.vN+1` (contract `wit/upcaster-0.1.0`, world `upcaster`), so that a
//! handler that reads a newer version still gets the older events in the log. An upcaster is
//! pure and deterministic and imports nothing of the host: no [`state`], [`emit`], [`log`] or
//! [`config`]. See [`upcast`] for the contract. A crate exports one handler or one upcaster,
//! never both.

mod event;

pub mod config;
pub mod emit;
pub mod log;
pub mod state;
pub mod upcast;

pub use event::Event;
pub use upcast::{UpcastEvent, Upcaster};

use std::fmt;

/// An event handler: the code the host runs for each event the handler subscribes to.
///
/// Export the implementing type with [`export_handler!`]. The type itself holds nothing:
/// every invocation runs in a fresh instance, so what must outlive one event goes in
/// [`state`].
pub trait Handler {
    /// Handle one delivery of `event`.
    ///
    /// Return `Ok(())` to commit everything this invocation staged ([`state`] writes and
    /// [`emit`]ted events); return an error to discard it and tell the host whether to
    /// [retry](HandlerError::Retry) or [dead-letter](HandlerError::Reject) the event.
    fn handle(event: Event) -> Result<(), HandlerError>;
}

/// Why a handler did not handle an event, and what the host should do about it.
///
/// Either way, nothing the invocation staged is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// A transient failure: the host backs off and delivers the event again, up to the
    /// handler's `max_attempts`, then dead-letters it.
    Retry(String),
    /// A permanent failure (the event is bad, or can never be handled): the host
    /// dead-letters it now, without retrying.
    Reject(String),
}

impl HandlerError {
    /// A transient failure: deliver the event again later.
    ///
    /// ```
    /// # use evhost_sdk::HandlerError;
    /// let err = HandlerError::retry("the ledger is busy");
    /// assert!(err.is_retry());
    /// ```
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry(message.into())
    }

    /// A permanent failure: dead-letter the event now.
    ///
    /// ```
    /// # use evhost_sdk::HandlerError;
    /// let err = HandlerError::reject(format!("quantity must be positive, got {}", 0));
    /// assert_eq!(err.message(), "quantity must be positive, got 0");
    /// ```
    pub fn reject(message: impl Into<String>) -> Self {
        Self::Reject(message.into())
    }

    /// The message, whichever the variant.
    pub fn message(&self) -> &str {
        match self {
            Self::Retry(message) | Self::Reject(message) => message,
        }
    }

    /// Whether the host will deliver the event again.
    pub fn is_retry(&self) -> bool {
        matches!(self, Self::Retry(_))
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry(message) => write!(f, "retry: {message}"),
            Self::Reject(message) => write!(f, "reject: {message}"),
        }
    }
}

impl std::error::Error for HandlerError {}

/// Export `$handler` (a type implementing [`Handler`]) as the component's `handle` function.
///
/// Use it once per crate, at the top level of a `cdylib` crate built for `wasm32-wasip2`:
///
/// ```no_run
/// struct Noop;
///
/// impl evhost_sdk::Handler for Noop {
///     fn handle(_event: evhost_sdk::Event) -> Result<(), evhost_sdk::HandlerError> {
///         Ok(())
///     }
/// }
///
/// evhost_sdk::export_handler!(Noop);
/// ```
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        const _: () = {
            // An adapter, so that the user's type implements only the SDK's trait and the
            // generated bindings stay an implementation detail of the SDK.
            struct EvhostExport;

            impl $crate::__private::bindings::Guest for EvhostExport {
                fn handle(
                    event: $crate::__private::bindings::Event,
                ) -> ::core::result::Result<(), $crate::__private::bindings::HandlerError> {
                    $crate::__private::dispatch::<$handler>(event)
                }
            }

            $crate::__private::bindings::__evhost_export_world!(
                EvhostExport with_types_in $crate::__private::bindings
            );
        };
    };
}

/// Export `$upcaster` (a type implementing [`Upcaster`]) as the component's `upcast`
/// function, for the upcaster contract (`wit/upcaster-0.1.0`).
///
/// Use it once per crate, at the top level of a `cdylib` crate built for `wasm32-wasip2`,
/// and not beside [`export_handler!`]: the component it makes imports nothing of the host.
///
/// ```no_run
/// struct Unchanged;
///
/// impl evhost_sdk::Upcaster for Unchanged {
///     fn upcast(event: evhost_sdk::UpcastEvent) -> Result<evhost_sdk::UpcastEvent, String> {
///         Ok(event)
///     }
/// }
///
/// evhost_sdk::export_upcaster!(Unchanged);
/// ```
#[macro_export]
macro_rules! export_upcaster {
    ($upcaster:ty) => {
        const _: () = {
            // An adapter, as in `export_handler!`: the user's type implements only the SDK's
            // trait, and the generated bindings stay an implementation detail of the SDK.
            struct EvhostUpcasterExport;

            impl $crate::__private::upcaster_bindings::Guest for EvhostUpcasterExport {
                fn upcast(
                    event: $crate::__private::upcaster_bindings::Event,
                ) -> ::core::result::Result<
                    $crate::__private::upcaster_bindings::Event,
                    ::std::string::String,
                > {
                    $crate::__private::dispatch_upcast::<$upcaster>(event)
                }
            }

            $crate::__private::upcaster_bindings::__evhost_export_upcaster_world!(
                EvhostUpcasterExport with_types_in $crate::__private::upcaster_bindings
            );
        };
    };
}

/// Log `format!(...)` at trace level; see [`log`].
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log::trace(::std::format!($($arg)+)) };
}

/// Log `format!(...)` at debug level; see [`log`].
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::debug(::std::format!($($arg)+)) };
}

/// Log `format!(...)` at info level; see [`log`].
///
/// ```no_run
/// let order_id = "o-1";
/// evhost_sdk::info!("order {order_id} placed");
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::info(::std::format!($($arg)+)) };
}

/// Log `format!(...)` at warn level; see [`log`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::warn(::std::format!($($arg)+)) };
}

/// Log `format!(...)` at error level; see [`log`].
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::error(::std::format!($($arg)+)) };
}

/// What [`export_handler!`] and [`export_upcaster!`] expand to needs; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../../wit/0.1.0",
            world: "handler",
            // `export_handler!` expands in the user's crate, so the generated export macro
            // must be reachable from there; its name says it is not for direct use.
            pub_export_macro: true,
            export_macro_name: "__evhost_export_world",
            default_bindings_module: "evhost_sdk::__private::bindings",
            // No `#[used]` reference that would link this description of the handler world
            // into every component that depends on this crate, upcasters included: the copy
            // `export_handler!` expands to is the one a handler needs.
            disable_custom_section_link_helpers: true,
        });
    }

    /// The upcaster world's bindings (`wit/upcaster-0.1.0`), generated in the crate
    /// `evhost-sdk-upcaster` so that an upcaster links nothing of this crate, whose bindings
    /// describe the handler world (see that crate's doc).
    pub use evhost_sdk_upcaster::bindings as upcaster_bindings;
    /// The body of the exported `upcast`: wrap the event, call the upcaster, unwrap its
    /// result.
    pub use evhost_sdk_upcaster::dispatch as dispatch_upcast;

    use crate::{Event, Handler, HandlerError};

    /// The body of the exported `handle`: wrap the event, call the handler, map its error.
    pub fn dispatch<H: Handler>(event: bindings::Event) -> Result<(), bindings::HandlerError> {
        install_panic_hook();
        H::handle(Event::from_wit(event)).map_err(|err| match err {
            HandlerError::Retry(message) => bindings::HandlerError::Retry(message),
            HandlerError::Reject(message) => bindings::HandlerError::Reject(message),
        })
    }

    /// Send panic messages to the host's log, where they carry the handler's name and the
    /// event's id, instead of to stderr.
    fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                // One line: the default `Display` puts the message on a line of its own.
                let message = info.payload_as_str().unwrap_or("(no message)");
                match info.location() {
                    Some(at) => crate::log::error(format!("handler panicked at {at}: {message}")),
                    None => crate::log::error(format!("handler panicked: {message}")),
                }
            }));
        });
    }
}
