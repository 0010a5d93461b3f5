//! Labels rows with cost classes, fits a bounded-depth tree, derives each class's
//! placement, and packs it all into a model file.

use linfa::prelude::*;
use linfa_trees::DecisionTree;
use ndarray::{Array1, Array2};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokengate::features::{
    class_edges_ns, class_of, model_inputs, COST_AXIS, FEATURE_SCHEMA_VERSION, MODEL_FEATURES,
    OP_STRIDE,
};
use tokengate::model::{
    self, batch_for, policy_for, ClassPolicy, Model, ModelHeader, TrainingInfo,
};
use tokengate::LaneSet;

use crate::dataset::{Data, Row};
use crate::report::{ns, Metrics};
use crate::TrainError;

/// How to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Depth bound of the tree (1..=32; default 8).
    pub max_depth: usize,
    /// Cost classes (2..=8; default 4: < 10 µs, < 200 µs, < 4 ms, ≥ 4 ms), ignored
    /// when `edges_ns` is given.
    pub classes: usize,
    /// Explicit class edges (ns, strictly increasing) instead of the default scheme.
    pub edges_ns: Option<Vec<u64>>,
    /// Share of rows held out for validation (default 0.2).
    pub validation_share: f64,
    /// Seed of the train/validation shuffle.
    pub seed: u64,
    /// Fewest usable rows accepted (default 100).
    pub min_rows: usize,
    /// Fewest training rows in a leaf (default 20): keeps the tree from spending its
    /// depth on runtime noise at a class edge.
    pub min_leaf_rows: usize,
    /// One tree per operation, joined under splits at the operations' boundaries
    /// (default false: one tree over all rows). The single tree may split on the
    /// `arg_size_log2` axis that every operation shares, and anywhere on the
    /// operation-major axis: a leaf can then hold the largest calls of one operation
    /// with the smallest of the next, or the same sizes of several, which saves depth
    /// but places an operation's sizes that few or no rows covered by its neighbours'
    /// (in `drift`, after a re-fit carved out `hash`'s heavy sizes turned light,
    /// `sort`'s largest calls went to the light lanes with them). Per operation, each
    /// operation's sizes are placed by its own rows only, and sizes beyond them by its
    /// own largest or smallest. Online re-fits use it, and every fit whose logs hold an
    /// operation with cost features (a cost feature means what its own operation says
    /// it means, so only that operation's tree may split on it).
    pub per_operation: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            max_depth: 8,
            classes: 4,
            edges_ns: None,
            validation_share: 0.2,
            seed: 42,
            min_rows: 100,
            min_leaf_rows: 20,
            per_operation: false,
        }
    }
}

/// A fitted model: its file bytes and how well it did on held-out rows.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// The header written into the file.
    pub header: ModelHeader,
    /// The whole model file.
    pub bytes: Vec<u8>,
    /// Held-out metrics, predicted through the engine's flat tree.
    pub metrics: Metrics,
    /// Held-out rows where linfa's own predict disagrees with the flat tree (should be 0).
    pub flat_mismatches: usize,
}

/// Fits a model on `data`.
pub fn fit(data: &Data, options: &FitOptions) -> Result<Fitted, TrainError> {
    check(options)?;
    let rows = &data.rows;
    if rows.len() < options.min_rows {
        return Err(TrainError::TooFewRows { rows: rows.len(), needed: options.min_rows });
    }
    let edges = options.edges_ns.clone().unwrap_or_else(|| class_edges_ns(options.classes));
    let classes = edges.len() + 1;
    let labels: Vec<usize> = rows.iter().map(|r| class_of(r.run_ns, &edges)).collect();
    if labels.iter().all(|&l| l == labels[0]) {
        return Err(TrainError::SingleClass {
            rows: rows.len(),
            class: labels[0],
            range: class_range(&edges, labels[0]),
        });
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(options.seed));
    let mut held_out = ((rows.len() as f64 * options.validation_share) as usize).max(1);
    let per_operation =
        options.per_operation || data.op_features.iter().any(|names| !names.is_empty());
    if per_operation {
        // Every operation keeps a training row (its own tree): one held out entirely
        // moves a row to the training side, or its calls would fall into a neighbour's
        // leaf.
        let mut trained: std::collections::HashSet<u32> =
            order[held_out..].iter().map(|&i| rows[i].op).collect();
        let mut k = 0;
        while k < held_out {
            let op = rows[order[k]].op;
            if trained.contains(&op) || held_out == 1 {
                k += 1;
                continue;
            }
            held_out -= 1;
            order.swap(k, held_out);
            trained.insert(op);
        }
    }
    let (validation, train) = order.split_at(held_out);

    let tree = if per_operation {
        per_operation_tree(rows, &labels, train, options)?
    } else {
        fit_tree(rows, &labels, train, options, true)?
    };

    let overhead_ns = dispatch_overhead_ns(&data.dispatch_ns);
    let mut header = ModelHeader {
        feature_schema: FEATURE_SCHEMA_VERSION,
        feature_names: MODEL_FEATURES.iter().map(|s| s.to_string()).collect(),
        ops: data.ops.clone(),
        classes: class_table(rows, &labels, train, &edges, overhead_ns),
        training: TrainingInfo {
            rows: rows.len() as u64,
            train_rows: train.len() as u64,
            validation_rows: validation.len() as u64,
            validation_accuracy: 0.0,
            max_depth: options.max_depth as u32,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            sources: data.files.iter().map(|p| p.display().to_string()).collect(),
            dispatch_overhead_ns: overhead_ns,
            remote_overhead_ns: remote_overhead_ns(&data.remote_ns),
        },
        op_features: (0..data.ops.len())
            .map(|op| data.op_features.get(op).cloned().unwrap_or_default())
            .collect(),
        op_importance: Vec::new(),
    };
    // Score through the engine's own inference path, then check linfa agrees with it.
    let compiled = Model::from_bytes(&model::linfa::encode(&header, &tree, &[])?)?;
    let leaf_ns = leaf_runtimes(&compiled, rows, train);
    let predicted: Vec<usize> =
        validation.iter().map(|&i| compiled.predict(&inputs_of(&rows[i]))).collect();
    header.op_importance = crate::importance::per_operation(
        compiled.tree(),
        data.ops.len(),
        classes,
        train.iter().map(|&i| (rows[i].op, inputs_of(&rows[i]), labels[i])),
    );
    let (x_val, _) = matrix(rows, &labels, validation, !per_operation);
    let linfa_predicted = tree.predict(&x_val);
    let flat_mismatches = linfa_predicted.iter().zip(&predicted).filter(|(a, b)| a != b).count();
    let metrics = Metrics::score(
        &data.ops,
        classes,
        validation.iter().zip(&predicted).map(|(&i, &p)| (rows[i].op, labels[i], p)),
    )
    .with_importance(&header);
    header.training.validation_accuracy = metrics.accuracy;
    let bytes = model::linfa::encode(&header, &tree, &leaf_ns)?;
    Ok(Fitted { header, bytes, metrics, flat_mismatches })
}

/// The mean runtime of the training rows in each leaf of the compiled tree, indexed
/// like its nodes (0 where no row ends): the runtime the router predicts for a call
/// that ends at that leaf, finer than its class's median (a class spans a factor 20).
/// The mean, not the median: queues add these up into backlogs, and a leaf that mixes
/// 300 µs calls with a few 5 ms ones must not pass for a leaf of short calls.
fn leaf_runtimes(model: &Model, rows: &[Row], train: &[usize]) -> Vec<u64> {
    let mut by_leaf = vec![(0u128, 0u64); model.tree().len()];
    for &i in train {
        let leaf = model.tree().leaf(&inputs_of(&rows[i]));
        by_leaf[leaf].0 += u128::from(rows[i].run_ns);
        by_leaf[leaf].1 += 1;
    }
    by_leaf
        .into_iter()
        .map(|(sum, n)| if n == 0 { 0 } else { (sum / u128::from(n)).max(1) as u64 })
        .collect()
}

fn check(options: &FitOptions) -> Result<(), TrainError> {
    if !(1..=32).contains(&options.max_depth) {
        return Err(TrainError::Invalid(format!(
            "max depth must be 1..=32, got {}",
            options.max_depth
        )));
    }
    if !(2..=8).contains(&options.classes) {
        return Err(TrainError::Invalid(format!("classes must be 2..=8, got {}", options.classes)));
    }
    if options.min_leaf_rows == 0 {
        return Err(TrainError::Invalid("the fewest rows in a leaf must be at least 1".into()));
    }
    if let Some(edges) = &options.edges_ns {
        if edges.is_empty() || edges.len() > 7 || edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(TrainError::Invalid(format!(
                "class edges must be 1 to 7 strictly increasing runtimes, got {edges:?}"
            )));
        }
    }
    if !(options.validation_share > 0.0 && options.validation_share < 0.9) {
        return Err(TrainError::Invalid(format!(
            "validation share must be in (0, 0.9), got {}",
            options.validation_share
        )));
    }
    Ok(())
}

/// The column of `arg_size_log2` in [`MODEL_FEATURES`].
const SIZE_AXIS: usize = 1;

/// A bounded-depth tree on the rows at `indices`.
fn fit_tree(
    rows: &[Row],
    labels: &[usize],
    indices: &[usize],
    options: &FitOptions,
    shared_size_axis: bool,
) -> Result<DecisionTree<f64, usize>, TrainError> {
    let (x, y) = matrix(rows, labels, indices, shared_size_axis);
    let dataset = Dataset::new(x, y).with_feature_names(MODEL_FEATURES.to_vec());
    DecisionTree::params()
        .max_depth(Some(options.max_depth))
        .min_weight_leaf(options.min_leaf_rows as f32)
        .min_weight_split(2.0 * options.min_leaf_rows as f32)
        .fit(&dataset)
        .map_err(|e| TrainError::Fit(e.to_string()))
}

/// One tree per operation (each on its own rows, on the operation-major axis alone),
/// joined by a balanced tree of splits at the operations' boundaries on that axis. An
/// operation's inputs lie in `[op × OP_STRIDE, op × OP_STRIDE + 64]`, so a boundary
/// just under the next operation's start parts them exactly. linfa-trees has no public
/// constructor for nodes: the trees are joined in their serde form (the one the model
/// file stores), and the result is read back and checked like any tree.
fn per_operation_tree(
    rows: &[Row],
    labels: &[usize],
    train: &[usize],
    options: &FitOptions,
) -> Result<DecisionTree<f64, usize>, TrainError> {
    let mut by_op: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for &i in train {
        by_op.entry(rows[i].op).or_default().push(i);
    }
    let mut subtrees = Vec::with_capacity(by_op.len());
    for (op, indices) in by_op {
        let tree = fit_tree(rows, labels, &indices, options, false)?;
        let mut value = serde_json::to_value(&tree).map_err(|e| TrainError::Fit(e.to_string()))?;
        subtrees.push((op, value["root_node"].take()));
    }
    let mut root = join_at_boundaries(&mut subtrees);
    set_depths(&mut root, 0);
    let tree = serde_json::json!({ "root_node": root, "num_features": MODEL_FEATURES.len() });
    serde_json::from_value(tree).map_err(|e| TrainError::Fit(format!("joining trees: {e}")))
}

/// A balanced tree over `subtrees` (sorted by operation, at least one).
fn join_at_boundaries(subtrees: &mut [(u32, serde_json::Value)]) -> serde_json::Value {
    if let [(_, only)] = subtrees {
        return only.take();
    }
    let mid = subtrees.len() / 2;
    let boundary = f64::from(subtrees[mid].0) * OP_STRIDE - 0.5;
    let (left, right) = subtrees.split_at_mut(mid);
    serde_json::json!({
        "feature_idx": 0,
        "feature_name": MODEL_FEATURES[0],
        "split_value": boundary,
        "impurity_decrease": 0.0,
        "left_child": join_at_boundaries(left),
        "right_child": join_at_boundaries(right),
        "leaf_node": false,
        "prediction": 0,
        "depth": 0,
    })
}

fn set_depths(node: &mut serde_json::Value, depth: usize) {
    node["depth"] = depth.into();
    for child in ["left_child", "right_child"] {
        if node[child].is_object() {
            set_depths(&mut node[child], depth + 1);
        }
    }
}

/// The model inputs of one row, as the engine computes them at submit.
pub(crate) fn inputs_of(row: &Row) -> [f64; MODEL_FEATURES.len()] {
    model_inputs(row.op, row.arg_size, &row.cost)
}

/// The feature matrix and labels of the rows at `indices`. Without `shared_size_axis`
/// (a tree of one operation's rows) the `arg_size_log2` column is left at zero: a
/// constant column has no split, so the tree never uses it, and the model keeps the
/// engine's input list (the engine still computes the input; no node reads it). With
/// it (one tree over every operation) the cost-feature columns are zero instead: each
/// operation's mean something else.
pub(crate) fn matrix(
    rows: &[Row],
    labels: &[usize],
    indices: &[usize],
    shared_size_axis: bool,
) -> (Array2<f64>, Array1<usize>) {
    let mut x = Array2::zeros((indices.len(), MODEL_FEATURES.len()));
    let mut y = Array1::zeros(indices.len());
    for (out, &i) in indices.iter().enumerate() {
        let mut inputs = inputs_of(&rows[i]);
        if shared_size_axis {
            inputs[COST_AXIS..].fill(0.0);
        } else {
            inputs[SIZE_AXIS] = 0.0;
        }
        for (column, value) in inputs.into_iter().enumerate() {
            x[(out, column)] = value;
        }
        y[out] = labels[i];
    }
    (x, y)
}

/// Each class's runtime range, median and derived placement, from the training rows.
/// Without logged batches (in-memory samples, old files): a typical dispatch on the
/// 2-core machine (a wake-up of a parked lane).
pub const DEFAULT_DISPATCH_NS: u64 = 5_000;

/// Logged samples a fit needs before it trusts an overhead it measured (per-batch
/// dispatch, remote runs) over the default.
pub const MIN_OVERHEAD_SAMPLES: usize = 10;

/// The fitted per-batch dispatch overhead: the median of the logged ones.
fn dispatch_overhead_ns(logged: &[u64]) -> u64 {
    fitted_median(logged).unwrap_or(DEFAULT_DISPATCH_NS)
}

/// The fitted remote overhead: the median of what the logged remote runs added, if
/// there are enough of them.
fn remote_overhead_ns(logged: &[u64]) -> Option<u64> {
    fitted_median(logged)
}

/// The median of `logged`, once there are [`MIN_OVERHEAD_SAMPLES`] of them.
fn fitted_median(logged: &[u64]) -> Option<u64> {
    if logged.len() < MIN_OVERHEAD_SAMPLES {
        return None;
    }
    let mut sorted = logged.to_vec();
    let middle = sorted.len() / 2;
    Some(*sorted.select_nth_unstable(middle).1)
}

fn class_table(
    rows: &[Row],
    labels: &[usize],
    train: &[usize],
    edges: &[u64],
    overhead_ns: u64,
) -> Vec<ClassPolicy> {
    let classes = edges.len() + 1;
    let mut runtimes: Vec<Vec<u64>> = vec![Vec::new(); classes];
    for &i in train {
        runtimes[labels[i]].push(rows[i].run_ns);
    }
    runtimes
        .into_iter()
        .enumerate()
        .map(|(k, mut ns)| {
            let min_ns = if k == 0 { 0 } else { edges[k - 1] };
            let max_ns = edges.get(k).copied().unwrap_or(u64::MAX);
            let median_ns = if ns.is_empty() {
                // No rows: the range's geometric middle (×3 past the last edge).
                if max_ns == u64::MAX {
                    min_ns.saturating_mul(3)
                } else {
                    ((min_ns.max(1) as f64) * (max_ns as f64)).sqrt() as u64
                }
            } else {
                let middle = ns.len() / 2;
                *ns.select_nth_unstable(middle).1
            };
            let (lanes, _) = policy_for(median_ns);
            let batch = if lanes == LaneSet::Heavy { 1 } else { batch_for(median_ns, overhead_ns) };
            ClassPolicy { min_ns, max_ns, median_ns, rows: ns.len() as u64, lanes, batch }
        })
        .collect()
}

fn class_range(edges: &[u64], class: usize) -> String {
    let low = if class == 0 { 0 } else { edges[class - 1] };
    match edges.get(class) {
        Some(&high) => format!("{} to {}", ns(low), ns(high)),
        None => format!("{} and up", ns(low)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokengate::features::NO_COST;

    /// Three operations, each cheap below size 1,000 and slow above: one split on the
    /// shared size axis explains every row.
    fn data() -> Data {
        let rows = (0..3_000u64)
            .map(|i| {
                let arg_size = if i % 2 == 0 { 10 + i % 100 } else { 10_000 + i };
                let run_ns = if i % 2 == 0 { 2_000 } else { 1_500_000 };
                Row { op: (i % 3) as u32, arg_size, cost: NO_COST, run_ns }
            })
            .collect();
        Data { ops: ["a", "b", "c"].map(String::from).to_vec(), rows, ..Data::default() }
    }

    fn features_split_on(options: &FitOptions) -> Vec<usize> {
        let fitted = fit(&data(), options).unwrap();
        assert_eq!(fitted.metrics.accuracy, 1.0);
        let (_, tree) = model::linfa::decode(&fitted.bytes).unwrap();
        let mut features: Vec<usize> =
            tree.iter_nodes().filter(|n| !n.is_leaf()).map(|n| n.split().0).collect();
        features.sort_unstable();
        features.dedup();
        features
    }

    #[test]
    fn per_operation_every_operation_keeps_a_training_row() {
        // `lone`'s one call is cheap; `busy`'s large calls, beside it on the
        // operation-major axis, are slow. Held out, the lone row would leave `lone`
        // without a tree of its own, placed by `busy`'s largest calls.
        let mut data = data();
        data.ops = vec!["busy".to_string(), "lone".to_string()];
        data.rows.retain(|r| r.op == 0);
        data.rows.push(Row { op: 1, arg_size: 10, cost: NO_COST, run_ns: 2_000 });
        for seed in 0..30 {
            let options = FitOptions { per_operation: true, seed, ..FitOptions::default() };
            let fitted = fit(&data, &options).unwrap();
            let model = Model::from_bytes(&fitted.bytes).unwrap();
            let class = model.predict(&model_inputs(1, 10, &NO_COST));
            assert_eq!(class, 0, "seed {seed}");
        }
    }

    #[test]
    fn per_operation_no_node_splits_on_the_shared_size_axis() {
        assert_eq!(features_split_on(&FitOptions::default()), vec![SIZE_AXIS]);
        let options = FitOptions { per_operation: true, ..FitOptions::default() };
        assert_eq!(features_split_on(&options), vec![0]);
    }
}
