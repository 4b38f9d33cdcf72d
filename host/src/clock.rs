//! The host's clock: what "now" is for every timing decision (retry due times, rate tokens,
//! drain rates).
//!
//! Time is injected rather than read from the wall wherever a decision is made, so that the
//! decisions are functions of their inputs and their tests need not sleep. [`Clock`] counts
//! Unix milliseconds on tokio's clock, anchored to the wall clock when it is made: it never
//! jumps with the wall clock, it agrees with `tokio::time::sleep`, and under
//! `tokio::time::pause()` it stands still until the test advances it.

use std::time::Duration;

/// Unix milliseconds, monotonic from when the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor_ms: i64,
    anchor: tokio::time::Instant,
}

impl Clock {
    /// A clock reading the wall clock's time now, then tokio's time from here on.
    pub fn new() -> Clock {
        Clock {
            anchor_ms: chrono::Utc::now().timestamp_millis(),
            anchor: tokio::time::Instant::now(),
        }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.anchor);
        self.anchor_ms
            .saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
    }

    /// How long from now until `at_ms` (zero if it has passed).
    pub fn until(&self, at_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(at_ms - self.now_ms()).unwrap_or(0))
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_moves_only_with_tokio_time() {
        let clock = Clock::new();
        let start = clock.now_ms();
        assert_eq!(clock.now_ms(), start);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now_ms(), start + 1500);
        assert_eq!(clock.until(start + 2000), Duration::from_millis(500));
        assert_eq!(clock.until(start), Duration::ZERO);
    }
}
