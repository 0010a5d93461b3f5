//! Scores a saved model on other data.

use tokengate::features::{class_of, model_inputs};

use crate::importance;
use crate::report::importance_table;
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
    /// tags for those), and of operations whose cost features differ from the model's.
    pub unknown_op_rows: usize,
    /// Operations the model knows with other cost features than the data's (the engine
    /// would not let the model place them): their rows count as unknown.
    pub feature_mismatch: Vec<String>,
}

/// Scores the model in `bytes` on `data`, labelling rows with the model's own classes.
pub fn evaluate(bytes: &[u8], data: &Data) -> Result<Evaluation, TrainError> {
    let (header, tree) = model::linfa::decode(bytes)?;
    let compiled = Model::from_bytes(bytes)?;
    let edges: Vec<u64> = header.classes.iter().skip(1).map(|c| c.min_ns).collect();
    let mut feature_mismatch = Vec::new();
    let vocabulary: Vec<Option<u32>> = data
        .ops
        .iter()
        .enumerate()
        .map(|(op, name)| {
            let index = compiled.op_index(name)?;
            let logged = data.op_features.get(op).map_or(&[][..], Vec::as_slice);
            if header.cost_features(index as usize) != logged {
                feature_mismatch.push(name.clone());
                return None;
            }
            Some(index)
        })
        .collect();
    let _ = &tree;
    let mut unknown_op_rows = 0;
    let mut outcomes = Vec::with_capacity(data.rows.len());
    let mut scored = Vec::with_capacity(data.rows.len());
    for row in &data.rows {
        let Some(index) = vocabulary[row.op as usize] else {
            unknown_op_rows += 1;
            continue;
        };
        let inputs = model_inputs(index, row.arg_size, &row.cost);
        let truth = class_of(row.run_ns, &edges);
        outcomes.push((row.op, truth, compiled.predict(&inputs)));
        scored.push((index, inputs, truth));
    }
    let mut metrics = Metrics::score(&data.ops, header.classes.len(), outcomes);
    // Importance on these rows, through the model's own splits.
    let shares =
        importance::per_operation(compiled.tree(), header.ops.len(), header.classes.len(), scored);
    metrics.importance = importance_table(&header.ops, &header.op_features, &shares);
    Ok(Evaluation { metrics, unknown_op_rows, feature_mismatch })
}
