//! Online adaptation: the engine keeps a bounded window of recent telemetry, and a
//! background thread (never a lane; at a lower OS priority, so the pinned lanes preempt
//! it) re-fits the cost model on the newest rows, scores the candidate against the
//! current model on the very newest rows (held out), and swaps it in when it scores
//! better. The swap is one atomic pointer store in the [`AdaptiveRouter`]; the hot path
//! never takes a lock for it.
//!
//! The fitting itself is the trainer's (`trainer::adapt::TreeRefit` implements
//! [`Refit`]): the engine only says when and on what, so the crates keep one direction
//! (trainer → engine).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::features::{CostInputs, OpFeatures};
use crate::model::Model;
use crate::placement::{LaneSet, Weight};
use crate::router::{AdaptiveRouter, CostWatch, LearnedRouter};
use crate::telemetry::{RecordOutcome, TokenRecord};

/// One observed run the model can learn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The operation's engine id (an index into the operations [`Refit::refit`] gets).
    pub op: u32,
    /// Its argument-size hint.
    pub arg_size: u64,
    /// Its cost features (0 where the operation declared none).
    pub cost: CostInputs,
    /// How long it ran (ns).
    pub run_ns: u64,
    /// The weight it declared: where its tag places it when a model does not know
    /// the operation.
    pub declared: Weight,
}

/// Fits a candidate model on recent samples.
pub trait Refit: Send + Sync + 'static {
    /// A model fitted on `samples`, whose `op` fields index `ops` (names and cost
    /// features of the engine's operations).
    fn refit(&self, ops: &[OpFeatures], samples: &[Sample]) -> Result<Model, String>;
}

/// How the engine adapts; see [`EngineBuilder::adapt`](crate::EngineBuilder::adapt).
#[derive(Clone)]
pub struct Adaptation {
    pub(crate) router: Arc<AdaptiveRouter>,
    pub(crate) refit: Arc<dyn Refit>,
    /// Time between re-fit attempts.
    pub(crate) every: Duration,
    /// Only rows this recent are fitted on (a shift shows within it).
    pub(crate) horizon: Duration,
    /// Most rows kept, and most rows one fit uses.
    pub(crate) window: usize,
}

impl std::fmt::Debug for Adaptation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptation")
            .field("every", &self.every)
            .field("horizon", &self.horizon)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Adaptation {
    /// Adapts `router`'s model with `refit`: a re-fit every 100 ms on the rows of the
    /// last 300 ms (at least the newest 1,000; at most 50,000 kept).
    pub fn new(router: Arc<AdaptiveRouter>, refit: Arc<dyn Refit>) -> Self {
        Adaptation {
            router,
            refit,
            every: Duration::from_millis(100),
            horizon: Duration::from_millis(HORIZON_MS),
            window: 50_000,
        }
    }

    /// Time between re-fit attempts (default 100 ms).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Only rows this recent are fitted on (default 300 ms; at least the newest 1,000
    /// rows whatever their age).
    pub fn horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// Most rows kept and fitted on (default 50,000).
    pub fn window(mut self, rows: usize) -> Self {
        self.window = rows;
        self
    }
}

/// The default horizon: a re-fit sees only rows this recent (ms).
const HORIZON_MS: u64 = 300;
/// Most rows one re-fit uses.
const MAX_FIT_ROWS: usize = 10_000;
/// Fewest rows one re-fit uses (more than the horizon holds, on a slow stream).
const MIN_FIT_ROWS: usize = 1_000;

/// What adaptation has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct AdaptStatus {
    /// Whether re-fitting is on.
    pub enabled: bool,
    /// The model version routing now (raised by every swap).
    pub model_version: u32,
    /// Models swapped in.
    pub swaps: u32,
    /// Rows the window has received.
    pub rows_seen: u64,
    /// Held-out accuracy of the current model at the last check (0..1).
    pub recent_accuracy: f64,
    /// Seconds since the last swap (none yet: `None`).
    pub last_swap_s_ago: Option<f64>,
    /// CPU time of the last re-fit (ms).
    pub last_fit_ms: f64,
    /// Watch cells (an operation's half-octave of sizes) of the current model that the
    /// cost watch has moved to the other lane set, their recent calls having run in
    /// that set's class.
    #[serde(default)]
    pub cells_moved: u32,
    /// Cell moves (either way) since the start.
    #[serde(default)]
    pub cell_moves: u64,
}

type SwapHook = Box<dyn Fn(u32) + Send>;

/// The window, the thread, and what they report.
pub(crate) struct Adapter {
    config: Adaptation,
    rows: Mutex<VecDeque<(Instant, Sample)>>,
    rows_seen: AtomicU64,
    /// `rows_seen` at the last round: a round with no new rows is skipped (an idle
    /// engine does not re-fit the same rows every 100 ms).
    fitted_at: AtomicU64,
    enabled: AtomicBool,
    stop: (Mutex<bool>, Condvar),
    status: Mutex<AdaptStatus>,
    last_swap: Mutex<Option<Instant>>,
    op_names: crate::features::OpNames,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Called with the new version after each swap (the control port's event).
    on_swap: Mutex<Option<SwapHook>>,
    /// Follows what calls cost between re-fits (fed by `observe`).
    watch: Mutex<CostWatch>,
    cell_moves: AtomicU64,
}

impl Adapter {
    pub(crate) fn new(config: Adaptation, op_names: crate::features::OpNames) -> Arc<Self> {
        Arc::new(Adapter {
            config,
            rows: Mutex::new(VecDeque::new()),
            rows_seen: AtomicU64::new(0),
            fitted_at: AtomicU64::new(0),
            enabled: AtomicBool::new(true),
            stop: (Mutex::new(false), Condvar::new()),
            status: Mutex::new(AdaptStatus { enabled: true, ..AdaptStatus::default() }),
            last_swap: Mutex::new(None),
            op_names,
            thread: Mutex::new(None),
            on_swap: Mutex::new(None),
            watch: Mutex::new(CostWatch::default()),
            cell_moves: AtomicU64::new(0),
        })
    }

    /// Takes a buffer of telemetry rows into the window, and each into the cost watch
    /// (the telemetry writer calls it).
    pub(crate) fn observe(&self, records: &[TokenRecord]) {
        let now = Instant::now();
        let watching = self.enabled.load(Ordering::Relaxed);
        // The watch's lock first: a swap (which takes it too) then falls wholly before
        // or after this buffer, and no move lands in a router just replaced.
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let router = self.config.router.current();
        let mut moves = 0;
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        for r in records {
            // A remote run's row carries the worker's serving time, not a run time.
            let learnable = matches!(r.outcome, RecordOutcome::Completed | RecordOutcome::TimedOut);
            if learnable && r.lane_set != LaneSet::Remote {
                if watching {
                    moves += u64::from(watch.observe(&router, r.op, r.arg_size, r.run_ns));
                }
                rows.push_back((
                    now,
                    Sample {
                        op: r.op,
                        arg_size: r.arg_size,
                        cost: r.cost,
                        run_ns: r.run_ns,
                        declared: r.declared,
                    },
                ));
            }
        }
        let excess = rows.len().saturating_sub(self.config.window);
        rows.drain(..excess);
        self.rows_seen.fetch_add(records.len() as u64, Ordering::Relaxed);
        if moves > 0 {
            self.cell_moves.fetch_add(moves, Ordering::Relaxed);
            tracing::debug!(
                "adaptation: the cost watch moved {moves} cells ({} moved now)",
                router.moved_cells()
            );
        }
    }

    /// Starts the re-fitting thread.
    pub(crate) fn start(self: &Arc<Self>) -> std::io::Result<()> {
        let me = Arc::clone(self);
        let handle =
            std::thread::Builder::new().name("tokengate-adapt".into()).spawn(move || me.run())?;
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Stops and joins the thread.
    pub(crate) fn stop(&self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(handle) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }

    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    pub(crate) fn on_swap(&self, f: impl Fn(u32) + Send + 'static) {
        *self.on_swap.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    pub(crate) fn status(&self) -> AdaptStatus {
        let mut status = *self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.enabled = self.enabled.load(Ordering::SeqCst);
        status.model_version = crate::router::Router::model_version(&*self.config.router);
        status.swaps = self.config.router.swaps();
        status.rows_seen = self.rows_seen.load(Ordering::Relaxed);
        status.cells_moved = self.config.router.current().moved_cells() as u32;
        status.cell_moves = self.cell_moves.load(Ordering::Relaxed);
        status.last_swap_s_ago = self
            .last_swap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|at| at.elapsed().as_secs_f64());
        status
    }

    fn run(&self) {
        lower_priority();
        loop {
            {
                let stopped = self.stop.0.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) = self
                    .stop
                    .1
                    .wait_timeout_while(stopped, self.config.every, |stopped| !*stopped)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
            }
            if self.enabled.load(Ordering::SeqCst) {
                self.round();
            }
        }
    }

    /// One re-fit: fit on the older 80% of the recent rows, score both models on the
    /// newest 20%, swap if the candidate is clearly better.
    fn round(&self) {
        let seen = self.rows_seen.load(Ordering::Relaxed);
        if self.fitted_at.swap(seen, Ordering::Relaxed) == seen {
            return;
        }
        let horizon = self.config.horizon;
        let recent: Vec<Sample> = {
            let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // The rows of the horizon, or the newest `MIN_FIT_ROWS` where the horizon
            // holds fewer (a slow stream still adapts, over a longer span).
            let within = rows.iter().rev().take_while(|(at, _)| now.duration_since(*at) <= horizon);
            let take = within.count().max(MIN_FIT_ROWS).min(rows.len());
            rows.iter().skip(rows.len() - take).map(|(_, s)| *s).collect()
        };
        if recent.len() < 500 {
            return;
        }
        // A fit's cost grows with its rows, and it shares the lanes' cores: at most
        // `MAX_FIT_ROWS`, spread evenly over the span (the newest kept for scoring).
        let stride = recent.len().div_ceil(MAX_FIT_ROWS);
        let recent: Vec<Sample> = if stride > 1 {
            recent.iter().rev().step_by(stride).rev().copied().collect()
        } else {
            recent
        };
        let held = recent.len() / 5;
        let (train, newest) = recent.split_at(recent.len() - held);
        let ops = self.op_names.read().unwrap_or_else(|e| e.into_inner()).clone();
        let started = Instant::now();
        let candidate = match self.config.refit.refit(&ops, train) {
            Ok(model) => model,
            Err(e) => {
                tracing::debug!("adaptation: no candidate this round ({e})");
                return;
            }
        };
        let fit_ms = started.elapsed().as_secs_f64() * 1e3;
        // The current router is scored as it places now, moved cells included: a
        // candidate that would put a moved cell back is not better for it. The watch
        // moves nothing from the carrying of its moves to the swap.
        let candidate = self.config.router.router_for(candidate);
        let (now, new, swapped) = {
            let _watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            let current = self.config.router.current();
            crate::router::carry_moves(
                &candidate,
                &current,
                self.config.router.op_ids().into_iter(),
            );
            let (now, new) = (score(&current, newest), score(&candidate, newest));
            let swapped = new.better_than(&now);
            if swapped {
                self.config.router.swap_router(Arc::new(candidate));
            }
            (now, new, swapped)
        };
        let (now_acc, new_acc) = (now.accuracy, new.accuracy);
        {
            let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            status.recent_accuracy = now_acc;
            status.last_fit_ms = fit_ms;
        }
        if !swapped {
            tracing::debug!(
                "adaptation: candidate kept out (held-out accuracy {:.1}% vs {:.1}%, misplaced {:.2}% vs {:.2}%, fit {fit_ms:.0} ms)",
                new_acc * 100.0,
                now_acc * 100.0,
                new.misplaced() * 100.0,
                now.misplaced() * 100.0,
            );
        } else {
            *self.last_swap.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.status.lock().unwrap_or_else(|e| e.into_inner()).recent_accuracy = new_acc;
            let version = crate::router::Router::model_version(&*self.config.router);
            tracing::info!(
                "adaptation: model {version:08x} swapped in (held-out accuracy {:.1}% → {:.1}%, on the wrong lane set {:.2}% → {:.2}%, fit {fit_ms:.0} ms)",
                now_acc * 100.0,
                new_acc * 100.0,
                now.misplaced() * 100.0,
                new.misplaced() * 100.0,
            );
            if let Some(f) = self.on_swap.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                f(version);
            }
        }
    }
}

/// How a model does on held-out samples.
struct Score {
    /// Share whose runtime falls in the class predicted for them.
    accuracy: f64,
    /// Share that ran as long as heavy work ([`HEAVY_NS`](crate::model::HEAVY_NS) or
    /// more) but were predicted into a class the light lanes run.
    heavy_on_light: f64,
    /// Share that ran shorter than heavy work but were predicted into a class the heavy
    /// lanes run (where they wait behind heavy calls).
    light_on_heavy: f64,
    /// Held-out rows scored.
    rows: usize,
}

impl Score {
    /// Share placed on the wrong lane set.
    fn misplaced(&self) -> f64 {
        self.heavy_on_light + self.light_on_heavy
    }

    /// Whether a candidate scoring `self` should replace the model scoring `now`: it
    /// sends no more heavy calls to the light lanes (each holds up the light tokens
    /// behind it), and it is clearly more accurate (2 points) or, as accurate within a
    /// point, clearly places better (half a point and at least 3 rows fewer on the wrong
    /// lane set: a band of 1% of the calls moving lanes decides a p99, and moves
    /// accuracy by 1%; with few held-out rows, one row is not evidence).
    fn better_than(&self, now: &Score) -> bool {
        let no_more_heavy_on_light = self.heavy_on_light <= now.heavy_on_light;
        let more_accurate = self.accuracy > now.accuracy + 0.02;
        let fewer_misplaced = (now.misplaced() - self.misplaced()) * self.rows as f64;
        let places_better = self.accuracy >= now.accuracy - 0.01
            && self.misplaced() < now.misplaced() - 0.005
            && fewer_misplaced >= 3.0 - 1e-9;
        no_more_heavy_on_light && (more_accurate || places_better)
    }
}

fn score(router: &LearnedRouter, samples: &[Sample]) -> Score {
    let classes = &router.model().header().classes;
    let (mut hits, mut heavy_on_light, mut light_on_heavy) = (0usize, 0usize, 0usize);
    for s in samples {
        let class =
            router.spot(s.op, s.arg_size, &s.cost).map(|spot| &classes[router.spot_cost(spot).0]);
        // An operation the model does not know is placed by its tag (the router's
        // fallback), and scored so: a candidate without it is not excused its rows.
        let lanes = match class {
            Some(class) => {
                hits += usize::from(class.min_ns <= s.run_ns && s.run_ns < class.max_ns);
                class.lanes
            }
            None if s.declared == Weight::Heavy => LaneSet::Heavy,
            None => LaneSet::Light,
        };
        let heavy = s.run_ns >= crate::model::HEAVY_NS;
        heavy_on_light += usize::from(heavy && lanes == LaneSet::Light);
        light_on_heavy += usize::from(!heavy && lanes == LaneSet::Heavy);
    }
    let all = samples.len().max(1) as f64;
    Score {
        accuracy: hits as f64 / all,
        heavy_on_light: heavy_on_light as f64 / all,
        light_on_heavy: light_on_heavy as f64 / all,
        rows: samples.len(),
    }
}

/// Re-fits share the lanes' cores: make this thread the first the scheduler preempts.
/// On Linux it runs under `SCHED_IDLE` (only on time no other thread wants, and a lane
/// that wakes preempts it at once; at nice 10 a waking lane could wait out the re-fit's
/// time slice), or at nice 10 where that is refused.
fn lower_priority() {
    crate::lanes::lower_current(10);
}

#[cfg(test)]
mod tests {
    use super::Score;

    fn score(accuracy: f64, heavy_on_light: f64, light_on_heavy: f64, rows: usize) -> Score {
        Score { accuracy, heavy_on_light, light_on_heavy, rows }
    }

    #[test]
    fn a_candidate_gets_in_by_accuracy_or_by_placing_a_band_better() {
        let now = score(0.90, 0.0, 0.0125, 800);
        // 2 points more accurate.
        assert!(score(0.93, 0.0, 0.0125, 800).better_than(&now));
        // As accurate, and the 1.25% band (10 of 800 rows) moved to the right lanes.
        assert!(score(0.905, 0.0, 0.0, 800).better_than(&now));
        // Never more heavy calls on the light lanes, whatever else it gains.
        assert!(!score(0.95, 0.001, 0.0, 800).better_than(&now));
        // Placing better but clearly less accurate.
        assert!(!score(0.88, 0.0, 0.0, 800).better_than(&now));
        // One row of a hundred is not evidence.
        let few = score(0.90, 0.0, 0.01, 100);
        assert!(!score(0.90, 0.0, 0.0, 100).better_than(&few));
    }

    #[test]
    fn rows_of_an_operation_the_model_does_not_know_are_scored_where_their_tag_places_them() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default.bin");
        let model = crate::model::Model::load(path).unwrap();
        let router = crate::router::LearnedRouter::new(model, crate::router::StaticRouter::new(64));
        crate::router::Router::register_op(&router, 0, "not_in_the_model", &[]);
        let row = |declared, run_ns| super::Sample {
            op: 0,
            arg_size: 10,
            cost: crate::features::NO_COST,
            run_ns,
            declared,
        };
        let (heavy, light) = (super::Weight::Heavy, super::Weight::Light);
        let scored = super::score(&router, &[row(heavy, 2_000), row(light, 2_000)]);
        assert_eq!((scored.light_on_heavy, scored.heavy_on_light), (0.5, 0.0));
        let scored = super::score(&router, &[row(light, 3_000_000), row(heavy, 3_000_000)]);
        assert_eq!((scored.light_on_heavy, scored.heavy_on_light), (0.0, 0.5));
        assert_eq!(scored.accuracy, 0.0, "no class predicted, none hit");
    }
}
