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
//! one are both "heavy"). Within its long part a lane takes, of the oldest
//! [`SHORTEST_OF`] batches, the one with the least *predicted time less its aging
//! credit*, the credit being the time it has waited ÷ [`AGING_SLOWDOWN`] (priority by
//! predicted size, aged: a 2 ms call does not wait behind a 20 ms one that came first,
//! and a 20 ms call overtaken by ever shorter ones goes first once it has waited
//! [`AGING_SLOWDOWN`] times its prediction). Aging by a fixed wait instead (10 ms, the
//! previous rule) turned the order into first-come-first-served exactly when the queue
//! was long enough for order to matter: at 80% load on the service bench the expensive
//! calls' median wait was 2.3× `spawn_blocking`'s with it and 0.8× with this rule
//! (docs/lanes.md). The split serves one more reason: a light
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
/// A long heavy batch's wait counts against its predicted time at 1 ÷ this: it goes
/// before a fresh batch predicted `d` shorter once it has waited this many times `d`,
/// and before anything once it has waited this many times its own prediction.
pub(super) const AGING_SLOWDOWN: u64 = 16;
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
    order: Order,
}

#[derive(Clone, Copy)]
enum Order {
    /// Oldest first; the oldest goes before the short part once it has waited this long.
    Fifo(Duration),
    /// Least predicted time less waited ÷ [`AGING_SLOWDOWN`] first; the oldest goes
    /// before the short part once it has waited [`AGING_SLOWDOWN`] times its prediction.
    ShortestAged,
}

impl LongQueue {
    /// The light set's: from [`LONG_NS`], oldest first, aged at [`MAX_AGE`].
    pub(super) fn light() -> Self {
        Self::new(LONG_NS, Order::Fifo(MAX_AGE))
    }

    /// The heavy set's: from [`HEAVY_LONG_NS`], shortest predicted first, aged by
    /// [`AGING_SLOWDOWN`].
    pub(super) fn heavy() -> Self {
        Self::new(HEAVY_LONG_NS, Order::ShortestAged)
    }

    fn new(from_ns: u64, order: Order) -> Self {
        LongQueue {
            jobs: Mutex::default(),
            len: AtomicUsize::new(0),
            queued_ns: AtomicU64::new(0),
            from_ns,
            order,
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

    /// The next batch, if any (`aged_only`: only the oldest, and only if it has waited
    /// its maximum age).
    pub(super) fn pop(&self, aged_only: bool) -> Option<BoxJob> {
        if self.is_empty() {
            return None;
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let (queued, oldest) = jobs.front()?;
        let aged = match self.order {
            Order::Fifo(max_age) => queued.elapsed() >= max_age,
            Order::ShortestAged => {
                queued.elapsed().as_nanos() as u64
                    >= oldest.predicted_ns().saturating_mul(AGING_SLOWDOWN)
            }
        };
        if aged_only && !aged {
            return None;
        }
        let at = match self.order {
            Order::ShortestAged if !aged => {
                // Bounded, so a deep backlog costs a pick no more than SHORTEST_OF
                // reads (a long batch is milliseconds: the reads are noise).
                let now = Instant::now();
                (0..jobs.len().min(SHORTEST_OF))
                    .min_by_key(|&i| {
                        let (queued, job) = &jobs[i];
                        let credit = (now - *queued).as_nanos() as u64 / AGING_SLOWDOWN;
                        job.predicted_ns() as i128 - credit as i128
                    })
                    .unwrap_or(0)
            }
            _ => 0,
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
