//! The per-invocation memory limit.

use wasmtime::ResourceLimiter;
use wasmtime::{Result, bail};

/// Caps an instance's linear memories at the handler's `memory_mb`, and remembers that the
/// cap was hit so that the failure is reported as a memory overrun, not as a bare trap.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit_bytes: u64,
    exceeded: bool,
}

/// Table elements one instance may grow to; tables hold function references, and a handler
/// that needs more than this is broken.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl MemoryLimiter {
    pub fn new(limit_bytes: u64) -> Self {
        MemoryLimiter {
            limit_bytes,
            exceeded: false,
        }
    }

    /// Whether the instance tried to grow past its limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        if desired as u64 > self.limit_bytes {
            self.exceeded = true;
            // An error (not `Ok(false)`) traps at once: a guest allocator that sees a failed
            // grow often retries or aborts in ways that hide the cause.
            bail!(
                "memory limit of {} MiB exceeded (asked for {desired} bytes)",
                self.limit_bytes >> 20
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
