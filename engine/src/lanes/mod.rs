//! The lanes: the threads that run tokens. A user sees them as set up
//! ([`LaneInfo`], from [`Engine::lanes`](crate::Engine::lanes)), as counted
//! ([`LaneStats`], in [`EngineStats::lanes`](crate::EngineStats::lanes)) and as
//! configured ([`LaneSplit`], [`LanePriority`], [`LaneSet`]).
//!
//! Inside: threads fed by two shared queues — under the default preemptive split
//! one light lane pinned per usable core and heavy lanes floating over those cores at the
//! lowest priority (`priority.rs`, docs/lanes.md); under the pinned split one lane per
//! core, the last ones heavy.
//!
//! `ctx.rs` holds what a lane hands each batch it runs; `thread_life.rs` starts, pins
//! and replaces the threads.
//!
//! # Queues and hand-off
//!
//! The light and heavy lane sets each have a lock-free FIFO (`crossbeam_deque::Injector`)
//! of *batches* predicted to be short, beside a mutex-guarded FIFO of the long ones
//! (`order.rs`): a submit pushes one batch per queue operation, never one token. Every
//! worker pops from its own set's queue first. Under the pinned split, when that is
//! empty it may take from the other set's: heavy lanes always help with light work,
//! light lanes take heavy work as the steal policy says (`steal.rs`). Under the
//! preemptive split neither set takes the other's work except while it waits
//! (`help.rs`), or while other threads starve the heavy lanes (`rescue.rs`); a lane
//! keeps every batch it submits in its local queue, tagged with its set, where the
//! other set's lanes steal it.
//!
//!
//! The sleep/wake protocol is in `idle.rs`; a lane's loop in `worker.rs`; the contract
//! of a queued batch in `job.rs`.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal};

use crate::admission::Admission;
pub use crate::placement::{LanePriority, LaneSet, LaneSplit};
use crate::telemetry::Telemetry;

mod ctx;
mod help;
mod idle;
use idle::IdleSet;
mod job;
mod local;
mod order;
mod priority;
mod rescue;
mod steal;
mod take;
mod thread_life;
mod wake;
mod worker;

pub(crate) use ctx::LaneCtx;
use ctx::Watch;
pub(crate) use job::{BoxJob, Job, RunEnd};
use local::LocalQueue;
use order::LongQueue;
pub(crate) use priority::lower_current;
pub(crate) use rescue::PERIOD as GUARD_PERIOD;
use steal::LightArrivals;
pub(crate) use steal::{StealPolicy, LIGHT_BUDGET};
pub(crate) use thread_life::spawn_workers;

/// The most lanes one engine runs (one bit each in the idle mask).
pub(crate) const MAX_LANES: usize = 64;
const SPIN_CHECKS: u32 = 64;
/// After its spins, an idle lane yields for this long before it parks: a caller that
/// submits one call after another finds it awake (a park and its wake-up cost several
/// microseconds each), and yielding gives the core away to anyone runnable.
const IDLE_YIELD: Duration = Duration::from_micros(100);
const PARK_TIMEOUT: Duration = Duration::from_millis(20);
/// While a shutdown drains, an idle lane parks for this long between looks at whether the
/// last token in flight has resolved (it may resolve off the lanes, with no wake-up).
/// It parks rather than spins: a spinning light lane holds its core against the
/// idle-priority heavy lanes running the very calls the drain waits for.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// How a lane was set up, as seen from inside its thread.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LaneInfo {
    /// The lane's index (0-based).
    pub index: usize,
    /// The set it serves first.
    pub set: LaneSet,
    /// The core it was assigned, when pinning was requested.
    pub core: Option<usize>,
    /// Whether pinning succeeded.
    pub pinned: bool,
    /// The cores in the thread's affinity mask, read back after pinning.
    pub affinity: Vec<usize>,
    /// The scheduling priority the thread got: normal for light lanes; the lowest the
    /// OS grants for the floating heavy lanes of a [`LaneSplit::Preemptive`] split.
    pub priority: LanePriority,
}

struct Lane {
    set: LaneSet,
    core: Option<core_affinity::CoreId>,
    /// A heavy lane of a preemptive split: allowed onto every core of the engine, at
    /// the lowest priority (`priority.rs`).
    floating: bool,
    executed: AtomicU64,
    batches: AtomicU64,
    /// Nanoseconds the lane spent idle (yielding or parked for want of work), counted
    /// when an idle spell ends, so busy time costs nothing per batch.
    idle_ns: AtomicU64,
    /// Start of the idle spell under way (ns since `Lanes::epoch`; 0: not idle).
    idle_since: AtomicU64,
    /// The thread serving the lane now (a replacement takes over the slot).
    thread: Mutex<Option<Thread>>,
    /// That thread's id (`rescue.rs`; 0 until it starts).
    tid: AtomicI32,
    info: OnceLock<LaneInfo>,
    /// The deadline marks of the calls running on the lane (nested ones stack up).
    watch: Arc<Mutex<Vec<Watch>>>,
    /// Batches only this lane may run (locality).
    own: Injector<BoxJob>,
    /// Batches submitted from this lane's thread (see `local.rs`).
    local: LocalQueue<BoxJob>,
}

impl Lane {
    fn unpark(&self) {
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            thread.unpark();
        }
    }
}

/// Counters of one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LaneStats {
    /// Tokens taken by this lane (run, or skipped because already resolved).
    pub tokens: u64,
    /// Batches processed.
    pub batches: u64,
    /// Nanoseconds since the lanes started that the lane was not idle (idle: yielding
    /// or parked for want of work; a wait inside a call that runs nothing else counts
    /// as busy).
    pub busy_ns: u64,
}

pub(crate) struct Lanes {
    queues: [Injector<BoxJob>; 2],
    lanes: Box<[Lane]>,
    /// Bit i set: lane i is (about to be) parked.
    idle: IdleSet,
    /// Per queue: the lanes that serve it first.
    primary: [u64; 2],
    /// Per queue: every lane allowed to take from it.
    takers: [u64; 2],
    /// The floating lanes (heavy lanes of a preemptive split).
    floating: u64,
    /// Other threads starve the floating lanes: light lanes take heavy work, floating
    /// lanes take none (`rescue.rs`).
    rescue: AtomicBool,
    /// Rescues begun.
    rescues: AtomicU64,
    /// Heavy batches go to the light queue when there is no heavy lane.
    has_heavy: bool,
    /// When light lanes take heavy batches (`steal.rs`).
    steal: StealPolicy,
    /// Per set: its long batches, behind the short ones in `queues` (`order.rs`).
    long: [LongQueue; 2],
    /// Per set: the predicted nanoseconds of its batches in `queues` and `long`.
    queued_ns: [AtomicU64; 2],
    /// Arrivals of light work, for the cost-aware rule.
    arrivals: LightArrivals,
    shutdown: AtomicBool,
    abort: Arc<AtomicBool>,
    /// When the lanes started: the origin of each lane's busy time.
    epoch: Instant,
    telemetry: Option<Arc<Telemetry>>,
    admission: Arc<Admission>,
    pin: bool,
    /// Every lane thread ever started, with its "stuck" flag: a thread whose call overran
    /// a deadline is never joined (it may never return).
    handles: Mutex<Vec<(Arc<AtomicBool>, JoinHandle<()>)>>,
    /// The cores floating lanes may run on (empty: unpinned, the inherited mask).
    float_cores: Vec<usize>,
    /// Threads that came back from an overrun, waiting to replace the next stuck lane of
    /// their kind (floating or not: a thread's priority is not raised back), as reusing
    /// threads keeps memory flat (a new thread brings a new malloc arena).
    spares: Mutex<Vec<(bool, std::sync::mpsc::SyncSender<usize>)>>,
    replaced: AtomicU64,
    /// Tokens run by waiting callers outside the lanes (see `help.rs`).
    by_callers: AtomicU64,
    /// The stuck flag of an outside thread's context (see `help.rs`): never set, as an
    /// outside context never runs a call with a deadline; shared so that helping
    /// allocates nothing.
    outside_stuck: Arc<AtomicBool>,
    /// This value's own `Arc`, for the contexts of outside helpers.
    me: std::sync::Weak<Lanes>,
}

pub(crate) struct LaneConfig {
    /// Per lane, light lanes first: its core when pinned (none for floating lanes).
    pub cores: Vec<Option<core_affinity::CoreId>>,
    /// The last this many lanes are heavy.
    pub heavy_lanes: usize,
    pub split: LaneSplit,
    /// The engine's cores, the affinity of floating lanes (empty: unpinned).
    pub float_cores: Vec<usize>,
    pub steal: StealPolicy,
    pub telemetry: Option<Arc<Telemetry>>,
    pub admission: Arc<Admission>,
    pub pin: bool,
}

impl Lanes {
    pub(crate) fn new(config: LaneConfig) -> Arc<Self> {
        let count = config.cores.len();
        assert!((1..=MAX_LANES).contains(&count));
        let first_heavy = count - config.heavy_lanes;
        let lanes: Box<[Lane]> = config
            .cores
            .into_iter()
            .enumerate()
            .map(|(index, core)| Lane {
                set: if index >= first_heavy { LaneSet::Heavy } else { LaneSet::Light },
                core,
                floating: index >= first_heavy && config.split == LaneSplit::Preemptive,
                executed: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                idle_ns: AtomicU64::new(0),
                idle_since: AtomicU64::new(0),
                thread: Mutex::new(None),
                tid: AtomicI32::new(0),
                info: OnceLock::new(),
                watch: Arc::default(),
                own: Injector::new(),
                local: LocalQueue::default(),
            })
            .collect();
        let mut primary = [0u64; 2];
        let mut floating = 0u64;
        for (index, lane) in lanes.iter().enumerate() {
            primary[lane.set.index()] |= 1 << index;
            floating |= u64::from(lane.floating) << index;
        }
        let all = primary[0] | primary[1];
        // Pinned split: heavy lanes may always help with light work; light lanes help
        // with heavy work unless isolation is strict (or they are the only lanes there
        // are). Preemptive split: each set runs only its own work (a light call on an
        // idle-priority thread could wait out any amount of normal work; a heavy call on
        // a light lane could not be preempted by light work).
        let preemptive = config.split == LaneSplit::Preemptive && primary[1] != 0;
        let light_takers = if preemptive { primary[0] } else { all };
        let isolated = config.steal == StealPolicy::Isolate || preemptive;
        let heavy_takers = if isolated && primary[1] != 0 { primary[1] } else { all };
        Arc::new_cyclic(|me| Lanes {
            epoch: Instant::now(),
            queues: [Injector::new(), Injector::new()],
            lanes,
            idle: IdleSet::default(),
            primary,
            takers: [light_takers, heavy_takers],
            floating,
            rescue: AtomicBool::new(false),
            rescues: AtomicU64::new(0),
            has_heavy: config.heavy_lanes > 0,
            steal: config.steal,
            queued_ns: Default::default(),
            long: [LongQueue::light(), LongQueue::heavy()],
            arrivals: LightArrivals::default(),
            shutdown: AtomicBool::new(false),
            abort: Arc::new(AtomicBool::new(false)),
            telemetry: config.telemetry,
            admission: config.admission,
            pin: config.pin,
            float_cores: config.float_cores,
            handles: Mutex::new(Vec::new()),
            spares: Mutex::new(Vec::new()),
            replaced: AtomicU64::new(0),
            by_callers: AtomicU64::new(0),
            outside_stuck: Arc::default(),
            me: me.clone(),
        })
    }

    pub(crate) fn is_aborting(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Lanes replaced because their thread overran a deadline.
    pub(crate) fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// Tokens run by waiting callers outside the lanes.
    pub(crate) fn by_callers(&self) -> u64 {
        self.by_callers.load(Ordering::Relaxed)
    }

    /// Cancels all queued work from now on (shutdown with `Abort`).
    /// Who this lane set is (its address): what a lane's context remembers of it.
    fn id(&self) -> usize {
        self as *const Lanes as usize
    }

    /// The context of lane `index` (`OUTSIDE_LANE`: a thread outside the lanes helping
    /// them), pinned to `core` (or -1), for the thread whose stuck flag is `stuck`.
    fn context(&self, index: usize, core: i32, stuck: Arc<AtomicBool>) -> LaneCtx {
        let marks = self.lanes.get(index).map_or_else(Arc::default, |lane| Arc::clone(&lane.watch));
        let abort = Arc::clone(&self.abort);
        LaneCtx::new(self.id(), abort, marks, self.telemetry.as_ref(), (index, core), stuck)
    }

    pub(crate) fn begin_abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    pub(crate) fn telemetry(&self) -> Option<&Arc<Telemetry>> {
        self.telemetry.as_ref()
    }

    /// Batches waiting in the queue that serves `set` (a telemetry feature).
    pub(crate) fn queued_batches(&self, set: LaneSet) -> usize {
        self.shared_len(self.queue_index(set))
    }

    pub(crate) fn len(&self) -> usize {
        self.lanes.len()
    }

    fn queue_index(&self, set: LaneSet) -> usize {
        match set {
            // Remote work never reaches a lane's queue; should it, it waits with the
            // heavy work.
            LaneSet::Heavy | LaneSet::Remote if self.has_heavy => LaneSet::Heavy.index(),
            _ => LaneSet::Light.index(),
        }
    }

    /// Counts a batch into queue `queue`: its predicted cost, and a light arrival.
    fn arriving(&self, queue: usize, job: &BoxJob) {
        self.queued_ns[queue].fetch_add(job.predicted_ns(), Ordering::Relaxed);
        if queue == LaneSet::Light.index() {
            self.arrivals.arrived();
        }
    }

    /// Takes the next batch of shared queue `queue`: a long batch that has waited too
    /// long, else a short one, else a long one (`order.rs`).
    fn take_shared(&self, queue: usize) -> Option<BoxJob> {
        self.take_parts(queue, true, true)
    }

    /// Takes the next batch of shared queue `queue` from its short part, its long part or
    /// both (in the order of [`Lanes::take_shared`]).
    fn take_parts(&self, queue: usize, short: bool, long: bool) -> Option<BoxJob> {
        let long_part = &self.long[queue];
        let job = long
            .then(|| long_part.pop(true))
            .flatten()
            .or_else(|| short.then(|| steal(&self.queues[queue])).flatten())
            .or_else(|| long.then(|| long_part.pop(false)).flatten())?;
        self.queued_ns[queue].fetch_sub(job.predicted_ns(), Ordering::Relaxed);
        Some(job)
    }

    fn enqueue_shared(&self, queue: usize, job: BoxJob) {
        if self.long[queue].holds(job.predicted_ns()) {
            self.long[queue].push(job);
        } else {
            self.queues[queue].push(job);
        }
    }

    /// Batches waiting in shared queue `queue`.
    fn shared_len(&self, queue: usize) -> usize {
        self.queues[queue].len() + self.long[queue].len()
    }

    /// Queues one batch on shared queue `queue` and wakes a lane that can run it.
    fn push_shared(&self, queue: usize, job: BoxJob) {
        self.arriving(queue, &job);
        self.enqueue_shared(queue, job);
        let idle = self.idle.sleepers();
        if idle != 0 {
            self.wake_one(queue, idle);
        }
    }

    /// Queues one batch and wakes a lane that can run it, if one is parked. A batch
    /// submitted from a lane that may run it goes to that lane's local queue (newest
    /// first for it, the oldest stealable by lanes that may take it).
    pub(crate) fn push(&self, set: LaneSet, job: BoxJob) {
        self.push_waking(set, job, None);
    }

    /// [`Lanes::push`], but a wake-up of the lane pinned to the caller's own core is left
    /// to the caller: marked in `deferred` (a bit per queue), for
    /// [`Lanes::wake_deferred`] once it has pushed the rest of its submit (see
    /// [`Lanes::wake_one_or_defer`]). Only a thread that is not a lane defers.
    pub(crate) fn push_deferring(&self, set: LaneSet, job: BoxJob, deferred: &mut u8) {
        self.push_waking(set, job, Some(deferred));
    }

    fn push_waking(&self, set: LaneSet, job: BoxJob, deferred: Option<&mut u8>) {
        let queue = self.queue_index(set);
        let from_lane = LaneCtx::current_lane(self.id());
        match from_lane {
            // Preemptive split: every lane keeps what it submits, so a wait finds its
            // children whatever their set (the other set's lanes steal them meanwhile).
            Some(lane) if self.takers[queue] & (1 << lane) != 0 || self.floating != 0 => {
                if queue == LaneSet::Light.index() {
                    self.arrivals.arrived();
                }
                self.lanes[lane].local.push(queue, job)
            }
            _ => {
                self.arriving(queue, &job);
                self.enqueue_shared(queue, job)
            }
        }
        let idle = self.idle.sleepers();
        if idle != 0 {
            self.wake_one_or_defer(queue, idle, deferred.filter(|_| from_lane.is_none()));
        }
    }

    /// Queues one batch that only lane `lane` may run, and wakes that lane if parked.
    pub(crate) fn push_to(&self, lane: usize, job: BoxJob) {
        self.lanes[lane].own.push(job);
        let bit = 1u64 << lane;
        if self.idle.sleepers() & bit != 0 && self.idle.claim(bit) & bit != 0 {
            self.lanes[lane].unpark();
        }
    }

    /// The lanes that serve `set` first (all lanes when the set has none).
    pub(crate) fn lanes_of(&self, set: LaneSet) -> impl Iterator<Item = usize> + '_ {
        let mask = match self.primary[self.queue_index(set)] {
            0 => self.primary[0] | self.primary[1],
            mask => mask,
        };
        (0..self.lanes.len()).filter(move |i| mask & (1 << i) != 0)
    }

    pub(crate) fn begin_shutdown(&self) {
        {
            // Under the spares lock, so a thread coming back from an overrun either sees
            // the shutdown or has its channel closed here.
            let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
            self.shutdown.store(true, Ordering::SeqCst);
            spares.clear();
        }
        self.wake_all();
    }

    pub(crate) fn infos(&self) -> Vec<LaneInfo> {
        self.lanes.iter().filter_map(|lane| lane.info.get().cloned()).collect()
    }

    /// Time since the start not spent idle: the idle spells that ended, and the one
    /// under way (read without stopping the lane, so approximate by a spell at most).
    fn busy_ns(&self, lane: &Lane) -> u64 {
        let now = nanos_since(self.epoch);
        let idle = lane.idle_ns.load(Ordering::Relaxed);
        let since = lane.idle_since.load(Ordering::Relaxed);
        let ongoing = if since == 0 { 0 } else { now.saturating_sub(since) };
        now.saturating_sub(idle + ongoing)
    }

    pub(crate) fn stats(&self) -> Vec<LaneStats> {
        self.lanes
            .iter()
            .map(|lane| LaneStats {
                tokens: lane.executed.load(Ordering::Relaxed),
                batches: lane.batches.load(Ordering::Relaxed),
                busy_ns: self.busy_ns(lane),
            })
            .collect()
    }

    /// The next batch for `lane`: its own newest local batch (of any set while it
    /// waits, else of the sets it may take), its locality queue, its set's queue, the
    /// oldest local batch of another lane of its set, then (if it may take from it) the
    /// other set's queue and lanes.
    fn next_job(&self, lane: usize, waiting: bool) -> Option<BoxJob> {
        let this = &self.lanes[lane];
        let local = if waiting || self.floating == 0 {
            this.local.pop_newest()
        } else {
            this.local.pop_newest_of(self.queue_index(this.set))
        };
        if let Some(job) = local {
            return Some(job);
        }
        if let Some(job) = steal(&this.own) {
            return Some(job);
        }
        if this.floating && self.rescuing() {
            // Starved by other threads: the light lanes take this work (`rescue.rs`). A
            // waiting heavy lane too runs only its own children: the light lanes take
            // its other waiting work, so nothing it waits on needs it.
            return None;
        }
        let own = self.queue_index(this.set);
        if let Some(job) = self.take_shared(own).or_else(|| self.steal_local(lane, own)) {
            return Some(job);
        }
        let other = 1 - own;
        if self.takers(other) & (1 << lane) == 0 {
            return None;
        }
        if other == LaneSet::Heavy.index() && self.primary[other] & (1 << lane) == 0 {
            // A light lane helping with heavy work: only the parts the policy allows (a
            // lane's local heavy batches are of any length: only with the long part).
            let (short, long) = self.light_parts_to_take();
            if !(short || long) {
                return None;
            }
            let job = self.take_parts(other, short, long);
            return if long { job.or_else(|| self.steal_local(lane, other)) } else { job };
        }
        self.take_shared(other).or_else(|| self.steal_local(lane, other))
    }

    /// The oldest batch meant for `queue` in another lane's local queue.
    fn steal_local(&self, thief: usize, queue: usize) -> Option<BoxJob> {
        self.lanes
            .iter()
            .enumerate()
            .filter(|&(index, _)| index != thief)
            .find_map(|(_, lane)| lane.local.steal_oldest(queue))
    }

    /// Whether `queue` (or a lane's local queue) holds a batch meant for it.
    fn queue_has_work(&self, queue: usize) -> bool {
        self.shared_len(queue) > 0 || self.lanes.iter().any(|lane| lane.local.has(queue))
    }

    fn has_work(&self, lane: usize) -> bool {
        let this = &self.lanes[lane];
        if this.floating && self.rescuing() {
            return !this.own.is_empty() || this.local.has(self.queue_index(this.set));
        }
        let own = self.queue_index(this.set);
        // (A lane's own local batches count only under the pinned split, where it takes
        // them whatever their set; otherwise they count with their set's queue.)
        !self.lanes[lane].own.is_empty()
            || (self.floating == 0 && !self.lanes[lane].local.is_empty())
            || self.queue_has_work(own)
            || (self.may_take(lane, 1 - own) && self.queue_has_work(1 - own))
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn steal(queue: &Injector<BoxJob>) -> Option<BoxJob> {
    loop {
        match queue.steal() {
            Steal::Success(job) => return Some(job),
            Steal::Empty => return None,
            Steal::Retry => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch with a name (as its length) and a predicted runtime.
    struct Timed(usize, u64);

    impl Job for Timed {
        fn len(&self) -> usize {
            self.0
        }
        fn predicted_ns(&self) -> u64 {
            self.1
        }
        fn run(self: Arc<Self>, _: &LaneCtx) -> RunEnd {
            RunEnd::Done
        }
        fn start(self: Arc<Self>) -> Option<BoxJob> {
            // SAFETY: `self` is the consumed handle's `Arc`.
            Some(unsafe { BoxJob::new(self) })
        }
        fn may_run_outside(&self) -> bool {
            true
        }
        fn cancel_all(self: Arc<Self>, _: crate::error::CancelSource) {}
    }

    fn job(timed: Timed) -> BoxJob {
        // SAFETY: a fresh job, one handle.
        unsafe { BoxJob::new(Arc::new(timed)) }
    }

    /// A 1 ms batch that only says which one it is.
    fn named(id: usize) -> Timed {
        Timed(id, 1_000_000)
    }

    #[test]
    fn short_light_batches_run_before_long_ones_until_those_age() {
        let lanes = lanes(false, 1);
        lanes.push(LaneSet::Light, job(Timed(1, 60_000)));
        lanes.push(LaneSet::Light, job(Timed(2, 2_000)));
        lanes.push(LaneSet::Light, job(Timed(3, 2_000)));
        assert_eq!(next(&lanes, 0), Some(2), "short first");
        assert_eq!(next(&lanes, 0), Some(3));
        assert_eq!(next(&lanes, 0), Some(1), "then the long one");
        lanes.push(LaneSet::Light, job(Timed(4, 60_000)));
        std::thread::sleep(order::MAX_AGE * 2);
        lanes.push(LaneSet::Light, job(Timed(5, 2_000)));
        assert_eq!(next(&lanes, 0), Some(4), "an aged long batch goes first");
        assert_eq!(next(&lanes, 0), Some(5));
        assert_eq!(lanes.queued_ns[0].load(Ordering::Relaxed), 0, "costs are given back");
    }

    #[test]
    fn short_heavy_batches_run_before_long_ones_until_those_age() {
        let lanes = lanes(false, 1);
        lanes.push(LaneSet::Heavy, job(Timed(1, 3_000_000)));
        lanes.push(LaneSet::Heavy, job(Timed(2, 300_000)));
        assert_eq!(next(&lanes, 0), Some(2), "a light lane helping takes the short one");
        lanes.push(LaneSet::Heavy, job(Timed(3, 300_000)));
        assert_eq!(next(&lanes, 1), Some(3), "the heavy lane too: short first");
        assert_eq!(next(&lanes, 1), Some(1), "then the long one");
        // 16 × 3 ms: the slowdown the aging allows a 3 ms batch.
        let aged = Duration::from_nanos(3_000_000 * order::AGING_SLOWDOWN);
        lanes.push(LaneSet::Heavy, job(Timed(4, 3_000_000)));
        std::thread::sleep(aged + Duration::from_millis(5));
        lanes.push(LaneSet::Heavy, job(Timed(5, 300_000)));
        assert_eq!(next(&lanes, 1), Some(4), "an aged long batch goes first");
        assert_eq!(next(&lanes, 1), Some(5));
        assert_eq!(lanes.queued_ns[1].load(Ordering::Relaxed), 0, "costs are given back");
        assert_eq!(lanes.long[1].queued_ns(), 0);
    }

    #[test]
    fn long_heavy_batches_go_shortest_predicted_first_with_aging() {
        let lanes = lanes(false, 1);
        lanes.push(LaneSet::Heavy, job(Timed(1, 20_000_000)));
        lanes.push(LaneSet::Heavy, job(Timed(2, 2_000_000)));
        assert_eq!(next(&lanes, 1), Some(2), "the shorter prediction first");
        assert_eq!(next(&lanes, 1), Some(1));
        // A 3 ms batch that has waited over 16 ms has over 1 ms of credit: it goes
        // before a fresh 2 ms one.
        lanes.push(LaneSet::Heavy, job(Timed(3, 3_000_000)));
        std::thread::sleep(Duration::from_millis(16 * 2));
        lanes.push(LaneSet::Heavy, job(Timed(4, 2_000_000)));
        assert_eq!(next(&lanes, 1), Some(3), "aged by its wait");
        assert_eq!(next(&lanes, 1), Some(4));
    }

    fn lanes(isolate_heavy: bool, steal_backlog: usize) -> Arc<Lanes> {
        let steal =
            if isolate_heavy { StealPolicy::Isolate } else { StealPolicy::Backlog(steal_backlog) };
        Lanes::new(LaneConfig {
            cores: vec![None, None],
            heavy_lanes: 1,
            steal,
            split: LaneSplit::Pinned,
            float_cores: Vec::new(),
            telemetry: None,
            admission: Arc::new(Admission::new(16, usize::MAX)),
            pin: false,
        })
    }

    fn next(lanes: &Lanes, lane: usize) -> Option<usize> {
        lanes.next_job(lane, false).map(|job| job.len())
    }

    #[test]
    fn each_set_serves_its_own_queue_first_and_helps_the_other() {
        let lanes = lanes(false, 1);
        lanes.push(LaneSet::Light, job(named(1)));
        lanes.push(LaneSet::Heavy, job(named(2)));
        assert_eq!(next(&lanes, 1), Some(2), "the heavy lane takes heavy work first");
        assert_eq!(next(&lanes, 1), Some(1), "then helps with light work");
        lanes.push(LaneSet::Heavy, job(named(3)));
        assert_eq!(next(&lanes, 0), Some(3), "an idle light lane takes heavy work");
        assert_eq!(next(&lanes, 0), None);
        assert!(!lanes.has_work(0) && !lanes.has_work(1));
    }

    #[test]
    fn isolation_and_backlog_keep_heavy_work_off_light_lanes() {
        let isolated = lanes(true, 1);
        isolated.push(LaneSet::Heavy, job(named(1)));
        assert_eq!(next(&isolated, 0), None);
        assert!(!isolated.has_work(0));
        assert_eq!(next(&isolated, 1), Some(1));

        let backlog = lanes(false, 2);
        backlog.push(LaneSet::Heavy, job(named(1)));
        assert_eq!(next(&backlog, 0), None, "one heavy batch is not a backlog");
        backlog.push(LaneSet::Heavy, job(named(2)));
        assert_eq!(next(&backlog, 0), Some(1), "two are");
    }

    #[test]
    fn a_lane_takes_its_locality_queue_before_shared_work() {
        let lanes = lanes(false, 1);
        lanes.push(LaneSet::Light, job(named(1)));
        lanes.push_to(0, job(named(2)));
        assert_eq!(next(&lanes, 1), Some(1), "other lanes never take a lane's own batches");
        lanes.push(LaneSet::Light, job(named(3)));
        assert_eq!(next(&lanes, 0), Some(2));
        assert_eq!(next(&lanes, 0), Some(3));
    }
}
