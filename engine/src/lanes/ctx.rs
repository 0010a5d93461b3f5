//! What a lane hands each batch it runs: its identity, its telemetry buffer, and the
//! deadline watch of the call it is in.
//!
//! Batches get `&LaneCtx` (shared, with interior mutability) rather than `&mut`: a call
//! running on the lane may re-enter the lane's loop while it waits for another token,
//! and no borrow is held across a user's call.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::Lanes;
use crate::admission::{OpQueue, Permit};
use crate::telemetry::{Telemetry, TokenRecord, FLUSH_ROWS};

/// The token a lane is running under a deadline, and whose permit to give back if the
/// lane is replaced meanwhile.
pub(super) struct Watch {
    pub(super) token_id: u64,
    pub(super) queue: Arc<OpQueue>,
    pub(super) permit: Permit,
}

/// A lane's own state, handed to each batch it runs.
pub(crate) struct LaneCtx {
    lanes: Arc<Lanes>,
    pub(crate) index: u16,
    /// The pinned core, or -1.
    pub(crate) core: i32,
    batches: Cell<u64>,
    records: RefCell<Vec<TokenRecord>>,
    telemetry: Option<(Arc<Telemetry>, Sender<Vec<TokenRecord>>)>,
    /// Set once a call on this thread overran its deadline and the lane was given to
    /// a replacement: the thread no longer runs the lane's work (not even while it
    /// waits), and retires when the call returns.
    retired: Cell<bool>,
    /// Nanoseconds this thread has spent running other batches inside waits, so a
    /// waiting call's own run time can leave them out.
    helped_ns: Cell<u64>,
}

thread_local! {
    /// The lane this thread is serving, while it serves one.
    static CURRENT: Cell<*const LaneCtx> = const { Cell::new(std::ptr::null()) };
}

/// The deadline mark of an enclosing call, set aside while a call nested in its wait
/// runs under a deadline of its own.
pub(crate) struct SavedWatch(Option<Watch>);

impl LaneCtx {
    pub(super) fn new(lanes: Arc<Lanes>, index: usize, core: i32) -> Self {
        let telemetry =
            lanes.telemetry.as_ref().and_then(|t| t.sender().map(|sender| (Arc::clone(t), sender)));
        let records = if telemetry.is_some() { Vec::with_capacity(FLUSH_ROWS) } else { Vec::new() };
        LaneCtx {
            lanes,
            index: index as u16,
            core,
            batches: Cell::new(0),
            records: RefCell::new(records),
            telemetry,
            retired: Cell::new(false),
            helped_ns: Cell::new(0),
        }
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

    /// The lane of `lanes` this thread serves now, if any (a retired thread serves none).
    pub(super) fn current_lane(lanes: &Lanes) -> Option<usize> {
        CURRENT.with(|current| {
            // SAFETY: `CURRENT` is non-null only inside `enter`, which borrows the context
            // for its whole duration on this very thread.
            let ctx = unsafe { current.get().as_ref() }?;
            (std::ptr::eq(&*ctx.lanes, lanes) && !ctx.retired.get()).then_some(ctx.index.into())
        })
    }

    pub(super) fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    /// Marks the thread as no longer serving its lane (see `retired`).
    pub(super) fn retire(&self) {
        self.retired.set(true);
    }

    pub(super) fn is_retired(&self) -> bool {
        self.retired.get()
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
        self.lanes.is_aborting()
    }

    /// Marks this lane as running `token_id` under a deadline, setting aside the mark
    /// of a call this one runs inside (a wait that helps), to be put back by `unwatch`.
    pub(crate) fn watch(&self, token_id: u64, queue: &Arc<OpQueue>, permit: Permit) -> SavedWatch {
        let lane = &self.lanes.lanes[usize::from(self.index)];
        let mark = Some(Watch { token_id, queue: Arc::clone(queue), permit });
        SavedWatch(std::mem::replace(
            &mut *lane.watch.lock().unwrap_or_else(|e| e.into_inner()),
            mark,
        ))
    }

    /// Clears the mark for `token_id`, putting back the enclosing call's. False if the
    /// lane was replaced because of this call (the replacement then owns the token's
    /// permit and this thread must retire). A mark for another token is the
    /// replacement's own, and is left alone.
    pub(crate) fn unwatch(&self, token_id: u64, saved: SavedWatch) -> bool {
        if self.retired.get() {
            // A call nested in this one's wait overran and the lane was replaced then:
            // this call's mark had been set aside, so it was not taken (its permit is
            // still its batch's to give back); the slot is the replacement's.
            return true;
        }
        let lane = &self.lanes.lanes[usize::from(self.index)];
        let mut watch = lane.watch.lock().unwrap_or_else(|e| e.into_inner());
        if watch.as_ref().is_some_and(|w| w.token_id == token_id) {
            *watch = saved.0;
            true
        } else {
            false
        }
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
            records.push(record);
            records.len() >= FLUSH_ROWS
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
            std::mem::replace(&mut *records, Vec::with_capacity(FLUSH_ROWS))
        };
        telemetry.submit(sender, full);
    }
}
