//! Scores a saved model on other data.

use tokengate::features::{class_of, model_inputs};
use tokengate::model::{self, Model};

use crate::dataset::Data;
use crate::report::Metrics;
use crate::TrainError;

/// A model's metrics on a dataset.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Metrics over the rows whose operation the model knows.
    pub metrics: Metrics,
    /// Rows of operations outside the model's vocabulary (the router falls back to
    /// tags for those).
    pub unknown_op_rows: usize,
}

/// Scores the model in `bytes` on `data`, labelling rows with the model's own classes.
pub fn evaluate(bytes: &[u8], data: &Data) -> Result<Evaluation, TrainError> {
    let (header, tree) = model::decode(bytes)?;
    let compiled = Model::from_bytes(bytes)?;
    let edges: Vec<u64> = header.classes.iter().skip(1).map(|c| c.min_ns).collect();
    let vocabulary: Vec<Option<u32>> =
        data.ops.iter().map(|name| compiled.op_index(name)).collect();
    let mut unknown_op_rows = 0;
    let mut outcomes = Vec::with_capacity(data.rows.len());
    for row in &data.rows {
        let Some(index) = vocabulary[row.op as usize] else {
            unknown_op_rows += 1;
            continue;
        };
        let predicted = compiled.predict(&model_inputs(index, row.arg_size));
        outcomes.push((row.op, class_of(row.run_ns, &edges), predicted));
    }
    let metrics =
        Metrics::score(&data.ops, header.classes.len(), outcomes, tree.feature_importance());
    Ok(Evaluation { metrics, unknown_op_rows })
}
