//! The rescue: heavy work starved by threads that are not the engine's.
//!
//! Under the preemptive split the heavy lanes run at `SCHED_IDLE`, on the time no normal
//! thread wants (`priority.rs`). Beside the engine's own light lanes that is the point.
//! Beside anything else that keeps the cores busy (another process, the caller's own
//! threads) it starves them: a `SCHED_IDLE` thread gets about 0.3% of a core beside a
//! busy normal one, and an unprivileged thread cannot climb back (Linux lets a thread
//! leave `SCHED_IDLE` only where `RLIMIT_NICE` allows nice 0, which by default it does
//! not). Measured: `run drift` beside two busy shell loops did not finish until they
//! ended, 100 s later (its heavy p99 99.6 s; 5.0 s alone).
//!
//! So a guard (a task on the engine's runtime) looks every [`PERIOD`]. It reads each
//! lane thread's time on a CPU and time runnable but kept waiting (the kernel's
//! `schedstat`), and how busy the engine's cores were (`/proc/stat`); what the cores
//! spent beyond the lanes' own time went to *strangers*: other processes, the caller's
//! threads, and the engine's own runtime and telemetry threads (small beside busy
//! lanes). When a heavy lane was kept waiting for half a period or more (it had work:
//! a lane without work sleeps, and a call blocked on I/O or a lock is not runnable) and
//! strangers took half a core or more, the heavy lanes are starved: the guard starts a
//! *rescue*.
//!
//! While it lasts the heavy lanes count as absent, as with `heavy_lanes(0)`: they take
//! no new work from the queues (they would only capture calls they cannot run), and a
//! light lane that finds no light work takes heavy work, at its normal priority. Light
//! work still goes first on every light lane, but a light call may now wait behind a
//! heavy one. (A heavy lane still runs its own children while it waits, and the calls
//! bound to it by locality, which no other lane may run: those crawl.) It ends once
//! strangers take less than a quarter of a core over a period; then the heavy lanes take
//! over again. It stays on through a shutdown's drain.
//!
//! A rescue begins only after [`STARVED_LOOKS`] periods in a row looked starved, so one
//! busy moment (or `/proc/stat`'s 10-ms ticks) does not set it off; one set off in error
//! ends at the next look.
//!
//! On a token's path this costs a relaxed load of a read-mostly flag: where a light lane
//! found no work of its own set, where a heavy lane looks for its next batch, and where a
//! push finds lanes asleep. Linux only (elsewhere there is no `SCHED_IDLE`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::priority::current_affinity;
use super::{LanePriority, Lanes, StealPolicy};

/// How often the guard looks.
pub(crate) const PERIOD: Duration = Duration::from_millis(200);

/// Periods in a row that must look starved before a rescue begins (one can be a
/// coincidence: `/proc/stat` counts in 10 ms ticks, and a busy moment of the caller's).
const STARVED_LOOKS: u32 = 2;

/// Thread `tid`'s time on a CPU and time runnable but waiting for one (ns, since it
/// started), from `/proc/self/task/<tid>/schedstat`; none once it has exited.
fn run_and_wait_ns(tid: i32) -> Option<(u64, u64)> {
    if tid == 0 || cfg!(not(target_os = "linux")) {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut fields = stat.split_ascii_whitespace().map(str::parse::<u64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

/// The busy time (ns) of `cores` (all when empty) since boot, from `/proc/stat`: user,
/// nice, system, irq and softirq time.
fn cores_busy_ns(cores: &[usize]) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    #[cfg(target_os = "linux")]
    // SAFETY: `sysconf` only reads a configuration value.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?.max(1);
    #[cfg(not(target_os = "linux"))]
    let ticks = 100u64;
    let mut busy = 0u64;
    let mut seen = false;
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else { continue };
        let mut fields = rest.split_ascii_whitespace();
        let Some(Ok(cpu)) = fields.next().map(str::parse::<usize>) else { continue };
        if !cores.is_empty() && !cores.contains(&cpu) {
            continue;
        }
        let values: Vec<u64> = fields.take(7).filter_map(|f| f.parse().ok()).collect();
        let [user, nice, system, _idle, _iowait, irq, softirq] = values[..] else { continue };
        busy += user + nice + system + irq + softirq;
        seen = true;
    }
    seen.then(|| busy.saturating_mul(1_000_000_000 / ticks))
}

/// One look: when, the cores' busy time, and each lane's thread with its (run, wait)
/// times.
struct Sample {
    at: Instant,
    busy_ns: u64,
    lanes: Vec<(i32, Option<(u64, u64)>)>,
}

/// What the guard remembers between looks.
pub(crate) struct Guard {
    cores: Vec<usize>,
    last: Option<Sample>,
    /// Periods in a row that looked starved.
    starved: u32,
}

impl Guard {
    /// A guard over `cores` (empty: every core the process may use).
    pub(crate) fn new(cores: &[usize]) -> Guard {
        let cores = if cores.is_empty() { current_affinity() } else { cores.to_vec() };
        Guard { cores, last: None, starved: 0 }
    }
}

impl Lanes {
    /// Whether light lanes take heavy work for starved heavy lanes now.
    #[inline]
    pub(super) fn rescuing(&self) -> bool {
        self.rescue.load(Ordering::Relaxed)
    }

    /// Rescues begun so far.
    pub(crate) fn rescues(&self) -> u64 {
        self.rescues.load(Ordering::Relaxed)
    }

    /// Whether this engine needs a guard: heavy lanes that got a lowered priority, and
    /// light lanes that may take heavy work (not with `isolate_heavy`).
    pub(crate) fn wants_guard(&self) -> bool {
        let lowered = self.lanes.iter().any(|lane| {
            let priority = lane.info.get().map(|info| info.priority);
            lane.floating && matches!(priority, Some(LanePriority::Idle | LanePriority::Nice(_)))
        });
        cfg!(target_os = "linux") && lowered && self.steal != StealPolicy::Isolate
    }

    /// Whether the lanes are stopping (the guard then ends).
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// The cores the guard watches.
    pub(crate) fn guard(&self) -> Guard {
        Guard::new(&self.float_cores)
    }

    /// One look of the guard (see the module docs). Returns false once it cannot see
    /// (no `/proc/stat`): the guard then stops.
    pub(crate) fn guard_look(&self, guard: &mut Guard) -> bool {
        let Some(busy_ns) = cores_busy_ns(&guard.cores) else { return false };
        let lanes = self
            .lanes
            .iter()
            .map(|lane| {
                let tid = lane.tid.load(Ordering::Relaxed);
                (tid, run_and_wait_ns(tid))
            })
            .collect();
        let now = Sample { at: Instant::now(), busy_ns, lanes };
        let Some(last) = guard.last.replace(now) else { return true };
        let now = guard.last.as_ref().expect("just stored");
        let window = now.at.saturating_duration_since(last.at).as_nanos() as u64;
        // The lanes' own CPU time, and the longest a heavy lane waited runnable.
        let (mut ours, mut heavy_wait) = (0u64, 0u64);
        for (index, (&(tid, times), &(was_tid, was))) in
            now.lanes.iter().zip(&last.lanes).enumerate()
        {
            // A replaced thread counts from the next look.
            let Some(((run, wait), (was_run, was_wait))) = times.zip(was) else { continue };
            if tid != was_tid {
                continue;
            }
            ours += run.saturating_sub(was_run);
            if self.lanes[index].floating {
                heavy_wait = heavy_wait.max(wait.saturating_sub(was_wait));
            }
        }
        let strangers = now.busy_ns.saturating_sub(last.busy_ns).saturating_sub(ours);
        let share = strangers as f64 / window.max(1) as f64;
        if !self.rescuing() {
            let starved = heavy_wait >= window / 2 && strangers >= window / 2;
            guard.starved = if starved { guard.starved + 1 } else { 0 };
            if guard.starved >= STARVED_LOOKS {
                guard.starved = 0;
                self.rescue.store(true, Ordering::SeqCst);
                let begun = self.rescues.fetch_add(1, Ordering::Relaxed) + 1;
                if begun.is_power_of_two() {
                    tracing::warn!(
                        "heavy lanes starved: other threads took {share:.1} cores; light lanes \
                         take heavy work until they stop ({begun} rescues so far)"
                    );
                } else {
                    tracing::debug!("heavy lanes starved ({share:.1} cores taken): rescue");
                }
                self.wake_all();
            }
        } else if strangers < window / 4 {
            self.rescue.store(false, Ordering::SeqCst);
            tracing::debug!("rescue over ({share:.2} cores taken by others)");
            self.wake_all();
        }
        true
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reads_its_own_run_and_wait_times() {
        use crate::lanes::priority::current_tid;
        let tid = current_tid();
        let (run, _) = run_and_wait_ns(tid).expect("own schedstat reads");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let (later, _) = run_and_wait_ns(tid).unwrap();
        assert!(later > run, "a spinning thread's run time grows");
        let gone = std::thread::spawn(current_tid).join().unwrap();
        assert_ne!(gone, tid);
        assert_eq!(run_and_wait_ns(gone), None, "an exited thread reads as none");
        assert_eq!(run_and_wait_ns(0), None);
    }

    #[test]
    fn the_cores_busy_time_reads_per_core() {
        let all = cores_busy_ns(&[]).expect("/proc/stat");
        let first = cores_busy_ns(&[0]).expect("core 0");
        assert!(first <= all);
        assert_eq!(cores_busy_ns(&[usize::MAX]), None, "no such core");
    }
}
