//! Sleeping without losing a wake-up.
//!
//! # The protocol
//!
//! Every lane has one bit in [`IdleSet`]. An idle lane spins briefly, then
//! **announces** itself (sets its bit, `SeqCst`), **re-checks** the queues, and parks
//! only if they are still empty; when it wakes, for whatever reason, it **retracts**
//! its bit. A pusher **pushes** its batch, then reads the set through
//! [`IdleSet::sleepers`] (a `SeqCst` fence, then a `SeqCst` load); for a suitable
//! sleeper it **claims** the bit (clears it, `fetch_and`) and unparks that thread only
//! if the claim found the bit still set, so two pushers never spend two wake-ups on one
//! sleeper, and the next push wakes another.
//!
//! Why no wake-up is lost: the lane's announce is followed by a `SeqCst` fence and then
//! its re-check; the pusher's push by a `SeqCst` fence and then its read. The two fences
//! fall in one total order: if the lane's comes first, the pusher's read sees the bit
//! and unparks the lane (an unpark before the park makes the park return at once); if
//! the pusher's comes first, the lane's re-check sees the batch and does not park. This
//! is the store-fence-load pairing on both sides (Dekker); it is model-checked with loom
//! (`loom_tests` below: every interleaving of pushes and lanes going to sleep ends with
//! every batch taken, with no park timeout to fall back on). Without the lane's fence
//! the argument would lean on `SeqCst` read-modify-writes and loads being in the total
//! order too — true in C++20 and on x86, where a locked instruction is a full fence,
//! but not what loom models (it treats `SeqCst` accesses as `AcqRel`, and found the
//! lost wake-up in that weaker model). Parking in the engine also has a timeout, as a
//! backstop only.
//!
//! A pusher may put its wake-up off until the end of its submit (`wake.rs`, the lane on
//! its own core): it then reads the sleepers again, after another fence, and claims
//! and unparks as above. The argument is unchanged, with the read later: a lane whose
//! bit is gone by then was claimed by another pusher or woke by itself, and either way
//! looks at the queues, where the batch has been since before the first read.

#[cfg(not(tokengate_loom))]
use std::sync::atomic::{fence, AtomicU64, Ordering};

#[cfg(tokengate_loom)]
use loom::sync::atomic::{fence, AtomicU64, Ordering};

/// The lanes that are (about to be) parked: bit i for lane i.
#[derive(Debug)]
pub(super) struct IdleSet(AtomicU64);

impl Default for IdleSet {
    fn default() -> Self {
        IdleSet(AtomicU64::new(0))
    }
}

impl IdleSet {
    /// A lane going to sleep: set its bit, before re-checking for work. The fence
    /// pairs with the one in [`IdleSet::sleepers`]: with a `SeqCst` fence on both sides
    /// the argument holds whatever orderings the queues use for their own accesses.
    #[inline]
    pub(super) fn announce(&self, bit: u64) {
        self.0.fetch_or(bit, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// A lane awake again: clear its bit. True if it was still set (no pusher claimed
    /// it: the lane woke on its own, not for a push).
    #[inline]
    pub(super) fn retract(&self, bit: u64) -> bool {
        self.0.fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }

    /// A pusher, after pushing: the lanes asleep now (the fence orders the push before
    /// this read).
    #[inline]
    pub(super) fn sleepers(&self) -> u64 {
        fence(Ordering::SeqCst);
        self.0.load(Ordering::SeqCst)
    }

    /// Claims a sleeper's bit, returning the set as it was: if `bit` was in it, this
    /// caller cleared it, and must unpark that lane.
    #[inline]
    pub(super) fn claim(&self, bit: u64) -> u64 {
        self.0.fetch_and(!bit, Ordering::SeqCst)
    }

    /// The set's bits, claiming nothing (for heuristics, not for the hand-off).
    #[inline]
    pub(super) fn peek(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Clears every bit (shutdown: the caller unparks every lane).
    pub(super) fn clear(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// The hand-off, model-checked (`RUSTFLAGS="--cfg tokengate_loom" cargo test -p tokengate
/// --no-default-features --lib --target-dir target/loom loom`, which `.ci/run` runs). The
/// lanes' loop is modelled step for step with the engine's own [`IdleSet`]; the queue is
/// a counter pushed with `Release` and re-checked with `Acquire`: the fences carry the
/// argument, not the queue's own orderings. Parking has no timeout here: a lost wake-up leaves a lane parked
/// for ever, which loom reports as a deadlock.
#[cfg(all(test, tokengate_loom))]
mod loom_tests {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::{Arc, Mutex};

    use super::IdleSet;

    /// A lane's idle loop (`worker.rs`): take a batch if there is one; else announce,
    /// re-check, park, retract. Returns once it took one.
    fn lane(idle: Arc<IdleSet>, queue: Arc<AtomicUsize>, bit: u64) {
        loop {
            let queued = queue.load(Ordering::Acquire);
            if queued > 0
                && queue
                    .compare_exchange(queued, queued - 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return;
            }
            idle.announce(bit);
            if queue.load(Ordering::Acquire) == 0 {
                loom::thread::park();
            }
            idle.retract(bit);
        }
    }

    /// A pusher (`Lanes::push`): push, read the sleepers, claim one and unpark it.
    fn push(idle: &IdleSet, queue: &AtomicUsize, threads: &[loom::thread::Thread]) {
        queue.fetch_add(1, Ordering::Release);
        let sleepers = idle.sleepers();
        for (index, thread) in threads.iter().enumerate() {
            let bit = 1u64 << index;
            if sleepers & bit != 0 && idle.claim(bit) & bit != 0 {
                thread.unpark();
                return;
            }
        }
    }

    #[test]
    fn loom_a_push_never_misses_a_lane_going_to_sleep() {
        loom::model(|| {
            let (idle, queue) = (Arc::new(IdleSet::default()), Arc::new(AtomicUsize::new(0)));
            let worker = {
                let (idle, queue) = (Arc::clone(&idle), Arc::clone(&queue));
                loom::thread::spawn(move || lane(idle, queue, 1))
            };
            push(&idle, &queue, &[worker.thread().clone()]);
            worker.join().unwrap();
            assert_eq!(queue.load(Ordering::SeqCst), 0, "the lane took the batch");
        });
    }

    /// Two pushes, two lanes: no batch stays queued while every lane sleeps (a claim
    /// keeps two pushers from spending both wake-ups on one lane). A lane that finds no
    /// work parks, as in the engine; the lane that takes the last batch unparks the
    /// others so that the model ends (a lost wake-up leaves a batch nobody takes, and
    /// every lane parked: a deadlock).
    #[test]
    fn loom_two_pushes_two_lanes_leave_no_batch_behind() {
        const BATCHES: usize = 2;
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let (idle, queue) = (Arc::new(IdleSet::default()), Arc::new(AtomicUsize::new(0)));
            let taken = Arc::new(AtomicUsize::new(0));
            let threads = Arc::new(Mutex::new(Vec::new()));
            let lanes: Vec<_> = (0..2)
                .map(|index| {
                    let (idle, queue) = (Arc::clone(&idle), Arc::clone(&queue));
                    let (taken, threads) = (Arc::clone(&taken), Arc::clone(&threads));
                    loom::thread::spawn(move || {
                        let bit = 1u64 << index;
                        while taken.load(Ordering::Acquire) < BATCHES {
                            let queued = queue.load(Ordering::Acquire);
                            if queued > 0 {
                                let (new, ok) = (queued - 1, Ordering::AcqRel);
                                if queue
                                    .compare_exchange(queued, new, ok, Ordering::Acquire)
                                    .is_ok()
                                    && taken.fetch_add(1, Ordering::AcqRel) + 1 == BATCHES
                                {
                                    let threads: Vec<loom::thread::Thread> =
                                        threads.lock().unwrap().clone();
                                    threads.iter().for_each(|t| t.unpark());
                                }
                                continue;
                            }
                            idle.announce(bit);
                            if queue.load(Ordering::Acquire) == 0
                                && taken.load(Ordering::Acquire) < BATCHES
                            {
                                loom::thread::park();
                            }
                            idle.retract(bit);
                        }
                    })
                })
                .collect();
            let handles: Vec<_> = lanes.iter().map(|l| l.thread().clone()).collect();
            *threads.lock().unwrap() = handles.clone();
            let pusher = {
                let (idle, queue, handles) =
                    (Arc::clone(&idle), Arc::clone(&queue), handles.clone());
                loom::thread::spawn(move || push(&idle, &queue, &handles))
            };
            push(&idle, &queue, &handles);
            pusher.join().unwrap();
            for lane in lanes {
                lane.join().unwrap();
            }
            assert_eq!(queue.load(Ordering::Acquire), 0, "both batches were taken");
        });
    }
}
