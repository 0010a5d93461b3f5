//! Metrics and human-readable views of a model.

use std::fmt::{self, Write as _};

use linfa_trees::{DecisionTree, TreeNode};
use tokengate::features::{MODEL_FEATURES, OP_STRIDE};
use tokengate::model::ModelHeader;

/// Classification quality on a set of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Rows scored.
    pub rows: u64,
    /// Share predicted right.
    pub accuracy: f64,
    /// `confusion[truth][predicted]` row counts.
    pub confusion: Vec<Vec<u64>>,
    /// Per operation: name, rows right, rows.
    pub per_op: Vec<(String, u64, u64)>,
    /// Per operation: its name, and per input (its size, then each of its cost
    /// features) the share of the impurity decrease it earned on that operation's rows
    /// (weighted by rows; see [`crate::importance`]). Empty where none was computed.
    pub importance: Vec<(String, Vec<(String, f64)>)>,
}

/// Names [`crate::importance::per_operation`]'s shares, per operation of `ops` that has
/// any (an operation whose rows no split parted is left out).
pub fn importance_table(
    ops: &[String],
    op_features: &[Vec<String>],
    shares: &[Vec<f64>],
) -> Vec<(String, Vec<(String, f64)>)> {
    ops.iter()
        .enumerate()
        .filter_map(|(op, name)| {
            let shares = shares.get(op).filter(|s| s.iter().any(|&x| x > 0.0))?;
            let features = op_features.get(op).map_or(&[][..], Vec::as_slice);
            let named = crate::importance::axis_names(features).into_iter().zip(shares.clone());
            Some((name.clone(), named.collect()))
        })
        .collect()
}

impl Metrics {
    /// Scores `(op, truth, predicted)` triples.
    pub fn score(
        ops: &[String],
        classes: usize,
        outcomes: impl IntoIterator<Item = (u32, usize, usize)>,
    ) -> Self {
        let mut confusion = vec![vec![0u64; classes]; classes];
        let mut per_op = vec![(0u64, 0u64); ops.len()];
        for (op, truth, predicted) in outcomes {
            confusion[truth][predicted] += 1;
            let entry = &mut per_op[op as usize];
            entry.0 += u64::from(truth == predicted);
            entry.1 += 1;
        }
        let rows: u64 = confusion.iter().flatten().sum();
        let right: u64 = (0..classes).map(|k| confusion[k][k]).sum();
        Metrics {
            rows,
            accuracy: if rows == 0 { 0.0 } else { right as f64 / rows as f64 },
            confusion,
            per_op: ops
                .iter()
                .zip(per_op)
                .filter(|(_, (_, total))| *total > 0)
                .map(|(name, (right, total))| (name.clone(), right, total))
                .collect(),
            importance: Vec::new(),
        }
    }

    /// With the importance a fit recorded in `header` (per operation, on its training
    /// rows).
    pub fn with_importance(mut self, header: &ModelHeader) -> Self {
        self.importance = importance_table(&header.ops, &header.op_features, &header.op_importance);
        self
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "accuracy {:.2}% on {} rows", self.accuracy * 100.0, self.rows)?;
        writeln!(f, "confusion (rows: true class, columns: predicted class)")?;
        write!(f, "{:>8}", "")?;
        for k in 0..self.confusion.len() {
            write!(f, "{:>10}", format!("p{k}"))?;
        }
        writeln!(f)?;
        for (k, row) in self.confusion.iter().enumerate() {
            write!(f, "{:>8}", format!("t{k}"))?;
            for count in row {
                write!(f, "{count:>10}")?;
            }
            writeln!(f)?;
        }
        // "held-out" only where the rows were (`trainer fit` prefixes the whole report);
        // `trainer eval` scores whatever rows it is given.
        writeln!(f, "per operation (accuracy on these rows; importance: each input's share of the splits' weighted impurity decrease on its training rows)")?;
        for (name, right, total) in &self.per_op {
            let share = *right as f64 / *total as f64 * 100.0;
            write!(f, "  {name:<16} {share:>6.2}%  ({right}/{total})")?;
            if let Some((_, inputs)) = self.importance.iter().find(|(op, _)| op == name) {
                let inputs: Vec<String> =
                    inputs.iter().map(|(input, share)| format!("{input} {share:.2}")).collect();
                write!(f, "  {}", inputs.join(", "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Header, class table, the tree as text (each leaf with its mean runtime, when the
/// file has them: `leaf_ns` as [`Model::leaf_runtimes`](tokengate::model::Model::leaf_runtimes))
/// and feature importance.
pub fn describe(header: &ModelHeader, tree: &DecisionTree<f64, usize>, leaf_ns: &[u64]) -> String {
    let mut out = String::new();
    let t = &header.training;
    let _ = writeln!(out, "tokengate cost model (feature schema v{})", header.feature_schema);
    let _ = writeln!(out, "inputs      {}", header.feature_names.join(", "));
    let _ = writeln!(out, "operations  {}", header.ops.join(", "));
    let _ = writeln!(
        out,
        "trained on  {} rows ({} fit, {} held out) from {} files; max depth {}; held-out accuracy {:.2}%",
        t.rows,
        t.train_rows,
        t.validation_rows,
        t.sources.len(),
        t.max_depth,
        t.validation_accuracy * 100.0
    );
    let _ = writeln!(
        out,
        "dispatch    {} per batch (fitted from logged batches queued onto an empty queue); \
         batches keep it under {:.0}% of their run time and run at most {}",
        ns(t.dispatch_overhead_ns),
        tokengate::model::MAX_OVERHEAD_SHARE * 100.0,
        ns(tokengate::model::BATCH_LATENCY_BUDGET_NS)
    );
    let _ = match t.remote_overhead_ns {
        Some(remote) => writeln!(
            out,
            "remote      {} per call (fitted from the submitter's rows of remote runs); \
             `auto` placement sends a backlogged call remote when its predicted run time \
             is at least that",
            ns(remote)
        ),
        None => writeln!(
            out,
            "remote      no remote runs in the logs: `auto` placement uses its default \
             threshold ({})",
            ns(tokengate::model::DEFAULT_REMOTE_MIN_NS)
        ),
    };
    let _ = writeln!(out, "\nclass  runtime range           median      rows  lanes  batch");
    for (k, c) in header.classes.iter().enumerate() {
        let max = if c.max_ns == u64::MAX { "∞".to_string() } else { ns(c.max_ns) };
        let _ = writeln!(
            out,
            "{k:>5}  [{:>9}, {:>9})  {:>9}  {:>8}  {:<5}  {:>5}",
            ns(c.min_ns),
            max,
            ns(c.median_ns),
            c.rows,
            c.lanes.as_str(),
            c.batch
        );
    }
    let _ = writeln!(out, "\ntree ({} leaves, depth {})", tree.num_leaves(), tree.max_depth());
    write_node(&mut out, tree.root_node(), header, 0, &mut Leaves { ns: leaf_ns, next: 0 });
    let _ = writeln!(
        out,
        "\nfeature importance per operation (each input's share of the splits' impurity \
         decrease on its training rows, weighted by rows)"
    );
    let table = importance_table(&header.ops, &header.op_features, &header.op_importance);
    if table.is_empty() {
        let _ = writeln!(
            out,
            "  (not recorded: a file before format 5, or no split parts any operation's rows)"
        );
    }
    for (op, inputs) in table {
        let inputs: Vec<String> =
            inputs.iter().map(|(input, share)| format!("{input} {share:.3}")).collect();
        let _ = writeln!(out, "  {op:<16} {}", inputs.join(", "));
    }
    out
}

/// The leaf runtimes, walked in the compiled tree's node order (pre-order, left first,
/// which is also the order the text is written in).
struct Leaves<'a> {
    ns: &'a [u64],
    next: usize,
}

fn write_node(
    out: &mut String,
    node: &TreeNode<f64, usize>,
    header: &ModelHeader,
    depth: usize,
    leaves: &mut Leaves<'_>,
) {
    let indent = "  ".repeat(depth);
    let index = leaves.next;
    leaves.next += 1;
    if let Some(class) = node.prediction() {
        let policy = header.classes.get(class);
        let place = policy
            .map_or(String::new(), |p| format!(" → {} lanes, batch {}", p.lanes.as_str(), p.batch));
        let runtime = match leaves.ns.get(index) {
            Some(&ns) if ns > 0 => format!(" (mean runtime {})", self::ns(ns)),
            _ => String::new(),
        };
        let _ = writeln!(out, "{indent}class {class}{runtime}{place}");
        return;
    }
    let (feature, threshold, _) = node.split();
    let condition = match MODEL_FEATURES.get(feature).copied() {
        Some("op_size") => {
            let op = (threshold / OP_STRIDE).floor();
            let within = threshold - op * OP_STRIDE;
            let name = |op: f64| header.ops.get(op as usize).map_or("?", String::as_str);
            if within > 64.0 {
                // Past every size of `op`: a boundary between operations.
                format!("op < {}", name(op + 1.0))
            } else {
                format!("(op, arg_size) < ({}, {:.0})", name(op), within.exp2() - 1.0)
            }
        }
        Some("arg_size_log2") => {
            format!("arg_size < {:.0} (log2 {threshold:.2})", threshold.exp2() - 1.0)
        }
        Some(name) => format!("{name} < {threshold:.3}"),
        None => format!("input {feature} < {threshold:.3}"),
    };
    let children = node.children();
    let _ = writeln!(out, "{indent}if {condition}:");
    if let Some(left) = children[0].as_deref() {
        write_node(out, left, header, depth + 1, leaves);
    }
    let _ = writeln!(out, "{indent}else:");
    if let Some(right) = children[1].as_deref() {
        write_node(out, right, header, depth + 1, leaves);
    }
}

/// Nanoseconds with a readable unit.
pub fn ns(value: u64) -> String {
    match value {
        v if v >= 1_000_000_000 => format!("{:.2} s", v as f64 / 1e9),
        v if v >= 1_000_000 => format!("{:.2} ms", v as f64 / 1e6),
        v if v >= 1_000 => format!("{:.2} µs", v as f64 / 1e3),
        v => format!("{v} ns"),
    }
}
