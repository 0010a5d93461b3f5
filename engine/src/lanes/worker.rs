//! A lane's loop: take the next batch, run it, and when there is none spin, yield
//! (while no heavy lane has work) and park (`idle.rs`).

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Instant;

use super::{
    nanos_since, BoxJob, LaneCtx, Lanes, RunEnd, DRAIN_POLL, IDLE_YIELD, PARK_TIMEOUT, SPIN_CHECKS,
};
use crate::placement::LaneSet;

impl Lanes {
    /// Starts and runs one batch on `lane` (set aside instead, if its operation is paused
    /// or throttled).
    pub(super) fn run_job(&self, index: usize, ctx: &LaneCtx, job: BoxJob) -> RunEnd {
        let Some(job) = job.start() else { return RunEnd::Done };
        // Counted before running, so the counts are complete by the time the batch's
        // last token resolves.
        let lane = &self.lanes[index];
        lane.executed.fetch_add(job.len() as u64, Ordering::Relaxed);
        lane.batches.fetch_add(1, Ordering::Relaxed);
        job.run(ctx)
    }

    pub(super) fn worker_loop(&self, index: usize, ctx: &LaneCtx) -> RunEnd {
        let admission = &self.admission;
        let bit = 1u64 << index;
        let mut misses = 0u32;
        let mut idle_since = std::time::Instant::now();
        // The idle spell under way (across parks), for the lane's busy time.
        let mut idle_from: Option<Instant> = None;
        loop {
            if let Some(job) = self.next_job(index, false) {
                if let Some(from) = idle_from.take() {
                    ctx.busy_from(self.end_idle(index, from));
                }
                misses = 0;
                // A call nested in a wait of this batch may have been the one replaced.
                if self.run_job(index, ctx, job) == RunEnd::Retired || ctx.is_retired() {
                    ctx.flush();
                    return RunEnd::Retired;
                }
                continue;
            }
            if self.shutdown.load(Ordering::SeqCst) && admission.in_flight() == 0 {
                break;
            }
            misses += 1;
            if misses <= SPIN_CHECKS {
                std::hint::spin_loop();
                continue;
            }
            if misses == SPIN_CHECKS + 1 {
                idle_since = std::time::Instant::now();
                if idle_from.is_none() {
                    idle_from = Some(idle_since);
                    let since = nanos_since(self.epoch).max(1);
                    self.lanes[index].idle_since.store(since, Ordering::Relaxed);
                }
            }
            if idle_since.elapsed() < IDLE_YIELD && self.yields_when_idle(index) {
                thread::yield_now();
                continue;
            }
            ctx.flush();
            self.idle.announce(bit);
            if !self.has_work(index) {
                let draining = self.shutdown.load(Ordering::SeqCst);
                thread::park_timeout(if draining { DRAIN_POLL } else { PARK_TIMEOUT });
            }
            self.idle.retract(bit);
            // After a park, yield for a while again before the next one.
            misses = SPIN_CHECKS;
        }
        if let Some(from) = idle_from {
            self.end_idle(index, from);
        }
        ctx.flush();
        // Others may be parked waiting for the last batch this lane just finished.
        self.wake_all();
        RunEnd::Done
    }

    /// Whether an idle lane yields a while before it parks (so a caller that submits
    /// call after call finds it awake). Not a floating lane (its core's owner is the
    /// light lane), and not a light lane while heavy lanes have work: a yielding lane
    /// still holds its core against idle-priority threads, which get it only once the
    /// light lane parks.
    pub(super) fn yields_when_idle(&self, index: usize) -> bool {
        let lane = &self.lanes[index];
        if lane.floating {
            return false;
        }
        let floating = self.floating;
        floating == 0
            || (self.idle.peek() & floating == floating
                && self.shared_len(LaneSet::Heavy.index()) == 0)
    }

    /// Ends the idle spell begun at `from`; returns when it ended.
    pub(super) fn end_idle(&self, index: usize, from: Instant) -> Instant {
        let lane = &self.lanes[index];
        let now = Instant::now();
        let idle = now.saturating_duration_since(from);
        lane.idle_ns.fetch_add(idle.as_nanos() as u64, Ordering::Relaxed);
        lane.idle_since.store(0, Ordering::Relaxed);
        now
    }
}
