//! An operation's shared state: its function, options, counters and control state.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{OpControl, OpControlState, OpStats};
use super::dedupe::Dedupe;
use super::env::OpEnv;
use super::locality::{HomeGuard, Homes};
use super::retry::RetryPolicy;
use crate::admission::OpQueue;
use crate::error::TokenError;
use crate::features::CostInputs;
use crate::placement::{LaneSet, Weight};
use crate::remote::wire::Codec;
use crate::token::{Chunk, Resolutions};

pub(crate) type BoxFn<A, R> = Box<dyn Fn(A, &Context<'_>) -> Result<R, TokenError> + Send + Sync>;

/// A cheap function from an argument to its size hint (a router feature). Any closure
/// `Fn(&A) -> u64` works in [`OperationBuilder::size_hint`](crate::OperationBuilder::size_hint); this is the plain-function form.
pub type SizeHint<A> = fn(&A) -> u64;

/// A size hint as kept: any closure.
pub(crate) type SizeFn<A> = Box<dyn Fn(&A) -> u64 + Send + Sync>;

/// Cost features as kept: the declared ones first, unused slots 0, non-finite values 0.
pub(crate) type CostFn<A> = Box<dyn Fn(&A) -> CostInputs + Send + Sync>;

/// What a running call can ask about its own token: whether it is still wanted.
///
/// Sync code cannot be pre-empted; a long operation registered with
/// [`OperationBuilder::register_with_context`](crate::OperationBuilder::register_with_context)
/// checks [`Context::is_cancelled`] now and then and returns early once its deadline
/// has passed (its result would be discarded anyway).
pub struct Context<'a> {
    pub(super) still_running: &'a dyn Fn() -> bool,
    pub(super) attempt: u8,
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

/// Per-operation options, set on [`OperationBuilder`](crate::OperationBuilder).
pub(crate) struct OpOptions<A> {
    pub(crate) size_hint: Option<SizeFn<A>>,
    /// The cost features (a router and telemetry input), and their names.
    pub(crate) cost: Option<CostFn<A>>,
    pub(crate) cost_names: Vec<String>,
    /// A builder option that was invalid, reported by `register`.
    pub(crate) invalid: Option<crate::RegisterError>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    /// `A::clone`, when retries need the argument again.
    pub(crate) clone_arg: Option<fn(&A) -> A>,
    pub(crate) queue_limit: Option<usize>,
    /// Heap bytes an argument owns, for the memory estimate.
    pub(crate) arg_bytes: Option<fn(&A) -> usize>,
    /// Calls with equal keys run on the same lane while any of them is in flight.
    pub(crate) locality: Option<fn(&A) -> u64>,
    /// The operation's tag says "remote": where the tags decide, its tokens go to the
    /// remote set (while the link can take them).
    pub(crate) remote_preferred: bool,
}

impl<A> Default for OpOptions<A> {
    fn default() -> Self {
        OpOptions {
            size_hint: None,
            cost: None,
            cost_names: Vec::new(),
            invalid: None,
            timeout: None,
            retry: None,
            clone_arg: None,
            queue_limit: None,
            arg_bytes: None,
            locality: None,
            remote_preferred: false,
        }
    }
}

#[derive(Default)]
pub(super) struct OpCounters {
    pub(super) submitted: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) skipped: AtomicU64,
    /// Tokens a `pin remote` override could not send remote.
    pub(super) pin_unmet: AtomicU64,
}

pub(crate) struct OpShared<A, R> {
    pub(super) env: Arc<OpEnv>,
    pub(super) id: u32,
    pub(super) name: String,
    pub(super) weight: Weight,
    pub(super) options: OpOptions<A>,
    pub(super) f: BoxFn<A, R>,
    pub(super) dedupe: Option<Dedupe<A, R>>,
    pub(super) counters: OpCounters,
    pub(super) queue: Arc<OpQueue>,
    pub(super) resolutions: Arc<Resolutions>,
    /// Estimated bytes of a token before its argument's heap: the argument and its slot.
    pub(super) fixed_bytes: usize,
    /// No deadline, retry, dedupe or locality: batches without telemetry take the
    /// short branch of the run loop.
    pub(super) plain: bool,
    /// Manual overrides from the control port; they beat the router.
    pub(super) control: OpControlState,
    /// Locality: which lane runs each key in flight.
    pub(super) homes: Homes,
    /// Running average runtime per token (ns), updated once per batch.
    pub(super) recent_ns: AtomicU64,
    /// Per half-octave of the size hint: the running average runtime of calls of about
    /// that size (ns; 0: not measured yet), updated by batches whose calls all fell in
    /// one cell. Empty for an operation without a size hint.
    pub(super) size_ns: Box<[AtomicU64]>,
    /// How calls cross the wire, for a remote-capable operation.
    pub(super) remote: Option<Codec<A, R>>,
}

/// A running average (ns) after one more sample, weighted `1 / weight` (0: none yet).
/// A sample counts at most four times the average (and at least a quarter of it): a
/// call preempted for milliseconds, or a lane descheduled in the middle of a batch, must
/// not send a 100 ns operation to the heavy lanes for its next few batches, while a real
/// change of cost still moves the average by a factor of up to 1.75 (cells) or 1.375
/// (operations) per batch.
fn running_average(old: u64, sample: u64, weight: u64) -> u64 {
    if old == 0 {
        return sample.max(1);
    }
    let sample = sample.clamp(old / 4, old.saturating_mul(4));
    ((old.saturating_mul(weight - 1)).saturating_add(sample) / weight).max(1)
}

/// Size cells per operation with a size hint: the half-octaves of a `u64`.
const SIZE_CELLS: usize = 128;
/// The size cell of a call whose operation has no size hint, or of a batch whose calls
/// fell in several cells.
pub(super) const NO_CELL: u8 = u8::MAX;

impl<A, R> OpShared<A, R> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        env: Arc<OpEnv>,
        id: u32,
        name: &str,
        weight: Weight,
        options: OpOptions<A>,
        f: BoxFn<A, R>,
        dedupe: Option<Dedupe<A, R>>,
        remote: Option<Codec<A, R>>,
    ) -> Self {
        let plain = options.timeout.is_none()
            && options.retry.is_none()
            && options.locality.is_none()
            && dedupe.is_none();
        OpShared {
            remote,
            dedupe,
            plain,
            control: OpControlState::new(false),
            fixed_bytes: std::mem::size_of::<A>() + crate::token::slot_size::<R>(),
            homes: Homes::default(),
            env,
            id,
            name: name.to_string(),
            weight,
            queue: Arc::new(OpQueue::new(options.queue_limit)),
            f,
            counters: OpCounters::default(),
            resolutions: Arc::new(Resolutions::default()),
            recent_ns: AtomicU64::new(0),
            size_ns: match &options.size_hint {
                Some(_) => (0..SIZE_CELLS).map(|_| AtomicU64::new(0)).collect(),
                None => Box::default(),
            },
            options,
        }
    }

    /// The size cell of a call with size hint `arg_size` ([`NO_CELL`] without a hint):
    /// its half-octave, `2 log2(arg_size + 1)` rounded down.
    #[inline]
    pub(super) fn size_cell(&self, arg_size: u64) -> u8 {
        if self.size_ns.is_empty() {
            return NO_CELL;
        }
        let x = arg_size.saturating_add(1);
        let octave = 63 - x.leading_zeros();
        let half = if octave == 0 { 0 } else { (x >> (octave - 1)) & 1 };
        (2 * octave + half as u32) as u8
    }

    /// The running average runtime of calls in size cell `cell` (0: none measured).
    #[inline]
    pub(super) fn size_recent_ns(&self, cell: u8) -> u64 {
        self.size_ns.get(usize::from(cell)).map_or(0, |ns| ns.load(Relaxed))
    }

    /// Whether a thread outside the lanes may run its calls while it waits: nothing
    /// that needs a lane of its own (no deadline, no locality).
    pub(super) fn may_run_outside(&self) -> bool {
        self.options.timeout.is_none() && self.options.locality.is_none()
    }

    /// The estimated memory one token with this argument holds while admitted.
    pub(super) fn bytes_of(&self, arg: &A) -> usize {
        self.fixed_bytes + self.options.arg_bytes.map_or(0, |bytes| bytes(arg))
    }

    /// The estimated memory of a batch's items (one multiplication without an
    /// `arg_bytes` hint).
    pub(super) fn bytes_of_all(&self, items: &[(u32, A)]) -> usize {
        match self.options.arg_bytes {
            None => self.fixed_bytes * items.len(),
            Some(bytes) => items.iter().map(|(_, arg)| self.fixed_bytes + bytes(arg)).sum(),
        }
    }

    /// Once per batch: the latency histogram, the running-average runtime and the
    /// counters.
    pub(super) fn settle_batch(
        &self,
        started: Instant,
        admitted_at: Instant,
        (set, cell): (LaneSet, u8),
        ran: u64,
        [completed, failed, skipped]: [u64; 3],
    ) -> Instant {
        let now = Instant::now();
        if ran > 0 {
            let latency = nanos(now.saturating_duration_since(admitted_at));
            self.control.latency().record(latency, ran);
            self.env.set_latency[set.index()].record(latency, ran);
        }
        if let Some(per_token) = nanos(now.saturating_duration_since(started)).checked_div(ran) {
            self.recent_ns
                .store(running_average(self.recent_ns.load(Relaxed), per_token, 8), Relaxed);
            if let Some(size_ns) = self.size_ns.get(usize::from(cell)) {
                // Faster than the operation's: a cell sees fewer calls.
                size_ns.store(running_average(size_ns.load(Relaxed), per_token, 4), Relaxed);
            }
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
        now
    }
}

impl<A: Send + 'static, R: Send + 'static> OpControl for OpShared<A, R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn weight(&self) -> Weight {
        self.weight
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
            pin_unmet: c.pin_unmet.load(Relaxed),
            recent_ns: self.recent_ns.load(Relaxed),
        }
    }

    fn control(&self) -> &OpControlState {
        &self.control
    }
}

/// Runs one call, turning a panic into an error.
#[inline]
pub(super) fn call<A, R>(
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

pub(super) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// The failure nets, as the enqueue path and the run loop ask for them: the policies
/// (`retry.rs`, `dedupe.rs`, `locality.rs`) hold the rules, this the operation's
/// choice of them.
impl<A, R> OpShared<A, R> {
    /// Whether a failure of `attempt` with `error` is run again.
    pub(super) fn retries(&self, attempt: u8, error: &TokenError) -> bool {
        self.options.retry.is_some_and(|p| p.retries(attempt, error))
    }

    /// Whether a time-out of `attempt` is run again.
    pub(super) fn retries_timeout(&self, attempt: u8) -> bool {
        self.options.retry.is_some_and(|p| p.retries_timeout(attempt))
    }

    /// For a call served to a remote submitter: the delay before its next delivery,
    /// if the policy retries its failure.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(super) fn redelivery_delay(&self, delivery: u8, error: &TokenError) -> Option<Duration> {
        self.options.retry?.redelivery_delay(delivery, error)
    }

    /// A copy of the argument for the deadline, when a time-out would be retried.
    pub(super) fn timeout_retry_arg(&self, arg: &A, attempt: u8) -> Option<A> {
        self.retries_timeout(attempt).then(|| self.options.clone_arg.map(|clone| clone(arg)))?
    }

    /// The dedupe key of `arg`, when the operation deduplicates.
    pub(super) fn dedupe_key(&self, arg: &A) -> Option<u64> {
        self.dedupe.as_ref().map(|d| d.key_of(arg))
    }

    /// Ends the duplicate flight led by token `index` of `chunk` (if the operation
    /// deduplicates), resolving every waiting duplicate with `result()`.
    pub(super) fn land_flight(
        &self,
        key: Option<u64>,
        chunk: &Chunk<R>,
        index: u32,
        result: impl Fn() -> Result<R, TokenError>,
    ) {
        if let (Some(dedupe), Some(key)) = (&self.dedupe, key) {
            dedupe.land_flight(key, chunk, index, result, &self.env.admission, &self.queue);
        }
    }

    /// The lane that runs calls with locality key `key`, counting one more call there.
    pub(super) fn enter_home(&self, key: u64, set: LaneSet) -> usize {
        self.homes.enter(key, &self.env.lanes, set)
    }

    /// The guard that counts a call with `arg` out of its key's lane when it is done.
    pub(super) fn home_guard(&self, arg: &A) -> HomeGuard<'_> {
        HomeGuard::new(&self.homes, self.options.locality.map(|key| key(arg)))
    }
}
