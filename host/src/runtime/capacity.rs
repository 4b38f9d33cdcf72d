//! The instance pool's capacity, shared by every handler: how many instances, memories and
//! tables can exist at once, and who waits for them.
//!
//! The pooling allocator reserves its slots when the engine starts, and an instantiation that
//! finds no free slot fails. Handlers' concurrency may add up to more than the pool holds (a
//! thousand mostly idle handlers is a normal deployment), so an invocation takes its slots
//! here before it instantiates, and waits, first come first served, while they are taken:
//! one busy handler then slows the others down instead of failing their deliveries. What one
//! handler alone could never get at its concurrency is refused when it is deployed
//! ([`Pool::check_fits`]).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Component instances that can exist at once across all handlers (pooling allocator slots).
/// Each slot only reserves address space until used.
pub(super) const MAX_INSTANCES: u32 = 1000;

/// Linear memories across all instances: two per instance. An instance of a Rust handler
/// has one (measured); a component with more takes more, and its `concurrency` is checked
/// against this at deploy time.
pub(super) const TOTAL_MEMORIES: u32 = MAX_INSTANCES * 2;

/// Tables across all instances: two per instance, which is what an instance of a Rust
/// handler has (measured), so a thousand of them fill the pool exactly.
pub(super) const TOTAL_TABLES: u32 = MAX_INSTANCES * 2;

/// Memories one component instance may have; a component with more cannot be instantiated.
pub(super) const MAX_MEMORIES_PER_COMPONENT: u32 = 4;

/// Tables one component instance may have; a component with more cannot be instantiated.
pub(super) const MAX_TABLES_PER_COMPONENT: u32 = 4;

/// What one instance of a component takes from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Needs {
    pub(super) memories: u32,
    pub(super) tables: u32,
}

impl Needs {
    /// The needs of a component from what wasmtime says it requires; when it cannot say (a
    /// component that imports core modules), the most any component may take.
    pub(super) fn of(component: &wasmtime::component::Component) -> Needs {
        match component.resources_required() {
            Some(required) => Needs {
                memories: required.num_memories,
                tables: required.num_tables,
            },
            None => Needs {
                memories: MAX_MEMORIES_PER_COMPONENT,
                tables: MAX_TABLES_PER_COMPONENT,
            },
        }
    }
}

/// The pool's free slots.
pub(super) struct Pool {
    instances: Arc<Semaphore>,
    memories: Arc<Semaphore>,
    tables: Arc<Semaphore>,
}

/// The slots one invocation holds; dropping it frees them.
pub(super) struct Slots {
    _permits: [OwnedSemaphorePermit; 3],
}

impl Pool {
    pub(super) fn new() -> Pool {
        let semaphore = |n: u32| Arc::new(Semaphore::new(n as usize));
        Pool {
            instances: semaphore(MAX_INSTANCES),
            memories: semaphore(TOTAL_MEMORIES),
            tables: semaphore(TOTAL_TABLES),
        }
    }

    /// Why a handler whose instances need `needs` cannot run `concurrency` of them at once,
    /// if it cannot: then some of its deliveries would wait for slots that never free up.
    pub(super) fn check_fits(needs: Needs, concurrency: u32) -> Result<(), String> {
        if needs.memories > MAX_MEMORIES_PER_COMPONENT {
            return Err(format!(
                "it has {} linear memories, over the {MAX_MEMORIES_PER_COMPONENT} an instance \
                 may have",
                needs.memories
            ));
        }
        if needs.tables > MAX_TABLES_PER_COMPONENT {
            return Err(format!(
                "it has {} tables, over the {MAX_TABLES_PER_COMPONENT} an instance may have",
                needs.tables
            ));
        }
        let wanted = [
            ("instances", 1, MAX_INSTANCES),
            ("linear memories", needs.memories, TOTAL_MEMORIES),
            ("tables", needs.tables, TOTAL_TABLES),
        ];
        for (what, each, total) in wanted {
            let all = u64::from(each) * u64::from(concurrency);
            if all > u64::from(total) {
                return Err(format!(
                    "`concurrency` {concurrency} needs {all} {what} at once ({each} per \
                     invocation), over the {total} the host has (lower `concurrency` to at \
                     most {})",
                    total / each
                ));
            }
        }
        Ok(())
    }

    /// Take the slots for one instance, waiting until they are free. The order is fixed
    /// (instances, memories, tables), and whoever holds a later kind holds the earlier ones,
    /// so waiters never wait on each other in a circle.
    pub(super) async fn acquire(&self, needs: Needs) -> Slots {
        const OPEN: &str = "the pool's semaphores are never closed";
        let take = |semaphore: &Arc<Semaphore>, n: u32| semaphore.clone().acquire_many_owned(n);
        let instance = take(&self.instances, 1).await.expect(OPEN);
        let memories = take(&self.memories, needs.memories).await.expect(OPEN);
        let tables = take(&self.tables, needs.tables).await.expect(OPEN);
        Slots {
            _permits: [instance, memories, tables],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_must_fit_the_pool_alone() {
        let rust = Needs {
            memories: 1,
            tables: 1,
        };
        assert_eq!(Pool::check_fits(rust, MAX_INSTANCES), Ok(()));
        assert_eq!(
            Pool::check_fits(rust, 1024).unwrap_err(),
            "`concurrency` 1024 needs 1024 instances at once (1 per invocation), over the 1000 \
             the host has (lower `concurrency` to at most 1000)"
        );
        let three = Needs {
            memories: 3,
            tables: 0,
        };
        assert_eq!(
            Pool::check_fits(three, 700).unwrap_err(),
            "`concurrency` 700 needs 2100 linear memories at once (3 per invocation), over the \
             2000 the host has (lower `concurrency` to at most 666)"
        );
        let many = Needs {
            memories: 5,
            tables: 0,
        };
        assert!(Pool::check_fits(many, 1).is_err());
    }

    #[tokio::test]
    async fn a_full_pool_makes_the_next_invocation_wait() {
        let pool = Pool::new();
        let needs = Needs {
            memories: 2,
            tables: 0,
        };
        let mut held = Vec::new();
        for _ in 0..MAX_INSTANCES {
            held.push(pool.acquire(needs).await);
        }
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), pool.acquire(needs));
        assert!(waiting.await.is_err(), "the pool was full");
        held.pop();
        let _slot = pool.acquire(needs).await;
    }
}
