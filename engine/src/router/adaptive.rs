//! The adaptive router: the learned router whose model is swapped, while the engine
//! runs, for one re-fitted on recent telemetry (`adapt.rs`). A swap is one atomic
//! pointer store (`arc-swap`); routing loads the current router without a lock or a
//! reference-count update.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;

use super::{Features, LearnedRouter, Placement, Router, StaticRouter};
use crate::model::Model;

/// A [`LearnedRouter`] whose model can be replaced at any time.
#[derive(Debug)]
pub struct AdaptiveRouter {
    current: ArcSwap<LearnedRouter>,
    fallback: StaticRouter,
    /// Operation names by engine id, to register them with each new model.
    ops: RwLock<Vec<(u32, String, Vec<String>)>>,
    /// Models swapped in so far (0: the starting one).
    generation: AtomicU32,
    /// The starting model's fitted remote overhead.
    base_remote_ns: Option<u64>,
}

impl AdaptiveRouter {
    /// Starts with `model`; operations it does not know fall back to `fallback`.
    pub fn new(model: Model, fallback: StaticRouter) -> Self {
        AdaptiveRouter {
            base_remote_ns: model.remote_min_ns(),
            current: ArcSwap::from_pointee(LearnedRouter::new(model, fallback)),
            fallback,
            ops: RwLock::new(Vec::new()),
            generation: AtomicU32::new(0),
        }
    }

    /// The model routing now.
    pub fn model(&self) -> Model {
        self.current.load().model().clone()
    }

    /// Models swapped in since the start.
    pub fn swaps(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Routes with `model` from now on.
    pub fn swap(&self, model: Model) {
        self.swap_router(Arc::new(LearnedRouter::new(model, self.fallback)));
    }

    /// The learned router routing now (the cost watch may have moved some of its cells).
    pub(crate) fn current(&self) -> Arc<LearnedRouter> {
        self.current.load_full()
    }

    /// A learned router over `model` that knows this router's operations.
    pub(crate) fn router_for(&self, model: Model) -> LearnedRouter {
        let router = LearnedRouter::new(model, self.fallback);
        for (id, name, cost) in self.ops.read().unwrap_or_else(|e| e.into_inner()).iter() {
            router.register_op(*id, name, cost);
        }
        router
    }

    /// The engine ids of the operations registered so far.
    pub(crate) fn op_ids(&self) -> Vec<u32> {
        self.ops.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(id, ..)| *id).collect()
    }

    /// Routes with `router` (from [`AdaptiveRouter::router_for`]) from now on.
    pub(crate) fn swap_router(&self, router: Arc<LearnedRouter>) {
        // Under the lock `register_op` takes: an operation registered since
        // `router_for` is in the new router too.
        let ops = self.ops.read().unwrap_or_else(|e| e.into_inner());
        for (id, name, cost) in ops.iter() {
            router.register_op(*id, name, cost);
        }
        self.current.store(router);
        drop(ops);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

impl Router for AdaptiveRouter {
    #[inline]
    fn route(&self, features: &Features) -> Placement {
        self.current.load().route(features)
    }

    fn register_op(&self, op: u32, name: &str, cost_features: &[String]) {
        let mut ops = self.ops.write().unwrap_or_else(|e| e.into_inner());
        ops.push((op, name.to_string(), cost_features.to_vec()));
        self.current.load().register_op(op, name, cost_features);
    }

    /// The current model's remote overhead, else the starting model's: re-fits see no
    /// remote runs (their rows are not run times), so they keep the fitted threshold.
    fn remote_min_ns(&self) -> Option<u64> {
        self.current.load().remote_min_ns().or(self.base_remote_ns)
    }

    /// Raised by every swap: the swap count in the top byte, the model's fingerprint
    /// below it.
    fn model_version(&self) -> u32 {
        let generation = self.generation.load(Ordering::Relaxed).min(255);
        (generation << 24) | (self.current.load().model_version() & 0x00FF_FFFF)
    }

    fn classes(&self) -> Vec<crate::model::ClassPolicy> {
        self.current.load().classes()
    }

    fn is_pure(&self) -> bool {
        true
    }
}
