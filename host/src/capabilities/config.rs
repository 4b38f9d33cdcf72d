//! `evhost:handler/config`: the handler's settings from the manifest, read-only.

use wasmtime::Result;

use super::Invocation;
use crate::wit::evhost::handler::config::Host;

impl Host for Invocation {
    fn get(&mut self, key: String) -> Result<Option<String>> {
        Ok(self.settings.get(&key).cloned())
    }
}
