//! The engine: its handle, lifecycle and shutdown; `builder.rs` configures and starts it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod builder;

pub use builder::EngineBuilder;

use crate::adapt::AdaptStatus;
use crate::adapt::Adapter;
use crate::control::{ControlError, Controller, OpStats, Overrides};
use crate::error::RegisterError;
use crate::lanes::{LaneInfo, LaneStats};
use crate::op::{OpEnv, Registry, Shutdown, Stopper};
use crate::op::{Operation, OperationBuilder};
use crate::placement::Weight;
use crate::telemetry::{TelemetryStats, TokenRecord};

/// A snapshot of an engine's counters, from [`Engine::stats`]: one read of each, so
/// the fields are each current but not taken at one instant together.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineStats {
    /// The admission capacity (tokens).
    pub capacity: usize,
    /// Tokens admitted and not yet processed.
    pub in_flight: usize,
    /// Estimated bytes those tokens hold (see [`EngineBuilder::memory_capacity`]).
    pub memory_in_flight: usize,
    /// True once a shutdown has begun (new work is rejected).
    pub shutting_down: bool,
    /// The router's model fingerprint (0 when routing without a model).
    pub model_version: u32,
    /// Tokens and batches each lane has processed so far.
    pub lanes: Vec<LaneStats>,
    /// Tokens run by callers outside the lanes while they waited on a token and the
    /// lanes were backlogged (not counted in `lanes`).
    pub caller_tokens: u64,
    /// Lanes replaced because a call overran its deadline (their old threads retire
    /// when the call returns).
    pub stuck_lanes: u64,
    /// Times the heavy lanes were found starved by threads that are not the engine's
    /// (another process, the caller's own) and the light lanes took heavy work until it
    /// passed (docs/lanes.md, "Starved by strangers"). Always 0 under the pinned split.
    pub rescues: u64,
    /// Every operation's name, counters and overrides, in registration order.
    pub operations: Vec<(String, OpStats, Overrides)>,
    /// What the telemetry has recorded, dropped and written so far (final after
    /// [`Engine::shutdown`]); `None` when logging is off.
    pub telemetry: Option<TelemetryStats>,
    /// What online adaptation has done so far (`None` without
    /// [`EngineBuilder::adapt`]).
    pub adaptation: Option<AdaptStatus>,
    /// What the link to remote workers has done, when the engine has one.
    pub remote: Option<crate::remote::RemoteStats>,
}

/// Runs registered operations as tokens on core-pinned lanes.
///
/// Dropping the engine drains it: everything admitted runs, new work is rejected,
/// and the lane threads are joined.
pub struct Engine {
    /// What its operations' calls reach: admission, lanes, router, token index.
    pub(super) env: Arc<OpEnv>,
    /// Its operations by name.
    registry: Arc<Registry>,
    adapter: Option<Arc<Adapter>>,
    /// Set once the lanes have been joined.
    stopped: Mutex<bool>,
    pub(super) control_addr: Option<std::net::SocketAddr>,
    pub(super) runtime: Option<tokio::runtime::Runtime>,
    started: Instant,
}

impl Engine {
    fn new(
        env: Arc<OpEnv>,
        registry: Arc<Registry>,
        adapter: Option<Arc<Adapter>>,
        runtime: tokio::runtime::Runtime,
    ) -> Self {
        Engine {
            env,
            registry,
            adapter,
            stopped: Mutex::new(false),
            runtime: Some(runtime),
            control_addr: None,
            started: Instant::now(),
        }
    }

    /// Registers an infallible function as an operation.
    ///
    /// A panic inside `f` resolves that token as
    /// [`TokenError::Panicked`](crate::TokenError::Panicked); the lane keeps serving. For
    /// options (a size hint for the router), use
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
    /// [`TokenError::Failed`](crate::TokenError::Failed) with `e.to_string()`.
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
        OperationBuilder::new(&self.env, &self.registry, name, weight)
    }

    /// A snapshot of the engine's counters: admission, lanes, operations, telemetry,
    /// adaptation and the remote link.
    ///
    /// ```
    /// # let engine = tokengate::Engine::builder().build()?;
    /// let square = engine.register("square", tokengate::Weight::Light, |x: u64| x * x)?;
    /// square.submit(3).wait()?;
    /// // Counters are updated as batches end: exact once the engine has stopped.
    /// engine.shutdown();
    /// let stats = engine.stats();
    /// assert_eq!(stats.in_flight, 0);
    /// assert_eq!(stats.operations[0].1.completed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> EngineStats {
        let env = &self.env;
        EngineStats {
            capacity: env.admission.capacity(),
            in_flight: env.admission.in_flight(),
            memory_in_flight: env.admission.memory(),
            shutting_down: env.admission.is_closed(),
            model_version: env.router.model_version(),
            lanes: env.lanes.stats(),
            caller_tokens: env.lanes.by_callers(),
            stuck_lanes: env.lanes.replaced(),
            rescues: env.lanes.rescues(),
            operations: self.controller().op_stats(),
            telemetry: env.lanes.telemetry().map(|t| t.stats()),
            adaptation: self.adapter.as_ref().map(|a| a.status()),
            remote: env.remote.get().map(|link| link.stats()),
        }
    }

    /// What the telemetry has recorded, dropped and written so far (final after
    /// [`Engine::shutdown`]); `None` when logging is off.
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().telemetry`")]
    pub fn telemetry_stats(&self) -> Option<TelemetryStats> {
        self.env.lanes.telemetry().map(|t| t.stats())
    }

    /// The records kept by [`EngineBuilder::log_in_memory`], available after shutdown.
    pub fn take_records(&self) -> Vec<TokenRecord> {
        self.env.lanes.telemetry().map(|t| t.take_records()).unwrap_or_default()
    }

    /// The router's model fingerprint (0 when routing without a model).
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().model_version`")]
    pub fn model_version(&self) -> u32 {
        self.env.router.model_version()
    }

    /// How each lane was set up (core, pinning, affinity mask read back in the thread).
    pub fn lanes(&self) -> Vec<LaneInfo> {
        self.env.lanes.infos()
    }

    /// Tokens and batches each lane has processed so far.
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().lanes`")]
    pub fn lane_stats(&self) -> Vec<LaneStats> {
        self.env.lanes.stats()
    }

    /// The admission capacity.
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().capacity`")]
    pub fn capacity(&self) -> usize {
        self.env.admission.capacity()
    }

    /// Tokens admitted and not yet processed.
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().in_flight`")]
    pub fn in_flight(&self) -> usize {
        self.env.admission.in_flight()
    }

    /// Estimated bytes those tokens hold (see [`EngineBuilder::memory_capacity`]).
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().memory_in_flight`")]
    pub fn memory_in_flight(&self) -> usize {
        self.env.admission.memory()
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
        self.env.lanes.join();
        if let Some(adapter) = &self.adapter {
            adapter.stop();
        }
        // Every lane has flushed its records; let the writer finish the last segment.
        if let Some(telemetry) = self.env.lanes.telemetry() {
            telemetry.finish();
        }
        *stopped = true;
        self.log_stopped();
    }

    /// One event for the start: lanes, pinning, router, capacity, control port.
    pub(super) fn log_started(&self) {
        let lanes = self.lanes();
        let heavy = lanes.iter().filter(|l| l.set == crate::LaneSet::Heavy).count();
        let pinned: Vec<usize> = lanes.iter().filter(|l| l.pinned).filter_map(|l| l.core).collect();
        let pinning = if pinned.len() == lanes.len() {
            format!("pinned to cores {pinned:?}")
        } else if pinned.is_empty() {
            "unpinned".to_string()
        } else {
            format!("{} pinned to cores {pinned:?}, the rest unpinned", pinned.len())
        };
        let lowered = lanes.iter().find(|l| l.priority != crate::placement::LanePriority::Normal);
        let pinning = match lowered {
            Some(lane) => format!("{pinning}; heavy lanes at {} priority", lane.priority),
            None => pinning,
        };
        let model = match self.env.router.model_version() {
            0 => "no model".to_string(),
            version => format!("model {version:08x}"),
        };
        let control = self.control_addr.map(|a| format!(", control port {a}")).unwrap_or_default();
        tracing::info!(
            "engine started: {} lanes ({heavy} heavy), {pinning}; {model}; capacity {}{control}",
            lanes.len(),
            self.env.admission.capacity()
        );
    }

    fn log_stopped(&self) {
        let stats = self.stats();
        let tokens = stats.lanes.iter().map(|s| s.tokens).sum::<u64>() + stats.caller_tokens;
        let secs = self.started.elapsed().as_secs_f64();
        let telemetry = match &stats.telemetry {
            Some(t) if !t.files.is_empty() || t.dropped > 0 => format!(
                "; telemetry: {} rows in {} segments, {} dropped",
                t.written,
                t.files.len(),
                t.dropped
            ),
            _ => String::new(),
        };
        let rescues = match stats.rescues {
            0 => String::new(),
            n => format!(", heavy lanes starved by other threads {n} times (rescued)"),
        };
        tracing::info!(
            "engine stopped: {tokens} tokens in {secs:.3} s, {} stuck lanes \
             replaced{rescues}{telemetry}",
            stats.stuck_lanes
        );
    }

    fn stopper(&self) -> Stopper {
        Stopper {
            admission: Arc::clone(&self.env.admission),
            lanes: Arc::clone(&self.env.lanes),
            remote: Arc::clone(&self.env.remote),
            registry: Arc::clone(&self.registry),
        }
    }

    /// A handle that starts a shutdown from anywhere (a signal handler, another
    /// thread) without waiting for it; [`Engine::shutdown_with`] then completes it.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { stopper: self.stopper() }
    }

    /// A handle for manual control (pause, resume, pin, batch, stats) usable from any
    /// thread; the control port uses the same one.
    pub fn controller(&self) -> Controller {
        Controller::new(Arc::clone(&self.registry), &self.env, self.adapter.clone(), self.stopper())
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
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().operations`")]
    pub fn op_stats(&self) -> Vec<(String, OpStats, Overrides)> {
        self.controller().op_stats()
    }

    /// The address the control port listens on, when it was started.
    pub fn control_addr(&self) -> Option<std::net::SocketAddr> {
        self.control_addr
    }

    /// True once a shutdown has begun (new work is rejected).
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().shutting_down`")]
    pub fn is_shutting_down(&self) -> bool {
        self.env.admission.is_closed()
    }

    /// Lanes replaced because a call overran its deadline (their old threads retire
    /// when the call returns).
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().stuck_lanes`")]
    pub fn stuck_workers(&self) -> u64 {
        self.env.lanes.replaced()
    }

    /// What online adaptation has done so far (`None` without
    /// [`EngineBuilder::adapt`]).
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().adaptation`")]
    pub fn adapt_status(&self) -> Option<AdaptStatus> {
        self.adapter.as_ref().map(|a| a.status())
    }

    /// Tokens run by callers outside the lanes while they waited on a token and the
    /// lanes were backlogged (not counted in [`EngineStats::lanes`]).
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().caller_tokens`")]
    pub fn caller_tokens(&self) -> u64 {
        self.env.lanes.by_callers()
    }

    /// What the link to remote workers has done, when the engine has one
    /// (`EngineBuilder::nats`, feature `nats`).
    #[deprecated(since = "0.2.0", note = "use `Engine::stats().remote`")]
    pub fn remote_stats(&self) -> Option<crate::remote::RemoteStats> {
        self.env.remote.get().map(|link| link.stats())
    }

    /// Marks this engine's telemetry rows as a remote worker's (column `worker`).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn set_worker_id(&self, id: &str) {
        if let Some(telemetry) = self.env.lanes.telemetry() {
            let _ = telemetry.origin.worker.set(id.to_string());
        }
    }

    /// The remote-capable operations, which a [`Worker`](crate::remote) serves.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn served_ops(&self) -> Vec<std::sync::Arc<dyn crate::remote::RemoteServe>> {
        self.registry.served()
    }
}

/// Starts a shutdown without waiting for it; from [`Engine::stop_handle`].
#[derive(Clone)]
pub struct StopHandle {
    stopper: Stopper,
}

impl StopHandle {
    /// Rejects new work from now on and, for [`Shutdown::Abort`], cancels queued work.
    /// Escalating a drain to an abort is allowed; the reverse is not.
    pub fn begin(&self, mode: Shutdown) {
        self.stopper.begin(mode);
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
        self.registry.clear();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("lanes", &self.env.lanes.len())
            .field("capacity", &self.env.admission.capacity())
            .field("in_flight", &self.env.admission.in_flight())
            .field("router", &self.env.router)
            .finish()
    }
}
