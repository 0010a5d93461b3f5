//! Configuring and starting an engine: every option is checked once, before any
//! thread starts (like linfa's checked parameters).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::Engine;
use crate::adapt::{Adaptation, Adapter};
use crate::admission::Admission;
use crate::control::ControlConfig;
use crate::error::BuildError;
use crate::lanes::{self, LaneConfig, Lanes, StealPolicy, LIGHT_BUDGET, MAX_LANES};
use crate::model::Model;
use crate::op::{OpEnv, Registry};
use crate::placement::LaneSplit;
use crate::router::{EwmaRouter, LearnedRouter, Router, StaticRouter};
use crate::telemetry::{Sink, Tap, Telemetry};

/// Configures an [`Engine`]. Every option is checked once, in [`EngineBuilder::build`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    workers: Option<usize>,
    cores: Option<Vec<usize>>,
    heavy_lanes: Option<usize>,
    split: LaneSplit,
    light_batch: u32,
    capacity: usize,
    memory_capacity: Option<usize>,
    pin: bool,
    isolate_heavy: bool,
    steal_backlog: Option<usize>,
    light_budget: Duration,
    router: Option<Arc<dyn Router>>,
    model: Option<PathBuf>,
    control: Option<ControlConfig>,
    log_dir: Option<PathBuf>,
    log_memory: bool,
    sample_every: u64,
    log_max_bytes: u64,
    adapt: Option<Adaptation>,
    #[cfg(feature = "nats")]
    nats: Option<crate::remote::RemoteConfig>,
}

impl Engine {
    /// A builder with the defaults: one light lane pinned per usable core, heavy lanes
    /// floating over them at idle priority, routed by tags and running averages.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            workers: None,
            cores: None,
            heavy_lanes: None,
            split: LaneSplit::default(),
            light_batch: 128,
            capacity: 1 << 16,
            memory_capacity: None,
            pin: true,
            isolate_heavy: false,
            steal_backlog: None,
            light_budget: LIGHT_BUDGET,
            router: None,
            model: None,
            control: None,
            log_dir: None,
            log_memory: false,
            sample_every: 1,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            adapt: None,
            #[cfg(feature = "nats")]
            nats: None,
        }
    }
}

impl EngineBuilder {
    /// Number of lanes (worker threads). Default: one per core in the process's
    /// affinity mask (as `taskset` sets it). With pinning on, asking for more lanes
    /// than usable cores runs one lane per core and logs a warning.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Restricts the engine to these core ids (each must be in the affinity mask).
    pub fn cores(mut self, cores: impl IntoIterator<Item = usize>) -> Self {
        self.cores = Some(cores.into_iter().collect());
        self
    }

    /// Lanes that run heavy work. Under the default [`LaneSplit::Preemptive`]: the
    /// number of idle-priority threads that float over every core of the engine, beside
    /// the light lanes (default: as many as the light lanes, one per core; they take the
    /// shortest predicted heavy call first, and more of them measured worse: see
    /// `docs/lanes.md`; 0 runs heavy work on the light lanes). Under
    /// [`LaneSplit::Pinned`]: how many of the pinned lanes serve heavy work first
    /// (default 1 when there are at least 2 lanes, else 0).
    pub fn heavy_lanes(mut self, heavy_lanes: usize) -> Self {
        self.heavy_lanes = Some(heavy_lanes);
        self
    }

    /// How light and heavy lanes share the cores (default [`LaneSplit::Preemptive`]:
    /// light lanes pinned at normal priority, heavy lanes floating at the lowest).
    pub fn split(mut self, split: LaneSplit) -> Self {
        self.split = split;
        self
    }

    /// Tokens per batch for light operations under the tag router (default 128;
    /// medium operations use an eighth of it, heavy ones 1).
    pub fn light_batch(mut self, light_batch: u32) -> Self {
        self.light_batch = light_batch;
        self
    }

    /// Admitted-but-unprocessed tokens the engine holds at most (default 65,536).
    /// When full, `submit` waits and `try_submit` is rejected as overloaded.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Also bounds admission by estimated memory: each admitted, unprocessed token
    /// counts its argument, its slot, and its operation's
    /// [`arg_bytes`](crate::OperationBuilder::arg_bytes) estimate (default: unbounded). A call
    /// larger than the whole budget is admitted when nothing else is held.
    pub fn memory_capacity(mut self, bytes: usize) -> Self {
        self.memory_capacity = Some(bytes);
        self
    }

    /// Pin each lane's thread to its own core (default true).
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// When true, light lanes never run heavy work, even when idle (a lane waiting on a
    /// token still runs what it finds queued). Under the pinned split it overrides the
    /// default cost-aware rule (see [`EngineBuilder::light_budget`]). Under the
    /// preemptive split, where light lanes take heavy work outside a wait only while
    /// other threads starve the heavy lanes (a *rescue*,
    /// [`EngineStats::rescues`](crate::EngineStats::rescues)), it turns the rescue off:
    /// heavy work then waits for whatever keeps the cores busy.
    pub fn isolate_heavy(mut self, isolate: bool) -> Self {
        self.isolate_heavy = isolate;
        self
    }

    /// Pinned split only: light lanes take heavy work whenever at least `batches` heavy
    /// batches wait, whatever its predicted cost (1: fully work-conserving). Overrides
    /// the default cost-aware rule.
    pub fn steal_backlog(mut self, batches: usize) -> Self {
        self.steal_backlog = Some(batches);
        self
    }

    /// Pinned split only. The default rule for light lanes and heavy work is
    /// cost-aware: a light lane takes a queued heavy batch only if its predicted runtime
    /// fits this budget (default 100 µs), or if light work is unlikely to arrive while
    /// it runs (fewer than 0.1 light arrivals expected, from the recent light arrival
    /// rate). So a light lane may stay idle while heavy work waits: a light call that
    /// arrives behind a heavy one on a lane that runs calls to completion waits for all
    /// of it (docs/lanes.md, "The pinned split").
    pub fn light_budget(mut self, budget: Duration) -> Self {
        self.light_budget = budget;
        self
    }

    /// Adapts the cost model while the engine runs: routes with `adaptation`'s
    /// [`AdaptiveRouter`](crate::router::AdaptiveRouter) (replacing any other router) and
    /// re-fits its model on recent telemetry in a background thread, swapping in a
    /// candidate when it predicts the newest rows better. Turns telemetry on (add
    /// [`log_sample`](EngineBuilder::log_sample) to keep its cost down). See
    /// [`crate::adapt`].
    pub fn adapt(mut self, adaptation: Adaptation) -> Self {
        self.router = Some(Arc::clone(&adaptation.router) as Arc<dyn Router>);
        self.adapt = Some(adaptation);
        self
    }

    /// Replaces the default router: without a model, an [`EwmaRouter`] that learns
    /// each operation's (and each argument size's) cost online and places by tag only
    /// until it has measured it; pass a [`StaticRouter`] to place by tags alone.
    pub fn router(mut self, router: Arc<dyn Router>) -> Self {
        self.router = Some(router);
        self
    }

    /// Routes with the learned cost model in this file (see [`crate::model`]). A file
    /// that is missing, corrupt, or fitted on another feature schema fails `build()`.
    pub fn model(mut self, path: impl Into<PathBuf>) -> Self {
        self.model = Some(path.into());
        self
    }

    /// Serves the control port on `addr` (see [`crate::control`]), authenticated with
    /// `secret`. Only loopback addresses are accepted unless `public` is true (then a
    /// warning is logged). `build()` fails with the reason if the port cannot be bound.
    pub fn control(
        mut self,
        addr: std::net::SocketAddr,
        secret: impl Into<String>,
        public: bool,
    ) -> Self {
        self.control = Some(ControlConfig { addr, secret: secret.into(), public });
        self
    }

    /// Logs one record per finished token to Parquet segments in `dir` (created if
    /// needed): a new file every 262,144 rows or 10 s.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Also keeps the records in memory, for [`Engine::take_records`] after shutdown
    /// (memory grows with every token: for bounded runs such as benchmarks).
    pub fn log_in_memory(mut self) -> Self {
        self.log_memory = true;
        self
    }

    /// Caps the Parquet a log directory holds (default 1 GiB; segments already in the
    /// directory count): past it the writer stops writing and counts the rows it did not
    /// keep ([`TelemetryStats::over_cap`](crate::telemetry::TelemetryStats::over_cap)). Logging
    /// every token of a fast workload writes ~18 MB/s.
    pub fn log_max_bytes(mut self, bytes: u64) -> Self {
        self.log_max_bytes = bytes;
        self
    }

    /// Logs only tokens whose id is a multiple of `every` (default 1: all).
    pub fn log_sample(mut self, every: u64) -> Self {
        self.sample_every = every;
        self
    }

    /// Connects to a NATS server at build time: tokens of remote-capable operations
    /// may then run on remote workers (see [`remote`](crate::remote)). `build()` fails
    /// if the server cannot be reached or refuses the secret.
    #[cfg(feature = "nats")]
    pub fn nats(mut self, config: crate::remote::RemoteConfig) -> Self {
        self.nats = Some(config);
        self
    }

    /// Checks every option, then starts the lanes (pinned), the engine's tokio runtime
    /// and, when asked, the telemetry writer and the control port.
    ///
    /// Everything that can be refused is checked first (options, cores, the model
    /// file, the log directory, the control address and secret); a failed `build()`
    /// leaves no thread behind.
    pub fn build(self) -> Result<Engine, BuildError> {
        let valid = self.check()?;
        let fallback = StaticRouter::new(self.light_batch);
        let router: Arc<dyn Router> = match (&self.router, &self.model) {
            (Some(router), _) => Arc::clone(router),
            (None, Some(path)) => {
                let model = Model::load(path)
                    .map_err(|e| BuildError::model(path.display().to_string(), e))?;
                Arc::new(LearnedRouter::new(model, fallback))
            }
            // No model: learn costs online from a cold start (tags until measured).
            (None, None) => Arc::new(EwmaRouter::new(fallback)),
        };
        if let Some(dir) = &self.log_dir {
            if !cfg!(feature = "parquet") {
                return Err(BuildError::invalid(format!(
                    "log_dir {}: this build has no Parquet writer (enable the `parquet` feature, \
                     or use log_in_memory)",
                    dir.display()
                )));
            }
            std::fs::create_dir_all(dir).map_err(|e| {
                BuildError::io(format!("creating the log directory {}", dir.display()), e)
            })?;
        }
        let control = match &self.control {
            Some(config) => Some((crate::control::bind(config)?, config.secret.clone())),
            None => None,
        };
        // Nothing can be refused from here on but the OS's own resources; each step
        // undoes the ones before it if it fails.
        let op_names = Arc::new(RwLock::new(Vec::new()));
        let adapter =
            self.adapt.clone().map(|adaptation| Adapter::new(adaptation, Arc::clone(&op_names)));
        let tap = adapter.clone().map(|adapter| {
            Arc::new(move |rows: &[crate::telemetry::TokenRecord]| adapter.observe(rows)) as Tap
        });
        let telemetry = (self.log_dir.is_some() || self.log_memory || adapter.is_some())
            .then(|| {
                let sink = Sink {
                    tap: tap.clone(),
                    dir: self.log_dir.clone(),
                    memory: self.log_memory,
                    segment_rows: 1 << 18,
                    segment_secs: 10,
                    max_bytes: self.log_max_bytes,
                };
                Telemetry::start(sink, self.sample_every, Arc::clone(&op_names))
                    .map(Arc::new)
                    .map_err(|e| BuildError::io("starting the telemetry writer", e))
            })
            .transpose()?;
        let stop_telemetry = |error: BuildError| {
            if let Some(telemetry) = &telemetry {
                telemetry.finish();
            }
            error
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tokengate-io")
            .enable_all()
            .build()
            .map_err(|e| {
                stop_telemetry(BuildError::io("starting the engine's tokio runtime", e))
            })?;
        let admission =
            Arc::new(Admission::new(valid.capacity, self.memory_capacity.unwrap_or(usize::MAX)));
        let lanes = Lanes::new(LaneConfig {
            cores: valid.cores,
            heavy_lanes: valid.heavy_lanes,
            split: self.split,
            float_cores: valid.float_cores,
            steal: valid.steal,
            telemetry: telemetry.clone(),
            admission: Arc::clone(&admission),
            pin: self.pin,
        });
        lanes::spawn_workers(&lanes)
            .map_err(|e| stop_telemetry(BuildError::io("starting the lane threads", e)))?;
        if lanes.wants_guard() {
            runtime.spawn(guard(Arc::downgrade(&lanes)));
        }
        if let Some(adapter) = &adapter {
            if let Err(e) = adapter.start() {
                lanes.begin_shutdown();
                lanes.join();
                return Err(stop_telemetry(BuildError::io("starting the adaptation thread", e)));
            }
        }
        let chunk_len = valid.capacity.min(4096);
        let env = Arc::new(OpEnv::new(
            admission,
            lanes,
            router,
            Arc::default(),
            chunk_len,
            runtime.handle().clone(),
            Arc::default(),
            Arc::default(),
        ));
        let registry = Arc::new(Registry::new(op_names));
        let mut engine = Engine::new(env, registry, adapter, runtime);
        #[cfg(feature = "nats")]
        if let Some(config) = self.nats.clone() {
            // The engine's drop stops the lanes and the runtime if this fails.
            let link = crate::remote::Link::start(config, engine.handle())
                .map_err(|e| BuildError::io("remote link", std::io::Error::other(e)))?;
            let _ = engine.env.remote.set(link);
        }
        if let Some((listener, secret)) = control {
            let controller = engine.controller();
            let runtime = engine.runtime.as_ref().expect("runtime lives until drop");
            // The engine's drop stops the lanes and the runtime if this fails.
            let addr = crate::control::start(runtime, listener, controller, secret)
                .map_err(|e| BuildError::io("serving the control port", e))?;
            engine.control_addr = Some(addr);
        }
        engine.log_started();
        Ok(engine)
    }

    fn check(&self) -> Result<ValidConfig, BuildError> {
        if self.light_batch == 0 || self.light_batch > 65_536 {
            return Err(BuildError::invalid(format!(
                "light_batch must be 1..=65536, got {}",
                self.light_batch
            )));
        }
        if self.steal_backlog == Some(0) {
            return Err(BuildError::invalid("steal_backlog must be at least 1"));
        }
        if self.light_budget.is_zero() || self.light_budget > Duration::from_secs(1) {
            return Err(BuildError::invalid(format!(
                "light_budget must be between 1 ns and 1 s, got {:?}",
                self.light_budget
            )));
        }
        let steal = match (self.isolate_heavy, self.steal_backlog) {
            (true, _) => StealPolicy::Isolate,
            (false, Some(batches)) => StealPolicy::Backlog(batches),
            (false, None) => StealPolicy::CostAware {
                budget_ns: u64::try_from(self.light_budget.as_nanos()).unwrap_or(u64::MAX),
            },
        };
        if self.sample_every == 0 {
            return Err(BuildError::invalid("log_sample must be at least 1"));
        }
        if self.memory_capacity == Some(0) {
            return Err(BuildError::invalid("memory_capacity must be at least 1 byte"));
        }
        if self.capacity == 0 || self.capacity > 1 << 32 {
            return Err(BuildError::invalid(format!(
                "capacity must be 1..=2^32, got {}",
                self.capacity
            )));
        }
        let usable: Vec<usize> = core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|id| id.id).collect())
            .unwrap_or_default();
        let mut cores = match &self.cores {
            None => usable.clone(),
            Some(wanted) => {
                if wanted.is_empty() {
                    return Err(BuildError::invalid("cores: the list is empty"));
                }
                let mut wanted = wanted.clone();
                wanted.sort_unstable();
                wanted.dedup();
                if let Some(bad) = wanted.iter().find(|core| !usable.contains(core)) {
                    return Err(BuildError::invalid(format!(
                        "cores: core {bad} is not in this process's affinity mask {usable:?}"
                    )));
                }
                wanted
            }
        };
        let pin = self.pin && !cores.is_empty();
        if self.pin && cores.is_empty() {
            tracing::warn!("could not read the process's affinity mask; running unpinned");
        }
        let fallback =
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(MAX_LANES);
        let default_workers = if cores.is_empty() { fallback } else { cores.len().min(MAX_LANES) };
        let mut workers = self.workers.unwrap_or(default_workers);
        if workers == 0 || workers > MAX_LANES {
            return Err(BuildError::invalid(format!(
                "workers must be 1..={MAX_LANES}, got {workers}"
            )));
        }
        if pin && workers > cores.len() {
            tracing::warn!(
                "asked for {workers} pinned lanes but only {} cores are usable; running {}",
                cores.len(),
                cores.len()
            );
            workers = cores.len();
        }
        cores.truncate(workers);
        let float_cores = if pin { cores.clone() } else { Vec::new() };
        let pinned_core = |i: usize| pin.then(|| core_affinity::CoreId { id: cores[i] });
        let (lane_cores, heavy_lanes) = match self.split {
            LaneSplit::Pinned => {
                let heavy_lanes = self.heavy_lanes.unwrap_or(usize::from(workers >= 2));
                if heavy_lanes >= workers && !(workers == 1 && heavy_lanes == 0) {
                    return Err(BuildError::invalid(format!(
                        "heavy_lanes must leave at least one light lane: {heavy_lanes} of \
                         {workers} lanes"
                    )));
                }
                ((0..workers).map(pinned_core).collect(), heavy_lanes)
            }
            LaneSplit::Preemptive => {
                // Every worker is a light lane; the heavy lanes come on top, unpinned.
                let light = workers.min(MAX_LANES - 1);
                let room = MAX_LANES - light;
                let heavy_lanes = match self.heavy_lanes {
                    Some(heavy) if heavy > room => {
                        return Err(BuildError::invalid(format!(
                            "heavy_lanes: at most {room} beside {light} light lanes (the engine \
                             runs at most {MAX_LANES} lanes), got {heavy}"
                        )));
                    }
                    Some(heavy) => heavy,
                    None => (HEAVY_LANES_PER_LIGHT * light).min(room),
                };
                let cores = (0..light).map(pinned_core).chain((0..heavy_lanes).map(|_| None));
                (cores.collect(), heavy_lanes)
            }
        };
        Ok(ValidConfig {
            cores: lane_cores,
            heavy_lanes,
            float_cores,
            capacity: self.capacity,
            steal,
        })
    }
}

/// The default cap of a log directory.
const DEFAULT_LOG_MAX_BYTES: u64 = 1 << 30;

/// Heavy lanes per light lane under the preemptive split, by default.
const HEAVY_LANES_PER_LIGHT: usize = 1;

struct ValidConfig {
    cores: Vec<Option<core_affinity::CoreId>>,
    heavy_lanes: usize,
    float_cores: Vec<usize>,
    capacity: usize,
    steal: StealPolicy,
}

/// Watches for heavy lanes starved by other threads (`lanes/rescue.rs`) until the lanes
/// shut down.
async fn guard(lanes: std::sync::Weak<Lanes>) {
    let mut guard = match lanes.upgrade() {
        Some(lanes) => lanes.guard(),
        None => return,
    };
    let mut every = tokio::time::interval(lanes::GUARD_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(lanes) = lanes.upgrade() else { return };
        if lanes.is_shutting_down() || !lanes.guard_look(&mut guard) {
            return;
        }
    }
}
