//! Operations: registered functions, and the submit path (admit → route → batch → queue).

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::engine::Shared;
use crate::error::{RejectReason, TokenError};
use crate::lanes::Job;
use crate::router::{Features, LaneSet, Weight};
use crate::token::{block_on, Chunk, Outcome, Token};

type BoxFn<A, R> = Box<dyn Fn(A) -> Result<R, TokenError> + Send + Sync>;

struct OpShared<A, R> {
    engine: Arc<Shared>,
    id: u32,
    name: String,
    weight: Weight,
    f: BoxFn<A, R>,
    counters: OpCounters,
}

#[derive(Default)]
struct OpCounters {
    submitted: AtomicU64,
    rejected: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

/// Counters of one operation, read with [`Operation::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OpStats {
    /// Tokens admitted.
    pub submitted: u64,
    /// Tokens refused at admission (overloaded, shutting down).
    pub rejected: u64,
    /// Tokens that returned a value.
    pub completed: u64,
    /// Tokens that panicked or returned an error.
    pub failed: u64,
    /// Tokens resolved before a worker reached them (cancelled), as counted by the
    /// worker that skipped them.
    pub skipped: u64,
}

/// A registered function. Cheap to clone; every clone submits to the same engine.
///
/// Created by [`Engine::register`](crate::Engine::register).
pub struct Operation<A, R> {
    inner: Arc<OpShared<A, R>>,
}

impl<A, R> Clone for Operation<A, R> {
    fn clone(&self) -> Self {
        Operation {
            inner: Arc::clone(&self.inner),
        }
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
    pub(crate) fn new(
        engine: Arc<Shared>,
        id: u32,
        name: &str,
        weight: Weight,
        f: BoxFn<A, R>,
    ) -> Self {
        let inner = OpShared {
            engine,
            id,
            name: name.to_string(),
            weight,
            f,
            counters: OpCounters::default(),
        };
        Operation {
            inner: Arc::new(inner),
        }
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
        let c = &self.inner.counters;
        OpStats {
            submitted: c.submitted.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            completed: c.completed.load(Relaxed),
            failed: c.failed.load(Relaxed),
            skipped: c.skipped.load(Relaxed),
        }
    }

    /// Submits one call. Blocks this thread while the engine is at capacity; after
    /// shutdown the token resolves at once as `Rejected { ShuttingDown }`.
    ///
    /// From async code use [`Operation::submit_async`], which waits without blocking.
    pub fn submit(&self, arg: A) -> Token<R> {
        let admitted = self.inner.engine.admission.try_acquire(1);
        let admitted = match admitted {
            Err(RejectReason::Overloaded) => block_on(self.inner.engine.admission.acquire(1)),
            other => other,
        };
        self.admit_one(admitted, arg)
    }

    /// Submits one call, waiting asynchronously while the engine is at capacity.
    pub async fn submit_async(&self, arg: A) -> Token<R> {
        let admitted = self.inner.engine.admission.acquire(1).await;
        self.admit_one(admitted, arg)
    }

    /// Submits one call if there is room now; otherwise returns
    /// `Err(TokenError::Rejected { reason })` (`Overloaded` or `ShuttingDown`).
    pub fn try_submit(&self, arg: A) -> Result<Token<R>, TokenError> {
        match self.inner.engine.admission.try_acquire(1) {
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
        let mut args = args.into_iter();
        let mut tokens = Vec::with_capacity(args.size_hint().0);
        let chunk_len = self.inner.engine.chunk_len;
        loop {
            let chunk: Vec<A> = args.by_ref().take(chunk_len).collect();
            if chunk.is_empty() {
                return tokens;
            }
            let admission = &self.inner.engine.admission;
            let admitted = match admission.try_acquire(chunk.len()) {
                Err(RejectReason::Overloaded) => block_on(admission.acquire(chunk.len())),
                other => other,
            };
            self.admit_chunk(admitted, chunk, &mut tokens);
        }
    }

    /// [`Operation::submit_many`] for async callers: waits without blocking a thread.
    pub async fn submit_many_async<I>(&self, args: I) -> Vec<Token<R>>
    where
        I: IntoIterator<Item = A>,
    {
        let mut args = args.into_iter();
        let mut tokens = Vec::with_capacity(args.size_hint().0);
        let chunk_len = self.inner.engine.chunk_len;
        loop {
            let chunk: Vec<A> = args.by_ref().take(chunk_len).collect();
            if chunk.is_empty() {
                return tokens;
            }
            let admitted = self.inner.engine.admission.acquire(chunk.len()).await;
            self.admit_chunk(admitted, chunk, &mut tokens);
        }
    }

    fn admit_one(&self, admitted: Result<(), RejectReason>, arg: A) -> Token<R> {
        let mut tokens = Vec::with_capacity(1);
        self.admit_chunk(admitted, vec![arg], &mut tokens);
        tokens.pop().expect("one token per argument")
    }

    /// Routes and queues `args`, for which permits are held when `admitted` is Ok.
    fn admit_chunk(
        &self,
        admitted: Result<(), RejectReason>,
        args: Vec<A>,
        tokens: &mut Vec<Token<R>>,
    ) {
        let engine = &self.inner.engine;
        let len = args.len();
        let base_id = engine.next_token_id.fetch_add(len as u64, Relaxed);
        if let Err(reason) = admitted {
            self.inner.counters.rejected.fetch_add(len as u64, Relaxed);
            tokens.extend((0..len as u64).map(|i| Token::rejected(base_id + i, reason)));
            return;
        }
        self.inner.counters.submitted.fetch_add(len as u64, Relaxed);
        let chunk = Chunk::new(base_id, len);
        let features = Features {
            op: self.inner.id,
            declared: self.inner.weight,
            arg_size: 0,
            queue_depth: engine.admission.in_flight() as u64,
        };
        let mut pending: [Pending<A>; 2] = [Pending::new(), Pending::new()];
        for (index, arg) in args.into_iter().enumerate() {
            let placement = engine.router.route(&features);
            let set = placement.lanes;
            let open = &mut pending[set.index()];
            open.push(index as u32, arg, placement.batch, len - index);
            if open.is_full() {
                self.flush(set, open, &chunk);
            }
            tokens.push(chunk.token(index as u32));
        }
        for set in [LaneSet::Light, LaneSet::Heavy] {
            if !pending[set.index()].items.is_empty() {
                self.flush(set, &mut pending[set.index()], &chunk);
            }
        }
    }

    fn flush(&self, set: LaneSet, open: &mut Pending<A>, chunk: &Arc<Chunk<R>>) {
        let batch = Batch {
            op: Arc::clone(&self.inner),
            chunk: Arc::clone(chunk),
            items: std::mem::take(&mut open.items),
        };
        self.inner.engine.lanes.push(set, Box::new(batch));
    }
}

/// A batch being filled for one lane set.
struct Pending<A> {
    items: Vec<(u32, A)>,
    limit: usize,
}

impl<A> Pending<A> {
    fn new() -> Self {
        Pending {
            items: Vec::new(),
            limit: usize::MAX,
        }
    }

    fn push(&mut self, index: u32, arg: A, batch: u32, remaining: usize) {
        if self.items.is_empty() {
            self.limit = batch.max(1) as usize;
            self.items.reserve_exact(self.limit.min(remaining));
        } else {
            self.limit = self.limit.min(batch.max(1) as usize);
        }
        self.items.push((index, arg));
    }

    fn is_full(&self) -> bool {
        self.items.len() >= self.limit
    }
}

/// Tokens of one operation queued together; one queue operation runs them all.
struct Batch<A, R> {
    op: Arc<OpShared<A, R>>,
    chunk: Arc<Chunk<R>>,
    items: Vec<(u32, A)>,
}

impl<A: Send + 'static, R: Send + 'static> Job for Batch<A, R> {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn run(self: Box<Self>, _lane: usize) {
        let Batch { op, chunk, items } = *self;
        let (mut completed, mut failed, mut skipped) = (0u64, 0u64, 0u64);
        for (index, arg) in items {
            let slot = chunk.slot(index);
            if !slot.claim() {
                skipped += 1;
                continue;
            }
            let result = match panic::catch_unwind(AssertUnwindSafe(|| (op.f)(arg))) {
                Ok(result) => result,
                Err(payload) => Err(TokenError::Panicked {
                    message: panic_message(&*payload),
                }),
            };
            match slot.finish(result) {
                Outcome::Completed => completed += 1,
                Outcome::Failed => failed += 1,
                Outcome::Skipped => skipped += 1,
            }
        }
        let counters = &op.counters;
        counters.completed.fetch_add(completed, Relaxed);
        if failed > 0 {
            counters.failed.fetch_add(failed, Relaxed);
        }
        if skipped > 0 {
            counters.skipped.fetch_add(skipped, Relaxed);
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
