//! Manual control of a running engine: the [`Controller`] (usable from Rust), the
//! typed wire [`protocol`], and the authenticated server on one port: the WebSocket
//! that speaks it (`server.rs`, `session.rs`), the dashboard (`dashboard.rs`, `assets/`)
//! and `/metrics` (`metrics.rs`).
//!
//! Each operation's overrides and live counters live with the operation
//! (`op/control.rs`); the lanes read them once per batch. Overrides beat the model,
//! which beats the declared tags.

use std::sync::Arc;

mod dashboard;
mod metrics;
pub mod protocol;
mod server;
mod session;

pub use crate::op::control::{OpStats, Overrides};
pub(crate) use server::{bind, start, ControlConfig};
pub use server::{
    generate_secret, MAX_CONNECTIONS, MAX_MESSAGE_BYTES, MAX_TCP_CONNECTIONS, SESSION_COOKIE,
};

use crate::adapt::Adapter;
use crate::error::CancelSource;
use crate::lanes::Lanes;
use crate::op::control::OpControl;
use crate::op::{OpEnv, Registry, SetLatency, Shutdown, Stopper};
use crate::placement::LaneSet;
use crate::router::Router;
use crate::telemetry::histogram::LATENCY_BUCKETS;
use crate::token::TokenIndex;
use protocol::{
    ClassSnapshot, EngineSnapshot, LaneSnapshot, ModelSnapshot, OpSnapshot, RecentToken,
};

/// Manual control of a running engine: what the control port calls, available to Rust
/// callers too (from [`Engine::controller`](crate::Engine::controller)). Cheap to clone.
///
/// ```
/// use tokengate::{Engine, LaneSet, Weight};
/// let engine = Engine::builder().build()?;
/// let square = engine.register("square", Weight::Light, |x: u64| x * x)?;
/// let control = engine.controller();
/// control.pin("square", Some(LaneSet::Heavy))?;
/// assert_eq!(square.overrides().pin, Some(LaneSet::Heavy));
/// assert!(control.pin("nope", None).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Controller {
    registry: Arc<Registry>,
    lanes: Arc<Lanes>,
    router: Arc<dyn Router>,
    tokens: Arc<TokenIndex>,
    set_latency: SetLatency,
    adapter: Option<Arc<Adapter>>,
    stopper: Stopper,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
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
    /// The token is not waiting: it is running, finished, already cancelled, or no
    /// token has this id.
    #[error("token {0} is not waiting (running, finished, already cancelled, or unknown)")]
    NotWaiting(u64),
}

impl Controller {
    /// A controller of the operations in `registry`, which run in `env`.
    pub(crate) fn new(
        registry: Arc<Registry>,
        env: &OpEnv,
        adapter: Option<Arc<Adapter>>,
        stopper: Stopper,
    ) -> Self {
        Controller {
            registry,
            lanes: Arc::clone(&env.lanes),
            router: Arc::clone(&env.router),
            tokens: Arc::clone(&env.tokens),
            set_latency: Arc::clone(&env.set_latency),
            adapter,
            stopper,
        }
    }

    fn op(&self, name: &str) -> Result<Arc<dyn OpControl>, ControlError> {
        self.registry.op(name).ok_or_else(|| ControlError::UnknownOp(name.to_string()))
    }

    /// Pauses one operation (`Some(name)`) or all: admitted work of it waits, keeping
    /// its place in admission, until a resume. Nothing is lost.
    pub fn pause(&self, op: Option<&str>) -> Result<(), ControlError> {
        self.set_paused(op, true)
    }

    /// Releases what [`Controller::pause`] held (`None`: every operation, also those
    /// paused one by one).
    pub fn resume(&self, op: Option<&str>) -> Result<(), ControlError> {
        self.set_paused(op, false)
    }

    fn set_paused(&self, op: Option<&str>, paused: bool) -> Result<(), ControlError> {
        match op {
            Some(name) => self.op(name)?.control().set_paused(paused, &self.lanes),
            None => self.registry.set_paused_all(paused, &self.lanes),
        }
        Ok(())
    }

    /// Sends every new token of `op` to this lane set (`None`: back to the router).
    pub fn pin(&self, op: &str, lanes: Option<LaneSet>) -> Result<(), ControlError> {
        self.op(op)?.control().set_pin(lanes);
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
        self.op(op)?.control().set_batch(batch);
        Ok(())
    }

    /// Limits how many tokens of `op` run at once (`None`: no limit). Batches waiting
    /// for a slot run in the order they reached it.
    pub fn throttle(&self, op: &str, limit: Option<u32>) -> Result<(), ControlError> {
        if limit == Some(0) {
            return Err(ControlError::BadValue("throttle limit must be at least 1".into()));
        }
        self.op(op)?.control().set_throttle(limit, &self.lanes);
        Ok(())
    }

    /// Cancels every token of `op` admitted so far that has not started; they resolve as
    /// `Cancelled { by: Control }`. Returns how many waiting behind a pause or throttle
    /// it cancelled at once (the rest are cancelled as their lane reaches them).
    pub fn cancel_waiting(&self, op: &str) -> Result<u64, ControlError> {
        let op = self.op(op)?;
        let before = self.tokens.next_id();
        let held = op.control().cancel_before(before);
        let count = held.iter().map(|job| job.len() as u64).sum();
        for job in held {
            job.cancel_all(CancelSource::Control);
        }
        Ok(count)
    }

    /// Cancels the token with this id now, if it is waiting (admitted, not started); it
    /// resolves as `Cancelled { by: Control }`. Otherwise
    /// [`ControlError::NotWaiting`]: nothing is left pending.
    pub fn cancel_token(&self, id: u64) -> Result<(), ControlError> {
        if self.tokens.cancel(id, CancelSource::Control) {
            Ok(())
        } else {
            Err(ControlError::NotWaiting(id))
        }
    }

    /// Drops every override of one operation (`Some(name)`) or of all.
    pub fn clear_overrides(&self, op: Option<&str>) -> Result<(), ControlError> {
        let ops = match op {
            Some(name) => vec![self.op(name)?],
            None => {
                self.registry.set_paused_all(false, &self.lanes);
                self.registry.ops()
            }
        };
        for op in ops {
            let control = op.control();
            control.set_pin(None);
            control.set_batch(None);
            control.set_throttle(None, &self.lanes);
            control.set_paused(false, &self.lanes);
        }
        Ok(())
    }

    /// Every operation's counters and overrides, in registration order.
    pub fn op_stats(&self) -> Vec<(String, OpStats, Overrides)> {
        let ops = self.registry.ops();
        ops.iter().map(|op| (op.name().to_string(), op.stats(), op.control().overrides())).collect()
    }

    /// Every operation's live numbers, in registration order (`throughput` is `None`: it
    /// needs an earlier snapshot; the control port fills it per connection).
    pub fn snapshot(&self) -> Vec<OpSnapshot> {
        self.registry
            .ops()
            .iter()
            .map(|op| {
                let stats = op.stats();
                let control = op.control();
                let running = u64::from(control.running());
                let [p50, p99] = control.latency().quantiles([0.5, 0.99]);
                OpSnapshot {
                    op: op.name().to_string(),
                    weight: Some(op.weight()),
                    submitted: stats.submitted,
                    waiting: stats.submitted.saturating_sub(stats.finished() + running),
                    running,
                    held: control.held(),
                    pin_unmet: stats.pin_unmet,
                    completed: stats.completed,
                    failed: stats.failed,
                    cancelled: stats.cancelled,
                    timed_out: stats.timed_out,
                    rejected: stats.rejected,
                    throughput: None,
                    p50_ms: p50 as f64 / 1e6,
                    p99_ms: p99 as f64 / 1e6,
                    overrides: control.overrides(),
                }
            })
            .collect()
    }

    /// The model routing now and what adaptation has done: for an engine without
    /// adaptation, only `model_version` is set.
    pub fn model_status(&self) -> crate::adapt::AdaptStatus {
        match &self.adapter {
            Some(adapter) => adapter.status(),
            None => crate::adapt::AdaptStatus {
                model_version: self.router.model_version(),
                ..Default::default()
            },
        }
    }

    /// Lanes (busy share 0: it needs an earlier snapshot) and the model, with the
    /// newest tokens the telemetry saw: what the dashboard shows beside the operations.
    pub(crate) fn engine_snapshot(&self) -> EngineSnapshot {
        let lanes = &self.lanes;
        let stats = lanes.stats();
        let lanes_now = lanes
            .infos()
            .into_iter()
            .zip(stats)
            .map(|(info, stats)| LaneSnapshot {
                lane: info.index,
                set: info.set,
                core: info.core.filter(|_| info.pinned),
                priority: Some(info.priority),
                tokens: stats.tokens,
                busy_share: 0.0,
            })
            .collect();
        let status = self.model_status();
        let classes = self.router.classes();
        let class_of = |run_ns: u64| {
            classes.iter().position(|c| run_ns >= c.min_ns && run_ns < c.max_ns).map(|c| c as u8)
        };
        let names = self.registry.op_names();
        let recent = lanes
            .telemetry()
            .map(|t| t.live.recent.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
            .into_iter()
            .rev()
            .map(|record| RecentToken {
                token: record.token_id,
                op: names.get(record.op as usize).map(|o| o.name.clone()).unwrap_or_default(),
                predicted: record.predicted_class,
                actual: class_of(record.run_ns),
                run_ns: record.run_ns,
                lane: record.lane,
            })
            .collect();
        let model = ModelSnapshot {
            version: status.model_version,
            swaps: status.swaps,
            adapting: status.enabled,
            classes: classes
                .iter()
                .map(|c| ClassSnapshot {
                    min_ns: c.min_ns,
                    max_ns: (c.max_ns != u64::MAX).then_some(c.max_ns),
                    lanes: c.lanes,
                    batch: c.batch,
                })
                .collect(),
            recent,
        };
        EngineSnapshot { lanes: lanes_now, model, sets: Vec::new() }
    }

    /// The latency histograms' counts by lane set (light, heavy, remote).
    pub(crate) fn set_latency_counts(&self) -> [[u64; LATENCY_BUCKETS]; 3] {
        std::array::from_fn(|set| self.set_latency[set].read().0)
    }

    /// Each lane's time spent running batches so far (ns).
    pub(crate) fn lane_busy_ns(&self) -> Vec<u64> {
        self.lanes.stats().iter().map(|s| s.busy_ns).collect()
    }

    /// Turns online re-fitting on or off.
    pub fn set_adapt(&self, on: bool) -> Result<(), ControlError> {
        let adapter = self.adapter.as_ref().ok_or_else(|| {
            ControlError::BadValue("this engine was built without adaptation".into())
        })?;
        adapter.set_enabled(on);
        Ok(())
    }

    /// Calls `f` with the new model version after every swap of online adaptation.
    pub(crate) fn on_model_swap(&self, f: impl Fn(u32) + Send + 'static) {
        if let Some(adapter) = &self.adapter {
            adapter.on_swap(f);
        }
    }

    /// Starts a shutdown without waiting for it (see
    /// [`StopHandle::begin`](crate::StopHandle::begin)).
    pub fn shutdown(&self, mode: Shutdown) {
        self.stopper.begin(mode);
    }

    /// True once a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.stopper.begun()
    }
}
