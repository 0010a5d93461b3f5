//! The cost-model file: a versioned header, then the bincode-encoded linfa-trees tree.
//!
//! ```text
//! 0..8    magic "TKGMODEL"
//! 8..10   format version (u16 LE)
//! 10..12  feature-schema version (u16 LE)
//! 12..16  header length (u32 LE)
//! …       header: ModelHeader (bincode 2, standard config)
//! …       tree: linfa_trees::DecisionTree<f64, usize> (bincode 2, serde)
//! …       (format 5: the header records each operation's cost-feature names)
//! …       (format 4) leaf runtimes: Vec<u64> (bincode 2), the mean runtime (ns) of
//!         the training rows in each leaf, indexed like the compiled tree's nodes
//!         (0 for an internal node); empty when the fit recorded none
//! ```
//!
//! This module is the only place that encodes or decodes it. On load the tree is
//! compiled to a flat node array ([`FlatTree`]): prediction is a loop over a slice,
//! with no allocation and no ndarray on the hot path.

use std::path::Path;

use linfa_trees::DecisionTree;
use serde::{Deserialize, Serialize};

use crate::features::{FEATURE_SCHEMA_VERSION, MODEL_FEATURES, OLDEST_FEATURE_SCHEMA};
use crate::placement::LaneSet;

mod error;
mod flat;
mod format;
pub use error::ModelError;
pub use flat::{FlatTree, TreeSplit};
use format::{DECODE_LIMIT, FORMAT_V2, FORMAT_V3, FORMAT_V4, MAGIC, PREFIX_LEN};
pub use format::{FORMAT_VERSION, MAX_TREE_DEPTH};

/// The longest leaf runtime a model file may state (a day): queues add predictions up,
/// so an absurd one is refused as corruption rather than overflowing a sum.
pub const MAX_LEAF_NS: u64 = 86_400 * 1_000_000_000;
/// A class whose typical token runs this long or longer goes to the heavy lanes.
pub const HEAVY_NS: u64 = 200_000;
/// Batches are sized so that one takes about this long.
pub const TARGET_BATCH_NS: u64 = 50_000;
/// The `auto` placement sends a backlogged token remote only if its predicted run time
/// (model class, running average or tag) is at least what a remote run adds, so that
/// messaging at most doubles its cost: the remote overhead a model was fitted with
/// ([`Model::remote_min_ns`]), or without one this (ns), about a round trip on
/// loopback (README, "More machines").
pub const DEFAULT_REMOTE_MIN_NS: u64 = 1_000_000;
/// The largest batch a policy asks for.
pub const MAX_BATCH: u32 = 1_024;

/// Everything in a model file besides the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHeader {
    /// The feature-schema version the tree was fitted with.
    pub feature_schema: u16,
    /// The model's input names, in column order.
    pub feature_names: Vec<String>,
    /// The operation vocabulary: the `op` input is an index into this list.
    pub ops: Vec<String>,
    /// One entry per class id: its runtime range and the placement derived for it.
    pub classes: Vec<ClassPolicy>,
    /// How and on what the model was fitted.
    pub training: TrainingInfo,
    /// Per operation of `ops`: the names of the cost features the model was fitted on
    /// (empty for an operation without any, and for files before format 5). The engine
    /// places an operation whose registered cost features differ as if the model did
    /// not know it, and warns naming it.
    pub op_features: Vec<Vec<String>>,
    /// Per operation of `ops`: the share of its training rows' impurity decrease (Gini,
    /// weighted by rows) that each input earned — its size first, then each of its cost
    /// features — summing to 1 (all 0 when its calls needed no split). Empty for files
    /// before format 5.
    pub op_importance: Vec<Vec<f64>>,
}

impl ModelHeader {
    /// The cost-feature names the model has for operation `index` of `ops` (empty when
    /// none).
    pub fn cost_features(&self, index: usize) -> &[String] {
        self.op_features.get(index).map_or(&[], Vec::as_slice)
    }
}

/// The header of a version-3 or -4 file (no cost-feature names), read into
/// [`ModelHeader`].
#[derive(Deserialize)]
struct HeaderV4 {
    feature_schema: u16,
    feature_names: Vec<String>,
    ops: Vec<String>,
    classes: Vec<ClassPolicy>,
    training: TrainingInfo,
}

impl From<HeaderV4> for ModelHeader {
    fn from(v4: HeaderV4) -> Self {
        ModelHeader {
            feature_schema: v4.feature_schema,
            feature_names: v4.feature_names,
            ops: v4.ops,
            classes: v4.classes,
            training: v4.training,
            op_features: Vec::new(),
            op_importance: Vec::new(),
        }
    }
}

/// A cost class and the placement the router uses for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassPolicy {
    /// Lowest runtime in the class (ns, inclusive).
    pub min_ns: u64,
    /// Upper bound of the class (ns, exclusive); `u64::MAX` for the last class.
    pub max_ns: u64,
    /// Median runtime of the class's training rows (ns); the range midpoint if none.
    pub median_ns: u64,
    /// Training rows in the class.
    pub rows: u64,
    /// Where tokens of this class run.
    pub lanes: LaneSet,
    /// Tokens per batch for this class.
    pub batch: u32,
}

/// Provenance of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// Rows read.
    pub rows: u64,
    /// Rows the tree was fitted on.
    pub train_rows: u64,
    /// Rows held out.
    pub validation_rows: u64,
    /// Accuracy on the held-out rows.
    pub validation_accuracy: f64,
    /// The depth bound of the fit.
    pub max_depth: u32,
    /// Seconds since the Unix epoch when it was fitted.
    pub created_unix: u64,
    /// The files it was fitted on.
    pub sources: Vec<String>,
    /// The per-batch dispatch overhead fitted from the logs (ns): admission to the
    /// start of a batch's first token when its queue was empty. Class batch sizes are
    /// derived from it (see [`batch_for`]).
    pub dispatch_overhead_ns: u64,
    /// What running a call on a remote worker adds to it (ns), fitted from the
    /// submitter's rows of remote runs: the median of end-to-end minus the worker's
    /// run time (publishing, the worker's queue, the answer). `None` when the logs held
    /// no remote runs. The router's `auto` placement sends a backlogged call remote only
    /// if its predicted run time is at least this (see [`Model::remote_min_ns`]).
    pub remote_overhead_ns: Option<u64>,
}

/// The header of a version-2 file (no remote overhead), read into [`ModelHeader`].
#[derive(Deserialize)]
struct HeaderV2 {
    feature_schema: u16,
    feature_names: Vec<String>,
    ops: Vec<String>,
    classes: Vec<ClassPolicy>,
    training: TrainingV2,
}

#[derive(Deserialize)]
struct TrainingV2 {
    rows: u64,
    train_rows: u64,
    validation_rows: u64,
    validation_accuracy: f64,
    max_depth: u32,
    created_unix: u64,
    sources: Vec<String>,
    dispatch_overhead_ns: u64,
}

impl From<HeaderV2> for ModelHeader {
    fn from(v2: HeaderV2) -> Self {
        let t = v2.training;
        ModelHeader {
            feature_schema: v2.feature_schema,
            feature_names: v2.feature_names,
            ops: v2.ops,
            classes: v2.classes,
            training: TrainingInfo {
                rows: t.rows,
                train_rows: t.train_rows,
                validation_rows: t.validation_rows,
                validation_accuracy: t.validation_accuracy,
                max_depth: t.max_depth,
                created_unix: t.created_unix,
                sources: t.sources,
                dispatch_overhead_ns: t.dispatch_overhead_ns,
                remote_overhead_ns: None,
            },
            op_features: Vec::new(),
            op_importance: Vec::new(),
        }
    }
}

/// The largest share of a batch's time its dispatch may take.
pub const MAX_OVERHEAD_SHARE: f64 = 0.02;
/// The longest a light batch may run (its tokens wait for one another).
pub const BATCH_LATENCY_BUDGET_NS: u64 = 100_000;

/// The batch size for a class whose typical token takes `median_ns`, given the fitted
/// per-batch dispatch overhead: large enough that dispatch stays under
/// [`MAX_OVERHEAD_SHARE`] of the batch's run time, but never so large that the batch
/// runs longer than [`BATCH_LATENCY_BUDGET_NS`] (latency wins when both cannot hold).
/// Heavy classes run one at a time.
pub fn batch_for(median_ns: u64, overhead_ns: u64) -> u32 {
    let median = median_ns.max(1) as f64;
    let amortised = (overhead_ns as f64 / (MAX_OVERHEAD_SHARE * median)).ceil();
    let within_budget = (BATCH_LATENCY_BUDGET_NS as f64 / median).floor().max(1.0);
    amortised.min(within_budget).clamp(1.0, f64::from(MAX_BATCH)) as u32
}

/// The placement policy for a class whose typical token takes `median_ns`: heavy lanes
/// from [`HEAVY_NS`] up, and a batch that takes about [`TARGET_BATCH_NS`].
///
/// Shared by the trainer (to write class tables) and the running-average router.
pub fn policy_for(median_ns: u64) -> (LaneSet, u32) {
    let lanes = if median_ns >= HEAVY_NS { LaneSet::Heavy } else { LaneSet::Light };
    let batch = (TARGET_BATCH_NS / median_ns.max(1)).clamp(1, u64::from(MAX_BATCH)) as u32;
    (lanes, batch)
}

/// A loaded, checked model, compiled for prediction.
#[derive(Debug, Clone)]
pub struct Model {
    header: ModelHeader,
    tree: FlatTree,
    /// Per node of `tree`: the mean runtime of the training rows in that leaf (ns;
    /// 0 for an internal node or an unknown leaf). Empty for files before format 4.
    leaf_ns: Box<[u64]>,
    version: u32,
}

impl Model {
    /// Reads and checks a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|source| ModelError::Io { path: path.display().to_string(), source })?;
        let model = Self::from_bytes(&bytes)?;
        tracing::info!(
            "cost model {} loaded: version {:08x}, {} classes, {} operations",
            path.display(),
            model.version,
            model.header.classes.len(),
            model.header.ops.len()
        );
        Ok(model)
    }

    /// Checks and compiles a model from its file bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let (header, tree, leaf_ns) = decode_all(bytes)?;
        let flat = FlatTree::compile(&tree, header.classes.len())?;
        // A tree reads only the inputs its schema has (schema 1: the first two).
        let inputs = header.feature_names.len();
        if let Some(split) =
            (0..flat.len()).filter_map(|i| flat.split(i)).find(|s| s.input >= inputs)
        {
            return Err(ModelError::Corrupt(format!(
                "the tree splits on input {} of a schema with {inputs}",
                split.input
            )));
        }
        if !leaf_ns.is_empty() && leaf_ns.len() != flat.len() {
            return Err(ModelError::Corrupt(format!(
                "{} leaf runtimes for a tree of {} nodes",
                leaf_ns.len(),
                flat.len()
            )));
        }
        if let Some(ns) = leaf_ns.iter().find(|&&ns| ns > MAX_LEAF_NS) {
            return Err(ModelError::Corrupt(format!("a leaf runtime of {ns} ns (over a day)")));
        }
        Ok(Model { header, tree: flat, leaf_ns: leaf_ns.into(), version: fnv1a(bytes) })
    }

    /// The header: vocabulary, class table, provenance.
    pub fn header(&self) -> &ModelHeader {
        &self.header
    }

    /// A short fingerprint of the file (FNV-1a of its bytes), logged with every decision.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The compiled tree.
    pub fn tree(&self) -> &FlatTree {
        &self.tree
    }

    /// The operation's index in the vocabulary.
    pub fn op_index(&self, name: &str) -> Option<u32> {
        self.header.ops.iter().position(|op| op == name).map(|i| i as u32)
    }

    /// The least predicted run time (ns) worth sending to a remote worker: the remote
    /// overhead the model was fitted with (messaging then at most doubles a call's
    /// cost), or `None` if it saw no remote runs.
    pub fn remote_min_ns(&self) -> Option<u64> {
        self.header.training.remote_overhead_ns
    }

    /// The predicted class for one input vector.
    #[inline]
    pub fn predict(&self, inputs: &[f64; MODEL_FEATURES.len()]) -> usize {
        self.tree.predict(inputs)
    }

    /// The predicted class and runtime (ns) for one input vector: one walk of the tree;
    /// the runtime is the mean of the training rows in the leaf it ends at, or the
    /// class's median where the file has no leaf runtimes (formats 2 and 3).
    #[inline]
    pub fn predict_cost(&self, inputs: &[f64; MODEL_FEATURES.len()]) -> (usize, u64) {
        self.leaf_cost(self.tree.leaf(inputs))
    }

    /// The class and runtime (ns) of leaf `leaf` (from [`FlatTree::leaf`]), as
    /// [`Model::predict_cost`] gives them.
    #[inline]
    pub fn leaf_cost(&self, leaf: usize) -> (usize, u64) {
        let class = self.tree.leaf_class(leaf);
        let ns = match self.leaf_ns.get(leaf) {
            Some(&ns) if ns > 0 => ns,
            _ => self.header.classes[class].median_ns,
        };
        (class, ns)
    }

    /// Per node of the compiled tree (see [`FlatTree::leaf`]): the mean runtime (ns)
    /// of the training rows that ended at that leaf, 0 for internal nodes; empty for
    /// files before format 4.
    pub fn leaf_runtimes(&self) -> &[u64] {
        &self.leaf_ns
    }
}

/// Encodes a model file; `leaf_ns` is indexed like [`FlatTree`]'s nodes (see
/// [`FlatTree::leaf`]), or empty.
#[cfg_attr(not(feature = "linfa"), allow(dead_code))]
pub(crate) fn encode(
    header: &ModelHeader,
    tree: &DecisionTree<f64, usize>,
    leaf_ns: &[u64],
) -> Result<Vec<u8>, ModelError> {
    let config = bincode::config::standard();
    let header_bytes = bincode::serde::encode_to_vec(header, config)
        .map_err(|e| ModelError::Corrupt(format!("encoding the header: {e}")))?;
    let tree_bytes = bincode::serde::encode_to_vec(tree, config)
        .map_err(|e| ModelError::Corrupt(format!("encoding the tree: {e}")))?;
    let mut out = Vec::with_capacity(PREFIX_LEN + header_bytes.len() + tree_bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&header.feature_schema.to_le_bytes());
    out.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&tree_bytes);
    bincode::serde::encode_into_std_write(leaf_ns, &mut out, config)
        .map_err(|e| ModelError::Corrupt(format!("encoding the leaf runtimes: {e}")))?;
    Ok(out)
}

/// Decodes and checks a model file's header and tree (the trainer's `eval` and
/// `inspect` use the linfa tree itself).
#[cfg_attr(not(feature = "linfa"), allow(dead_code))]
pub(crate) fn decode(bytes: &[u8]) -> Result<(ModelHeader, DecisionTree<f64, usize>), ModelError> {
    decode_all(bytes).map(|(header, tree, _)| (header, tree))
}

type Decoded = (ModelHeader, DecisionTree<f64, usize>, Vec<u64>);

/// [`decode`], and the leaf runtimes (empty before format 4).
fn decode_all(bytes: &[u8]) -> Result<Decoded, ModelError> {
    if bytes.len() < PREFIX_LEN || &bytes[..8] != MAGIC {
        return Err(ModelError::NotAModel);
    }
    let format = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !matches!(format, FORMAT_V2 | FORMAT_V3 | FORMAT_V4 | FORMAT_VERSION) {
        return Err(ModelError::UnsupportedFormat { found: format });
    }
    let schema = u16::from_le_bytes([bytes[10], bytes[11]]);
    if !(OLDEST_FEATURE_SCHEMA..=FEATURE_SCHEMA_VERSION).contains(&schema) {
        return Err(ModelError::FeatureSchema { found: schema, expected: FEATURE_SCHEMA_VERSION });
    }
    let header_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let rest = &bytes[PREFIX_LEN..];
    if header_len > rest.len() {
        return Err(ModelError::Corrupt("truncated header".into()));
    }
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    let header_bytes = &rest[..header_len];
    let corrupt = |e: bincode::error::DecodeError| ModelError::Corrupt(format!("header: {e}"));
    let (header, used): (ModelHeader, usize) = match format {
        FORMAT_V2 => bincode::serde::decode_from_slice::<HeaderV2, _>(header_bytes, config)
            .map(|(v2, used)| (v2.into(), used))
            .map_err(corrupt)?,
        FORMAT_V3 | FORMAT_V4 => {
            bincode::serde::decode_from_slice::<HeaderV4, _>(header_bytes, config)
                .map(|(v4, used)| (v4.into(), used))
                .map_err(corrupt)?
        }
        _ => bincode::serde::decode_from_slice(header_bytes, config).map_err(corrupt)?,
    };
    if used != header_len {
        return Err(ModelError::Corrupt("header length mismatch".into()));
    }
    check_header(&header)?;
    if header.feature_schema != schema {
        return Err(ModelError::Corrupt(format!(
            "the file says feature schema v{schema}, its header v{}",
            header.feature_schema
        )));
    }
    let rest = &rest[header_len..];
    let (tree, used): (DecisionTree<f64, usize>, usize) =
        bincode::serde::decode_from_slice(rest, config)
            .map_err(|e| ModelError::Corrupt(format!("tree: {e}")))?;
    let rest = &rest[used..];
    let (leaf_ns, used): (Vec<u64>, usize) = if format >= FORMAT_V4 {
        bincode::serde::decode_from_slice(rest, config)
            .map_err(|e| ModelError::Corrupt(format!("leaf runtimes: {e}")))?
    } else {
        (Vec::new(), 0)
    };
    if used != rest.len() {
        return Err(ModelError::Corrupt("trailing bytes after the tree".into()));
    }
    Ok((header, tree, leaf_ns))
}

fn check_header(header: &ModelHeader) -> Result<(), ModelError> {
    // Schema 1 had the first two inputs only; the later ones were appended.
    let inputs = match header.feature_schema {
        1 => 2,
        FEATURE_SCHEMA_VERSION => MODEL_FEATURES.len(),
        found => return Err(ModelError::FeatureSchema { found, expected: FEATURE_SCHEMA_VERSION }),
    };
    if header.feature_names != MODEL_FEATURES[..inputs] {
        return Err(ModelError::Corrupt(format!(
            "feature names {:?} differ from {:?}",
            header.feature_names,
            &MODEL_FEATURES[..inputs]
        )));
    }
    if header.op_features.len() > header.ops.len()
        || header.op_features.iter().any(|names| names.len() > crate::features::MAX_COST_FEATURES)
    {
        return Err(ModelError::Corrupt("cost-feature names do not fit the operations".into()));
    }
    if header.classes.is_empty() || header.classes.len() > 64 {
        return Err(ModelError::Corrupt(format!("{} classes", header.classes.len())));
    }
    if header.classes.iter().any(|c| c.batch == 0 || c.batch > MAX_BATCH) {
        return Err(ModelError::Corrupt("a class has a batch size outside 1..=1024".into()));
    }
    Ok(())
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &b| (hash ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The model file's linfa side, for a trainer (feature `linfa`): a model is a
/// `linfa_trees::DecisionTree` behind a header, and these read and write that tree.
/// Without the feature no linfa type appears in this crate's public API.
#[cfg(feature = "linfa")]
pub mod linfa {
    use linfa_trees::DecisionTree;

    use super::{FlatTree, ModelError, ModelHeader};

    /// Encodes a model file; `leaf_ns` is indexed like [`FlatTree`]'s nodes (see
    /// [`FlatTree::leaf`]), or empty.
    pub fn encode(
        header: &ModelHeader,
        tree: &DecisionTree<f64, usize>,
        leaf_ns: &[u64],
    ) -> Result<Vec<u8>, ModelError> {
        super::encode(header, tree, leaf_ns)
    }

    /// Decodes and checks a model file's header and tree.
    pub fn decode(bytes: &[u8]) -> Result<(ModelHeader, DecisionTree<f64, usize>), ModelError> {
        super::decode(bytes)
    }

    /// Compiles a linfa tree to the flat array the router walks, checking every index it
    /// will follow (`classes`: the header's class count).
    pub fn compile(
        tree: &DecisionTree<f64, usize>,
        classes: usize,
    ) -> Result<FlatTree, ModelError> {
        FlatTree::compile(tree, classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped model, as the CLI finds it from the source tree.
    fn shipped() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default.bin")).unwrap()
    }

    fn encode_leaves_len(leaves: &[u64]) -> usize {
        bincode::serde::encode_to_vec(leaves, bincode::config::standard()).unwrap().len()
    }

    #[test]
    fn the_shipped_model_round_trips_through_the_codec() {
        let bytes = shipped();
        let model = Model::from_bytes(&bytes).unwrap();
        let (header, tree) = decode(&bytes).unwrap();
        assert_eq!(model.header(), &header);
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), FORMAT_VERSION);
        assert_eq!(model.leaf_runtimes().len(), model.tree().len(), "one runtime per node");
        let again = encode(&header, &tree, model.leaf_runtimes()).unwrap();
        assert_eq!(again, bytes, "one codec: re-encoding is exact");
        assert!(!model.tree().is_empty());
        assert!(model.tree().depth() <= MAX_TREE_DEPTH);
    }

    #[test]
    fn leaf_runtimes_refine_the_class_median_and_older_files_still_load() {
        let model = Model::from_bytes(&shipped()).unwrap();
        let tree = model.tree();
        // Leaves have runtimes (the fit computed them from the rows that ended there),
        // internal nodes none; a leaf's is what the model predicts for calls ending there.
        let leaves = (0..tree.len()).filter(|&i| model.leaf_runtimes()[i] > 0).count();
        assert_eq!(leaves * 2 - 1, tree.len(), "a binary tree's leaves, and only those");
        let inputs = crate::features::model_inputs(0, 1_000, &crate::features::NO_COST);
        let (class, ns) = model.predict_cost(&inputs);
        assert_eq!(class, model.predict(&inputs));
        assert_eq!(ns, model.leaf_runtimes()[tree.leaf(&inputs)]);

        // Format 2 (the shipped model of earlier releases): no remote overhead, no leaf
        // runtimes; the class median stands in.
        let v2 = include_bytes!("../../testdata/model-v2.bin");
        assert_eq!(u16::from_le_bytes([v2[8], v2[9]]), FORMAT_V2);
        let old = Model::from_bytes(v2).unwrap();
        assert_eq!(old.remote_min_ns(), None);
        assert!(old.leaf_runtimes().is_empty());
        let (class, ns) = old.predict_cost(&inputs);
        assert_eq!(ns, old.header().classes[class].median_ns);

        // Format 4, feature schema 1 (the shipped model of the release before cost
        // features): it loads, and its tree reads only the first two inputs.
        let v4 = include_bytes!("../../testdata/model-v4.bin");
        assert_eq!(u16::from_le_bytes([v4[8], v4[9]]), FORMAT_V4);
        assert_eq!(u16::from_le_bytes([v4[10], v4[11]]), 1);
        let old = Model::from_bytes(v4).unwrap();
        assert!(old.header().op_features.is_empty() && old.header().op_importance.is_empty());
        assert_eq!(old.header().feature_names, MODEL_FEATURES[..2]);
        assert_eq!(old.predict(&inputs), model.predict(&inputs), "refitted on the same rows");

        // Format 3: format 4 without the leaf section.
        let mut v3 = v4.to_vec();
        let (_, linfa) = decode(v4).unwrap();
        let tree_len = bincode::serde::encode_to_vec(&linfa, bincode::config::standard()).unwrap();
        let leaves_at = v3.len() - encode_leaves_len(old.leaf_runtimes());
        v3.truncate(leaves_at);
        assert!(v3.ends_with(&tree_len));
        v3[8..10].copy_from_slice(&FORMAT_V3.to_le_bytes());
        assert!(Model::from_bytes(&v3).unwrap().leaf_runtimes().is_empty());
        let (header, linfa) = decode(&shipped()).unwrap();

        // A leaf list that does not match the tree, or states an absurd runtime, is refused.
        let short = encode(&header, &linfa, &[1, 2]).unwrap();
        assert!(matches!(Model::from_bytes(&short), Err(ModelError::Corrupt(_))));
        let mut absurd = model.leaf_runtimes().to_vec();
        *absurd.iter_mut().find(|ns| **ns > 0).unwrap() = u64::MAX;
        let absurd = encode(&header, &linfa, &absurd).unwrap();
        assert!(matches!(Model::from_bytes(&absurd), Err(ModelError::Corrupt(_))));
    }

    #[test]
    fn a_fitted_remote_overhead_is_the_models_remote_threshold() {
        let (mut header, tree) = decode(&shipped()).unwrap();
        header.training.remote_overhead_ns = Some(420_000);
        let model = Model::from_bytes(&encode(&header, &tree, &[]).unwrap()).unwrap();
        assert_eq!(model.remote_min_ns(), Some(420_000));
        assert_eq!(model.header().training.remote_overhead_ns, Some(420_000));
    }

    #[test]
    fn damaged_files_are_named_errors() {
        let bytes = shipped();
        assert!(matches!(Model::from_bytes(b"TKG"), Err(ModelError::NotAModel)));
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] = b'X';
        assert!(matches!(Model::from_bytes(&wrong_magic), Err(ModelError::NotAModel)));
        let mut future = bytes.clone();
        future[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert!(matches!(
            Model::from_bytes(&future),
            Err(ModelError::UnsupportedFormat { found }) if found == FORMAT_VERSION + 1
        ));
        let mut schema = bytes.clone();
        schema[10..12].copy_from_slice(&(FEATURE_SCHEMA_VERSION + 1).to_le_bytes());
        assert!(matches!(Model::from_bytes(&schema), Err(ModelError::FeatureSchema { .. })));
        // A prefix that disagrees with the header's schema.
        let mut disagree = bytes.clone();
        disagree[10..12].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(Model::from_bytes(&disagree), Err(ModelError::Corrupt(_))));
        // The shipped tree reads only the first two inputs: as schema 1 it still loads.
        let (mut header, tree) = decode(&bytes).unwrap();
        header.feature_schema = 1;
        header.feature_names.truncate(2);
        assert!(Model::from_bytes(&encode(&header, &tree, &[]).unwrap()).is_ok());
        for cut in [PREFIX_LEN, bytes.len() / 2, bytes.len() - 1] {
            assert!(Model::from_bytes(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
    }

    #[test]
    fn policies_put_slow_classes_on_heavy_lanes_in_small_batches() {
        assert_eq!(policy_for(1_000), (LaneSet::Light, 50));
        assert_eq!(policy_for(0), (LaneSet::Light, MAX_BATCH));
        assert_eq!(policy_for(HEAVY_NS - 1).0, LaneSet::Light);
        assert_eq!(policy_for(HEAVY_NS), (LaneSet::Heavy, 1));
    }

    #[test]
    fn learned_batches_amortise_dispatch_within_the_latency_budget() {
        // 5 µs of dispatch: a 2 µs token would need 125 per batch to keep dispatch under
        // 2%, but 50 of them already fill the 100 µs budget.
        assert_eq!(batch_for(2_000, 5_000), 50);
        // Cheap dispatch: 10 suffice.
        assert_eq!(batch_for(2_000, 400), 10);
        assert_eq!(batch_for(30, 5_000), MAX_BATCH);
        assert_eq!(batch_for(HEAVY_NS, 5_000), 1);
        assert_eq!(batch_for(0, 0), 1);
    }
}
