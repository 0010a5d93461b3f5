//! The one run loop: claim → call under `catch_unwind` → resolve → one telemetry record
//! per attempt, for every batch a lane takes.
//!
//! Per batch it reads the operation's control flags once; a batch of a plain operation
//! (no deadline, retry, dedupe or locality) without telemetry takes the loop's short
//! branch: claim, call, resolve, and counters once per batch. The loop borrows the lane
//! only through `&LaneCtx`, so a call may re-enter a lane's loop while it waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::CANCELLING;
use super::requeue::{arm_deadline, requeue};
use super::state::{call, nanos, OpShared};
use crate::admission::Permit;
use crate::error::{CancelSource, TokenError};
use crate::lanes::{BoxJob, Job, LaneCtx, RunEnd};
use crate::telemetry::{RecordOutcome, TokenRecord};
use crate::token::{Chunk, Outcome, TokenState};

use super::batch::{Batch, BatchHead, ItemList};
use super::record::BatchMeta;

/// Per batch: what its tokens came to.
#[derive(Default)]
struct Tally {
    completed: u64,
    failed: u64,
    skipped: u64,
    ran: u64,
}

impl Tally {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Skipped => self.skipped += 1,
        }
    }
}

impl<A: Send + 'static, R: Send + 'static, I: ItemList<A>> Job for Batch<A, R, I> {
    fn len(&self) -> usize {
        self.items.as_ref().len()
    }

    fn predicted_ns(&self) -> u64 {
        self.head.predicted_ns
    }

    fn may_run_outside(&self) -> bool {
        self.head.op.may_run_outside()
    }

    fn start(self: Arc<Self>) -> Option<BoxJob> {
        let (op, set) = (Arc::clone(&self.head.op), self.head.set);
        let aborting = op.env.lanes.is_aborting();
        // SAFETY: `self` is the `Arc` of the handle `start` consumed (`BoxJob::start`):
        // the job's one handle again.
        op.control.start_batch(set, unsafe { BoxJob::new(self) }, aborting)
    }

    fn cancel_all(self: Arc<Self>, by: CancelSource) {
        Self::owned(self).cancel(by)
    }

    fn run(self: Arc<Self>, lane: &LaneCtx) -> RunEnd {
        Self::owned(self).run(lane)
    }
}

impl<A: Send + 'static, R: Send + 'static, I: ItemList<A>> Batch<A, R, I> {
    /// The batch out of its queue entry, which nobody else holds.
    fn owned(job: Arc<Self>) -> Self {
        Arc::into_inner(job).expect("a queued batch has one holder")
    }

    /// Cancels every token of the batch that has not started, and gives its permits back.
    pub(super) fn cancel(self, by: CancelSource) {
        let Batch { head: BatchHead { op, bytes, .. }, chunk, items } = self;
        let items = items.as_ref();
        for (index, arg) in items.iter() {
            let _home = op.home_guard(arg);
            chunk.cancel(*index, by);
            op.land_flight(op.dedupe_key(arg), &chunk, *index, || {
                Err(TokenError::Cancelled { by })
            });
        }
        op.env.admission.release(Permit::new(items.len(), bytes), &op.queue);
    }

    /// Runs (or skips) every token of the batch and gives its permits back.
    pub(super) fn run(self, lane: &LaneCtx) -> RunEnd {
        let op = Arc::clone(&self.head.op);
        let (end, ended) = {
            let _slot = RunningSlot(&op);
            if lane.aborting() {
                self.cancel(CancelSource::Shutdown);
                return RunEnd::Done;
            }
            let tokens = self.items.as_ref().len();
            lane.running_batch(tokens, || self.run_items(lane))
        };
        // Only once the batch is wholly done (counted, its running slot and permits
        // given back): a yield before that would leave its stats behind its results.
        lane.share_core(ended);
        end
    }
}

impl<A: Send + 'static, R: Send + 'static, I: ItemList<A>> Batch<A, R, I> {
    /// Runs the batch's calls; how it ended, and when.
    fn run_items(self, lane: &LaneCtx) -> (RunEnd, Instant) {
        let Batch { head, chunk, items } = self;
        let BatchHead { op, meta, attempt, bytes, admitted_at, set, cell, .. } = head;
        let len = items.as_ref().len();
        let first = items.as_ref().first().map(|&(index, _)| index);
        let permit = Permit::new(len, bytes);
        // The one control load of the batch: tokens below `cancel_before` were
        // cancelled by command (their ids ascend within a batch).
        let cancel_before = match op.control.flags() & CANCELLING {
            0 => 0,
            _ => op.control.cancelled_before(),
        };
        let cancels = first.is_some_and(|index| chunk.id_of(index) < cancel_before);
        // A plain operation's batch without telemetry takes the short branch for every
        // token; with sampled telemetry, its unlogged tokens do.
        let short = op.plain && meta.is_none();
        let log = meta.map(|meta| BatchLog {
            batch_id: lane.next_batch_id(),
            batch_size: len as u32,
            sample_every: lane.sample_every(),
            meta,
        });
        // 0: nothing logged in this batch; else log tokens whose id is a multiple.
        let log_every = log.as_ref().map_or(0, |l| l.sample_every);
        let started = Instant::now();
        // What the batch's calls spent running other batches while they waited is not
        // their own cost (the running averages would call a recursion's parents heavy).
        let helped_at_start = lane.helped_ns();
        let mut tally = Tally::default();
        let mut end = RunEnd::Done;
        let slots = chunk.slots();
        for (position, (index, arg)) in items.into_iter().enumerate() {
            let slot = &slots[index as usize];
            if cancels && chunk.id_of(index) < cancel_before {
                chunk.cancel(index, CancelSource::Control);
            }
            let logged = !short && log_every != 0 && chunk.id_of(index) % log_every == 0;
            if short || (op.plain && !logged) {
                // A plain operation's running call can only end by returning: claim it
                // straight into WRITING (one CAS, not two).
                if slot.claim_to_write(attempt) {
                    tally.ran += 1;
                    let result = call(&op.f, arg, attempt, &|| true);
                    // SAFETY: `claim_to_write` moved the slot into WRITING for `attempt`.
                    tally.count(unsafe { slot.publish(attempt, result) });
                } else {
                    tally.skipped += 1;
                }
                continue;
            }
            let token = Attempt { op: &op, chunk: &chunk, index, attempt, lane };
            // A logged call reads the clock just before and just after its function (in
            // `Attempt::run`), two reads a token.
            let helped_before = lane.helped_ns();
            // A call under a deadline leaves its row with the watch, for a replacement
            // to write should it never return.
            let provisional = (logged && op.options.timeout.is_some()).then(|| {
                let log = log.as_ref().expect("logged");
                let start = Instant::now();
                let times = Times { start, end: start, helped: 0 };
                let timed_out = RecordOutcome::TimedOut;
                let row = log.record(&op, &chunk, index, position, attempt, lane, times, timed_out);
                (row, start)
            });
            let (row, window) = match token.run(arg, &mut tally, provisional, logged) {
                Ok((_, true, _)) => {
                    // Replaced at the deadline: the replacement wrote the row.
                    end = RunEnd::Retired;
                    continue;
                }
                Ok((row, false, window)) => (row, window),
                // Cancelled while it waited: a row too, with no run time.
                Err(Skipped::Cancelled) => (RecordOutcome::Cancelled, None),
                Err(Skipped::Other) => continue,
            };
            // Time this call spent running other batches while it waited is not its own.
            let helped = lane.helped_ns() - helped_before;
            let Some(log) = log.as_ref().filter(|_| logged) else { continue };
            // A call that ran is timed from just before its function to just after it
            // returned: claiming and resolving it, and the previous token's record
            // (with, now and then, a buffer handed to the writer), are the loop's work,
            // not the call's cost.
            let (call_start, now) = window.unwrap_or_else(|| {
                let now = Instant::now();
                (now, now)
            });
            let times = Times { start: call_start, end: now, helped };
            lane.record(log.record(&op, &chunk, index, position, attempt, lane, times, row));
        }
        let helped = Duration::from_nanos(lane.helped_ns() - helped_at_start);
        let ended = op.settle_batch(
            started.checked_add(helped).unwrap_or(started),
            admitted_at,
            (set, cell),
            tally.ran,
            [tally.completed, tally.failed, tally.skipped],
        );
        if end == RunEnd::Done {
            op.env.admission.release(permit, &op.queue);
        }
        (end, ended)
    }
}

/// When a logged call's function was called and when it returned.
type CallWindow = Option<(Instant, Instant)>;

/// One token's attempt on the loop's full branch.
struct Attempt<'a, A, R> {
    op: &'a Arc<OpShared<A, R>>,
    chunk: &'a Arc<Chunk<R>>,
    index: u32,
    attempt: u8,
    lane: &'a LaneCtx,
}

impl<A: Send + 'static, R: Send + 'static> Attempt<'_, A, R> {
    /// Claims, runs and resolves (or retries) the token. `Err` if it was not this
    /// attempt's to run; else how the attempt ended, whether this lane thread was
    /// replaced meanwhile (an overrun deadline: it must retire), and with `clock`, when
    /// the function was called and when it returned. Kept out of line: the
    /// run loop's short branch is the hot one.
    #[inline(never)]
    fn run(
        &self,
        arg: A,
        tally: &mut Tally,
        row: Option<(TokenRecord, Instant)>,
        clock: bool,
    ) -> Result<(RecordOutcome, bool, CallWindow), Skipped> {
        let Attempt { op, chunk, index, attempt, lane } = *self;
        let slot = chunk.slot(index);
        let _home = op.home_guard(&arg);
        let key = op.dedupe_key(&arg);
        if !slot.claim(attempt) {
            tally.skipped += 1;
            if key.is_some() && slot.is_resolved() {
                // The leading call was cancelled by its caller before it ran: its
                // duplicates still asked for a result, so run it for them.
                let result = call(&op.f, arg, attempt, &|| true);
                op.land_flight(key, chunk, index, || {
                    op.dedupe.as_ref().expect("keyed").copy_result(&result)
                });
            }
            let cancelled = slot.state() == TokenState::Cancelled && slot.attempt() == attempt;
            return Err(if cancelled { Skipped::Cancelled } else { Skipped::Other });
        }
        let token_id = chunk.id_of(index);
        // A served call is retried by a redelivery, not here (`remote.rs`).
        let retries_here = !chunk.is_served();
        let retry_arg = match (op.options.retry, op.options.clone_arg) {
            (Some(_), Some(clone)) if retries_here => Some(clone(&arg)),
            _ => None,
        };
        let timed = op.options.timeout.is_some();
        if timed {
            // The deadline runs from the start of this attempt.
            let again = retries_here.then(|| op.timeout_retry_arg(&arg, attempt)).flatten();
            arm_deadline(op, chunk, index, attempt, again);
        }
        if timed {
            lane.watch(token_id, &op.queue, Permit::new(1, op.bytes_of(&arg)), row);
        }
        let called = clock.then(Instant::now);
        let result = call(&op.f, arg, attempt, &|| slot.is_running(attempt));
        let window = called.map(|called| (called, Instant::now()));
        tally.ran += 1;
        // False: our deadline passed and this lane was replaced; the replacement took
        // over our permit and our place, and the late value is dropped.
        let retired = timed && !lane.unwatch(token_id);
        let row = match &result {
            Ok(_) => RecordOutcome::Completed,
            Err(TokenError::Panicked { .. }) => RecordOutcome::Panicked,
            Err(_) => RecordOutcome::Failed,
        };
        let outcome = match (&result, retry_arg) {
            (Err(error), Some(again)) if op.retries(attempt, error) && slot.retry(attempt) => {
                op.counters.retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let delay = op.options.retry.map_or(Duration::ZERO, |p| p.delay(attempt));
                requeue(op, Arc::clone(chunk), index, again, attempt + 1, delay);
                Outcome::Failed
            }
            _ => {
                let outcome = match (&op.dedupe, key) {
                    (Some(dedupe), Some(_)) => slot.finish_and(attempt, result, |first| {
                        op.land_flight(key, chunk, index, || dedupe.copy_result(first));
                    }),
                    _ => slot.finish(attempt, result),
                };
                if outcome == Outcome::Skipped && slot.is_resolved() {
                    // A deadline resolved it while it ran: its duplicates time out too.
                    op.land_flight(key, chunk, index, || Err(TokenError::TimedOut));
                }
                tally.count(outcome);
                outcome
            }
        };
        // Skipped here: a deadline resolved the attempt (or moved it on) while it ran.
        let row = if outcome == Outcome::Skipped { RecordOutcome::TimedOut } else { row };
        Ok((row, retired, window))
    }
}

/// Why a queued attempt was not run.
enum Skipped {
    /// Its token was cancelled while it waited (logged as a row).
    Cancelled,
    /// Resolved elsewhere or moved to another attempt.
    Other,
}

/// When a logged call started and ended, and how long of that it spent running other
/// batches while it waited.
struct Times {
    start: Instant,
    end: Instant,
    helped: u64,
}

/// A batch's telemetry: its id, size and admission-time features.
struct BatchLog {
    batch_id: u64,
    batch_size: u32,
    sample_every: u64,
    meta: Box<BatchMeta>,
}

impl BatchLog {
    #[allow(clippy::too_many_arguments)]
    fn record<A, R>(
        &self,
        op: &OpShared<A, R>,
        chunk: &Chunk<R>,
        index: u32,
        position: usize,
        attempt: u8,
        lane: &LaneCtx,
        Times { start, end, helped }: Times,
        outcome: RecordOutcome,
    ) -> TokenRecord {
        let meta = &self.meta;
        // One description per batch when the whole batch was placed at once.
        let token = meta.tokens.get(position).unwrap_or(&meta.tokens[0]);
        TokenRecord {
            token_id: chunk.id_of(index),
            op: op.id,
            declared: token.declared,
            route_source: token.source,
            lane_set: token.lanes,
            predicted_class: token.class,
            model_version: meta.model_version,
            lane: lane.index,
            core: lane.core,
            batch_id: self.batch_id,
            batch_size: self.batch_size,
            arg_size: token.arg_size,
            queue_depth: meta.queue_depth,
            lane_load: meta.lane_load,
            op_recent_ns: meta.op_recent_ns,
            queue_wait_ns: nanos(start.saturating_duration_since(meta.admitted_at)),
            run_ns: nanos(end.saturating_duration_since(start)).saturating_sub(helped),
            end_to_end_ns: nanos(end.saturating_duration_since(meta.admitted_at)),
            outcome,
            attempt,
            cost: token.cost,
        }
    }
}

/// Gives a batch's running slot back when the batch is done, handing it to the oldest
/// batch waiting at the operation's throttle.
struct RunningSlot<'a, A, R>(&'a OpShared<A, R>);

impl<A, R> Drop for RunningSlot<'_, A, R> {
    fn drop(&mut self) {
        self.0.control.finish_batch(&self.0.env.lanes);
    }
}
