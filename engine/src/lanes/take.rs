//! Which lanes may take from which queue now: a set's own queue always; the other set's
//! as the split allows (`mod.rs`), heavy work on a light lane only as the steal policy
//! says (`steal.rs`), and during a rescue (`rescue.rs`) any heavy work a light lane finds.

use std::sync::atomic::Ordering::Relaxed;

use super::{LaneSet, Lanes};

impl Lanes {
    /// Every lane allowed to take from `queue` now. During a rescue (`rescue.rs`) the
    /// light lanes may take heavy work too, and a wake-up for it goes to them first.
    #[inline]
    pub(super) fn takers(&self, queue: usize) -> u64 {
        if self.rescuing_queue(queue) {
            self.primary[LaneSet::Light.index()] | (self.takers[queue] & !self.floating)
        } else {
            self.takers[queue]
        }
    }

    /// The lanes that serve `queue` first now: during a rescue, not the heavy lanes.
    pub(super) fn serving(&self, queue: usize) -> u64 {
        if self.rescuing_queue(queue) {
            0
        } else {
            self.primary[queue]
        }
    }

    /// Whether `queue` is the heavy queue of a preemptive split during a rescue.
    #[inline]
    pub(super) fn rescuing_queue(&self, queue: usize) -> bool {
        queue == LaneSet::Heavy.index() && self.floating != 0 && self.rescuing()
    }

    /// Whether `lane` may take from `queue` now: its own set's queue always; the other
    /// set's if allowed, and heavy work on a light lane only as the steal policy says
    /// (`steal.rs`).
    pub(super) fn may_take(&self, lane: usize, queue: usize) -> bool {
        if self.takers(queue) & (1 << lane) == 0 {
            return false;
        }
        let stealing_heavy =
            queue == LaneSet::Heavy.index() && self.primary[queue] & (1 << lane) == 0;
        !stealing_heavy || self.light_may_take_heavy()
    }

    pub(super) fn light_may_take_heavy(&self) -> bool {
        let (short, long) = self.light_parts_to_take();
        short || long
    }

    /// [`Lanes::heavy_parts_to_take`], except during a rescue, when a light lane takes
    /// any heavy work it finds (the heavy lanes, starved, would not run it).
    pub(super) fn light_parts_to_take(&self) -> (bool, bool) {
        if self.rescuing_queue(LaneSet::Heavy.index()) {
            (true, true)
        } else {
            self.heavy_parts_to_take()
        }
    }

    /// Whether a light lane may take from the short and from the long part of the heavy
    /// queue now (the steal policy weighs each part's batch length against the whole
    /// heavy backlog).
    pub(super) fn heavy_parts_to_take(&self) -> (bool, bool) {
        let heavy = LaneSet::Heavy.index();
        let all_ns = self.queued_ns[heavy].load(Relaxed);
        let long_ns = self.long[heavy].queued_ns().min(all_ns);
        let (short_n, long_n) = (self.queues[heavy].len(), self.long[heavy].len());
        let all = (short_n + long_n, all_ns);
        let lanes = self.primary[heavy].count_ones();
        let may = |part| self.steal.light_may_take_heavy(part, all, lanes, &self.arrivals);
        (may((short_n, all_ns - long_ns)), may((long_n, long_ns)))
    }
}
