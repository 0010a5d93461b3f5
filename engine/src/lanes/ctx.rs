//! What a lane hands each batch it runs: its identity, its telemetry buffer, and the
//! deadline watch of the call it is in.
//!
//! Batches get `&LaneCtx` (shared, with interior mutability) rather than `&mut`: a call
//! running on the lane may re-enter the lane's loop while it waits for another token,
//! and no borrow is held across a user's call.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Sender;

use crate::admission::{OpQueue, Permit};
use crate::telemetry::{Telemetry, TokenRecord, FLUSH_ROWS};

/// The token a lane is running under a deadline, and whose permit to give back if the
/// lane is replaced meanwhile.
pub(super) struct Watch {
    pub(super) token_id: u64,
    pub(super) queue: Arc<OpQueue>,
    pub(super) permit: Permit,
    /// The "stuck" flag of the thread running it.
    pub(super) owner: Arc<AtomicBool>,
    /// The call's telemetry row, when it is logged, and when it started: should the
    /// call never return, the lane's replacement writes it (timed out, run time up to
    /// then), so a hung call is a row too.
    pub(super) row: Option<(TokenRecord, Instant)>,
}

/// A lane's own state, handed to each batch it runs. It holds what a batch reaches of
/// the lane set (the abort flag, the lane's deadline marks), not the set itself: the
/// set holds batches, and a batch's `run` takes this.
pub(crate) struct LaneCtx {
    /// The address of the lane set this context serves: who it is, for
    /// [`LaneCtx::current_lane`].
    set_id: usize,
    /// The set's abort flag (an aborting shutdown).
    abort: Arc<AtomicBool>,
    /// The deadline marks of the calls running on this lane (nested ones stack up).
    marks: Arc<Mutex<Vec<Watch>>>,
    pub(crate) index: u16,
    /// The pinned core, or -1.
    pub(crate) core: i32,
    batches: Cell<u64>,
    records: RefCell<Vec<TokenRecord>>,
    telemetry: Option<(Arc<Telemetry>, Sender<Vec<TokenRecord>>)>,
    /// This thread's "stuck" flag, set when a call on it overran its deadline and the
    /// lane was given to a replacement: the thread then no longer runs the lane's work
    /// (not even while it waits), and retires when its calls return.
    stuck: Arc<AtomicBool>,
    /// Batches this thread is running inside waits, nested.
    depth: Cell<u32>,
    /// The tokens (permits) of the batch this thread is running, innermost: what a
    /// wait of one of its calls holds.
    batch_tokens: Cell<usize>,
    /// Nanoseconds this thread has spent running other batches inside waits, so a
    /// waiting call's own run time can leave them out.
    helped_ns: Cell<u64>,
    /// When the lane last offered its core to other threads, or last came out of an idle
    /// spell (see [`LaneCtx::share_core`]).
    yielded_at: Cell<Instant>,
    /// Whether records are handed on by age too ([`FLUSH_AGE`]): when online adaptation
    /// reads them.
    fresh: bool,
    /// When the oldest buffered record was buffered (kept when `fresh`).
    buffered_at: Cell<Instant>,
}

/// With online adaptation, a lane hands its records to the writer once it holds this
/// long a buffer's oldest (or [`FLUSH_ROWS`] of them, or when it idles): the re-fits see
/// rows within tens of milliseconds, not the quarter second a busy lane takes to fill
/// a buffer.
const FLUSH_AGE: std::time::Duration = std::time::Duration::from_millis(20);
/// The buffer's age is checked every this many records (a clock read each).
const FLUSH_AGE_CHECK: usize = 8;

/// A busy lane offers its core to other runnable threads at least this often.
const SHARE_CORE_EVERY: std::time::Duration = std::time::Duration::from_millis(1);

thread_local! {
    /// The lane this thread is serving, while it serves one.
    static CURRENT: Cell<*const LaneCtx> = const { Cell::new(std::ptr::null()) };
}

impl LaneCtx {
    /// The context of lane `index` (pinned to `core`, or -1) of the lane set at
    /// `set_id`, run by the thread whose stuck flag is `stuck`.
    pub(super) fn new(
        set_id: usize,
        abort: Arc<AtomicBool>,
        marks: Arc<Mutex<Vec<Watch>>>,
        telemetry: Option<&Arc<Telemetry>>,
        (index, core): (usize, i32),
        stuck: Arc<AtomicBool>,
    ) -> Self {
        let telemetry = telemetry.and_then(|t| t.sender().map(|sender| (Arc::clone(t), sender)));
        let fresh = telemetry.as_ref().is_some_and(|(t, _)| t.fresh);
        let records = if telemetry.is_some() { Vec::with_capacity(FLUSH_ROWS) } else { Vec::new() };
        LaneCtx {
            set_id,
            abort,
            marks,
            index: index as u16,
            core,
            batches: Cell::new(0),
            records: RefCell::new(records),
            telemetry,
            stuck,
            depth: Cell::new(0),
            batch_tokens: Cell::new(0),
            helped_ns: Cell::new(0),
            yielded_at: Cell::new(Instant::now()),
            fresh,
            buffered_at: Cell::new(Instant::now()),
        }
    }

    /// Called after each batch with the time it ended: once a millisecond of batches
    /// without an idle spell has passed, yields the core (`sched_yield`). Lanes that
    /// never idle otherwise hold their cores for the scheduler's whole slice (a few
    /// ms), and a thread that wakes meanwhile — the control port answering `/metrics`,
    /// a caller's thread, the trainer's re-fit — waits that long. With nobody waiting
    /// for the core the yield returns at once (a syscall per millisecond).
    ///
    /// The millisecond counts from the end of the lane's last idle spell
    /// ([`LaneCtx::busy_from`]), not from its last yield: a light lane that wakes for one
    /// batch must not yield after it, since on Linux's EEVDF scheduler a yield hands the
    /// core to a runnable idle-priority heavy lane until the core's next scheduling
    /// event, commonly a millisecond or more, while the light lane's next batches wait
    /// (docs/lanes.md, "What SCHED_IDLE costs").
    #[inline]
    pub(crate) fn share_core(&self, now: Instant) {
        if now.saturating_duration_since(self.yielded_at.get()) >= SHARE_CORE_EVERY {
            std::thread::yield_now();
            self.yielded_at.set(Instant::now());
        }
    }

    /// The lane is busy again after an idle spell: its next yield is a millisecond of
    /// batches from `now`.
    #[inline]
    pub(super) fn busy_from(&self, now: Instant) {
        self.yielded_at.set(now);
    }

    /// Runs `f` with this context as the thread's current lane.
    pub(super) fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore(*const LaneCtx);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|current| current.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|current| current.replace(self)));
        f()
    }

    /// The lane of the set at `set_id` this thread serves now, if any (a retired thread
    /// serves none).
    pub(super) fn current_lane(set_id: usize) -> Option<usize> {
        CURRENT.with(|current| {
            // SAFETY: `CURRENT` is non-null only inside `enter`, which borrows the context
            // for its whole duration on this very thread.
            let ctx = unsafe { current.get().as_ref() }?;
            (ctx.set_id == set_id && !ctx.is_retired()).then_some(ctx.index.into())
        })
    }

    /// True once the lane was given to a replacement thread (see `stuck`).
    pub(super) fn is_retired(&self) -> bool {
        self.stuck.load(Ordering::SeqCst)
    }

    /// How deeply this thread is nested in batches run inside waits.
    pub(super) fn depth(&self) -> &Cell<u32> {
        &self.depth
    }

    /// The permits of the batch this thread runs (innermost), for the span of `f`.
    #[inline]
    pub(crate) fn running_batch<T>(&self, tokens: usize, f: impl FnOnce() -> T) -> T {
        struct Restore<'a>(&'a Cell<usize>, usize);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set(self.1);
            }
        }
        let _outer = Restore(&self.batch_tokens, self.batch_tokens.replace(tokens));
        f()
    }

    /// The permits the batch this thread runs holds (0 outside a batch).
    pub(super) fn batch_tokens(&self) -> usize {
        self.batch_tokens.get()
    }

    /// Adds time spent running other work inside a wait.
    pub(super) fn add_helped(&self, since: Instant) {
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.helped_ns.set(self.helped_ns.get().saturating_add(nanos));
    }

    /// Nanoseconds spent helping so far (a counter: compare two readings).
    pub(crate) fn helped_ns(&self) -> u64 {
        self.helped_ns.get()
    }

    /// True once the engine is shutting down with `Abort`: queued work is cancelled.
    pub(crate) fn aborting(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Marks this lane as running `token_id` under a deadline. Marks stack up when a
    /// call runs inside another's wait: each deadline finds its own.
    pub(crate) fn watch(
        &self,
        token_id: u64,
        queue: &Arc<OpQueue>,
        permit: Permit,
        row: Option<(TokenRecord, Instant)>,
    ) {
        let owner = Arc::clone(&self.stuck);
        let mark = Watch { token_id, queue: Arc::clone(queue), permit, owner, row };
        self.marks.lock().unwrap_or_else(|e| e.into_inner()).push(mark);
    }

    /// Clears this thread's mark for `token_id`. False if a deadline took it (the lane
    /// was replaced because of this call; the replacement then owns its permit and this
    /// thread must retire).
    pub(crate) fn unwatch(&self, token_id: u64) -> bool {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let mine =
            marks.iter().position(|w| w.token_id == token_id && Arc::ptr_eq(&w.owner, &self.stuck));
        mine.map(|at| marks.remove(at)).is_some()
    }

    /// An engine-unique batch id: the lane in the top 16 bits, a lane-local sequence below.
    pub(crate) fn next_batch_id(&self) -> u64 {
        self.batches.set(self.batches.get() + 1);
        (u64::from(self.index) << 48) | self.batches.get()
    }

    /// Log one token in `sample_every` (by token id).
    pub(crate) fn sample_every(&self) -> u64 {
        self.telemetry.as_ref().map_or(1, |(t, _)| t.sample_every)
    }

    pub(crate) fn record(&self, record: TokenRecord) {
        let full = {
            let mut records = self.records.borrow_mut();
            if self.fresh && records.is_empty() {
                self.buffered_at.set(Instant::now());
            }
            records.push(record);
            records.len() >= FLUSH_ROWS
                || (self.fresh
                    && records.len().is_multiple_of(FLUSH_AGE_CHECK)
                    && self.buffered_at.get().elapsed() >= FLUSH_AGE)
        };
        if full {
            self.flush();
        }
    }

    /// Hands buffered records to the writer (never blocks).
    pub(super) fn flush(&self) {
        let Some((telemetry, sender)) = &self.telemetry else { return };
        let full = {
            let mut records = self.records.borrow_mut();
            if records.is_empty() {
                return;
            }
            // Buffers handed on by age hold tens of rows, not a thousand: the next one
            // starts at about that size (the channel bounds buffers, not rows).
            let capacity = match self.fresh {
                true => (records.len() * 2).clamp(64, FLUSH_ROWS),
                false => FLUSH_ROWS,
            };
            std::mem::replace(&mut *records, Vec::with_capacity(capacity))
        };
        telemetry.submit(sender, full);
    }
}
