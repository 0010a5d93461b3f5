//! Which sleeping lane a push wakes (the sleep/wake protocol itself, and the set of
//! sleepers, are `idle.rs`'s).

use super::{LaneSet, Lanes};

/// A push's wake-up policy: a lane of the queue's own set first, the one pinned to the
/// pusher's core when there is one; a lane of the other set only where it may take the
/// queue's work.
impl Lanes {
    pub(super) fn wake_one(&self, queue: usize, mut idle: u64) {
        loop {
            let candidates = match idle & self.primary[queue] {
                0 if queue == LaneSet::Heavy.index() && !self.light_may_take_heavy() => 0,
                0 => idle & self.takers[queue],
                some => some,
            };
            if candidates == 0 {
                return;
            }
            let bit = match self.local_lane(candidates) {
                Some(bit) => bit,
                None => 1u64 << candidates.trailing_zeros(),
            };
            // Claim the sleeper so the next push wakes a different one.
            let before = self.idle.claim(bit);
            if before & bit != 0 {
                self.lanes[bit.trailing_zeros() as usize].unpark();
                return;
            }
            idle = before & !bit;
        }
    }

    /// Under the preemptive split, the bit of the lane among `candidates` pinned to the
    /// core this thread runs on, if any: waking it needs no interrupt to another core,
    /// and preempts no heavy call (this core runs the pusher, not a heavy lane).
    pub(super) fn local_lane(&self, candidates: u64) -> Option<u64> {
        if self.floating == 0 || candidates & !self.floating == 0 {
            return None;
        }
        let cpu = current_cpu()?;
        let index = self.lanes.iter().position(|lane| lane.core.is_some_and(|c| c.id == cpu))?;
        let bit = 1u64 << index;
        (candidates & bit != 0).then_some(bit)
    }

    pub(super) fn wake_all(&self) {
        self.idle.clear();
        for lane in self.lanes.iter() {
            lane.unpark();
        }
    }
}

/// The CPU the calling thread runs on (a vDSO call on Linux; none elsewhere).
fn current_cpu() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `sched_getcpu` takes no arguments and only reads the CPU number.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok()
    }
    #[cfg(not(target_os = "linux"))]
    None
}
