//! The threads that run Wasm: a tokio runtime of their own beside the one serving HTTP.
//! Epoch yields keep any one invocation from holding a thread for long, and separate threads
//! let the OS share the cores fairly between serving requests and running handlers.

use anyhow::Result;

pub(super) struct WasmThreads {
    runtime: Option<tokio::runtime::Runtime>,
}

impl WasmThreads {
    pub(super) fn start() -> Result<WasmThreads> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("evhost-wasm")
            .enable_all()
            .build()?;
        Ok(WasmThreads {
            runtime: Some(runtime),
        })
    }

    pub(super) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }
}

impl Drop for WasmThreads {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; let its threads wind down on their own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
