//! A chunk: the slots of one admission's tokens in one allocation, with an optional
//! tail (a single call's own job), counted down as its tokens resolve.

use super::*;

/// The slots of the tokens admitted together; one allocation for many tokens, and a
/// single call's slot inline (no allocation of its own). Hot loops take the slice once
/// ([`ChunkOf::slots`]) and index it, so the inline case costs bulk tokens nothing.
///
/// After the slots comes a tail: nothing for the chunks of `submit_many` and `map`;
/// for a single call, its queued batch (`op::run::Single`), so that one allocation is
/// both the token's handle and the lanes' queue entry. Handles see every chunk as a
/// [`Chunk`], whose tail is unsized and opaque to them.
pub(crate) struct ChunkOf<R, T: ?Sized> {
    pub(super) base_id: u64,
    slots: Slots<R>,
    /// The operation's resolution counters (cancels are counted where they happen).
    pub(super) resolutions: Option<Arc<Resolutions>>,
    /// Where the chunk is listed for cancels by id, until it is dropped.
    index: Option<Arc<TokenIndex>>,
    /// The engine's lanes, which an outside thread waiting on one of these tokens may
    /// help (see `handle.rs`).
    pub(super) outside: Option<Arc<dyn Outside>>,
    /// Calls run for a remote submitter: their attempt is the message's delivery, and
    /// a failure is retried by a redelivery (the worker naks), never here.
    served: bool,
    /// What the chunk carries besides its slots (see above).
    pub(crate) tail: T,
}

/// A chunk as its handles see it: the tail is whatever it was made with.
pub(crate) type Chunk<R> = ChunkOf<R, dyn Tail>;

/// What a chunk may carry after its slots (see [`ChunkOf`]). Only its owner reads it.
pub(crate) trait Tail: Send + Sync {}

impl Tail for () {}

/// A chunk's slots: one inline, or many in one allocation.
enum Slots<R> {
    One(Slot<R>),
    Many(Box<[Slot<R>]>),
}

impl<R> Slots<R> {
    fn new(len: usize, attempt: u8) -> Self {
        match len {
            1 => Slots::One(Slot::new(attempt)),
            _ => Slots::Many((0..len).map(|_| Slot::new(attempt)).collect()),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Slot<R>] {
        match self {
            Slots::One(slot) => std::slice::from_mut(slot),
            Slots::Many(slots) => slots,
        }
    }
}

/// How a chunk's tokens start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Submitted here: attempt 1, retried here by the operation's policy.
    Submitted,
    /// A call served for a remote submitter, on its `delivery`-th delivery.
    Served { delivery: u8 },
}

impl Start {
    pub(crate) fn attempt(self) -> u8 {
        match self {
            Start::Submitted => FIRST_ATTEMPT,
            Start::Served { delivery } => delivery.max(FIRST_ATTEMPT),
        }
    }
}

impl<R> Chunk<R> {
    pub(crate) fn new(
        base_id: u64,
        len: usize,
        resolutions: Option<Arc<Resolutions>>,
    ) -> Arc<Self> {
        let slots = Slots::new(len, FIRST_ATTEMPT);
        Arc::new(ChunkOf {
            base_id,
            slots,
            resolutions,
            index: None,
            outside: None,
            served: false,
            tail: (),
        })
    }

    /// A chunk listed in `index`, so a token of it can be cancelled by id while it
    /// waits.
    pub(crate) fn listed(
        base_id: u64,
        len: usize,
        resolutions: Arc<Resolutions>,
        index: &Arc<TokenIndex>,
        outside: &Arc<dyn Outside>,
        start: Start,
    ) -> Arc<Self>
    where
        R: Send + 'static,
    {
        Self::listed_with(base_id, len, resolutions, index, outside, start, ())
    }

    /// [`Chunk::listed`], carrying `tail` after its slots.
    pub(crate) fn listed_with<T: Tail + 'static>(
        base_id: u64,
        len: usize,
        resolutions: Arc<Resolutions>,
        index: &Arc<TokenIndex>,
        outside: &Arc<dyn Outside>,
        start: Start,
        tail: T,
    ) -> Arc<ChunkOf<R, T>>
    where
        R: Send + 'static,
    {
        let attempt = start.attempt();
        let slots = Slots::new(len, attempt);
        let chunk = Arc::new(ChunkOf {
            base_id,
            slots,
            resolutions: Some(resolutions),
            index: Some(Arc::clone(index)),
            outside: Some(Arc::clone(outside)),
            served: matches!(start, Start::Served { .. }),
            tail,
        });
        index.insert(
            base_id,
            len as u32,
            Arc::downgrade(&chunk) as std::sync::Weak<dyn CancelById>,
        );
        chunk
    }

    /// Hands out the token for slot `index`. Called at most once per slot (never for
    /// the slots of a chunk `Operation::map` waits on itself).
    #[inline]
    pub(crate) fn token(self: &Arc<Self>, index: u32) -> Token<R> {
        Token { chunk: Arc::clone(self), index }
    }
}

impl<R, T: ?Sized> ChunkOf<R, T> {
    /// Whether these are calls served for a remote submitter (see [`Start::Served`]).
    pub(crate) fn is_served(&self) -> bool {
        self.served
    }

    /// Cancels slot `index` if it has not started, counting it.
    pub(crate) fn cancel(&self, index: u32, by: CancelSource) -> bool {
        let cancelled = self.slot(index).cancel(by);
        if cancelled {
            if let Some(resolutions) = &self.resolutions {
                resolutions.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        cancelled
    }

    /// Resolves the duplicate waiting in slot `index`, counting it by its outcome.
    pub(crate) fn resolve_follower(&self, index: u32, result: Result<R, TokenError>) {
        let counter = self.resolutions.as_ref().map(|r| match &result {
            Ok(_) => &r.completed,
            Err(TokenError::Cancelled { .. }) => &r.cancelled,
            Err(TokenError::TimedOut) => &r.timed_out,
            Err(_) => &r.failed,
        });
        if self.slot(index).resolve_waiting(result) {
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Applies a deadline to slot `index`, counting a time-out.
    pub(crate) fn expire(&self, index: u32, attempt: u8, retry: bool) -> Expired {
        let expired = self.slot(index).expire(attempt, retry);
        if let (Expired::TimedOut { .. }, Some(resolutions)) = (expired, &self.resolutions) {
            resolutions.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        expired
    }

    #[inline]
    pub(crate) fn slot(&self, index: u32) -> &Slot<R> {
        &self.slots()[index as usize]
    }

    /// Every slot, in index order.
    #[inline]
    pub(crate) fn slots(&self) -> &[Slot<R>] {
        match &self.slots {
            Slots::One(slot) => std::slice::from_ref(slot),
            Slots::Many(slots) => slots,
        }
    }

    /// The id of the token in slot `index`.
    #[inline]
    pub(crate) fn id_of(&self, index: u32) -> u64 {
        self.base_id + u64::from(index)
    }
}

impl<R: Send, T: ?Sized + Tail> CancelById for ChunkOf<R, T> {
    fn cancel_id(&self, id: u64, by: CancelSource) -> bool {
        let index = id.checked_sub(self.base_id).filter(|&i| i < self.slots().len() as u64);
        index.is_some_and(|index| self.cancel(index as u32, by))
    }
}

impl<R, T: ?Sized> Drop for ChunkOf<R, T> {
    fn drop(&mut self) {
        if let Some(index) = &self.index {
            index.remove(self.base_id);
        }
        for slot in self.slots.as_mut_slice() {
            let state = state_of(sync::load_mut(&mut slot.state));
            if state >= COMPLETED && state & TAKEN == 0 {
                // SAFETY: terminal and not taken, so the value is initialised; we have
                // `&mut self`, so nobody else can observe it.
                unsafe { slot.result.drop_in_place() };
            }
        }
    }
}
