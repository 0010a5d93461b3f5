//! Operations: registered functions, and the submit path (admit → route → batch → queue).

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::Shared;
use crate::error::{RejectReason, TokenError};
use crate::lanes::{Job, LaneCtx};
use crate::router::{Features, LaneSet, RouteSource, Weight};
use crate::telemetry::{RecordOutcome, TokenRecord};
use crate::token::{block_on, Chunk, Outcome, Token};

pub(crate) type BoxFn<A, R> = Box<dyn Fn(A) -> Result<R, TokenError> + Send + Sync>;

/// A cheap function from an argument to its size hint (a router feature).
pub type SizeHint<A> = fn(&A) -> u64;

pub(crate) struct OpShared<A, R> {
    engine: Arc<Shared>,
    id: u32,
    name: String,
    weight: Weight,
    size_hint: Option<SizeHint<A>>,
    f: BoxFn<A, R>,
    counters: OpCounters,
    /// Running average runtime per token (ns), updated once per batch.
    recent_ns: AtomicU64,
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
    /// The running-average runtime per token (ns; 0 before the first batch).
    pub recent_ns: u64,
}

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
    pub(crate) fn new(
        engine: Arc<Shared>,
        id: u32,
        name: &str,
        weight: Weight,
        size_hint: Option<SizeHint<A>>,
        f: BoxFn<A, R>,
    ) -> Self {
        let inner = OpShared {
            engine,
            id,
            name: name.to_string(),
            weight,
            size_hint,
            f,
            counters: OpCounters::default(),
            recent_ns: AtomicU64::new(0),
        };
        Operation { inner: Arc::new(inner) }
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
            recent_ns: self.inner.recent_ns.load(Relaxed),
        }
    }

    /// Submits one call. Blocks this thread while the engine is at capacity; after
    /// shutdown the token resolves at once as `Rejected { ShuttingDown }`.
    ///
    /// From async code use [`Operation::submit_async`], which waits without blocking.
    pub fn submit(&self, arg: A) -> Token<R> {
        let admitted = self.acquire_blocking(1);
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
        let weight = self.inner.weight;
        self.submit_many_tagged(args.into_iter().map(|arg| (arg, weight)))
    }

    /// [`Operation::submit_many`] where each call declares its own weight (overriding
    /// the operation's for that token). Tags are what the tag router trusts; a learned
    /// router does not look at them.
    pub fn submit_many_tagged<I: IntoIterator<Item = (A, Weight)>>(
        &self,
        args: I,
    ) -> Vec<Token<R>> {
        let mut args = args.into_iter();
        let mut tokens = Vec::with_capacity(args.size_hint().0);
        loop {
            let chunk: Vec<(A, Weight)> = args.by_ref().take(self.inner.engine.chunk_len).collect();
            if chunk.is_empty() {
                return tokens;
            }
            let admitted = self.acquire_blocking(chunk.len());
            self.admit_chunk(admitted, chunk.len(), chunk.into_iter(), &mut tokens);
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
            let chunk: Vec<A> = args.by_ref().take(self.inner.engine.chunk_len).collect();
            if chunk.is_empty() {
                return tokens;
            }
            let admitted = self.inner.engine.admission.acquire(chunk.len()).await;
            let items = chunk.into_iter().map(|arg| (arg, weight));
            self.admit_chunk(admitted, items.len(), items, &mut tokens);
        }
    }

    fn acquire_blocking(&self, n: usize) -> Result<(), RejectReason> {
        let admission = &self.inner.engine.admission;
        match admission.try_acquire(n) {
            Err(RejectReason::Overloaded) => block_on(admission.acquire(n)),
            other => other,
        }
    }

    fn admit_one(&self, admitted: Result<(), RejectReason>, arg: A) -> Token<R> {
        let mut tokens = Vec::with_capacity(1);
        self.admit_chunk(admitted, 1, std::iter::once((arg, self.inner.weight)), &mut tokens);
        tokens.pop().expect("one token per argument")
    }

    /// Routes and queues `len` items, for which permits are held when `admitted` is Ok.
    fn admit_chunk(
        &self,
        admitted: Result<(), RejectReason>,
        len: usize,
        items: impl Iterator<Item = (A, Weight)>,
        tokens: &mut Vec<Token<R>>,
    ) {
        let engine = &self.inner.engine;
        let base_id = engine.next_token_id.fetch_add(len as u64, Relaxed);
        if let Err(reason) = admitted {
            self.inner.counters.rejected.fetch_add(len as u64, Relaxed);
            tokens.extend((0..len as u64).map(|i| Token::rejected(base_id + i, reason)));
            return;
        }
        self.inner.counters.submitted.fetch_add(len as u64, Relaxed);
        let chunk = Chunk::new(base_id, len);
        let logging = engine.lanes.telemetry().is_some();
        let now = logging.then(Instant::now);
        let mut features = Features {
            op: self.inner.id,
            declared: self.inner.weight,
            arg_size: 0,
            queue_depth: engine.admission.in_flight() as u64,
            op_recent_ns: self.inner.recent_ns.load(Relaxed),
        };
        let mut pending: [Pending<A>; 2] = [Pending::new(), Pending::new()];
        for (index, (arg, declared)) in items.enumerate() {
            features.declared = declared;
            features.arg_size = self.inner.size_hint.map_or(0, |hint| hint(&arg));
            let placement = engine.router.route(&features);
            let set = placement.lanes;
            let open = &mut pending[set.index()];
            if let (Some(admitted_at), None) = (now, open.meta.as_ref()) {
                open.meta = Some(Box::new(BatchMeta::new(admitted_at, &features, engine, set)));
            }
            if let Some(meta) = open.meta.as_mut() {
                meta.tokens.push(TokenMeta {
                    arg_size: features.arg_size,
                    declared,
                    source: placement.source,
                    class: placement.class,
                    lanes: set,
                });
            }
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
            meta: open.meta.take(),
        };
        self.inner.engine.lanes.push(set, Box::new(batch));
    }
}

/// A batch being filled for one lane set.
struct Pending<A> {
    items: Vec<(u32, A)>,
    limit: usize,
    meta: Option<Box<BatchMeta>>,
}

impl<A> Pending<A> {
    fn new() -> Self {
        Pending { items: Vec::new(), limit: usize::MAX, meta: None }
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

/// What telemetry needs from admission; built only when logging is on.
struct BatchMeta {
    admitted_at: Instant,
    queue_depth: u64,
    lane_load: u64,
    op_recent_ns: u64,
    model_version: u32,
    tokens: Vec<TokenMeta>,
}

impl BatchMeta {
    fn new(admitted_at: Instant, features: &Features, engine: &Shared, set: LaneSet) -> Self {
        BatchMeta {
            admitted_at,
            queue_depth: features.queue_depth,
            lane_load: engine.lanes.queued_batches(set) as u64,
            op_recent_ns: features.op_recent_ns,
            model_version: engine.router.model_version(),
            tokens: Vec::new(),
        }
    }
}

struct TokenMeta {
    arg_size: u64,
    declared: Weight,
    source: RouteSource,
    class: Option<u8>,
    lanes: LaneSet,
}

/// Tokens of one operation queued together; one queue operation runs them all.
struct Batch<A, R> {
    op: Arc<OpShared<A, R>>,
    chunk: Arc<Chunk<R>>,
    items: Vec<(u32, A)>,
    meta: Option<Box<BatchMeta>>,
}

impl<A: Send + 'static, R: Send + 'static> Job for Batch<A, R> {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn run(self: Box<Self>, lane: &mut LaneCtx) {
        let Batch { op, chunk, items, meta } = *self;
        let batch_size = items.len() as u32;
        let batch_id = lane.next_batch_id();
        let sample_every = lane.sample_every();
        let started = Instant::now();
        let mut last = started;
        let (mut completed, mut failed, mut skipped) = (0u64, 0u64, 0u64);
        for (position, (index, arg)) in items.into_iter().enumerate() {
            let slot = chunk.slot(index);
            if !slot.claim() {
                skipped += 1;
                continue;
            }
            let token_id = chunk.id_of(index);
            let logged = meta.is_some() && token_id % sample_every == 0;
            // Logging every token costs one clock read each: a token's start is the
            // previous one's end. Sampled logging reads the clock around each sample.
            let start = if logged && sample_every != 1 { Instant::now() } else { last };
            let result = match panic::catch_unwind(AssertUnwindSafe(|| (op.f)(arg))) {
                Ok(result) => result,
                Err(payload) => Err(TokenError::Panicked { message: panic_message(&*payload) }),
            };
            let outcome = slot.finish(result);
            match outcome {
                Outcome::Completed => completed += 1,
                Outcome::Failed => failed += 1,
                Outcome::Skipped => skipped += 1,
            }
            let Some(meta) = meta.as_deref().filter(|_| logged && outcome != Outcome::Skipped)
            else {
                continue;
            };
            let end = Instant::now();
            last = end;
            let token = &meta.tokens[position];
            lane.record(TokenRecord {
                token_id,
                op: op.id,
                declared: token.declared,
                route_source: token.source,
                lane_set: token.lanes,
                predicted_class: token.class,
                model_version: meta.model_version,
                lane: lane.index,
                core: lane.core,
                batch_id,
                batch_size,
                arg_size: token.arg_size,
                queue_depth: meta.queue_depth,
                lane_load: meta.lane_load,
                op_recent_ns: meta.op_recent_ns,
                queue_wait_ns: nanos(start.saturating_duration_since(meta.admitted_at)),
                run_ns: nanos(end.saturating_duration_since(start)),
                end_to_end_ns: nanos(end.saturating_duration_since(meta.admitted_at)),
                outcome: if outcome == Outcome::Completed {
                    RecordOutcome::Completed
                } else {
                    RecordOutcome::Failed
                },
                attempt: 1,
            });
        }
        let ran = completed + failed;
        if let Some(per_token) = nanos(started.elapsed()).checked_div(ran) {
            let old = op.recent_ns.load(Relaxed);
            let new = if old == 0 { per_token.max(1) } else { ((old * 7 + per_token) / 8).max(1) };
            op.recent_ns.store(new, Relaxed);
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

fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
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
