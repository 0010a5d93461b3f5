//! Routing: where a token runs and in how large a batch.
//!
//! A [`Router`] turns the [`Features`] seen at admission into a [`Placement`]. The
//! [`StaticRouter`] uses only the declared [`Weight`]; a learned router and manual
//! overrides sit behind the same trait.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::features::model_inputs;
use crate::model::{policy_for, Model};

/// The cost a user declares for an operation when registering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Weight {
    /// Sub-microsecond to a few microseconds: batched, spread over the light lanes.
    Light,
    /// Tens to hundreds of microseconds: small batches on the light lanes.
    Medium,
    /// Milliseconds or more: one at a time, on the heavy lanes.
    Heavy,
}

impl Weight {
    /// The lower-case name (`light`, `medium`, `heavy`).
    pub fn as_str(self) -> &'static str {
        match self {
            Weight::Light => "light",
            Weight::Medium => "medium",
            Weight::Heavy => "heavy",
        }
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Weight {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "light" => Ok(Weight::Light),
            "medium" => Ok(Weight::Medium),
            "heavy" => Ok(Weight::Heavy),
            other => Err(format!("unknown weight {other:?}: expected light, medium or heavy")),
        }
    }
}

/// A set of lanes (worker threads): the light set serves short work, the heavy set
/// keeps long work away from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneSet {
    /// Lanes that serve light and medium work.
    Light,
    /// Lanes reserved for heavy work.
    Heavy,
}

impl RouteSource {
    /// The lower-case name (`override`, `model`, `tag`, `heuristic`).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::Override => "override",
            RouteSource::Model => "model",
            RouteSource::Tag => "tag",
            RouteSource::Heuristic => "heuristic",
        }
    }
}

impl LaneSet {
    pub(crate) fn index(self) -> usize {
        match self {
            LaneSet::Light => 0,
            LaneSet::Heavy => 1,
        }
    }

    /// The lower-case name (`light`, `heavy`).
    pub fn as_str(self) -> &'static str {
        match self {
            LaneSet::Light => "light",
            LaneSet::Heavy => "heavy",
        }
    }
}

/// Which layer of routing made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteSource {
    /// A manual override from the control port.
    Override,
    /// The learned cost model.
    Model,
    /// The weight declared at registration.
    Tag,
    /// A rule of thumb without a model (the running-average router, the benchmark
    /// oracle).
    Heuristic,
}

/// What a router sees about a token at admission.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Features {
    /// The operation's engine-local id.
    pub op: u32,
    /// The declared weight.
    pub declared: Weight,
    /// The argument-size hint (0 when the operation has none).
    pub arg_size: u64,
    /// Tokens admitted and not yet processed, engine-wide, when the token arrived.
    pub queue_depth: u64,
    /// The operation's recent average runtime per token (ns; 0 before its first batch).
    pub op_recent_ns: u64,
}

impl Features {
    /// Features of a token of operation `op` with this weight and size hint, arriving at
    /// an idle engine (for custom routers' tests and benches).
    pub fn new(op: u32, declared: Weight, arg_size: u64) -> Self {
        Features { op, declared, arg_size, queue_depth: 0, op_recent_ns: 0 }
    }
}

/// Where and how a token runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The lane set whose queue receives it.
    pub lanes: LaneSet,
    /// Tokens per batch (≥ 1). A batch costs one queue operation.
    pub batch: u32,
    /// The predicted cost class, when a model made the decision.
    pub class: Option<u8>,
    /// Who decided.
    pub source: RouteSource,
}

/// Decides a [`Placement`] per token. Called on the submitting thread, once per token:
/// keep it cheap and lock-free.
pub trait Router: Send + Sync + fmt::Debug + 'static {
    /// The placement for one token.
    fn route(&self, features: &Features) -> Placement;

    /// Called once per operation at registration, before any of its tokens is routed.
    fn register_op(&self, _op: u32, _name: &str) {}

    /// The model fingerprint logged with each decision (0 when there is no model).
    fn model_version(&self) -> u32 {
        0
    }
}

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
        let class = self.model.predict(&model_inputs(index, features.arg_size));
        let (lanes, batch) = self.placements[class];
        Placement { lanes, batch, class: Some(class as u8), source: RouteSource::Model }
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
}

/// The no-model heuristic: places each token by its operation's running average
/// runtime (an exponentially weighted mean kept by the lanes), using the same policy
/// the trainer derives for a class with that typical runtime. Before an operation's
/// first batch finishes it uses the tag.
#[derive(Debug, Clone, Copy)]
pub struct EwmaRouter {
    fallback: StaticRouter,
}

impl EwmaRouter {
    /// A running-average router with `fallback` for operations not yet measured.
    pub fn new(fallback: StaticRouter) -> Self {
        EwmaRouter { fallback }
    }
}

impl Router for EwmaRouter {
    #[inline]
    fn route(&self, features: &Features) -> Placement {
        if features.op_recent_ns == 0 {
            return self.fallback.route(features);
        }
        let (lanes, batch) = policy_for(features.op_recent_ns);
        Placement { lanes, batch, class: None, source: RouteSource::Heuristic }
    }
}

/// Places by declared weight: light and medium on the light lanes (batched), heavy on
/// the heavy lanes one at a time.
#[derive(Debug, Clone, Copy)]
pub struct StaticRouter {
    light_batch: u32,
    medium_batch: u32,
}

impl StaticRouter {
    /// A router that batches light tokens `light_batch` at a time and medium ones an
    /// eighth of that (at least 1).
    pub fn new(light_batch: u32) -> Self {
        let light_batch = light_batch.max(1);
        StaticRouter { light_batch, medium_batch: (light_batch / 8).max(1) }
    }
}

impl Router for StaticRouter {
    #[inline]
    fn route(&self, features: &Features) -> Placement {
        let (lanes, batch) = match features.declared {
            Weight::Light => (LaneSet::Light, self.light_batch),
            Weight::Medium => (LaneSet::Light, self.medium_batch),
            Weight::Heavy => (LaneSet::Heavy, 1),
        };
        Placement { lanes, batch, class: None, source: RouteSource::Tag }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(declared: Weight) -> Features {
        Features { op: 0, declared, arg_size: 0, queue_depth: 0, op_recent_ns: 0 }
    }

    #[test]
    fn static_router_follows_tags() {
        let router = StaticRouter::new(64);
        assert_eq!(router.route(&features(Weight::Light)).lanes, LaneSet::Light);
        assert_eq!(router.route(&features(Weight::Light)).batch, 64);
        assert_eq!(router.route(&features(Weight::Medium)).batch, 8);
        let heavy = router.route(&features(Weight::Heavy));
        assert_eq!((heavy.lanes, heavy.batch, heavy.source), (LaneSet::Heavy, 1, RouteSource::Tag));
    }

    #[test]
    fn weight_parses_and_rejects_unknown() {
        assert_eq!("heavy".parse::<Weight>(), Ok(Weight::Heavy));
        assert!("huge".parse::<Weight>().unwrap_err().contains("huge"));
    }
}
