//! Freezes of the whole machine, told apart from the engine's own stalls.
//!
//! A virtual machine's host can stop every virtual CPU at once. On this project's 2-core
//! machine that happens for 15–70 ms about once every 100–200 s, and the guest's steal
//! counter does not count it. Inside the guest it looks like a stall of the engine:
//! every queue grows, no lane runs, and the calls that arrive meanwhile all wait it out.
//! A [`FreezeWatch`] is a thread that sleeps [`PERIOD`] at a time at real-time priority
//! (`SCHED_FIFO`), which preempts every other thread of the guest the moment it wakes:
//! a wake-up [`FREEZE_MIN`] or more late means nothing in the machine ran (or the kernel
//! held interrupts off on every core). A freeze of F ms falls within one sleep or across
//! two and shows as F − 10 to F ms late: every freeze of 20 ms or more is seen, one of
//! 10–20 ms only sometimes, and the length reported is up to [`PERIOD`] short. Where
//! real-time priority is refused (not root, not Linux) it runs at normal priority, and
//! a late wake-up may then also be a busy core; [`Freezes::realtime`] says which.
//!
//! Its cost to what it watches: one wake-up of a few microseconds every 10 ms. (Every
//! 2 ms, it kept the virtual CPUs awake often enough to lower `compare mixed`'s light
//! p99 by about a tenth; every 10 ms it moved nothing measurable.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the watch sleeps between looks.
pub const PERIOD: Duration = Duration::from_millis(10);
/// The shortest lateness counted as a freeze (beyond [`PERIOD`]).
pub const FREEZE_MIN: Duration = Duration::from_millis(10);

/// One freeze: when it began (seconds after the watch started) and how long it lasted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Freeze {
    /// Seconds after [`FreezeWatch::start`] that the machine was last seen running
    /// (the freeze began at most [`PERIOD`] later).
    pub at_s: f64,
    /// How long nothing ran, at least, in ms (the lateness beyond [`PERIOD`]).
    pub ms: f64,
}

/// What a watch saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Freezes {
    /// Every freeze, in time order.
    pub list: Vec<Freeze>,
    /// Whether a watch ran at all (its thread may fail to start).
    pub watched: bool,
    /// Whether the watch ran at real-time priority (a late wake-up is then the
    /// machine's, not a busy core's).
    pub realtime: bool,
}

/// How a watch ran, weakest first (so the weakest of several is their `min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Watch {
    /// Its thread did not start: no freeze was seen because none was looked for.
    None,
    /// At normal priority (real-time refused): a late wake-up is a freeze or a busy core.
    Normal,
    /// At real-time priority: a late wake-up is the machine's.
    Realtime,
}

impl Watch {
    /// `none`, `normal` or `realtime`, as reports name it.
    pub fn name(self) -> &'static str {
        match self {
            Watch::None => "none",
            Watch::Normal => "normal",
            Watch::Realtime => "realtime",
        }
    }
}

impl Freezes {
    /// How the watch ran.
    pub fn watch(&self) -> Watch {
        match (self.watched, self.realtime) {
            (false, _) => Watch::None,
            (true, false) => Watch::Normal,
            (true, true) => Watch::Realtime,
        }
    }

    /// The longest freeze that overlaps `[from_s, to_s)`, in ms (0 if none): one that
    /// began before `from_s` and ran into it counts.
    pub fn longest_ms(&self, from_s: f64, to_s: f64) -> f64 {
        let period_s = PERIOD.as_secs_f64();
        self.list
            .iter()
            .filter(|f| f.at_s + period_s + f.ms / 1e3 > from_s && f.at_s < to_s)
            .map(|f| f.ms)
            .fold(0.0, f64::max)
    }

    /// The longest freeze of the whole watch, in ms (0 if none).
    pub fn longest_all_ms(&self) -> f64 {
        self.longest_ms(f64::NEG_INFINITY, f64::INFINITY)
    }
}

/// A running watch; [`FreezeWatch::stop`] ends it and returns what it saw.
#[derive(Debug)]
pub struct FreezeWatch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Freezes>>,
}

impl FreezeWatch {
    /// Starts watching. Times in the result count from this call.
    pub fn start() -> FreezeWatch {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("freeze-watch".into())
            .spawn(move || watch(started, &flag))
            .ok();
        FreezeWatch { stop, handle }
    }

    /// Stops watching; the freezes seen (none if the thread could not start).
    pub fn stop(mut self) -> Freezes {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for FreezeWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn watch(started: Instant, stop: &AtomicBool) -> Freezes {
    let mut seen = Freezes { list: Vec::new(), watched: true, realtime: realtime() };
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(PERIOD);
        let now = Instant::now();
        seen.list.extend(freeze_between(started, last, now));
        last = now;
    }
    seen
}

/// The freeze between two consecutive looks at `last` and `now`, if the second came
/// [`FREEZE_MIN`] or more later than [`PERIOD`] after the first.
fn freeze_between(started: Instant, last: Instant, now: Instant) -> Option<Freeze> {
    let late = now.saturating_duration_since(last).saturating_sub(PERIOD);
    (late >= FREEZE_MIN).then(|| Freeze {
        at_s: last.saturating_duration_since(started).as_secs_f64(),
        ms: late.as_secs_f64() * 1e3,
    })
}

/// Puts the calling thread under `SCHED_FIFO` (the lowest real-time priority); false
/// where that is refused.
fn realtime() -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain syscall on the calling thread with a valid parameter block; a
    // refused change leaves the thread as it was.
    unsafe {
        let param = libc::sched_param { sched_priority: 1 };
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_counts_only_the_window() {
        let seen = Freezes {
            list: vec![Freeze { at_s: 0.5, ms: 20.0 }, Freeze { at_s: 2.0, ms: 12.0 }],
            watched: true,
            realtime: true,
        };
        assert_eq!(seen.longest_ms(1.0, 3.0), 12.0);
        assert_eq!(seen.longest_ms(0.0, 1.0), 20.0);
        assert_eq!(seen.longest_ms(3.0, 4.0), 0.0);
        assert_eq!(seen.longest_all_ms(), 20.0);
        // Begun before the window (0.5 s + 10 ms + 20 ms), running into it.
        assert_eq!(seen.longest_ms(0.52, 1.0), 20.0);
        assert_eq!(seen.longest_ms(0.54, 1.0), 0.0);
    }

    #[test]
    fn a_late_look_is_a_freeze_and_a_punctual_one_is_not() {
        let started = Instant::now();
        let last = started + Duration::from_secs(1);
        let freeze = freeze_between(started, last, last + PERIOD + Duration::from_millis(10));
        let freeze = freeze.expect("20 ms between looks is a freeze");
        assert_eq!(freeze.at_s, 1.0);
        assert!((freeze.ms - 10.0).abs() < 1e-9);
        assert_eq!(freeze_between(started, last, last + PERIOD + Duration::from_millis(4)), None);
    }

    #[test]
    fn the_weakest_watch_is_the_least() {
        let runs = [Watch::Realtime, Watch::Normal, Watch::Realtime];
        assert_eq!(runs.into_iter().min(), Some(Watch::Normal));
        assert_eq!([Watch::Normal, Watch::None].into_iter().min(), Some(Watch::None));
        let unwatched = Freezes::default();
        assert_eq!(unwatched.watch(), Watch::None);
    }

    #[test]
    fn a_watch_stops_when_asked() {
        let watch = FreezeWatch::start();
        let asked = Instant::now();
        let seen = watch.stop();
        assert!(asked.elapsed() < Duration::from_secs(1), "stop took {:?}", asked.elapsed());
        assert!(seen.list.iter().all(|f| f.ms >= FREEZE_MIN.as_secs_f64() * 1e3));
    }
}
