//! Operations: registered functions, and the submit path (admit → route → batch → queue).

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::{OpQueue, Permit};
use crate::engine::Shared;
use crate::error::{CancelSource, RejectReason, TokenError};
use crate::lanes::{Job, LaneCtx, RunEnd};
use crate::router::{Features, LaneSet, RouteSource, Weight};
use crate::telemetry::{RecordOutcome, TokenRecord};
use crate::token::{block_on, Chunk, Expired, Outcome, Resolutions, Token, FIRST_ATTEMPT};

pub(crate) type BoxFn<A, R> = Box<dyn Fn(A, &Context<'_>) -> Result<R, TokenError> + Send + Sync>;

/// A cheap function from an argument to its size hint (a router feature).
pub type SizeHint<A> = fn(&A) -> u64;

/// What a running call can ask about its own token: whether it is still wanted.
///
/// Sync code cannot be pre-empted; a long operation registered with
/// [`OperationBuilder::register_with_context`](crate::OperationBuilder::register_with_context)
/// checks [`Context::is_cancelled`] now and then and returns early once its deadline
/// has passed (its result would be discarded anyway).
pub struct Context<'a> {
    still_running: &'a dyn Fn() -> bool,
    attempt: u8,
}

impl Context<'_> {
    /// True once the token no longer needs this run: it timed out (or moved on to
    /// another attempt) while running.
    pub fn is_cancelled(&self) -> bool {
        !(self.still_running)()
    }

    /// This run's attempt number (1 for the first).
    pub fn attempt(&self) -> u8 {
        self.attempt
    }
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("attempt", &self.attempt).finish()
    }
}

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

    fn delay(&self, failed_attempt: u8) -> Duration {
        self.backoff.saturating_mul(1 << failed_attempt.saturating_sub(1).min(16))
    }
}

/// Per-operation options, set on [`OperationBuilder`](crate::OperationBuilder).
pub(crate) struct OpOptions<A> {
    pub(crate) size_hint: Option<SizeHint<A>>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    /// `A::clone`, when retries need the argument again.
    pub(crate) clone_arg: Option<fn(&A) -> A>,
    pub(crate) queue_limit: Option<usize>,
    /// Heap bytes an argument owns, for the memory estimate.
    pub(crate) arg_bytes: Option<fn(&A) -> usize>,
    /// Calls with equal keys run on the same lane while any of them is in flight.
    pub(crate) locality: Option<fn(&A) -> u64>,
}

impl<A> Default for OpOptions<A> {
    fn default() -> Self {
        OpOptions {
            size_hint: None,
            timeout: None,
            retry: None,
            clone_arg: None,
            queue_limit: None,
            arg_bytes: None,
            locality: None,
        }
    }
}

/// Duplicate-call safety: calls with the same key while one is in flight wait for it
/// and get copies of its result instead of running again.
pub(crate) struct Dedupe<A, R> {
    key: fn(&A) -> u64,
    copy: fn(&R) -> R,
    in_flight: std::sync::Mutex<std::collections::HashMap<u64, Flight<R>>>,
}

struct Flight<R> {
    /// The token that runs.
    leader: u64,
    /// The tokens waiting for its result, with their estimated bytes.
    followers: Vec<(Arc<Chunk<R>>, u32, usize)>,
}

impl<A, R> Dedupe<A, R> {
    pub(crate) fn new(key: fn(&A) -> u64, copy: fn(&R) -> R) -> Self {
        Dedupe { key, copy, in_flight: std::sync::Mutex::new(std::collections::HashMap::new()) }
    }

    /// Registers token `index` of `chunk` under `key`: true if it joins a call already in
    /// flight (and must not run), false if it leads a new one.
    fn join(&self, key: u64, chunk: &Arc<Chunk<R>>, index: u32, bytes: usize) -> bool {
        let mut flights = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        match flights.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut flight) => {
                flight.get_mut().followers.push((Arc::clone(chunk), index, bytes));
                true
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Flight { leader: chunk.id_of(index), followers: Vec::new() });
                false
            }
        }
    }

    /// Ends the flight `leader` leads, handing back its followers.
    fn land(&self, key: u64, leader: u64) -> Vec<(Arc<Chunk<R>>, u32, usize)> {
        let mut flights = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        match flights.get(&key) {
            Some(flight) if flight.leader == leader => {
                flights.remove(&key).map(|f| f.followers).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    fn copy_result(&self, result: &Result<R, TokenError>) -> Result<R, TokenError> {
        match result {
            Ok(value) => Ok((self.copy)(value)),
            Err(error) => Err(error.clone()),
        }
    }
}

/// An operation's manual overrides (see the control port).
pub(crate) struct OpControlState {
    paused: std::sync::atomic::AtomicBool,
    /// 0: none; 1: light lanes; 2: heavy lanes.
    pin: std::sync::atomic::AtomicU8,
    /// 0: none; else the batch size.
    batch: std::sync::atomic::AtomicU32,
    /// Batches set aside while paused, with the lane set they were queued for.
    parked: std::sync::Mutex<Vec<(LaneSet, Box<dyn Job>)>>,
    /// Tokens with a smaller id that have not started are cancelled (0: none).
    cancel_before: AtomicU64,
    /// Most batches of the operation running at once (0: no limit); a lane runs a
    /// batch's tokens one after another, so this caps running tokens.
    throttle: std::sync::atomic::AtomicU32,
    /// Batches of the operation running now.
    running: std::sync::atomic::AtomicU32,
    /// Batches waiting for a throttle slot.
    throttled: std::sync::Mutex<Vec<(LaneSet, Box<dyn Job>)>>,
    /// End-to-end latency histogram: bucket k counts tokens that took [2^(k-1), 2^k) ns,
    /// each token timed at the end of its batch (an upper bound for all but the last).
    latency: [AtomicU64; 48],
}

impl Default for OpControlState {
    fn default() -> Self {
        OpControlState {
            paused: Default::default(),
            pin: Default::default(),
            batch: Default::default(),
            parked: Default::default(),
            cancel_before: Default::default(),
            throttle: Default::default(),
            running: Default::default(),
            throttled: Default::default(),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The overrides in force on one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overrides {
    /// Admitted work of the operation waits instead of running.
    pub paused: bool,
    /// Every token goes to this lane set.
    pub pin: Option<LaneSet>,
    /// Every token is batched this many at a time.
    pub batch: Option<u32>,
    /// At most this many tokens of the operation run at once.
    pub throttle: Option<u32>,
}

/// What the control port can do to an operation without knowing its types.
pub(crate) trait OpControl: Send + Sync {
    fn name(&self) -> &str;
    fn stats(&self) -> OpStats;
    fn overrides(&self) -> Overrides;
    fn set_paused(&self, paused: bool);
    fn set_pin(&self, pin: Option<LaneSet>);
    fn set_batch(&self, batch: Option<u32>);
    fn set_throttle(&self, limit: Option<u32>);
    /// Cancels every token admitted so far that has not started; returns how many of
    /// those set aside (paused or throttled) it cancelled at once.
    fn cancel_waiting(&self) -> u64;
    /// Batches running now.
    fn running(&self) -> u32;
    /// End-to-end latency percentiles (ns), from the histogram.
    fn latency(&self, quantiles: &[f64]) -> Vec<u64>;
}

pub(crate) struct OpShared<A, R> {
    engine: Arc<Shared>,
    id: u32,
    name: String,
    weight: Weight,
    options: OpOptions<A>,
    f: BoxFn<A, R>,
    dedupe: Option<Dedupe<A, R>>,
    counters: OpCounters,
    queue: Arc<OpQueue>,
    resolutions: Arc<Resolutions>,
    /// Estimated bytes of a token before its argument's heap: the argument and its slot.
    fixed_bytes: usize,
    /// No deadline, retry, dedupe or locality: batches take the short path.
    plain: bool,
    /// Manual overrides from the control port; they beat the router.
    control: OpControlState,
    /// Locality: key → (lane, tokens in flight), and the next lane to hand out.
    homes: std::sync::Mutex<std::collections::HashMap<u64, (usize, usize)>>,
    next_home: std::sync::atomic::AtomicUsize,
    /// Running average runtime per token (ns), updated once per batch.
    recent_ns: AtomicU64,
}

#[derive(Default)]
struct OpCounters {
    submitted: AtomicU64,
    rejected: AtomicU64,
    retried: AtomicU64,
    skipped: AtomicU64,
}

impl<A: Send + 'static, R: Send + 'static> OpShared<A, R> {
    /// Whether a failure of `attempt` with `error` is run again.
    fn retries(&self, attempt: u8, error: &TokenError) -> bool {
        let Some(policy) = self.options.retry else { return false };
        attempt < policy.max_attempts
            && match error {
                TokenError::Panicked { .. } => policy.on_panic,
                TokenError::Failed(_) => policy.on_error,
                _ => false,
            }
    }

    fn retries_timeout(&self, attempt: u8) -> bool {
        self.options.retry.is_some_and(|p| p.on_timeout && attempt < p.max_attempts)
    }

    /// Starts the deadline of `attempt` of token `index`, which a lane has just started
    /// running: at it, the token times out
    /// (or moves to the next attempt) even if a lane is still running it, and that
    /// lane is replaced so it keeps serving.
    fn arm_deadline(
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
                Self::requeue(&op, chunk, index, arg, attempt + 1, Duration::ZERO);
            }
        });
    }

    /// Queues `attempt` of a token that already moved to it, after `delay`. Holds an
    /// admission permit meanwhile, so shutdown waits for it (or cancels it, on abort).
    fn requeue(
        op: &Arc<Self>,
        chunk: Arc<Chunk<R>>,
        index: u32,
        arg: A,
        attempt: u8,
        delay: Duration,
    ) {
        op.engine.admission.force_acquire(Permit::new(1, op.bytes_of(&arg)), &op.queue);
        // The running attempt still holds its key's lane: the retry keeps it, even
        // across the backoff.
        let home = op.options.locality.map(|key| op.enter_home(key(&arg), LaneSet::Light));
        if delay.is_zero() {
            Self::push_single(op, chunk, index, arg, attempt, home);
            return;
        }
        let op = Arc::clone(op);
        let runtime = op.engine.runtime.clone();
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            Self::push_single(&op, chunk, index, arg, attempt, home);
        });
    }

    fn push_single(
        op: &Arc<Self>,
        chunk: Arc<Chunk<R>>,
        index: u32,
        arg: A,
        attempt: u8,
        home: Option<usize>,
    ) {
        let engine = &op.engine;
        if engine.lanes.is_aborting() {
            let _home = HomeGuard::new(op, &arg);
            chunk.cancel(index, CancelSource::Shutdown);
            let key = op.dedupe.as_ref().map(|d| (d.key)(&arg));
            let permit = Permit::new(1, op.bytes_of(&arg));
            op.land_flight(key, &chunk, index, || {
                Err(TokenError::Cancelled { by: CancelSource::Shutdown })
            });
            engine.admission.release(permit, &op.queue);
            return;
        }
        let features = Features {
            op: op.id,
            declared: op.weight,
            arg_size: op.options.size_hint.map_or(0, |hint| hint(&arg)),
            queue_depth: engine.admission.in_flight() as u64,
            op_recent_ns: op.recent_ns.load(Relaxed),
        };
        let placement = engine.router.route(&features);
        let meta = engine.lanes.telemetry().is_some().then(|| {
            let mut meta = BatchMeta::new(Instant::now(), &features, engine, placement.lanes);
            meta.tokens.push(TokenMeta::new(&features, &placement));
            Box::new(meta)
        });
        let bytes = op.bytes_of(&arg);
        let batch = Batch {
            op: Arc::clone(op),
            chunk,
            items: vec![(index, arg)],
            meta,
            attempt,
            bytes,
            set: placement.lanes,
            admitted_at: Instant::now(),
        };
        op.push_batch(placement.lanes, home, Box::new(batch));
    }

    /// Ends the duplicate flight led by token `index` of `chunk` (if the operation
    /// deduplicates), resolving every waiting duplicate with `result(followers)`.
    fn land_flight(
        &self,
        key: Option<u64>,
        chunk: &Chunk<R>,
        index: u32,
        result: impl Fn() -> Result<R, TokenError>,
    ) {
        let (Some(dedupe), Some(key)) = (&self.dedupe, key) else { return };
        let followers = dedupe.land(key, chunk.id_of(index));
        if followers.is_empty() {
            return;
        }
        let mut permit = Permit::default();
        for (follower, slot, bytes) in &followers {
            follower.resolve_follower(*slot, result());
            permit += Permit::new(1, *bytes);
        }
        self.engine.admission.release(permit, &self.queue);
    }

    /// Locality: the lane that runs calls with `key` (the one already running some, or
    /// the next lane of `set` in turn), counting one more call in flight there.
    fn enter_home(&self, key: u64, set: LaneSet) -> usize {
        let lanes = &self.engine.lanes;
        let mut homes = self.homes.lock().unwrap_or_else(|e| e.into_inner());
        let home = homes.entry(key).or_insert_with(|| {
            let choices: Vec<usize> = lanes.lanes_of(set).collect();
            let turn = self.next_home.fetch_add(1, Relaxed);
            (choices[turn % choices.len()], 0)
        });
        home.1 += 1;
        home.0
    }

    /// Queues a batch, on its key's lane for locality operations.
    fn push_batch(&self, set: LaneSet, home: Option<usize>, batch: Box<Batch<A, R>>) {
        match home {
            Some(lane) => self.engine.lanes.push_to(lane, batch),
            None => self.engine.lanes.push(set, batch),
        }
    }

    /// The estimated memory one token with this argument holds while admitted.
    fn bytes_of(&self, arg: &A) -> usize {
        self.fixed_bytes + self.options.arg_bytes.map_or(0, |bytes| bytes(arg))
    }

    /// A copy of the argument for the deadline, when a time-out would be retried.
    fn timeout_retry_arg(op: &Self, arg: &A, attempt: u8) -> Option<A> {
        op.retries_timeout(attempt).then(|| op.options.clone_arg.map(|clone| clone(arg))).flatten()
    }
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
    /// Tokens cancelled before they started.
    pub cancelled: u64,
    /// Tokens whose deadline passed.
    pub timed_out: u64,
    /// Attempts run again after a failure or a deadline.
    pub retried: u64,
    /// Queued attempts a lane skipped because they were already resolved or moved on.
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
        options: OpOptions<A>,
        f: BoxFn<A, R>,
        dedupe: Option<Dedupe<A, R>>,
    ) -> Self {
        let plain = options.timeout.is_none()
            && options.retry.is_none()
            && options.locality.is_none()
            && dedupe.is_none();
        let inner = OpShared {
            dedupe,
            plain,
            control: OpControlState::default(),
            fixed_bytes: std::mem::size_of::<A>() + crate::token::slot_size::<R>(),
            homes: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_home: std::sync::atomic::AtomicUsize::new(0),
            engine,
            id,
            name: name.to_string(),
            weight,
            queue: Arc::new(OpQueue::new(options.queue_limit)),
            options,
            f,
            counters: OpCounters::default(),
            resolutions: Arc::new(Resolutions::default()),
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
        OpControl::stats(&*self.inner)
    }

    /// The manual overrides in force (set from the control port).
    pub fn overrides(&self) -> Overrides {
        OpControl::overrides(&*self.inner)
    }

    pub(crate) fn control(&self) -> Arc<dyn OpControl> {
        Arc::clone(&self.inner) as Arc<dyn OpControl>
    }

    /// Submits one call. Blocks this thread while the engine is at capacity; after
    /// shutdown the token resolves at once as `Rejected { ShuttingDown }`.
    ///
    /// From async code use [`Operation::submit_async`], which waits without blocking.
    pub fn submit(&self, arg: A) -> Token<R> {
        let admitted = self.acquire_blocking(Permit::new(1, self.inner.bytes_of(&arg)));
        self.admit_one(admitted, arg)
    }

    /// Submits one call, waiting asynchronously while the engine is at capacity.
    pub async fn submit_async(&self, arg: A) -> Token<R> {
        let permit = Permit::new(1, self.inner.bytes_of(&arg));
        let admitted = self.inner.engine.admission.acquire(permit, &self.inner.queue).await;
        self.admit_one(admitted, arg)
    }

    /// Submits one call if there is room now; otherwise returns
    /// `Err(TokenError::Rejected { reason })` (`Overloaded` or `ShuttingDown`).
    pub fn try_submit(&self, arg: A) -> Result<Token<R>, TokenError> {
        let permit = Permit::new(1, self.inner.bytes_of(&arg));
        match self.inner.engine.admission.try_acquire(permit, &self.inner.queue) {
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
            let chunk: Vec<(A, Weight)> = args.by_ref().take(self.chunk_len()).collect();
            if chunk.is_empty() {
                return tokens;
            }
            let bytes = chunk.iter().map(|(arg, _)| self.inner.bytes_of(arg)).sum();
            let admitted = self.acquire_blocking(Permit::new(chunk.len(), bytes));
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
            let chunk: Vec<A> = args.by_ref().take(self.chunk_len()).collect();
            if chunk.is_empty() {
                return tokens;
            }
            let bytes = chunk.iter().map(|arg| self.inner.bytes_of(arg)).sum();
            let permit = Permit::new(chunk.len(), bytes);
            let admitted = self.inner.engine.admission.acquire(permit, &self.inner.queue).await;
            let items = chunk.into_iter().map(|arg| (arg, weight));
            self.admit_chunk(admitted, items.len(), items, &mut tokens);
        }
    }

    /// Tokens admitted together: bounded by the engine and by the operation's limit.
    fn chunk_len(&self) -> usize {
        let engine = self.inner.engine.chunk_len;
        self.inner.queue.limit().map_or(engine, |limit| engine.min(limit.max(1)))
    }

    fn acquire_blocking(&self, permit: Permit) -> Result<(), RejectReason> {
        let admission = &self.inner.engine.admission;
        let queue = &self.inner.queue;
        match admission.try_acquire(permit, queue) {
            Err(RejectReason::Overloaded) => block_on(admission.acquire(permit, queue)),
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
        let chunk = Chunk::new(base_id, len, Some(Arc::clone(&self.inner.resolutions)));
        // Timed calls run one per batch: a deadline is per call, and a stuck lane is
        // replaced without stranding anybody else's token.
        let single = self.inner.options.timeout.is_some() || self.inner.options.locality.is_some();
        let logging = engine.lanes.telemetry().is_some();
        let now = logging.then_some(Instant::now());
        let mut features = Features {
            op: self.inner.id,
            declared: self.inner.weight,
            arg_size: 0,
            queue_depth: engine.admission.in_flight() as u64,
            op_recent_ns: self.inner.recent_ns.load(Relaxed),
        };
        let overrides = OpControl::overrides(&*self.inner);
        let admitted_at = Instant::now();
        let mut pending: [Pending<A>; 2] = [Pending::new(), Pending::new()];
        for open in &mut pending {
            open.admitted_at = Some(admitted_at);
        }
        for (index, (arg, declared)) in items.enumerate() {
            let bytes = self.inner.bytes_of(&arg);
            if let Some(dedupe) = &self.inner.dedupe {
                if dedupe.join((dedupe.key)(&arg), &chunk, index as u32, bytes) {
                    // A duplicate of a call in flight: it waits for that call's result
                    // (holding its permit until then) and is never queued.
                    tokens.push(chunk.token(index as u32));
                    continue;
                }
            }
            features.declared = declared;
            features.arg_size = self.inner.options.size_hint.map_or(0, |hint| hint(&arg));
            let mut placement = engine.router.route(&features);
            // A manual override always wins over the model, which wins over the tags.
            if let Some(lanes) = overrides.pin {
                placement.lanes = lanes;
                placement.source = RouteSource::Override;
            }
            if let Some(batch) = overrides.batch {
                placement.batch = batch;
                placement.source = RouteSource::Override;
            }
            if single || overrides.throttle.is_some() {
                placement.batch = 1;
            }
            let set = placement.lanes;
            let open = &mut pending[set.index()];
            if let (Some(admitted_at), None) = (now, open.meta.as_ref()) {
                open.meta = Some(Box::new(BatchMeta::new(admitted_at, &features, engine, set)));
            }
            if let Some(meta) = open.meta.as_mut() {
                meta.tokens.push(TokenMeta::new(&features, &placement));
            }
            open.push(index as u32, arg, bytes, placement.batch, len - index);
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
        let items = std::mem::take(&mut open.items);
        // Locality calls are batched one by one, so each goes to its key's lane.
        let home = match (self.inner.options.locality, items.first()) {
            (Some(key), Some((_, arg))) => Some(self.inner.enter_home(key(arg), set)),
            _ => None,
        };
        let batch = Batch {
            op: Arc::clone(&self.inner),
            chunk: Arc::clone(chunk),
            items,
            meta: open.meta.take(),
            attempt: FIRST_ATTEMPT,
            bytes: std::mem::take(&mut open.bytes),
            set,
            admitted_at: open.admitted_at.unwrap_or_else(Instant::now),
        };
        self.inner.push_batch(set, home, Box::new(batch));
    }
}

/// A batch being filled for one lane set.
struct Pending<A> {
    items: Vec<(u32, A)>,
    admitted_at: Option<Instant>,
    /// Estimated bytes of the items.
    bytes: usize,
    limit: usize,
    meta: Option<Box<BatchMeta>>,
}

impl<A> Pending<A> {
    fn new() -> Self {
        Pending { items: Vec::new(), admitted_at: None, bytes: 0, limit: usize::MAX, meta: None }
    }

    fn push(&mut self, index: u32, arg: A, bytes: usize, batch: u32, remaining: usize) {
        self.bytes += bytes;
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

impl TokenMeta {
    fn new(features: &Features, placement: &crate::router::Placement) -> Self {
        TokenMeta {
            arg_size: features.arg_size,
            declared: features.declared,
            source: placement.source,
            class: placement.class,
            lanes: placement.lanes,
        }
    }
}

/// Tokens of one operation queued together; one queue operation runs them all.
struct Batch<A, R> {
    op: Arc<OpShared<A, R>>,
    chunk: Arc<Chunk<R>>,
    items: Vec<(u32, A)>,
    meta: Option<Box<BatchMeta>>,
    /// The attempt every item of the batch is on.
    attempt: u8,
    /// The items' estimated bytes, given back with their permits.
    bytes: usize,
    /// The lane set it was queued for (where it goes back after a pause).
    set: LaneSet,
    /// When it was admitted, for the latency histogram.
    admitted_at: Instant,
}

impl<A: Send + 'static, R: Send + 'static> Job for Batch<A, R> {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn park_if_paused(self: Box<Self>) -> Option<Box<dyn Job>> {
        let paused_now = {
            let op = &self.op;
            op.control.paused.load(std::sync::atomic::Ordering::Relaxed) || op.engine.is_paused()
        };
        if paused_now {
            let op = Arc::clone(&self.op);
            let paused = || {
                op.control.paused.load(std::sync::atomic::Ordering::SeqCst) || op.engine.is_paused()
            };
            if paused() && !op.engine.lanes.is_aborting() {
                let mut parked = op.control.parked.lock().unwrap_or_else(|e| e.into_inner());
                // Checked again under the lock a resume takes, so nothing is parked after it.
                if paused() {
                    let set = self.set;
                    parked.push((set, self));
                    return None;
                }
            }
        }
        let control = &self.op.control;
        let limit = control.throttle.load(std::sync::atomic::Ordering::SeqCst);
        if limit == 0 || self.op.engine.lanes.is_aborting() {
            control.running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Some(self);
        }
        let op = Arc::clone(&self.op);
        let take_slot = || {
            op.control
                .running
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |r| (r < limit).then_some(r + 1),
                )
                .is_ok()
        };
        if take_slot() {
            return Some(self);
        }
        let mut waiting = op.control.throttled.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock a finishing batch takes to hand its slot on.
        if take_slot() {
            drop(waiting);
            return Some(self);
        }
        let set = self.set;
        waiting.push((set, self));
        None
    }

    fn cancel_all(self: Box<Self>, by: CancelSource) {
        let Batch { op, chunk, items, bytes, .. } = *self;
        let permit = Permit::new(items.len(), bytes);
        for (index, arg) in items {
            let _home = HomeGuard::new(&op, &arg);
            chunk.cancel(index, by);
            let key = op.dedupe.as_ref().map(|d| (d.key)(&arg));
            op.land_flight(key, &chunk, index, || Err(TokenError::Cancelled { by }));
        }
        op.engine.admission.release(permit, &op.queue);
    }

    fn run(self: Box<Self>, lane: &mut LaneCtx) -> RunEnd {
        if lane.aborting() {
            let op = Arc::clone(&self.op);
            let _slot = RunningSlot(&op);
            self.cancel_all(CancelSource::Shutdown);
            return RunEnd::Done;
        }
        let Batch { op, chunk, items, meta, attempt, bytes, set: _, admitted_at } = *self;
        let len = items.len();
        let permit = Permit::new(len, bytes);
        let _slot = RunningSlot(&op);
        if op.plain && meta.is_none() {
            return run_plain(&op, &chunk, items, attempt, permit, admitted_at);
        }
        let cancel_before = op.control.cancel_before.load(Relaxed);
        // Checked per batch, so the per-token check costs nothing when no cancel is asked.
        let cancels = cancel_before > 0 || op.engine.cancels_pending();
        let batch_size = len as u32;
        let batch_id = lane.next_batch_id();
        let sample_every = lane.sample_every();
        let timed = op.options.timeout.is_some();
        let started = Instant::now();
        let mut last = started;
        let (mut completed, mut failed, mut skipped, mut ran) = (0u64, 0u64, 0u64, 0u64);
        let mut end = RunEnd::Done;
        for (position, (index, arg)) in items.into_iter().enumerate() {
            let slot = chunk.slot(index);
            let _home = HomeGuard::new(&op, &arg);
            let key = op.dedupe.as_ref().map(|d| (d.key)(&arg));
            if cancels {
                op.engine.cancel_if_asked(&chunk, index, cancel_before);
            }
            if !slot.claim(attempt) {
                skipped += 1;
                if key.is_some() && slot.is_resolved() {
                    // The leading call was cancelled by its caller before it ran: its
                    // duplicates still asked for a result, so run it for them.
                    let result = call(&op.f, arg, attempt, &|| true);
                    op.land_flight(key, &chunk, index, || {
                        op.dedupe.as_ref().expect("keyed").copy_result(&result)
                    });
                }
                continue;
            }
            let token_id = chunk.id_of(index);
            let logged = meta.is_some() && token_id % sample_every == 0;
            // Logging every token costs one clock read each: a token's start is the
            // previous one's end. Sampled logging reads the clock around each sample.
            let start = if logged && sample_every != 1 { Instant::now() } else { last };
            let retry_arg = if op.options.retry.is_some() {
                op.options.clone_arg.map(|clone| clone(&arg))
            } else {
                None
            };
            if timed {
                // The deadline runs from the start of this attempt.
                let timeout_arg = OpShared::timeout_retry_arg(&op, &arg, attempt);
                op.arm_deadline(&chunk, index, attempt, timeout_arg);
                lane.watch(token_id, &op.queue, Permit::new(1, op.bytes_of(&arg)));
            }
            let result = call(&op.f, arg, attempt, &|| slot.is_running(attempt));
            ran += 1;
            if timed && !lane.unwatch(token_id) {
                // Our deadline passed and this lane was replaced: the replacement took
                // over our permit and our place; the late value is dropped.
                end = RunEnd::Retired;
            }
            let outcome = match (&result, retry_arg) {
                (Err(error), Some(again)) if op.retries(attempt, error) && slot.retry(attempt) => {
                    op.counters.retried.fetch_add(1, Relaxed);
                    let delay = op.options.retry.map_or(Duration::ZERO, |p| p.delay(attempt));
                    OpShared::requeue(&op, Arc::clone(&chunk), index, again, attempt + 1, delay);
                    Outcome::Failed
                }
                _ => {
                    let outcome = match (&op.dedupe, key) {
                        (Some(dedupe), Some(_)) => slot.finish_and(attempt, result, |first| {
                            op.land_flight(key, &chunk, index, || dedupe.copy_result(first));
                        }),
                        _ => slot.finish(attempt, result),
                    };
                    if outcome == Outcome::Skipped && slot.is_resolved() {
                        // A deadline resolved it while it ran: its duplicates time out too.
                        op.land_flight(key, &chunk, index, || Err(TokenError::TimedOut));
                    }
                    match outcome {
                        Outcome::Completed => completed += 1,
                        Outcome::Failed => failed += 1,
                        Outcome::Skipped => skipped += 1,
                    }
                    outcome
                }
            };
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
                attempt,
            });
        }
        op.settle_batch(started, admitted_at, ran, [completed, failed, skipped]);
        if end == RunEnd::Done {
            op.engine.admission.release(permit, &op.queue);
        }
        end
    }
}

/// The hot path: an operation with no deadline, retry, dedupe or locality, and no
/// telemetry for this batch. Claim, call, resolve; counters once per batch.
fn run_plain<A, R>(
    op: &OpShared<A, R>,
    chunk: &Chunk<R>,
    items: Vec<(u32, A)>,
    attempt: u8,
    permit: Permit,
    admitted_at: Instant,
) -> RunEnd {
    let started = Instant::now();
    let cancel_before = op.control.cancel_before.load(Relaxed);
    let cancels = cancel_before > 0 || op.engine.cancels_pending();
    let (mut completed, mut failed, mut skipped) = (0u64, 0u64, 0u64);
    for (index, arg) in items {
        let slot = chunk.slot(index);
        if cancels {
            op.engine.cancel_if_asked(chunk, index, cancel_before);
        }
        if !slot.claim(attempt) {
            skipped += 1;
            continue;
        }
        match slot.finish(attempt, call(&op.f, arg, attempt, &|| true)) {
            Outcome::Completed => completed += 1,
            Outcome::Failed => failed += 1,
            Outcome::Skipped => skipped += 1,
        }
    }
    op.settle_batch(started, admitted_at, completed + failed, [completed, failed, skipped]);
    op.engine.admission.release(permit, &op.queue);
    RunEnd::Done
}

/// Gives a batch's running slot back when the batch is done, handing it to a batch
/// waiting at the operation's throttle.
struct RunningSlot<'a, A, R>(&'a OpShared<A, R>);

impl<A, R> Drop for RunningSlot<'_, A, R> {
    fn drop(&mut self) {
        let control = &self.0.control;
        control.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if control.throttle.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            let next = control.throttled.lock().unwrap_or_else(|e| e.into_inner()).pop();
            if let Some((set, job)) = next {
                self.0.engine.lanes.push(set, job);
            }
        }
    }
}

impl<A: Send + 'static, R: Send + 'static> OpControl for OpShared<A, R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn stats(&self) -> OpStats {
        let c = &self.counters;
        let r = &self.resolutions;
        OpStats {
            submitted: c.submitted.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            completed: r.completed.load(Relaxed),
            failed: r.failed.load(Relaxed),
            cancelled: r.cancelled.load(Relaxed),
            timed_out: r.timed_out.load(Relaxed),
            retried: c.retried.load(Relaxed),
            skipped: c.skipped.load(Relaxed),
            recent_ns: self.recent_ns.load(Relaxed),
        }
    }

    fn overrides(&self) -> Overrides {
        let control = &self.control;
        Overrides {
            paused: control.paused.load(Relaxed),
            pin: match control.pin.load(Relaxed) {
                1 => Some(LaneSet::Light),
                2 => Some(LaneSet::Heavy),
                _ => None,
            },
            batch: Some(control.batch.load(Relaxed)).filter(|&b| b > 0),
            throttle: Some(control.throttle.load(Relaxed)).filter(|&t| t > 0),
        }
    }

    fn set_throttle(&self, limit: Option<u32>) {
        self.control.throttle.store(limit.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
        // Whatever waited for a slot may run now under the new limit (or none).
        let waiting =
            std::mem::take(&mut *self.control.throttled.lock().unwrap_or_else(|e| e.into_inner()));
        for (set, job) in waiting {
            self.engine.lanes.push(set, job);
        }
    }

    fn cancel_waiting(&self) -> u64 {
        let before = self.engine.next_token_id.load(std::sync::atomic::Ordering::SeqCst);
        self.control.cancel_before.fetch_max(before, std::sync::atomic::Ordering::SeqCst);
        let mut held =
            std::mem::take(&mut *self.control.parked.lock().unwrap_or_else(|e| e.into_inner()));
        held.extend(std::mem::take(
            &mut *self.control.throttled.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        let count = held.iter().map(|(_, job)| job.len() as u64).sum();
        for (_, job) in held {
            job.cancel_all(CancelSource::Control);
        }
        count
    }

    fn running(&self) -> u32 {
        self.control.running.load(Relaxed)
    }

    fn latency(&self, quantiles: &[f64]) -> Vec<u64> {
        let counts: Vec<u64> = self.control.latency.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        quantiles
            .iter()
            .map(|q| {
                if total == 0 {
                    return 0;
                }
                let rank = ((total as f64) * q).ceil().max(1.0) as u64;
                let mut seen = 0;
                for (bucket, count) in counts.iter().enumerate() {
                    seen += count;
                    if seen >= rank {
                        return 1u64 << bucket; // the bucket's upper bound
                    }
                }
                1u64 << (counts.len() - 1)
            })
            .collect()
    }

    fn set_paused(&self, paused: bool) {
        let parked = {
            let mut parked = self.control.parked.lock().unwrap_or_else(|e| e.into_inner());
            self.control.paused.store(paused, std::sync::atomic::Ordering::SeqCst);
            if paused {
                return;
            }
            std::mem::take(&mut *parked)
        };
        for (set, job) in parked {
            self.engine.lanes.push(set, job);
        }
    }

    fn set_pin(&self, pin: Option<LaneSet>) {
        let code = match pin {
            None => 0,
            Some(LaneSet::Light) => 1,
            Some(LaneSet::Heavy) => 2,
        };
        self.control.pin.store(code, Relaxed);
    }

    fn set_batch(&self, batch: Option<u32>) {
        self.control.batch.store(batch.unwrap_or(0), Relaxed);
    }
}

impl<A, R> OpShared<A, R> {
    /// Once per batch: the running-average runtime and the counters.
    fn settle_batch(
        &self,
        started: Instant,
        admitted_at: Instant,
        ran: u64,
        [completed, failed, skipped]: [u64; 3],
    ) {
        let now = Instant::now();
        if ran > 0 {
            let latency = nanos(now.saturating_duration_since(admitted_at));
            let bucket = ((64 - latency.leading_zeros()) as usize).min(47);
            self.control.latency[bucket].fetch_add(ran, Relaxed);
        }
        if let Some(per_token) = nanos(now.saturating_duration_since(started)).checked_div(ran) {
            let old = self.recent_ns.load(Relaxed);
            let new = if old == 0 { per_token.max(1) } else { ((old * 7 + per_token) / 8).max(1) };
            self.recent_ns.store(new, Relaxed);
        }
        if completed > 0 {
            self.resolutions.completed.fetch_add(completed, Relaxed);
        }
        if failed > 0 {
            self.resolutions.failed.fetch_add(failed, Relaxed);
        }
        if skipped > 0 {
            self.counters.skipped.fetch_add(skipped, Relaxed);
        }
    }
}

impl<A, R> OpShared<A, R> {
    /// Locality: one call with `key` left its lane.
    fn leave_home(&self, key: u64) {
        let mut homes = self.homes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(home) = homes.get_mut(&key) {
            home.1 -= 1;
            if home.1 == 0 {
                homes.remove(&key);
            }
        }
    }
}

/// Locality: counts a call out of its key's lane when its batch item is done, on
/// every path out of the loop.
struct HomeGuard<'a, A, R> {
    op: &'a OpShared<A, R>,
    key: Option<u64>,
}

impl<'a, A, R> HomeGuard<'a, A, R> {
    fn new(op: &'a OpShared<A, R>, arg: &A) -> Self {
        HomeGuard { op, key: op.options.locality.map(|key| key(arg)) }
    }
}

impl<A, R> Drop for HomeGuard<'_, A, R> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.op.leave_home(key);
        }
    }
}

/// Runs one call, turning a panic into an error.
fn call<A, R>(
    f: &BoxFn<A, R>,
    arg: A,
    attempt: u8,
    still_running: &dyn Fn() -> bool,
) -> Result<R, TokenError> {
    let context = Context { still_running, attempt };
    match panic::catch_unwind(AssertUnwindSafe(|| f(arg, &context))) {
        Ok(result) => result,
        Err(payload) => Err(TokenError::Panicked { message: panic_message(&*payload) }),
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
