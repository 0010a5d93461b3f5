//! Order within a set: short batches first, long ones aged.
//!
//! The light queue holds work of very different lengths (a 2 µs token and a 60 µs one
//! are both "light"). Running the predicted-short batches first lowers light latency
//! (shortest predicted job first, as in Mitzenmacher's scheduling with predictions);
//! batches predicted to run at least [`LONG_NS`] wait in a second FIFO that lanes take
//! from when no short batch waits, or at once when its oldest batch has waited
//! [`MAX_AGE`] — so nothing starves.
//!
//! The heavy set is split the same way at [`HEAVY_LONG_NS`] (a 300 µs call and a 5 ms
//! one are both "heavy"), aged at [`HEAVY_MAX_AGE`]; within its long part a lane takes
//! the shortest predicted of the oldest [`SHORTEST_OF`] batches that have not aged
//! (priority by predicted size: a 2 ms call does not wait behind a 20 ms one that came
//! first). The split serves one more reason: a light
//! lane that helps with heavy work (`steal.rs`) weighs the short and the long part
//! separately, so it takes the 300 µs calls long before it would take a 5 ms one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::BoxJob;

/// A light batch predicted to run at least this long waits behind short ones.
const LONG_NS: u64 = 20_000;
/// The longest a long light batch waits behind short ones.
pub(super) const MAX_AGE: Duration = Duration::from_millis(1);
/// A heavy batch predicted to run at least this long waits behind short heavy ones.
const HEAVY_LONG_NS: u64 = 1_000_000;
/// The longest a long heavy batch waits behind short ones.
pub(super) const HEAVY_MAX_AGE: Duration = Duration::from_millis(10);
/// A heavy lane picks the shortest predicted among this many of the oldest long batches
/// (bounded, so a deep backlog costs a pick no more than this).
const SHORTEST_OF: usize = 32;

/// One set's long batches, oldest first, with when each was queued, and the sum of
/// their predicted nanoseconds.
pub(super) struct LongQueue {
    jobs: Mutex<VecDeque<(Instant, BoxJob)>>,
    len: AtomicUsize,
    queued_ns: AtomicU64,
    /// Batches predicted to run at least this long belong here.
    from_ns: u64,
    max_age: Duration,
    /// Whether a lane takes the shortest predicted batch first (else the oldest).
    shortest_first: bool,
}

impl LongQueue {
    /// The light set's: from [`LONG_NS`], aged at [`MAX_AGE`].
    pub(super) fn light() -> Self {
        Self::new(LONG_NS, MAX_AGE, false)
    }

    /// The heavy set's: from [`HEAVY_LONG_NS`], aged at [`HEAVY_MAX_AGE`].
    pub(super) fn heavy() -> Self {
        Self::new(HEAVY_LONG_NS, HEAVY_MAX_AGE, true)
    }

    fn new(from_ns: u64, max_age: Duration, shortest_first: bool) -> Self {
        LongQueue {
            jobs: Mutex::default(),
            len: AtomicUsize::new(0),
            queued_ns: AtomicU64::new(0),
            from_ns,
            max_age,
            shortest_first,
        }
    }

    /// Whether a batch predicted to run `ns` belongs here.
    pub(super) fn holds(&self, ns: u64) -> bool {
        ns >= self.from_ns
    }

    pub(super) fn push(&self, job: BoxJob) {
        self.queued_ns.fetch_add(job.predicted_ns(), Ordering::Relaxed);
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.push_back((Instant::now(), job));
        self.len.store(jobs.len(), Ordering::SeqCst);
    }

    /// The oldest batch, if any (`aged_only`: only if it has waited its maximum age;
    /// else, in the heavy set, the shortest predicted of the oldest few).
    pub(super) fn pop(&self, aged_only: bool) -> Option<BoxJob> {
        if self.is_empty() {
            return None;
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if aged_only && jobs.front().is_none_or(|(at, _)| at.elapsed() < self.max_age) {
            return None;
        }
        // Among the ones that have not aged, the shortest predicted of the oldest few
        // (heavy set only: there a long batch is milliseconds, and the batches to choose
        // from are few).
        let at = match self.shortest_first && !aged_only {
            true => (0..jobs.len().min(SHORTEST_OF))
                .min_by_key(|&i| jobs[i].1.predicted_ns())
                .unwrap_or(0),
            false => 0,
        };
        let job = jobs.remove(at).map(|(_, job)| job);
        self.len.store(jobs.len(), Ordering::SeqCst);
        drop(jobs);
        if let Some(job) = &job {
            self.queued_ns.fetch_sub(job.predicted_ns(), Ordering::Relaxed);
        }
        job
    }

    /// The predicted nanoseconds of the batches in it.
    pub(super) fn queued_ns(&self) -> u64 {
        self.queued_ns.load(Ordering::Relaxed)
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
