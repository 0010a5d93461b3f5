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
//! A thread *outside* the lanes that waits on a token (a `submit_many(...)` followed
//! by waits) helps too, but only with light batches without
//! deadline or locality, and only while the light queue holds at least two batches per
//! light lane, more than the lanes will reach soon: a lone call is never run inline on
//! its caller, and the helper stops as soon as the lanes can keep up. On 2 cores this
//! turns a driver that competes with the lanes for a core into a third worker; on 16 it
//! rarely triggers, because 16 lanes drain a backlog before a caller runs out of spins.
//!
//! If a batch run while helping overruns its deadline and the lane is replaced, this
//! thread stops serving the lane: it waits without helping and retires once the calls
//! on its stack return.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{BoxJob, LaneCtx, Lanes, SPIN_CHECKS};
use crate::placement::LaneSet;
use crate::token::{Helper, Outside};

/// The lane index an outside helper's context reports (telemetry `lane`).
pub(crate) const OUTSIDE_LANE: u16 = u16::MAX;

/// Longest park of a helping lane between checks (a push or a resolution ends it
/// sooner).
const HELP_PARK: Duration = Duration::from_millis(1);

/// Nesting past which a waiting lane takes only its own newest local work.
const MAX_DEPTH: u32 = 48;

/// A lane thread as the helper of the waits its calls make: its lane set and its
/// context.
pub(super) struct LaneHelper<'a> {
    pub(super) lanes: &'a Lanes,
    pub(super) ctx: &'a LaneCtx,
}

impl Helper for LaneHelper<'_> {
    fn help(&self, done: &dyn Fn() -> bool) {
        self.lanes.help(self.ctx, done);
    }

    fn wait_begins(&self) -> usize {
        let held = self.ctx.batch_tokens();
        self.lanes.admission.wait_begins(held);
        held
    }

    fn wait_ends(&self, held: usize) {
        self.lanes.admission.wait_ends(held);
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
            // Deep in nested waits, only this lane's own newest work (the waiting calls'
            // children) is taken, so the stack stays bounded by the recursion itself.
            let depth = ctx.depth().get();
            let job = if depth < MAX_DEPTH {
                self.next_job(index, true).or_else(|| self.other_set_job(index))
            } else {
                self.lanes[index].local.pop_newest()
            };
            if let Some(job) = job {
                misses = 0;
                let started = Instant::now();
                ctx.depth().set(depth + 1);
                // A call that overran its deadline in this batch marks the thread stuck
                // (`is_retired`): the loop stops helping then.
                let _ = self.run_job(index, ctx, job);
                ctx.depth().set(depth);
                ctx.add_helped(started);
                continue;
            }
            misses += 1;
            if misses <= SPIN_CHECKS {
                std::hint::spin_loop();
                continue;
            }
            let bit = 1u64 << index;
            self.idle.announce(bit);
            if !self.has_work(index) && !done() {
                thread::park_timeout(HELP_PARK);
            }
            let woken_for_work = !self.idle.retract(bit);
            if woken_for_work && done() && self.has_work(index) {
                // A push woke this lane for work, but its wait is over: pass the wake on.
                let queue = self.queue_index(self.lanes[index].set);
                let idle = self.idle.sleepers();
                if idle != 0 {
                    self.wake_one(queue, idle);
                }
            }
            return;
        }
        if ctx.is_retired() && !done() {
            thread::park_timeout(HELP_PARK);
        }
    }
}

impl Lanes {
    /// A waiting lane's last resort: work of the set it does not serve. Under the
    /// preemptive split neither set takes the other's work in its loop (except light
    /// lanes during a rescue), so a light call waiting on a heavy child whose heavy lane
    /// waits on a light grandchild would wait for ever if neither could run the other's
    /// work while waiting. A lane that is waiting holds its core anyway.
    fn other_set_job(&self, index: usize) -> Option<BoxJob> {
        if !self.lanes[index].floating && self.floating == 0 {
            return None; // Pinned split: `next_job` already took what the lane may.
        }
        if self.lanes[index].floating && self.rescuing() {
            // Starved (`rescue.rs`): the light lanes run everything queued meanwhile.
            return None;
        }
        let other = 1 - self.queue_index(self.lanes[index].set);
        self.take_shared(other).or_else(|| self.steal_local(index, other))
    }
}

impl Outside for Lanes {
    fn help(&self, done: &dyn Fn() -> bool) -> bool {
        let light = self.queue_index(LaneSet::Light);
        let backlog = 2 * (self.primary[light].count_ones() as usize).max(1);
        if self.shared_len(light) < backlog || self.shutdown.load(Ordering::Relaxed) {
            return false;
        }
        // A context for this round only: a cached one would keep the engine's telemetry
        // channel open past its shutdown.
        let Some(me) = self.me.upgrade() else { return false };
        let stuck = Arc::clone(&self.outside_stuck);
        let ctx = me.context(usize::from(OUTSIDE_LANE), -1, stuck);
        let mut ran = false;
        while !done() && self.shared_len(light) >= backlog {
            let Some(job) = self.take_shared(light) else { break };
            if !job.may_run_outside() {
                self.push_shared(light, job);
                break;
            }
            if let Some(job) = job.start() {
                self.by_callers.fetch_add(job.len() as u64, Ordering::Relaxed);
                // An outside context never retires: it runs nothing with a deadline.
                job.run(&ctx);
            }
            ran = true;
        }
        ctx.flush();
        ran
    }
}
