//! Lanes: worker threads fed by two shared queues — under the default preemptive split
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
//! (`help.rs`); a lane keeps every batch it submits in its local queue, tagged with its
//! set, where the other set's lanes steal it.
//!
//! # Sleeping without losing a wake-up
//!
//! An idle worker spins briefly, then sets its bit in `idle`, re-checks the queues and
//! parks. A pusher pushes, issues a `SeqCst` fence, then reads `idle`; if a suitable
//! worker's bit is set it clears it and unparks that thread. Either the worker's
//! re-check sees the batch or the pusher sees the bit (the classic store-fence-load
//! pairing on both sides). Parking also has a timeout, as a backstop.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal};

use crate::admission::Admission;
use crate::placement::{LanePriority, LaneSet, LaneSplit};
use crate::telemetry::Telemetry;

mod ctx;
mod help;
mod local;
mod order;
mod priority;
mod steal;
mod thread_life;

pub(crate) use ctx::LaneCtx;
use ctx::Watch;
use local::LocalQueue;
use order::LongQueue;
pub(crate) use priority::lower_current;
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

/// A batch of tokens of one operation, type-erased for the queues. Queued behind an
/// `Arc` so that a single call's chunk can be its own queue entry (see
/// `op::run::Single`); a queue entry has one holder at a time, the only one that calls
/// these methods (hence `Sync` is no promise of concurrent use).
pub(crate) trait Job: Send + Sync {
    /// Tokens in the batch.
    fn len(&self) -> usize;

    /// What the batch is predicted to take to run (ns): the sum of its tokens'
    /// predicted costs.
    fn predicted_ns(&self) -> u64;
    /// Runs (or skips, if resolved elsewhere) every token of the batch and gives its
    /// admission permits back.
    fn run(self: Arc<Self>, lane: &LaneCtx) -> RunEnd;

    /// Whether a thread outside the lanes may run it while it waits (no deadline, no
    /// locality: nothing that needs a lane of its own).
    fn may_run_outside(&self) -> bool;

    /// Takes a running slot of the batch's operation and hands the batch back to run;
    /// or, if the operation is paused (or at its throttle limit), sets the batch aside
    /// (it keeps its permits) until it may run, and returns `None`.
    fn start(self: Arc<Self>) -> Option<BoxJob>;

    /// Cancels every token of the batch that has not started, and gives its permits
    /// back (for batches set aside, on a `cancel` command).
    fn cancel_all(self: Arc<Self>, by: crate::CancelSource);
}

/// How a batch left its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// Normally: the lane goes on.
    Done,
    /// The lane was replaced while this thread overran a deadline: the thread retires.
    Retired,
}

/// A queued batch: the one handle on it (not `Clone`). A job has one holder at a time,
/// and only the holder calls its methods; that is what lets a job read its contents
/// without a lock (a single call's chunk, `op::run::Single`, is shared with its token).
pub(crate) struct BoxJob(Arc<dyn Job>);

impl BoxJob {
    /// `job` must be its only queue handle: no other `BoxJob` made from a clone of it.
    pub(crate) fn new(job: Arc<dyn Job>) -> Self {
        BoxJob(job)
    }

    /// See [`Job::run`].
    pub(crate) fn run(self, lane: &LaneCtx) -> RunEnd {
        self.0.run(lane)
    }

    /// See [`Job::start`].
    pub(crate) fn start(self) -> Option<BoxJob> {
        self.0.start()
    }

    /// See [`Job::cancel_all`].
    pub(crate) fn cancel_all(self, by: crate::CancelSource) {
        self.0.cancel_all(by)
    }
}

impl std::ops::Deref for BoxJob {
    type Target = dyn Job + 'static;

    fn deref(&self) -> &(dyn Job + 'static) {
        &*self.0
    }
}

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
    info: OnceLock<LaneInfo>,
    /// The deadline marks of the calls running on the lane (nested ones stack up).
    watch: Mutex<Vec<Watch>>,
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
    idle: AtomicU64,
    /// Per queue: the lanes that serve it first.
    primary: [u64; 2],
    /// Per queue: every lane allowed to take from it.
    takers: [u64; 2],
    /// The floating lanes (heavy lanes of a preemptive split).
    floating: u64,
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
    abort: AtomicBool,
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
                info: OnceLock::new(),
                watch: Mutex::new(Vec::new()),
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
            idle: AtomicU64::new(0),
            primary,
            takers: [light_takers, heavy_takers],
            floating,
            has_heavy: config.heavy_lanes > 0,
            steal: config.steal,
            queued_ns: Default::default(),
            long: [LongQueue::light(), LongQueue::heavy()],
            arrivals: LightArrivals::default(),
            shutdown: AtomicBool::new(false),
            abort: AtomicBool::new(false),
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
        fence(Ordering::SeqCst);
        let idle = self.idle.load(Ordering::SeqCst);
        if idle != 0 {
            self.wake_one(queue, idle);
        }
    }

    /// Queues one batch and wakes a lane that can run it, if one is parked. A batch
    /// submitted from a lane that may run it goes to that lane's local queue (newest
    /// first for it, the oldest stealable by lanes that may take it).
    pub(crate) fn push(&self, set: LaneSet, job: BoxJob) {
        let queue = self.queue_index(set);
        match LaneCtx::current_lane(self) {
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
        fence(Ordering::SeqCst);
        let idle = self.idle.load(Ordering::SeqCst);
        if idle != 0 {
            self.wake_one(queue, idle);
        }
    }

    /// Queues one batch that only lane `lane` may run, and wakes that lane if parked.
    pub(crate) fn push_to(&self, lane: usize, job: BoxJob) {
        self.lanes[lane].own.push(job);
        fence(Ordering::SeqCst);
        let bit = 1u64 << lane;
        if self.idle.load(Ordering::SeqCst) & bit != 0
            && self.idle.fetch_and(!bit, Ordering::SeqCst) & bit != 0
        {
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

    fn wake_one(&self, queue: usize, mut idle: u64) {
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
            let before = self.idle.fetch_and(!bit, Ordering::SeqCst);
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
    fn local_lane(&self, candidates: u64) -> Option<u64> {
        if self.floating == 0 || candidates & !self.floating == 0 {
            return None;
        }
        let cpu = current_cpu()?;
        let index = self.lanes.iter().position(|lane| lane.core.is_some_and(|c| c.id == cpu))?;
        let bit = 1u64 << index;
        (candidates & bit != 0).then_some(bit)
    }

    fn wake_all(&self) {
        self.idle.store(0, Ordering::SeqCst);
        for lane in self.lanes.iter() {
            lane.unpark();
        }
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

    /// Whether `lane` may take from `queue` now: its own set's queue always; the other
    /// set's if allowed, and heavy work on a light lane only as the steal policy says
    /// (`steal.rs`).
    fn may_take(&self, lane: usize, queue: usize) -> bool {
        if self.takers[queue] & (1 << lane) == 0 {
            return false;
        }
        let stealing_heavy =
            queue == LaneSet::Heavy.index() && self.primary[queue] & (1 << lane) == 0;
        !stealing_heavy || self.light_may_take_heavy()
    }

    fn light_may_take_heavy(&self) -> bool {
        let (short, long) = self.heavy_parts_to_take();
        short || long
    }

    /// Whether a light lane may take from the short and from the long part of the heavy
    /// queue now (the steal policy weighs each part's batch length against the whole
    /// heavy backlog).
    fn heavy_parts_to_take(&self) -> (bool, bool) {
        let heavy = LaneSet::Heavy.index();
        let all_ns = self.queued_ns[heavy].load(Ordering::Relaxed);
        let long_ns = self.long[heavy].queued_ns().min(all_ns);
        let (short_n, long_n) = (self.queues[heavy].len(), self.long[heavy].len());
        let all = (short_n + long_n, all_ns);
        let lanes = self.primary[heavy].count_ones();
        let may = |part| self.steal.light_may_take_heavy(part, all, lanes, &self.arrivals);
        (may((short_n, all_ns - long_ns)), may((long_n, long_ns)))
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
        let own = self.queue_index(this.set);
        if let Some(job) = self.take_shared(own).or_else(|| self.steal_local(lane, own)) {
            return Some(job);
        }
        let other = 1 - own;
        if self.takers[other] & (1 << lane) == 0 {
            return None;
        }
        if other == LaneSet::Heavy.index() && self.primary[other] & (1 << lane) == 0 {
            // A light lane helping with heavy work: only the parts the policy allows (a
            // lane's local heavy batches are of any length: only with the long part).
            let (short, long) = self.heavy_parts_to_take();
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
        let own = self.queue_index(self.lanes[lane].set);
        // (A lane's own local batches count only under the pinned split, where it takes
        // them whatever their set; otherwise they count with their set's queue.)
        !self.lanes[lane].own.is_empty()
            || (self.floating == 0 && !self.lanes[lane].local.is_empty())
            || self.queue_has_work(own)
            || (self.may_take(lane, 1 - own) && self.queue_has_work(1 - own))
    }

    /// Starts and runs one batch on `lane` (set aside instead, if its operation is paused
    /// or throttled).
    fn run_job(&self, index: usize, ctx: &LaneCtx, job: BoxJob) -> RunEnd {
        let Some(job) = job.start() else { return RunEnd::Done };
        // Counted before running, so the counts are complete by the time the batch's
        // last token resolves.
        let lane = &self.lanes[index];
        lane.executed.fetch_add(job.len() as u64, Ordering::Relaxed);
        lane.batches.fetch_add(1, Ordering::Relaxed);
        job.run(ctx)
    }

    fn worker_loop(&self, index: usize, ctx: &LaneCtx) -> RunEnd {
        let admission = &self.admission;
        let bit = 1u64 << index;
        let mut misses = 0u32;
        let mut idle_since = std::time::Instant::now();
        // The idle spell under way (across parks), for the lane's busy time.
        let mut idle_from: Option<Instant> = None;
        loop {
            if let Some(job) = self.next_job(index, false) {
                if let Some(from) = idle_from.take() {
                    self.end_idle(index, from);
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
            self.idle.fetch_or(bit, Ordering::SeqCst);
            if !self.has_work(index) && !self.shutdown.load(Ordering::SeqCst) {
                thread::park_timeout(PARK_TIMEOUT);
            }
            self.idle.fetch_and(!bit, Ordering::SeqCst);
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
    fn yields_when_idle(&self, index: usize) -> bool {
        let lane = &self.lanes[index];
        if lane.floating {
            return false;
        }
        let floating = self.floating;
        floating == 0
            || (self.idle.load(Ordering::Relaxed) & floating == floating
                && self.shared_len(LaneSet::Heavy.index()) == 0)
    }

    fn end_idle(&self, index: usize, from: Instant) {
        let lane = &self.lanes[index];
        lane.idle_ns.fetch_add(from.elapsed().as_nanos() as u64, Ordering::Relaxed);
        lane.idle_since.store(0, Ordering::Relaxed);
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
            Some(BoxJob::new(self))
        }
        fn may_run_outside(&self) -> bool {
            true
        }
        fn cancel_all(self: Arc<Self>, _: crate::CancelSource) {}
    }

    fn job(timed: Timed) -> BoxJob {
        BoxJob::new(Arc::new(timed))
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
        lanes.push(LaneSet::Heavy, job(Timed(4, 3_000_000)));
        std::thread::sleep(order::HEAVY_MAX_AGE * 2);
        lanes.push(LaneSet::Heavy, job(Timed(5, 300_000)));
        assert_eq!(next(&lanes, 1), Some(4), "an aged long batch goes first");
        assert_eq!(next(&lanes, 1), Some(5));
        assert_eq!(lanes.queued_ns[1].load(Ordering::Relaxed), 0, "costs are given back");
        assert_eq!(lanes.long[1].queued_ns(), 0);
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
