//! Which sleeping lane a push wakes (the sleep/wake protocol itself, and the set of
//! sleepers, are `idle.rs`'s).

use super::{LaneSet, Lanes};

/// A push's wake-up policy: a lane of the queue's own set first, the one pinned to the
/// pusher's core when there is one (woken once the pusher's submit is all pushed); a
/// lane of the other set only where it may take the queue's work.
impl Lanes {
    pub(super) fn wake_one(&self, queue: usize, idle: u64) {
        self.wake_one_or_defer(queue, idle, None);
    }

    /// Wakes a sleeper for `queue`, as [`Lanes::wake_one`]; but a caller that defers
    /// (`deferred`: a bit per queue whose wake-up it already put off), when the sleeper
    /// it would wake is the lane pinned to its own core, wakes nobody the first time and
    /// sets `queue`'s bit: it wakes that lane once it has pushed all it is pushing
    /// ([`Lanes::wake_deferred`]), and its next pushes to `queue` wake the other
    /// sleepers. Woken at once, that lane would preempt the pusher mid-submit, and the
    /// pusher, once preempted, can lose its core to an idle-priority heavy lane until
    /// the core's next scheduling event (about a millisecond; docs/lanes.md, "What
    /// `SCHED_IDLE` costs").
    pub(super) fn wake_one_or_defer(
        &self,
        queue: usize,
        mut idle: u64,
        mut deferred: Option<&mut u8>,
    ) {
        loop {
            let candidates = match idle & self.serving(queue) {
                0 if queue == LaneSet::Heavy.index() && !self.light_may_take_heavy() => 0,
                0 => idle & self.takers(queue),
                some => some,
            };
            if candidates == 0 {
                return;
            }
            let bit = match (self.local_lane(candidates), deferred.as_deref_mut()) {
                (Some(local), None) => local,
                (Some(_), Some(put_off)) if *put_off & (1 << queue) == 0 => {
                    *put_off |= 1 << queue;
                    return;
                }
                (Some(local), Some(_)) => match candidates & !local {
                    0 => return,
                    others => 1u64 << others.trailing_zeros(),
                },
                (None, _) => 1u64 << candidates.trailing_zeros(),
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

    /// The wake-ups [`Lanes::wake_one_or_defer`] put off (a bit per queue): one sleeper
    /// for each, if any is still asleep.
    pub(crate) fn wake_deferred(&self, queues: u8) {
        for queue in 0..self.queues.len() {
            if queues & (1 << queue) != 0 {
                let idle = self.idle.sleepers();
                if idle != 0 {
                    self.wake_one(queue, idle);
                }
            }
        }
    }

    /// Under the preemptive split, the bit of the lane among `candidates` pinned to the
    /// core this thread runs on, if any: waking it needs no interrupt to another core,
    /// and preempts no heavy call (this core runs the pusher, not a heavy lane). A
    /// submit wakes it only once all its batches are pushed (`wake_one_or_defer`).
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
