//! The one definition of what the cost model sees.
//!
//! The engine uses it to log (telemetry columns) and to predict (the learned router);
//! the trainer uses it to build its feature matrix from those logs. Changing the list
//! or an encoding means bumping [`FEATURE_SCHEMA_VERSION`]: model files record the
//! version they were fitted with, and the engine refuses a mismatch.

/// Version of the model's input list and encodings.
pub const FEATURE_SCHEMA_VERSION: u16 = 1;

/// Names of the model's inputs, in column order.
pub const MODEL_FEATURES: [&str; 2] = ["op", "arg_size_log2"];

/// The model's input vector for one token.
///
/// * `op`: the operation's index in the model's vocabulary (names, saved in the model
///   file, because ids are not stable across processes).
/// * `arg_size_log2`: `log2(arg_size + 1)`; costs grow with the argument by orders of
///   magnitude, so the log keeps the tree's splits few.
///
/// The declared weight is deliberately *not* an input: tags can be wrong, and a model
/// that learned to trust them would break exactly where it is needed.
#[inline]
pub fn model_inputs(op_index: u32, arg_size: u64) -> [f64; MODEL_FEATURES.len()] {
    [f64::from(op_index), ((arg_size as f64) + 1.0).log2()]
}

/// Version of the telemetry (Parquet) schema.
pub const TELEMETRY_SCHEMA_VERSION: u32 = 1;

/// Cost classes are log-scale runtime buckets: class `k` holds runtimes in
/// `[edge(k-1), edge(k))`, with edges at 1 µs × 10^k. With `classes` classes, the last
/// one is open-ended.
pub fn class_edges_ns(classes: usize) -> Vec<u64> {
    (0..classes.saturating_sub(1))
        .map(|k| 1_000 * 10u64.pow(k as u32))
        .collect()
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
    fn classes_are_decades_from_one_microsecond() {
        let edges = class_edges_ns(5);
        assert_eq!(edges, vec![1_000, 10_000, 100_000, 1_000_000]);
        assert_eq!(class_of(999, &edges), 0);
        assert_eq!(class_of(1_000, &edges), 1);
        assert_eq!(class_of(50_000, &edges), 2);
        assert_eq!(class_of(5_000_000_000, &edges), 4);
    }

    #[test]
    fn inputs_are_log_scaled() {
        assert_eq!(model_inputs(3, 0), [3.0, 0.0]);
        assert_eq!(model_inputs(0, 1023), [0.0, 10.0]);
    }
}
