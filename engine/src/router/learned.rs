//! The learned router: the cost model's predicted class decides the placement.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{Features, LaneSet, Placement, RouteSource, Router, StaticRouter};
use crate::features::model_inputs;
use crate::model::Model;

/// Most operations a learned router maps (ids beyond it fall back to tags).
pub const MAX_OPS: usize = 4_096;
const UNKNOWN_OP: u32 = u32::MAX;

/// Places each token by the class a fitted cost model predicts from its features;
/// operations the model never saw fall back to their tags.
#[derive(Debug)]
pub struct LearnedRouter {
    model: Model,
    /// Engine op id → the model's vocabulary index.
    op_index: Box<[AtomicU32]>,
    /// Class id → placement, copied out of the header for a short hot path.
    placements: Box<[(LaneSet, u32)]>,
    fallback: StaticRouter,
}

impl LearnedRouter {
    /// A router over `model`, with `fallback` for unknown operations.
    pub fn new(model: Model, fallback: StaticRouter) -> Self {
        let placements = model.header().classes.iter().map(|c| (c.lanes, c.batch)).collect();
        let op_index = (0..MAX_OPS).map(|_| AtomicU32::new(UNKNOWN_OP)).collect();
        LearnedRouter { model, op_index, placements, fallback }
    }

    /// The model it predicts with.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl Router for LearnedRouter {
    #[inline]
    fn route(&self, features: &Features) -> Placement {
        let index = match self.op_index.get(features.op as usize) {
            Some(slot) => slot.load(Ordering::Relaxed),
            None => UNKNOWN_OP,
        };
        if index == UNKNOWN_OP {
            return self.fallback.route(features);
        }
        let (class, predicted_ns) =
            self.model.predict_cost(&model_inputs(index, features.arg_size));
        let (lanes, batch) = self.placements[class];
        let class = Some(class as u8);
        Placement { lanes, batch, class, predicted_ns, source: RouteSource::Model }
    }

    fn register_op(&self, op: u32, name: &str) {
        if let (Some(slot), Some(index)) =
            (self.op_index.get(op as usize), self.model.op_index(name))
        {
            slot.store(index, Ordering::Relaxed);
        }
    }

    fn model_version(&self) -> u32 {
        self.model.version()
    }

    fn remote_min_ns(&self) -> Option<u64> {
        self.model.remote_min_ns()
    }

    fn classes(&self) -> Vec<crate::model::ClassPolicy> {
        self.model.header().classes.clone()
    }

    fn is_pure(&self) -> bool {
        true
    }
}
