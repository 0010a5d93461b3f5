//! The [`Token`] handle: waiting for a slot's result, blocking or as a future.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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
        let _ = chunk.slot(0).resolve_from(pack(QUEUED, FIRST_ATTEMPT), rejected);
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
    pub fn wait(self) -> Result<R, TokenError> {
        // SAFETY: `self` is the slot's unique handle, owned here.
        unsafe { wait_slot(&self.chunk, self.slot()) }
    }

    /// Like [`Token::wait`], but gives the token back if it has not resolved within
    /// `timeout`.
    pub fn wait_timeout(
        mut self,
        timeout: std::time::Duration,
    ) -> Result<Result<R, TokenError>, Self> {
        let deadline = std::time::Instant::now() + timeout;
        THREAD_WAKER.with(|thread_waker| {
            let waker = Waker::from(Arc::clone(thread_waker));
            let mut cx = Context::from_waker(&waker);
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
        // SAFETY: `Pin<&mut Token>` is exclusive access to the slot's unique handle.
        unsafe { poll_slot(self.slot(), cx) }
    }
}

/// Polls a slot for its result.
///
/// # Safety
/// The caller is the slot's unique handle (a `Token`, or a caller that made no handle
/// for the slot, as [`Operation::map`](crate::Operation::map)).
#[inline]
unsafe fn poll_slot<R>(slot: &Slot<R>, cx: &mut Context<'_>) -> Poll<Result<R, TokenError>> {
    // SAFETY: the unique handle, per this function's contract.
    if let Some(result) = unsafe { slot.try_take() } {
        return Poll::Ready(result);
    }
    slot.waker.register(cx.waker());
    // Marked only after the waker is in place: a resolution that sees the mark wakes
    // it; one that came first fails the mark, and the result is taken here.
    if slot.mark_waiter() {
        return Poll::Pending;
    }
    // SAFETY: as above.
    Poll::Ready(unsafe { slot.try_take() }.expect("a token that is not pending is resolved"))
}

/// A slot's result as a future, for a caller that holds no `Token` for it.
struct SlotWait<'a, R>(&'a Slot<R>);

impl<R> Future for SlotWait<'_, R> {
    type Output = Result<R, TokenError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: a `SlotWait` is only made by `wait_slot`, whose caller is the slot's
        // unique handle.
        unsafe { poll_slot(self.0, cx) }
    }
}

/// Blocks until `slot` (one of `chunk`'s) resolves and takes its result: a blocking wait
/// that runs other work on a lane (see [`block_on`]), and on an outside thread spins a
/// little, then helps a backlog (see [`help_outside`]), then parks.
///
/// # Safety
/// The caller is the slot's unique handle, as for [`poll_slot`].
pub(crate) unsafe fn wait_slot<R>(chunk: &Chunk<R>, slot: &Slot<R>) -> Result<R, TokenError> {
    // SAFETY: the unique handle, per this function's contract.
    if let Some(result) = unsafe { slot.try_take() } {
        return result; // the common case in bulk: checked before anything else
    }
    // A thread that is not a lane spins (then yields) a little before it parks: a
    // short call resolves within microseconds, and a park costs a wake-up on each
    // side. A lane runs other work instead (see `block_on`).
    let outside = HELPER.with(Cell::get).is_none();
    if outside {
        let backoff = crossbeam_utils::Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            // SAFETY: as above.
            if let Some(result) = unsafe { slot.try_take() } {
                return result;
            }
        }
    }
    let mut wait = SlotWait(slot);
    match &chunk.outside {
        Some(lanes) if outside && !HELPING_OUTSIDE.with(Cell::get) => {
            help_outside(&mut wait, &**lanes)
        }
        _ => block_on(&mut wait),
    }
}

impl<R> std::fmt::Debug for Token<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("id", &self.id()).field("state", &self.state()).finish()
    }
}

/// Blocks until both tokens resolve and returns both results: the way to fan out
/// inside an operation. On a lane, the wait runs other queued work (these tokens' calls first, if
/// they were submitted from this lane), so recursion cannot deadlock.
///
/// ```
/// use std::sync::{Arc, OnceLock};
/// use tokengate::{Engine, Operation, Weight};
///
/// let engine = Engine::builder().build()?;
/// let me: Arc<OnceLock<Operation<u32, u64>>> = Arc::new(OnceLock::new());
/// let inner = Arc::clone(&me);
/// let fib = engine.register("fib", Weight::Light, move |n: u32| -> u64 {
///     if n < 2 {
///         return u64::from(n);
///     }
///     let fib = inner.get().expect("registered");
///     let (a, b) = tokengate::wait_both(fib.submit(n - 1), fib.submit(n - 2));
///     a.unwrap() + b.unwrap()
/// })?;
/// me.set(fib.clone()).unwrap();
/// assert_eq!(fib.submit(20).wait()?, 6_765);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn wait_both<A, B>(a: Token<A>, b: Token<B>) -> (Result<A, TokenError>, Result<B, TokenError>) {
    // The second was submitted last: on a lane it is the newest local work, run first
    // by the first wait; waiting for it second then usually finds it done.
    let first = a.wait();
    (first, b.wait())
}

/// The old name of [`wait_both`] (rayon's `join` runs two closures; this waits on two
/// tokens).
#[deprecated(since = "0.2.0", note = "renamed `wait_both`: it blocks on two tokens")]
pub fn join<A, B>(a: Token<A>, b: Token<B>) -> (Result<A, TokenError>, Result<B, TokenError>) {
    wait_both(a, b)
}

/// Wakes the thread that waits, and counts the wakes (a helping lane checks the count
/// between the batches it runs).
struct ThreadWaker {
    thread: Thread,
    /// Wakes so far. A counter, not a flag: waits nested on one thread each compare it
    /// with what they saw before polling, so an inner wait cannot swallow an outer
    /// one's wake.
    wakes: AtomicU64,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::Release);
        self.thread.unpark();
    }
}

thread_local! {
    static THREAD_WAKER: Arc<ThreadWaker> =
        Arc::new(ThreadWaker { thread: thread::current(), wakes: AtomicU64::new(0) });
    /// The lane this thread serves, when it may run other work while it waits.
    static HELPER: Cell<Option<*const (dyn Helper + 'static)>> = const { Cell::new(None) };
}

/// A thread that can run other queued work while it waits (a lane).
pub(crate) trait Helper {
    /// Runs other work until `done()` or until there is none for a short while.
    fn help(&self, done: &dyn Fn() -> bool);
    /// A blocking wait begins on this thread (its running batch now holds its permits
    /// while it waits): see `Admission::all_held_by_waits`.
    fn wait_begins(&self) -> usize;
    /// The wait that began with `wait_begins` (which returned `held`) is over.
    fn wait_ends(&self, held: usize);
}

/// The engine's lanes as seen by a thread outside them that waits on a token.
pub(crate) trait Outside: Send + Sync {
    /// Runs queued work that may run on the caller (light, no deadline) while the lanes
    /// are backlogged, until `done()`; false at once if there is no such backlog.
    fn help(&self, done: &dyn Fn() -> bool) -> bool;
}

thread_local! {
    /// Set while an outside thread runs lane work, so a wait inside that work parks
    /// instead of nesting another round of help.
    static HELPING_OUTSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the thread as running lane work outside the lanes, until dropped (also when a
/// panic unwinds through it).
struct HelpingOutside;

impl HelpingOutside {
    fn enter() -> Self {
        HELPING_OUTSIDE.with(|helping| helping.set(true));
        HelpingOutside
    }
}

impl Drop for HelpingOutside {
    fn drop(&mut self) {
        HELPING_OUTSIDE.with(|helping| helping.set(false));
    }
}

/// A wait on a thread outside the lanes: it runs backlogged lane work while the token
/// is pending (see [`Outside`]), and parks when there is none.
fn help_outside<F: Future + Unpin>(future: &mut F, outside: &dyn Outside) -> F::Output {
    THREAD_WAKER.with(|thread_waker| {
        let waker = Waker::from(Arc::clone(thread_waker));
        let mut cx = Context::from_waker(&waker);
        loop {
            let seen = thread_waker.wakes.load(Ordering::Acquire);
            if let Poll::Ready(output) = Pin::new(&mut *future).poll(&mut cx) {
                return output;
            }
            let woken = || thread_waker.wakes.load(Ordering::Acquire) != seen;
            let helped = {
                let _helping = HelpingOutside::enter();
                outside.help(&woken)
            };
            if !helped && !woken() {
                // Parks until the token resolves, or a while: the backlog may grow.
                thread::park_timeout(std::time::Duration::from_millis(1));
            }
        }
    })
}

/// Runs `f` with `helper` serving this thread's blocking waits.
pub(crate) fn with_helper<T>(helper: &dyn Helper, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<*const (dyn Helper + 'static)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            HELPER.with(|current| current.set(self.0));
        }
    }
    // SAFETY: only the lifetime is erased; the pointer is removed again (by `Restore`)
    // before `f` returns or unwinds, so it is never used after `helper`'s borrow ends.
    let erased: *const (dyn Helper + 'static) = unsafe { std::mem::transmute(helper) };
    let _restore = Restore(HELPER.with(|current| current.replace(Some(erased))));
    f()
}

/// Whether this thread is a lane's (a blocking wait here runs other queued work).
pub(crate) fn on_lane() -> bool {
    HELPER.with(Cell::get).is_some()
}

/// Runs a future to completion on the calling thread. On a lane it runs other queued
/// work while the future is pending (a lane never sits blocked while work waits); on
/// any other thread it parks between polls.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    /// Ends a lane's wait on every way out.
    struct Waiting<'a>(&'a dyn Helper, usize);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.wait_ends(self.1);
        }
    }
    THREAD_WAKER.with(|thread_waker| {
        let waker = Waker::from(Arc::clone(thread_waker));
        let mut cx = Context::from_waker(&waker);
        let mut waiting = None;
        loop {
            let seen = thread_waker.wakes.load(Ordering::Acquire);
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            match HELPER.with(Cell::get) {
                Some(helper) => {
                    // SAFETY: set by `with_helper` for the duration of a borrow that is
                    // still live on this thread's stack (see there).
                    let helper = unsafe { &*helper };
                    if waiting.is_none() {
                        waiting = Some(Waiting(helper, helper.wait_begins()));
                    }
                    helper.help(&|| thread_waker.wakes.load(Ordering::Acquire) != seen);
                }
                None => thread::park(),
            }
        }
    })
}
