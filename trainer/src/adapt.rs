//! The re-fit that online adaptation runs: the trainer's own [`fit`]
//! on the engine's recent samples.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tokengate::Engine;
//! use tokengate::adapt::Adaptation;
//! use tokengate::router::{AdaptiveRouter, StaticRouter};
//! let model = tokengate::model::Model::load("models/default.bin")?;
//! let router = Arc::new(AdaptiveRouter::new(model, StaticRouter::new(128)));
//! let engine = Engine::builder()
//!     .adapt(Adaptation::new(router, Arc::new(trainer::adapt::TreeRefit::default())))
//!     .log_sample(8)
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use tokengate::adapt::{Refit, Sample};
use tokengate::features::OpFeatures;
use tokengate::model::Model;

use crate::dataset::{Data, Row};
use crate::fit::{fit, FitOptions};

/// Fits a bounded-depth tree on the samples, with the trainer's class scheme.
#[derive(Debug, Clone)]
pub struct TreeRefit {
    /// The fit's options (depth, classes, leaf size).
    pub options: FitOptions,
}

impl Default for TreeRefit {
    fn default() -> Self {
        // The engine scores candidates on rows it holds out itself: fit on (nearly) all.
        // One tree per operation: a window holds few rows of a rare band, and in one
        // tree over all operations such rows can end in a leaf of another operation's
        // (see `FitOptions::per_operation`); a candidate must not move one operation's
        // calls because another's changed. Leaves of 10 rows: a band of 1% of the
        // calls has about 25 rows in a window of 300 ms at 8,000 calls/s, and a split
        // needs twice the leaf size on each side's parent.
        TreeRefit {
            options: FitOptions {
                validation_share: 0.05,
                min_rows: 200,
                min_leaf_rows: 10,
                per_operation: true,
                ..FitOptions::default()
            },
        }
    }
}

impl Refit for TreeRefit {
    fn refit(&self, ops: &[OpFeatures], samples: &[Sample]) -> Result<Model, String> {
        // Only the operations the window has rows of are in the candidate's vocabulary:
        // an operation without rows would be placed by whatever its neighbours on the
        // operation-major axis are; unknown, it is routed by its tag.
        let mut index = vec![u32::MAX; ops.len()];
        let mut present = Vec::new();
        let mut op_features = Vec::new();
        let mut rows = Vec::with_capacity(samples.len());
        for s in samples {
            let Some(slot) = index.get_mut(s.op as usize) else { continue };
            if *slot == u32::MAX {
                *slot = present.len() as u32;
                present.push(ops[s.op as usize].name.clone());
                op_features.push(ops[s.op as usize].cost.clone());
            }
            rows.push(Row { op: *slot, arg_size: s.arg_size, cost: s.cost, run_ns: s.run_ns });
        }
        let data = Data { ops: present, op_features, rows, ..Data::default() };
        let fitted = fit(&data, &self.options).map_err(|e| e.to_string())?;
        Model::from_bytes(&fitted.bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokengate::features::NO_COST;
    use tokengate::Weight;

    #[test]
    fn a_refit_learns_which_sizes_are_slow() {
        let ops = vec![OpFeatures::named("idle"), OpFeatures::named("work")];
        let samples: Vec<Sample> = (0..2_000u64)
            .map(|i| {
                let arg_size = if i % 2 == 0 { 10 } else { 1_000_000 };
                let run_ns = if i % 2 == 0 { 2_000 } else { 1_500_000 };
                Sample { op: 1, arg_size, cost: NO_COST, run_ns, declared: Weight::Light }
            })
            .collect();
        let model = TreeRefit::default().refit(&ops, &samples).unwrap();
        assert_eq!(model.op_index("idle"), None, "no rows: left to its tag");
        let index = model.op_index("work").unwrap();
        let class = |size| model.predict(&tokengate::features::model_inputs(index, size, &NO_COST));
        let classes = &model.header().classes;
        assert!(classes[class(10)].max_ns <= 10_000);
        assert!(classes[class(1_000_000)].min_ns >= 200_000);
        assert!(TreeRefit::default().refit(&ops, &samples[..10]).is_err(), "too few rows");
    }

    /// `steady` and `other` are heavy from 100k up (rows up to 150k); `shifted`'s sizes
    /// from 160k turned cheap. On the shared size axis one split (155k) then parts the
    /// large calls, and sends `steady`'s larger sizes, which no row covered, to the
    /// light lanes with `shifted`'s.
    fn one_operation_changed() -> (Vec<OpFeatures>, Vec<Sample>) {
        let ops = ["steady", "shifted", "other"].map(OpFeatures::named).to_vec();
        let samples: Vec<Sample> = (0..6_000u64)
            .map(|i| {
                let op = (i % 3) as u32;
                let (arg_size, run_ns) = match (op, i % 2) {
                    (_, 0) => (10 + i % 50, 2_000),
                    (1, _) => (160_000 + i * 100, 2_000),
                    _ => (100_000 + i * 8, 3_000_000),
                };
                Sample { op, arg_size, cost: NO_COST, run_ns, declared: Weight::Light }
            })
            .collect();
        (ops, samples)
    }

    #[test]
    fn a_refit_moves_only_the_operation_that_changed() {
        let (ops, samples) = one_operation_changed();
        let lanes = |refit: &TreeRefit| {
            let model = refit.refit(&ops, &samples).unwrap();
            move |op: u32, size| {
                let class = model.predict(&tokengate::features::model_inputs(op, size, &NO_COST));
                model.header().classes[class].lanes
            }
        };
        let (light, heavy) = (tokengate::LaneSet::Light, tokengate::LaneSet::Heavy);
        let refit = TreeRefit::default();
        let placed = lanes(&refit);
        assert_eq!(placed(1, 400_000), light, "the change is learned");
        assert_eq!(placed(2, 120_000), heavy);
        for size in [120_000, 200_000, 400_000, 10_000_000] {
            assert_eq!(placed(0, size), heavy, "steady at {size}");
        }
        // What one tree over every operation does with the same rows.
        let shared = TreeRefit { options: FitOptions { per_operation: false, ..refit.options } };
        let placed = lanes(&shared);
        assert_eq!(placed(1, 400_000), light);
        assert_eq!(placed(0, 400_000), light, "steady's unseen sizes moved with shifted's");
    }

    #[test]
    fn leaves_carry_runtimes_finer_than_their_class() {
        // 300 µs calls of one operation and 3 ms calls of another are one class (200 µs
        // to 4 ms), but they end at different leaves (the classifier has to split the
        // operations apart: size 1,000 is slow for one and cheap for the other), and
        // the leaves know which is which, so a light lane helping with heavy work can
        // tell them apart. (Where no class changes between them, a classification tree
        // does not split, and calls share a leaf and its mean.)
        let ops = vec![OpFeatures::named("short"), OpFeatures::named("long")];
        let samples: Vec<Sample> = (0..4_000u64)
            .map(|i| match i % 4 {
                0 => Sample {
                    op: 0,
                    arg_size: 10,
                    cost: NO_COST,
                    run_ns: 2_000,
                    declared: Weight::Light,
                },
                1 => Sample {
                    op: 0,
                    arg_size: 1_000,
                    cost: NO_COST,
                    run_ns: 300_000 + i,
                    declared: Weight::Light,
                },
                2 => Sample {
                    op: 1,
                    arg_size: 1_000,
                    cost: NO_COST,
                    run_ns: 2_000,
                    declared: Weight::Light,
                },
                _ => Sample {
                    op: 1,
                    arg_size: 100_000,
                    cost: NO_COST,
                    run_ns: 3_000_000 + i,
                    declared: Weight::Light,
                },
            })
            .collect();
        let model = TreeRefit::default().refit(&ops, &samples).unwrap();
        let cost =
            |op, size| model.predict_cost(&tokengate::features::model_inputs(op, size, &NO_COST));
        let ((short_class, short_ns), (long_class, long_ns)) = (cost(0, 1_000), cost(1, 100_000));
        assert_eq!(short_class, long_class);
        assert!((300_000..305_000).contains(&short_ns), "{short_ns}");
        assert!((3_000_000..3_005_000).contains(&long_ns), "{long_ns}");
    }
}
