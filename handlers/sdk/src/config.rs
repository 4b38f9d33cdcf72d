//! The handler's settings from the manifest (`config = { ... }` on the `[[handler]]`),
//! read-only.
//!
//! ```no_run
//! # fn handle() -> Result<(), evhost_sdk::HandlerError> {
//! use evhost_sdk::config;
//!
//! let decline_over: f64 = config::get_parsed("decline_over")?.unwrap_or(1000.0);
//! # let _ = decline_over;
//! # Ok(())
//! # }
//! ```

use std::fmt::Display;
use std::str::FromStr;

use crate::__private::bindings::evhost::handler::config as host;
use crate::HandlerError;

/// The value of setting `key`, if the manifest sets it.
pub fn get(key: &str) -> Option<String> {
    host::get(key)
}

/// The value of setting `key` parsed with [`FromStr`]; `Ok(None)` when the manifest does not
/// set it.
///
/// # Errors
///
/// [`HandlerError::Retry`] when the value does not parse. The event is not at fault, the
/// deployment is: once an operator redeploys the handler with the setting fixed, the retried
/// event succeeds instead of waiting in the dead letters for a redrive.
pub fn get_parsed<T>(key: &str) -> Result<Option<T>, HandlerError>
where
    T: FromStr,
    T::Err: Display,
{
    let Some(raw) = host::get(key) else {
        return Ok(None);
    };
    raw.parse().map(Some).map_err(|err| {
        HandlerError::retry(format!("setting `{key}` = {raw:?} is not valid: {err}"))
    })
}
