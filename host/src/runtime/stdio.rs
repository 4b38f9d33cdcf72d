//! A handler's stdout and stderr: kept in memory up to a bound, the rest dropped and counted.
//!
//! A handler that prints more than it should must not fail for it, nor make the host hold its
//! output without bound. wasmtime-wasi's own memory pipe reports itself closed once full,
//! which a guest's `print!` turns into a panic, so a chatty handler failed its delivery; this
//! one accepts every write, keeps the first [`Captured::keep`] bytes and counts what it drops.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How many bytes one write may offer: the size of the chunks a guest writes in, not a limit
/// (the capture takes any number of them).
const WRITE_PERMIT: usize = 64 * 1024;

/// One stream's capture for one invocation; clones share it.
#[derive(Debug, Clone)]
pub(super) struct Captured {
    keep: usize,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    kept: Vec<u8>,
    dropped: u64,
}

impl Captured {
    /// A capture that keeps the first `keep` bytes written to it.
    pub(super) fn new(keep: usize) -> Captured {
        Captured {
            keep,
            inner: Arc::default(),
        }
    }

    /// What was kept, and how many bytes were dropped after it.
    pub(super) fn take(&self) -> (Vec<u8>, u64) {
        let mut inner = self.lock();
        (std::mem::take(&mut inner.kept), inner.dropped)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the bytes inconsistent: keep going.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        let room = self.keep.saturating_sub(inner.kept.len());
        let kept = bytes.len().min(room);
        inner.kept.extend_from_slice(&bytes[..kept]);
        inner.dropped += (bytes.len() - kept) as u64;
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for Captured {
    /// Always ready: a write never waits.
    async fn ready(&mut self) {}
}

impl AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let mut captured = Captured::new(10);
        for chunk in [&b"hello "[..], b"world", b"!!!"] {
            assert!(captured.check_write().is_ok_and(|n| n > 0));
            OutputStream::write(&mut captured, Bytes::copy_from_slice(chunk)).unwrap();
        }
        assert_eq!(captured.take(), (b"hello worl".to_vec(), 4));
    }
}
