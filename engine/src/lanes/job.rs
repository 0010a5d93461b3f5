//! What the lanes run: the contract of a queued batch.

use std::sync::Arc;

use super::LaneCtx;

/// A batch of tokens of one operation, type-erased for the queues. Queued behind an
/// `Arc` so that a single call's chunk can be its own queue entry (see
/// `op::run::Single`); a queue entry has one holder at a time, the only one that calls
/// these methods (hence `Sync` is no promise of concurrent use).
pub(crate) trait Job: Send + Sync {
    /// Tokens in the batch.
    fn len(&self) -> usize;

    /// What the batch is predicted to take to run (ns): the sum of its tokens'
    /// predicted costs.
    fn predicted_ns(&self) -> u64;
    /// Runs (or skips, if resolved elsewhere) every token of the batch and gives its
    /// admission permits back.
    fn run(self: Arc<Self>, lane: &LaneCtx) -> RunEnd;

    /// Whether a thread outside the lanes may run it while it waits (no deadline, no
    /// locality: nothing that needs a lane of its own).
    fn may_run_outside(&self) -> bool;

    /// Takes a running slot of the batch's operation and hands the batch back to run;
    /// or, if the operation is paused (or at its throttle limit), sets the batch aside
    /// (it keeps its permits) until it may run, and returns `None`.
    fn start(self: Arc<Self>) -> Option<BoxJob>;

    /// Cancels every token of the batch that has not started, and gives its permits
    /// back (for batches set aside, on a `cancel` command).
    fn cancel_all(self: Arc<Self>, by: crate::error::CancelSource);
}

/// How a batch left its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// Normally: the lane goes on.
    Done,
    /// The lane was replaced while this thread overran a deadline: the thread retires.
    Retired,
}

/// A queued batch: the one handle on it (not `Clone`). A job has one holder at a time,
/// and only the holder calls its methods; that is what lets a job read its contents
/// without a lock (a single call's chunk, `op::run::Single`, is shared with its token).
pub(crate) struct BoxJob(Arc<dyn Job>);

impl BoxJob {
    /// The queue handle of `job`.
    ///
    /// # Safety
    ///
    /// `job` must have no other live `BoxJob`: no other handle made from a clone of the
    /// same `Arc` may exist while this one does. Jobs read their contents without a lock
    /// on the strength of that (a single call's chunk reads its call through an
    /// `UnsafeCell` shared with its token, `op::run::Single`), so a second handle would
    /// let two threads run, start or cancel the same batch at once.
    pub(crate) unsafe fn new(job: Arc<dyn Job>) -> Self {
        BoxJob(job)
    }

    /// See [`Job::run`].
    pub(crate) fn run(self, lane: &LaneCtx) -> RunEnd {
        self.0.run(lane)
    }

    /// See [`Job::start`].
    pub(crate) fn start(self) -> Option<BoxJob> {
        self.0.start()
    }

    /// See [`Job::cancel_all`].
    pub(crate) fn cancel_all(self, by: crate::error::CancelSource) {
        self.0.cancel_all(by)
    }
}

impl std::ops::Deref for BoxJob {
    type Target = dyn Job + 'static;

    fn deref(&self) -> &(dyn Job + 'static) {
        &*self.0
    }
}
