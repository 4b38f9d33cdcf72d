//! Log lines, captured by the host with the handler's name and the event's id.
//!
//! The functions take a finished message; the [`trace!`](crate::trace),
//! [`debug!`](crate::debug), [`info!`](crate::info), [`warn!`](crate::warn) and
//! [`error!`](crate::error) macros take `format!` arguments.
//!
//! ```no_run
//! use evhost_sdk::log;
//!
//! log::info("order placed");
//! evhost_sdk::warn!("only {} units left of {}", 2, "sku-1");
//! ```

use crate::__private::bindings::evhost::handler::log::{Level, write};

/// Log `message` at trace level.
pub fn trace(message: impl AsRef<str>) {
    write(Level::Trace, message.as_ref());
}

/// Log `message` at debug level.
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref());
}

/// Log `message` at info level.
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref());
}

/// Log `message` at warn level.
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref());
}

/// Log `message` at error level.
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message.as_ref());
}
