//! Routing: where a token runs and in how large a batch.
//!
//! A [`Router`] turns the [`Features`] seen at admission into a [`Placement`]. The
//! [`StaticRouter`] uses only the declared [`Weight`]; [`EwmaRouter`] an operation's
//! running-average runtime; [`LearnedRouter`] (in `learned.rs`) the fitted cost model.
//! Manual overrides are applied after the router, on the one enqueue path
//! (`op/enqueue.rs`), so they beat whichever router is installed.

use std::fmt;

use crate::features::{CostInputs, NO_COST};
use crate::model::policy_for;
pub use crate::placement::{LaneSet, Placement, RouteSource, Weight};

mod adaptive;
mod learned;
mod watch;

pub use adaptive::AdaptiveRouter;
pub use learned::{LearnedRouter, MAX_OPS};
pub(crate) use watch::{carry_moves, CostWatch};

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
    /// The recent average runtime of the operation's calls of about this size — the
    /// same half-octave of the size hint (ns; 0 before one was measured, or when the
    /// operation has no size hint).
    pub size_recent_ns: u64,
    /// The operation's cost features for this call (0 where it declared none).
    pub cost: CostInputs,
}

impl Features {
    /// Features of a token of operation `op` with this weight and size hint, arriving at
    /// an idle engine (for custom routers' tests and benches).
    pub fn new(op: u32, declared: Weight, arg_size: u64) -> Self {
        Features {
            op,
            declared,
            arg_size,
            queue_depth: 0,
            op_recent_ns: 0,
            size_recent_ns: 0,
            cost: NO_COST,
        }
    }
}

/// Decides a [`Placement`] per token. Called on the submitting thread, once per token:
/// keep it cheap and lock-free.
pub trait Router: Send + Sync + fmt::Debug + 'static {
    /// The placement for one token.
    fn route(&self, features: &Features) -> Placement;

    /// Called once per operation at registration, before any of its tokens is routed,
    /// with the names of its cost features (empty when it has none).
    fn register_op(&self, _op: u32, _name: &str, _cost_features: &[String]) {}

    /// The model fingerprint logged with each decision (0 when there is no model).
    fn model_version(&self) -> u32 {
        0
    }

    /// The least predicted run time (ns) the model says is worth a remote round trip
    /// (fitted from remote runs; see [`Model::remote_min_ns`](crate::model::Model::remote_min_ns)).
    /// `None`: the engine's default threshold.
    fn remote_min_ns(&self) -> Option<u64> {
        None
    }

    /// The model's cost classes, by class id (empty when there is no model). Read by
    /// the control port, never on the hot path.
    fn classes(&self) -> Vec<crate::model::ClassPolicy> {
        Vec::new()
    }

    /// True if [`Router::route`] is a pure function of the features (no state of its
    /// own, no randomness): the engine then routes a run of tokens with equal features
    /// once (a `submit_many` of an operation without a size hint routes once per chunk).
    /// The default, false, routes every token.
    fn is_pure(&self) -> bool {
        false
    }
}

/// The no-model router, and the engine's default: it learns online, from a cold start,
/// which operations and which argument sizes are expensive. Each token is placed by the
/// running-average runtime of its operation's calls of about its size (the same
/// half-octave of the size hint), else of its operation, using the same policy the
/// trainer derives for a class with that typical runtime (heavy from 200 µs). An
/// operation is placed by its tag until its first batch has run; a size not yet measured
/// runs in a batch of its own, so that its first call measures it. The averages are kept
/// by the lanes, once per batch.
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
        let recent_ns = match features.size_recent_ns {
            0 => features.op_recent_ns,
            size_ns => size_ns,
        };
        let mut placement = if recent_ns == 0 {
            self.fallback.route(features)
        } else {
            let (lanes, batch) = policy_for(recent_ns);
            let predicted_ns = recent_ns;
            Placement { lanes, batch, class: None, predicted_ns, source: RouteSource::Heuristic }
        };
        if features.size_recent_ns == 0 && features.arg_size > 0 {
            // A size not measured yet: alone, so that its run measures it.
            placement.batch = 1;
        }
        placement
    }

    fn is_pure(&self) -> bool {
        true
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
        let predicted_ns = features.declared.nominal_ns();
        Placement { lanes, batch, class: None, predicted_ns, source: RouteSource::Tag }
    }

    fn is_pure(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(declared: Weight) -> Features {
        Features::new(0, declared, 0)
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
        assert!("huge".parse::<Weight>().unwrap_err().to_string().contains("huge"));
    }
}
