//! Which input earned its keep, per operation: each input's share of the impurity
//! decrease of the splits an operation's rows pass through, weighted by those rows.
//!
//! linfa-trees reports an unweighted mean of the decreases per input, which does not
//! say how many rows a split served (a split of 40 rows counts as much as the root's);
//! here each split counts by the rows that reach it, as in scikit-learn's "mean
//! decrease in impurity", and per operation, because a cost feature means what its own
//! operation says it means.

use tokengate::features::{COST_AXIS, MAX_COST_FEATURES, MODEL_FEATURES};
use tokengate::model::FlatTree;

/// The inputs importance is reported for: the size (both size inputs), then each cost
/// feature slot.
pub const AXES: usize = 1 + MAX_COST_FEATURES;

/// The report axis of model input `input`.
fn axis(input: usize) -> usize {
    input.saturating_sub(COST_AXIS - 1).min(AXES - 1)
}

fn gini(counts: &[u64]) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    1.0 - counts.iter().map(|&c| (c as f64 / n).powi(2)).sum::<f64>()
}

/// Per operation (`ops` of them): each axis's share of the weighted impurity decrease
/// over `rows` — `(op, model inputs, class)` — summing to 1, or all 0 where no split
/// parted any of the operation's rows.
pub fn per_operation(
    tree: &FlatTree,
    ops: usize,
    classes: usize,
    rows: impl IntoIterator<Item = (u32, [f64; MODEL_FEATURES.len()], usize)>,
) -> Vec<Vec<f64>> {
    // counts[op][node][class]
    let mut counts = vec![vec![vec![0u64; classes]; tree.len()]; ops];
    for (op, inputs, class) in rows {
        let Some(nodes) = counts.get_mut(op as usize) else { continue };
        let mut node = 0;
        loop {
            nodes[node][class.min(classes - 1)] += 1;
            let Some(split) = tree.split(node) else { break };
            node = if inputs[split.input] < split.threshold { split.left } else { split.right };
        }
    }
    counts
        .iter()
        .map(|nodes| {
            let weighted = |i: usize| nodes[i].iter().sum::<u64>() as f64 * gini(&nodes[i]);
            let mut shares = vec![0.0; AXES];
            for node in 0..tree.len() {
                let Some(split) = tree.split(node) else { continue };
                let decrease = weighted(node) - weighted(split.left) - weighted(split.right);
                shares[axis(split.input)] += decrease.max(0.0);
            }
            let total: f64 = shares.iter().sum();
            if total > 0.0 {
                shares.iter_mut().for_each(|s| *s /= total);
            }
            shares
        })
        .collect()
}

/// The names of an operation's report axes: "size", then its cost features.
pub fn axis_names(cost_features: &[String]) -> Vec<String> {
    std::iter::once("size".to_string()).chain(cost_features.iter().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_merge_the_size_inputs_and_keep_each_cost_feature() {
        assert_eq!((axis(0), axis(1), axis(2), axis(5)), (0, 0, 1, 4));
        assert_eq!(gini(&[5, 5]), 0.5);
        assert_eq!(gini(&[0, 7]), 0.0);
    }
}
