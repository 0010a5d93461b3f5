//! The [`Token`] handle: waiting for a slot's result, blocking or as a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use super::{pack, Chunk, Slot, TokenState, FIRST_ATTEMPT, QUEUED};
use crate::error::{CancelSource, RejectReason, TokenError};

/// A handle to one submitted call.
///
/// It resolves exactly once, to the operation's value or a [`TokenError`]. Wait for it
/// with [`Token::wait`] (blocking) or `.await` it (it implements [`Future`]). Dropping a
/// token does not cancel the call; use [`Token::cancel`] for that.
pub struct Token<R> {
    pub(super) chunk: Arc<Chunk<R>>,
    pub(super) index: u32,
}

impl<R> Token<R> {
    /// A token that is already resolved as rejected.
    pub(crate) fn rejected(id: u64, reason: RejectReason) -> Self {
        let chunk = Chunk::new(id, 1, None);
        let rejected = Err(TokenError::Rejected { reason });
        let _ = chunk.slots[0].resolve_from(pack(QUEUED, FIRST_ATTEMPT), rejected);
        chunk.token(0)
    }

    #[inline]
    fn slot(&self) -> &Slot<R> {
        self.chunk.slot(self.index)
    }

    /// This token's engine-wide unique id.
    pub fn id(&self) -> u64 {
        self.chunk.base_id + u64::from(self.index)
    }

    /// Where the token is now. A snapshot: it may change right after.
    pub fn state(&self) -> TokenState {
        self.slot().state()
    }

    /// True once the token has resolved (its result may already have been taken).
    pub fn is_finished(&self) -> bool {
        self.state().is_terminal()
    }

    /// Cancels the token if it has not started; it then resolves as
    /// `Err(TokenError::Cancelled { by: CancelSource::Caller })`.
    ///
    /// Returns false if it had already started or resolved: a running call is never
    /// interrupted.
    pub fn cancel(&self) -> bool {
        self.chunk.cancel(self.index, CancelSource::Caller)
    }

    /// The attempt the token is on (1 until a retry).
    pub fn attempt(&self) -> u8 {
        self.slot().attempt()
    }

    /// Blocks the calling thread until the token resolves.
    ///
    /// Do not call this from inside an async task; `.await` the token instead.
    pub fn wait(mut self) -> Result<R, TokenError> {
        // SAFETY: `self` is the slot's unique handle, owned here.
        if let Some(result) = unsafe { self.slot().try_take() } {
            return result;
        }
        block_on(&mut self)
    }

    /// Like [`Token::wait`], but gives the token back if it has not resolved within
    /// `timeout`.
    pub fn wait_timeout(
        mut self,
        timeout: std::time::Duration,
    ) -> Result<Result<R, TokenError>, Self> {
        let deadline = std::time::Instant::now() + timeout;
        THREAD_WAKER.with(|waker| {
            let mut cx = Context::from_waker(waker);
            loop {
                if let Poll::Ready(result) = Pin::new(&mut self).poll(&mut cx) {
                    return Ok(result);
                }
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(self);
                }
                thread::park_timeout(left);
            }
        })
    }
}

impl<R> Future for Token<R> {
    type Output = Result<R, TokenError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let slot = self.slot();
        // SAFETY: `Pin<&mut Token>` is exclusive access to the slot's unique handle.
        if let Some(result) = unsafe { slot.try_take() } {
            return Poll::Ready(result);
        }
        slot.waker.register(cx.waker());
        // Re-check: the worker may have resolved it between the first check and the
        // registration, and then it woke nobody.
        // SAFETY: as above, exclusive access to the unique handle.
        match unsafe { slot.try_take() } {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}

impl<R> std::fmt::Debug for Token<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("id", &self.id()).field("state", &self.state()).finish()
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    static THREAD_WAKER: Waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
}

/// Runs a future to completion on the calling thread, parking between polls.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    THREAD_WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            thread::park();
        }
    })
}
