//! The one definition of what the cost model sees.
//!
//! The engine uses it to log (telemetry columns) and to predict (the learned router);
//! the trainer uses it to build its feature matrix from those logs. Changing the list
//! or an encoding means bumping [`FEATURE_SCHEMA_VERSION`]: model files record the
//! version they were fitted with, and the engine refuses a mismatch.

/// Version of the model's input list and encodings (2 added the four cost-feature
/// inputs; models of version 1 still load: their trees read only the first two).
pub const FEATURE_SCHEMA_VERSION: u16 = 2;

/// The oldest feature schema whose models the engine still loads.
pub const OLDEST_FEATURE_SCHEMA: u16 = 1;

/// Most cost features one operation may declare
/// ([`OperationBuilder::cost_features`](crate::OperationBuilder::cost_features)).
pub const MAX_COST_FEATURES: usize = 4;

/// One call's cost-feature values, unused slots 0.
pub type CostInputs = [f64; MAX_COST_FEATURES];

/// Names of the model's inputs, in column order. `cost_0`…`cost_3` are each
/// operation's own cost features, in the order it declared them: their meaning is the
/// operation's, so only a tree fitted on that operation's rows alone splits on them.
pub const MODEL_FEATURES: [&str; 6] =
    ["op_size", "arg_size_log2", "cost_0", "cost_1", "cost_2", "cost_3"];

/// The first cost-feature column of [`MODEL_FEATURES`].
pub const COST_AXIS: usize = 2;

/// An operation as the cost model knows it: its name and the names of its cost
/// features (empty when it declared none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpFeatures {
    /// The operation's name.
    pub name: String,
    /// Its cost features' names, in declared order (at most [`MAX_COST_FEATURES`]).
    pub cost: Vec<String>,
}

/// The engine's operations by id, shared with the telemetry writer and the adapter.
pub(crate) type OpNames = std::sync::Arc<std::sync::RwLock<Vec<OpFeatures>>>;

impl OpFeatures {
    /// An operation without cost features.
    pub fn named(name: impl Into<String>) -> Self {
        OpFeatures { name: name.into(), cost: Vec::new() }
    }
}

/// The span of `arg_size_log2` (sizes are `u64`, so `log2(size + 1) <= 64`).
pub const OP_STRIDE: f64 = 65.0;

/// The model's input vector for one token.
///
/// * `op_size`: the operation's index in the model's vocabulary (names, saved in the
///   model file, because ids are not stable across processes) times [`OP_STRIDE`],
///   plus `arg_size_log2`. One ordered axis, operation-major: a tree carves any
///   operation's own size range out of it with two splits. (A bare operation index
///   would be one huge tie per operation, and linfa-trees 0.8 only evaluates a split
///   between tied values at nodes that hold the globally last row of the tie, so it
///   almost never splits on it below the root.)
/// * `arg_size_log2`: `log2(arg_size + 1)`; costs grow with the argument by orders of
///   magnitude, and this axis lets one split serve every operation.
///
/// The declared weight is deliberately *not* an input: tags can be wrong, and a model
/// that learned to trust them would break exactly where it is needed.
/// * `cost_0`…`cost_3`: the operation's cost features as its closure computed them
///   (non-finite values are 0).
#[inline]
pub fn model_inputs(
    op_index: u32,
    arg_size: u64,
    cost: &CostInputs,
) -> [f64; MODEL_FEATURES.len()] {
    let size = ((arg_size as f64) + 1.0).log2();
    [f64::from(op_index) * OP_STRIDE + size, size, cost[0], cost[1], cost[2], cost[3]]
}

/// No cost features: the inputs of an operation that declared none.
pub const NO_COST: CostInputs = [0.0; MAX_COST_FEATURES];

/// Version of the telemetry (Parquet) schema. v2 added `host` and `worker` (which
/// machine, and which remote worker, ran the rows); v3 the cost features (`cost_names`,
/// the operation's feature names joined by commas, and `cost_0`…`cost_3`).
pub const TELEMETRY_SCHEMA_VERSION: u32 = 3;

/// The oldest telemetry schema the trainer still reads (v1 lacks only the columns it
/// does not use).
pub const OLDEST_TELEMETRY_SCHEMA: u32 = 1;

/// The first class edge: runtimes below it are the cheapest class.
pub const FIRST_EDGE_NS: u64 = 10_000;
/// Each class edge is this many times the previous one.
pub const EDGE_RATIO: u64 = 20;

/// Cost classes are log-scale runtime buckets: edges at 10 µs × 20^k, so with the
/// default 4 classes: < 10 µs, 10–200 µs, 200 µs–4 ms, ≥ 4 ms. The 200 µs edge is the
/// heavy-lane threshold ([`crate::model::HEAVY_NS`]), so a class never mixes tokens the
/// router must place apart. The last class is open-ended.
pub fn class_edges_ns(classes: usize) -> Vec<u64> {
    (0..classes.saturating_sub(1) as u32).map(|k| FIRST_EDGE_NS * EDGE_RATIO.pow(k)).collect()
}

/// The class of a runtime given the edges from [`class_edges_ns`].
#[inline]
pub fn class_of(run_ns: u64, edges: &[u64]) -> usize {
    edges.partition_point(|&edge| edge <= run_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_grow_twentyfold_from_ten_microseconds() {
        let edges = class_edges_ns(4);
        assert_eq!(edges, vec![10_000, 200_000, 4_000_000]);
        assert_eq!(edges[1], crate::model::HEAVY_NS);
        assert_eq!(class_of(9_999, &edges), 0);
        assert_eq!(class_of(10_000, &edges), 1);
        assert_eq!(class_of(250_000, &edges), 2);
        assert_eq!(class_of(5_000_000_000, &edges), 3);
    }

    #[test]
    fn inputs_are_log_scaled_and_op_major() {
        assert_eq!(model_inputs(3, 0, &NO_COST), [3.0 * OP_STRIDE, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(model_inputs(0, 1023, &[1.0, 2.0, 3.0, 4.0])[..3], [10.0, 10.0, 1.0]);
        assert_eq!(model_inputs(0, 1023, &[1.0, 2.0, 3.0, 4.0])[5], 4.0);
        // The largest size of one operation stays below the smallest of the next.
        assert!(model_inputs(0, u64::MAX, &NO_COST)[0] < model_inputs(1, 0, &NO_COST)[0]);
    }
}
