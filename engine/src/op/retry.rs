//! Retries and deadlines: a failed or overrun attempt goes back through the one
//! enqueue path (`enqueue.rs`) as the next attempt, so overrides apply to it exactly as
//! to a first submit.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::enqueue::Enqueue;
use super::state::OpShared;
use crate::admission::Permit;
use crate::error::TokenError;
use crate::placement::LaneSet;
use crate::token::{Chunk, Expired};

/// When and how often a failed call is run again. The caller's token resolves once,
/// with the last attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Up to `max_attempts` attempts on any failure, without backoff.
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
}

impl<A: Send + 'static, R: Send + 'static> OpShared<A, R> {
    /// Whether a failure of `attempt` with `error` is run again.
    pub(super) fn retries(&self, attempt: u8, error: &TokenError) -> bool {
        let Some(policy) = self.options.retry else { return false };
        attempt < policy.max_attempts
            && match error {
                TokenError::Panicked { .. } => policy.on_panic,
                TokenError::Failed(_) => policy.on_error,
                _ => false,
            }
    }

    /// For a call served to a remote submitter whose `delivery`-th run failed with
    /// `error`: the delay before the server should deliver it again, if the policy
    /// retries it (the delivery count is the attempt; a worker that died mid-call used
    /// one too).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(super) fn redelivery_delay(&self, delivery: u8, error: &TokenError) -> Option<Duration> {
        let policy = self.options.retry?;
        let retried = match error {
            TokenError::Panicked { .. } => policy.on_panic,
            TokenError::Failed(_) => policy.on_error,
            TokenError::TimedOut => policy.on_timeout,
            _ => false,
        };
        (retried && delivery < policy.max_attempts).then(|| policy.delay(delivery))
    }

    fn retries_timeout(&self, attempt: u8) -> bool {
        self.options.retry.is_some_and(|p| p.on_timeout && attempt < p.max_attempts)
    }

    /// A copy of the argument for the deadline, when a time-out would be retried.
    pub(super) fn timeout_retry_arg(&self, arg: &A, attempt: u8) -> Option<A> {
        self.retries_timeout(attempt).then(|| self.options.clone_arg.map(|clone| clone(arg)))?
    }

    /// Starts the deadline of `attempt` of token `index`, which a lane has just started
    /// running: at it, the token times out (or moves to the next attempt) even if a
    /// lane is still running it, and that lane is replaced so it keeps serving.
    pub(super) fn arm_deadline(
        self: &Arc<Self>,
        chunk: &Arc<Chunk<R>>,
        index: u32,
        attempt: u8,
        arg: Option<A>,
    ) {
        let Some(timeout) = self.options.timeout else { return };
        let op = Arc::clone(self);
        let chunk = Arc::downgrade(chunk);
        self.engine.runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(chunk) = chunk.upgrade() else { return };
            let retry = arg.is_some() && op.retries_timeout(attempt);
            let expired = chunk.expire(index, attempt, retry);
            if let Expired::TimedOut { running: true } | Expired::Retried { running: true } =
                expired
            {
                op.engine.lanes.retire_stuck(chunk.id_of(index));
            }
            if let (Expired::Retried { .. }, Some(arg)) = (expired, arg) {
                op.counters.retried.fetch_add(1, Relaxed);
                op.requeue(chunk, index, arg, attempt + 1, Duration::ZERO);
            }
        });
    }

    /// Queues `attempt` of a token that already moved to it, after `delay`, through the
    /// one enqueue path. Holds an admission permit meanwhile, so shutdown waits for it
    /// (or cancels it, on abort).
    pub(super) fn requeue(
        self: &Arc<Self>,
        chunk: Arc<Chunk<R>>,
        index: u32,
        arg: A,
        attempt: u8,
        delay: Duration,
    ) {
        self.engine.admission.force_acquire(Permit::new(1, self.bytes_of(&arg)), &self.queue);
        // The running attempt still holds its key's lane: the retry keeps it, even
        // across the backoff.
        let home = self.options.locality.map(|key| self.enter_home(key(&arg), LaneSet::Light));
        if delay.is_zero() {
            Enqueue::retry(self, &chunk, index, arg, attempt, home);
            return;
        }
        let op = Arc::clone(self);
        self.engine.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            Enqueue::retry(&op, &chunk, index, arg, attempt, home);
        });
    }
}
