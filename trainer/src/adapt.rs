//! The re-fit that online adaptation runs: the trainer's own [`fit`](crate::fit::fit)
//! on the engine's recent samples.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tokengate::{Adaptation, AdaptiveRouter, Engine, StaticRouter};
//! let model = tokengate::model::Model::load("models/default.bin")?;
//! let router = Arc::new(AdaptiveRouter::new(model, StaticRouter::new(128)));
//! let engine = Engine::builder()
//!     .adapt(Adaptation::new(router, Arc::new(trainer::adapt::TreeRefit::default())))
//!     .log_sample(8)
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use tokengate::model::Model;
use tokengate::{Refit, Sample};

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
        TreeRefit {
            options: FitOptions { validation_share: 0.05, min_rows: 200, ..FitOptions::default() },
        }
    }
}

impl Refit for TreeRefit {
    fn refit(&self, ops: &[String], samples: &[Sample]) -> Result<Model, String> {
        let data = Data {
            ops: ops.to_vec(),
            rows: samples
                .iter()
                .map(|s| Row { op: s.op, arg_size: s.arg_size, run_ns: s.run_ns })
                .collect(),
            files: Vec::new(),
            skipped: 0,
            remote_rows: 0,
            dispatch_ns: Vec::new(),
            remote_ns: Vec::new(),
        };
        let fitted = fit(&data, &self.options).map_err(|e| e.to_string())?;
        Model::from_bytes(&fitted.bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refit_learns_which_sizes_are_slow() {
        let ops = vec!["work".to_string()];
        let samples: Vec<Sample> = (0..2_000u64)
            .map(|i| {
                let arg_size = if i % 2 == 0 { 10 } else { 1_000_000 };
                let run_ns = if i % 2 == 0 { 2_000 } else { 1_500_000 };
                Sample { op: 0, arg_size, run_ns }
            })
            .collect();
        let model = TreeRefit::default().refit(&ops, &samples).unwrap();
        let index = model.op_index("work").unwrap();
        let class = |size| model.predict(&tokengate::features::model_inputs(index, size));
        let classes = &model.header().classes;
        assert!(classes[class(10)].max_ns <= 10_000);
        assert!(classes[class(1_000_000)].min_ns >= 200_000);
        assert!(TreeRefit::default().refit(&ops, &samples[..10]).is_err(), "too few rows");
    }
}
