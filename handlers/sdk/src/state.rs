//! The handler's own key-value state: what must outlive one event.
//!
//! Keys are strings, values bytes; [`get_json`] and [`set_json`] keep JSON in them. No
//! handler can see another's state. Reads see the committed state plus this invocation's own
//! staged writes; writes are staged and committed with the delivery, or discarded if the
//! handler fails. So a read-modify-write inside one invocation is safe against a retry; it is
//! safe against other invocations of the same handler running at once only when the host
//! serialises them (`ordering = "key"` for keys derived from the partition key, or
//! `ordering = "serial"`).
//!
//! ```no_run
//! # fn handle() -> Result<(), evhost_sdk::HandlerError> {
//! use evhost_sdk::state;
//!
//! let key = "stock/sku-1";
//! let stock: u64 = state::get_json(key)?.unwrap_or(0);
//! state::set_json(key, &(stock + 10))?;
//! # Ok(())
//! # }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::bindings::evhost::handler::state as host;
use crate::HandlerError;

/// The value under `key`, if any.
pub fn get(key: &str) -> Option<Vec<u8>> {
    host::get(key)
}

/// Stage `value` under `key`.
///
/// # Errors
///
/// [`HandlerError::Reject`] when the host refuses the write: the key is empty or too long,
/// or the value too large (the message says which limit). Delivering the same event again
/// would make the same write, so retrying cannot help.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), HandlerError> {
    host::set(key, value.as_ref())
        .map_err(|err| HandlerError::reject(format!("cannot set state `{key}`: {err}")))
}

/// Stage the removal of `key`; removing a missing key is not an error.
pub fn delete(key: &str) {
    host::delete(key);
}

/// The keys that start with `prefix`, sorted (`""` lists them all).
pub fn list_keys(prefix: &str) -> Vec<String> {
    host::list_keys(prefix)
}

/// The value under `key`, parsed as JSON into `T`; `Ok(None)` when the key is absent.
///
/// # Errors
///
/// [`HandlerError::Reject`] when the stored value is not JSON of the shape `T` expects
/// (written by an older version of the handler, say): retrying would read the same value.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, HandlerError> {
    let Some(bytes) = host::get(key) else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|err| {
        HandlerError::reject(format!(
            "state `{key}` does not hold the expected JSON: {err}"
        ))
    })
}

/// Stage `value`, serialized as JSON, under `key`.
///
/// # Errors
///
/// [`HandlerError::Reject`] when `value` does not serialize (a map with non-string keys,
/// say) or the host refuses the write (see [`set`]): both would happen again on a retry.
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), HandlerError> {
    let bytes = serde_json::to_vec(value).map_err(|err| {
        HandlerError::reject(format!("cannot serialize state `{key}` as JSON: {err}"))
    })?;
    set(key, bytes)
}
