//! Operations: registered functions and how their calls become tokens.
//!
//! The path of a call, one file per step: [`Operation`] (this file) admits it and lists
//! its slot; `enqueue.rs` routes it, applies overrides and batches it onto a lane's
//! queue (first submits, retries and deadline re-queues alike); `run.rs` is the one run
//! loop a lane executes; `retry.rs`, `dedupe.rs` and `locality.rs` hold the failure
//! nets; `state.rs` the operation's shared state; `builder.rs` the registration options
//! and registration itself.
//!
//! What an operation holds of its engine is `env.rs` (`OpEnv`: admission, lanes,
//! router, token index, runtime, remote link); the engine and its controller also hold
//! the operations by name (`registry.rs`) and what a stop closes (`stop.rs`). No part
//! gets the whole engine.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;

mod batch;
mod builder;
pub(crate) mod control;
mod dedupe;
mod enqueue;
mod env;
mod locality;
mod record;
mod registry;
mod remote;
mod remote_token;
mod requeue;
mod retry;
mod run;
mod single;
mod state;
mod stop;

pub use builder::{DedupeBuilder, OperationBuilder, RemoteBuilder};
pub(crate) use env::{OpEnv, SetLatency};
pub(crate) use registry::Registry;
pub use retry::RetryPolicy;
pub use state::{Context, SizeHint};
pub use stop::Shutdown;
pub(crate) use stop::Stopper;

use enqueue::Enqueue;
use single::Single;
use state::OpShared;

use crate::admission::Permit;
use crate::error::{RejectReason, TokenError};
use crate::placement::Weight;
use crate::token::{block_on, on_lane, wait_slot, Chunk, Start, Token};
use control::{OpControl, OpStats, Overrides};

/// A registered function. Cheap to clone; every clone submits to the same engine.
///
/// Created by [`Engine::register`](crate::Engine::register) or
/// [`Engine::operation`](crate::Engine::operation).
pub struct Operation<A, R> {
    inner: Arc<OpShared<A, R>>,
}

impl<A, R> Clone for Operation<A, R> {
    fn clone(&self) -> Self {
        Operation { inner: Arc::clone(&self.inner) }
    }
}

impl<A, R> std::fmt::Debug for Operation<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation")
            .field("name", &self.inner.name)
            .field("weight", &self.inner.weight)
            .finish()
    }
}

impl<A: Send + 'static, R: Send + 'static> Operation<A, R> {
    /// Whether calls may run on remote workers (registered with
    /// [`OperationBuilder::remote`]).
    pub fn is_remote_capable(&self) -> bool {
        self.inner.remote.is_some()
    }

    /// The name given at registration.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The declared weight.
    pub fn weight(&self) -> Weight {
        self.inner.weight
    }

    /// A snapshot of this operation's counters.
    pub fn stats(&self) -> OpStats {
        OpControl::stats(&*self.inner)
    }

    /// The manual overrides in force (set from the control port).
    pub fn overrides(&self) -> Overrides {
        self.inner.control.overrides()
    }

    /// Submits one call. Blocks this thread while the engine is at capacity; after
    /// shutdown the token resolves at once as `Rejected { ShuttingDown }`.
    ///
    /// From async code use [`Operation::submit_async`], which waits without blocking.
    pub fn submit(&self, arg: A) -> Token<R> {
        let admitted = self.acquire_blocking(Permit::new(1, self.inner.bytes_of(&arg)));
        self.admit_one(admitted, arg)
    }

    /// Submits one call, waiting asynchronously while the engine is at capacity. The
    /// token it gives is itself a future: `submit_async(x).await` is admission, a second
    /// `.await` the result. [`Operation::call`] does both.
    pub async fn submit_async(&self, arg: A) -> Token<R> {
        let permit = Permit::new(1, self.inner.bytes_of(&arg));
        let admitted = self.inner.env.admission.acquire(permit, &self.inner.queue).await;
        self.admit_one(admitted, arg)
    }

    /// Runs one call from async code and gives its result: waits asynchronously for
    /// room, then for the call ([`Operation::submit_async`] and the token's `.await` in
    /// one).
    ///
    /// ```
    /// # let engine = tokengate::Engine::builder().build()?;
    /// let square = engine.register("square", tokengate::Weight::Light, |x: u64| x * x)?;
    /// let value = engine.block_on(square.call(12))?;
    /// assert_eq!(value, 144);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn call(&self, arg: A) -> Result<R, TokenError> {
        self.submit_async(arg).await.await
    }

    /// Submits one call if there is room now; otherwise returns
    /// `Err(TokenError::Rejected { reason })` (`Overloaded` or `ShuttingDown`).
    pub fn try_submit(&self, arg: A) -> Result<Token<R>, TokenError> {
        let permit = Permit::new(1, self.inner.bytes_of(&arg));
        match self.inner.env.admission.try_acquire(permit, &self.inner.queue) {
            Ok(()) => Ok(self.admit_one(Ok(()), arg)),
            Err(reason) => {
                self.inner.counters.rejected.fetch_add(1, Relaxed);
                Err(TokenError::Rejected { reason })
            }
        }
    }

    /// Submits many calls for roughly the cost of a few: tokens are admitted a chunk at
    /// a time (one permit update, one slot allocation) and queued a batch at a time.
    /// Blocks while the engine is at capacity. The tokens come back in argument order.
    pub fn submit_many<I: IntoIterator<Item = A>>(&self, args: I) -> Vec<Token<R>> {
        let weight = self.inner.weight;
        self.submit_chunks(args.into_iter().map(|arg| (arg, weight)), true)
    }

    /// Runs the operation on every argument, blocks this thread until every call has
    /// resolved, and returns the results in order (the `blocking_` prefix as in tokio's
    /// `blocking_recv`): a
    /// `submit_many` followed by a wait on each call, without a `Token` per call (one
    /// handle per chunk of calls instead). Inside another operation the waits run
    /// other queued work (these calls first), so fanning out never blocks a lane.
    ///
    /// ```
    /// # let engine = tokengate::Engine::builder().build()?;
    /// let square = engine.register("square", tokengate::Weight::Light, |x: u64| x * x)?;
    /// let sum = engine.register("sum_of_squares", tokengate::Weight::Medium, move |n: u64| {
    ///     square.blocking_map(0..n).into_iter().map(|r| r.unwrap()).sum::<u64>()
    /// })?;
    /// assert_eq!(sum.submit(10).wait()?, 285);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn blocking_map<I: IntoIterator<Item = A>>(&self, args: I) -> Vec<Result<R, TokenError>> {
        let weight = self.inner.weight;
        let args = args.into_iter().map(|arg| (arg, weight));
        let mut results = Vec::with_capacity(args.size_hint().0);
        let mut chunks = Vec::new();
        self.admit_chunks(args, true, |admitted, len| chunks.push((admitted, len)));
        for (admitted, len) in chunks {
            match admitted {
                Ok(chunk) => results.extend(chunk.slots()[..len].iter().map(|slot| {
                    // SAFETY: no `Token` was made for this chunk's slots; this loop is
                    // their unique handle and takes each result once.
                    unsafe { wait_slot(&chunk, slot) }
                })),
                Err((_, reason)) => {
                    results.extend((0..len).map(|_| Err(TokenError::Rejected { reason })))
                }
            }
        }
        results
    }

    /// The old name of [`Operation::blocking_map`] (it blocks, unlike `Iterator::map`).
    #[deprecated(
        since = "0.2.0",
        note = "renamed `blocking_map`: it blocks until every call resolves"
    )]
    pub fn map<I: IntoIterator<Item = A>>(&self, args: I) -> Vec<Result<R, TokenError>> {
        self.blocking_map(args)
    }

    /// [`Operation::submit_many`] where each call declares its own weight (overriding
    /// the operation's for that token). Tags are what the tag router trusts; a learned
    /// router does not look at them.
    pub fn submit_many_tagged<I: IntoIterator<Item = (A, Weight)>>(
        &self,
        args: I,
    ) -> Vec<Token<R>> {
        self.submit_chunks(args.into_iter(), false)
    }

    /// Admits and queues `args` a chunk at a time and hands out a token per call, in
    /// order; `uniform`: every weight is the operation's own.
    fn submit_chunks(
        &self,
        args: impl Iterator<Item = (A, Weight)>,
        uniform: bool,
    ) -> Vec<Token<R>> {
        let mut tokens = Vec::with_capacity(args.size_hint().0);
        self.admit_chunks(args, uniform, |admitted, len| tokens.extend(tokens_of(admitted, len)));
        tokens
    }

    /// Admits and queues `args` a chunk at a time, handing each chunk (or its
    /// rejection) and its length to `each`.
    fn admit_chunks(
        &self,
        mut args: impl Iterator<Item = (A, Weight)>,
        uniform: bool,
        mut each: impl FnMut(Admitted<R>, usize),
    ) {
        loop {
            let chunk: Vec<(A, Weight)> = args.by_ref().take(self.chunk_len()).collect();
            if chunk.is_empty() {
                return;
            }
            let bytes = chunk.iter().map(|(arg, _)| self.inner.bytes_of(arg)).sum();
            let admitted = self.acquire_blocking(Permit::new(chunk.len(), bytes));
            let len = chunk.len();
            each(
                self.admit_chunk(admitted, len, chunk.into_iter(), uniform, Start::Submitted),
                len,
            );
        }
    }

    /// [`Operation::submit_many`] for async callers: waits without blocking a thread.
    pub async fn submit_many_async<I>(&self, args: I) -> Vec<Token<R>>
    where
        I: IntoIterator<Item = A>,
    {
        let mut args = args.into_iter();
        let mut tokens = Vec::with_capacity(args.size_hint().0);
        let weight = self.inner.weight;
        loop {
            let chunk: Vec<A> = args.by_ref().take(self.chunk_len()).collect();
            if chunk.is_empty() {
                return tokens;
            }
            let bytes = chunk.iter().map(|arg| self.inner.bytes_of(arg)).sum();
            let permit = Permit::new(chunk.len(), bytes);
            let admitted = self.inner.env.admission.acquire(permit, &self.inner.queue).await;
            let items = chunk.into_iter().map(|arg| (arg, weight));
            let len = items.len();
            let admitted = self.admit_chunk(admitted, len, items, true, Start::Submitted);
            tokens.extend(tokens_of(admitted, len));
        }
    }

    /// Tokens admitted together: bounded by the engine and by the operation's limit.
    fn chunk_len(&self) -> usize {
        let len = self.inner.env.chunk_len;
        self.inner.queue.limit().map_or(len, |limit| len.min(limit.max(1)))
    }

    fn acquire_blocking(&self, permit: Permit) -> Result<(), RejectReason> {
        let admission = &self.inner.env.admission;
        let queue = &self.inner.queue;
        match admission.try_acquire(permit, queue) {
            Err(RejectReason::Overloaded) if on_lane() => self.acquire_nested(permit),
            Err(RejectReason::Overloaded) => block_on(admission.acquire(permit, queue)),
            other => other,
        }
    }

    /// Takes a permit for a submit made inside a running call, on a lane thread, while
    /// the gate is full: waits for room as any submit does (the lane runs other queued
    /// work meanwhile: `block_on`), except when every permit taken is held by a batch
    /// whose call waits (`Admission::all_held_by_waits`: a recursion deeper than the
    /// capacity), when no room would ever come: the permit is then taken past the
    /// bounds. Fails only on shutdown.
    #[cold]
    fn acquire_nested(&self, permit: Permit) -> Result<(), RejectReason> {
        let admission = &self.inner.env.admission;
        let queue = &self.inner.queue;
        let mut room = std::pin::pin!(admission.acquire(permit, queue));
        block_on(std::future::poll_fn(|cx| {
            if let Poll::Ready(admitted) = std::future::Future::poll(room.as_mut(), cx) {
                return Poll::Ready(admitted);
            }
            // Polled again on each release (the gate's notice wakes this thread) and
            // after each spell of the lane's with nothing to run.
            if !admission.all_held_by_waits() {
                return Poll::Pending;
            }
            admission.force_acquire(permit, queue);
            if admission.is_closed() {
                admission.release(permit, queue);
                return Poll::Ready(Err(RejectReason::ShuttingDown));
            }
            tracing::debug!(
                "{}: a call inside a call was admitted past the bounds (every permit was \
                 held by a waiting call)",
                self.inner.name
            );
            Poll::Ready(Ok(()))
        }))
    }

    fn admit_one(&self, admitted: Result<(), RejectReason>, arg: A) -> Token<R> {
        self.admit_one_at(admitted, arg, Start::Submitted)
    }

    fn admit_one_at(&self, admitted: Result<(), RejectReason>, arg: A, start: Start) -> Token<R> {
        let item = std::iter::once((arg, self.inner.weight));
        let admitted = self.admit_chunk(admitted, 1, item, true, start);
        tokens_of(admitted, 1).next().expect("one token per argument")
    }

    /// Lists, routes and queues `len` items, for which permits are held when
    /// `admitted` is Ok.
    fn admit_chunk(
        &self,
        admitted: Result<(), RejectReason>,
        len: usize,
        items: impl Iterator<Item = (A, Weight)>,
        uniform: bool,
        start: Start,
    ) -> Admitted<R> {
        let op = &self.inner;
        let env = &op.env;
        let base_id = env.tokens.issue(len as u64);
        if let Err(reason) = admitted {
            op.counters.rejected.fetch_add(len as u64, Relaxed);
            return Err((base_id, reason));
        }
        op.counters.submitted.fetch_add(len as u64, Relaxed);
        let resolutions = Arc::clone(&op.resolutions);
        let (tokens, outside) = (&env.tokens, &env.outside);
        let (chunk, single) = if len == 1 {
            // A single call: its chunk carries its batch (one allocation for both).
            let single = Single::empty();
            let single =
                Chunk::listed_with(base_id, 1, resolutions, tokens, outside, start, single);
            (Arc::clone(&single) as Arc<Chunk<R>>, Some(single))
        } else {
            (Chunk::listed(base_id, len, resolutions, tokens, outside, start), None)
        };
        let mut enqueue = Enqueue::new(op, &chunk, start.attempt(), None);
        if let Some(single) = single {
            enqueue.inline(single);
        }
        enqueue.spread(len);
        if uniform && op.dedupe.is_none() && enqueue.routes_once() {
            // One placement for the whole chunk: batches are filled straight from it.
            enqueue.push_all(items.enumerate().map(|(index, (arg, _))| (index as u32, arg)), len);
            enqueue.finish();
            return Ok(chunk);
        }
        for (index, (arg, declared)) in items.enumerate() {
            let index = index as u32;
            if let Some(dedupe) = &op.dedupe {
                let key = match catch_unwind(AssertUnwindSafe(|| dedupe.key_of(&arg))) {
                    Ok(key) => key,
                    Err(payload) => {
                        enqueue.hook_panicked([(index, arg)], "its dedupe key", payload);
                        continue;
                    }
                };
                if dedupe.join(key, &chunk, index, op.bytes_of(&arg)) {
                    // A duplicate of a call in flight: it waits for that call's result
                    // (holding its permit until then) and is never queued.
                    continue;
                }
            }
            enqueue.push(index, arg, declared, len - index as usize);
        }
        enqueue.finish();
        Ok(chunk)
    }
}

/// A chunk of admitted calls, or why none was admitted (and the first of the ids they
/// were given).
type Admitted<R> = Result<Arc<Chunk<R>>, (u64, RejectReason)>;

/// The tokens of an admitted chunk of `len` calls, in order.
fn tokens_of<R>(admitted: Admitted<R>, len: usize) -> impl Iterator<Item = Token<R>> {
    (0..len as u32).map(move |index| match &admitted {
        Ok(chunk) => chunk.token(index),
        Err((base_id, reason)) => Token::rejected(base_id + u64::from(index), *reason),
    })
}
