//! The retry policy: which failures run again, after what backoff. Running them again
//! is `requeue.rs`'s.

use std::time::Duration;

use crate::error::TokenError;

/// When and how often a failed call is run again. The caller's token resolves once,
/// with the last attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (2..=255 to retry at all).
    pub max_attempts: u8,
    /// Retry after a panic.
    pub on_panic: bool,
    /// Retry after the function returned an error.
    pub on_error: bool,
    /// Retry after a deadline passed.
    pub on_timeout: bool,
    /// Wait before attempt `n + 1`: `backoff × 2^(n - 1)`.
    pub backoff: Duration,
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts on any failure, without backoff (0 and 1 both
    /// mean a single attempt).
    pub fn new(max_attempts: u8) -> Self {
        RetryPolicy {
            max_attempts,
            on_panic: true,
            on_error: true,
            on_timeout: true,
            backoff: Duration::ZERO,
        }
    }

    /// Sets which failures are retried.
    pub fn on(mut self, panic: bool, error: bool, timeout: bool) -> Self {
        (self.on_panic, self.on_error, self.on_timeout) = (panic, error, timeout);
        self
    }

    /// Sets the base backoff (doubled after each attempt).
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    pub(super) fn delay(&self, failed_attempt: u8) -> Duration {
        self.backoff.saturating_mul(1 << failed_attempt.saturating_sub(1).min(16))
    }

    /// Whether a failure of `attempt` with `error` is run again.
    pub(super) fn retries(&self, attempt: u8, error: &TokenError) -> bool {
        attempt < self.max_attempts
            && match error {
                TokenError::Panicked { .. } => self.on_panic,
                TokenError::Failed(_) => self.on_error,
                _ => false,
            }
    }

    /// Whether a time-out of `attempt` is run again.
    pub(super) fn retries_timeout(&self, attempt: u8) -> bool {
        self.on_timeout && attempt < self.max_attempts
    }

    /// For a call served to a remote submitter whose `delivery`-th run failed with
    /// `error`: the delay before the server should deliver it again, if this policy
    /// retries it (the delivery count is the attempt; a worker that died mid-call used
    /// one too).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(super) fn redelivery_delay(&self, delivery: u8, error: &TokenError) -> Option<Duration> {
        let retried = match error {
            TokenError::Panicked { .. } => self.on_panic,
            TokenError::Failed(_) => self.on_error,
            TokenError::TimedOut => self.on_timeout,
            _ => false,
        };
        (retried && delivery < self.max_attempts).then(|| self.delay(delivery))
    }
}
