//! Waiting without wasting a lane: a blocking wait on a lane thread (a token's `wait`,
//! a full admission gate) runs other queued batches until what it waits for is done.
//!
//! The lane takes its own newest local batch first (the waiting call's children, LIFO:
//! depth-first, so recursion depth stays that of the recursion), then whatever else it
//! would take in its loop, re-entrantly, through the same `run_job` as the loop. When
//! nothing is runnable it marks itself idle (so a push wakes it) and parks briefly; a
//! resolved token wakes it too (its waker unparks the thread). Time spent running other
//! batches is counted apart (`helped_ns`), so a waiting call's logged run time leaves
//! it out.
//!
//! If a batch run while helping overruns its deadline and the lane is replaced, this
//! thread stops serving the lane: it waits without helping and retires once the calls
//! on its stack return.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::{LaneCtx, Lanes, RunEnd, SPIN_CHECKS};
use crate::token::Helper;

/// Longest park of a helping lane between checks (a push or a resolution ends it
/// sooner).
const HELP_PARK: Duration = Duration::from_millis(1);

impl Helper for LaneCtx {
    fn help(&self, done: &dyn Fn() -> bool) {
        self.lanes().help(self, done);
    }
}

impl Lanes {
    /// Runs batches on the current lane until `done()`, or until nothing is runnable
    /// and a short park ends (the caller then checks what it waits for, and calls
    /// again).
    fn help(&self, ctx: &LaneCtx, done: &dyn Fn() -> bool) {
        let index = usize::from(ctx.index);
        let mut misses = 0;
        while !ctx.is_retired() && !done() {
            if let Some(job) = self.next_job(index) {
                misses = 0;
                let started = Instant::now();
                if self.run_job(index, ctx, job) == RunEnd::Retired {
                    ctx.retire();
                }
                ctx.add_helped(started);
                continue;
            }
            misses += 1;
            if misses <= SPIN_CHECKS {
                std::hint::spin_loop();
                continue;
            }
            let bit = 1u64 << index;
            self.idle.fetch_or(bit, Ordering::SeqCst);
            if !self.has_work(index) && !done() {
                thread::park_timeout(HELP_PARK);
            }
            self.idle.fetch_and(!bit, Ordering::SeqCst);
            return;
        }
        if ctx.is_retired() && !done() {
            thread::park_timeout(HELP_PARK);
        }
    }
}
