//! The engine: builder, shared state, lifecycle.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::admission::Admission;
use crate::error::{BuildError, RegisterError, TokenError};
use crate::lanes::{self, LaneConfig, LaneInfo, LaneStats, Lanes, MAX_LANES};
use crate::model::Model;
use crate::operation::{
    BoxFn, Context, Dedupe, OpControl, OpOptions, OpStats, Operation, Overrides, RetryPolicy,
    SizeHint,
};
use crate::router::LaneSet;
use crate::router::{LearnedRouter, Router, StaticRouter, Weight};
use crate::telemetry::{Sink, Telemetry, TelemetryStats, TokenRecord};

/// State shared by the engine, its operations and its tokens' jobs.
pub(crate) struct Shared {
    pub(crate) admission: Arc<Admission>,
    pub(crate) lanes: Arc<Lanes>,
    pub(crate) router: Arc<dyn Router>,
    pub(crate) next_token_id: AtomicU64,
    /// Tokens per `submit_many` chunk: one slot allocation and one permit CAS each.
    pub(crate) chunk_len: usize,
    names: Mutex<HashMap<String, u32>>,
    /// The engine's runtime: deadlines and retry backoffs run on it.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Op id → name, for telemetry.
    op_names: Arc<RwLock<Vec<String>>>,
    /// Every operation, for manual control (index = op id).
    ops: RwLock<Vec<Arc<dyn OpControl>>>,
    /// Every operation paused at once.
    paused_all: std::sync::atomic::AtomicBool,
    /// Token ids a `cancel` command named, not yet reached by a lane.
    cancel_ids: Mutex<std::collections::HashSet<u64>>,
    cancel_ids_pending: std::sync::atomic::AtomicBool,
}

/// Most token ids a `cancel` command may have pending at once.
const MAX_PENDING_CANCELS: usize = 100_000;

impl Shared {
    /// Whether any `cancel` command by token id awaits its token.
    #[inline]
    pub(crate) fn cancels_pending(&self) -> bool {
        self.cancel_ids_pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A lane about to run token `index` of `chunk`: cancels it if a `cancel` command
    /// asked for it (by id, or all of its operation's tokens before `cancel_before`).
    #[inline]
    pub(crate) fn cancel_if_asked<R>(
        &self,
        chunk: &crate::token::Chunk<R>,
        index: u32,
        cancel_before: u64,
    ) {
        let id = chunk.id_of(index);
        let named = self.cancels_pending() && {
            let mut ids = self.cancel_ids.lock().unwrap_or_else(|e| e.into_inner());
            let named = ids.remove(&id);
            if ids.is_empty() {
                self.cancel_ids_pending.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            named
        };
        if id < cancel_before || named {
            chunk.cancel(index, crate::CancelSource::Control);
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused_all.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Configures an [`Engine`]. Every option is checked once, in [`EngineBuilder::build`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    workers: Option<usize>,
    cores: Option<Vec<usize>>,
    heavy_lanes: Option<usize>,
    light_batch: u32,
    capacity: usize,
    memory_capacity: Option<usize>,
    pin: bool,
    isolate_heavy: bool,
    steal_backlog: usize,
    router: Option<Arc<dyn Router>>,
    model: Option<PathBuf>,
    control: Option<crate::control::ControlConfig>,
    log_dir: Option<PathBuf>,
    log_memory: bool,
    sample_every: u64,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            workers: None,
            cores: None,
            heavy_lanes: None,
            light_batch: 128,
            capacity: 1 << 16,
            memory_capacity: None,
            pin: true,
            isolate_heavy: false,
            steal_backlog: 1,
            router: None,
            model: None,
            control: None,
            log_dir: None,
            log_memory: false,
            sample_every: 1,
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

    /// Lanes reserved for heavy work. Default: 1 when there are at least 2 lanes,
    /// else 0 (the single lane serves everything).
    pub fn heavy_lanes(mut self, heavy_lanes: usize) -> Self {
        self.heavy_lanes = Some(heavy_lanes);
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
    /// [`arg_bytes`](OperationBuilder::arg_bytes) estimate (default: unbounded). A call
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

    /// When true, light lanes never run heavy work, even when idle (default false:
    /// work-conserving).
    pub fn isolate_heavy(mut self, isolate: bool) -> Self {
        self.isolate_heavy = isolate;
        self
    }

    /// Light lanes take heavy work only once at least `batches` heavy batches are
    /// waiting (default 1: fully work-conserving). A deeper threshold keeps short
    /// bursts of heavy work off the light lanes while still sharing a real backlog.
    pub fn steal_backlog(mut self, batches: usize) -> Self {
        self.steal_backlog = batches;
        self
    }

    /// Replaces the tag router.
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
        self.control = Some(crate::control::ControlConfig { addr, secret: secret.into(), public });
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

    /// Logs only tokens whose id is a multiple of `every` (default 1: all).
    pub fn log_sample(mut self, every: u64) -> Self {
        self.sample_every = every;
        self
    }

    /// Checks every option, starts the lanes (pinned) and the engine's tokio runtime.
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
            (None, None) => Arc::new(fallback),
        };
        let op_names = Arc::new(RwLock::new(Vec::new()));
        let sink = (self.log_dir.is_some() || self.log_memory).then(|| Sink {
            dir: self.log_dir.clone(),
            memory: self.log_memory,
            segment_rows: 1 << 18,
            segment_secs: 10,
        });
        let telemetry = match sink {
            Some(sink) => Some(Arc::new(
                Telemetry::start(sink, self.sample_every, Arc::clone(&op_names))
                    .map_err(BuildError::io)?,
            )),
            None => None,
        };
        let admission =
            Arc::new(Admission::new(valid.capacity, self.memory_capacity.unwrap_or(usize::MAX)));
        let lanes = Arc::new(Lanes::new(LaneConfig {
            cores: valid.cores,
            heavy_lanes: valid.heavy_lanes,
            isolate_heavy: self.isolate_heavy,
            steal_backlog: self.steal_backlog,
            telemetry,
            admission: Arc::clone(&admission),
            pin: self.pin,
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tokengate-io")
            .enable_all()
            .build()
            .map_err(BuildError::io)?;
        lanes::spawn_workers(&lanes).map_err(BuildError::io)?;
        let shared = Arc::new(Shared {
            runtime: runtime.handle().clone(),
            chunk_len: valid.capacity.min(4096),
            admission,
            lanes,
            router,
            next_token_id: AtomicU64::new(1),
            names: Mutex::new(HashMap::new()),
            op_names,
            ops: RwLock::new(Vec::new()),
            paused_all: std::sync::atomic::AtomicBool::new(false),
            cancel_ids: Mutex::new(std::collections::HashSet::new()),
            cancel_ids_pending: std::sync::atomic::AtomicBool::new(false),
        });
        let control_addr = match &self.control {
            Some(control) => Some(crate::control::start(&runtime, control, &shared)?),
            None => None,
        };
        Ok(Engine { shared, stopped: Mutex::new(false), runtime: Some(runtime), control_addr })
    }

    fn check(&self) -> Result<ValidConfig, BuildError> {
        if self.light_batch == 0 || self.light_batch > 65_536 {
            return Err(BuildError::invalid(format!(
                "light_batch must be 1..=65536, got {}",
                self.light_batch
            )));
        }
        if self.steal_backlog == 0 {
            return Err(BuildError::invalid("steal_backlog must be at least 1"));
        }
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
        let heavy_lanes = self.heavy_lanes.unwrap_or(usize::from(workers >= 2));
        if heavy_lanes >= workers && !(workers == 1 && heavy_lanes == 0) {
            return Err(BuildError::invalid(format!(
                "heavy_lanes must leave at least one light lane: {heavy_lanes} of {workers} lanes"
            )));
        }
        let lane_cores =
            (0..workers).map(|i| pin.then(|| core_affinity::CoreId { id: cores[i] })).collect();
        Ok(ValidConfig { cores: lane_cores, heavy_lanes, capacity: self.capacity })
    }
}

struct ValidConfig {
    cores: Vec<Option<core_affinity::CoreId>>,
    heavy_lanes: usize,
    capacity: usize,
}

/// Registers one operation with options; from [`Engine::operation`].
pub struct OperationBuilder<'e, A> {
    engine: &'e Engine,
    name: String,
    weight: Weight,
    options: OpOptions<A>,
}

impl<A> std::fmt::Debug for OperationBuilder<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationBuilder")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("timeout", &self.options.timeout)
            .field("retry", &self.options.retry)
            .field("queue_limit", &self.options.queue_limit)
            .finish()
    }
}

impl<A: Clone> OperationBuilder<'_, A> {
    /// Runs failed calls again under `policy` (the argument is cloned for each retry).
    /// Each attempt is logged with its number; the token resolves once, with the last
    /// attempt's outcome.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = Some(policy);
        self.options.clone_arg = Some(A::clone);
        self
    }
}

impl<'e, A: Send + 'static> OperationBuilder<'e, A> {
    /// A cheap function giving each argument's size (bytes, elements, iterations…):
    /// the learned router's main input besides the operation itself.
    pub fn size_hint(mut self, hint: SizeHint<A>) -> Self {
        self.options.size_hint = Some(hint);
        self
    }

    /// Each call resolves as [`TokenError::TimedOut`] once it has run for `timeout`,
    /// even if the function keeps running: the late result is discarded, and the lane
    /// stuck in it is replaced at once by a fresh thread on the same core (the stuck one
    /// retires when the call returns; see [`Engine::stuck_workers`]). Waiting in the
    /// queue does not count: admission bounds that. Timed calls run one per batch.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Heap bytes an argument owns (a `Vec`'s buffer, a `String`'s text), counted
    /// against the engine's [`memory_capacity`](EngineBuilder::memory_capacity).
    pub fn arg_bytes(mut self, bytes: fn(&A) -> usize) -> Self {
        self.options.arg_bytes = Some(bytes);
        self
    }

    /// Locality: calls with equal `key(arg)` run on the same lane while any of them is
    /// in flight (for caches and per-key state). Such calls are queued on that lane
    /// alone, one per batch, and other lanes never take them.
    pub fn locality(mut self, key: fn(&A) -> u64) -> Self {
        self.options.locality = Some(key);
        self
    }

    /// At most `limit` tokens of this operation admitted and unprocessed at once, so it
    /// cannot take the whole engine's capacity: `submit` waits, `try_submit` is
    /// rejected as overloaded.
    pub fn queue_limit(mut self, limit: usize) -> Self {
        self.options.queue_limit = Some(limit.max(1));
        self
    }

    /// Registers an infallible function (see [`Engine::register`]).
    pub fn register<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> = Box::new(move |a, _| Ok(f(a)));
        self.engine.add_operation(&self.name, self.weight, self.options, f, None)
    }

    /// Makes calls with equal `key(arg)` safe to repeat: while one is in flight, a
    /// duplicate does not run again; it resolves with a copy of the first call's result
    /// (so results must be `Clone`). Register through the returned builder.
    pub fn dedupe(self, key: fn(&A) -> u64) -> DedupeBuilder<'e, A> {
        DedupeBuilder { inner: self, key }
    }

    /// Registers a function returning `Result` (see [`Engine::register_fallible`]).
    pub fn register_fallible<R, E, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Send + 'static,
        E: std::fmt::Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> =
            Box::new(move |a, _| f(a).map_err(|e| TokenError::Failed(e.to_string())));
        self.engine.add_operation(&self.name, self.weight, self.options, f, None)
    }

    /// Registers a function that also receives its run's [`Context`], to notice a
    /// passed deadline and stop early (cooperative cancellation).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let engine = tokengate::Engine::builder().build()?;
    /// let spin = engine
    ///     .operation("spin", tokengate::Weight::Heavy)
    ///     .timeout(Duration::from_millis(20))
    ///     .register_with_context(|(), cx: &tokengate::Context<'_>| {
    ///         while !cx.is_cancelled() {
    ///             std::thread::sleep(Duration::from_millis(1));
    ///         }
    ///     })?;
    /// assert_eq!(spin.submit(()).wait(), Err(tokengate::TokenError::TimedOut));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_with_context<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Send + 'static,
        F: Fn(A, &Context<'_>) -> R + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> = Box::new(move |a, cx| Ok(f(a, cx)));
        self.engine.add_operation(&self.name, self.weight, self.options, f, None)
    }
}

/// Registers an operation whose duplicate calls share one run; from
/// [`OperationBuilder::dedupe`].
///
/// ```
/// # let engine = tokengate::Engine::builder().build()?;
/// let fetch = engine
///     .operation("fetch", tokengate::Weight::Medium)
///     .dedupe(|url: &String| url.len() as u64) // any cheap function of the argument
///     .register(|url: String| format!("body of {url}"))?;
/// let (a, b) = (fetch.submit("a.example".into()), fetch.submit("b.example".into()));
/// assert_eq!(a.wait()?, "body of a.example");
/// # let _ = b.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DedupeBuilder<'e, A> {
    inner: OperationBuilder<'e, A>,
    key: fn(&A) -> u64,
}

impl<A> std::fmt::Debug for DedupeBuilder<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupeBuilder").field("operation", &self.inner).finish()
    }
}

impl<'e, A: Send + 'static> DedupeBuilder<'e, A> {
    /// Registers an infallible function (see [`Engine::register`]).
    pub fn register<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Clone + Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.register_with_context(move |a, _| f(a))
    }

    /// Registers a function returning `Result` (see [`Engine::register_fallible`]).
    pub fn register_fallible<R, E, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Clone + Send + 'static,
        E: std::fmt::Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> =
            Box::new(move |a, _| f(a).map_err(|e| TokenError::Failed(e.to_string())));
        let op = self.inner;
        let dedupe = Some(Dedupe::new(self.key, R::clone));
        op.engine.add_operation(&op.name, op.weight, op.options, f, dedupe)
    }

    /// Registers a function that also receives its run's [`Context`].
    pub fn register_with_context<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Clone + Send + 'static,
        F: Fn(A, &Context<'_>) -> R + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> = Box::new(move |a, cx| Ok(f(a, cx)));
        let op = self.inner;
        let dedupe = Some(Dedupe::new(self.key, R::clone));
        op.engine.add_operation(&op.name, op.weight, op.options, f, dedupe)
    }
}

/// Runs registered operations as tokens on core-pinned lanes.
///
/// Dropping the engine drains it: everything admitted runs, new work is rejected,
/// and the lane threads are joined.
pub struct Engine {
    shared: Arc<Shared>,
    /// Set once the lanes have been joined.
    stopped: Mutex<bool>,
    control_addr: Option<std::net::SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Engine {
    /// A builder with the defaults: one pinned lane per usable core, one of them heavy.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// Registers an infallible function as an operation.
    ///
    /// A panic inside `f` resolves that token as [`TokenError::Panicked`]; the lane
    /// keeps serving. For options (a size hint for the router), use
    /// [`Engine::operation`].
    pub fn register<A, R, F>(
        &self,
        name: &str,
        weight: Weight,
        f: F,
    ) -> Result<Operation<A, R>, RegisterError>
    where
        A: Send + 'static,
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.operation(name, weight).register(f)
    }

    /// Registers a function that returns `Result`; an `Err(e)` resolves the token as
    /// [`TokenError::Failed`] with `e.to_string()`.
    pub fn register_fallible<A, R, E, F>(
        &self,
        name: &str,
        weight: Weight,
        f: F,
    ) -> Result<Operation<A, R>, RegisterError>
    where
        A: Send + 'static,
        R: Send + 'static,
        E: std::fmt::Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        self.operation(name, weight).register_fallible(f)
    }

    /// Starts registering an operation with options.
    ///
    /// ```
    /// # let engine = tokengate::Engine::builder().build()?;
    /// let sort = engine
    ///     .operation("sort", tokengate::Weight::Medium)
    ///     .size_hint(|v: &Vec<u32>| v.len() as u64) // what the learned router sees
    ///     .register(|mut v: Vec<u32>| { v.sort_unstable(); v })?;
    /// assert_eq!(sort.submit(vec![3, 1, 2]).wait()?, vec![1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn operation<A>(&self, name: &str, weight: Weight) -> OperationBuilder<'_, A> {
        OperationBuilder {
            engine: self,
            name: name.to_string(),
            weight,
            options: OpOptions::default(),
        }
    }

    fn add_operation<A, R>(
        &self,
        name: &str,
        weight: Weight,
        options: OpOptions<A>,
        f: BoxFn<A, R>,
        dedupe: Option<Dedupe<A, R>>,
    ) -> Result<Operation<A, R>, RegisterError>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        let id = self.claim_name(name)?;
        self.shared.router.register_op(id, name);
        let op = Operation::new(Arc::clone(&self.shared), id, name, weight, options, f, dedupe);
        self.shared.ops.write().unwrap_or_else(|e| e.into_inner()).push(op.control());
        Ok(op)
    }

    fn claim_name(&self, name: &str) -> Result<u32, RegisterError> {
        if name.is_empty() || name.len() > 64 {
            return Err(RegisterError::BadName(name.to_string()));
        }
        let mut names = self.shared.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.contains_key(name) {
            return Err(RegisterError::DuplicateName(name.to_string()));
        }
        let id = names.len() as u32;
        names.insert(name.to_string(), id);
        self.shared.op_names.write().unwrap_or_else(|e| e.into_inner()).push(name.to_string());
        Ok(id)
    }

    /// What the telemetry has recorded, dropped and written so far (final after
    /// [`Engine::shutdown`]); `None` when logging is off.
    pub fn telemetry_stats(&self) -> Option<TelemetryStats> {
        self.shared.lanes.telemetry().map(|t| t.stats())
    }

    /// The records kept by [`EngineBuilder::log_in_memory`], available after shutdown.
    pub fn take_records(&self) -> Vec<TokenRecord> {
        self.shared.lanes.telemetry().map(|t| t.take_records()).unwrap_or_default()
    }

    /// The router's model fingerprint (0 when routing without a model).
    pub fn model_version(&self) -> u32 {
        self.shared.router.model_version()
    }

    /// How each lane was set up (core, pinning, affinity mask read back in the thread).
    pub fn lanes(&self) -> Vec<LaneInfo> {
        self.shared.lanes.infos()
    }

    /// Tokens and batches each lane has processed so far.
    pub fn lane_stats(&self) -> Vec<LaneStats> {
        self.shared.lanes.stats()
    }

    /// The admission capacity.
    pub fn capacity(&self) -> usize {
        self.shared.admission.capacity()
    }

    /// Tokens admitted and not yet processed.
    pub fn in_flight(&self) -> usize {
        self.shared.admission.in_flight()
    }

    /// Estimated bytes those tokens hold (see [`EngineBuilder::memory_capacity`]).
    pub fn memory_in_flight(&self) -> usize {
        self.shared.admission.memory()
    }

    /// A handle to the engine's own tokio runtime (one thread), for async callers that
    /// have none and for the engine's background services.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("runtime lives until drop").handle()
    }

    /// Runs a future to completion on the engine's runtime, blocking this thread.
    ///
    /// # Panics
    /// When called from inside an async context (tokio forbids nested `block_on`).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle().block_on(future)
    }

    /// Drains and stops: rejects new work, lets every admitted token finish, joins the
    /// lanes. Idempotent; also run by `Drop`.
    pub fn shutdown(&self) {
        self.shutdown_with(Shutdown::Drain);
    }

    /// Stops the engine: new work is rejected at once, then
    /// * [`Shutdown::Drain`] runs everything admitted (retries included);
    /// * [`Shutdown::Abort`] resolves everything still waiting as
    ///   `Cancelled { by: Shutdown }` and waits only for running calls, which their
    ///   deadlines bound (a lane stuck past a deadline is abandoned, not joined).
    ///
    /// Either way every token resolves, the lanes are joined and the telemetry's last
    /// segment is written before this returns. Calling it again does nothing.
    pub fn shutdown_with(&self, mode: Shutdown) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
        self.stop_handle().begin(mode);
        self.shared.lanes.join();
        // Every lane has flushed its records; let the writer finish the last segment.
        if let Some(telemetry) = self.shared.lanes.telemetry() {
            telemetry.finish();
        }
        *stopped = true;
    }

    /// A handle that starts a shutdown from anywhere (a signal handler, another
    /// thread) without waiting for it; [`Engine::shutdown_with`] then completes it.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { shared: Arc::clone(&self.shared) }
    }

    /// A handle for manual control (pause, resume, pin, batch, stats) usable from any
    /// thread; the control port uses the same one.
    pub fn controller(&self) -> Controller {
        Controller { shared: Arc::clone(&self.shared) }
    }

    /// Pauses one operation (`Some(name)`) or all; see [`Controller::pause`].
    pub fn pause(&self, op: Option<&str>) -> Result<(), ControlError> {
        self.controller().pause(op)
    }

    /// Releases what [`Engine::pause`] held.
    pub fn resume(&self, op: Option<&str>) -> Result<(), ControlError> {
        self.controller().resume(op)
    }

    /// Every operation's counters and overrides, in registration order.
    pub fn op_stats(&self) -> Vec<(String, OpStats, Overrides)> {
        self.controller().op_stats()
    }

    /// The address the control port listens on, when it was started.
    pub fn control_addr(&self) -> Option<std::net::SocketAddr> {
        self.control_addr
    }

    /// True once a shutdown has begun (new work is rejected).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.admission.is_closed()
    }

    /// Lanes replaced because a call overran its deadline (their old threads retire
    /// when the call returns).
    pub fn stuck_workers(&self) -> u64 {
        self.shared.lanes.replaced()
    }
}

/// Manual control of a running engine: what the control port calls, available to
/// Rust callers too. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

impl Controller {
    /// Pauses one operation (`Some(name)`) or all: admitted work of it waits, keeping
    /// its place in admission, until [`Engine::resume`]. Nothing is lost.
    pub fn pause(&self, op: Option<&str>) -> Result<(), ControlError> {
        self.set_paused(op, true)
    }

    /// Releases what [`Engine::pause`] held.
    pub fn resume(&self, op: Option<&str>) -> Result<(), ControlError> {
        self.set_paused(op, false)
    }

    fn set_paused(&self, op: Option<&str>, paused: bool) -> Result<(), ControlError> {
        match op {
            Some(name) => self.op_control(name)?.set_paused(paused),
            None => {
                self.shared.paused_all.store(paused, std::sync::atomic::Ordering::SeqCst);
                if !paused {
                    // Resuming all resumes every operation, also those paused one by one.
                    for op in self.shared.ops.read().unwrap_or_else(|e| e.into_inner()).iter() {
                        op.set_paused(false);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends every new token of `op` to this lane set (`None`: back to the router).
    pub fn pin(&self, op: &str, lanes: Option<LaneSet>) -> Result<(), ControlError> {
        self.op_control(op)?.set_pin(lanes);
        Ok(())
    }

    /// Batches every new token of `op` this many at a time (`None`: back to the router).
    pub fn force_batch(&self, op: &str, batch: Option<u32>) -> Result<(), ControlError> {
        if batch == Some(0) || batch.is_some_and(|b| b > crate::model::MAX_BATCH) {
            return Err(ControlError::BadValue(format!(
                "batch size must be 1..={}",
                crate::model::MAX_BATCH
            )));
        }
        self.op_control(op)?.set_batch(batch);
        Ok(())
    }

    /// Limits how many tokens of `op` run at once (`None`: no limit).
    pub fn throttle(&self, op: &str, limit: Option<u32>) -> Result<(), ControlError> {
        if limit == Some(0) {
            return Err(ControlError::BadValue("throttle limit must be at least 1".into()));
        }
        self.op_control(op)?.set_throttle(limit);
        Ok(())
    }

    /// Cancels every token of `op` admitted so far that has not started; they resolve as
    /// `Cancelled { by: Control }`. Returns how many waiting behind a pause or throttle
    /// it cancelled at once (the rest are cancelled as their lane reaches them).
    pub fn cancel_waiting(&self, op: &str) -> Result<u64, ControlError> {
        Ok(self.op_control(op)?.cancel_waiting())
    }

    /// Cancels the token with this id if it has not started by the time a lane reaches
    /// it.
    pub fn cancel_token(&self, id: u64) -> Result<(), ControlError> {
        if id == 0 || id >= self.shared.next_token_id.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ControlError::BadValue(format!("no token {id} has been submitted")));
        }
        let mut ids = self.shared.cancel_ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.len() >= MAX_PENDING_CANCELS {
            return Err(ControlError::BadValue("too many cancels pending".into()));
        }
        ids.insert(id);
        self.shared.cancel_ids_pending.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Per operation: batches running now and end-to-end latency p50/p99 (ns).
    pub fn op_activity(&self) -> Vec<(u32, u64, u64)> {
        let ops = self.shared.ops.read().unwrap_or_else(|e| e.into_inner());
        ops.iter()
            .map(|op| {
                let latency = op.latency(&[0.5, 0.99]);
                (op.running(), latency[0], latency[1])
            })
            .collect()
    }

    /// Drops every override of one operation (`Some(name)`) or of all.
    pub fn clear_overrides(&self, op: Option<&str>) -> Result<(), ControlError> {
        let ops: Vec<Arc<dyn OpControl>> = match op {
            Some(name) => vec![self.op_control(name)?],
            None => {
                self.shared.paused_all.store(false, std::sync::atomic::Ordering::SeqCst);
                self.shared.ops.read().unwrap_or_else(|e| e.into_inner()).clone()
            }
        };
        for op in ops {
            op.set_pin(None);
            op.set_batch(None);
            op.set_throttle(None);
            op.set_paused(false);
        }
        Ok(())
    }

    /// Every operation's counters and overrides, in registration order.
    pub fn op_stats(&self) -> Vec<(String, OpStats, Overrides)> {
        let ops = self.shared.ops.read().unwrap_or_else(|e| e.into_inner());
        ops.iter().map(|op| (op.name().to_string(), op.stats(), op.overrides())).collect()
    }

    fn op_control(&self, name: &str) -> Result<Arc<dyn OpControl>, ControlError> {
        let ops = self.shared.ops.read().unwrap_or_else(|e| e.into_inner());
        ops.iter()
            .find(|op| op.name() == name)
            .cloned()
            .ok_or_else(|| ControlError::UnknownOp(name.to_string()))
    }

    /// Starts a shutdown (see [`StopHandle::begin`]).
    pub fn shutdown(&self, mode: Shutdown) {
        StopHandle { shared: Arc::clone(&self.shared) }.begin(mode);
    }

    /// True once a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.admission.is_closed()
    }
}

/// A manual control request the engine refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No operation has this name.
    #[error("no operation named {0:?}")]
    UnknownOp(String),
    /// A value is out of range.
    #[error("{0}")]
    BadValue(String),
}

/// How [`Engine::shutdown_with`] treats admitted work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Finish everything admitted.
    Drain,
    /// Cancel everything waiting; wait only for running calls.
    Abort,
}

/// Starts a shutdown without waiting for it; from [`Engine::stop_handle`].
#[derive(Clone)]
pub struct StopHandle {
    shared: Arc<Shared>,
}

impl StopHandle {
    /// Rejects new work from now on and, for [`Shutdown::Abort`], cancels queued work.
    /// Escalating a drain to an abort is allowed; the reverse is not.
    pub fn begin(&self, mode: Shutdown) {
        self.shared.admission.close();
        if mode == Shutdown::Abort {
            self.shared.lanes.begin_abort();
        }
        // Paused work is admitted work: a drain runs it, an abort cancels it.
        self.shared.paused_all.store(false, std::sync::atomic::Ordering::SeqCst);
        for op in self.shared.ops.read().unwrap_or_else(|e| e.into_inner()).iter() {
            op.set_paused(false);
        }
        self.shared.lanes.begin_shutdown();
    }
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle").finish_non_exhaustive()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("lanes", &self.shared.lanes.len())
            .field("capacity", &self.capacity())
            .field("in_flight", &self.in_flight())
            .field("router", &self.shared.router)
            .finish()
    }
}
