//! A single call's batch, carried in its chunk's tail, and the unsafe cell it lives in.
//!
//! The invariant everything here rests on: a queued single call's chunk has exactly one
//! queue handle (`BoxJob`, whose `new` is `unsafe` for that reason), and only the
//! holder of that handle touches the tail's cell — to put the call in before queueing
//! it, and to take it out to run or cancel. The token that shares the chunk never reads
//! the tail.

use std::cell::UnsafeCell;
use std::sync::Arc;

use crate::error::CancelSource;
use crate::lanes::{BoxJob, Job, LaneCtx, RunEnd};
use crate::token::{ChunkOf, Tail};

use super::batch::{Batch, BatchHead, One};

/// A single call's batch, carried in its chunk's tail: the chunk is then both the
/// token's handle and the lanes' queue entry, one allocation for the call (a `Batch`
/// of its own would be a second). Empty until the call is queued, and again once a
/// lane took it to run or cancel.
pub(super) struct Single<A, R> {
    pub(super) job: UnsafeCell<Option<SingleJob<A, R>>>,
}

/// A [`Batch`] of one without its chunk: the chunk carries it.
pub(super) struct SingleJob<A, R> {
    pub(super) head: BatchHead<A, R>,
    /// The call: its slot index and argument.
    pub(super) call: (u32, A),
}

// SAFETY: the cell is written once by the submitting thread before the chunk is queued
// (the queue's push publishes it), and then read and emptied only by the queue entry's
// one holder; the token's handles never look at a chunk's tail.
unsafe impl<A: Send, R: Send> Sync for Single<A, R> {}

impl<A: Send + 'static, R: Send + 'static> Tail for Single<A, R> {}

impl<A, R> Single<A, R> {
    pub(super) fn empty() -> Self {
        Single { job: UnsafeCell::new(None) }
    }

    /// Fills the cell.
    ///
    /// # Safety
    /// Only before the chunk is queued, by the thread that queues it.
    pub(super) unsafe fn put(&self, job: SingleJob<A, R>) {
        // SAFETY: nobody else reads the cell before the chunk is queued.
        unsafe { *self.job.get() = Some(job) };
    }

    /// # Safety
    /// Only by the queue entry's holder.
    unsafe fn job(&self) -> Option<&SingleJob<A, R>> {
        // SAFETY: the holder is the only thread touching the cell.
        unsafe { (*self.job.get()).as_ref() }
    }

    /// # Safety
    /// Only by the queue entry's holder.
    unsafe fn take(&self) -> Option<SingleJob<A, R>> {
        // SAFETY: as for `job`.
        unsafe { (*self.job.get()).take() }
    }
}

impl<A: Send + 'static, R: Send + 'static> ChunkOf<R, Single<A, R>> {
    /// The call as a batch of one, taken out of the tail (None if already taken).
    fn batch(self: Arc<Self>) -> Option<Batch<A, R, One<A>>> {
        // SAFETY: the caller holds the queue entry (run and cancel_all take it).
        let SingleJob { head, call } = unsafe { self.tail.take() }?;
        Some(Batch { head, chunk: self, items: [call] })
    }
}

// The `&self` methods read the tail: the `Job` contract (one holder) makes that sound.
impl<A: Send + 'static, R: Send + 'static> Job for ChunkOf<R, Single<A, R>> {
    fn len(&self) -> usize {
        // SAFETY: called by the queue entry's holder.
        usize::from(unsafe { self.tail.job() }.is_some())
    }

    fn predicted_ns(&self) -> u64 {
        // SAFETY: as above.
        unsafe { self.tail.job() }.map_or(0, |job| job.head.predicted_ns)
    }

    fn may_run_outside(&self) -> bool {
        // SAFETY: as above.
        unsafe { self.tail.job() }.is_some_and(|job| job.head.op.may_run_outside())
    }

    fn start(self: Arc<Self>) -> Option<BoxJob> {
        // SAFETY: as above.
        let job = unsafe { self.tail.job() };
        debug_assert!(job.is_some(), "a queued single call holds its call");
        let (op, set) = job.map(|job| (Arc::clone(&job.head.op), job.head.set))?;
        let aborting = op.env.lanes.is_aborting();
        // SAFETY: `self` is the `Arc` of the handle `start` consumed (`BoxJob::start`):
        // the job's one handle again.
        op.control.start_batch(set, unsafe { BoxJob::new(self) }, aborting)
    }

    fn cancel_all(self: Arc<Self>, by: CancelSource) {
        let batch = self.batch();
        debug_assert!(batch.is_some(), "a queued single call holds its call");
        if let Some(batch) = batch {
            batch.cancel(by);
        }
    }

    fn run(self: Arc<Self>, lane: &LaneCtx) -> RunEnd {
        // Started (`start` found the call), so the call is there: only this holder
        // takes it.
        let batch = self.batch();
        debug_assert!(batch.is_some(), "a started single call holds its call");
        batch.map_or(RunEnd::Done, |batch| batch.run(lane))
    }
}
