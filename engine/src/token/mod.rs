//! The token: a handle to one call that resolves exactly once.
//!
//! # State machine
//!
//! Each token owns one [`Slot`] inside a shared [`Chunk`] (one allocation serves every
//! token of a `submit_many` chunk). The slot's `state` word — a state byte and the
//! attempt number — is the only thing that decides who may write the result:
//!
//! ```text
//!  QUEUED@a ──claim (worker)──► RUNNING@a ──finish (worker)───────┐
//!    ▲  │                          │  │                           ▼
//!    │  └──cancel (caller, abort)──┼──┴──deadline (timer)──► WRITING ──► COMPLETED |
//!    │                             │                                    FAILED | CANCELLED |
//!    └─────── retry: QUEUED@a+1 ◄──┘ (worker after a failure,           TIMED_OUT
//!                                     or the timer at a deadline)
//! ```
//!
//! Whoever wins the compare-and-swap into `WRITING` writes the result, then publishes
//! the terminal state with `Release`; everyone else backs off. Every transition names
//! the attempt it expects, so a worker still running attempt 1 after its deadline moved
//! the token on (timed out, or retried as attempt 2) fails its CAS and its late value is
//! dropped, never delivered. The handle reads the result only after seeing a terminal
//! state with `Acquire`, and marks it `TAKEN` so it is moved out once and the chunk's
//! destructor knows not to drop it again. A token therefore resolves exactly once.
//! A waiter that finds the token pending registers its waker and then sets the
//! `WAITER` bit on the (not yet terminal) state; every transition keeps the bit, and
//! the publishing swap into the terminal state wakes the waker only when the bit was
//! set, so a result nobody waits for yet costs no wake-up.
//! The `loom_tests` module (`loom_tests.rs`) model-checks these races
//! (`RUSTFLAGS="--cfg tokengate_loom" cargo test -p tokengate --lib loom`).
//!
//! `index.rs` finds a waiting token's slot by its id, for the control port's `cancel`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use self::sync::{AtomicU32, AtomicWaker, Ordering, ResultCell};

use crate::error::{CancelSource, TokenError};

mod chunk;
mod handle;
mod index;
mod sync;

pub(crate) use chunk::{Chunk, ChunkOf, Start, Tail};
#[allow(deprecated)]
pub use handle::join;
pub(crate) use handle::{block_on, on_lane, wait_slot, with_helper, Helper, Outside};
pub use handle::{wait_both, Token};
pub(crate) use index::{CancelById, TokenIndex};

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const WRITING: u8 = 2;
const COMPLETED: u8 = 3;
const FAILED: u8 = 4;
const CANCELLED: u8 = 5;
const TIMED_OUT: u8 = 6;
const REJECTED: u8 = 7;
/// Set on a terminal state once the handle has moved the result out.
const TAKEN: u8 = 0x80;
/// Set on a state that is not terminal yet once a waiter has registered its waker:
/// only then does resolving the token wake anybody (see [`Slot::publish`]).
const WAITER: u32 = 0x40;
const STATE_BITS: u32 = 0xFF;
/// The first attempt's number.
pub(crate) const FIRST_ATTEMPT: u8 = 1;

#[inline]
fn pack(state: u8, attempt: u8) -> u32 {
    (u32::from(attempt) << 8) | u32::from(state)
}

/// The state byte (with `TAKEN`, without `WAITER`).
#[inline]
fn state_of(word: u32) -> u8 {
    (word & STATE_BITS & !WAITER) as u8
}

#[inline]
fn attempt_of(word: u32) -> u8 {
    (word >> 8) as u8
}

/// Where a token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenState {
    /// Admitted and queued on a lane, not started.
    Admitted,
    /// A worker is running it.
    Running,
    /// Finished with a value.
    Completed,
    /// The operation panicked or returned an error.
    Failed,
    /// Cancelled before it started.
    Cancelled,
    /// Its deadline passed.
    TimedOut,
    /// The engine did not admit it.
    Rejected,
}

impl TokenState {
    /// True for the states a token never leaves.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TokenState::Admitted | TokenState::Running)
    }
}

/// The outcome a worker reports for each token of a batch it processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Failed,
    /// Resolved by someone else before the worker got to it (cancelled, timed out).
    Skipped,
}

/// What a deadline did to a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// The attempt had already ended (finished, failed, or moved on).
    Nothing,
    /// Resolved as timed out; `running` says whether a lane was still running it.
    TimedOut { running: bool },
    /// Moved to the next attempt (retry on timeout); `running` as above.
    Retried { running: bool },
}

/// Resolutions of one operation's tokens, counted where the resolving CAS is won.
#[derive(Debug, Default)]
pub(crate) struct Resolutions {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) timed_out: AtomicU64,
}

pub(crate) struct Slot<R> {
    state: AtomicU32,
    waker: AtomicWaker,
    result: ResultCell<Result<R, TokenError>>,
}

// SAFETY: `result` is written only by the single thread that won the CAS into
// `WRITING`, and read only by the slot's unique handle (its `Token`, or
// `Operation::map`, which makes none) after it observed a terminal state with
// `Acquire` (which pairs with the writer's `AcqRel` swap in `publish`). No two threads
// ever touch `result` at the same time, so sharing a `Slot` is sound whenever the
// value itself may be sent between threads.
unsafe impl<R: Send> Sync for Slot<R> {}

impl<R> Slot<R> {
    fn new(attempt: u8) -> Self {
        Slot {
            state: AtomicU32::new(pack(QUEUED, attempt)),
            waker: AtomicWaker::new(),
            result: ResultCell::new(),
        }
    }

    /// A worker claims attempt `attempt` before running it. False if the token was
    /// resolved or moved to another attempt.
    #[inline]
    pub(crate) fn claim(&self, attempt: u8) -> bool {
        self.advance(pack(QUEUED, attempt), pack(RUNNING, attempt), Ordering::Acquire)
    }

    /// Moves the state word from `from` to `to` (neither with `WAITER`), keeping the
    /// waiter bit if a waiter set it meanwhile. False if the word is neither.
    #[inline]
    fn advance(&self, from: u32, to: u32, success: Ordering) -> bool {
        match self.state.compare_exchange(from, to, success, Ordering::Relaxed) {
            Ok(_) => true,
            // A waiter registered: the bit is never cleared before the token resolves,
            // so one more try settles it.
            Err(actual) if actual == from | WAITER => {
                self.state.compare_exchange(actual, to | WAITER, success, Ordering::Relaxed).is_ok()
            }
            Err(_) => false,
        }
    }

    /// Marks the slot as waited for (its waker is registered). False if the token has
    /// resolved already: the waiter then takes the result instead of waiting.
    #[inline]
    fn mark_waiter(&self) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if state_of(current) >= COMPLETED {
                return false;
            }
            if current & WAITER != 0 {
                return true;
            }
            match self.state.compare_exchange(
                current,
                current | WAITER,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Resolves the token if its state word is still `from`. Returns the value back if
    /// somebody else moved it first.
    #[inline]
    fn resolve_from(
        &self,
        from: u32,
        result: Result<R, TokenError>,
    ) -> Result<(), Result<R, TokenError>> {
        let attempt = attempt_of(from);
        let writing = pack(WRITING, attempt) | (from & WAITER);
        if self.state.compare_exchange(from, writing, Ordering::Acquire, Ordering::Relaxed).is_err()
        {
            return Err(result);
        }
        // SAFETY: the CAS above moved the slot into WRITING for `attempt`.
        unsafe { self.publish(attempt, result) };
        Ok(())
    }

    /// The short path's claim, for calls nobody else can resolve once they start (no
    /// deadline, no retry, no dedupe: only a cancel, which takes queued tokens alone):
    /// straight from queued to `WRITING`, so the result is published without a second
    /// CAS. False if the token was cancelled first. The caller must then
    /// [`Slot::publish`] exactly once.
    #[inline]
    pub(crate) fn claim_to_write(&self, attempt: u8) -> bool {
        self.advance(pack(QUEUED, attempt), pack(WRITING, attempt), Ordering::Acquire)
    }

    /// Writes the result and resolves the token: the one way out of `WRITING`, for
    /// whoever won the CAS into it ([`Slot::claim_to_write`], `finish_and`,
    /// `resolve_from`).
    ///
    /// # Safety
    /// The caller has moved this slot into `WRITING` for `attempt` (won the CAS into it)
    /// and not published since: it is then the result cell's only writer, and no reader
    /// looks at the cell before the terminal state this stores.
    #[inline]
    pub(crate) unsafe fn publish(&self, attempt: u8, result: Result<R, TokenError>) -> Outcome {
        let outcome = if result.is_ok() { Outcome::Completed } else { Outcome::Failed };
        let terminal = terminal_code(&result);
        // SAFETY: the caller won the CAS into WRITING (this fn's contract), so it is the
        // only writer, and no reader looks at `result` before the terminal state below.
        unsafe { self.result.write(result) };
        // One swap publishes the result and tells whether anybody waits: a token whose
        // handle finds it resolved (most of a bulk submit's) never registered a waker,
        // and then there is nobody to wake. Acquire pairs with the waiter's mark, made
        // after it registered its waker.
        let before = self.state.swap(pack(terminal, attempt), Ordering::AcqRel);
        if before & WAITER != 0 {
            self.waker.wake();
        }
        outcome
    }

    /// The worker finished running attempt `attempt`.
    #[inline]
    pub(crate) fn finish(&self, attempt: u8, result: Result<R, TokenError>) -> Outcome {
        self.finish_and(attempt, result, |_| {})
    }

    /// [`Slot::finish`], calling `first` with the result once this attempt has won the
    /// right to resolve the token and before the token is resolved (duplicate calls
    /// waiting on this one get their copies there).
    #[inline]
    pub(crate) fn finish_and(
        &self,
        attempt: u8,
        result: Result<R, TokenError>,
        first: impl FnOnce(&Result<R, TokenError>),
    ) -> Outcome {
        if !self.advance(pack(RUNNING, attempt), pack(WRITING, attempt), Ordering::Acquire) {
            // A deadline resolved it or moved it on while it ran: the late value is
            // dropped here, never delivered.
            return Outcome::Skipped;
        }
        first(&result);
        // SAFETY: the advance above moved the slot into WRITING for `attempt`.
        unsafe { self.publish(attempt, result) }
    }

    /// Resolves a token that was never queued to run (a duplicate of a call in flight)
    /// with the result the first call produced. False if it was already resolved.
    pub(crate) fn resolve_waiting(&self, result: Result<R, TokenError>) -> bool {
        let mut result = result;
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if state_of(current) != QUEUED {
                return false;
            }
            match self.resolve_from(current, result) {
                Ok(()) => return true,
                Err(back) => {
                    result = back;
                    current = self.state.load(Ordering::Acquire);
                }
            }
        }
    }

    /// True once the token has resolved.
    pub(crate) fn is_resolved(&self) -> bool {
        state_of(self.state.load(Ordering::Acquire)) & !TAKEN >= COMPLETED
    }

    /// After a failed attempt the worker hands the token to the next attempt. False if
    /// a deadline got there first.
    pub(crate) fn retry(&self, attempt: u8) -> bool {
        let next = pack(QUEUED, attempt.wrapping_add(1));
        self.advance(pack(RUNNING, attempt), next, Ordering::AcqRel)
    }

    /// A deadline for attempt `attempt` passed: time the token out, or (`retry`) move it
    /// to the next attempt, if that attempt is still queued or running.
    pub(crate) fn expire(&self, attempt: u8, retry: bool) -> Expired {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let state = state_of(current);
            if attempt_of(current) != attempt || !(state == QUEUED || state == RUNNING) {
                return Expired::Nothing;
            }
            let running = state == RUNNING;
            if !retry {
                return match self.resolve_from(current, Err(TokenError::TimedOut)) {
                    Ok(()) => Expired::TimedOut { running },
                    Err(_) => {
                        current = self.state.load(Ordering::Acquire);
                        continue;
                    }
                };
            }
            let next = pack(QUEUED, attempt.wrapping_add(1)) | (current & WAITER);
            match self.state.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Expired::Retried { running },
                Err(actual) => current = actual,
            }
        }
    }

    /// Resolves a token that has not started (any attempt). False if it is running or
    /// resolved.
    pub(crate) fn cancel(&self, by: CancelSource) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if state_of(current) != QUEUED {
                return false;
            }
            match self.resolve_from(current, Err(TokenError::Cancelled { by })) {
                Ok(()) => return true,
                Err(_) => current = self.state.load(Ordering::Acquire),
            }
        }
    }

    /// The attempt the token is on.
    pub(crate) fn attempt(&self) -> u8 {
        attempt_of(self.state.load(Ordering::Acquire))
    }

    /// True while the given attempt is running and nobody has resolved or moved it.
    pub(crate) fn is_running(&self, attempt: u8) -> bool {
        self.state.load(Ordering::Acquire) & !WAITER == pack(RUNNING, attempt)
    }

    pub(crate) fn state(&self) -> TokenState {
        match state_of(self.state.load(Ordering::Acquire)) & !TAKEN {
            QUEUED => TokenState::Admitted,
            RUNNING | WRITING => TokenState::Running,
            COMPLETED => TokenState::Completed,
            FAILED => TokenState::Failed,
            CANCELLED => TokenState::Cancelled,
            TIMED_OUT => TokenState::TimedOut,
            _ => TokenState::Rejected,
        }
    }

    /// Moves the result out if the token has resolved.
    ///
    /// # Safety
    /// Only the slot's unique handle may call this: its `Token` (callers hold
    /// `&mut Token`), or a caller that made no `Token` for it (`Operation::map`).
    #[inline]
    unsafe fn try_take(&self) -> Option<Result<R, TokenError>> {
        let word = self.state.load(Ordering::Acquire);
        let state = state_of(word);
        if state < COMPLETED {
            return None;
        }
        assert!(state & TAKEN == 0, "a token's result was taken twice (polled after it resolved)");
        // SAFETY: a terminal state was published with Release after the write, we loaded
        // it with Acquire, and TAKEN is clear, so the value is initialised and unread.
        let result = unsafe { self.result.take() };
        self.state.store(word | u32::from(TAKEN), Ordering::Relaxed);
        Some(result)
    }
}

fn terminal_code<R>(result: &Result<R, TokenError>) -> u8 {
    match result {
        Ok(_) => COMPLETED,
        Err(TokenError::Cancelled { .. }) => CANCELLED,
        Err(TokenError::TimedOut) => TIMED_OUT,
        Err(TokenError::Rejected { .. }) => REJECTED,
        Err(_) => FAILED,
    }
}

/// Bytes one token's slot takes (for the memory estimate).
pub(crate) fn slot_size<R>() -> usize {
    std::mem::size_of::<Slot<R>>()
}

#[cfg(tokengate_loom)]
mod loom_tests;

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    #[test]
    fn resolves_once_and_drops_untaken_values() {
        let chunk = Chunk::<String>::new(10, 3, None);
        let (a, b, c) = (chunk.token(0), chunk.token(1), chunk.token(2));
        assert_eq!(a.id(), 10);
        assert_eq!(c.id(), 12);
        assert!(chunk.slot(0).claim(1));
        assert_eq!(chunk.slot(0).finish(1, Ok("a".into())), Outcome::Completed);
        assert!(!a.cancel(), "a resolved token cannot be cancelled");
        assert!(b.cancel());
        assert!(!chunk.slot(1).claim(1), "a cancelled token is not run");
        assert!(chunk.slot(2).claim(1));
        assert_eq!(chunk.slot(2).finish(1, Ok("never taken".into())), Outcome::Completed);
        drop(chunk);
        assert_eq!(a.wait().unwrap(), "a");
        assert_eq!(b.wait(), Err(TokenError::Cancelled { by: CancelSource::Caller }));
        assert_eq!(c.state(), TokenState::Completed);
        drop(c); // the untaken String is dropped by the chunk (tests/memcheck.sh checks it)
    }

    #[test]
    fn late_result_after_a_deadline_is_dropped() {
        let chunk = Chunk::<u32>::new(0, 1, None);
        let token = chunk.token(0);
        assert!(chunk.slot(0).claim(1));
        assert_eq!(chunk.slot(0).expire(1, false), Expired::TimedOut { running: true });
        assert_eq!(chunk.slot(0).finish(1, Ok(7)), Outcome::Skipped);
        assert_eq!(token.wait(), Err(TokenError::TimedOut));
    }

    #[test]
    fn a_stale_attempt_cannot_resolve_the_next_one() {
        let chunk = Chunk::<u32>::new(0, 1, None);
        let token = chunk.token(0);
        assert!(chunk.slot(0).claim(1));
        // Attempt 1 overruns its deadline; the timer moves the token to attempt 2.
        assert_eq!(chunk.slot(0).expire(1, true), Expired::Retried { running: true });
        assert!(chunk.slot(0).claim(2));
        // Attempt 1 returns late while attempt 2 runs: its value is dropped.
        assert_eq!(chunk.slot(0).finish(1, Ok(1)), Outcome::Skipped);
        assert_eq!(chunk.slot(0).expire(1, false), Expired::Nothing, "old deadline is void");
        assert_eq!(chunk.slot(0).finish(2, Ok(2)), Outcome::Completed);
        assert_eq!(token.attempt(), 2);
        assert_eq!(token.wait(), Ok(2));
    }

    #[test]
    fn retry_after_failure_and_cancel_of_a_queued_retry() {
        let chunk = Chunk::<u32>::new(0, 1, None);
        let token = chunk.token(0);
        assert!(chunk.slot(0).claim(1));
        assert!(chunk.slot(0).retry(1));
        assert!(!chunk.slot(0).claim(1), "attempt 1 is over");
        assert!(token.cancel(), "a queued retry can be cancelled");
        assert!(!chunk.slot(0).claim(2));
        assert_eq!(token.wait(), Err(TokenError::Cancelled { by: CancelSource::Caller }));
    }

    #[test]
    fn wait_blocks_until_another_thread_resolves() {
        let chunk = Chunk::<u64>::new(0, 1, None);
        let token = chunk.token(0);
        let worker = {
            let chunk = Arc::clone(&chunk);
            thread::spawn(move || {
                thread::sleep(std::time::Duration::from_millis(20));
                assert!(chunk.slot(0).claim(1));
                chunk.slot(0).finish(1, Ok(42))
            })
        };
        assert_eq!(token.wait(), Ok(42));
        assert_eq!(worker.join().unwrap(), Outcome::Completed);
    }
}
