//! `evhost:handler/state`: the handler's own key-value state.
//!
//! Reads see the committed state overlaid with this invocation's staged writes; writes only
//! stage. Each committed key read is remembered with its version: if another invocation of
//! the same handler writes that key before this one commits, the commit is refused and the
//! invocation runs again on fresh state (optimistic concurrency, so that two concurrent
//! read-modify-writes of one key never lose an update). `list-keys` is not tracked: a key
//! appearing in a listed range does not cause a conflict. The [`StateReader`](crate::store::StateReader) is scoped to the handler when the
//! invocation starts, so there is no way to name another handler's state.

use wasmtime::Result;

use super::Invocation;
use crate::wit::evhost::handler::state::Host;

/// Longest state key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest state value, in bytes; larger state belongs in several keys. How many a handler
/// may stage at once is its budget's (`max_staged_mb`, `max_writes`).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

impl Host for Invocation {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        if let Some(staged) = self.staged.state_writes.get(&key) {
            return Ok(staged.clone());
        }
        // No key this long can have been written: nothing to read, nothing to track.
        if check_key(&key).is_err() {
            return Ok(None);
        }
        // A read failure is the host's, not the handler's: trap, and the delivery is retried.
        let (value, version) = self
            .state
            .get_versioned(&key)
            .await
            .map_err(wasmtime::Error::from_anyhow)?;
        // The first read of a key is what the handler based its decision on.
        self.track_read(key, version).map_err(super::trap)?;
        Ok(value)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<Result<(), String>> {
        if let Err(problem) = check_key(&key) {
            return Ok(Err(problem));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Ok(Err(format!(
                "value for key `{key}` is {} bytes, over the limit of {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        Ok(self.stage_write(key, Some(value)).map_err(super::refusal))
    }

    fn delete(&mut self, key: String) -> Result<()> {
        if check_key(&key).is_ok() {
            self.stage_write(key, None).map_err(super::trap)?;
        }
        Ok(())
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>> {
        let mut keys = self
            .state
            .list_keys(&prefix)
            .await
            .map_err(wasmtime::Error::from_anyhow)?;
        for (key, value) in self.staged.state_writes.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            match value {
                Some(_) => keys.push(key.clone()),
                None => keys.retain(|k| k != key),
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("state key is empty".to_owned());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "state key is {} bytes, over the limit of {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    Ok(())
}
